"""Plain frozen data shared by readers, analysis, rules and reporters."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from ckptdoctor.errors import CheckpointError  # re-exported: readers and users import it from here

__all__ = [
    "BatchNormLayer",
    "CheckpointError",
    "Finding",
    "IntegrityProblem",
    "LayerConfig",
    "Report",
    "Role",
    "Severity",
    "TensorInfo",
    "Variable",
]


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

    name: str  # the exact key (TF) or dataset path (HDF5) in the file
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    path: str | None = None  # the model path to analyse by, where it differs from the key
    full_name: str | None = None  # the framework's own variable name, e.g. Keras `bn/moving_mean`
    slot_of: str | None = None  # for an optimizer slot: the path of the variable it belongs to
    optimizer_state: bool = False  # known from the file's structure to belong to an optimizer


@dataclass(frozen=True)
class LayerConfig:
    """A layer as a saved model configuration describes it (Keras config.json or model_config)."""

    path: str  # the scope its variables' paths start with
    class_name: str
    scale: bool = True  # BatchNormalization: has gamma
    center: bool = True  # BatchNormalization: has beta
    momentum: float | None = None  # BatchNormalization: the decay of its moving statistics, where recorded
    trainable: bool = True  # False: frozen by design (Keras `trainable: false`)

    @property
    def is_batchnorm(self) -> bool:
        return self.class_name in ("BatchNormalization", "SyncBatchNormalization")

    @property
    def batchnorm_parts(self) -> tuple[str, ...]:
        """The variables Keras stores for this BatchNormalization, in its weight order."""
        return (
            *(("gamma",) if self.scale else ()),
            *(("beta",) if self.center else ()),
            "moving_mean",
            "moving_variance",
        )


@dataclass(frozen=True)
class Variable:
    """A tensor as the report shows it: its place in the model and its role."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    role: Role
    layer: str  # the enclosing scope ("" at the top level)
    path: str  # the model path: the key itself for TF1, the object path for TF2, layer/weight for Keras
    full_name: str | None = None


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
class LayerDecay:
    """The decay d a BatchNorm layer's moving statistics are updated with: v <- d*v + (1-d)*batch_value."""

    layer: str
    decay: float
    source: str  # where d was read: "meta-graph", "keras-config", "--decay"
    frozen: bool = False  # the layer is not trainable, so its statistics stay as loaded by design


@dataclass(frozen=True)
class StatisticsUpdates:
    """How far BatchNorm moving statistics can have moved: update steps and each layer's decay, where found.

    After N updates at decay d, a statistic still holds d**N of the value training started from."""

    steps: int | None
    steps_source: str | None  # e.g. "global_step", "optimizer/iterations", "the prefix", "--steps"
    layers: tuple[LayerDecay, ...] = ()
    note: str | None = None  # why a decay source that exists gave nothing, e.g. an unreadable .meta


@dataclass(frozen=True)
class Report:
    """The result of inspect and check: one schema for both, serialised as the JSON report."""

    path: str
    format: str
    resolved: str
    note: str | None
    file: str  # the one file that stands for the checkpoint: the .index of a bundle, else the file itself
    variables: tuple[Variable, ...]
    batchnorm: tuple[BatchNormLayer, ...]
    findings: tuple[Finding, ...] = field(default=())
    updates: StatisticsUpdates | None = None  # decay and steps found (None: neither)
