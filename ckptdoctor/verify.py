"""Prove in real TensorFlow or Keras that a checkpoint restores into the model (needs the [tf] extra)."""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from ckptdoctor.errors import MissingExtraError, ModelError, first_line, message_line
from ckptdoctor.formats import open_checkpoint
from ckptdoctor.model import Storage
from ckptdoctor.names import listed
from ckptdoctor.typed import NamedTuple


class Mismatch(NamedTuple):
    key: str
    expected: str  # dtype[shape] the graph's variable has
    found: str  # dtype[shape] in the checkpoint


class VerifyResult(NamedTuple):
    checkpoint: str
    graph_variables: int  # variables the model or graph expects
    missing: tuple[str, ...]
    mismatched: tuple[Mismatch, ...]
    restored: bool
    tf_error: str | None
    notes: tuple[str, ...] = ()  # what was left unrestored on purpose, and why
    warnings: tuple[str, ...] = ()  # what Keras or TF warned while loading, one line each, each once

    @property
    def ok(self) -> bool:
        return self.restored and not self.missing and not self.mismatched


def _import_tensorflow():
    """Import TensorFlow with its start-up chatter (CUDA probes, oneDNN notices) kept off stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved_stderr = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf
    except ImportError:
        raise MissingExtraError("verify needs TensorFlow: pip install 'ckptdoctor[tf]'") from None
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
    return tf


ESSENTIAL_LINE_LIMIT = 400  # characters of what TF or Keras said that a result keeps
_ESSENTIAL = re.compile(
    r"not found in checkpoint|[Ss]hape|[Cc]hecksum|DataLoss|corrupt|expected \d+ variables|"
    r"[Ww]eight count mismatch|not bound|Unresolved object"
)


def _essential_line(message: str) -> str:
    """The useful line of what TF or Keras said ("Key ... not found in checkpoint"), without the advice."""
    return message_line(message, ESSENTIAL_LINE_LIMIT, _ESSENTIAL)


_RELEASE = re.compile(r"\d+(?:\.\d+)*")


def import_meta_graph(tf, path: str):
    """Import the MetaGraphDef at `path` into the default graph; its Saver, or None where it has none.

    A file over MAX_META_BYTES is refused. TF reads `meta_info_def.tensorflow_version` only to tell graphs
    written before 1.9, and fails on a version packaging cannot parse: graphs of TF 0.12 say `0.12.head`. The
    version is cut to its release numbers (`0.12`) first, which tells TF what it wanted to know."""
    from ckptdoctor.formats.meta_graph import MAX_META_BYTES

    try:
        size = os.stat(path).st_size
        with open(path, "rb") as file:
            data = file.read(MAX_META_BYTES + 1)
    except OSError as error:
        raise ModelError(f"{path}: cannot read the meta graph ({error.strerror})") from None
    if size > MAX_META_BYTES or len(data) > MAX_META_BYTES:
        raise ModelError(f"{path}: larger than {MAX_META_BYTES >> 20} MiB, not imported")
    meta = tf.compat.v1.MetaGraphDef()
    try:
        meta.ParseFromString(data)
    except Exception:  # a text-format .meta, which TF's own import also reads
        source = path
    else:
        version = meta.meta_info_def.tensorflow_version
        release = _RELEASE.match(version)
        meta.meta_info_def.tensorflow_version = release.group() if release else ""
        source = meta
    try:
        return tf.compat.v1.train.import_meta_graph(source, clear_devices=True)
    except Exception as error:  # TF raises many types for a file it cannot import
        raise ModelError(f"{path}: not a MetaGraphDef TensorFlow can import ({first_line(error)})") from None


def verify_meta_graph(checkpoint: str | os.PathLike[str], meta_graph: str | os.PathLike[str]) -> VerifyResult:
    """Compare every variable the eval graph restores with the checkpoint, then restore it in a Session."""
    reader, resolved = open_checkpoint(checkpoint)
    try:
        stored = {t.name: f"{t.dtype}{list(t.shape)}" for t in reader.tensors()}
    finally:
        reader.close()
    if not os.path.isfile(meta_graph):
        raise ModelError(f"{meta_graph}: meta graph file not found")
    tf = _import_tensorflow()
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        saver = import_meta_graph(tf, os.fspath(meta_graph))
        variables = tf1.global_variables()
        # A float the graph trains is a weight, whatever its name says (an integer in the collection, as TF 0.12
        # put `global_step` there by default, is not: nothing trains it).
        trainable = {var.op.name for var in tf1.trainable_variables() if var.dtype.base_dtype.is_floating}
        saver = saver or tf1.train.Saver(variables)
        missing, mismatched = [], []
        for var in variables:
            key = var.op.name
            expected = f"{var.dtype.base_dtype.name}{var.shape.as_list()}"
            if key not in stored:
                missing.append(key)
            elif stored[key] != expected:
                mismatched.append(Mismatch(key, expected, stored[key]))
        tf_error = None
        with tf1.Session(graph=graph) as session:
            try:
                saver.restore(session, resolved.location)
            except tf.errors.OpError as error:
                tf_error = f"{type(error).__name__}: {_essential_line(error.message)}"
    notes: tuple[str, ...] = ()
    if tf_error is None:  # the graph's own saver restores a subset (a serving export's), and did
        # A counter or an optimizer slot it leaves out starts from its initializer harmlessly; a weight or a
        # BatchNorm statistic would too, and evaluation would run with it: that stays missing.
        by_key = {var.op.name: var for var in variables}
        state = [key for key in missing if key not in trainable and _training_state(key, by_key[key])]
        notes = tuple(
            f"{key} is not in the checkpoint, and the graph's saver leaves it to its initializer" for key in state
        )
        missing = [key for key in missing if key not in state]
    return VerifyResult(
        checkpoint=resolved.location,
        graph_variables=len(variables),
        missing=tuple(missing),
        mismatched=tuple(mismatched),
        restored=tf_error is None,
        tf_error=tf_error,
        notes=notes,
    )


def _training_state(key: str, variable) -> bool:
    """Whether a graph variable is a counter or an optimizer slot, by the roles `inspect` gives."""
    from ckptdoctor.analysis.roles import role_of
    from ckptdoctor.model import Role, TensorInfo

    shape = () if variable.shape.rank == 0 else (1,)  # the roles ask only whether it is a scalar
    info = TensorInfo(key, variable.dtype.base_dtype.name, shape, 0)
    return role_of(info) in (Role.COUNTER, Role.OPTIMIZER_SLOT)


def load_model_spec(spec: str):
    """A fresh model from `MODEL.keras` (architecture only, weights re-initialised) or `package.module:builder`."""
    _import_tensorflow()
    import importlib

    import keras

    if os.path.isfile(spec):
        try:
            saved = keras.saving.load_model(spec, compile=False)
        except Exception as error:  # Keras raises many types for a file it cannot load
            raise ModelError(f"{spec}: Keras cannot load this model ({_first_line(error)})") from None
        return keras.models.clone_model(saved)
    module_name, _, attribute = spec.partition(":")
    if not attribute:
        raise ModelError(f"{spec}: --model is neither a model file nor package.module:builder")
    try:
        builder = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ModelError(f"{spec}: cannot import the model builder ({error})") from None
    return builder()


def _first_line(error: BaseException) -> str:
    return first_line(error, ESSENTIAL_LINE_LIMIT, _ESSENTIAL)


def variable_leaf(variable) -> str:
    """`moving_mean` of a Keras 3 variable (`.path`) or a tf.keras one (a tf.Variable: `.name` `bn/moving_mean:0`)."""
    path = getattr(variable, "path", None) or variable.name
    return path.rsplit("/", 1)[-1].split(":", 1)[0]


def _compare_keras_layers(reader, model) -> tuple[list[str], list[Mismatch]]:
    """Layer by layer: variables the model expects that the file lacks, and shape disagreements."""
    stored: dict[str, list] = {}
    for info in reader.tensors():
        path = info.path or info.name
        stored.setdefault(path.rpartition("/")[0], []).append(info)
    missing, mismatched = [], []
    for layer in model.layers:
        expected = list(layer.weights)
        found = stored.get(layer.name, [])
        for index, variable in enumerate(expected):
            label = f"{layer.name}/{variable_leaf(variable)}"
            if index >= len(found):
                missing.append(label)
                continue
            shape_expected, shape_found = tuple(variable.shape), found[index].shape
            if shape_expected != shape_found:
                mismatched.append(
                    Mismatch(
                        label, f"{variable.dtype}{list(shape_expected)}", f"{found[index].dtype}{list(shape_found)}"
                    )
                )
    return missing, mismatched


WARNINGS_SHOWN = 10  # distinct warnings a result keeps
QUIET_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)  # as Python


@contextmanager
def _warnings_in_one_line(kept: list[str]) -> Iterator[None]:
    """Python warnings raised inside, each distinct one once, as one line (`3×` where it repeats with other
    numbers, as Keras's per-container warnings do), instead of two lines of file, line and source each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    visible = [warning for warning in caught if not issubclass(warning.category, QUIET_BY_DEFAULT)]
    lines = [
        f"{warning.category.__name__}: {message_line(str(warning.message), ESSENTIAL_LINE_LIMIT)}"
        for warning in visible
    ]
    counts = Counter(re.sub(r"\d+", "N", line) for line in lines)
    first = {re.sub(r"\d+", "N", line): line for line in reversed(lines)}  # each template's first line
    for template in list(counts)[:WARNINGS_SHOWN]:
        line = first[template]
        kept.append(f"{line} ({counts[template]}×)" if counts[template] > 1 else line)


NAMES_SHOWN = 6  # unrestored variables a note names before "and N more"


def _variable_name(variable) -> str:
    return (getattr(variable, "path", None) or variable.name).split(":", 1)[0]


def bound_nodes(status) -> dict[int, int] | None:
    """The object graph node each Python object the restore bound to a checkpoint value came from, by the
    object's id. TF's own test (assert_existing_objects_matched) compares every object with this map; it is
    not public API, so where it is gone None leaves TF's verdict as it stands."""
    bound = getattr(getattr(status, "_checkpoint", None), "object_by_proto_id", None)
    items = getattr(bound, "items", None)
    return {id(found): node_id for node_id, found in items()} if callable(items) else None


def _bound_objects(status) -> set[int] | None:
    """ids of the Python objects the restore bound to checkpoint values (None: TF no longer says)."""
    nodes = bound_nodes(status)
    return None if nodes is None else set(nodes)


def _training_state_note(model, bound: set[int], failure: AssertionError) -> str:
    """What the restore left unbound although every model variable was restored: the optimizer's and the
    metrics' variables, which the checkpoint holds no value for (it was written without them)."""
    optimizer = getattr(model, "optimizer", None)
    training_state = [*getattr(optimizer, "variables", []), *getattr(model, "metrics_variables", [])]
    unbound = [_variable_name(variable) for variable in training_state if id(variable) not in bound]
    counted = re.search(r"Found (\d+) Python objects", str(failure))
    others = max(int(counted.group(1)) - len(unbound), 0) if counted else 0  # e.g. tf.keras's learning rate
    rest = max(len(unbound) - NAMES_SHOWN, 0) + others
    named = ", ".join(unbound[:NAMES_SHOWN]) or "training state"
    what = f"{named} and {rest} more" if rest else named
    return (
        f"not restored: {what}: optimizer and metric state the checkpoint holds no value for (written without "
        "it); every variable of the model itself was restored, and evaluating or serving the model does not use it"
    )


MAX_ROOT_CANDIDATES = 8  # root children a model is tried under (each try is a restore in TensorFlow)
ROOT_CHILDREN_SHOWN = 8  # root children a message names before "and N more"
MODEL_CHILD = "model"  # tf.train.Checkpoint(model=model), the name Keras's own docs use
NOT_MODELS = frozenset({"save_counter", "optimizer", "root"})  # `root=` makes its object the root, not a child


class RootChoice(NamedTuple):
    """Where a model sits in a TF2 checkpoint: under a root child (`net` of `Checkpoint(step=..., net=model)`),
    or as the root itself (None: `Checkpoint(root=model)`, `save_weights`, a SavedModel)."""

    child: str | None
    binds: bool  # every required variable of the model is bound there
    children: tuple[str, ...]  # the root's children, as the checkpoint names them

    def checkpoint(self, tf, model):
        return tf.train.Checkpoint(root=model) if self.child is None else tf.train.Checkpoint(**{self.child: model})

    def children_line(self) -> str:
        return f"the checkpoint's root holds: {listed(self.children, ROOT_CHILDREN_SHOWN) or 'nothing'}"


class RootChildren(NamedTuple):
    names: tuple[str, ...]  # every child of the checkpoint's root, in the graph's order
    candidates: tuple[str, ...]  # those that may hold a model


def root_children(reader) -> RootChildren:
    """The root's children, and those that may hold a model: not the optimizer, not a counter or other lone
    variable (`step`), and holding model variables below them."""
    graph = getattr(reader, "object_graph", None)
    if graph is None:  # no object graph to read: the first segment of each key, as TF1 names scopes
        names = tuple(dict.fromkeys((t.path or t.name).split("/", 1)[0] for t in reader.tensors()))
        return RootChildren(names, tuple(name for name in names if name == MODEL_CHILD))
    from ckptdoctor.formats.object_graph import escape_local_name

    nodes = graph.proto.nodes
    names = tuple(child.local_name for child in nodes[0].children) if nodes else ()
    holding = {
        variable.path.split("/", 1)[0]
        for variable in graph.variables.values()
        if "/" in variable.path and variable.slot_of is None and not variable.optimizer_only
    }
    candidates = (
        name for name in dict.fromkeys(names) if name not in NOT_MODELS and escape_local_name(name) in holding
    )
    return RootChildren(names, tuple(candidates))


def choose_root(tf, model, location: str, roots: RootChildren, required: list) -> RootChoice:
    """The root child the model binds under, tried in TensorFlow: `model` first, then the root itself, then
    each other child that holds model variables (at most MAX_ROOT_CANDIDATES tries). Where several children
    bind every required variable there is no telling which is the model (a ModelError); where none does,
    the likeliest (`model`, else the one candidate, else the root) with `binds` False, so the caller's
    restore reports what is missing."""
    names, candidates = roots.names, roots.candidates
    first = [MODEL_CHILD] if MODEL_CHILD in candidates else []
    order: list[str | None] = [*first, None, *[name for name in candidates if name != MODEL_CHILD]]
    fallback = MODEL_CHILD if first else candidates[0] if len(candidates) == 1 else None
    binding: list[str | None] = []
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # a try that binds nothing warns of every unrestored value as it is freed
    try:
        for child in order[:MAX_ROOT_CANDIDATES]:
            bound = _binds(tf, model, location, RootChoice(child, False, names), required)
            if bound is None:  # TF no longer says what it bound: the choice made before trying
                return RootChoice(fallback, False, names)
            if bound:
                binding.append(child)
                if child == MODEL_CHILD or child is None:
                    break
    finally:
        logger.setLevel(level)
    if len(binding) > 1:
        raise ModelError(
            f"{location}: the model binds under each of {', '.join(map(str, binding))} "
            f"({RootChoice(None, False, names).children_line()}), so which one is the model cannot be told"
        )
    return RootChoice(binding[0], True, names) if binding else RootChoice(fallback, False, names)


def _binds(tf, model, location: str, choice: RootChoice, required: list) -> bool | None:
    """Whether a restore with the model under `choice` binds every required variable (None: TF cannot say)."""
    try:
        status = choice.checkpoint(tf, model).read(location)
    except Exception:  # a shape that differs, a damaged value: not this child, or reported by the real restore
        return False
    status.expect_partial()
    bound = _bound_objects(status)
    return None if bound is None else all(id(variable) in bound for variable in required)


def _restore_bundle(tf, model, location: str, choice: RootChoice, missing: list[str], notes: list[str]) -> None:
    """Restore a TF2 checkpoint into the model, bound under the root child chosen; unbound model variables
    are named in `missing` and fail the restore, unbound training state alone passes with a note."""
    status = choice.checkpoint(tf, model).read(location)
    status.expect_partial()  # optimizer state the eval model does not hold is expected, not an error
    try:
        status.assert_existing_objects_matched()
    except AssertionError as failure:
        bound = _bound_objects(status)
        if bound is None:
            raise
        missing.extend(_variable_name(variable) for variable in model.weights if id(variable) not in bound)
        if missing:
            raise
        notes.append(_training_state_note(model, bound, failure))


def verify_model(checkpoint: str | os.PathLike[str], model_spec: str) -> VerifyResult:
    """Load CHECKPOINT into a fresh copy of the model: Keras files with load_weights, TF2 checkpoints
    with tf.train.Checkpoint(...).read(...).assert_existing_objects_matched()."""
    kept_warnings: list[str] = []
    with _warnings_in_one_line(kept_warnings):
        result = _verify_model(checkpoint, model_spec)
    return result._replace(warnings=tuple(kept_warnings))


def _verify_model(checkpoint: str | os.PathLike[str], model_spec: str) -> VerifyResult:
    reader, resolved = open_checkpoint(checkpoint)
    try:
        tf = _import_tensorflow()
        model = load_model_spec(model_spec)
        expected = len(model.weights)
        if resolved.storage is Storage.BUNDLE:
            roots = root_children(reader)
            missing: list[str] = []
            mismatched: list[Mismatch] = []
        else:
            missing, mismatched = _compare_keras_layers(reader, model)
    finally:
        reader.close()
    error, notes = None, list[str]()
    choice = None
    if resolved.storage is Storage.BUNDLE:  # a model that binds under two children is an error (exit 2)
        choice = choose_root(tf, model, resolved.location, roots, list(model.weights))
    try:
        if choice is not None:
            _restore_bundle(tf, model, resolved.location, choice, missing, notes)
        else:
            model.load_weights(resolved.location)
    except AssertionError as failure:  # TF names (up to 10 of) the unbound variables by their Keras path
        if not missing:
            missing.extend(sorted(re.findall(r"<Variable path=([^,>]+)", str(failure))))
        error = f"AssertionError: {_first_line(failure).split(': [<')[0]}"
    except Exception as failure:  # what TF or Keras says is the verdict, whatever its type
        error = f"{type(failure).__name__}: {_first_line(failure)}"
    if error and choice is not None and not choice.binds:
        error = f"{error} ({choice.children_line()})"
    return VerifyResult(
        resolved.location, expected, tuple(missing), tuple(mismatched), error is None, error, tuple(notes)
    )
