"""Ground truth: every listing and every value our readers produce equals what TensorFlow reads."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, KERAS_BUNDLES, REALWORLD_BUNDLES, realworld

from ckptdoctor.formats import open_checkpoint

CASES = (
    [pytest.param(path, id=name) for name, path in FIXTURE_BUNDLES.items()]
    + [pytest.param(("realworld", rel), id=name) for name, rel in REALWORLD_BUNDLES.items()]
    + [pytest.param(("realworld", "serving_v1_half_plus_two/export-00000-of-00001"), id="serving_v1_half_plus_two")]
)


def _path(case):
    return realworld(case[1]) if isinstance(case, tuple) else case


@pytest.mark.parametrize("case", CASES)
def test_listing_equals_tf_list_variables(case, tf):
    reader, resolved = open_checkpoint(_path(case))
    with_tf = tf.train.load_checkpoint(resolved.location)
    dtypes = with_tf.get_variable_to_dtype_map()
    expected = sorted(
        (name, tuple(shape), dtypes[name].name) for name, shape in tf.train.list_variables(resolved.location)
    )
    ours = sorted((t.name, t.shape, t.dtype) for t in reader.tensors())
    assert ours == expected


@pytest.mark.parametrize("case", CASES)
def test_every_value_equals_tf_get_tensor(case, tf):
    reader, resolved = open_checkpoint(_path(case))
    with_tf = tf.train.load_checkpoint(resolved.location)
    tensors = reader.tensors()
    assert tensors
    for info in tensors:
        ours, theirs = reader.read(info.name), with_tf.get_tensor(info.name)
        if info.dtype == "string":
            assert ours.tolist() == np.asarray(theirs, dtype=object).tolist(), info.name
        else:
            assert ours.dtype == np.asarray(theirs).dtype, info.name
            np.testing.assert_array_equal(ours, theirs, err_msg=info.name, strict=True)


@pytest.mark.parametrize("case", CASES)
def test_every_number_equals_tf_get_tensor(case, tf):
    """What the rules read, decoded without numpy: every real-valued tensor's elements, flattened, are TF's
    (floats widened to float64, integers exact); a string tensor has none."""
    reader, resolved = open_checkpoint(_path(case))
    with_tf = tf.train.load_checkpoint(resolved.location)
    tensors = reader.tensors()
    assert tensors
    for info in tensors:
        ours, theirs = reader.numbers(info.name), np.asarray(with_tf.get_tensor(info.name))
        if info.dtype in ("string", "complex64", "complex128"):
            assert ours is None, info.name
            continue
        assert ours is not None, info.name
        if info.dtype in ("float16", "bfloat16", "float32", "float64"):
            np.testing.assert_array_equal(np.array(ours, dtype=np.float64), theirs.astype(np.float64).ravel())
        else:
            assert ours.tolist() == theirs.ravel().tolist(), info.name


def test_every_dtype_s_numbers_and_nonfinite_count_equal_tf_s(tmp_path, tf):
    """A bundle TF writes with every real dtype a variable can have, NaN, Inf and the largest finite values
    among the floats: the numbers decoded without numpy, and the scan's NaN/Inf counts, are TF's."""
    specials = [0.5, -0.0, float("nan"), float("inf"), -float("inf"), 1e300, -3.0]
    variables = {}
    for name in ("float16", "bfloat16", "float32", "float64"):
        dtype = getattr(tf, name)
        variables[name] = tf.Variable(tf.cast(tf.constant(specials, tf.float64), dtype))
    for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"):
        info = np.iinfo(name)
        variables[name] = tf.Variable(np.array([info.min, 0, 1, info.max], dtype=name))
    variables["bool"] = tf.Variable([True, False, True])
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"))
    reader, _ = open_checkpoint(prefix)
    with_tf = tf.train.load_checkpoint(prefix)
    scan = reader.scan()
    for name in variables:
        key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
        theirs = np.asarray(with_tf.get_tensor(key))
        ours = reader.numbers(key)
        assert ours is not None
        if name.startswith(("float", "bfloat")):
            np.testing.assert_array_equal(np.array(ours), theirs.astype(np.float64), err_msg=name)
            assert scan.nonfinite.get(key, 0) == np.count_nonzero(~np.isfinite(theirs.astype(np.float64))) > 0
        else:
            assert ours.tolist() == theirs.tolist(), name


@pytest.mark.parametrize("case", CASES)
def test_healthy_files_scan_clean(case):
    reader, _ = open_checkpoint(_path(case))
    scan = reader.scan()
    assert scan.problems == ()
    if case not in (FIXTURE_BUNDLES["damaged_values"], KERAS_BUNDLES["keras/stats_nan/ckpt"]):
        assert scan.nonfinite == {}
