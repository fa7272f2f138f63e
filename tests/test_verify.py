"""verify agrees with TensorFlow: what it calls missing is exactly what the restore fails on."""

from __future__ import annotations

import pytest
from conftest import FIXTURE_BUNDLES, KERAS, TF1, realworld

from ckptdoctor.patch import patch
from ckptdoctor.verify import verify_meta_graph, verify_model

META = TF1 / "eval" / "eval.meta"
STATS = {
    f"net/{layer}/{stat}"
    for layer in ("conv1/BatchNorm", "conv2/BatchNorm", "batch_normalization", "batch_normalization_1")
    for stat in ("moving_mean", "moving_variance")
}


def test_full_save_restores(tf):
    result = verify_meta_graph(FIXTURE_BUNDLES["finetune_full"], META)
    assert result.ok and result.restored
    assert result.graph_variables == 21  # model variables only: 13 weights and 8 statistics
    assert result.missing == () and result.mismatched == ()


def test_trainable_save_misses_exactly_the_statistics(tf):
    result = verify_meta_graph(FIXTURE_BUNDLES["finetune_trainable"], META)
    assert not result.ok and not result.restored
    assert set(result.missing) == STATS
    assert "NotFoundError" in result.tf_error


def test_patched_save_restores(tmp_path, tf):
    out = tmp_path / "fixed"
    patch(FIXTURE_BUNDLES["finetune_trainable"], FIXTURE_BUNDLES["finetune_full"], out)
    assert verify_meta_graph(out, META).ok


def test_shape_mismatch_is_reported(tmp_path, tf):
    prefix = str(tmp_path / "wrong")
    tf.raw_ops.SaveV2(
        prefix=prefix, tensor_names=["net/conv1/weights"], shape_and_slices=[""], tensors=[tf.zeros([2, 2])]
    )
    result = verify_meta_graph(prefix, META)
    assert not result.ok
    (mismatch,) = result.mismatched
    assert (mismatch.key, mismatch.expected, mismatch.found) == (
        "net/conv1/weights",
        "float32[3, 3, 3, 8]",
        "float32[2, 2]",
    )
    assert len(result.missing) == 20


KERAS_MODEL = str(KERAS / "healthy" / "model.keras")
KERAS_STATS = {
    f"{layer}/{stat}"
    for layer in ("bn_default", "bn_noscale", "bn_nocenter")
    for stat in ("moving_mean", "moving_variance")
}


@pytest.mark.parametrize(
    "name",
    ["healthy/model.weights.h5", "healthy/model.h5", "healthy/model.keras", "healthy/ckpt/model", "healthy/savedmodel"],
)
def test_healthy_keras_files_load_into_the_model(name, tf):
    result = verify_model(KERAS / name, KERAS_MODEL)
    assert result.ok, result.tf_error
    assert result.graph_variables == 18


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("stats_removed/model.weights.h5", "Layer 'bn_default' expected 4 variables, but received 2"),
        ("stats_removed/model.keras", "Layer 'bn_default' expected 4 variables, but received 2"),
        ("stats_removed/model.h5", "Layer expects 4 weight(s). Received 2"),
        ("stats_removed/ckpt/model", "Found 6 Python objects that were not bound"),
    ],
)
def test_keras_files_without_statistics_name_what_is_missing(name, error, tf):
    result = verify_model(KERAS / name, KERAS_MODEL)
    assert not result.ok and not result.restored
    assert error in result.tf_error
    assert set(result.missing) == KERAS_STATS


def test_model_builder_spec(tmp_path, monkeypatch, tf):
    (tmp_path / "mymodels.py").write_text(
        "import keras\n\n"
        "def build():\n"
        f"    saved = keras.saving.load_model({KERAS_MODEL!r}, compile=False)\n"
        "    return keras.models.clone_model(saved)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert verify_model(KERAS / "healthy" / "model.weights.h5", "mymodels:build").ok


def test_a_graph_written_by_tf_0_12_imports(tf, tmp_path):
    """TF 0.12 wrote `tensorflow_version: "0.12.head"`, which TF's own import_meta_graph fails to parse; the
    version only tells TF whether the graph predates 1.9, so the release numbers are enough to import it."""
    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString(META.read_bytes())
    meta.meta_info_def.tensorflow_version = "0.12.head"
    old = tmp_path / "eval.meta"
    old.write_bytes(meta.SerializeToString())
    with tf.Graph().as_default(), pytest.raises(Exception, match=r"0\.12\.head"):
        tf.compat.v1.train.import_meta_graph(str(old))  # TensorFlow itself cannot
    result = verify_meta_graph(FIXTURE_BUNDLES["finetune_full"], old)
    assert result.ok and result.restored and result.graph_variables == 21


def _serving_export(tf, directory, restored: list[str]):
    """A graph of a weight, a BatchNorm statistic and global_step, whose own Saver restores `restored` only
    (a serving export's), and a checkpoint that holds just those."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        made = {
            "w": tf1.get_variable("w", [2], initializer=tf1.constant_initializer(3.0)),
            "bn/moving_mean": tf1.get_variable("bn/moving_mean", [2], initializer=tf1.zeros_initializer()),
            "global_step": tf1.train.get_or_create_global_step(),
        }
        saver = tf1.train.Saver([made[name] for name in restored])
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            prefix = saver.save(session, str(directory / "model.ckpt"), write_meta_graph=False)
        tf1.train.export_meta_graph(str(directory / "export.meta"), saver_def=saver.as_saver_def())
    return prefix, directory / "export.meta"


def test_a_counter_the_graphs_own_saver_leaves_out_is_a_note(tf, tmp_path):
    """TF restores through the graph's own saver, which here leaves global_step to its initializer: harmless
    for a counter (the real serving V1 export does this), so it passes with a note."""
    prefix, meta = _serving_export(tf, tmp_path, ["w", "bn/moving_mean"])
    result = verify_meta_graph(prefix, meta)
    assert result.ok and result.restored and result.missing == ()
    assert result.notes == ("global_step is not in the checkpoint, and the graph's saver leaves it to its initializer",)


def test_a_statistic_the_graphs_own_saver_leaves_out_is_still_missing(tf, tmp_path):
    """TF restores without error, but evaluation would normalise with the initial 0/1: that is the failure
    verify exists to show, whoever left the statistic out."""
    prefix, meta = _serving_export(tf, tmp_path, ["w"])
    result = verify_meta_graph(prefix, meta)
    assert result.restored and not result.ok
    assert result.missing == ("bn/moving_mean",)


def test_a_weight_named_like_a_counter_stays_missing(tf, tmp_path):
    """`ode/step`, a trainable float, would be a counter by its name alone: a weight the graph's saver leaves
    out is missing, whatever its name says (red-team pass)."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        weight = tf1.get_variable("w", [2], initializer=tf1.constant_initializer(3.0))
        tf1.get_variable("ode/step", [], initializer=tf1.constant_initializer(0.1))  # trainable by default
        saver = tf1.train.Saver([weight])
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            prefix = saver.save(session, str(tmp_path / "model.ckpt"), write_meta_graph=False)
        tf1.train.export_meta_graph(str(tmp_path / "export.meta"), saver_def=saver.as_saver_def())
    result = verify_meta_graph(prefix, tmp_path / "export.meta")
    assert result.restored and not result.ok and result.missing == ("ode/step",) and result.notes == ()


def test_the_real_serving_v1_export_restores_with_its_counter_as_a_note(tf):
    """TF 0.12's export: a `0.12.head` graph whose integer global_step sits in the trainable collection (TF 0.12's
    default) and which its saver leaves out; TensorFlow restores it through that saver."""
    export = realworld("serving_v1_half_plus_two")
    result = verify_meta_graph(export, export / "export.meta")
    assert result.ok and result.notes == (
        "global_step is not in the checkpoint, and the graph's saver leaves it to its initializer",
    )
