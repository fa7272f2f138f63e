"""`ckptdoctor rename` and `patch --map`: `match` writes the map, `rename` applies it, TensorFlow and Keras judge.

fixtures/match/ holds TF-made checkpoints saved under other names than the graph fixtures/match/model.meta
restores; after `match --assignment-map` and `rename --map`, `verify` restores them for real. Legacy Keras
files get their layers renamed: `load_model` and `load_weights(by_name=True)` load them with the
predictions of the original. Hostile maps are refused in one line before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, FIXTURES, KERAS, TF1, copy_checkpoint, file_bytes, run_cli

from ckptdoctor.match import match
from ckptdoctor.rename import load_map, map_name, rename
from ckptdoctor.verify import verify_meta_graph

MATCH = FIXTURES / "match"
MODEL_META = MATCH / "model.meta"


def write_map(path: Path, mapping: dict[str, str] | str) -> Path:
    path.write_text(mapping if isinstance(mapping, str) else json.dumps(mapping))
    return path


def test_map_semantics_are_init_from_checkpoint_s():
    mapping = {"tower_0/": "/", "tower_0/dense/kernel": "head/w", "tower_0/dense/": "head/", "/": "net/"}
    assert map_name(mapping, "tower_0/conv/kernel") == ("conv/kernel", "tower_0/")
    assert map_name(mapping, "tower_0/dense/kernel") == ("head/w", "tower_0/dense/kernel")  # exact wins
    assert map_name(mapping, "tower_0/dense/bias") == ("head/bias", "tower_0/dense/")  # longer scope wins
    assert map_name(mapping, "global_step") == ("net/global_step", "/")
    assert map_name({"a/": "b/"}, "ab/c") is None


@pytest.mark.parametrize("fixture", ["prefix", "counter", "leaf"])
def test_match_writes_the_map_rename_applies_it_and_the_graph_restores(tmp_path, tf, fixture):
    source = copy_checkpoint(MATCH / fixture / "model.ckpt", tmp_path / "in")
    before = file_bytes(source)
    mapping = write_map(tmp_path / "map.json", match(source, meta_graph=str(MODEL_META))[0].assignment_map)
    out = tmp_path / "out" / "model.ckpt"
    result = run_cli("rename", source, "--map", mapping, "--out", out)
    assert result.returncode == 0, result.stderr
    assert verify_meta_graph(out, MODEL_META).ok  # restored for real in the graph
    after = match(out, meta_graph=str(MODEL_META))[0]
    assert not (after.renamed or after.missing) and len(after.matched) == after.model_variables
    original, renamed = tf.train.load_checkpoint(str(source)), tf.train.load_checkpoint(str(out))
    for old, _ in tf.train.list_variables(str(source)):
        new = (map_name(load_map(mapping), old) or (old, ""))[0]
        np.testing.assert_array_equal(renamed.get_tensor(new), original.get_tensor(old), strict=True)
    assert file_bytes(source) == before


LEGACY = {"keras3": KERAS / "healthy" / "model.h5", "keras2": FIXTURES / "keras2" / "model.h5"}
LAYERS = {"conv_0/": "stem/", "bn_default/": "stem_bn/"}


@pytest.fixture(scope="module")
def keras(tf):
    import keras

    return keras


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_legacy_keras_layers_renamed_load_with_identical_predictions(tmp_path, keras, kind):
    source = tmp_path / "in" / "model.h5"
    source.parent.mkdir()
    shutil.copy(LEGACY[kind], source)
    before = source.read_bytes()
    out = tmp_path / "out" / "model.h5"
    assert run_cli("rename", source, "--map", write_map(tmp_path / "m.json", LAYERS), "--out", out).returncode == 0
    renamed = keras.saving.load_model(out, compile=False)
    original = keras.saving.load_model(source, compile=False)
    names = [layer.name for layer in renamed.layers]
    assert "stem" in names and "stem_bn" in names and "conv_0" not in names
    x = np.load(KERAS / "inputs.npy")
    expected = original.predict(x, verbose=0)
    np.testing.assert_array_equal(renamed.predict(x, verbose=0), expected, strict=True)
    # by name: a model whose layers carry the new names takes every weight from the renamed file
    fresh = keras.models.clone_model(renamed)
    fresh.load_weights(out, by_name=True)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected, strict=True)
    assert source.read_bytes() == before


def test_keras2_weights_file_renamed_loads_by_name(tmp_path, keras):
    weights = tmp_path / "weights.h5"
    rename(FIXTURES / "keras2" / "model_weights.h5", write_map(tmp_path / "m.json", LAYERS), weights)
    model = keras.saving.load_model(FIXTURES / "keras2" / "model.h5", compile=False)
    x = np.load(KERAS / "inputs.npy")
    expected = model.predict(x, verbose=0)
    renamed_model = rename(FIXTURES / "keras2" / "model.h5", tmp_path / "m.json", tmp_path / "model.h5")
    fresh = keras.models.clone_model(keras.saving.load_model(renamed_model.out, compile=False))
    fresh.load_weights(weights, by_name=True)
    np.testing.assert_array_equal(fresh.predict(x, verbose=0), expected, strict=True)


def test_patch_with_a_map_takes_statistics_from_a_donor_named_otherwise(tmp_path, tf):
    donor = tmp_path / "donor" / "model.ckpt"
    rename(FIXTURE_BUNDLES["finetune_full"], write_map(tmp_path / "to_tower.json", {"net/": "tower/"}), donor)
    target = FIXTURE_BUNDLES["finetune_trainable"]
    out = tmp_path / "out" / "model.ckpt"
    refused = run_cli("patch", target, "--from", donor, "--out", out)
    assert refused.returncode == 2 and "donor lacks" in refused.stderr
    back = write_map(tmp_path / "from_tower.json", {"tower/": "net/"})
    result = run_cli("patch", target, "--from", donor, "--out", out, "--map", back)
    assert result.returncode == 0, result.stderr
    assert "no findings" in result.stdout
    assert verify_meta_graph(out, TF1 / "eval" / "eval.meta").ok


PREFIX = MATCH / "prefix" / "model.ckpt"
HOSTILE = {
    "two keys into one": (
        {"tower_0/conv/kernel": "x", "tower_0/conv/bias": "x"},
        "tower_0/conv/bias and tower_0/conv/kernel would both be renamed to x",
    ),
    "onto a kept key": ({"tower_0/conv/": "tower_0/conv_1/"}, "which is already taken"),
    "control characters": ({"global_step": "global\nstep\x1b[31m"}, r"to 'global\x0astep\x1b[31m'"),
    "keys not in the checkpoint": ({"tower_0/": "/", "nope/": "x/"}, "the map names nope/, which is not in"),
    "a scope to a name": ({"tower_0/": "net"}, "maps a scope to a name"),
    "not a map": ("[1, 2]", "an assignment map is a JSON object of names to names"),
    "not JSON": ("{", "not a JSON assignment map"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_maps_are_refused_in_one_line_before_writing(tmp_path, case):
    mapping, message = HOSTILE[case]
    source = copy_checkpoint(PREFIX, tmp_path / "in")
    before = file_bytes(source)
    result = run_cli(
        "rename", source, "--map", write_map(tmp_path / "m.json", mapping), "--out", tmp_path / "out" / "x"
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "\x1b" not in result.stderr
    assert not (tmp_path / "out").exists()
    assert file_bytes(source) == before


def test_a_legacy_keras_layer_renamed_onto_a_layer_without_weights_is_refused(tmp_path):
    result = run_cli(
        "rename",
        LEGACY["keras3"],
        "--map",
        write_map(tmp_path / "m.json", {"conv_0/": "re_lu/"}),
        "--out",
        tmp_path / "x.h5",
    )
    assert result.returncode == 2 and "cannot rename layer conv_0 to re_lu, which is already taken" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_the_map_is_never_overwritten_by_the_output(tmp_path):
    mapping = write_map(tmp_path / "m.h5", LAYERS)
    before = mapping.read_bytes()
    result = run_cli("rename", LEGACY["keras3"], "--map", mapping, "--out", mapping, "--force")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert mapping.read_bytes() == before


@pytest.mark.parametrize("source", [KERAS / "healthy" / "ckpt" / "model", KERAS / "healthy" / "model.keras"])
def test_formats_that_restore_by_structure_are_refused(tmp_path, source):
    result = run_cli("rename", source, "--map", write_map(tmp_path / "m.json", {"/": "x/"}), "--out", tmp_path / "o")
    assert result.returncode == 2 and "restores by" in result.stderr
    assert not (tmp_path / "o").exists()


def _estimator_bundle(directory: Path) -> Path:
    """A TF1 bundle as tf.keras and Estimators write it: a variable, and its Adagrad slot under the optimizer's
    scope (`training/Adagrad/<variable>/accumulator`) rather than beside it."""
    from ckptdoctor import dtypes
    from ckptdoctor.formats.crc import crc32c, mask
    from ckptdoctor.writer.bundle import BundleWriter

    prefix = directory / "model.ckpt"
    writer = BundleWriter(str(prefix))
    raw = np.ones(3, dtype="<f4").tobytes()
    for name in sorted([b"dnn/hidden/kernel", b"training/Adagrad/dnn/hidden/kernel/accumulator"]):
        writer.add(name, dtypes.BY_NAME["float32"].code, (3,), raw, mask(crc32c(raw)))
    writer.commit()
    return prefix


def test_a_rename_that_strands_optimizer_slots_says_which_entry_moves_them(tmp_path):
    """The slots of `training/Adagrad/` do not move with `dnn/`: the optimizer would not find them under the new
    names. A warning names them and the entry that would move them; with it, they move and nothing is said."""
    prefix = _estimator_bundle(tmp_path)
    (tmp_path / "map.json").write_text(json.dumps({"dnn/": "deep/"}), encoding="utf-8")
    result = run_cli("rename", prefix, "--map", tmp_path / "map.json", "--out", tmp_path / "a" / "model.ckpt")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "ckptdoctor: warning: 1 optimizer slot left under the old variable names (e.g. training/Adagrad/dnn/hidden/"
        "kernel/accumulator), where an optimizer restoring the renamed variables will not look; to move them too, "
        'add "training/Adagrad/dnn/": "training/Adagrad/deep/" to the map\n'
    )
    both = {"dnn/": "deep/", "training/Adagrad/dnn/": "training/Adagrad/deep/"}
    (tmp_path / "both.json").write_text(json.dumps(both), encoding="utf-8")
    moved = run_cli("rename", prefix, "--map", tmp_path / "both.json", "--out", tmp_path / "b" / "model.ckpt")
    assert moved.returncode == 0 and moved.stderr == ""
    listed = json.loads(run_cli("inspect", tmp_path / "b" / "model.ckpt", "--format", "json").stdout)["variables"]
    assert {v["name"] for v in listed} == {"deep/hidden/kernel", "training/Adagrad/deep/hidden/kernel/accumulator"}
