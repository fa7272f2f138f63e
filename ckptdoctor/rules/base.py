"""What a rule is, and the context every rule reads: the checkpoint, its layers, one full scan."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.analysis.staleness import DEFAULT_STALE_THRESHOLD, find_updates
from ckptdoctor.formats.base import ScanResult
from ckptdoctor.model import Finding, ProblemKind, Severity, StatisticsUpdates

if TYPE_CHECKING:
    import numpy as np


@dataclass
class CheckContext:
    target: Checkpoint
    scan: ScanResult
    reference: Checkpoint | None = None
    decay: float | None = None  # --decay: overrides every layer's decay
    steps: int | None = None  # --steps: overrides the steps the files record
    stale_threshold: float = DEFAULT_STALE_THRESHOLD  # policy `stale-threshold`

    @cached_property
    def updates(self) -> StatisticsUpdates | None:
        """The decay and steps found for bn-stats-stale (and the report)."""
        return find_updates(self.target, self.reference, self.decay, self.steps)

    @cached_property
    def damaged(self) -> frozenset[str]:
        """Tensors whose bytes are known to be bad: value rules skip them rather than report noise."""
        return frozenset(problem.subject for problem in self.scan.problems)

    def values(self, name: str) -> np.ndarray | None:
        return None if name in self.damaged else self.target.values(name)


@dataclass(frozen=True)
class Rule:
    code: str  # stable, e.g. "BN001"
    name: str  # stable slug, e.g. "bn-missing-moving-stats"
    severity: Severity
    title: str  # one line
    explanation: str  # what it means, why it happens, how to fix it
    hint: str  # the default next step shown with each finding
    run: Callable[[Rule, CheckContext], Iterable[Finding]]
    needs_reference: bool = False
    reports: ProblemKind | None = None  # an integrity rule: the one kind of reader problem it turns into findings

    def finding(self, subject: str, message: str, hint: str | None = None) -> Finding:
        return Finding(self.code, self.name, self.severity, subject, message, hint or self.hint)
