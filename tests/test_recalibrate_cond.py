"""recalibrate on TF1 graphs built with control flow v2: tf.cond is an If op whose branches are functions.

A TF1 script run under TF 2.x with only `disable_eager_execution()` builds `slim.batch_norm(is_training=<a
placeholder>)` and tf.layers' BatchNormalization(training=<a tensor>) with If ops: the fused op (or the
moving-average updates) live in branch functions. Each graph here is two BatchNorm layers (the first on the
input, a convolution between them), saved with its trainable variables only, its PREFIX.meta beside it.
Ground truth: the first layer's statistics equal numpy's over the samples, and the recalibrated checkpoint
restored in the evaluation graph gives what the training graph gives over the sample set as one batch (so the
second layer saw training-mode activations: the cond's predicate was fed the training branch's value)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, file_bytes, restored_logits, run_cli

from ckptdoctor.errors import ConfigError
from ckptdoctor.recalibrate import DataSpec, RecalibrateError, recalibrate

SHAPE = (4, 4, 3)
SAMPLES = 48
KINDS = ("slim-fused", "slim-plain", "layers-fused", "layers-plain", "nested")


@pytest.fixture(scope="module")
def slim(tf):
    """tf_slim, through the shim bench/make_inception.py gives it for TF 2.x (its legacy layers' old names)."""
    pytest.importorskip("tf_slim")
    spec = importlib.util.spec_from_file_location("make_inception", ROOT / "bench" / "make_inception.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.slim


def _nested_batch_norm(tf, x, is_training, name: str):
    """A hand-written BatchNorm: the moments in the outer cond's training branch, the updates in a cond nested
    inside it (`update_stats`), as code that makes the update optional writes it."""
    tf1 = tf.compat.v1
    channels = x.shape[-1]
    with tf1.variable_scope(name):
        beta = tf1.get_variable("beta", [channels], initializer=tf1.zeros_initializer())
        moving_mean = tf1.get_variable("moving_mean", [channels], initializer=tf1.zeros_initializer(), trainable=False)
        moving_variance = tf1.get_variable(
            "moving_variance", [channels], initializer=tf1.ones_initializer(), trainable=False
        )
    update_stats = tf1.placeholder_with_default(True, [], name=f"{name}_update_stats")

    def training():
        mean, variance = tf.nn.moments(x, [0, 1, 2])

        def update():
            updates = [
                tf1.assign_sub(moving_mean, (moving_mean - mean) * 0.1),
                tf1.assign_sub(moving_variance, (moving_variance - variance) * 0.1),
            ]
            with tf1.control_dependencies(updates):
                return tf.identity(mean), tf.identity(variance)

        return tf.cond(update_stats, update, lambda: (mean, variance))

    def inference():
        return tf.identity(moving_mean.read_value()), tf.identity(moving_variance.read_value())

    mean, variance = tf.cond(is_training, training, inference) if is_training is not False else inference()
    return tf.nn.batch_normalization(x, mean, variance, beta, None, 1e-3)


def build(tf, slim, kind: str, is_training):
    """Two BatchNorm layers of KIND, the first on the input; returns the graph's output."""
    from tf_keras.src.legacy_tf_layers.normalization import batch_normalization  # tf.compat.v1.layers'

    tf1 = tf.compat.v1
    x = tf1.placeholder(tf.float32, [None, *SHAPE], name="input")
    h = x
    for index in (1, 2):
        name = f"bn{index}"
        with tf1.variable_scope("net"):
            if kind.startswith("slim"):
                h = slim.batch_norm(h, is_training=is_training, fused=kind == "slim-fused", scope=name)
            elif kind.startswith("layers"):
                with warnings.catch_warnings():  # deprecated in favour of Keras, and used by TF1 code all the same
                    warnings.simplefilter("ignore", UserWarning)
                    h = batch_normalization(h, training=is_training, fused=kind == "layers-fused", name=name)
            else:
                h = _nested_batch_norm(tf, h, is_training, name)
            if index == 1:
                kernel = tf1.get_variable("conv/weights", [1, 1, 3, 3], initializer=tf1.random_normal_initializer(0.3))
                h = tf.nn.relu(tf.nn.conv2d(h, kernel, 1, "SAME")) + 0.5
    return tf.identity(h, name="logits")


@pytest.fixture(scope="module")
def graphs(tf, slim, tmp_path_factory):
    """kind -> (prefix saved with var_list=trainable_variables and its training .meta beside it, eval .meta);
    built once per kind for the module."""
    tf1 = tf.compat.v1
    built: dict[str, tuple[Path, Path]] = {}

    def make(kind: str) -> tuple[Path, Path]:
        if kind in built:
            return built[kind]
        directory = tmp_path_factory.mktemp(kind)
        graph = tf.Graph()
        with graph.as_default():
            build(tf, slim, kind, tf1.placeholder_with_default(False, [], name="is_training"))
            assert {"If", "StatelessIf"} & {op.type for op in graph.get_operations()}  # control flow v2 indeed
            saver = tf1.train.Saver(var_list=tf1.trainable_variables())
            with tf1.Session(graph=graph) as session:
                session.run(tf1.global_variables_initializer())
                prefix = Path(saver.save(session, str(directory / "train" / "model.ckpt")))
        graph = tf.Graph()
        with graph.as_default():
            build(tf, slim, kind, False)
            assert not {"If", "StatelessIf"} & {op.type for op in graph.get_operations()}
            evaluation = directory / "eval.meta"
            tf1.train.export_meta_graph(str(evaluation), saver_def=tf1.train.Saver().as_saver_def(), clear_devices=True)
        built[kind] = prefix, evaluation
        return built[kind]

    return make


def samples(count: int = SAMPLES, seed: int = 4) -> np.ndarray:
    return (np.random.default_rng(seed).normal(1.0, 2.0, size=(count, *SHAPE)) * [1.0, 0.2, 5.0]).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_statistics_inside_conds_equal_numpys_and_restore_in_the_eval_graph(tf, graphs, tmp_path, kind):
    from ckptdoctor.verify import verify_meta_graph

    prefix, evaluation = graphs(kind)
    data = samples()
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "out" / "model.ckpt"
    result = recalibrate(prefix, DataSpec(str(tmp_path / "x.npy"), batch_size=SAMPLES), out)  # no --feed
    assert (len(result.layers), result.added) == (2, 4)
    stored = tf.train.load_checkpoint(str(out))
    np.testing.assert_allclose(stored.get_tensor("net/bn1/moving_mean"), data.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        stored.get_tensor("net/bn1/moving_variance"), data.astype(np.float64).var(axis=(0, 1, 2)), rtol=1e-5
    )
    training = restored_logits(tf, f"{prefix}.meta", prefix, data, {"is_training:0": True})
    evaluation_outputs = restored_logits(tf, evaluation, out, data)
    np.testing.assert_allclose(evaluation_outputs, training, rtol=1e-4, atol=1e-4 * np.abs(training).max())
    untrained = restored_logits(tf, f"{prefix}.meta", prefix, data)  # inference mode with the initial statistics
    assert not np.allclose(untrained, training, rtol=1e-3)  # so the equality above is not a coincidence
    restored = verify_meta_graph(out, evaluation)
    assert restored.ok, restored


def test_cli_story_with_an_is_training_placeholder(tf, graphs, tmp_path):
    prefix, _ = graphs("slim-fused")
    np.save(tmp_path / "x.npy", samples())
    before = file_bytes(prefix)
    out = tmp_path / "fixed" / "model.ckpt"
    args = ("recalibrate", prefix, "--data", tmp_path / "x.npy", "--out", out, "--feed", "is_training=true")
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "recalibrated 2 BatchNorm layers over 48 samples" in result.stdout
    assert "net/bn1: added, added" in result.stdout and "no findings" in result.stdout
    assert file_bytes(prefix) == before
    wrong = run_cli(*args[:-1], "is_training=false", "--force")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1
    assert "--feed is_training=false: BatchNorm runs in training mode when it is true" in wrong.stderr


def test_an_evaluation_graph_is_still_named_as_such(tf, graphs, tmp_path):
    prefix, evaluation = graphs("slim-plain")
    np.save(tmp_path / "x.npy", samples(4))
    with pytest.raises(RecalibrateError, match=r"eval.meta: an evaluation graph: "):
        recalibrate(prefix, DataSpec(str(tmp_path / "x.npy")), tmp_path / "o", meta_graph=evaluation)


def test_a_cond_nested_deeper_than_followed_is_said_so_not_called_an_evaluation_graph(
    tf, graphs, tmp_path, monkeypatch
):
    import ckptdoctor.recalibrate_tf1 as module

    prefix, _ = graphs("nested")
    np.save(tmp_path / "x.npy", samples(4))
    monkeypatch.setattr(module, "MAX_COND_DEPTH", 1)  # the updates sit two conds deep
    with pytest.raises(RecalibrateError) as error:
        recalibrate(prefix, DataSpec(str(tmp_path / "x.npy")), tmp_path / "o")
    message = str(error.value)
    assert "cannot follow them" in message and "tf.cond nested deeper than 1 levels" in message
    assert "evaluation graph" not in message and "\n" not in message
    assert not (tmp_path / "o.index").exists()


def test_the_nodes_copied_out_of_branches_are_bounded(tf, graphs, tmp_path, monkeypatch):
    """A cond names its branch function, so a small graph can name one large function from thousands of conds:
    the copies stop at MAX_INLINED_NODES in all, with a message saying so (a red-team graph of 170 KB took 86 s
    and 1.7 GiB before)."""
    import ckptdoctor.recalibrate_tf1 as module

    prefix, _ = graphs("slim-fused")
    np.save(tmp_path / "x.npy", samples(4))
    monkeypatch.setattr(module, "MAX_INLINED_NODES", 5)
    with pytest.raises(RecalibrateError) as error:
        recalibrate(prefix, DataSpec(str(tmp_path / "x.npy")), tmp_path / "o")
    message = str(error.value)
    assert "cannot follow them" in message and "tf.cond branches of more than 5 nodes in all" in message
    assert not (tmp_path / "o.index").exists()


def test_a_feed_contradicting_the_training_branch_is_refused(tf, graphs, tmp_path):
    prefix, _ = graphs("layers-fused")
    np.save(tmp_path / "x.npy", samples(4))
    with pytest.raises(ConfigError, match="--feed is_training=false: BatchNorm runs in training mode when it is true"):
        recalibrate(prefix, DataSpec(str(tmp_path / "x.npy")), tmp_path / "o", feeds={"is_training": False})
