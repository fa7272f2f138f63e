"""A checkpoint against the model that must load it: which variables line up, which do not, and renames.

Every variable the model restores is looked up by name in the checkpoint. Those that are not found (or
found with another shape) go to a small exact search for renames: candidate transforms of the model's names
(a scope prefix added, removed or replaced, a `:0` suffix, a constant Keras counter offset per layer class,
`kernel`/`bias` <-> `weights`/`biases`, Keras `batch_normalization` <-> slim `BatchNorm`) are each applied to
every unmatched name, and a transform is kept only if it increases the number of one-to-one matches with
equal dtype and shape. Two transforms that tie and send one variable to two different keys make that variable
ambiguous: it is reported, never guessed. Names are compared as the checkpoint's model paths (the key itself
for TF1 name-based checkpoints), so the assignment map is meant for TF1 name-based checkpoints.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from enum import Enum
from itertools import combinations

from ckptdoctor.analysis.roles import role_of
from ckptdoctor.formats.model_spec import ModelVariable
from ckptdoctor.formats.object_keys import OBJECT_GRAPH_KEY
from ckptdoctor.model import Report, Role, TensorInfo, Variable
from ckptdoctor.typed import NamedTuple

MAX_CANDIDATES = 32  # transforms tried one at a time, the most supported first
MAX_PAIRED = 12  # of those, tried two at a time when no single one helps (composed renames)
MAX_PER_CANONICAL = 8  # checkpoint keys compared per canonical name when deriving candidates
MAX_SUGGESTION_ROUNDS = 64

# Roles whose variables a model may hold or a checkpoint may carry without either being wrong: an
# evaluation model has no optimizer; a training graph creates its slots and counters fresh.
TRAINING_STATE = frozenset({Role.OPTIMIZER_SLOT, Role.EMA, Role.COUNTER})

_COUNTER = re.compile(r"^(?P<base>.*?[A-Za-z][A-Za-z0-9]*?)(?:_(?P<n>\d{1,6}))?$")
_LEAVES_TO_SLIM = {"kernel": "weights", "bias": "biases"}
_LEAVES_TO_KERAS = {v: k for k, v in _LEAVES_TO_SLIM.items()}
_KERAS_BN, _SLIM_BN = "batch_normalization", "BatchNorm"
_TENSOR_SUFFIX = ":0"


class RenameKind(str, Enum):
    PREFIX = "prefix"  # the scope `old` at the start of a name becomes `new` (either may be empty)
    COUNTER = "counter"  # every component `old` or `old_N` counts `offset` further
    COMPONENT = "component"  # every component `old` becomes `new`
    LEAVES = "leaves"  # the last component renamed by a table (kernel/bias <-> weights/biases)
    SUFFIX = "suffix"  # `old` removed from the end, `new` appended


class Rename(NamedTuple):
    """One transform of a model variable's name into the checkpoint key it is stored under."""

    kind: RenameKind
    old: str = ""
    new: str = ""
    offset: int = 0

    def apply(self, name: str) -> str:
        if self.kind is RenameKind.PREFIX:
            return self.new + name[len(self.old) :] if name.startswith(self.old) else name
        if self.kind is RenameKind.SUFFIX:
            return (name[: -len(self.old)] if self.old and name.endswith(self.old) else name) + self.new
        if self.kind is RenameKind.LEAVES:
            table = _LEAVES_TO_SLIM if self.new == "slim" else _LEAVES_TO_KERAS
            scope, slash, leaf = name.rpartition("/")
            return scope + slash + table.get(leaf, leaf)
        return "/".join(self._component(part) for part in name.split("/"))

    def _component(self, part: str) -> str:
        if self.kind is RenameKind.COMPONENT:
            return self.new if part == self.old else part
        base, number = _counted(part)
        if base != self.old:
            return part
        shifted = number + self.offset
        return part if shifted < 0 else (base if shifted == 0 else f"{base}_{shifted}")

    def __str__(self) -> str:
        if self.kind is RenameKind.PREFIX:
            if not self.old:
                return f"the checkpoint has the extra scope {self.new!r}"
            if not self.new:
                return f"the model has the extra scope {self.old!r}"
            return f"scope {self.old!r} is {self.new!r} in the checkpoint"
        if self.kind is RenameKind.COUNTER:
            return f"Keras counter of {self.old!r} layers is {self.offset:+d} in the checkpoint"
        if self.kind is RenameKind.LEAVES:
            return (
                "kernel/bias are weights/biases in the checkpoint"
                if self.new == "slim"
                else ("weights/biases are kernel/bias in the checkpoint")
            )
        if self.kind is RenameKind.COMPONENT:
            return f"{self.old!r} is {self.new!r} in the checkpoint"
        return f"checkpoint keys end with {self.new!r}" if self.new else f"model names end with {self.old!r}"


def _counted(part: str) -> tuple[str, int]:
    """`batch_normalization_3` -> (`batch_normalization`, 3); `dense` -> (`dense`, 0)."""
    match = _COUNTER.match(part)
    if match is None:
        return part, 0
    return match["base"], int(match["n"]) if match["n"] else 0


def rename_all(renames: Iterable[Rename], name: str) -> str:
    for rename in renames:
        name = rename.apply(name)
    return name


class Pair(NamedTuple):
    model: str  # the model variable's name
    checkpoint: str  # the checkpoint key it restores from


class Mismatch(NamedTuple):
    model: ModelVariable
    stored: Variable


class Ambiguity(NamedTuple):
    model: str
    candidates: tuple[str, ...]  # checkpoint keys of equal dtype and shape, one per tied transform


class MatchResult(NamedTuple):
    """Every model variable in one bucket; checkpoint variables nobody takes, by role."""

    model_variables: int
    matched: tuple[Pair, ...]  # found under its own name
    renamed: tuple[Pair, ...]  # found under the renames
    renames: tuple[Rename, ...]
    missing: tuple[ModelVariable, ...]  # weights and statistics nowhere in the checkpoint
    missing_training_state: tuple[ModelVariable, ...]  # the model's slots and counters, created fresh
    shape_mismatch: tuple[Mismatch, ...]
    dtype_mismatch: tuple[Mismatch, ...]
    ambiguous: tuple[Ambiguity, ...]
    unexpected: tuple[Variable, ...]  # checkpoint weights and statistics no model variable takes
    training_state: tuple[Variable, ...]  # checkpoint slots, EMA shadows, counters: expected extras
    missing_statistics: frozenset[str] = frozenset()  # BN statistics among `missing`

    @property
    def assignment_map(self) -> dict[str, str]:
        return assignment_map([*self.matched, *self.renamed], {v.name for v in self.missing} | self._unmatched_names)

    @property
    def _unmatched_names(self) -> set[str]:
        names = {v.name for v in self.missing_training_state}
        names |= {m.model.name for m in (*self.shape_mismatch, *self.dtype_mismatch)}
        return names | {a.model for a in self.ambiguous}


def _fits(model: ModelVariable, stored: Variable) -> bool:
    return model.dtype == stored.dtype and _shape_fits(model.shape, stored.shape)


def _shape_fits(expected: tuple[int, ...] | None, stored: tuple[int, ...]) -> bool:
    """TensorFlow's is_compatible_with: an unknown rank or dimension (-1) accepts any."""
    if expected is None:
        return True
    return len(expected) == len(stored) and all(e in (-1, s) for e, s in zip(expected, stored, strict=True))


def match_variables(model: Iterable[ModelVariable], stored: Iterable[Variable]) -> MatchResult:
    """Put every model variable in one bucket against the checkpoint's variables (see the module docstring)."""
    model_by_name = {v.name: v for v in model}
    stored_by_path = {v.path: v for v in stored if v.name != OBJECT_GRAPH_KEY}
    exact = [name for name, var in model_by_name.items() if name in stored_by_path and _fits(var, stored_by_path[name])]
    taken = set(exact)
    search = _Search(model_by_name, stored_by_path, taken)
    renames, found, ambiguous = search.run()
    ambiguous_names = {a.model for a in ambiguous}
    missing, fresh, shapes, dtypes_ = [], [], [], []
    for name, var in model_by_name.items():
        if name in taken or name in found or name in ambiguous_names:
            continue
        stored_var = stored_by_path.get(name)
        if stored_var is not None and not _shape_fits(var.shape, stored_var.shape):
            shapes.append(Mismatch(var, stored_var))
        elif stored_var is not None:
            dtypes_.append(Mismatch(var, stored_var))
        elif _role(var) in TRAINING_STATE:
            fresh.append(var)
        else:
            missing.append(var)
    used = taken | set(found.values()) | {m.stored.path for m in (*shapes, *dtypes_)}
    used |= {key for a in ambiguous for key in a.candidates}
    unused = [v for path, v in stored_by_path.items() if path not in used and v.role is not Role.OTHER]
    return MatchResult(
        model_variables=len(model_by_name),
        matched=tuple(Pair(name, name) for name in exact),
        renamed=tuple(Pair(name, key) for name, key in found.items()),
        renames=tuple(renames),
        missing=tuple(missing),
        missing_training_state=tuple(fresh),
        shape_mismatch=tuple(shapes),
        dtype_mismatch=tuple(dtypes_),
        ambiguous=tuple(ambiguous),
        unexpected=tuple(v for v in unused if v.role not in TRAINING_STATE),
        training_state=tuple(v for v in unused if v.role in TRAINING_STATE),
        missing_statistics=frozenset(v.name for v in missing if _role(v) is Role.BN_STATISTIC),
    )


def _role(var: ModelVariable) -> Role:
    return role_of(TensorInfo(var.name, var.dtype, var.shape or (), 0))


# Of two renames that explain the same matches, the more specific one is shown: `dense` counting one
# further, rather than the scope `dense/` being `dense_1/`.
_PREFERENCE = (RenameKind.COUNTER, RenameKind.LEAVES, RenameKind.COMPONENT, RenameKind.SUFFIX, RenameKind.PREFIX)


def _simplest_first(step: tuple[Rename, ...]) -> tuple[int, ...]:
    return (len(step), *sorted(_PREFERENCE.index(rename.kind) for rename in step))


def _canonical(name: str) -> str:
    """A name with every difference the candidate transforms can make removed, to find which to try."""
    name = name.removesuffix(_TENSOR_SUFFIX)
    parts = [_counted(part)[0] for part in name.split("/")]
    parts = [_KERAS_BN if part == _SLIM_BN else part for part in parts]
    parts[-1] = _LEAVES_TO_KERAS.get(parts[-1], parts[-1])
    return "/".join(parts)


class _Search:
    """The greedy search for renames over the model variables not found under their own name."""

    def __init__(self, model: dict[str, ModelVariable], stored: dict[str, Variable], taken: set[str]) -> None:
        self.model, self.stored, self.taken = model, stored, taken
        self.pending = [name for name in model if name not in taken]
        self.free = [path for path in stored if path not in taken]

    def run(self) -> tuple[list[Rename], dict[str, str], list[Ambiguity]]:
        chosen: list[Rename] = []
        ambiguous: list[Ambiguity] = []
        candidates = self._candidates()
        current = self._hits(chosen)
        for _ in range(MAX_SUGGESTION_ROUNDS):
            steps = [(t,) for t in candidates if t not in chosen]
            best, tied = self._best(chosen, steps, len(current))
            if best is None:
                pairs = [p for p in combinations(candidates[:MAX_PAIRED], 2) if not set(p) & set(chosen)]
                best, tied = self._best(chosen, pairs, len(current))
            if best is None:
                break
            conflicts = self._conflicts(chosen, [best, *tied])
            if conflicts:
                ambiguous.extend(Ambiguity(name, keys) for name, keys in sorted(conflicts.items()))
                self.pending = [name for name in self.pending if name not in conflicts]
                dropped = {t for step in (best, *tied) for t in step}
                candidates = [t for t in candidates if t not in dropped]
                current = self._hits(chosen)
                continue
            chosen.extend(best)
            current = self._hits(chosen)
        return chosen, current, ambiguous

    def _best(self, chosen, steps, baseline: int):
        """The step that adds the most matches (None if none adds any), and the steps that tie with it."""
        scored = [(len(self._hits([*chosen, *step])), step) for step in steps]
        top = max((score for score, _ in scored), default=0)
        if top <= baseline:
            return None, []
        winners = sorted((step for score, step in scored if score == top), key=_simplest_first)
        return winners[0], winners[1:]

    def _conflicts(self, chosen, steps) -> dict[str, tuple[str, ...]]:
        """Variables that tied steps send to different checkpoint keys, with those keys."""
        targets: dict[str, set[str]] = {}
        for step in steps:
            for name, key in self._hits([*chosen, *step]).items():
                targets.setdefault(name, set()).add(key)
        return {name: tuple(sorted(keys)) for name, keys in targets.items() if len(keys) > 1}

    def _hits(self, renames: list[Rename]) -> dict[str, str]:
        """Model variable -> checkpoint key for the one-to-one, equal dtype and shape matches under `renames`."""
        targets = {}
        for name in self.pending:
            key = rename_all(renames, name)
            stored = self.stored.get(key)
            if stored is not None and key not in self.taken and _fits(self.model[name], stored):
                targets[name] = key
        counts = Counter(targets.values())
        return {name: key for name, key in targets.items() if counts[key] == 1}

    def _candidates(self) -> list[Rename]:
        """Transforms worth trying, the most supported first: derived by comparing canonical names."""
        support: Counter[Rename] = Counter()
        by_canonical: dict[str, list[str]] = {}
        by_suffix: dict[str, list[str]] = {}
        for path in self.free:
            canonical = _canonical(path)
            by_canonical.setdefault(canonical, []).append(path)
            parts = canonical.split("/")
            for start in range(1, len(parts)):
                by_suffix.setdefault("/".join(parts[start:]), []).append(path)
        free_canonical = set(by_canonical)
        for name in self.pending:
            canonical = _canonical(name)
            parts, raw = canonical.split("/"), name.split("/")
            for path in by_suffix.get(canonical, ())[:MAX_PER_CANONICAL]:  # the checkpoint has more scope
                depth = path.count("/") - name.count("/")
                support[Rename(RenameKind.PREFIX, "", "/".join(path.split("/")[:depth]) + "/")] += 1
            for start in range(1, len(parts)):  # the model has more scope, or another first scope
                rest = "/".join(parts[start:])
                if rest in free_canonical:
                    support[Rename(RenameKind.PREFIX, "/".join(raw[:start]) + "/", "")] += 1
                if start > 1:
                    continue
                for path in by_suffix.get(rest, ())[:MAX_PER_CANONICAL]:  # another first scope: tower_0 is tower_1
                    first = path.split("/", 1)[0]
                    if path.count("/") == len(raw) - 1 and first != raw[0]:
                        support[Rename(RenameKind.PREFIX, raw[0] + "/", first + "/")] += 1
            for path in by_canonical.get(canonical, ())[:MAX_PER_CANONICAL]:
                for mine, theirs in zip(raw, path.split("/"), strict=False):
                    (base, number), (their_base, their_number) = _counted(mine), _counted(theirs)
                    if base == their_base and number != their_number:
                        support[Rename(RenameKind.COUNTER, base, offset=their_number - number)] += 1
        fixed = [
            Rename(RenameKind.LEAVES, new="slim"),
            Rename(RenameKind.LEAVES, new="keras"),
            Rename(RenameKind.COMPONENT, _KERAS_BN, _SLIM_BN),
            Rename(RenameKind.COMPONENT, _SLIM_BN, _KERAS_BN),
            Rename(RenameKind.SUFFIX, new=_TENSOR_SUFFIX),
            Rename(RenameKind.SUFFIX, old=_TENSOR_SUFFIX),
        ]
        derived = [rename for rename, _ in support.most_common(MAX_CANDIDATES)]
        return derived + [rename for rename in fixed if rename not in derived]


def assignment_map(pairs: Iterable[Pair], unmatched: Iterable[str] = ()) -> dict[str, str]:
    """`{checkpoint: model}` in the form tf.compat.v1.train.init_from_checkpoint takes.

    A model scope becomes one `'checkpoint_scope/': 'model_scope/'` entry when every model variable under it
    restores from the same checkpoint scope under the same remaining name (TensorFlow then requires each of
    them in the checkpoint, so a scope holding an unmatched variable is never mapped whole); the root scope
    is written `/`. Other variables get exact `'checkpoint_name': 'model_name'` entries."""
    by_model = {pair.model: pair.checkpoint for pair in pairs}
    everything = sorted(set(by_model) | set(unmatched))
    out: dict[str, str] = {}
    _map_scope("", everything, by_model, out)
    return out


def _map_scope(scope: str, names: list[str], by_model: dict[str, str], out: dict[str, str]) -> None:
    checkpoint_scope = _common_checkpoint_scope(scope, names, by_model)
    if checkpoint_scope is not None:
        out[checkpoint_scope or "/"] = scope or "/"
        return
    children: dict[str, list[str]] = {}
    for name in names:
        rest = name[len(scope) :]
        if "/" in rest:
            children.setdefault(scope + rest.split("/", 1)[0] + "/", []).append(name)
        elif name in by_model:
            out[by_model[name]] = name
    for child, members in children.items():
        _map_scope(child, members, by_model, out)


def _common_checkpoint_scope(scope: str, names: list[str], by_model: dict[str, str]) -> str | None:
    """The checkpoint scope every name under `scope` restores from with its remaining name, else None."""
    found: str | None = None
    for name in names:
        key, rest = by_model.get(name), name[len(scope) :]
        if key is None or not key.endswith(rest) or (len(key) > len(rest) and key[-len(rest) - 1] != "/"):
            return None
        prefix = key[: len(key) - len(rest)]
        if found is not None and prefix != found:
            return None
        found = prefix
    return found


def saver_var_list(assignment_map: dict[str, str], model_names: Iterable[str]) -> dict[str, str]:
    """`{checkpoint_name: model_name}` for every variable an assignment map covers, expanded over the model's
    names as init_from_checkpoint expands scopes: what tf.compat.v1.train.Saver(var_list=...) needs, with
    each model name replaced by its variable."""
    names = sorted(model_names)
    known = set(names)
    out: dict[str, str] = {}
    for checkpoint, model in sorted(assignment_map.items()):
        if model in known:
            out[checkpoint] = model
            continue
        scope = model[: model.rindex("/")] if "/" in model else ""
        for name in names:
            if scope and not name.startswith(scope + "/"):
                continue
            rest = name[len(scope) :] if model == "/" else name[len(scope) + 1 :]
            out[(rest if checkpoint == "/" else checkpoint + rest).removesuffix("/")] = name
    return out


def load_model(meta_graph: str | None = None, model: str | None = None) -> tuple[ModelVariable, ...]:
    """What the model restores: from a meta graph, a `.keras` file (both without TensorFlow), or a
    `package.module:builder` (with the [tf] extra)."""
    if meta_graph is not None:
        from ckptdoctor.formats.meta_graph import read_variables

        return read_variables(meta_graph)  # a path or a URL; an absent one is "meta graph file not found"
    assert model is not None
    if os.path.lexists(model):
        from ckptdoctor.formats.model_spec import keras_file_variables

        return keras_file_variables(model)
    from ckptdoctor.verify import load_model_spec

    built = load_model_spec(model)
    return tuple(
        ModelVariable(getattr(v, "path", v.name), str(v.dtype), tuple(int(d) for d in v.shape), bool(v.trainable))
        for v in built.weights
    )


def match(
    path: str | os.PathLike[str], meta_graph: str | None = None, model: str | None = None
) -> tuple[MatchResult, Report]:
    """Match a checkpoint against the model (a meta graph or a Keras model): the buckets, and the report
    whose findings are the mapping rules' (before any policy)."""
    from ckptdoctor.analysis.checkpoint import opened
    from ckptdoctor.diagnose import report_of
    from ckptdoctor.errors import ModelError
    from ckptdoctor.model import FormatFamily
    from ckptdoctor.rules import Command, rules_run
    from ckptdoctor.rules.mapping import findings

    expected = load_model(meta_graph, model)
    with opened(path) as checkpoint:
        # A TF1 SavedModel's variables have no object graph: TF1 restores them by name, as here.
        by_graph = any(info.name == OBJECT_GRAPH_KEY for info in checkpoint.reader.tensors())
        if checkpoint.reader.format.family is FormatFamily.TF2 and by_graph:
            raise ModelError(
                f"{checkpoint.resolved.location}: a TF2 object-based checkpoint restores by its object graph, not "
                "by name: use `ckptdoctor verify --model` for it"
            )
        result = match_variables(expected, checkpoint.variables)
        return result, report_of(path, checkpoint, findings(result), rules=rules_run(Command.MATCH))


def summary(result: MatchResult) -> list[str]:
    """The buckets in a few lines of plain text (names are escaped by the caller)."""
    lines = [
        f"{result.model_variables} model variables: {len(result.matched)} matched by name, "
        f"{len(result.renamed)} renamed, {len(result.missing)} missing, {len(result.shape_mismatch)} shape "
        f"mismatch, {len(result.dtype_mismatch)} dtype mismatch, {len(result.ambiguous)} ambiguous, "
        f"{len(result.missing_training_state)} training state created fresh",
        f"checkpoint: {len(result.unexpected)} unexpected, {len(result.training_state)} optimizer slots, EMA "
        "shadows and counters set apart (expected)",
    ]
    lines += [f"rename: {rename}" for rename in result.renames]
    return lines
