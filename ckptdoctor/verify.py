"""Prove in real TensorFlow or Keras that a checkpoint restores into the model (needs the [tf] extra)."""

from __future__ import annotations

import os
import re
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


def verify_model(checkpoint: str | os.PathLike[str], model_spec: str) -> VerifyResult:
    """Load CHECKPOINT into a fresh copy of the model: Keras files with load_weights, TF2 checkpoints
    with tf.train.Checkpoint(...).read(...).assert_consumed()."""
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
    error = None
    try:
        if resolved.storage is Storage.BUNDLE:
            root = tf.train.Checkpoint(model=model) if "model" in roots else tf.train.Checkpoint(root=model)
            status = root.read(resolved.location)
            status.expect_partial()  # optimizer state the eval model does not hold is expected, not an error
            status.assert_existing_objects_matched()
        else:
            model.load_weights(resolved.location)
    except AssertionError as failure:  # TF names the unbound variables by their Keras path
        missing.extend(sorted(re.findall(r"<Variable path=([^,>]+)", str(failure))))
        error = f"AssertionError: {_first_line(failure).split(': [<')[0]}"
    except Exception as failure:  # what TF or Keras says is the verdict, whatever its type
        error = f"{type(failure).__name__}: {_first_line(failure)}"
    return VerifyResult(resolved.location, expected, tuple(missing), tuple(mismatched), error is None, error)
