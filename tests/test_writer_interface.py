"""The writer interface every writing command uses: one registry by Format, `write_checkpoint` with an edit plan.

`replace` is proven in every format patch writes by TensorFlow/Keras reading the new values back (what
recalibrate relies on); edits a format does not support are refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, KERAS, copy_checkpoint, file_bytes

from ckptdoctor import check
from ckptdoctor.analysis.checkpoint import opened
from ckptdoctor.errors import OutputError
from ckptdoctor.model import Format, Severity
from ckptdoctor.report import RENDERERS, OutputFormat
from ckptdoctor.writer import Edits, Replacement, Values, write_checkpoint, writer_for
from ckptdoctor.writer.base import UnsupportedEdit
from ckptdoctor.writer.registry import WRITERS, NotWritable

FULL = FIXTURE_BUNDLES["finetune_full"]
NEW_MEAN = np.linspace(-3.0, 3.0, 8, dtype=np.float32)  # no BatchNorm in the fixtures holds these values
HEALTHY = {
    "tf2": KERAS / "healthy" / "ckpt" / "model",
    "weights.h5": KERAS / "healthy" / "model.weights.h5",
    "legacy.h5": KERAS / "healthy" / "model.h5",
    "keras": KERAS / "healthy" / "model.keras",
}


@pytest.fixture(scope="module")
def keras(tf):
    import keras

    return keras


def replace_first_moving_mean(source_path, out) -> tuple[str, str]:
    """Write the checkpoint with its first BatchNorm layer's moving_mean replaced by NEW_MEAN; returns the
    replaced tensor's name and the layer's framework name."""
    with opened(source_path) as source:
        layer = source.batchnorm[0]
        assert layer.moving_mean is not None
        edits = Edits(replace=(Replacement(layer.moving_mean, Values(NEW_MEAN)),))
        result = write_checkpoint(source, edits, out)
        assert result.placed == ()
        return layer.moving_mean, source.layer_name(layer)


def test_every_format_has_a_writer_or_says_why_not():
    assert set(WRITERS) == set(Format)
    for format, entry in WRITERS.items():
        if isinstance(entry, NotWritable):
            with pytest.raises(OutputError, match=f"x: ckptdoctor does not write {format.value} checkpoints: ") as err:
                writer_for(format, "x")
            assert "\n" not in str(err.value)
        else:
            writer = writer_for(format, "x")
            assert type(writer).__name__ == entry.name and callable(writer.prepare)
            assert writer_for(format, "y") is writer  # made once
    with pytest.raises(OutputError, match="does not write pickle checkpoints"):
        writer_for("pickle", "x")


def test_every_output_format_has_a_renderer_with_one_signature():
    assert set(RENDERERS) == set(OutputFormat)
    reports = [check(FIXTURE_BUNDLES["finetune_trainable"])]
    assert reports[0].findings  # something to render
    documents = {f: RENDERERS[f](reports, Severity.ERROR) for f in OutputFormat}
    assert json.loads(documents[OutputFormat.JSON])["findings"]
    assert json.loads(documents[OutputFormat.SARIF])["runs"][0]["results"]
    assert documents[OutputFormat.JUNIT].startswith("<?xml") and "<failure" in documents[OutputFormat.JUNIT]
    assert documents[OutputFormat.GITHUB].startswith("::error ")
    assert "BN001" in documents[OutputFormat.TEXT] and "\x1b[" not in documents[OutputFormat.TEXT]


def test_replace_in_a_tf1_bundle(tmp_path, tf):
    out = tmp_path / "model.ckpt"
    before = file_bytes(FULL)
    key, _ = replace_first_moving_mean(FULL, out)
    written, original = tf.train.load_checkpoint(str(out)), tf.train.load_checkpoint(str(FULL))
    np.testing.assert_array_equal(written.get_tensor(key), NEW_MEAN, strict=True)
    for name, _ in tf.train.list_variables(str(FULL)):
        if name != key:
            np.testing.assert_array_equal(written.get_tensor(name), original.get_tensor(name))
    assert 'model_checkpoint_path: "model.ckpt"' in (tmp_path / "checkpoint").read_text()
    assert file_bytes(FULL) == before


def test_replace_in_a_tf2_bundle_restores_into_the_model(tmp_path, tf, keras):
    out = tmp_path / "model"
    key, layer_name = replace_first_moving_mean(HEALTHY["tf2"], out)
    np.testing.assert_array_equal(tf.train.load_checkpoint(str(out)).get_tensor(key), NEW_MEAN, strict=True)
    model = keras.models.clone_model(keras.saving.load_model(HEALTHY["keras"], compile=False))
    tf.train.Checkpoint(model=model).read(str(out)).assert_existing_objects_matched()  # the graph binds them
    np.testing.assert_array_equal(model.get_layer(layer_name).moving_mean.numpy(), NEW_MEAN)


@pytest.mark.parametrize("kind", ["weights.h5", "legacy.h5", "keras"])
def test_replace_in_keras_files_loads_the_new_values(tmp_path, keras, kind):
    source = HEALTHY[kind]
    before = source.read_bytes()
    out = tmp_path / source.name
    _, layer_name = replace_first_moving_mean(source, out)
    if kind == "weights.h5":
        model = keras.models.clone_model(keras.saving.load_model(HEALTHY["keras"], compile=False))
        model.load_weights(out)
    else:
        model = keras.saving.load_model(out, compile=False)
    np.testing.assert_array_equal(model.get_layer(layer_name).moving_mean.numpy(), NEW_MEAN)
    assert source.read_bytes() == before


@pytest.mark.parametrize("kind", sorted(HEALTHY))
def test_a_replacement_of_another_shape_is_refused_before_writing(tmp_path, kind):
    with opened(HEALTHY[kind]) as source:
        name = source.batchnorm[0].moving_mean
        assert name is not None
        edits = Edits(replace=(Replacement(name, Values(np.zeros(5, np.float32))),))
        with pytest.raises(OutputError, match=r"is float32\[8\]; its replacement is float32\[5\]"):
            write_checkpoint(source, edits, tmp_path / "out" / "x")
    assert not (tmp_path / "out").exists()


# What each writer refuses, never silently ignores: Keras loads a layer's weights by position (only the whole
# optimizer can go), Keras 3 stores no layer names, legacy Keras renames whole layers, and a TF2 checkpoint
# restores by its object graph (renaming a key would leave its object behind).
REFUSED = {
    ("tf2", "rename"): "renaming tensors .* is not supported yet",
    ("weights.h5", "drop"): "only the optimizer's state can be dropped",
    ("keras", "drop"): "only the optimizer's state can be dropped",
    ("legacy.h5", "drop"): "only the optimizer's state can be dropped",
    ("weights.h5", "rename"): "not by its name: there is nothing to rename",
    ("keras", "rename"): "not by its name: there is nothing to rename",
    ("legacy.h5", "rename"): "Keras files rename whole layers",
}


@pytest.mark.parametrize(("kind", "edit"), sorted(REFUSED))
def test_edits_a_format_cannot_make_are_refused_not_ignored(tmp_path, kind, edit):
    with opened(HEALTHY[kind]) as source:
        name = source.batchnorm[0].moving_mean
        assert name is not None
        edits = Edits(drop=frozenset({name})) if edit == "drop" else Edits(rename={name: name + "_renamed"})
        with pytest.raises(UnsupportedEdit, match=REFUSED[kind, edit]):
            write_checkpoint(source, edits, tmp_path / "out" / "x")
    assert not (tmp_path / "out").exists()


def test_drop_and_rename_in_a_tf1_bundle(tmp_path, tf):
    target = copy_checkpoint(FULL, tmp_path / "in")
    out = tmp_path / "out" / "model.ckpt"
    mean, variance = "net/batch_normalization/moving_mean", "net/batch_normalization/moving_variance"
    with opened(target) as source:
        write_checkpoint(source, Edits(drop=frozenset({mean}), rename={variance: "renamed/variance"}), out)
    names = {name for name, _ in tf.train.list_variables(str(out))}
    original = {name for name, _ in tf.train.list_variables(str(target))}
    assert names == (original - {mean, variance}) | {"renamed/variance"}
    np.testing.assert_array_equal(
        tf.train.load_checkpoint(str(out)).get_tensor("renamed/variance"),
        tf.train.load_checkpoint(str(target)).get_tensor(variance),
        strict=True,
    )
