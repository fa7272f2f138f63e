"""Generate fixtures/match/ with real TensorFlow: checkpoints whose names do not line up with the model.

    pip install -e '.[tf,dev]' && python scripts/make_match_fixtures.py

The model (`build_model`) is a small TF1 net built with tf.compat.v1.get_variable under Keras-style scopes:
conv, batch_normalization, conv_1, batch_normalization_1, dense (kernel/bias, BatchNorm gamma, beta,
moving_mean, moving_variance). `match/model.meta` is its evaluation graph. Each checkpoint below holds
variables of that model saved under other names, with values of its own, as the issue's users meet them:

  match/prefix/model.ckpt     trained under an extra `tower_0/` scope, with Momentum slots and global_step
  match/counter/model.ckpt    Keras counters shifted: conv_2, conv_3, batch_normalization_2/_3, dense_1
  match/leaf/model.ckpt       slim's weights/biases instead of kernel/bias
  match/head/model.ckpt       the same names, a head for 10 classes instead of 4 (shape mismatch)
  match/ambiguous/model.ckpt  two towers, tower_0/ and tower_1/, each a full copy: either could be meant

tests/test_match.py imports `build_model` from here to rebuild the graph for init_from_checkpoint.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "match"
CLASSES = 4
CHANNELS = 8
IMAGE = (8, 8, 3)

# Keras-style names the model uses, by role; a checkpoint's naming maps each to what it stored.
CONV = ("conv", "conv_1")
BN = ("batch_normalization", "batch_normalization_1")
DENSE = "dense"


def build_model(
    images, classes: int = CLASSES, scopes: dict[str, str] | None = None, leaves: dict[str, str] | None = None
):
    """The model's graph (returns the logits); a checkpoint's graph renames layer `scopes` and `leaves`."""
    import tensorflow as tf

    tf1 = tf.compat.v1
    scopes, leaves = scopes or {}, leaves or {}

    def rename(scope: str) -> str:
        return scopes.get(scope, scope)

    net = images
    depth = images.shape[-1]
    for conv, bn in zip(CONV, BN, strict=True):
        with tf1.variable_scope(rename(conv)):
            kernel = tf1.get_variable(leaves.get("kernel", "kernel"), [3, 3, depth, CHANNELS])
            bias = tf1.get_variable(leaves.get("bias", "bias"), [CHANNELS], initializer=tf1.random_normal_initializer())
            net = tf.nn.conv2d(net, kernel, 1, "SAME") + bias
        with tf1.variable_scope(rename(bn)):
            gamma = tf1.get_variable("gamma", [CHANNELS], initializer=tf1.random_uniform_initializer(0.5, 1.5))
            beta = tf1.get_variable("beta", [CHANNELS], initializer=tf1.random_normal_initializer())
            mean = tf1.get_variable(
                "moving_mean", [CHANNELS], initializer=tf1.random_normal_initializer(), trainable=False
            )
            variance = tf1.get_variable(
                "moving_variance", [CHANNELS], initializer=tf1.random_uniform_initializer(0.5, 2), trainable=False
            )
            net = tf.nn.relu(tf.nn.batch_normalization(net, mean, variance, beta, gamma, 1e-3))
        depth = CHANNELS
    net = tf.reduce_mean(net, axis=[1, 2])
    with tf1.variable_scope(rename(DENSE)):
        kernel = tf1.get_variable(leaves.get("kernel", "kernel"), [CHANNELS, classes])
        bias = tf1.get_variable(leaves.get("bias", "bias"), [classes], initializer=tf1.random_normal_initializer())
    return tf.matmul(net, kernel) + bias


SLIM_LEAVES = {"kernel": "weights", "bias": "biases"}
_COUNTER = {"conv": "conv_2", "conv_1": "conv_3", "batch_normalization": "batch_normalization_2"}
_COUNTER |= {"batch_normalization_1": "batch_normalization_3", "dense": "dense_1"}


def _save(directory: Path, build: Callable[[object], None], seed: int, train: bool = False) -> None:
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(seed)
        images = tf1.placeholder(tf.float32, [None, *IMAGE])
        loss = build(images)
        if train:
            step = tf1.train.get_or_create_global_step()
            train_op = tf1.train.MomentumOptimizer(0.01, 0.9).minimize(tf.reduce_mean(loss), global_step=step)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            if train:
                session.run(train_op, {images: np.random.default_rng(seed).random((2, *IMAGE), dtype=np.float32)})
            tf1.train.Saver().save(session, str(directory / "model.ckpt"), write_meta_graph=False)
    (directory / "checkpoint").unlink()  # it records this machine's absolute path; the prefix is what is used


def _tower(scope: str) -> Callable[[object], object]:
    def build(images):
        import tensorflow as tf

        with tf.compat.v1.variable_scope(scope):
            return build_model(images)

    return build


def main() -> None:
    import tensorflow as tf

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        build_model(tf1.placeholder(tf.float32, [None, *IMAGE], name="images"))
        FIXTURES.mkdir(parents=True, exist_ok=True)
        tf1.train.Saver()  # the saver_def import_meta_graph restores with
        tf1.train.export_meta_graph(str(FIXTURES / "model.meta"), graph=graph)
    _save(FIXTURES / "prefix", _tower("tower_0"), seed=1, train=True)
    _save(FIXTURES / "counter", lambda images: build_model(images, scopes=_COUNTER), seed=2)
    _save(FIXTURES / "leaf", lambda images: build_model(images, leaves=SLIM_LEAVES), seed=3)
    _save(FIXTURES / "head", lambda images: build_model(images, classes=10), seed=4)

    def two_towers(images):
        _tower("tower_0")(images)
        return _tower("tower_1")(images)

    _save(FIXTURES / "ambiguous", two_towers, seed=5)


if __name__ == "__main__":
    main()
