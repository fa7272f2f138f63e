"""patch on Keras files and TF2 checkpoints: the result loads in Keras (or restores with assert_consumed)
and predicts exactly what the healthy model predicts; the unpatched file fails as users see it fail."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest
from conftest import FIXTURES, KERAS, file_bytes

from ckptdoctor import check
from ckptdoctor.patch import patch

INPUTS = np.load(KERAS / "inputs.npy") if (KERAS / "inputs.npy").exists() else None


@pytest.fixture(scope="module")
def keras(tf):
    import keras

    return keras


@pytest.fixture(scope="module")
def healthy(keras):
    model = keras.saving.load_model(KERAS / "healthy" / "model.keras", compile=False)
    return model.predict(INPUTS, verbose=0)


def _fresh(keras):
    """The same architecture with freshly initialised weights: nothing leaks in from the healthy file."""
    model = keras.saving.load_model(KERAS / "healthy" / "model.keras", compile=False)
    return keras.models.clone_model(model)


def test_weights_h5(tmp_path, keras, healthy):
    broken = KERAS / "stats_removed" / "model.weights.h5"
    with pytest.raises(ValueError, match="expected 4 variables, but received 2"):
        _fresh(keras).load_weights(broken)
    before = file_bytes(broken)
    out = tmp_path / "fixed.weights.h5"
    result = patch(broken, KERAS / "healthy" / "model.weights.h5", out)
    assert len(result.added) == 6
    assert {a.key for a in result.added} >= {"layers/batch_normalization/vars/2", "layers/batch_normalization_1/vars/2"}
    model = _fresh(keras)
    model.load_weights(out)
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), healthy)
    assert file_bytes(broken) == before
    assert check(out).findings == ()


def test_legacy_h5_full_model(tmp_path, keras, healthy):
    out = tmp_path / "fixed.h5"
    patch(KERAS / "stats_removed" / "model.h5", KERAS / "healthy" / "model.h5", out)
    model = keras.saving.load_model(out, compile=False)
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), healthy)


def test_keras_zip(tmp_path, keras, healthy):
    with pytest.raises(ValueError, match="expected 4 variables"):
        keras.saving.load_model(KERAS / "stats_removed" / "model.keras", compile=False)
    out = tmp_path / "fixed.keras"
    patch(KERAS / "stats_removed" / "model.keras", KERAS / "healthy" / "model.keras", out)
    model = keras.saving.load_model(out, compile=False)
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), healthy)
    import zipfile

    with zipfile.ZipFile(out) as new, zipfile.ZipFile(KERAS / "stats_removed" / "model.keras") as old:
        assert new.namelist() == old.namelist()
        assert new.read("config.json") == old.read("config.json")


def test_cross_format_donor(tmp_path, keras, healthy):
    out = tmp_path / "fixed.weights.h5"
    patch(KERAS / "stats_removed" / "model.weights.h5", KERAS / "healthy" / "model.keras", out)
    model = _fresh(keras)
    model.load_weights(out)
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), healthy)


def test_tf2_object_checkpoint_adds_graph_nodes(tmp_path, tf, keras, healthy):
    broken = str(KERAS / "stats_removed" / "ckpt" / "model")
    with pytest.raises(AssertionError, match=r"not bound|Unresolved|were not"):
        tf.train.Checkpoint(model=_fresh(keras)).read(broken).assert_consumed()
    out = tmp_path / "fixed" / "model"
    result = patch(broken, KERAS / "healthy" / "ckpt" / "model", out)
    assert {a.key for a in result.added} == {
        f"model/_operations/{i}/{s}/.ATTRIBUTES/VARIABLE_VALUE"
        for i in (2, 5, 8)
        for s in ("moving_mean", "moving_variance")
    }
    model = _fresh(keras)
    tf.train.Checkpoint(model=model).read(str(out)).assert_consumed()
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), healthy)


def test_keras2_weights_with_device_suffixes(tmp_path, tf):
    import h5py
    import tf_keras

    broken = tmp_path / "broken.h5"
    shutil.copy(FIXTURES / "keras2" / "model_weights.h5", broken)
    with h5py.File(broken, "r+") as file:
        group = file["bn_default"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        kept = [n for n in names if "moving" not in n]
        for name in set(names) - set(kept):
            del group[name]
        group.attrs["weight_names"] = np.array([n.encode() for n in kept])
    assert Counter(f.name for f in check(broken).findings) == {"bn-missing-moving-stats": 1}
    reference = tf_keras.models.load_model(FIXTURES / "keras2" / "model.h5", compile=False)
    out = tmp_path / "fixed.h5"
    patch(broken, FIXTURES / "keras2" / "model.h5", out)
    model = tf_keras.models.clone_model(reference)
    model.load_weights(out)
    np.testing.assert_array_equal(model.predict(INPUTS, verbose=0), reference.predict(INPUTS, verbose=0))
    with h5py.File(out) as file:
        assert list(file["bn_default"].attrs["weight_names"]) == [
            b"bn_default/gamma:0",
            b"bn_default/beta:0",
            b"bn_default/moving_mean:0",
            b"bn_default/moving_variance:0",
        ]
