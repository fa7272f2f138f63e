"""Plain frozen data shared by readers, analysis, rules and reporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class CheckpointError(Exception):
    """A checkpoint could not be read at all; the message is one line naming the file."""


class Role(str, Enum):
    WEIGHT = "weight"
    BN_STATISTIC = "bn-statistic"
    OPTIMIZER_SLOT = "optimizer-slot"
    EMA = "ema"
    COUNTER = "counter"
    OTHER = "other"


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return ("info", "warning", "error").index(self.value)


@dataclass(frozen=True)
class TensorInfo:
    """What a reader knows about one stored tensor without reading its values."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class Variable:
    """A tensor as the report shows it: its place in the model and its role."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    role: Role
    layer: str  # the enclosing scope ("" at the top level)


@dataclass(frozen=True)
class BatchNormLayer:
    """One BatchNorm layer: the checkpoint keys of the parameters and statistics it holds."""

    layer: str
    gamma: str | None = None
    beta: str | None = None
    moving_mean: str | None = None
    moving_variance: str | None = None

    @property
    def missing_statistics(self) -> tuple[str, ...]:
        return tuple(s for s in ("moving_mean", "moving_variance") if getattr(self, s) is None)


@dataclass(frozen=True)
class Finding:
    code: str
    name: str
    severity: Severity
    subject: str
    message: str
    hint: str


@dataclass(frozen=True)
class IntegrityProblem:
    """Damage a reader found while reading bytes; rules turn these into findings."""

    kind: str  # a rule slug, e.g. "crc-mismatch"
    subject: str
    detail: str


@dataclass(frozen=True)
class Report:
    """The result of inspect and check: one schema for both, serialised as the JSON report."""

    path: str
    format: str
    resolved: str
    note: str | None
    variables: tuple[Variable, ...]
    batchnorm: tuple[BatchNormLayer, ...]
    findings: tuple[Finding, ...] = field(default=())
