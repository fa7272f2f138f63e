"""The command line as a user runs it: real processes, exit codes, JSON, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES, TF1, cli_command, cli_env, file_bytes, read_pty, run_cli

TRAINABLE = str(FIXTURE_BUNDLES["finetune_trainable"])
FULL = str(FIXTURE_BUNDLES["finetune_full"])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_inspect_json_is_the_documented_report():
    result = run_cli("inspect", TRAINABLE, "--format", "json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["schema_version"] == "1.2"
    assert report["format"] == "tf1-name-based"
    assert report["findings"] == []
    variable = next(v for v in report["variables"] if v["name"] == "net/conv1/weights")
    assert variable == {
        "name": "net/conv1/weights",
        "dtype": "float32",
        "shape": [3, 3, 3, 8],
        "elements": 216,
        "bytes": 864,
        "role": "weight",
        "layer": "net/conv1",
        "path": "net/conv1/weights",
        "full_name": None,
    }
    slim = next(b for b in report["batchnorm"] if b["layer"] == "net/conv1/BatchNorm")
    assert slim == {
        "layer": "net/conv1/BatchNorm",
        "gamma": None,
        "beta": "net/conv1/BatchNorm/beta",
        "moving_mean": None,
        "moving_variance": None,
        "missing": ["moving_mean", "moving_variance"],
    }


def test_inspect_text_groups_by_layer_and_summarises():
    result = run_cli("inspect", FULL)
    assert result.returncode == 0
    out = result.stdout
    assert "net/conv1/BatchNorm/" in out and "moving_variance" in out
    assert "totals by role" in out and "optimizer-slot" in out
    assert "BatchNorm: 4 layers (gamma 3, beta 4, moving_mean 4, moving_variance 4); all complete" in out


def test_check_exit_codes():
    assert run_cli("check", FULL).returncode == 0
    broken = run_cli("check", TRAINABLE, "--format", "json")
    assert broken.returncode == 1
    findings = json.loads(broken.stdout)["findings"]
    assert [f["name"] for f in findings] == ["bn-missing-moving-stats"] * 4
    assert set(findings[0]) == {"code", "name", "severity", "subject", "message", "hint"}
    noupdate = [str(FIXTURE_BUNDLES["finetune_noupdate"]), "--reference", str(FIXTURE_BUNDLES["pretrained"])]
    assert run_cli("check", *noupdate).returncode == 0
    assert run_cli("check", *noupdate, "--fail-on", "warning").returncode == 1


def test_check_text_names_rule_and_hint():
    result = run_cli("check", TRAINABLE)
    assert result.returncode == 1
    assert "error BN001 bn-missing-moving-stats (4)\n  BatchNorm layer lacks" in result.stdout
    assert result.stdout.count("fix: repair with: ckptdoctor patch") == 1  # once for the rule, not per layer
    assert "    net/conv1/BatchNorm        no moving_mean or moving_variance\n" in result.stdout
    assert "4 findings: 4 errors" in result.stdout
    verbose = run_cli("check", TRAINABLE, "--verbose").stdout
    assert "BN001 bn-missing-moving-stats net/conv1/BatchNorm" in verbose
    assert verbose.count("hint: repair with: ckptdoctor patch") == 4


def test_patch_then_check_passes(tmp_path):
    before = {**file_bytes(Path(TRAINABLE)), **file_bytes(Path(FULL))}
    out = tmp_path / "fixed"
    result = run_cli("patch", TRAINABLE, "--from", FULL, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "added 8 tensors to 4 BatchNorm layers" in result.stdout
    assert "+ net/conv1/BatchNorm: moving_mean, moving_variance  float32[8]" in result.stdout
    assert "no findings" in result.stdout
    assert run_cli("check", str(out)).returncode == 0
    again = run_cli("patch", TRAINABLE, "--from", FULL, "--out", str(out))
    assert_one_line_error(again, "use --force")
    assert run_cli("patch", TRAINABLE, "--from", FULL, "--out", str(out), "--force").returncode == 0
    assert {**file_bytes(Path(TRAINABLE)), **file_bytes(Path(FULL))} == before


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["check", "does/not/exist"], ["does/not/exist", "no such file"]),
        (["inspect", "pyproject.toml"], ["pyproject.toml", "not a recognised checkpoint"]),
        (["patch", TRAINABLE, "--from", TRAINABLE, "--out", "/tmp/ckptdoctor-never"], ["donor lacks 8"]),
        (["patch", TRAINABLE, "--from", FULL, "--out", "pyproject.toml/x"], ["pyproject.toml: not a directory"]),
        (["verify", FULL, "--meta-graph", "nope.meta"], ["nope.meta", "not found"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragments):
    assert_one_line_error(run_cli(*args), *fragments)


def test_bad_arguments_exit_2():
    assert run_cli("check", FULL, "--fail-on", "sometimes").returncode == 2
    assert run_cli("frobnicate").returncode == 2


def test_verify_without_tensorflow_is_a_hint(tmp_path):
    blocker = tmp_path / "tensorflow"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    result = run_cli("verify", FULL, "--meta-graph", str(TF1 / "eval" / "eval.meta"), env={"PYTHONPATH": str(tmp_path)})
    assert_one_line_error(result, "pip install 'ckptdoctor[tf]'")


def test_verify_cli_agrees_with_tf(tf):
    meta = str(TF1 / "eval" / "eval.meta")
    ok = run_cli("verify", FULL, "--meta-graph", meta)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "restored for real" in ok.stdout
    broken = run_cli("verify", TRAINABLE, "--meta-graph", meta)
    assert broken.returncode == 1
    assert "missing     net/conv1/BatchNorm/moving_mean" in broken.stdout
    assert "the restore failed: NotFoundError" in broken.stdout


def _stderr_on_a_terminal(*args: str) -> bytes:
    """Run the CLI with stderr on a pseudo-terminal (stdout stays a pipe) and return what stderr showed."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        cli_command(*args),
        stdout=subprocess.PIPE,
        stderr=follower,
        env=cli_env({"TERM": "xterm", "COLUMNS": "120"}),
    )
    process.communicate(timeout=120)
    os.close(follower)
    return read_pty(leader)


def test_progress_bar_on_a_terminal_only_for_text_output():
    assert b"scanning" in _stderr_on_a_terminal("check", FULL)
    assert _stderr_on_a_terminal("check", FULL, "--format", "json") == b""
