"""Build the seed's story on the real TF-slim InceptionV3 (578 tensors, 96 BN layers, ~175 MB), outside the repo.

    pip install -e '.[tf]' tf-slim && python bench/make_inception.py /tmp/ckptdoctor-inception

Writes, under the given directory:
  pretrained/model.ckpt           reference: initialised, two training steps with update ops
  finetune_full/model.ckpt-3      three fine-tuning steps with update ops, full tf.train.Saver()
  finetune_trainable/model.ckpt-3 the same run saved with var_list=tf.trainable_variables()
  finetune_noupdate/model.ckpt-3  three steps whose train op ignores UPDATE_OPS, full save
  eval/eval.meta                  the evaluation graph (is_training=False), model variables only
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1


def _shim_tf_slim() -> None:
    """tf_slim 1.1.0 on TF 2.21 needs tf-keras's legacy layers at their old module names."""
    for name in ("", ".base", ".core", ".convolutional", ".normalization", ".pooling"):
        sys.modules[f"tf_keras.legacy_tf_layers{name}"] = importlib.import_module(
            f"tf_keras.src.legacy_tf_layers{name}"
        )
    from tensorflow.python.framework import ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor


_shim_tf_slim()
import tf_slim as slim  # noqa: E402
from tf_slim.nets import inception_v3  # noqa: E402

BATCH = 2
SIZE = 299


def _net(images, is_training: bool):
    with slim.arg_scope(inception_v3.inception_v3_arg_scope()):
        logits, _ = inception_v3.inception_v3(images, num_classes=1001, is_training=is_training)
    return logits


def _batch(step: int, shift: float):
    rng = np.random.default_rng(step)
    images = rng.normal(shift, 1.0, size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)
    return images, rng.integers(0, 1001, size=BATCH)


def _train(start: Path | None, steps: int, run_updates: bool, shift: float, saves: dict[str, Path]) -> None:
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(1)
        images = tf1.placeholder(tf.float32, [BATCH, SIZE, SIZE, 3])
        labels = tf1.placeholder(tf.int64, [BATCH])
        logits = _net(images, is_training=True)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        global_step = tf1.train.get_or_create_global_step()
        optimizer = tf1.train.MomentumOptimizer(0.01, 0.9)
        update_ops = tf1.get_collection(tf1.GraphKeys.UPDATE_OPS) if run_updates else []
        with tf1.control_dependencies(update_ops):
            train_op = optimizer.minimize(loss, global_step)
        model_variables = slim.get_model_variables()
        savers = {
            "full": tf1.train.Saver(save_relative_paths=True),
            "trainable": tf1.train.Saver(var_list=tf1.trainable_variables(), save_relative_paths=True),
        }
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            if start is not None:
                tf1.train.Saver(var_list=model_variables).restore(session, str(start))
            for step in range(steps):
                x, y = _batch(step, shift)
                session.run(train_op, {images: x, labels: y})
            for kind, prefix in saves.items():
                prefix.parent.mkdir(parents=True, exist_ok=True)
                savers[kind].save(session, str(prefix), write_meta_graph=False)


def _export_eval(path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, SIZE, SIZE, 3], name="input")
        tf.identity(_net(images, is_training=False), name="logits")
        saver = tf1.train.Saver(slim.get_model_variables())
        path.parent.mkdir(parents=True, exist_ok=True)
        tf1.train.export_meta_graph(str(path), saver_def=saver.as_saver_def(), clear_devices=True)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/ckptdoctor-inception")
    tf1.disable_eager_execution()
    pretrained = root / "pretrained" / "model.ckpt"
    _train(None, 2, True, 0.0, {"full": pretrained})
    _train(
        pretrained,
        3,
        True,
        0.5,
        {"full": root / "finetune_full" / "model.ckpt-3", "trainable": root / "finetune_trainable" / "model.ckpt-3"},
    )
    _train(pretrained, 3, False, 0.5, {"full": root / "finetune_noupdate" / "model.ckpt-3"})
    _export_eval(root / "eval" / "eval.meta")
    print(root)


if __name__ == "__main__":
    main()
