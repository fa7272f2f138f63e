"""Keras files: the listing is every dataset h5py sees, values equal h5py's, BatchNorm parts equal Keras's."""

from __future__ import annotations

import zipfile
from collections import Counter

import numpy as np
import pytest
from conftest import KERAS, KERAS_FILES, realworld

from ckptdoctor import check, inspect
from ckptdoctor.formats import open_checkpoint

h5py = pytest.importorskip("h5py")

REALWORLD_KERAS = {
    "kotlindl_h5_batchnorm": "kotlindl_h5_batchnorm/weights.h5",
    "kotlindl_h5_lstm": "kotlindl_h5_lstm/weights.h5",
    "medmnist_keras_v3_zip": "medmnist_keras_v3_zip/model.keras",
}
CASES = [pytest.param(path, id=name) for name, path in KERAS_FILES.items()] + [
    pytest.param(("realworld", rel), id=name) for name, rel in REALWORLD_KERAS.items()
]


def _path(case):
    return realworld(case[1]) if isinstance(case, tuple) else case


def _h5py_datasets(path):
    """(name, dtype, shape, values) of every dataset, as h5py reads them; `.keras` through its zip member."""
    found = {}

    def collect(source):
        with h5py.File(source, "r") as file:
            file.visititems(
                lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as member:
            collect(member)
    else:
        collect(path)
    return found


@pytest.mark.parametrize("case", CASES)
def test_listing_and_values_equal_h5py(case):
    path = _path(case)
    expected = _h5py_datasets(path)
    reader, _ = open_checkpoint(path)
    try:
        listed = {t.name: t for t in reader.tensors()}
        assert sorted(listed) == sorted(expected)
        for name, values in expected.items():
            assert listed[name].shape == np.shape(values)
            np.testing.assert_array_equal(reader.read(name), values, strict=True)
            numbers = reader.numbers(name)  # what the rules read
            assert numbers is not None
            np.testing.assert_array_equal(np.array(numbers), np.ravel(values), err_msg=name)
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("name", "expected_format"),
    [
        ("healthy/model.keras", "keras-zip"),
        ("healthy/model.weights.h5", "keras-weights-h5"),
        ("healthy/model.h5", "keras-h5"),
    ],
)
def test_format_is_sniffed_from_content_not_extension(tmp_path, name, expected_format):
    disguised = tmp_path / "weights.bin"
    disguised.write_bytes((KERAS / name).read_bytes())
    assert inspect(disguised).format == expected_format


@pytest.mark.parametrize("name", ["healthy/model.keras", "healthy/model.weights.h5", "healthy/model.h5"])
def test_batchnorm_parts_equal_what_keras_loads(name, tf):
    import keras

    model = keras.saving.load_model(KERAS / "healthy" / "model.keras")
    reader, _ = open_checkpoint(KERAS / name)
    report = inspect(KERAS / name)
    try:
        layers = {layer.layer.rsplit("/", 1)[-1]: layer for layer in report.batchnorm}
        assert sorted(layers) == ["bn_default", "bn_nocenter", "bn_noscale"]
        for layer_name, layer in layers.items():
            bn = model.get_layer(layer_name)
            assert (layer.gamma is not None) == bn.scale and (layer.beta is not None) == bn.center
            for part in ("gamma", "beta", "moving_mean", "moving_variance"):
                key = getattr(layer, part)
                if key is not None:
                    np.testing.assert_array_equal(reader.read(key), getattr(bn, part).numpy())
    finally:
        reader.close()


def test_weights_h5_names_come_from_the_vars_name_attribute():
    report = inspect(KERAS / "healthy" / "model.weights.h5")
    paths = {v.name: v.path for v in report.variables}
    assert paths["layers/batch_normalization_1/vars/0"] == "bn_noscale/beta"
    assert paths["layers/batch_normalization_2/vars/0"] == "bn_nocenter/gamma"
    assert paths["layers/conv2d/vars/0"] == "conv_0/kernel"
    assert paths["optimizer/vars/0"] == "optimizer/iterations"


def test_keras2_names_keep_device_suffix_in_keys_not_paths():
    report = inspect(KERAS.parent / "keras2" / "model_weights.h5")
    variable = next(v for v in report.variables if v.path == "bn_default/moving_mean")
    assert variable.name == "bn_default/bn_default/moving_mean:0"
    assert variable.role.value == "bn-statistic"


@pytest.mark.parametrize(
    ("name", "rule", "count"),
    [
        ("stats_removed/model.keras", "bn-missing-moving-stats", 3),
        ("stats_removed/model.weights.h5", "bn-missing-moving-stats", 3),
        ("stats_removed/model.h5", "bn-missing-moving-stats", 3),
        ("stats_removed/ckpt/model", "bn-missing-moving-stats", 3),
        ("stats_init/model.weights.h5", "bn-stats-at-init", 3),
        ("stats_init/ckpt/model", "bn-stats-at-init", 3),
        ("stats_nan/model.weights.h5", "nonfinite-values", 1),
        ("stats_nan/ckpt/model", "nonfinite-values", 1),
    ],
)
def test_damaged_keras_files_give_their_rule_once_per_layer(name, rule, count):
    assert Counter(f.name for f in check(KERAS / name).findings) == {rule: count}


@pytest.mark.parametrize("name", [*[n for n in KERAS_FILES if "healthy" in n or "keras2" in n]])
def test_healthy_keras_files_pass(name):
    # The fixtures trained a few steps at momentum 0.99, so their statistics are rightly stale (BN005), nothing else.
    assert {finding.code for finding in check(KERAS_FILES[name]).findings} <= {"BN005"}


def test_real_kotlindl_batchnorm_layers():
    report = check(realworld("kotlindl_h5_batchnorm/weights.h5"))
    assert report.findings == ()
    assert len(report.batchnorm) == 4
    assert all(not layer.missing_statistics for layer in report.batchnorm)


def test_keras_2_0_uniquified_weight_scopes(tmp_path):
    """Keras 2.0 named a layer's variables by a uniquified scope (layer `batch_normalization_1` holds
    `batch_normalization_1_1/gamma:0`), as in a real emotion-recognition model published on PyPI; those
    weights belong to the layer, not to a second, empty BatchNorm layer."""
    import shutil

    path = tmp_path / "keras205.h5"
    shutil.copy(KERAS.parent / "keras2" / "model_weights.h5", path)
    with h5py.File(path, "r+") as file:
        group = file["bn_default"]
        renamed = []
        for name in [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]:
            new = name.replace("bn_default/", "bn_default_1/", 1)
            group.move(name, new)
            renamed.append(new.encode())
        group.attrs["weight_names"] = np.array(renamed)
    report = check(path)
    assert report.findings == ()
    layers = {layer.layer: layer for layer in report.batchnorm}
    assert sorted(layers) == ["bn_default", "bn_nocenter", "bn_noscale"]
    assert layers["bn_default"].moving_variance == "bn_default/bn_default_1/moving_variance:0"


@pytest.mark.parametrize("reference", ["healthy/model.keras", "healthy/ckpt/model", "healthy/model.h5"])
def test_reference_is_matched_across_formats(tmp_path, reference):
    """A .weights.h5 whose kernels were trained but whose statistics still equal the reference's, compared
    with the reference saved in another format: layers and weights are matched by their Keras names."""
    import shutil

    target = tmp_path / "finetuned.weights.h5"
    shutil.copy(KERAS / "healthy" / "model.weights.h5", target)
    with h5py.File(target, "r+") as file:
        file["layers/conv2d/vars/0"][...] = file["layers/conv2d/vars/0"][()] + 0.01
    counts = Counter(f.name for f in check(target, reference=KERAS / reference).findings)
    assert counts == {"bn-stats-match-reference": 3}
    assert check(KERAS / "healthy" / "model.weights.h5", reference=KERAS / reference).findings == ()
