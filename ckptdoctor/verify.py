"""Prove in real TensorFlow or Keras that a checkpoint restores into the model (needs the [tf] extra)."""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ckptdoctor.errors import MissingExtraError, ModelError, first_line, message_line
from ckptdoctor.formats import open_checkpoint
from ckptdoctor.model import Storage


@dataclass(frozen=True)
class Mismatch:
    key: str
    expected: str  # dtype[shape] the graph's variable has
    found: str  # dtype[shape] in the checkpoint


@dataclass(frozen=True)
class VerifyResult:
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
        try:
            saver = tf1.train.import_meta_graph(os.fspath(meta_graph), clear_devices=True)
        except Exception as error:
            raise ModelError(f"{meta_graph}: not a MetaGraphDef TensorFlow can import ({error})") from None
        variables = tf1.global_variables()
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
    return VerifyResult(
        checkpoint=resolved.location,
        graph_variables=len(variables),
        missing=tuple(missing),
        mismatched=tuple(mismatched),
        restored=tf_error is None,
        tf_error=tf_error,
    )


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


def _variable_leaf(variable) -> str:
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
            label = f"{layer.name}/{_variable_leaf(variable)}"
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


def _bound_objects(status) -> set[int] | None:
    """ids of the Python objects the restore bound to checkpoint values. TF's own test
    (assert_existing_objects_matched) compares every object with this map; it is not public API, so where it
    is gone None leaves TF's verdict as it stands."""
    bound = getattr(getattr(status, "_checkpoint", None), "object_by_proto_id", None)
    values = getattr(bound, "values", None)
    return {id(found) for found in values()} if callable(values) else None


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


def _restore_bundle(tf, model, location: str, roots: set[str], missing: list[str], notes: list[str]) -> None:
    """Restore a TF2 checkpoint into the model; unbound model variables are named in `missing` and fail the
    restore, unbound training state alone passes with a note."""
    root = tf.train.Checkpoint(model=model) if "model" in roots else tf.train.Checkpoint(root=model)
    status = root.read(location)
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
    return dataclasses.replace(result, warnings=tuple(kept_warnings))


def _verify_model(checkpoint: str | os.PathLike[str], model_spec: str) -> VerifyResult:
    reader, resolved = open_checkpoint(checkpoint)
    try:
        tf = _import_tensorflow()
        model = load_model_spec(model_spec)
        expected = len(model.weights)
        if resolved.storage is Storage.BUNDLE:
            roots = {(t.path or t.name).split("/", 1)[0] for t in reader.tensors()}
            missing: list[str] = []
            mismatched: list[Mismatch] = []
        else:
            missing, mismatched = _compare_keras_layers(reader, model)
    finally:
        reader.close()
    error, notes = None, list[str]()
    try:
        if resolved.storage is Storage.BUNDLE:
            _restore_bundle(tf, model, resolved.location, roots, missing, notes)
        else:
            model.load_weights(resolved.location)
    except AssertionError as failure:  # TF names (up to 10 of) the unbound variables by their Keras path
        if not missing:
            missing.extend(sorted(re.findall(r"<Variable path=([^,>]+)", str(failure))))
        error = f"AssertionError: {_first_line(failure).split(': [<')[0]}"
    except Exception as failure:  # what TF or Keras says is the verdict, whatever its type
        error = f"{type(failure).__name__}: {_first_line(failure)}"
    return VerifyResult(
        resolved.location, expected, tuple(missing), tuple(mismatched), error is None, error, tuple(notes)
    )
