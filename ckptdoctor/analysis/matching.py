"""Which variable (and which BatchNorm layer) of one checkpoint is which in another, across formats.

The same model saved as a TF1 bundle, a TF2 object-based checkpoint, a legacy Keras `.h5` and a `.keras`
archive stores its variables under different keys; the framework's own name (`bn_default/gamma`), where the
file records one, is what they share. Keys are tried first: two checkpoints of one format share them."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from enum import Enum

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.model import BatchNormLayer, Variable
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from ckptdoctor.analysis.checkpoint import Checkpoint


class MatchedBy(str, Enum):
    KEY = "key"  # the same stored key in both files
    FRAMEWORK_NAME = "framework-name"  # different keys, the same framework name (full name or model path)


def identity(variable: Variable) -> str:
    """What names a variable across formats: the framework's own name where the file records one."""
    return variable.full_name or variable.path


class Pair(NamedTuple):
    a: Variable
    b: Variable
    matched_by: MatchedBy


class Matching(NamedTuple):
    pairs: tuple[Pair, ...]
    only_a: tuple[Variable, ...]  # in the first checkpoint only, in its order
    only_b: tuple[Variable, ...]


def _unique_by_identity(variables: Iterable[Variable]) -> dict[str, Variable]:
    """Variables by framework name, leaving out names that several variables share (no guessing)."""
    groups: defaultdict[str, list[Variable]] = defaultdict(list)
    for variable in variables:
        groups[identity(variable)].append(variable)
    return {name: group[0] for name, group in groups.items() if len(group) == 1}


def match_variables(a: Iterable[Variable], b: Iterable[Variable]) -> Matching:
    """Pair variables by key, then the rest by framework name where that name is unique on both sides."""
    a, b = tuple(a), tuple(b)
    b_by_key = {variable.name: variable for variable in b}
    pairs = [Pair(variable, b_by_key[variable.name], MatchedBy.KEY) for variable in a if variable.name in b_by_key]
    paired_a = {pair.a.name for pair in pairs}
    paired_b = {pair.b.name for pair in pairs}
    theirs = _unique_by_identity(variable for variable in b if variable.name not in paired_b)
    mine = _unique_by_identity(variable for variable in a if variable.name not in paired_a)
    for name, variable in mine.items():
        other = theirs.get(name)
        if other is not None:
            pairs.append(Pair(variable, other, MatchedBy.FRAMEWORK_NAME))
            paired_a.add(variable.name)
            paired_b.add(other.name)
    return Matching(
        pairs=tuple(pairs),
        only_a=tuple(variable for variable in a if variable.name not in paired_a),
        only_b=tuple(variable for variable in b if variable.name not in paired_b),
    )


def match_batchnorm(a: Checkpoint, b: Checkpoint) -> tuple[tuple[BatchNormLayer | None, BatchNormLayer | None], ...]:
    """BatchNorm layers paired by scope, then by framework layer name; unpaired layers stand alone."""
    by_scope = {layer.layer: layer for layer in b.batchnorm}
    by_name = {b.layer_name(layer): layer for layer in b.batchnorm}
    pairs: list[tuple[BatchNormLayer | None, BatchNormLayer | None]] = []
    used: set[str] = set()
    for layer in a.batchnorm:
        other = by_scope.get(layer.layer) or by_name.get(a.layer_name(layer))
        if other is not None and other.layer in used:
            other = None
        if other is not None:
            used.add(other.layer)
        pairs.append((layer, other))
    pairs.extend((None, layer) for layer in b.batchnorm if layer.layer not in used)
    return tuple(pairs)
