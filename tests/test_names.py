"""Names that are not UTF-8: the stored bytes are a name's identity, escapes are for display only.

A key with a 0xff byte and a key spelled with a literal backslash-x-f-f are different tensors to TensorFlow;
they must be different layers to every rule, to patch, and in every report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import hypothesis
import numpy as np
from conftest import ROOT, run_cli
from hypothesis import strategies as st

from ckptdoctor import dtypes
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.names import UNSAFE_CHARACTERS, decode_name, encode_name, is_writable_name, needs_escaping, shown
from ckptdoctor.writer.bundle import BundleWriter

BYTE_LAYER = b"net/bn\xff"  # not UTF-8
LITERAL_LAYER = b"net/bn\\xff"  # what backslashreplace used to turn the first one into
TRAINED_MEAN, TRAINED_VARIANCE = 0.25, 0.5


def write_bundle(prefix: Path, tensors: dict[bytes, np.ndarray]) -> Path:
    """A TF1 bundle of float32 tensors written by ckptdoctor's own writer (tests that TF reads it exist)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(prefix))
    for key, values in tensors.items():
        raw = np.asarray(values, dtype="<f4").tobytes()
        writer.add(key, dtypes.BY_NAME["float32"].code, tuple(np.shape(values)), raw, mask(crc32c(raw)))
    writer.commit()
    return prefix


def batchnorm(layer: bytes, mean: float | None, variance: float | None, channels: int = 4) -> dict[bytes, np.ndarray]:
    """One slim-style BatchNorm layer; None leaves a statistic out (the trainable-only save)."""
    tensors = {layer + b"/gamma": np.ones(channels), layer + b"/beta": np.zeros(channels)}
    if mean is not None:
        tensors[layer + b"/moving_mean"] = np.full(channels, mean)
    if variance is not None:
        tensors[layer + b"/moving_variance"] = np.full(channels, variance)
    return tensors


def check_json(prefix: Path) -> tuple[int, dict]:
    result = run_cli("check", prefix, "--format", "json")
    assert result.stderr == ""
    return result.returncode, json.loads(result.stdout)


def test_names_round_trip_every_byte_and_show_distinctly():
    for raw in (BYTE_LAYER, LITERAL_LAYER, bytes(range(256)), "é/ü".encode()):
        assert encode_name(decode_name(raw)) == raw
    assert decode_name(BYTE_LAYER) != decode_name(LITERAL_LAYER)
    assert shown(decode_name(BYTE_LAYER)) == "net/bn\\xff"
    assert shown(decode_name(LITERAL_LAYER)) == "net/bn\\\\xff"


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(st.text(alphabet=st.characters(codec=None), max_size=12) | st.binary(max_size=12).map(decode_name))
@hypothesis.example("net/bn\u2028\ud800\x7f\ufffe\u202e\\é\x9b")
def test_a_plain_name_is_shown_as_the_pattern_shows_it(text):
    """The printable-ASCII shortcut (no pattern compiled) never differs from the pattern itself."""
    assert shown(text) == re.sub(UNSAFE_CHARACTERS, lambda m: _escaped(m.group()), text)
    assert needs_escaping(text) == (re.search(UNSAFE_CHARACTERS, text) is not None)
    assert needs_escaping(text) == (shown(text) != text)
    # a name to write may hold a backslash, nothing else `shown` escapes
    unwritable = "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069\ufffe\uffff]"
    assert is_writable_name(text) == (text != "" and re.search(unwritable, text) is None)


def _escaped(character: str) -> str:
    code = ord(character)
    if character == "\\":
        return "\\\\"
    if 0xDC80 <= code < 0xDD00:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _assert_byte_layer_checked(report: dict) -> None:
    """The 0xff layer is its own layer, at 0/1, and named so that it cannot be confused with the literal one."""
    assert {layer["layer"] for layer in report["batchnorm"]} == {"net/bn\\xff", "net/bn\\\\xff"}
    assert [(f["name"], f["subject"]) for f in report["findings"]] == [("bn-stats-at-init", "net/bn\\xff")]
    hex_by_name = {v["name"]: v.get("name_hex") for v in report["variables"]}
    assert hex_by_name["net/bn\\xff/moving_mean"] == (BYTE_LAYER + b"/moving_mean").hex()
    assert hex_by_name["net/bn\\\\xff/moving_mean"] == (LITERAL_LAYER + b"/moving_mean").hex()


def test_tf_written_undecodable_layer_is_checked_and_does_not_collide(tf, tmp_path):
    """TensorFlow itself saves both keys (SaveV2 takes bytes); check must see two layers and flag the 0/1 one."""
    tensors = batchnorm(BYTE_LAYER, 0.0, 1.0) | batchnorm(LITERAL_LAYER, TRAINED_MEAN, TRAINED_VARIANCE)
    prefix = tmp_path / "model.ckpt"
    tf.raw_ops.SaveV2(
        prefix=str(prefix),
        tensor_names=list(tensors),
        shape_and_slices=[""] * len(tensors),
        tensors=[np.asarray(v, dtype=np.float32) for v in tensors.values()],
    )
    code, report = check_json(prefix)
    assert code == 1
    _assert_byte_layer_checked(report)


def test_undecodable_layer_with_negative_variance_is_flagged(tmp_path):
    tensors = batchnorm(BYTE_LAYER, TRAINED_MEAN, -1.0) | batchnorm(LITERAL_LAYER, TRAINED_MEAN, TRAINED_VARIANCE)
    code, report = check_json(write_bundle(tmp_path / "model.ckpt", tensors))
    assert code == 1
    assert [(f["name"], f["subject"]) for f in report["findings"]] == [("bn-variance-nonpositive", "net/bn\\xff")]


def test_patch_adds_statistics_to_an_undecodable_layer(tf, tmp_path):
    """No KeyError: the statistics land under the exact 0xff key, the literal layer keeps its own, TF reads both."""
    target = write_bundle(
        tmp_path / "target" / "model.ckpt",
        batchnorm(BYTE_LAYER, None, None) | batchnorm(LITERAL_LAYER, TRAINED_MEAN, TRAINED_VARIANCE),
    )
    donor = write_bundle(tmp_path / "donor" / "model.ckpt", batchnorm(BYTE_LAYER, 0.75, 2.0))
    out = tmp_path / "out" / "model.ckpt"
    result = run_cli("patch", target, "--from", donor, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    keys = [BYTE_LAYER + b"/moving_mean", BYTE_LAYER + b"/moving_variance", LITERAL_LAYER + b"/moving_mean"]
    restored = tf.raw_ops.RestoreV2(
        prefix=str(out), tensor_names=keys, shape_and_slices=[""] * 3, dtypes=[tf.float32] * 3
    )
    assert [float(t.numpy()[0]) for t in restored] == [0.75, 2.0, TRAINED_MEAN]


def test_keras_layer_names_keep_their_bytes(tmp_path):
    """In a .weights.h5 a layer's name is an attribute; a 0xff byte there and a literal backslash-x-f-f
    stay two layers, both checked (h5py itself cannot address non-UTF-8 *link* names at all)."""
    import shutil

    h5py = __import__("h5py")
    path = tmp_path / "model.weights.h5"
    shutil.copyfile(ROOT / "fixtures" / "keras" / "stats_init" / "model.weights.h5", path)
    with h5py.File(path, "r+") as file:
        file["layers/batch_normalization/vars"].attrs["name"] = np.bytes_(b"bn\xff")
        file["layers/batch_normalization_1/vars"].attrs["name"] = np.bytes_(b"bn\\xff")
    code, report = check_json(path)
    assert code == 1
    stats_at_init = sorted(f["subject"] for f in report["findings"] if f["name"] == "bn-stats-at-init")
    assert stats_at_init == ["bn\\\\xff", "bn\\xff", "bn_nocenter"]
