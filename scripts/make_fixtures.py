"""Generate the committed fixtures in fixtures/ with real TensorFlow (tf.compat.v1): run once, commit.

    pip install -e '.[tf,dev]' && python scripts/make_fixtures.py [tf1] [stale]   # default: both groups

Each group is regenerated alone: `stale` never touches fixtures/tf1.

The TF1 story: a small conv net with slim-style BatchNorm scopes (one without gamma, as slim's default
scale=False) and tf.layers-style `batch_normalization[_1]` scopes, trained with Momentum, saved as:

  tf1/pretrained/model.ckpt            reference: trained from scratch, update ops ran
  tf1/finetune_full/model.ckpt-20      fine-tuned from pretrained, full tf.train.Saver()
  tf1/finetune_trainable/model.ckpt-20 the same run saved with var_list=tf.trainable_variables()
  tf1/finetune_noupdate/model.ckpt-20  fine-tuned without UPDATE_OPS: statistics equal pretrained
  tf1/scratch_noupdate/model.ckpt-20   trained from scratch without UPDATE_OPS: statistics still 0/1
  tf1/damaged_values/model.ckpt-20     finetune_full with a NaN weight and negative variances
  tf1/eval/eval.meta                   the evaluation graph (is_training=False), model variables only
  tf1/partitioned/model.ckpt           a variable partitioned in two slices
  tf1/sharded/model.ckpt               two data shards (SaveV2 + MergeV2Checkpoints)

The stale-statistics story (bn-stats-stale): two tf.layers BatchNorm layers at decay 0.9 (one fused, whose
update multiplies by `Sub(1.0, Const 0.9)`, one not, whose factor is the constant `AssignMovingAvg/decay`),
created under `net/` while their ops live under `net/tower_0/`, fed one constant batch so that the batch
statistics are a constant c. Each training step runs the UPDATE_OPS and increments global_step; after N steps
a statistic holds c + (init - c) * 0.9**N. Saved with tf.train.Saver and its .meta:

  stale/steps_N/model.ckpt-N           N = 3, 10, 100 and 1000
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ROOT = FIXTURES / "tf1"
STALE = FIXTURES / "stale"
STALE_STEPS = (3, 10, 100, 1000)
# One constant batch (4 images of 2x2, 3 channels): per-channel statistics are distinct and not 0 or 1.
STALE_INPUT = (np.arange(48, dtype=np.float32).reshape(4, 2, 2, 3) % 7) / 2.0
DECAY = 0.9
IMAGE = (8, 8, 3)
CLASSES = 4


def batch_norm(x, scope: str, is_training: bool, scale: bool):
    """BatchNorm as slim and tf.layers store it: beta, optional gamma, moving_mean, moving_variance."""
    channels = x.shape[-1]
    with tf1.variable_scope(scope):
        beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
        gamma = tf1.get_variable("gamma", [channels], initializer=tf1.ones_initializer()) if scale else None
        moving_mean = tf1.get_variable("moving_mean", [channels], initializer=tf1.zeros_initializer(), trainable=False)
        moving_variance = tf1.get_variable(
            "moving_variance", [channels], initializer=tf1.ones_initializer(), trainable=False
        )
    if is_training:
        mean, variance = tf.nn.moments(x, [0, 1, 2])
        for variable, value in ((moving_mean, mean), (moving_variance, variance)):
            update = tf1.assign_sub(variable, (variable - value) * (1 - DECAY))
            tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
    else:
        mean, variance = moving_mean, moving_variance
    return tf.nn.batch_normalization(x, mean, variance, beta, gamma, 1e-3)


def conv(x, scope: str, channels: int):
    with tf1.variable_scope(scope):
        weights = tf1.get_variable("weights", [3, 3, x.shape[-1], channels])
    return tf.nn.conv2d(x, weights, 1, "SAME")


def model(images, is_training: bool):
    with tf1.variable_scope("net"):
        x = tf.nn.relu(batch_norm(conv(images, "conv1", 8), "conv1/BatchNorm", is_training, scale=False))
        x = tf.nn.relu(batch_norm(conv(x, "conv2", 8), "conv2/BatchNorm", is_training, scale=True))
        x = tf.nn.relu(batch_norm(conv(x, "conv3", 8), "batch_normalization", is_training, scale=True))
        x = tf.nn.relu(batch_norm(conv(x, "conv4", 8), "batch_normalization_1", is_training, scale=True))
        x = tf.reduce_mean(x, [1, 2])
        with tf1.variable_scope("logits"):
            weights = tf1.get_variable("weights", [8, CLASSES])
            biases = tf1.get_variable("biases", [CLASSES], initializer=tf1.zeros_initializer())
    return tf.identity(tf.matmul(x, weights) + biases, name="logits")


def data(seed: int, shift: float):
    rng = np.random.default_rng(seed)
    images = rng.normal(shift, 1.0 + shift, size=(16, *IMAGE)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size=16)
    return images, labels


def train(start_from: Path | None, steps: int, run_updates: bool, shift: float, saves: dict[str, Path]) -> None:
    """Build the training graph, train, and save with each Saver named in `saves` (full / trainable)."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(7)
        images = tf1.placeholder(tf.float32, [None, *IMAGE], name="input")
        labels = tf1.placeholder(tf.int64, [None])
        logits = model(images, is_training=True)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        global_step = tf1.train.get_or_create_global_step()
        optimizer = tf1.train.MomentumOptimizer(0.05, 0.9)
        if run_updates:
            with tf1.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
                train_op = optimizer.minimize(loss, global_step)
        else:
            train_op = optimizer.minimize(loss, global_step)
        model_variables = [v for v in tf1.global_variables() if v.op.name.startswith("net/")]
        savers = {
            "full": tf1.train.Saver(save_relative_paths=True),
            "trainable": tf1.train.Saver(var_list=tf1.trainable_variables(), save_relative_paths=True),
        }
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            if start_from is not None:
                tf1.train.Saver(var_list=model_variables).restore(session, str(start_from))
            for step in range(steps):
                x, y = data(step, shift)
                session.run(train_op, {images: x, labels: y})
            for kind, prefix in saves.items():
                prefix.parent.mkdir(parents=True, exist_ok=True)
                savers[kind].save(session, str(prefix), write_meta_graph=False)


def damage_values(source: Path, prefix: Path) -> None:
    """A copy of `source` with a NaN in one weight and negative moving variances in one layer."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, *IMAGE])
        model(images, is_training=True)
        tf1.train.get_or_create_global_step()
        with tf1.Session(graph=graph) as session:
            model_vars = tf1.global_variables()
            saver = tf1.train.Saver(var_list=model_vars, save_relative_paths=True)
            saver.restore(session, str(source))
            by_name = {v.op.name: v for v in model_vars}
            weights = by_name["net/conv2/weights"]
            value = session.run(weights)
            value[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
            session.run(weights.assign(value))
            variance = by_name["net/batch_normalization/moving_variance"]
            value = session.run(variance)
            value[:2] = [-0.5, 0.0]
            session.run(variance.assign(value))
            prefix.parent.mkdir(parents=True, exist_ok=True)
            saver.save(session, str(prefix), write_meta_graph=False)


def export_eval_graph(path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, *IMAGE], name="input")
        model(images, is_training=False)
        saver = tf1.train.Saver()
        path.parent.mkdir(parents=True, exist_ok=True)
        tf1.train.export_meta_graph(str(path), saver_def=saver.as_saver_def(), clear_devices=True)


def partitioned(prefix: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(3)
        tf1.get_variable("embedding", [6, 4], partitioner=tf1.fixed_size_partitioner(2))
        tf1.get_variable("dense/kernel", [4, 2])
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            prefix.parent.mkdir(parents=True, exist_ok=True)
            tf1.train.Saver(save_relative_paths=True).save(session, str(prefix), write_meta_graph=False)


def sharded(prefix: Path) -> None:
    """Two SaveV2 outputs merged by MergeV2Checkpoints into one prefix with two data shards."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = prefix.parent / "parts"
    rng = np.random.default_rng(11)
    parts = {
        "part0": {
            "layer_a/kernel": rng.normal(size=(3, 5)),
            "layer_c/BatchNorm/beta": rng.normal(size=(5,)),
            "layer_c/BatchNorm/moving_variance": rng.uniform(0.5, 2.0, size=(5,)),
        },
        "part1": {"layer_b/kernel": rng.normal(size=(5, 2)), "layer_c/BatchNorm/moving_mean": np.zeros(5)},
    }
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        prefixes = []
        for part, tensors in parts.items():
            (tmp / part).mkdir(parents=True)  # SaveV2 creates only the last directory level
            part_prefix = str(tmp / part / "ckpt")
            names = list(tensors)
            save = tf.raw_ops.SaveV2(
                prefix=part_prefix,
                tensor_names=names,
                shape_and_slices=[""] * len(names),
                tensors=[tf.constant(tensors[n], tf.float32) for n in names],
            )
            session.run(save)
            prefixes.append(part_prefix)
        merge = tf.raw_ops.MergeV2Checkpoints(
            checkpoint_prefixes=prefixes, destination_prefix=str(prefix), delete_old_dirs=True
        )
        session.run(merge)
    shutil.rmtree(tmp, ignore_errors=True)


def stale_run(steps: int, prefix: Path) -> None:
    """N steps of BatchNorm updates at decay DECAY over one constant batch, saved with its meta graph."""
    from tf_keras.src.legacy_tf_layers.normalization import batch_normalization  # tf.layers' BatchNorm

    graph = tf.Graph()
    with graph.as_default():
        images = tf.constant(STALE_INPUT, name="images")
        with tf1.variable_scope("net"), tf.name_scope("tower_0"):  # ops under net/tower_0/, variables under net/
            for name, fused in (("fused_bn", True), ("plain_bn", False)):
                batch_normalization(
                    images, momentum=DECAY, training=True, fused=fused, center=False, scale=False, name=name
                )
        global_step = tf1.train.get_or_create_global_step()
        train_op = tf.group(*tf1.get_collection(tf1.GraphKeys.UPDATE_OPS), tf1.assign_add(global_step, 1))
        saver = tf1.train.Saver(save_relative_paths=True)
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            for _ in range(steps):
                session.run(train_op)
            prefix.parent.mkdir(parents=True, exist_ok=True)
            saver.save(session, str(prefix), global_step=steps, write_meta_graph=False)
            tf1.train.export_meta_graph(
                f"{prefix}-{steps}.meta", saver_def=saver.as_saver_def(), clear_devices=True, strip_default_attrs=True
            )


def make_stale() -> None:
    if STALE.exists():
        shutil.rmtree(STALE)
    for steps in STALE_STEPS:
        stale_run(steps, STALE / f"steps_{steps}" / "model.ckpt")


def make_tf1() -> None:
    if ROOT.exists():
        shutil.rmtree(ROOT)
    pretrained = ROOT / "pretrained" / "model.ckpt"
    train(None, 30, run_updates=True, shift=0.0, saves={"full": pretrained})
    train(
        pretrained,
        20,
        run_updates=True,
        shift=0.5,
        saves={
            "full": ROOT / "finetune_full" / "model.ckpt-20",
            "trainable": ROOT / "finetune_trainable" / "model.ckpt-20",
        },
    )
    train(pretrained, 20, run_updates=False, shift=0.5, saves={"full": ROOT / "finetune_noupdate" / "model.ckpt-20"})
    train(None, 20, run_updates=False, shift=0.5, saves={"full": ROOT / "scratch_noupdate" / "model.ckpt-20"})
    damage_values(ROOT / "finetune_full" / "model.ckpt-20", ROOT / "damaged_values" / "model.ckpt-20")
    export_eval_graph(ROOT / "eval" / "eval.meta")
    partitioned(ROOT / "partitioned" / "model.ckpt")
    sharded(ROOT / "sharded" / "model.ckpt")


GROUPS = {"tf1": (ROOT, make_tf1), "stale": (STALE, make_stale)}


def main() -> None:
    names = sys.argv[1:] or list(GROUPS)
    unknown = set(names) - set(GROUPS)
    if unknown:
        sys.exit(f"unknown fixture group {sorted(unknown)[0]!r}; choose from {', '.join(GROUPS)}")
    tf1.disable_eager_execution()
    for name in names:
        root, make = GROUPS[name]
        make()
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        print(f"wrote {root} ({total / 1024:.0f} KiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
