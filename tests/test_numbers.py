"""The numpy-free paths against numpy's own: tensors decoded to plain numbers, and the NaN/Inf screen that
reads only exponent bytes. Both must agree with numpy on every byte pattern, not only on healthy weights."""

from __future__ import annotations

import math
import random
from array import array

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ckptdoctor import dtypes
from ckptdoctor.analysis import bnstats
from ckptdoctor.formats import tf_bundle
from ckptdoctor.formats.tf_bundle import BundleReader, count_nonfinite, decode_numeric

REAL = [d for d in dtypes.BY_NAME.values() if d.numpy is not None and not d.name.startswith("complex")]
FLOATS = [d for d in dtypes.BY_NAME.values() if d.is_float]


def _same(ours: float, numpy_s: float) -> bool:
    return ours == numpy_s or (math.isnan(ours) and math.isnan(numpy_s))


@pytest.mark.parametrize("dtype", REAL, ids=lambda d: d.name)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_numbers_are_numpy_s_values(dtype, data):
    """Any stored bytes, NaN payloads and huge integers included, decode to numpy's values, element by element."""
    count = data.draw(st.integers(0, 40))
    raw = data.draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    ours = dtypes.decode_numbers(raw, dtype)
    theirs = decode_numeric(raw, dtype, (count,))
    assert ours is not None and len(ours) == count
    expected = theirs.tolist()
    if dtype.name == "bool":  # numpy's bool holds the stored byte; any nonzero one is true
        expected = [int(bool(b)) for b in raw]
    assert all(_same(a, b) for a, b in zip(ours, expected, strict=True)), (list(ours), expected)
    assert ours.typecode == "d" if dtype.is_float else ours.typecode not in ("f", "d")
    mirrored = dtypes.numbers_of(theirs)  # what a reader holding numpy values gives
    assert mirrored is not None
    assert all(_same(a, b) for a, b in zip(ours, mirrored, strict=True))


def test_strings_and_complex_have_no_numbers():
    for name in ("string", "complex64", "complex128", "resource"):
        assert dtypes.decode_numbers(b"\0" * 16, dtypes.BY_NAME[name]) is None
    assert dtypes.numbers_of(np.array(["a"], dtype=object)) is None
    assert dtypes.numbers_of(np.array([1j])) is None


def _nonfinite_by_numpy(raw: bytes, dtype: dtypes.DType) -> int:
    return dtypes.count_nonfinite(decode_numeric(raw, dtype, (len(raw) // dtype.itemsize,)))


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
def test_the_screen_passes_every_nan_and_inf(dtype):
    """Every exponent a 16-bit float can have, and every top half of a 32- or 64-bit one (the exponent lies
    there), each with random low bits: the screen never calls an element finite that numpy does not."""
    rng = np.random.default_rng(7)
    tops = np.arange(1 << 16, dtype="<u2")
    elements = rng.integers(0, 256, size=(tops.size, dtype.itemsize), dtype=np.uint8)
    elements[:, -2:] = tops.view(np.uint8).reshape(-1, 2)
    for element in elements:
        raw = element.tobytes()
        if _nonfinite_by_numpy(raw, dtype):
            assert dtypes.may_hold_nonfinite(raw, dtype), (dtype.name, raw.hex())
    everything = elements.tobytes()
    assert count_nonfinite(everything, dtype) == _nonfinite_by_numpy(everything, dtype) > 0


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: d.name)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_the_count_is_numpy_s(dtype, data):
    """Ordinary values, values next to the largest finite ones, NaN and Inf mixed: the same count as numpy's."""
    specials = {
        "float16": [np.float16(v) for v in (0.5, 65504, np.inf, -np.inf, np.nan)],
        "bfloat16": [],
        "float32": [np.float32(v) for v in (0.5, 3.4e38, np.inf, -np.inf, np.nan)],
        "float64": [np.float64(v) for v in (0.5, 1.7e308, 2.0**1010, np.inf, -np.inf, np.nan)],
        "complex64": [np.complex64(v) for v in (0.5, complex(3.4e38, 1), complex(1, np.inf), complex(np.nan, 0))],
        "complex128": [np.complex128(v) for v in (0.5, complex(1.7e308, 1), complex(np.inf, 0), complex(0, np.nan))],
    }[dtype.name]
    if dtype.name == "bfloat16":  # the upper halves of float32s
        float32s = np.array([0.5, 3.3e38, np.inf, -np.inf, np.nan], dtype="<f4")
        specials = list((float32s.view("<u4") >> 16).astype("<u2"))
    picks = data.draw(st.lists(st.sampled_from(range(len(specials))), max_size=30))
    raw = b"".join(np.array(specials[i]).astype(dtype.numpy).tobytes() for i in picks)
    assert count_nonfinite(raw, dtype) == _nonfinite_by_numpy(raw, dtype)
    if not _nonfinite_by_numpy(raw, dtype) and all(specials[i] == specials[0] for i in picks):
        assert not dtypes.may_hold_nonfinite(raw, dtype)  # the screen settles ordinary weights by itself


@pytest.mark.parametrize("name", ["damaged_values", "finetune_full", "partitioned"])
def test_a_scan_past_the_threshold_counts_with_numpy_alone_and_finds_the_same(name, monkeypatch):
    """From NUMPY_COUNT_FROM float bytes on, a scan skips the screen (numpy's sum is faster per byte there):
    the same counts and the same damage either way."""
    with BundleReader(str(FIXTURE_BUNDLES[name])) as reader:
        screened = reader.scan()
        monkeypatch.setattr(tf_bundle, "NUMPY_COUNT_FROM", 0)
        monkeypatch.setattr(dtypes, "may_hold_nonfinite", None)  # never asked
        assert reader.scan() == screened
    assert bool(screened.nonfinite) == (name == "damaged_values")


LARGEST = np.finfo(np.float64).max
EXTREMES = [LARGEST, -LARGEST, LARGEST / 3, 0.0, -0.0, 5e-324, float("nan"), float("inf"), -1.5, 1e300]


@given(st.lists(st.one_of(st.floats(width=32), st.sampled_from(EXTREMES)), max_size=60), st.randoms())
@example([0.0] * 4 + [LARGEST, LARGEST, -LARGEST, -LARGEST], random.Random(0))  # numpy's sum: inf, then inf - inf
@settings(max_examples=300, deadline=None)
def test_summaries_in_python_and_in_numpy_agree_and_stay_finite(picked, shuffler):
    """A statistic past SORTED_IN_PYTHON_UP_TO is summarised by numpy: the same summary (but the mean: numpy sums
    pairwise, Python exactly), and every number finite however large the values, so a JSON report never holds
    Infinity."""
    values = array("d", picked)
    in_python = bnstats.summarize(values)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(bnstats, "SORTED_IN_PYTHON_UP_TO", 0)
        in_numpy = bnstats.summarize(values)
        shuffled = array("d", shuffler.sample(picked, len(picked)))
        change_in_numpy = bnstats.relative_change(values, shuffled)
    assert in_python._replace(mean=None) == in_numpy._replace(mean=None)
    for summary in (in_python, in_numpy):
        assert all(math.isfinite(v) for v in summary if v is not None)
        assert summary.mean is None or summary.min <= summary.mean <= summary.max
    change = bnstats.relative_change(values, shuffled)
    assert change == pytest.approx(change_in_numpy, rel=1e-12) if change is not None else change_in_numpy is None
    assert change is None or 0 <= change <= 2


def test_float16_decodes_in_parts_of_bounded_size():
    """`struct` decodes half floats into a tuple of Python floats: in parts, so a large tensor never holds them
    all at once; the parts join into numpy's values exactly."""
    count = 3 * dtypes._HALVES_AT_ONCE + 5
    raw = np.random.default_rng(3).integers(0, 1 << 16, count, dtype="<u2").tobytes()
    decoded = dtypes.decode_numbers(raw, dtypes.BY_NAME["float16"])
    assert decoded is not None
    expected = np.frombuffer(raw, "<f2").astype(np.float64)
    np.testing.assert_array_equal(np.frombuffer(decoded, np.float64), expected)
