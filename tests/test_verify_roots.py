"""A TF2 checkpoint written the way TensorFlow's guide writes it, `tf.train.Checkpoint(step=..., net=model)`,
binds the model under `net`: verify and recalibrate bind it where TensorFlow does (ground truth: TF's own
restore under the same name, and the model's outputs), a different architecture still fails naming what is
missing and which root children there are, and two children that both bind are refused."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

from ckptdoctor.recalibrate import DataSpec, recalibrate
from ckptdoctor.verify import choose_root, load_model_spec, root_children

BUILDERS = """
import keras

def build():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(),
                             keras.layers.Dense(2)])

def longer():  # the same layers and one more
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.BatchNormalization(),
                             keras.layers.Dense(2), keras.layers.Dense(2)])

def golf():  # /work/shared/realworld/golf_tf2_ckpt_manager: tf.keras Dense 7 -> 64 -> 32 -> 7
    import tf_keras
    return tf_keras.Sequential([tf_keras.Input((7,)), tf_keras.layers.Dense(64), tf_keras.layers.Dense(32),
                                tf_keras.layers.Dense(7)])
"""
SAMPLES = np.random.default_rng(3).normal(size=(40, 4)).astype(np.float32)
GOLF = ROOT.parent / "shared" / "realworld" / "golf_tf2_ckpt_manager"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """builders.py, and `Checkpoint(step=tf.Variable(1), net=model).save(...)` of a model whose statistics are
    not a fresh model's; returns the directory, the prefix and the saved model's evaluation outputs."""
    tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (pip install -e '.[tf]')")
    directory = tmp_path_factory.mktemp("roots")
    (directory / "builders.py").write_text(BUILDERS)
    sys.path.insert(0, str(directory))
    try:
        import builders

        model = builders.build()
        bn = model.layers[1]
        bn.moving_mean.assign(np.linspace(-1, 1, 3).astype(np.float32))
        bn.moving_variance.assign(np.linspace(0.5, 2, 3).astype(np.float32))
        prefix = tf.train.Checkpoint(step=tf.Variable(1), net=model).save(str(directory / "ckpt" / "ckpt"))
        yield directory, prefix, np.asarray(model(SAMPLES, training=False))
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("builders", None)


def _verify(directory: Path, checkpoint, builder: str):
    return run_cli("verify", checkpoint, "--model", f"builders:{builder}", env={"PYTHONPATH": f"{directory}:{ROOT}"})


def test_the_model_binds_under_net_as_tensorflow_binds_it(saved):
    import tensorflow as tf

    directory, prefix, outputs = saved
    result = _verify(directory, directory / "ckpt", "build")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "restored for real" in result.stdout and "missing" not in result.stdout
    truth = load_model_spec("builders:build")
    tf.train.Checkpoint(net=truth).read(prefix).assert_existing_objects_matched()  # TF passes too
    np.testing.assert_array_equal(np.asarray(truth(SAMPLES, training=False)), outputs)

    from ckptdoctor.formats import open_checkpoint

    reader, _ = open_checkpoint(prefix)
    with reader:
        roots = root_children(reader)
    model = load_model_spec("builders:build")
    choice = choose_root(tf, model, prefix, roots, list(model.weights))
    assert (choice.child, choice.binds, roots.candidates) == ("net", True, ("net",))
    choice.checkpoint(tf, model).read(prefix).assert_existing_objects_matched()
    np.testing.assert_array_equal(np.asarray(model(SAMPLES, training=False)), outputs)


def test_a_different_architecture_fails_naming_what_is_missing_and_the_root(saved):
    import tensorflow as tf

    directory, prefix, _ = saved
    result = _verify(directory, prefix, "longer")
    assert result.returncode == 1, result.stdout + result.stderr
    missing = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("  missing ")]
    truth = load_model_spec("builders:longer")
    with pytest.raises(AssertionError) as failure:
        tf.train.Checkpoint(net=truth).read(prefix).expect_partial().assert_existing_objects_matched()
    unbound = set(re.findall(r"<Variable path=([^,>]+)", str(failure.value)))  # TF: the added layer's two
    assert unbound == {weight.path for weight in truth.layers[-1].weights}
    assert missing == ["sequential/dense_2/kernel", "sequential/dense_2/bias"]  # its names in a fresh process
    assert "the checkpoint's root holds: net, step, save_counter" in result.stdout


def test_two_children_that_both_bind_are_refused_and_model_is_preferred(saved, tmp_path):
    import tensorflow as tf

    directory, _, _ = saved
    import builders

    first, second = builders.build(), builders.build()
    both = tf.train.Checkpoint(net=first, ema=second).write(str(tmp_path / "both" / "ckpt"))
    result = _verify(directory, both, "build")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "the model binds under each of ema, net" in line and "root holds: ema, net" in line

    preferred = tf.train.Checkpoint(net=first, model=second).write(str(tmp_path / "model" / "ckpt"))
    from ckptdoctor.formats import open_checkpoint

    reader, _ = open_checkpoint(preferred)
    with reader:
        roots = root_children(reader)
    model = load_model_spec("builders:build")
    choice = choose_root(tf, model, preferred, roots, list(model.weights))
    assert choice.child == "model" and choice.binds
    choice.checkpoint(tf, model).read(preferred).assert_existing_objects_matched()
    np.testing.assert_array_equal(np.asarray(model(SAMPLES)), np.asarray(second(SAMPLES)))


def test_recalibrate_binds_the_same_model_and_writes_its_statistics(saved, tmp_path):
    """The statistics recomputed over the samples go back under `net`: the evaluation outputs of the result
    are the training-mode outputs over the samples as one batch, and every other weight is the saved one."""
    import tensorflow as tf

    _, prefix, _ = saved
    np.save(tmp_path / "x.npy", SAMPLES)
    out = tmp_path / "out" / "ckpt"
    data = DataSpec(str(tmp_path / "x.npy"), batch_size=len(SAMPLES))
    result = recalibrate(prefix, data, out, model="builders:build")
    assert (len(result.layers), result.replaced, result.added) == (1, 2, 0)
    fixed = load_model_spec("builders:build")
    tf.train.Checkpoint(net=fixed).read(str(out)).assert_existing_objects_matched()
    training = np.asarray(fixed(SAMPLES, training=True))
    np.testing.assert_allclose(np.asarray(fixed(SAMPLES, training=False)), training, rtol=1e-3, atol=1e-4)
    original = load_model_spec("builders:build")
    tf.train.Checkpoint(net=original).read(prefix).assert_existing_objects_matched()
    for kept, saved_weight in zip(fixed.layers[0].weights, original.layers[0].weights, strict=True):
        np.testing.assert_array_equal(kept.numpy(), saved_weight.numpy())


@pytest.mark.skipif(not GOLF.is_dir(), reason="../shared/realworld is not here (a user's clone)")
def test_the_real_checkpoint_manager_checkpoint_binds_under_net(saved):
    pytest.importorskip("tf_keras", reason="tf_keras not installed")
    directory, _, _ = saved
    result = _verify(directory, GOLF, "golf")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "restored for real: every variable matched"
