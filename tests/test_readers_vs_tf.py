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
def test_healthy_files_scan_clean(case):
    reader, _ = open_checkpoint(_path(case))
    scan = reader.scan()
    assert scan.problems == ()
    if case not in (FIXTURE_BUNDLES["damaged_values"], KERAS_BUNDLES["keras/stats_nan/ckpt"]):
        assert scan.nonfinite == {}
