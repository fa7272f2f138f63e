"""Prove in real TensorFlow that a checkpoint restores into an evaluation graph (needs the [tf] extra)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ckptdoctor.formats import open_checkpoint
from ckptdoctor.model import CheckpointError


class MissingExtra(CheckpointError):
    """TensorFlow is not installed."""


@dataclass(frozen=True)
class Mismatch:
    key: str
    expected: str  # dtype[shape] the graph's variable has
    found: str  # dtype[shape] in the checkpoint


@dataclass(frozen=True)
class VerifyResult:
    checkpoint: str
    graph_variables: int
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
        raise MissingExtra("verify needs TensorFlow: pip install 'ckptdoctor[tf]'") from None
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
        os.close(devnull)
    return tf


def _essential_line(message: str) -> str:
    """TF wraps the useful line ("Key ... not found in checkpoint") in paragraphs of advice."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"not found in checkpoint|[Ss]hape|[Cc]hecksum|DataLoss|corrupt", line):
            return line
    return lines[0] if lines else message


def verify_meta_graph(checkpoint: str | os.PathLike[str], meta_graph: str | os.PathLike[str]) -> VerifyResult:
    """Compare every variable the eval graph restores with the checkpoint, then restore it in a Session."""
    reader, resolved = open_checkpoint(checkpoint)
    try:
        stored = {t.name: f"{t.dtype}{list(t.shape)}" for t in reader.tensors()}
    finally:
        reader.close()
    if not os.path.isfile(meta_graph):
        raise CheckpointError(f"{meta_graph}: meta graph file not found")
    tf = _import_tensorflow()
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        try:
            saver = tf1.train.import_meta_graph(os.fspath(meta_graph), clear_devices=True)
        except Exception as error:
            raise CheckpointError(f"{meta_graph}: not a MetaGraphDef TensorFlow can import ({error})") from None
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
