"""`ckptdoctor diff A B`: what changed between two checkpoints, tensor by tensor, in any formats ckptdoctor reads.

Tensors are paired by key, then by framework name across formats (analysis/matching.py). Memory is bounded by
the largest tensor, not the checkpoint: one pair of tensors is held at a time, and compared in slices of
`CHUNK_ELEMENTS` elements so that the float64 working copies stay small.

What counts as equal, element by element:
- floats (and complex numbers): the same value with the same sign (bit for bit, short of NaN payloads), or NaN
  on both sides; with a tolerance, also |a - b| <= max(rtol * max(|a|, |b|), atol), as Python's
  `math.isclose`. Differences are computed in float64 (complex128) so that they never overflow the stored type.
- integers and booleans: exactly equal (no tolerance); strings: the same bytes.
A tensor whose dtype or shape changed is changed whatever its values.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from enum import Enum

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.analysis.matching import MatchedBy, identity, match_batchnorm, match_variables
from ckptdoctor.errors import ConfigError
from ckptdoctor.model import BATCHNORM_PARTS, BATCHNORM_STATISTICS, BatchNormLayer, Role, Variable
from ckptdoctor.policy import ExitCode, outcome_exit_code
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    import numpy as np

CHUNK_ELEMENTS = 1 << 16  # elements compared at a time: a few MiB of float64 temporaries, whatever the tensor
PARAMETERS = tuple(p for p in BATCHNORM_PARTS if p not in BATCHNORM_STATISTICS)  # trained by the optimizer
STATISTICS = BATCHNORM_STATISTICS  # updated only by the update ops

Progress = Callable[[int, int], None]  # (tensors done, tensors in all)


class Outcome(str, Enum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    ADDED = "added"  # only in B
    REMOVED = "removed"  # only in A
    UNREADABLE = "unreadable"  # in both, but the bytes of one side (or both) cannot be read


class Side(NamedTuple):
    """One checkpoint's copy of a tensor."""

    name: str  # the stored key
    dtype: str
    shape: tuple[int, ...]
    role: Role
    batchnorm_layer: str | None  # the scope of the BatchNorm layer it belongs to, if any


class ValueDiff(NamedTuple):
    """How the values of two same-shaped tensors differ."""

    elements: int
    differing: int  # elements not equal (beyond the tolerance)
    nonfinite_mismatches: int  # NaN or ±Inf on one side without the same on the other
    max_abs_diff: float | None  # over elements finite on both sides; None for integers, booleans, strings
    max_rel_diff: float | None  # |a - b| / max(|a|, |b|), between 0 and 2


class TensorDiff(NamedTuple):
    outcome: Outcome
    a: Side | None  # None: added
    b: Side | None  # None: removed
    framework_name: str  # the name the pair was matched by, or the one side's
    matched_by: MatchedBy | None = None
    values: ValueDiff | None = None  # None where the values were not compared (shape or kind differs)
    unreadable_in: tuple[str, ...] = ()  # "a", "b": which side's bytes could not be read

    @property
    def first(self) -> Side:
        """The side that names the tensor: A's where it has one."""
        side = self.a or self.b
        assert side is not None
        return side

    @property
    def name(self) -> str:
        return self.first.name

    @property
    def role(self) -> Role:
        return self.first.role

    @property
    def dtype_changed(self) -> bool:
        return self.a is not None and self.b is not None and self.a.dtype != self.b.dtype

    @property
    def shape_changed(self) -> bool:
        return self.a is not None and self.b is not None and self.a.shape != self.b.shape


class RoleSummary(NamedTuple):
    role: Role
    compared: int  # in both and readable
    changed: int
    added: int
    removed: int
    unreadable: int


class LayerDiff(NamedTuple):
    """One BatchNorm layer: what happened to each of its parameters and statistics."""

    layer: str  # its scope in A (in B where only B has it)
    name: str  # its framework name, which may differ from the scope
    parts: tuple[tuple[str, Outcome], ...]  # (gamma|beta|moving_mean|moving_variance, outcome), stored ones only

    def count(self, kinds: tuple[str, ...], *outcomes: Outcome) -> int:
        return sum(1 for part, outcome in self.parts if part in kinds and outcome in outcomes)

    def with_outcome(self, kinds: tuple[str, ...], outcome: Outcome) -> tuple[str, ...]:
        return tuple(part for part, found in self.parts if part in kinds and found is outcome)


class CheckpointRef(NamedTuple):
    path: str  # as given
    resolved: str  # what was read
    format: str
    note: str | None


class DiffReport(NamedTuple):
    a: CheckpointRef
    b: CheckpointRef
    atol: float
    rtol: float
    tensors: tuple[TensorDiff, ...]  # every tensor of either side, unchanged ones included
    roles: tuple[RoleSummary, ...]  # roles present on either side, in Role order
    batchnorm: tuple[LayerDiff, ...]

    def _with(self, outcome: Outcome) -> tuple[TensorDiff, ...]:
        return tuple(t for t in self.tensors if t.outcome is outcome)

    @property
    def changed(self) -> tuple[TensorDiff, ...]:
        return self._with(Outcome.CHANGED)

    @property
    def added(self) -> tuple[TensorDiff, ...]:
        return self._with(Outcome.ADDED)

    @property
    def removed(self) -> tuple[TensorDiff, ...]:
        return self._with(Outcome.REMOVED)

    @property
    def unreadable(self) -> tuple[TensorDiff, ...]:
        return self._with(Outcome.UNREADABLE)

    @property
    def compared(self) -> int:
        return sum(1 for t in self.tensors if t.outcome in (Outcome.CHANGED, Outcome.UNCHANGED))

    @property
    def identical(self) -> bool:
        """Every common tensor equal (within the tolerance), readable, and nothing added or removed."""
        return all(t.outcome is Outcome.UNCHANGED for t in self.tensors)

    @property
    def exit_code(self) -> ExitCode:
        return outcome_exit_code(self.identical)


# ---- comparing values ------------------------------------------------------------------------------


def _kind(values: np.ndarray) -> str:
    """'float' (complex too), 'exact' (integers, booleans) or 'bytes' (strings)."""
    if values.dtype.kind in "fc":
        return "float"
    if values.dtype.kind in "iub":
        return "exact"
    return "bytes"


def _same_real(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bit for bit for non-NaN reals (the sign of zero counts); NaN equals NaN."""
    import numpy as np

    return ((x == y) & (np.signbit(x) == np.signbit(y))) | (np.isnan(x) & np.isnan(y))


def _compare_floats(x: np.ndarray, y: np.ndarray, atol: float, rtol: float) -> ValueDiff:
    import numpy as np

    wide = np.complex128 if x.dtype.kind == "c" or y.dtype.kind == "c" else np.float64
    tolerant = atol > 0 or rtol > 0
    differing = nonfinite = 0
    max_abs = max_rel = 0.0
    for start in range(0, x.size, CHUNK_ELEMENTS):
        with np.errstate(invalid="ignore"):  # a signalling NaN widens to a quiet one, with a warning otherwise
            xs = x[start : start + CHUNK_ELEMENTS].astype(wide)
            ys = y[start : start + CHUNK_ELEMENTS].astype(wide)
        if wide is np.complex128:
            same = _same_real(xs.real, ys.real) & _same_real(xs.imag, ys.imag)
        else:
            same = _same_real(xs, ys)
        finite = np.isfinite(xs) & np.isfinite(ys)
        nonfinite += int(np.count_nonzero(~same & ~finite))
        with np.errstate(over="ignore", invalid="ignore"):
            delta = np.abs(np.where(finite, xs - ys, 0))  # float64 max ~1.8e308: float64 extremes may give inf
            scale = np.maximum(np.abs(np.where(finite, xs, 0)), np.abs(np.where(finite, ys, 0)))
            relative = np.divide(delta, scale, out=np.zeros_like(delta), where=scale > 0)
        if delta.size:
            max_abs = max(max_abs, float(delta.max()))
            max_rel = max(max_rel, float(relative.max()))
        equal = same | (finite & (delta <= np.maximum(rtol * scale, atol))) if tolerant else same
        differing += int(equal.size - np.count_nonzero(equal))
    return ValueDiff(x.size, differing, nonfinite, max_abs, max_rel)


def _compare_exact(x: np.ndarray, y: np.ndarray) -> ValueDiff:
    import numpy as np

    differing = 0
    for start in range(0, x.size, CHUNK_ELEMENTS):
        differing += int(np.count_nonzero(x[start : start + CHUNK_ELEMENTS] != y[start : start + CHUNK_ELEMENTS]))
    return ValueDiff(x.size, differing, 0, None, None)


def compare_values(x: np.ndarray, y: np.ndarray, atol: float = 0.0, rtol: float = 0.0) -> ValueDiff | None:
    """How two tensors' values differ; None where they cannot be compared (shapes or kinds differ)."""
    if x.shape != y.shape:
        return None
    kinds = {_kind(x), _kind(y)}
    flat_x, flat_y = x.reshape(-1), y.reshape(-1)
    if kinds <= {"float", "exact"} and "float" in kinds:
        return _compare_floats(flat_x, flat_y, atol, rtol)
    if kinds == {"exact"} or kinds == {"bytes"}:
        return _compare_exact(flat_x, flat_y)
    return None  # strings against numbers


# ---- the diff ----------------------------------------------------------------------------------------


def _layer_of(checkpoint: Checkpoint) -> dict[str, str]:
    """Stored key -> scope of the BatchNorm layer it belongs to."""
    return {
        getattr(layer, part): layer.layer for layer in checkpoint.batchnorm for part in PARTS if getattr(layer, part)
    }


def _side(variable: Variable, layers: dict[str, str]) -> Side:
    return Side(variable.name, variable.dtype, variable.shape, variable.role, layers.get(variable.name))


def _check_tolerance(atol: float, rtol: float) -> None:
    for option, value in (("--atol", atol), ("--rtol", rtol)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{option} must be a finite number of at least 0, not {value!r}")


def diff(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    atol: float = 0.0,
    rtol: float = 0.0,
    progress: Progress | None = None,
) -> DiffReport:
    """Compare checkpoint `a` (before) with `b` (after), tensor by tensor.

    Raises CheckpointError when either cannot be read at all, ConfigError for a negative or non-finite
    tolerance. `progress(done, total)` is called after each tensor."""
    _check_tolerance(atol, rtol)
    with opened(a) as first, opened(b) as second:
        matching = match_variables(first.variables, second.variables)
        layers_a, layers_b = _layer_of(first), _layer_of(second)
        total = len(matching.pairs) + len(matching.only_a) + len(matching.only_b)
        tensors: list[TensorDiff] = []
        for pair in matching.pairs:
            side_a, side_b = _side(pair.a, layers_a), _side(pair.b, layers_b)
            tensors.append(_diff_pair(first, second, side_a, side_b, identity(pair.a), pair.matched_by, atol, rtol))
            if progress:
                progress(len(tensors), total)
        tensors += [TensorDiff(Outcome.REMOVED, _side(v, layers_a), None, identity(v)) for v in matching.only_a]
        tensors += [TensorDiff(Outcome.ADDED, None, _side(v, layers_b), identity(v)) for v in matching.only_b]
        if progress:
            progress(total, total)
        return DiffReport(
            a=_ref(a, first),
            b=_ref(b, second),
            atol=atol,
            rtol=rtol,
            tensors=tuple(tensors),
            roles=_roles(tensors),
            batchnorm=_layers(first, second, tensors),
        )


def _diff_pair(
    first: Checkpoint,
    second: Checkpoint,
    a: Side,
    b: Side,
    framework_name: str,
    matched_by: MatchedBy,
    atol: float,
    rtol: float,
) -> TensorDiff:
    """Read one pair, compare, and let go of both before the next pair is read."""
    x, y = first.values(a.name), second.values(b.name)  # both read: the report says which side is damaged
    unreadable = tuple(side for side, values in (("a", x), ("b", y)) if values is None)
    if unreadable:
        return TensorDiff(Outcome.UNREADABLE, a, b, framework_name, matched_by, unreadable_in=unreadable)
    assert x is not None and y is not None
    values = compare_values(x, y, atol, rtol)
    del x, y
    changed = a.dtype != b.dtype or a.shape != b.shape or values is None or values.differing > 0
    outcome = Outcome.CHANGED if changed else Outcome.UNCHANGED
    return TensorDiff(outcome, a, b, framework_name, matched_by, values)


def _ref(path: str | os.PathLike[str], checkpoint: Checkpoint) -> CheckpointRef:
    return CheckpointRef(
        os.fspath(path), checkpoint.resolved.location, checkpoint.reader.format, checkpoint.resolved.note
    )


def _roles(tensors: list[TensorDiff]) -> tuple[RoleSummary, ...]:
    summaries = []
    for role in Role:
        outcomes = [t.outcome for t in tensors if t.role is role]
        if outcomes:
            changed = outcomes.count(Outcome.CHANGED)
            summaries.append(
                RoleSummary(
                    role,
                    compared=changed + outcomes.count(Outcome.UNCHANGED),
                    changed=changed,
                    added=outcomes.count(Outcome.ADDED),
                    removed=outcomes.count(Outcome.REMOVED),
                    unreadable=outcomes.count(Outcome.UNREADABLE),
                )
            )
    return tuple(summaries)


def _layers(first: Checkpoint, second: Checkpoint, tensors: list[TensorDiff]) -> tuple[LayerDiff, ...]:
    by_a = {t.a.name: t for t in tensors if t.a is not None}
    by_b = {t.b.name: t for t in tensors if t.b is not None}
    out = []
    for layer_a, layer_b in match_batchnorm(first, second):
        parts = []
        for part in PARTS:
            key_a = getattr(layer_a, part) if layer_a else None
            key_b = getattr(layer_b, part) if layer_b else None
            found = (by_a.get(key_a) if key_a else None) or (by_b.get(key_b) if key_b else None)
            if found is not None:
                parts.append((part, found.outcome))
        out.append(LayerDiff(*_layer_names(first, second, layer_a, layer_b), tuple(parts)))
    return tuple(out)


def _layer_names(
    first: Checkpoint, second: Checkpoint, layer_a: BatchNormLayer | None, layer_b: BatchNormLayer | None
) -> tuple[str, str]:
    if layer_a is not None:
        return layer_a.layer, first.layer_name(layer_a)
    assert layer_b is not None
    return layer_b.layer, second.layer_name(layer_b)
