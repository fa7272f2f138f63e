"""What a rule is, and the context every rule reads: the checkpoint, its layers, one full scan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from functools import cached_property

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.analysis.staleness import DEFAULT_STALE_THRESHOLD, find_updates
from ckptdoctor.formats.base import ScanResult
from ckptdoctor.model import BatchNormLayer, Finding, FormatFamily, ProblemKind, Severity, StatisticsUpdates
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    import numpy as np

    from ckptdoctor.dtypes import Numbers


class CheckContext:
    """What every rule of one check reads; it caches what several rules derive (`updates`, the statistics)."""

    def __init__(
        self,
        target: Checkpoint,
        scan: ScanResult,
        reference: Checkpoint | None = None,
        decay: float | None = None,  # --decay: overrides every layer's decay
        steps: int | None = None,  # --steps: overrides the steps the files record
        stale_threshold: float = DEFAULT_STALE_THRESHOLD,  # policy `stale-threshold`
    ) -> None:
        self.target = target
        self.scan = scan
        self.reference = reference
        self.decay = decay
        self.steps = steps
        self.stale_threshold = stale_threshold
        self._statistics: dict[str, Numbers | None] = {}

    @cached_property
    def updates(self) -> StatisticsUpdates | None:
        """The decay and steps found for bn-stats-stale (and the report)."""
        return find_updates(self.target, self.reference, self.decay, self.steps)

    @cached_property
    def damaged(self) -> frozenset[str]:
        """Tensors whose bytes are known to be bad: value rules skip them rather than report noise."""
        return frozenset(problem.subject for problem in self.scan.problems)

    def values(self, name: str) -> np.ndarray | None:
        """A tensor's values in numpy, None where its bytes are damaged (for comparisons with a reference)."""
        return None if name in self.damaged else self.target.values(name)

    def statistic(self, name: str) -> Numbers | None:
        """A moving statistic's elements as plain numbers (no numpy), None where its bytes are damaged. Each is
        decoded once: several rules and the report's summaries read every one (100,000 reads at 25,000 layers).
        """
        if name in self.damaged:
            return None
        if name not in self._statistics:
            self._statistics[name] = self.target.numbers(name)
        return self._statistics[name]

    @property
    def family(self) -> FormatFamily:
        return self.target.reader.format.family

    def tensor_subject(self, key: str) -> str:
        """A stored tensor's name for people; a subject that is not a tensor (a shard, a block) stays as it is."""
        return self.target.subjects.get(key, key)

    @cached_property
    def _layer_subjects(self) -> dict[str, str]:
        """Each BatchNorm layer by the framework's name (`bn_default`) where it is unique, else by its path."""
        names = {layer.layer: self.target.layer_name(layer) for layer in self.target.batchnorm}
        counts = Counter(names.values())
        return {path: name if counts[name] == 1 else path for path, name in names.items()}

    def layer_subject(self, layer: BatchNormLayer | str) -> str:
        path = layer if isinstance(layer, str) else layer.layer
        return self._layer_subjects.get(path, path)


class Command(str, Enum):
    """The command that evaluates a rule: `check` has the checkpoint (and maybe a reference), `match` the model
    that restores it. The CI reports list only the rules of the command that made them."""

    CHECK = "check"
    MATCH = "match"


class Rule(NamedTuple):
    code: str  # stable, e.g. "BN001"
    name: str  # stable slug, e.g. "bn-missing-moving-stats"
    severity: Severity
    title: str  # one line
    explanation: str  # what it means, why it happens, how to fix it
    hint: str  # the default next step shown with each finding
    run: Callable[[Rule, CheckContext], Iterable[Finding]]
    needs_reference: bool = False
    command: Command = Command.CHECK
    reports: ProblemKind | None = None  # an integrity rule: the one kind of reader problem it turns into findings
    # Per format family, where the cause and the repair differ: a TF1 graph's UPDATE_OPS advice is no use for a
    # `.keras` file. A family without an entry gets `explanation` and `hint`.
    causes: Mapping[FormatFamily, str] = {}
    fixes: Mapping[FormatFamily, str] = {}

    def hint_for(self, family: FormatFamily | None) -> str:
        return self.fixes.get(family, self.hint) if family is not None else self.hint

    def cause_for(self, family: FormatFamily | None) -> str:
        """Why this happens in this format family: a short cause where one is written, else the explanation."""
        return self.causes.get(family, self.explanation) if family is not None else self.explanation

    def finding(
        self,
        subject: str,
        message: str,
        hint: str | None = None,
        *,
        key: str | None = None,
        detail: str | None = None,
        family: FormatFamily | None = None,
    ) -> Finding:
        return Finding(
            self.code,
            self.name,
            self.severity,
            subject,
            message,
            hint or self.hint_for(family),
            key=key if key != subject else None,
            detail=detail,
        )
