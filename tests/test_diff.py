"""`ckptdoctor diff A B`: fixtures with known changes, checkpoints built here with one change each (dtype,
shape, NaN, sign of zero, strings, a damaged tensor, hostile names), the CLI's exit codes and outputs, the
JSON schema, and peak memory bounded by the largest tensor rather than the checkpoint."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, KERAS, ROOT, file_bytes, run_cli
from synthetic import write_synthetic
from test_bounds import measured

from ckptdoctor import dtypes, inspect
from ckptdoctor.analysis.matching import MatchedBy
from ckptdoctor.diff import STATISTICS, Outcome, compare_values, diff
from ckptdoctor.errors import CheckpointError, ConfigError
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.tf_bundle import encode_string_tensor
from ckptdoctor.model import Role
from ckptdoctor.report.diff_json import to_dict
from ckptdoctor.writer.bundle import BundleWriter

PRETRAINED = FIXTURE_BUNDLES["pretrained"]
NOUPDATE = FIXTURE_BUNDLES["finetune_noupdate"]
FULL = FIXTURE_BUNDLES["finetune_full"]
TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
DAMAGED_VALUES = FIXTURE_BUNDLES["damaged_values"]
HEALTHY = KERAS / "healthy"


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return run_cli("diff", *args)


def write_bundle(prefix: Path, tensors: dict[bytes, np.ndarray | list[bytes]]) -> Path:
    """A TF bundle holding exactly these tensors (numpy arrays, or lists of bytes for DT_STRING)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    writer = BundleWriter(str(prefix))
    for key, values in tensors.items():
        if isinstance(values, list):
            raw, crc = encode_string_tensor(values)
            writer.add(key, dtypes.BY_NAME["string"].code, (len(values),), raw, crc)
        else:
            dtype = dtypes.BY_NAME[values.dtype.name]
            raw = values.astype(dtype.numpy).tobytes()
            writer.add(key, dtype.code, values.shape, raw, mask(crc32c(raw)))
    writer.commit()
    return prefix


def by_name(report):
    return {tensor.name: tensor for tensor in report.tensors}


# ---- the fixtures: what a fine-tune did -------------------------------------------------------------


def test_finetune_without_update_ops_changed_weights_and_no_statistic(tf):
    report = diff(PRETRAINED, NOUPDATE)
    before, after = tf.train.load_checkpoint(str(PRETRAINED)), tf.train.load_checkpoint(str(NOUPDATE))
    # TensorFlow's own reading decides which tensors changed
    expected = {
        name
        for name in before.get_variable_to_shape_map()
        if before.get_tensor(name).tobytes() != after.get_tensor(name).tobytes()
    }
    assert {t.name for t in report.changed} == expected
    weights = next(r for r in report.roles if r.role is Role.WEIGHT)
    statistics = next(r for r in report.roles if r.role is Role.BN_STATISTIC)
    assert weights.changed == weights.compared == 13
    assert (statistics.changed, statistics.compared) == (0, 8)
    assert len(report.batchnorm) == 4
    for layer in report.batchnorm:
        assert layer.count(STATISTICS, Outcome.UNCHANGED) == 2
        assert layer.count(("gamma", "beta"), Outcome.CHANGED) == layer.count(("gamma", "beta"), *Outcome)
    kernel = by_name(report)["net/conv1/weights"]
    delta = np.abs(before.get_tensor(kernel.name).astype(np.float64) - after.get_tensor(kernel.name))
    assert kernel.values.max_abs_diff == pytest.approx(delta.max())
    assert kernel.values.differing == np.count_nonzero(delta)


def test_trainable_only_save_removed_every_statistic():
    report = diff(FULL, TRAINABLE)
    removed = {t.name for t in report.removed}
    assert {t.name for t in report.removed if t.role is Role.BN_STATISTIC} == {
        f"{layer}/{part}"
        for layer in (
            "net/batch_normalization",
            "net/batch_normalization_1",
            "net/conv1/BatchNorm",
            "net/conv2/BatchNorm",
        )
        for part in STATISTICS
    }
    assert "global_step" in removed and report.added == () and report.changed == ()
    for layer in report.batchnorm:
        assert layer.with_outcome(STATISTICS, Outcome.REMOVED) == STATISTICS
    reverse = diff(TRAINABLE, FULL)
    assert {t.name for t in reverse.added} == removed and reverse.removed == ()


def test_nan_positions_count_and_nan_equals_nan(tf):
    report = diff(FULL, DAMAGED_VALUES)
    damaged = tf.train.load_checkpoint(str(DAMAGED_VALUES))
    kernel = by_name(report)["net/conv2/weights"]
    stored = damaged.get_tensor("net/conv2/weights")
    assert np.isnan(stored).any()
    assert kernel.outcome is Outcome.CHANGED
    assert kernel.values.nonfinite_mismatches == kernel.values.differing == np.count_nonzero(~np.isfinite(stored))
    itself = diff(DAMAGED_VALUES, DAMAGED_VALUES)
    assert itself.identical and itself.exit_code == 0  # NaN at the same positions is unchanged


def test_a_signalling_nan_is_compared_without_a_warning(tmp_path):
    """Widening a signalling NaN (float32 0x7f800001) to float64 makes numpy warn ("invalid value encountered in
    cast"): on a terminal a stray line under the report, here (warnings are errors) a failure."""
    signalling = np.array([0x7F800001, 0x3F800000], dtype="<u4").view("<f4")
    first = write_bundle(tmp_path / "a" / "model.ckpt", {b"w": signalling})
    second = write_bundle(tmp_path / "b" / "model.ckpt", {b"w": np.array([1.0, 1.0], "<f4")})
    tensor = by_name(diff(first, second))["w"]
    assert tensor.outcome is Outcome.CHANGED and tensor.values.nonfinite_mismatches == 1


def test_keras_formats_match_by_framework_name():
    same_keys = diff(HEALTHY / "model.keras", HEALTHY / "model.weights.h5")
    assert same_keys.identical and same_keys.compared == 44
    # legacy .h5 and a TF2 checkpoint store the same weights under other keys
    for other in (HEALTHY / "model.h5", HEALTHY / "ckpt"):
        report = diff(HEALTHY / "model.keras", other)
        model = [t for t in report.tensors if t.role in (Role.WEIGHT, Role.BN_STATISTIC)]
        assert len(model) == 18
        assert all(t.outcome is Outcome.UNCHANGED and t.matched_by is MatchedBy.FRAMEWORK_NAME for t in model)
        assert report.changed == ()
        assert [layer.name for layer in report.batchnorm] == ["bn_default", "bn_nocenter", "bn_noscale"]
        assert all(outcome is Outcome.UNCHANGED for layer in report.batchnorm for _, outcome in layer.parts)


# ---- checkpoints built with one change each ----------------------------------------------------------


def test_dtype_shape_integer_string_changes(tmp_path):
    values = np.linspace(-1, 1, 6, dtype=np.float32)
    a = write_bundle(
        tmp_path / "a" / "model.ckpt",
        {
            b"same": values,
            b"dtype": values,
            b"shape": values,
            b"counts": np.arange(5, dtype=np.int64),
            b"labels": [b"cat", b"dog"],
            b"gone": values,
        },
    )
    b = write_bundle(
        tmp_path / "b" / "model.ckpt",
        {
            b"same": values,
            b"dtype": values.astype(np.float64),
            b"shape": np.append(values, 0),
            b"counts": np.array([0, 1, 2, 99, 4], dtype=np.int64),
            b"labels": [b"cat", b"dig"],
            b"new": values,
        },
    )
    inputs = {**file_bytes(a), **file_bytes(b)}
    report = diff(a, b)
    tensors = by_name(report)
    assert tensors["same"].outcome is Outcome.UNCHANGED
    dtype = tensors["dtype"]
    assert dtype.outcome is Outcome.CHANGED and dtype.dtype_changed and not dtype.shape_changed
    assert dtype.values.differing == 0  # float32 widened to float64: the values themselves are equal
    shape = tensors["shape"]
    assert shape.outcome is Outcome.CHANGED and shape.shape_changed and shape.values is None
    assert (tensors["counts"].values.differing, tensors["counts"].values.max_abs_diff) == (1, None)
    assert tensors["labels"].values.differing == 1
    assert [t.name for t in report.removed] == ["gone"] and [t.name for t in report.added] == ["new"]
    assert report.exit_code == 1
    assert {**file_bytes(a), **file_bytes(b)} == inputs  # a diff never writes


def test_sign_of_zero_infinities_and_tolerance(tmp_path):
    a = np.array([0.0, np.inf, -np.inf, 1.0, np.nan, 100.0], dtype=np.float32)
    b = np.array([-0.0, np.inf, -np.inf, 1.0000001, 1.0, 100.5], dtype=np.float32)
    exact = compare_values(a, b)
    assert exact.differing == 4  # -0.0, 1.0000001, NaN->1.0, 100.5; equal infinities are equal
    assert exact.nonfinite_mismatches == 1
    assert exact.max_abs_diff == pytest.approx(0.5)
    assert exact.max_rel_diff == pytest.approx(0.5 / 100.5)
    assert compare_values(a, b, rtol=1e-6).differing == 2  # 1.0000001 is close, and -0.0 == 0.0 numerically
    assert compare_values(a, b, atol=1.0).differing == 1  # only NaN against a number is never close
    complex_a = np.array([1 + 1j, np.nan + 0j], dtype=np.complex64)
    assert compare_values(complex_a, complex_a.copy()).differing == 0
    assert compare_values(complex_a, np.array([1 + 2j, np.nan], dtype=np.complex64)).max_abs_diff == 1.0
    assert compare_values(np.zeros(3), np.zeros(4)) is None
    assert compare_values(np.array([b"x"], dtype=object), np.zeros(1)) is None
    with pytest.raises(ConfigError, match="--atol"):
        diff(FULL, FULL, atol=-1.0)
    with pytest.raises(ConfigError, match="--rtol"):
        diff(FULL, FULL, rtol=float("nan"))


def test_chunked_comparison_covers_every_element(tmp_path, monkeypatch):
    monkeypatch.setattr("ckptdoctor.diff.CHUNK_ELEMENTS", 7)
    a = np.arange(100, dtype=np.float32)
    b = a.copy()
    b[[3, 50, 99]] += [1, -4, 2]
    b[[10]] = np.nan
    result = compare_values(a, b)
    assert (result.differing, result.nonfinite_mismatches, result.max_abs_diff) == (4, 1, 4.0)


def test_damaged_tensor_is_unreadable_not_changed(tmp_path):
    a = write_bundle(tmp_path / "a" / "model.ckpt", {b"w": np.ones(4, np.float32), b"big": np.ones(4096, np.float32)})
    b = write_bundle(tmp_path / "b" / "model.ckpt", {b"w": np.ones(4, np.float32), b"big": np.ones(4096, np.float32)})
    data = Path(f"{b}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:100])  # `big`'s bytes are gone, `w`'s (16 bytes) remain
    report = diff(a, b)
    [unreadable] = [t for t in report.tensors if t.name in ("w", "big") and t.outcome is Outcome.UNREADABLE]
    assert unreadable.name == "big" and unreadable.unreadable_in == ("b",)
    assert report.exit_code == 1
    result = run(a, b)
    assert result.returncode == 1, result.stderr
    assert "  ! big  weight  float32[4096]  bytes unreadable in B" in result.stdout.splitlines()


# ---- the command line ----------------------------------------------------------------------------------


def test_cli_text_summarises_by_role_and_batchnorm_layer():
    result = run(PRETRAINED, NOUPDATE)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert "summary: 13 weights changed, 0 of 8 BatchNorm statistics changed" in lines
    assert "  net/conv1/BatchNorm: parameters 1 of 1 changed; statistics 0 of 2 changed" in lines
    assert "NaN at the same position in both counts as equal" in result.stdout
    assert lines[-1] == "differ: 27 changed, 0 added, 0 removed, 0 unreadable"
    removed = run(FULL, TRAINABLE)
    assert removed.returncode == 1
    assert "summary: 0 weights changed, 0 of 0 BatchNorm statistics changed, 8 removed" in removed.stdout
    assert "  - net/conv1/BatchNorm/moving_mean  bn-statistic  float32[8]" in removed.stdout.splitlines()
    nan = run(HEALTHY / "model.keras", KERAS / "stats_nan" / "ckpt")  # matched across formats by framework name
    assert nan.returncode == 1
    assert (
        "  ~ layers/batch_normalization/vars/2  (bn_default/moving_mean; "
        "B: model/_operations/2/moving_mean/.ATTRIBUTES/VARIABLE_VALUE)  bn-statistic  float32[8]  "
        "1 of 8 elements differ, 1 NaN/Inf on one side only"
    ) in nan.stdout.splitlines()


def test_cli_exit_codes():
    identical = run(HEALTHY / "model.keras", HEALTHY / "model.weights.h5")
    assert identical.returncode == 0, identical.stdout + identical.stderr
    assert identical.stdout.splitlines()[-1].startswith("identical:")
    missing = run(FULL, ROOT / "no-such-checkpoint")
    assert missing.returncode == 2
    assert len(missing.stderr.strip().splitlines()) == 1 and "no-such-checkpoint" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert run(FULL, FULL, "--atol", "-1").returncode == 2


def test_cli_tolerance_decides_the_exit_code(tmp_path):
    a = write_bundle(tmp_path / "a" / "model.ckpt", {b"w": np.array([1.0, 2.0], np.float32)})
    b = write_bundle(tmp_path / "b" / "model.ckpt", {b"w": np.array([1.0, 2.0001], np.float32)})
    assert run(a, b).returncode == 1
    assert run(a, b, "--atol", "1e-3").returncode == 0
    assert run(a, b, "--rtol", "1e-4").returncode == 0
    assert run(a, b, "--rtol", "1e-6").returncode == 1


def test_cli_json_follows_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "diff.schema.json").read_text())
    for a, b, code in (
        (PRETRAINED, NOUPDATE, 1),
        (FULL, TRAINABLE, 1),
        (TRAINABLE, FULL, 1),
        (FULL, DAMAGED_VALUES, 1),
        (HEALTHY / "model.keras", HEALTHY / "ckpt", 1),
        (HEALTHY / "model.keras", HEALTHY / "model.weights.h5", 0),
    ):
        result = run(a, b, "--format", "json")
        assert result.returncode == code, result.stderr
        document = json.loads(result.stdout)
        jsonschema.validate(document, schema)
        assert document["identical"] is (code == 0)
    document = json.loads(run(FULL, DAMAGED_VALUES, "-f", "json").stdout)
    [kernel] = [c for c in document["changed"] if c["name"] == "net/conv2/weights"]
    assert kernel["nonfinite_mismatches"] == kernel["differing"] > 0
    document["changed"][0]["max_abs"] = document["changed"][0].pop("max_abs_diff")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_every_outcome_validates_against_the_schema(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "diff.schema.json").read_text())
    ones = np.ones(4096, np.float32)
    largest = np.full(4, np.finfo(np.float64).max)
    a = write_bundle(tmp_path / "a" / "model.ckpt", {b"big": ones, b"gone": ones, b"shape": ones, b"x": -largest})
    b = write_bundle(
        tmp_path / "b" / "model.ckpt",
        {b"new": ones, b"shape": ones[:7], b"x": largest, b"big": ones},
    )
    data = Path(f"{b}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-1])  # `big` was written last: its last byte is gone
    document = to_dict(diff(a, b))
    jsonschema.validate(document, schema)
    assert [len(document[key]) for key in ("changed", "added", "removed", "unreadable")] == [2, 1, 1, 1]
    assert document["unreadable"][0]["unreadable_in"] == ["b"]
    [overflow] = [item for item in document["changed"] if item["name"] == "x"]
    assert overflow["max_abs_diff"] == "inf"  # max - (-max) overflows float64: written as a string, not Infinity


def test_hostile_names_stay_one_line_and_escaped(tmp_path):
    evil = b"layer\n\x1b[31mred\xff/[bold]w"
    a = write_bundle(tmp_path / "a" / "model.ckpt", {evil: np.zeros(2, np.float32)})
    bidi = "x\u202eevil".encode()
    b = write_bundle(tmp_path / "b" / "model.ckpt", {evil: np.ones(2, np.float32), bidi: np.ones(1, np.float32)})
    result = run(a, b)
    assert result.returncode == 1
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "  + x\\u202eevil  weight  float32[1]" in result.stdout.splitlines()
    [item] = [line for line in result.stdout.splitlines() if line.startswith("  ~ ")]
    assert item.startswith("  ~ layer\\x0a\\x1b[31mred\\xff/[bold]w  weight  float32[2]  2 of 2 elements differ")
    document = json.loads(run(a, b, "-f", "json").stdout)
    assert bytes.fromhex(document["changed"][0]["name_hex"]) == evil


def test_unrelated_layers_and_keys_in_one_checkpoint_do_not_pair(tmp_path):
    """Framework names are used only where unique: two B tensors sharing one name are both `added`."""
    a = write_bundle(tmp_path / "a" / "model.ckpt", {b"x": np.zeros(1, np.float32)})
    b = write_bundle(tmp_path / "b" / "model.ckpt", {b"y": np.zeros(1, np.float32)})
    report = diff(a, b)
    assert [t.name for t in report.removed] == ["x"] and [t.name for t in report.added] == ["y"]


def test_unreadable_checkpoint_raises(tmp_path):
    (tmp_path / "model.ckpt.index").write_bytes(b"not an sstable")
    with pytest.raises(CheckpointError):
        diff(FULL, tmp_path / "model.ckpt")


# ---- memory: the largest tensor, not the checkpoint ------------------------------------------------------


def test_peak_memory_follows_the_largest_tensor_not_the_checkpoint(tmp_path):
    """Two 64 MiB checkpoints of 400 tensors (the largest 0.6 MiB): the diff holds one pair at a time, so it
    needs about two of the largest tensors and a few MiB of comparison slices over what a tiny diff needs."""
    total, tensors = 64 << 20, 400
    for name, size, seed in (
        ("big_a", total, 1),
        ("big_b", total, 2),
        ("small_a", 1 << 20, 1),
        ("small_b", 1 << 20, 2),
    ):
        (tmp_path / name).mkdir()
        write_synthetic(tmp_path / name / "model.ckpt", size, tensors, seed=seed)
    code, _, err, small_peak, _ = measured("diff", tmp_path / "small_a", tmp_path / "small_b", "-f", "json")
    assert code == 1, err
    code, out, err, big_peak, seconds = measured("diff", tmp_path / "big_a", tmp_path / "big_b", "-f", "json")
    assert code == 1, err
    assert json.loads(out)["summary"]["changed"] == tensors  # every tensor was read and compared
    largest = max(info.nbytes for info in inspect(tmp_path / "big_a").variables)
    growth = big_peak - small_peak
    assert growth < 2 * largest + (12 << 20), f"{growth >> 20} MiB more for 2 x {total >> 20} MiB of tensors"
    assert seconds < 30
