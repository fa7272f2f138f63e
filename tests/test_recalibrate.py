"""recalibrate: BatchNorm population statistics recomputed over sample data, with TensorFlow as ground truth.

(a) a BatchNorm directly on the input gets numpy's mean and biased variance over batch and spatial positions,
fused, non-fused and fused with an exponential_avg_factor; (b) on a deep net, evaluation-mode outputs of the
recalibrated checkpoint equal training-mode outputs over the sample set as one batch; (c) the trainable-only,
at-init and unchanged-from-reference fixtures come out clean and restore in the eval graph; (d) Keras 3 and
tf.keras models in every file format. Data loading, accumulation and errors are tested without TensorFlow."""

from __future__ import annotations

import shutil
import time
import zipfile

import numpy as np
import pytest
from conftest import KERAS, TF1, copy_checkpoint, file_bytes, restored_logits, run_cli

from ckptdoctor import gate
from ckptdoctor.errors import ConfigError, ModelError, OutputError
from ckptdoctor.recalibrate import (
    BatchMoments,
    DataError,
    DataSpec,
    PopulationMoments,
    RecalibrateError,
    load_batches,
    parse_feeds,
    recalibrate,
)

IMAGE = (8, 8, 3)
EVAL_META = TF1 / "eval" / "eval.meta"


def samples(count: int, seed: int = 0, shape=IMAGE) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 1.5, size=(count, *shape)).astype(np.float32)


# ------------------------------------------------------------------------------------ no TensorFlow needed


def test_population_moments_equal_numpy_over_uneven_batches():
    rng = np.random.default_rng(1)
    values = rng.normal(3.0, 2.0, size=(1000, 5)) * rng.uniform(0.1, 10, size=5)
    moments = PopulationMoments()
    for part in np.split(values, [7, 300, 301, 640]):  # batch sizes 7, 293, 1, 339, 360
        moments.add(BatchMoments(part.mean(axis=0), part.var(axis=0), len(part)))
    np.testing.assert_allclose(moments.mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(moments.variance, values.var(axis=0), rtol=1e-10)  # biased, ddof=0
    assert moments.count == 1000


def test_data_npy_npz_and_function_batches_with_caps(tmp_path, monkeypatch):
    array = samples(10)
    np.save(tmp_path / "x.npy", array)
    got = list(load_batches(DataSpec(str(tmp_path / "x.npy"), batch_size=4)))
    assert [rows for _, rows in got] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([batch for batch, _ in got]), array)
    assert [rows for _, rows in load_batches(DataSpec(str(tmp_path / "x.npy"), batch_size=4, samples=6))] == [4, 2]
    assert [rows for _, rows in load_batches(DataSpec(str(tmp_path / "x.npy"), batch_size=3, batches=2))] == [3, 3]

    np.savez(tmp_path / "named.data", images=array, mask=np.ones((10, 2)))  # named anything: sniffed by bytes
    batches = list(load_batches(DataSpec(str(tmp_path / "named.data.npz"), batch_size=8)))
    assert [sorted(batch) for batch, _ in batches] == [["images", "mask"]] * 2
    assert [rows for _, rows in batches] == [8, 2]

    module = tmp_path / "my_samples.py"
    module.write_text("import numpy as np\ndef batches():\n    return (np.zeros((5, 2)) for _ in range(4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert [rows for _, rows in load_batches(DataSpec("my_samples:batches", samples=12))] == [5, 5, 2]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "not a readable .npy"),
        (lambda p: np.save(p, np.array(["a", "b"])), "must hold numbers"),
        (lambda p: p.write_bytes(b"not numpy at all"), "must be an .npy or .npz file"),
        (lambda p: np.savez(p.with_suffix(".npz"), a=np.zeros(3), b=np.zeros(4)), "differ in their number"),
    ],
    ids=["pickled-object", "strings", "other-bytes", "npz-lengths"],
)
def test_bad_data_is_one_line(tmp_path, make, message):
    path = tmp_path / "data.npy"
    make(path)
    if not path.exists():
        path = path.with_suffix(".npz")
    with pytest.raises(DataError, match=message) as error:
        list(load_batches(DataSpec(str(path))))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_npz_member_size_is_bounded_before_it_is_inflated(tmp_path, monkeypatch):
    import ckptdoctor.recalibrate as module

    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((1000, 100), np.float32))  # 400 kB inflated, tiny zipped
    monkeypatch.setattr(module, "MAX_NPZ_MEMBER_BYTES", 100_000)
    with pytest.raises(DataError, match=r"x.npy is larger than"):
        list(load_batches(DataSpec(str(tmp_path / "big.npz"))))
    with zipfile.ZipFile(tmp_path / "big.npz") as archive:
        assert archive.infolist()[0].compress_size < 100_000  # the zipped bytes alone would not have told


def test_feeds_parse_and_refuse():
    assert parse_feeds(["is_training=true", "keep_prob=1.0", "k = 3"]) == {
        "is_training": True,
        "keep_prob": 1.0,
        "k": 3,
    }
    for bad in ("is_training", "=1", "x=", "x=maybe"):
        with pytest.raises(ConfigError, match="--feed"):
            parse_feeds([bad])


def test_cli_without_a_training_graph_is_one_line(tmp_path):
    prefix = copy_checkpoint(TF1 / "finetune_trainable" / "model.ckpt-20", tmp_path / "ckpt")
    np.save(tmp_path / "x.npy", samples(4))
    result = run_cli("recalibrate", prefix, "--data", tmp_path / "x.npy", "--out", tmp_path / "out" / "m")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "model.ckpt-20.meta: no training graph beside the checkpoint" in (
        result.stderr
    )
    result = run_cli("recalibrate", prefix, "--data", "x.npy", "--out", tmp_path / "o", "--feed", "oops")
    assert result.returncode == 2 and "expected NAME=VALUE" in result.stderr and result.stderr.count("\n") == 1


# --------------------------------------------------------------------------------------- TF1 graphs


def export_training_graph(tf, path, build) -> None:
    """The meta graph tf.train.Saver writes beside a checkpoint: the model in training mode, its loss, an
    optimizer whose train op depends on the UPDATE_OPS."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        images = tf1.placeholder(tf.float32, [None, *IMAGE], name="input")
        labels = tf1.placeholder(tf.int64, [None], name="labels")
        logits = build(images)
        loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
        step = tf1.train.get_or_create_global_step()
        with tf1.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
            tf1.train.MomentumOptimizer(0.05, 0.9).minimize(loss, step)
        tf1.train.export_meta_graph(str(path), saver_def=tf1.train.Saver().as_saver_def(), clear_devices=True)


@pytest.fixture(scope="module")
def fixture_model(tf):
    import make_fixtures

    return make_fixtures


@pytest.fixture(scope="module")
def training_meta(tf, fixture_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("graph") / "train.meta"
    export_training_graph(tf, path, lambda images: fixture_model.model(images, is_training=True))
    return path


def beside(prefix, meta, directory):
    """A copy of the checkpoint with the training graph as its PREFIX.meta, as tf.train.Saver leaves it."""
    copied = copy_checkpoint(prefix, directory)
    shutil.copy(meta, f"{copied}.meta")
    return copied


def single_layer_checkpoint(tf, directory, kind: str):
    """A BatchNorm directly on the input, saved with its trainable variables only; returns (prefix, meta)."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 4, 4, 3], name="input")
        with tf1.variable_scope("net/bn"):
            beta = tf1.get_variable("beta", [3], initializer=tf1.constant_initializer(0.5))
            mean_var = tf1.get_variable("moving_mean", [3], initializer=tf1.zeros_initializer(), trainable=False)
            var_var = tf1.get_variable("moving_variance", [3], initializer=tf1.ones_initializer(), trainable=False)
        with tf.name_scope("net/tower_0/bn"):  # ops under another scope than the variables
            if kind == "moments":
                mean, variance = tf.nn.moments(x, [0, 1, 2])
                for variable, value in ((mean_var, mean), (var_var, variance)):
                    update = tf1.assign_sub(variable, (variable - value) * 0.1)
                    tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
            else:
                factor = 1.0 if kind == "fused" else 0.3
                running = (mean_var.read_value(), var_var.read_value()) if factor != 1.0 else (tf.constant([]),) * 2
                _, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=x,
                    scale=tf.ones(3),
                    offset=beta,
                    mean=running[0],
                    variance=running[1],
                    is_training=True,
                    exponential_avg_factor=factor,
                )
                if factor == 1.0:
                    updates = [
                        tf1.assign_sub(mean_var, (mean_var - mean) * 0.1),
                        tf1.assign_sub(var_var, (var_var - variance) * 0.1),
                    ]
                else:  # the op already blends: assign its outputs
                    updates = [tf1.assign(mean_var, mean), tf1.assign(var_var, variance)]
                for update in updates:
                    tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
        saver = tf1.train.Saver(var_list=tf1.trainable_variables())
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            prefix = saver.save(session, str(directory / "model.ckpt"), write_meta_graph=False)
        meta = directory / "train.meta"
        tf1.train.export_meta_graph(str(meta), saver_def=tf1.train.Saver().as_saver_def())
    return prefix, meta


@pytest.mark.parametrize("kind", ["moments", "fused", "fused-factor"])
def test_a_batchnorm_on_the_input_gets_numpys_population_statistics(tf, tmp_path, kind):
    prefix, meta = single_layer_checkpoint(tf, tmp_path, kind)
    data = (np.random.default_rng(3).normal(2.0, 3.0, size=(50, 4, 4, 3)) * [1.0, 0.1, 10.0]).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    result = recalibrate(
        prefix, DataSpec(str(tmp_path / "x.npy"), batch_size=16), tmp_path / "out" / "m", meta_graph=str(meta)
    )
    assert (result.samples, result.batches, result.added) == (50, 4, 2)
    assert result.layers[0].values == 50 * 16
    stored = tf.train.load_checkpoint(str(tmp_path / "out" / "m"))  # TensorFlow reads what was written
    np.testing.assert_allclose(stored.get_tensor("net/bn/moving_mean"), data.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        stored.get_tensor("net/bn/moving_variance"), data.astype(np.float64).var(axis=(0, 1, 2)), rtol=1e-5
    )
    np.testing.assert_array_equal(stored.get_tensor("net/bn/beta"), [0.5] * 3)


def test_b_eval_outputs_equal_training_outputs_over_the_sample_set_as_one_batch(tf, tmp_path, training_meta):
    prefix = TF1 / "finetune_trainable" / "model.ckpt-20"
    data = samples(96, seed=5)
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "out" / "model.ckpt-20"
    one_batch = DataSpec(str(tmp_path / "x.npy"), batch_size=len(data))  # deeper layers see what training-mode
    recalibrate(prefix, one_batch, out, meta_graph=str(training_meta))  # BatchNorm over this one batch makes
    evaluation = restored_logits(tf, EVAL_META, out, data)
    training = restored_logits(tf, training_meta, prefix, data)  # BatchNorm on this batch
    np.testing.assert_allclose(evaluation, training, rtol=1e-3, atol=1e-3 * np.abs(training).max())
    before = restored_logits(tf, EVAL_META, TF1 / "finetune_full" / "model.ckpt-20", data)  # the run's own statistics
    assert not np.allclose(before, training, rtol=1e-3)  # so the equality above is not a coincidence


@pytest.mark.parametrize(
    "fixture, reference, finding",
    [
        ("finetune_trainable", None, "bn-missing-moving-stats"),
        ("scratch_noupdate", None, "bn-stats-at-init"),
        ("finetune_noupdate", "pretrained", "bn-stats-match-reference"),
    ],
    ids=["trainable-only", "at-init", "unchanged-from-reference"],
)
def test_c_broken_fixtures_come_out_clean_and_restore_in_the_eval_graph(
    tf, tmp_path, training_meta, fixture, reference, finding
):
    from ckptdoctor.verify import verify_meta_graph

    prefix = beside(TF1 / fixture / "model.ckpt-20", training_meta, tmp_path / "in")
    reference_path = TF1 / reference / "model.ckpt" if reference else None

    def findings(path) -> set[str]:
        verdict = gate([path], reference=reference_path)
        return {f.name for report in verdict.reports for f in report.findings}

    assert finding in findings(prefix)  # broken before
    np.save(tmp_path / "x.npy", samples(64))
    before = file_bytes(prefix)
    out = tmp_path / "out" / "model.ckpt-20"
    result = recalibrate(prefix, DataSpec(str(tmp_path / "x.npy")), out)  # the graph: PREFIX.meta beside it
    assert result.added + result.replaced == 8
    assert file_bytes(prefix) == before
    assert findings(out) == set()  # no finding of any severity
    restored = verify_meta_graph(out, EVAL_META)
    assert restored.ok, restored


def test_cli_story_trainable_only(tf, tmp_path, training_meta):
    prefix = beside(TF1 / "finetune_trainable" / "model.ckpt-20", training_meta, tmp_path / "in")
    np.save(tmp_path / "x.npy", samples(40))
    before = file_bytes(prefix)
    out = tmp_path / "fixed" / "model.ckpt-20"
    result = run_cli("recalibrate", prefix, "--data", tmp_path / "x.npy", "--out", out, "--batch-size", "16")
    assert result.returncode == 0, result.stderr
    assert "recalibrated 4 BatchNorm layers over 40 samples in 3 batches: 0 statistics replaced, 8 added" in (
        result.stdout
    )
    assert "net/conv1/BatchNorm: added, added" in result.stdout and "no findings" in result.stdout
    assert "warning: only 40 samples" in result.stderr
    assert file_bytes(prefix) == before
    again = run_cli("recalibrate", prefix, "--data", tmp_path / "x.npy", "--out", prefix)  # over its input
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and file_bytes(prefix) == before


def test_an_evaluation_graph_is_named_as_such(tf, tmp_path):
    np.save(tmp_path / "x.npy", samples(4))
    with pytest.raises(
        RecalibrateError, match=r"eval.meta: an evaluation graph: .*recalibrate needs the training graph"
    ):
        recalibrate(
            TF1 / "finetune_full" / "model.ckpt-20",
            DataSpec(str(tmp_path / "x.npy")),
            tmp_path / "o",
            meta_graph=str(EVAL_META),
        )
    assert not (tmp_path / "o.index").exists()


def test_inputs_and_feeds_are_checked(tf, tmp_path, training_meta):
    prefix = TF1 / "finetune_trainable" / "model.ckpt-20"
    np.save(tmp_path / "x.npy", samples(4))
    np.save(tmp_path / "wrong.npy", samples(4, shape=(8, 8, 5)))
    spec = DataSpec(str(tmp_path / "x.npy"))
    with pytest.raises(ConfigError, match="--feed nope: no such tensor"):
        recalibrate(prefix, spec, tmp_path / "o", meta_graph=str(training_meta), feeds={"nope": 1})
    with pytest.raises(DataError, match="does not fit the graph's input"):
        recalibrate(prefix, DataSpec(str(tmp_path / "wrong.npy")), tmp_path / "o", meta_graph=str(training_meta))
    with pytest.raises(ModelError, match="none of the graph's variables"):
        recalibrate(TF1 / "partitioned" / "model.ckpt", spec, tmp_path / "o", meta_graph=str(training_meta))
    with pytest.raises(ModelError, match="recalibrated through its model: give --model"):
        recalibrate(KERAS / "healthy" / "ckpt" / "model", spec, tmp_path / "o", meta_graph=str(training_meta))
    with pytest.raises(OutputError, match="exists at the output"):
        existing = copy_checkpoint(TF1 / "finetune_full" / "model.ckpt-20", tmp_path / "existing")
        recalibrate(prefix, spec, existing, meta_graph=str(training_meta))


# ------------------------------------------------------------------------------------------- Keras and TF2


def keras_outputs(model_spec, weights, images, training):
    from ckptdoctor.verify import load_model_spec

    model = load_model_spec(model_spec)
    if str(weights).endswith((".h5", ".keras")):
        model.load_weights(str(weights))
    else:
        import tensorflow as tf

        tf.train.Checkpoint(model=model).read(str(weights)).expect_partial()
    return np.asarray(model(images, training=training))


TF_KERAS_BUILDER = """
import tf_keras
def build():
    return tf_keras.models.load_model({path!r}, compile=False)
"""

KERAS_CASES = {
    "keras3/.keras": (KERAS / "stats_removed" / "model.keras", "model.keras"),
    "keras3/.weights.h5": (KERAS / "stats_removed" / "model.weights.h5", "model.weights.h5"),
    "keras3/legacy.h5": (KERAS / "stats_removed" / "model.h5", "model.h5"),
    "keras3/tf2-checkpoint": (KERAS / "stats_removed" / "ckpt" / "model", "ckpt/model"),
    "keras3/at-init.weights.h5": (KERAS / "stats_init" / "model.weights.h5", "model.weights.h5"),
    "tf.keras/legacy.h5": (KERAS.parent / "keras2" / "model.h5", "model.h5"),
    "tf.keras/weights.h5": (KERAS.parent / "keras2" / "model_weights.h5", "model_weights.h5"),
    "tf.keras/tf2-checkpoint": (KERAS.parent / "keras2" / "ckpt" / "model", "ckpt/model"),
}


@pytest.mark.parametrize("case", list(KERAS_CASES))
def test_d_keras_models_in_every_format(tf, tmp_path, monkeypatch, case):
    source, name = KERAS_CASES[case]
    if case.startswith("tf.keras"):
        pytest.importorskip("tf_keras")
        (tmp_path / "tfkeras_builder.py").write_text(
            TF_KERAS_BUILDER.format(path=str(KERAS.parent / "keras2" / "model.h5"))
        )
        monkeypatch.syspath_prepend(str(tmp_path))
        model = "tfkeras_builder:build"
    else:
        model = str(KERAS / "healthy" / "model.keras")
    data = samples(48, seed=9)
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "out" / name
    result = recalibrate(source, DataSpec(str(tmp_path / "x.npy"), batch_size=len(data)), out, model=model)
    assert len(result.layers) == 3 and result.added + result.replaced == 6
    assert gate([result.out]).exit_code == 0
    evaluation = keras_outputs(model, out, data, training=False)
    training = keras_outputs(model, out, data, training=True)  # BatchNorm over the sample set as one batch
    np.testing.assert_allclose(evaluation, training, rtol=1e-3, atol=1e-3 * np.abs(training).max())


KERAS_INPUT_BN = """
import keras
def build():
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.BatchNormalization(name="bn")])
"""


def test_a_keras_batchnorm_on_the_input_gets_numpys_statistics_over_uneven_batches(tf, tmp_path, monkeypatch):
    (tmp_path / "input_bn.py").write_text(KERAS_INPUT_BN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import input_bn

    input_bn.build().save_weights(str(tmp_path / "bn.weights.h5"))
    data = (np.random.default_rng(4).normal(-1.0, 2.0, size=(50, 4, 4, 3)) * [1.0, 0.1, 10.0]).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    out = tmp_path / "out.weights.h5"
    result = recalibrate(
        tmp_path / "bn.weights.h5", DataSpec(str(tmp_path / "x.npy"), batch_size=16), out, model="input_bn:build"
    )
    assert (result.batches, result.replaced, result.layers[0].values) == (4, 2, 50 * 16)
    model = input_bn.build()
    model.load_weights(str(out))  # Keras reads what was written
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), data.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), data.astype(np.float64).var(axis=(0, 1, 2)), rtol=1e-5)


STALLING_BUILDER = """
import time
def build():
    time.sleep(600)  # a model (or its data) that stops answering
"""


def _recalibrate_keras_file(tmp_path, model, *options, env):
    """`ckptdoctor recalibrate` of the Keras .weights.h5 without statistics over TMP/x.npy into TMP/out.weights.h5."""
    source, data, out = KERAS / "stats_removed" / "model.weights.h5", tmp_path / "x.npy", tmp_path / "out.weights.h5"
    return run_cli("recalibrate", source, "--data", data, "--model", model, *options, "--out", out, env=env)


def test_a_recalibration_that_stops_making_progress_is_stopped_by_the_watchdog(tmp_path):
    """A Keras file is read by libhdf5, which can loop on damaged metadata: recalibrate runs under the stall
    watchdog as check and patch do, with each batch as progress."""
    (tmp_path / "stalling_builder.py").write_text(STALLING_BUILDER)
    np.save(tmp_path / "x.npy", samples(8, seed=1))
    started = time.monotonic()
    result = _recalibrate_keras_file(
        tmp_path, "stalling_builder:build", env={"CKPTDOCTOR_STALL_SECONDS": "2", "PYTHONPATH": str(tmp_path)}
    )
    assert result.returncode == 2
    assert "no progress for 2 s, giving up" in result.stderr and result.stderr.count("\n") == 1
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out.weights.h5").exists()


def test_a_keras_recalibration_on_the_command_line_finishes_under_the_watchdog(tf, tmp_path):
    """The forked work imports TensorFlow after the fork and beats once per batch: a healthy run is not killed,
    even with a short stall limit."""
    np.save(tmp_path / "x.npy", samples(48, seed=2))
    result = _recalibrate_keras_file(
        tmp_path, KERAS / "healthy" / "model.keras", "--batch-size", "8", env={"CKPTDOCTOR_STALL_SECONDS": "30"}
    )
    assert result.returncode == 0, result.stderr
    assert "no findings" in result.stdout
    assert gate([tmp_path / "out.weights.h5"]).exit_code == 0


def test_layers_the_model_computes_nothing_for_are_named_in_a_warning(tf, tmp_path, fixture_model):
    """A training graph holding only the first of the checkpoint's four BatchNorm layers: the other three are
    written as they were, and the user is told which (the re-check cannot tell stale statistics from new)."""

    def first_layer_only(images):
        with tf.compat.v1.variable_scope("net"):
            x = fixture_model.batch_norm(fixture_model.conv(images, "conv1", 8), "conv1/BatchNorm", True, scale=False)
        return tf.reduce_mean(x, [1, 2])

    meta = tmp_path / "first.meta"
    export_training_graph(tf, meta, first_layer_only)
    np.save(tmp_path / "x.npy", samples(16))
    prefix = TF1 / "finetune_full" / "model.ckpt-20"
    out = tmp_path / "out" / "model.ckpt-20"
    result = run_cli("recalibrate", prefix, "--meta-graph", meta, "--data", tmp_path / "x.npy", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "recalibrated 1 BatchNorm layers over 16 samples in 1 batches: 2 statistics replaced, 0 added" in (
        result.stdout
    )
    warnings = [line for line in result.stderr.splitlines() if "computed no statistics" in line]
    assert warnings == [
        "ckptdoctor: warning: 3 BatchNorm layers of the checkpoint the model computed no statistics for, written "
        "as they were: net/batch_normalization, net/batch_normalization_1, net/conv2/BatchNorm"
    ]
    before, after = tf.train.load_checkpoint(str(prefix)), tf.train.load_checkpoint(str(out))
    for layer in ("net/batch_normalization", "net/batch_normalization_1", "net/conv2/BatchNorm"):
        np.testing.assert_array_equal(
            after.get_tensor(f"{layer}/moving_mean"), before.get_tensor(f"{layer}/moving_mean")
        )
    assert not np.array_equal(
        after.get_tensor("net/conv1/BatchNorm/moving_mean"), before.get_tensor("net/conv1/BatchNorm/moving_mean")
    )
