"""Issue 15: what people see. Findings named as inspect names them, advice per format family, check text
grouped by rule, lines that fit the terminal without trailing spaces, help that reads, verify on tf.keras."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import FIXTURES, KERAS, ROOT, TF1, run_cli

import ckptdoctor


def _findings(path: str) -> list[dict]:
    return json.loads(run_cli("check", path, "--format", "json").stdout)["findings"]


def _inspect_names(path) -> set[str]:
    report = ckptdoctor.inspect(path)
    return {name for v in report.variables for name in (v.path, v.full_name) if name} | {
        (v.full_name or v.path).rpartition("/")[0] for v in report.variables
    }


@pytest.mark.parametrize(
    ("path", "subject", "key"),
    [
        (KERAS / "stats_nan" / "model.weights.h5", "bn_default/moving_mean", "layers/batch_normalization/vars/2"),
        (KERAS / "stats_init" / "ckpt", "bn_default", "model/_operations/2"),
    ],
)
def test_a_finding_names_its_subject_as_inspect_does(path, subject, key):
    finding = _findings(path)[0]
    assert (finding["subject"], finding["key"]) == (subject, key)
    assert finding["subject"] in _inspect_names(path)
    assert re.search(rf"^{subject.split('/')[0]}/|\({subject.split('/')[0]}\)$", run_cli("inspect", path).stdout, re.M)
    assert "key" not in _findings(TF1 / "finetune_trainable")[0]  # a TF1 name is what inspect shows: no key


@pytest.mark.parametrize(
    ("path", "rule", "wanted", "unwanted"),
    [
        (KERAS / "stats_removed" / "model.keras", "BN001", "model.save('model.keras')", "Saver"),
        (KERAS / "stats_init" / "ckpt", "BN002", "training=True", "UPDATE_OPS"),
        (KERAS / "stats_init" / "model.weights.h5", "BN002", "ckptdoctor recalibrate", "control_dependencies"),
        (TF1 / "finetune_trainable", "BN001", "tf.compat.v1.train.Saver()", "model.save"),
        (TF1 / "scratch_noupdate", "BN002", "UPDATE_OPS", "model.fit"),
    ],
)
def test_advice_fits_the_format_family(path, rule, wanted, unwanted):
    hints = {f["hint"] for f in _findings(path) if f["code"] == rule}
    assert hints and all(wanted in hint and unwanted not in hint for hint in hints)
    assert "ckptdoctor " in hints.pop()  # the command that repairs it


def test_explain_gives_the_fix_per_family():
    out = run_cli("explain", "BN002").stdout
    for title in ("TF1 graphs", "Keras files", "TF2 object checkpoints"):
        assert title in out
    assert "training=True" in out and "UPDATE_OPS" in out


def test_check_text_is_one_line_per_subject(tmp_path):
    """Many findings of one rule: title, cause and fix once, then a line each; --verbose has them in full."""
    from conftest import copy_checkpoint

    paths = [copy_checkpoint(TF1 / "finetune_trainable" / "model.ckpt-20", tmp_path / str(i)) for i in range(5)]
    grouped = run_cli("check", paths[0]).stdout.splitlines()
    verbose = run_cli("check", paths[0], "--verbose").stdout.splitlines()
    subject_lines = [line for line in grouped if line.startswith("    net/")]
    assert len(subject_lines) == 4 and len(grouped) < len(verbose) + 6
    assert sum("fix:" in line for line in grouped) == 1 and sum("hint:" in line for line in verbose) == 4


QUICK_START = [  # the README's Quick start, then the help and explanation it points to
    ["check", TF1 / "finetune_trainable"],
    ["patch", TF1 / "finetune_trainable", "--from", TF1 / "finetune_full", "--out", "OUT", "--force"],
    ["check", "OUT"],
    ["explain", "BN001"],
    ["check", "-h"],
]


@pytest.mark.parametrize("columns", [80, 120])
def test_quick_start_lines_fit_the_terminal_without_trailing_spaces(columns, tmp_path):
    """As the Quick start runs them, in order: paths relative to the repository, the output in a short folder."""
    out = tmp_path / "model.ckpt-20"
    for args in QUICK_START:
        args = [str(out) if a == "OUT" else (a.relative_to(ROOT) if isinstance(a, Path) else a) for a in args]
        result = run_cli(*args, env={"COLUMNS": str(columns)}, cwd=ROOT)
        assert result.returncode in (0, 1), result.stderr
        for line in result.stdout.splitlines():  # the test's own output folder is longer than the README's
            assert len(line.replace(str(tmp_path), "/tmp/ckptdoctor-demo")) <= columns, repr(line)
            assert line == line.rstrip(), repr(line)


def test_piped_text_is_never_padded():
    for args in (["inspect", TF1 / "finetune_full"], ["check", TF1 / "finetune_trainable"], ["rules"]):
        out = run_cli(*args).stdout
        assert out and not re.search(r" +$", out, re.MULTILINE), args


def test_help_shows_brackets_metavars_and_takes_h():
    result = run_cli("check", "-h")
    assert result.returncode == 0
    assert "[default: error]" in result.stdout and "[tool.ckptdoctor]" in result.stdout  # plain text, not markup
    assert result.stdout.startswith("usage: ckptdoctor check [OPTIONS] PATH...\n")
    assert "-o, --output FILE" in result.stdout and "--config FILE" in result.stdout
    assert "<str>" not in result.stdout and "{paths}" not in result.stdout and "PATH [PATH ...]" not in result.stdout
    assert "usage: ckptdoctor inspect [OPTIONS] CHECKPOINT\n" in run_cli("inspect", "-h").stdout


def test_counts_are_plural_only_when_more_than_one(tmp_path):
    out = run_cli("check", KERAS / "stats_nan" / "model.weights.h5").stdout
    assert "1 finding: 1 error" in out and "1 findings" not in out and "3 BatchNorm layers" in out


def test_patch_lists_added_tensors_by_layer(tmp_path):
    out = run_cli(
        "patch", TF1 / "finetune_trainable", "--from", TF1 / "finetune_full", "--out", tmp_path / "model.ckpt-20"
    ).stdout
    assert "added 8 tensors to 4 BatchNorm layers" in out
    assert "  + net/conv1/BatchNorm: moving_mean, moving_variance  float32[8]" in out.splitlines()
    assert out.count("re-checking the result:") == 1


def test_verify_tf_keras_model_compares_layers(tf, tmp_path):
    """tf.keras variables have no `.path`: the layer comparison must not crash on them."""
    (tmp_path / "tfk_models.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(FIXTURES.parent / 'scripts')!r})\n"
        "def build():\n"
        "    import tf_keras\n"
        "    from make_keras_fixtures import build as layers\n"
        "    return tf_keras.Model(*layers(tf_keras.layers))\n"
    )
    pytest.importorskip("tf_keras")
    env = {"PYTHONPATH": f"{tmp_path}:{FIXTURES.parent}"}
    result = run_cli("verify", FIXTURES / "keras2" / "model_weights.h5", "--model", "tfk_models:build", env=env)
    assert "has no attribute 'path'" not in result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr
    assert sys.executable  # the CLI ran with this interpreter (conftest.run_cli)
