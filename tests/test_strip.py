"""`ckptdoctor strip`: the deployment checkpoint restores into the evaluation model, for real, in every format.

TensorFlow and Keras are the judges: the stripped TF1 checkpoint restores into the evaluation graph with the
outputs of the original; a stripped TF2 checkpoint passes `assert_consumed()` for a model without optimizer
(Keras 3 optimizer, and a TF1-style optimizer with `slot_variables`); stripped Keras files load with
`load_model(compile=False)`/`load_weights` and predict exactly what the originals predict."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, KERAS, TF1, copy_checkpoint, file_bytes, realworld, run_cli

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
    assert f"{len(shadows)} variables written from their moving averages" in result.stdout
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


# --use-ema beyond TF1. TF2 keeps tf.train.ExponentialMovingAverage shadows wherever the script tracked them
# (named by their recorded variable names); Keras optimizers with use_ema=True keep one average per trainable
# variable among their own variables: tf.keras names it `<Optimizer>/average/<var>`, Keras 3 `<opt>/<var>_average`
# in a TF2 checkpoint and only a position in a .keras file. The judge is the framework's own EMA semantics:
# `optimizer.finalize_variable_values` (Keras), `var.assign(ema.average(var))` (TF2).

EMA_X = np.linspace(-1, 1, 32, dtype=np.float32).reshape(8, 4)
EMA_Y = np.linspace(1, 2, 16, dtype=np.float32).reshape(8, 2)


def _ema_model(api):
    """Layers out of alphabetical order (the order a Keras 3 file stores them in), a nested model and a frozen
    layer: everything the position of a Keras 3 average depends on. `api` is keras or tf_keras."""
    inputs = api.Input((4,))
    block = api.Sequential([api.layers.Dense(3, name="inner"), api.layers.BatchNormalization(name="bn")], name="block")
    frozen = api.layers.Dense(3, name="frozen")
    frozen.trainable = False
    outputs = api.layers.Dense(2, name="a_head")(frozen(block(api.layers.Dense(5, name="z_first")(inputs))))
    return api.Model(inputs, outputs)


@dataclass
class EmaTrained:
    files: dict[str, Path]  # what the training saved, by kind
    raw: np.ndarray  # its predictions with the trained values
    averaged: np.ndarray  # its predictions after finalize_variable_values: what the stripped files must predict


def _train_with_optimizer_ema(api, tf, directory: Path, saves) -> EmaTrained:
    model = _ema_model(api)
    optimizer = api.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.5)
    model.compile(optimizer, "mse")
    for _ in range(3):
        model.train_on_batch(EMA_X, EMA_Y)
    files = saves(model, optimizer, directory)
    raw = model.predict(EMA_X, verbose=0)
    optimizer.finalize_variable_values(model.trainable_variables)
    averaged = model.predict(EMA_X, verbose=0)
    assert not np.array_equal(raw, averaged)  # else the comparisons below could not fail
    return EmaTrained(files, raw, averaged)


@pytest.fixture(scope="module")
def keras3_ema(tmp_path_factory, tf, keras):
    def saves(model, optimizer, directory):
        model.save(directory / "model.keras")
        model.save_weights(directory / "model.weights.h5")
        prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(directory / "tf2" / "ckpt"))
        return {"keras": directory / "model.keras", "weights.h5": directory / "model.weights.h5", "tf2": Path(prefix)}

    return _train_with_optimizer_ema(keras, tf, tmp_path_factory.mktemp("keras3_ema"), saves)


@pytest.fixture(scope="module")
def tf_keras_ema(tmp_path_factory, tf):
    import tf_keras

    def saves(model, optimizer, directory):
        with pytest.warns(UserWarning, match="legacy"):  # tf.keras's own advice against HDF5
            model.save(directory / "model.h5")
        prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(directory / "tf2" / "ckpt"))
        return {"h5": directory / "model.h5", "tf2": Path(prefix)}

    return _train_with_optimizer_ema(tf_keras, tf, tmp_path_factory.mktemp("tf_keras_ema"), saves)


def _strip_ema(source: Path, out: Path) -> str:
    before = file_bytes(source)
    result = run_cli("strip", source, "--out", out, "--use-ema")
    assert result.returncode == 0, result.stderr
    assert file_bytes(source) == before
    assert not set(roles(out).values()) & TRAINING_STATE
    return result.stdout


def test_use_ema_keras3_file_takes_the_averages_by_position(tmp_path, keras, keras3_ema):
    stdout = _strip_ema(keras3_ema.files["keras"], tmp_path / "out" / "model.keras")
    assert "8 variables written from their moving averages" in stdout  # the frozen layer: none
    assert "kept as stored, without a shadow" in stdout  # the moving statistics, which Keras does not average
    stripped = keras.saving.load_model(tmp_path / "out" / "model.keras", compile=False)
    np.testing.assert_array_equal(stripped.predict(EMA_X, verbose=0), keras3_ema.averaged, strict=True)


def test_use_ema_keras3_tf2_checkpoint_restores_the_averages(tmp_path, tf, keras, keras3_ema):
    out = tmp_path / "out" / "ckpt"
    _strip_ema(keras3_ema.files["tf2"], out)
    fresh = _ema_model(keras)  # built anew: a clone of a compiled model would bring its optimizer along
    tf.train.Checkpoint(model=fresh).read(str(out)).assert_consumed()
    np.testing.assert_array_equal(fresh.predict(EMA_X, verbose=0), keras3_ema.averaged, strict=True)


def test_use_ema_on_a_keras3_weights_file_is_refused(tmp_path, keras3_ema):
    """A .weights.h5 stores the optimizer's variables by position without its config: averages, momenta and
    velocities cannot be told apart, so writing any of them as weights would be a guess."""
    result = run_cli("strip", keras3_ema.files["weights.h5"], "--out", tmp_path / "out.weights.h5", "--use-ema")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "does not record whether its optimizer keeps moving averages" in result.stderr
    assert not (tmp_path / "out.weights.h5").exists()


def test_use_ema_refuses_a_keras3_config_whose_averages_do_not_line_up(tmp_path):
    """config.json claims use_ema for an optimizer that kept none: position 2 on is Adam's momenta."""
    import json
    import zipfile

    source = tmp_path / "model.keras"
    with zipfile.ZipFile(KERAS_FILES["keras"]) as original, zipfile.ZipFile(source, "w") as forged:
        for info in original.infolist():
            data = original.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                config["compile_config"]["optimizer"]["config"]["use_ema"] = True
                data = json.dumps(config).encode()
            forged.writestr(info, data)
    result = run_cli("strip", source, "--out", tmp_path / "out" / "model.keras", "--use-ema")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "do not line up with the model's" in result.stderr
    assert not (tmp_path / "out").exists()


def test_use_ema_tf_keras_h5_takes_the_named_averages(tmp_path, tf, tf_keras_ema):
    import tf_keras

    out = tmp_path / "out" / "model.h5"
    stdout = _strip_ema(tf_keras_ema.files["h5"], out)
    assert "8 variables written from their moving averages" in stdout
    stripped = tf_keras.models.load_model(out, compile=False)
    np.testing.assert_array_equal(stripped.predict(EMA_X, verbose=0), tf_keras_ema.averaged, strict=True)


def test_use_ema_tf_keras_tf2_checkpoint_restores_the_averages(tmp_path, tf, tf_keras_ema):
    import tf_keras

    out = tmp_path / "out" / "ckpt"
    _strip_ema(tf_keras_ema.files["tf2"], out)
    fresh = _ema_model(tf_keras)
    tf.train.Checkpoint(model=fresh).read(str(out)).assert_consumed()
    np.testing.assert_array_equal(fresh.predict(EMA_X, verbose=0), tf_keras_ema.averaged, strict=True)


def test_use_ema_tf2_tracked_shadows_restore_as_the_averaged_model(tmp_path, tf, keras):
    """The tf.train.ExponentialMovingAverage docstring's way: the shadows of the trainable variables tracked
    beside the model (BatchNorm's moving statistics, not trainable, have none)."""
    model = _ema_model(keras)
    optimizer = keras.optimizers.SGD(0.1)
    ema = tf.train.ExponentialMovingAverage(0.5)
    trained = [v.value for v in model.trainable_variables]
    ema.apply(trained)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(EMA_X, training=True) - EMA_Y))
        optimizer.apply_gradients(
            zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
        )
        ema.apply(trained)
    tracked = tf.train.Checkpoint(model=model, optimizer=optimizer, averaged=[ema.average(v) for v in trained])
    source = Path(tracked.write(str(tmp_path / "in" / "ckpt")))
    assert Counter(roles(source).values())[Role.EMA] == len(trained)
    raw = model.predict(EMA_X, verbose=0)
    for variable in trained:
        variable.assign(ema.average(variable))
    averaged = model.predict(EMA_X, verbose=0)
    assert not np.array_equal(raw, averaged)

    for use_ema, expected in ((True, averaged), (False, raw)):
        out = tmp_path / f"ema={use_ema}" / "ckpt"
        if use_ema:
            assert f"{len(trained)} variables written from" in _strip_ema(source, out)
        else:
            strip(source, out)
        fresh = keras.models.clone_model(model)
        tf.train.Checkpoint(model=fresh).read(str(out)).assert_consumed()  # no shadow left behind
        np.testing.assert_array_equal(fresh.predict(EMA_X, verbose=0), expected, strict=True)


def test_use_ema_refuses_shadows_of_variables_that_share_a_name(tmp_path, tf):
    """Eager tf.Variables are all named `Variable`: the shadows' names cannot say whose they are."""
    net = tf.Module()
    net.w, net.b = tf.Variable([1.0, 2.0]), tf.Variable(0.5)
    ema = tf.train.ExponentialMovingAverage(0.5)
    ema.apply([net.w, net.b])
    shadows = {"w": ema.average(net.w), "b": ema.average(net.b)}
    source = tf.train.Checkpoint(net=net, ema=shadows).write(str(tmp_path / "in" / "ckpt"))
    result = run_cli("strip", source, "--out", tmp_path / "out" / "ckpt", "--use-ema")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is of Variable, which is not the only one" in result.stderr
    assert not (tmp_path / "out").exists()


def test_use_ema_refuses_a_shadow_named_for_no_variable(tmp_path):
    """A key that is `ExponentialMovingAverage` itself averages nothing its name can say: one line naming it."""
    from test_rule_coverage import write_bundle

    tensors = {"net/w": np.ones(2, "<f4"), "ExponentialMovingAverage": np.ones(2, "<f4")}
    (tmp_path / "in").mkdir()
    source = write_bundle(tmp_path / "in" / "model.ckpt", tensors)
    result = run_cli("strip", source, "--out", tmp_path / "out" / "model.ckpt", "--use-ema")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "the moving average ExponentialMovingAverage names no variable; strip without --use-ema" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_savedmodel_in_gives_a_checkpoint_out_and_says_so(tmp_path):
    """The SavedModel's variables are written as a checkpoint; nothing else of it is: the re-check says that,
    so that nobody deploys the output as a SavedModel."""
    out = tmp_path / "stripped" / "variables"
    result = run_cli("strip", KERAS / "healthy" / "savedmodel", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "note: written from a SavedModel's variables, as a checkpoint: the SavedModel's graph" in result.stdout
    assert not (out.parent / "saved_model.pb").exists()
    plain = run_cli("strip", FIXTURE_BUNDLES["finetune_full"], "--out", tmp_path / "tf1" / "model.ckpt")
    assert plain.returncode == 0 and "note:" not in plain.stdout


def test_what_is_dropped_is_named_as_inspect_names_it(tmp_path):
    """A TF2 checkpoint's keys (`net/layer_with_weights-0/bias/.OPTIMIZER_SLOT/net/optimizer/m/.ATTRIBUTES/
    VARIABLE_VALUE`) are listed by the names inspect and check give them (`Adam/dense/bias/m`)."""
    golf = realworld("golf_tf2_ckpt_manager")
    result = run_cli("strip", golf / "ckpt-2", "--out", tmp_path / "ckpt")
    assert result.returncode == 0, result.stderr
    assert "  - Adam/dense/bias/m  (optimizer state, 256 B)" in result.stdout.splitlines()
    assert ".ATTRIBUTES" not in result.stdout
