"""Each fixture story yields exactly its rule, once per damaged layer or tensor; damage is named."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, copy_checkpoint

from ckptdoctor import check
from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.formats.tf_bundle import BundleReader
from ckptdoctor.model import Severity
from ckptdoctor.policy import exit_code
from ckptdoctor.rules import BY_NAME, CATALOGUE
from ckptdoctor.writer.bundle import BundleWriter

BN_LAYERS = {"net/batch_normalization", "net/batch_normalization_1", "net/conv1/BatchNorm", "net/conv2/BatchNorm"}


def _by_rule(report):
    return Counter(f.name for f in report.findings)


def test_catalogue_codes_and_slugs_are_unique_and_explained():
    assert len({r.code for r in CATALOGUE}) == len({r.name for r in CATALOGUE}) == len(CATALOGUE)
    for slug in (
        "bn-missing-moving-stats",
        "bn-stats-at-init",
        "bn-stats-match-reference",
        "nonfinite-values",
        "bn-variance-nonpositive",
        "crc-mismatch",
    ):
        assert slug in BY_NAME
        assert len(BY_NAME[slug].explanation) > 100


def test_trainable_only_save_lacks_statistics_in_every_layer():
    report = check(FIXTURE_BUNDLES["finetune_trainable"])
    assert _by_rule(report) == {"bn-missing-moving-stats": 4}
    assert {f.subject for f in report.findings} == BN_LAYERS
    assert all("var_list=tf.trainable_variables()" in f.message for f in report.findings)
    assert all(f.severity is Severity.ERROR and f.code == "BN001" for f in report.findings)
    assert exit_code(report.findings) == 1


def test_full_save_is_healthy_alone_and_against_its_reference():
    assert check(FIXTURE_BUNDLES["finetune_full"]).findings == ()
    assert check(FIXTURE_BUNDLES["finetune_full"], reference=FIXTURE_BUNDLES["pretrained"]).findings == ()


def test_fine_tune_without_update_ops_matches_reference():
    alone = check(FIXTURE_BUNDLES["finetune_noupdate"])
    assert alone.findings == ()  # without a reference nothing can tell
    report = check(FIXTURE_BUNDLES["finetune_noupdate"], reference=FIXTURE_BUNDLES["pretrained"])
    assert _by_rule(report) == {"bn-stats-match-reference": 4}
    assert {f.subject for f in report.findings} == BN_LAYERS
    assert all(f.severity is Severity.WARNING for f in report.findings)
    assert exit_code(report.findings) == 0
    assert exit_code(report.findings, Severity.WARNING) == 1


def test_reference_equal_to_target_is_not_fine_tuning():
    report = check(FIXTURE_BUNDLES["pretrained"], reference=FIXTURE_BUNDLES["pretrained"])
    assert report.findings == ()


def test_scratch_without_update_ops_keeps_initial_statistics():
    report = check(FIXTURE_BUNDLES["scratch_noupdate"])
    assert _by_rule(report) == {"bn-stats-at-init": 4}


def test_nan_weights_and_negative_variance():
    report = check(FIXTURE_BUNDLES["damaged_values"])  # moving_variance[:2] = [-0.5, 0.0]
    assert _by_rule(report) == {"bn-variance-nonpositive": 1, "nonfinite-values": 1}
    by_name = {f.name: f for f in report.findings}
    assert by_name["bn-variance-nonpositive"].subject == "net/batch_normalization"
    assert "1 of 8" in by_name["bn-variance-nonpositive"].message  # the 0.0 is a dead channel, not damage
    assert by_name["nonfinite-values"].subject == "net/conv2/weights"
    assert "3 NaN or Inf" in by_name["nonfinite-values"].message


def _damaged_copy(tmp_path: Path) -> Path:
    return copy_checkpoint(FIXTURE_BUNDLES["finetune_full"], tmp_path / "copy")


def test_flipped_tensor_byte_is_a_crc_mismatch_naming_the_tensor(tmp_path):
    prefix = _damaged_copy(tmp_path)
    entry = BundleReader(str(prefix)).entry("net/conv2/BatchNorm/moving_variance")
    data = Path(f"{prefix}.data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x01
    data.write_bytes(bytes(raw))
    report = check(prefix)
    assert [(f.name, f.subject) for f in report.findings] == [("crc-mismatch", "net/conv2/BatchNorm/moving_variance")]


def test_missing_shard_is_named(tmp_path):
    prefix = copy_checkpoint(FIXTURE_BUNDLES["sharded"], tmp_path / "copy")
    Path(f"{prefix}.data-00001-of-00002").unlink()
    report = check(prefix)
    assert {f.name for f in report.findings} == {"missing-data-shard"}
    assert {f.subject for f in report.findings} == {f"{prefix}.data-00001-of-00002"}


def test_truncated_shard_puts_tensors_out_of_bounds(tmp_path):
    prefix = _damaged_copy(tmp_path)
    data = Path(f"{prefix}.data-00000-of-00001")
    cut = data.stat().st_size // 2
    data.write_bytes(data.read_bytes()[:cut])
    cut_off = {e.name for e in BundleReader(str(prefix)).variable_entries if e.offset + e.size > cut}
    report = check(prefix)
    assert len(cut_off) > 5
    assert {(f.name, f.subject) for f in report.findings} == {("tensor-out-of-bounds", n) for n in cut_off}
    assert exit_code(report.findings) == 1


@pytest.mark.parametrize("fail_on", list(Severity))
def test_exit_code_policy(fail_on):
    report = check(FIXTURE_BUNDLES["finetune_noupdate"], reference=FIXTURE_BUNDLES["pretrained"])
    expected = 1 if fail_on.rank <= Severity.WARNING.rank else 0
    assert exit_code(report.findings, fail_on) == expected


def _with_variance(tmp_path: Path, values: np.ndarray) -> Path:
    """finetune_full with one layer's moving_variance replaced, written by the bundle writer."""
    source = BundleReader(str(FIXTURE_BUNDLES["finetune_full"]))
    out = tmp_path / "model.ckpt"
    writer = BundleWriter(str(out))
    replaced = b"net/conv1/BatchNorm/moving_variance"
    for key in sorted(source.entries):
        entry = source.entries[key]
        if key == replaced:
            raw = values.astype("<f4").tobytes()
            writer.add(key, entry.dtype.code, entry.shape, raw, mask(crc32c(raw)))
        else:
            writer.copy(source, entry)
    writer.commit()
    source.close()
    return out


def test_dead_channels_with_zero_variance_are_healthy(tmp_path):
    variance = BundleReader(str(FIXTURE_BUNDLES["finetune_full"])).read("net/conv1/BatchNorm/moving_variance")
    variance = variance.copy()
    variance[:3] = 0.0
    assert check(_with_variance(tmp_path, variance)).findings == ()


def test_a_layer_whose_every_variance_is_zero_is_a_warning(tmp_path):
    variance = BundleReader(str(FIXTURE_BUNDLES["finetune_full"])).read("net/conv1/BatchNorm/moving_variance")
    report = check(_with_variance(tmp_path, np.zeros_like(variance)))
    assert [(f.code, f.severity, f.subject) for f in report.findings] == [
        ("BN006", Severity.WARNING, "net/conv1/BatchNorm")
    ]


def test_each_moving_statistic_is_read_once_per_check(monkeypatch):
    """Four consumers read every moving statistic (three rules and the report's summaries): the context reads
    each once, and the findings and summaries are those of reading it every time."""
    path = FIXTURE_BUNDLES["finetune_full"]
    every_time = check(path)
    reads: Counter[str] = Counter()
    original = BundleReader.numbers

    def counted(self, name):
        reads[name] += 1
        return original(self, name)

    monkeypatch.setattr(BundleReader, "numbers", counted)
    once = check(path)
    statistics = [key for layer in once.batchnorm for key in (layer.moving_mean, layer.moving_variance) if key]
    assert statistics and all(reads[key] == 1 for key in statistics)
    assert (once.findings, once.batchnorm_stats) == (every_time.findings, every_time.batchnorm_stats)


def test_a_fix_that_names_recalibrate_for_keras_or_tf2_gives_the_model():
    """recalibrate refuses a Keras file or TF2 checkpoint without --model: a fix followed as written must run."""
    from ckptdoctor.model import FormatFamily

    named = 0
    for rule in CATALOGUE:
        for family in (FormatFamily.KERAS, FormatFamily.TF2):
            hint = rule.hint_for(family)
            for command in hint.split("ckptdoctor recalibrate ")[1:]:
                named += 1
                assert "--model MODEL" in command.split(";")[0], (rule.code, family, hint)
        if "ckptdoctor recalibrate " in rule.hint:  # the hint without a family (explain) says it too
            assert "--model MODEL" in rule.hint, rule.code
    assert named >= 10  # BN001-BN006 for both families
