"""`ckptdoctor strip`: the deployment checkpoint restores into the evaluation model, for real, in every format.

TensorFlow and Keras are the judges: the stripped TF1 checkpoint restores into the evaluation graph with the
outputs of the original; a stripped TF2 checkpoint passes `assert_consumed()` for a model without optimizer
(Keras 3 optimizer, and a TF1-style optimizer with `slot_variables`); stripped Keras files load with
`load_model(compile=False)`/`load_weights` and predict exactly what the originals predict."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, KERAS, TF1, copy_checkpoint, file_bytes, run_cli

from ckptdoctor import check
from ckptdoctor.analysis.checkpoint import opened
from ckptdoctor.errors import OutputError
from ckptdoctor.model import Role
from ckptdoctor.strip import strip

FULL = FIXTURE_BUNDLES["finetune_full"]
EVAL_META = TF1 / "eval" / "eval.meta"
INPUTS = KERAS / "inputs.npy"
TRAINING_STATE = {Role.OPTIMIZER_SLOT, Role.EMA, Role.COUNTER}


def roles(path: Path | str) -> dict[str, Role]:
    with opened(path) as checkpoint:
        return {v.name: v.role for v in checkpoint.variables}


def eval_logits(tf, prefix: Path, var_list=None) -> np.ndarray:
    """The evaluation graph's logits with the checkpoint restored (by `var_list` where given)."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        saver = tf1.train.import_meta_graph(str(EVAL_META))
        if var_list is not None:
            saver = tf1.train.Saver(var_list=var_list(graph))
        saver.restore(session, str(prefix))
        images = np.linspace(-1, 1, 2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
        return session.run("logits:0", {"input:0": images})


def test_tf1_strip_restores_into_the_eval_graph_with_identical_outputs(tmp_path, tf):
    source = copy_checkpoint(FULL, tmp_path / "in")
    before = file_bytes(source)
    out = tmp_path / "out" / "model.ckpt"
    result = run_cli("strip", source, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "dropped 14 tensors (13 optimizer state, 1 step counter)" in result.stdout
    assert "no findings" in result.stdout  # the re-check: the moving statistics are all there
    stored = roles(out)
    assert not set(stored.values()) & TRAINING_STATE
    assert {n for n, r in roles(source).items() if r not in TRAINING_STATE} == set(stored)
    np.testing.assert_array_equal(eval_logits(tf, out), eval_logits(tf, source), strict=True)
    assert file_bytes(source) == before
    assert out.with_suffix(".ckpt.index").stat().st_size < source.with_suffix(".ckpt-20.index").stat().st_size


def test_keep_step_keeps_the_global_step(tmp_path):
    result = strip(FULL, tmp_path / "model.ckpt", keep_step=True)
    assert "global_step" in roles(result.out)
    assert {d.what for d in result.plan.dropped} == {"optimizer state"}


def _train_with_ema(tf, prefix: Path) -> None:
    """The fixtures' model trained three Momentum steps with ema.apply(tf.trainable_variables()) as slim
    scripts do: every weight has a shadow, the moving statistics (not trainable) have none."""
    import make_fixtures

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), tf1.Session(graph=graph) as session:
        tf1.set_random_seed(5)
        images = tf.constant(np.linspace(-1, 1, 4 * 8 * 8 * 3, dtype=np.float32).reshape(4, 8, 8, 3))
        logits = make_fixtures.model(images, is_training=True)
        loss = tf.reduce_mean(tf.square(logits - 1.0))
        step = tf1.train.get_or_create_global_step()
        with tf1.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            train = tf1.train.MomentumOptimizer(0.1, 0.9).minimize(loss, global_step=step)
        ema = tf1.train.ExponentialMovingAverage(0.5)
        with tf1.control_dependencies([train]):
            train = ema.apply(tf1.trainable_variables())
        session.run(tf1.global_variables_initializer())
        for _ in range(3):
            session.run(train)
        tf1.train.Saver().save(session, str(prefix), write_meta_graph=False)


def test_use_ema_writes_each_variable_from_its_shadow(tmp_path, tf):
    source = tmp_path / "in" / "model.ckpt"
    _train_with_ema(tf, source)
    with opened(source) as checkpoint:  # EMA001: the shadows cover the weights, not the moving statistics
        shadows = [v.name for v in checkpoint.variables if v.role is Role.EMA]
    assert shadows and "ema-partial-coverage" in {f.name for f in check(source).findings}
    out = tmp_path / "out" / "model.ckpt"
    result = run_cli("strip", source, "--out", out, "--use-ema")
    assert result.returncode == 0, result.stderr
    assert f"{len(shadows)} variables written from their ExponentialMovingAverage shadows" in result.stdout
    assert "kept as stored, without a shadow" in result.stdout  # the moving statistics
    assert not set(roles(out).values()) & TRAINING_STATE
    reader, original = tf.train.load_checkpoint(str(out)), tf.train.load_checkpoint(str(source))
    for shadow in shadows:
        variable = shadow.removesuffix("/ExponentialMovingAverage")
        np.testing.assert_array_equal(reader.get_tensor(variable), original.get_tensor(shadow), strict=True)

    def averaged(graph):  # what an EMA evaluation script restores: shadows for the trainable variables
        with graph.as_default():
            ema = tf.compat.v1.train.ExponentialMovingAverage(0.5)
            return ema.variables_to_restore(tf.compat.v1.trainable_variables())

    np.testing.assert_array_equal(eval_logits(tf, out), eval_logits(tf, source, averaged), strict=True)
    assert not {f.name for f in check(out).findings}


def test_use_ema_without_shadows_is_refused(tmp_path):
    result = run_cli("strip", FULL, "--out", tmp_path / "out" / "x", "--use-ema")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no variable has an ExponentialMovingAverage shadow" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_strip_that_would_leave_nothing_is_refused(tmp_path):
    from test_rule_coverage import write_bundle

    source = write_bundle(tmp_path / "state", {"net/w/Momentum": np.ones(2, "<f4"), "beta1_power": np.ones((), "<f4")})
    result = run_cli("strip", source, "--out", tmp_path / "out" / "x")
    assert result.returncode == 2
    assert "the edits would leave no tensor in the output" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_the_output_is_never_an_input(tmp_path):
    source = copy_checkpoint(FULL, tmp_path / "in")
    before = file_bytes(source)
    result = run_cli("strip", source, "--out", source, "--force")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert file_bytes(source) == before


@pytest.fixture(scope="module")
def keras(tf):
    import keras

    return keras


def _two_layer_model(keras):
    inputs = keras.Input((4,))
    hidden = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(3, name="dense")(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))


def test_tf2_strip_of_a_keras_model_and_optimizer_passes_assert_consumed(tmp_path, tf, keras):
    model = _two_layer_model(keras)
    optimizer = keras.optimizers.Adam(0.01)
    x = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
    optimizer.apply_gradients(
        zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
    )
    source = tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(tmp_path / "in" / "ckpt"))
    out = tmp_path / "out" / "ckpt"
    result = run_cli("strip", source, "--out", out)
    assert result.returncode == 0, result.stderr
    fresh = keras.models.clone_model(model)
    tf.train.Checkpoint(model=fresh).read(str(out)).assert_consumed()
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), model.predict(x, verbose=0), strict=True)
    with pytest.raises(AssertionError):  # the original does not: its optimizer has nowhere to go
        tf.train.Checkpoint(model=keras.models.clone_model(model)).read(source).assert_consumed()


def _net_with_v1_adam(tf, prefix: Path):
    """A tf.Module trained one step by a TF1-style Adam, which keeps its slots as `slot_variables` of its
    object graph node; returns the module class, the module and the checkpoint's path."""

    class Net(tf.Module):
        def __init__(self):
            self.w = tf.Variable([1.0, 2.0])
            self.b = tf.Variable(0.5)

    net = Net()
    optimizer = tf.compat.v1.train.AdamOptimizer(0.1)
    optimizer.minimize(lambda: tf.reduce_sum(net.w * net.w) + net.b, var_list=[net.w, net.b])
    return Net, net, tf.train.Checkpoint(net=net, optimizer=optimizer).write(str(prefix))


def test_tf2_strip_removes_slot_variables_and_their_optimizer(tmp_path, tf):
    net_class, net, source = _net_with_v1_adam(tf, tmp_path / "in" / "ckpt")
    out = tmp_path / "out" / "ckpt"
    strip(source, out)
    fresh = net_class()
    tf.train.Checkpoint(net=fresh).read(str(out)).assert_consumed()
    np.testing.assert_array_equal(fresh.w.numpy(), net.w.numpy(), strict=True)
    assert fresh.b.numpy() == net.b.numpy()
    assert {name for name, _ in tf.train.list_variables(str(out))} == {
        "_CHECKPOINTABLE_OBJECT_GRAPH",
        "net/w/.ATTRIBUTES/VARIABLE_VALUE",
        "net/b/.ATTRIBUTES/VARIABLE_VALUE",
    }


def test_tf2_drop_that_would_orphan_a_slot_is_refused(tmp_path, tf):
    """Dropping a variable but not its slots would leave the slots' values without an object to restore into."""
    from ckptdoctor.writer import Edits, write_checkpoint

    _, _, source = _net_with_v1_adam(tf, tmp_path / "in" / "ckpt")
    with opened(source) as checkpoint:
        edits = Edits(drop=frozenset({"net/w/.ATTRIBUTES/VARIABLE_VALUE"}))
        with pytest.raises(OutputError, match="outside the object graph; drop it too"):
            write_checkpoint(checkpoint, edits, tmp_path / "out" / "ckpt")
    assert not (tmp_path / "out").exists()


KERAS_FILES = {
    "keras": KERAS / "healthy" / "model.keras",
    "legacy.h5": KERAS / "healthy" / "model.h5",
    "keras2.h5": KERAS.parent / "keras2" / "model.h5",
    "weights.h5": KERAS / "healthy" / "model.weights.h5",
}


@pytest.mark.parametrize("kind", sorted(KERAS_FILES))
def test_keras_strip_loads_with_identical_predictions(tmp_path, keras, kind):
    source = tmp_path / "in" / KERAS_FILES[kind].name
    source.parent.mkdir()
    shutil.copy(KERAS_FILES[kind], source)
    before = source.read_bytes()
    out = tmp_path / "out" / source.name
    result = run_cli("strip", source, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "no findings" in result.stdout
    assert not set(roles(out).values()) & {Role.OPTIMIZER_SLOT}
    assert out.stat().st_size < source.stat().st_size  # the optimizer's space is given back, not just unlinked
    x = np.load(INPUTS)
    if kind == "weights.h5":
        structure = KERAS_FILES["keras"]
        stripped, original = (
            keras.models.clone_model(keras.saving.load_model(structure, compile=False)) for _ in range(2)
        )
        stripped.load_weights(out)
        original.load_weights(source)
    else:
        stripped = keras.saving.load_model(out, compile=False)
        original = keras.saving.load_model(source, compile=False)
        keras.saving.load_model(out)  # compiling needs no optimizer state: no warning (warnings are errors)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), original.predict(x, verbose=0), strict=True)
    assert source.read_bytes() == before


def test_keras_refuses_dropping_a_layer_weight(tmp_path):
    from ckptdoctor.writer import Edits, write_checkpoint

    with opened(KERAS_FILES["legacy.h5"]) as checkpoint:
        name = next(v.name for v in checkpoint.variables if v.role is Role.BN_STATISTIC)
        with pytest.raises(OutputError, match="only the optimizer's state can be dropped"):
            write_checkpoint(checkpoint, Edits(drop=frozenset({name})), tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()


def test_nothing_to_drop_is_a_copy_not_an_error(tmp_path):
    from test_rule_coverage import healthy_tensors, write_bundle

    (tmp_path / "in").mkdir()
    source = write_bundle(tmp_path / "in" / "model.ckpt", healthy_tensors())
    result = run_cli("strip", source, "--out", tmp_path / "out" / "model.ckpt")
    assert result.returncode == 0, result.stderr
    assert "no training state to drop" in result.stdout
    assert set(roles(tmp_path / "out" / "model.ckpt")) == set(healthy_tensors())
