"""check as a CI gate: SARIF valid against the official schema, JUnit, GitHub commands, --output, policy."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES, KERAS, REALWORLD, ROOT, run_cli

from ckptdoctor.rules import CATALOGUE

jsonschema = pytest.importorskip("jsonschema")
BROKEN = [
    str(FIXTURE_BUNDLES["finetune_trainable"]),
    str(KERAS / "stats_nan" / "model.weights.h5"),
    str(FIXTURE_BUNDLES["finetune_full"]),
]


def run(*args, cwd=None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, cwd=cwd)


def test_sarif_validates_and_describes_every_rule(tmp_path):
    schema_path = REALWORLD.parent / "schemas" / "sarif-schema-2.1.0.json"
    if not schema_path.is_file():
        pytest.skip(f"official SARIF schema not available ({schema_path} is absent)")
    out = tmp_path / "report.sarif"
    result = run("check", *BROKEN, "--format", "sarif", "--output", out)
    assert result.returncode == 1
    assert result.stdout == ""
    document = json.loads(out.read_text())
    jsonschema.validate(document, json.loads(schema_path.read_text()))
    (sarif_run,) = document["runs"]
    rules = {rule["id"]: rule for rule in sarif_run["tool"]["driver"]["rules"]}
    assert set(rules) == {rule.code for rule in CATALOGUE}
    assert all(rule["help"]["text"] and rule["fullDescription"]["text"] for rule in rules.values())
    results = sarif_run["results"]
    assert [r["ruleId"] for r in results] == ["BN001"] * 4 + ["VAL001"]
    assert all(r["ruleId"] in rules and r["level"] == "error" for r in results)
    first = results[0]["locations"][0]
    assert first["physicalLocation"]["artifactLocation"]["uri"].endswith("finetune_trainable/model.ckpt-20.index")
    assert first["logicalLocations"][0]["name"] == "net/batch_normalization"
    nan_location = results[-1]["locations"][0]["logicalLocations"][0]  # as inspect names it, the raw key beside
    assert (nan_location["name"], nan_location["decoratedName"]) == (
        "bn_default/moving_mean",
        "layers/batch_normalization/vars/2",
    )


def test_junit_has_a_suite_per_checkpoint_and_failures(tmp_path):
    result = run("check", *BROKEN, "--format", "junit")
    assert result.returncode == 1
    root = ET.fromstring(result.stdout)
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == BROKEN
    assert [int(s.get("failures")) for s in suites] == [4, 1, 0]
    failed = [case.get("name") for case in suites[0].iter("testcase") if case.find("failure") is not None]
    assert failed[0] == "BN001 bn-missing-moving-stats: net/batch_normalization"
    assert len(list(suites[2].iter("testcase"))) == len(CATALOGUE)  # every rule passed once


def test_junit_warnings_below_fail_on_are_not_failures():
    noupdate = [FIXTURE_BUNDLES["finetune_noupdate"], "--reference", FIXTURE_BUNDLES["pretrained"]]
    root = ET.fromstring(run("check", *noupdate, "--format", "junit").stdout)
    assert root.get("failures") == "0"
    root = ET.fromstring(run("check", *noupdate, "--format", "junit", "--fail-on", "warning").stdout)
    assert root.get("failures") == "4"


def test_github_workflow_commands():
    result = run("check", *BROKEN, "--format", "github")
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert all(line.startswith("::error file=") for line in lines)
    assert "title=BN001 bn-missing-moving-stats::net/batch_normalization: " in lines[0]
    noupdate = run("check", FIXTURE_BUNDLES["finetune_noupdate"], "-r", FIXTURE_BUNDLES["pretrained"], "-f", "github")
    assert noupdate.stdout.startswith("::warning file=")


def test_json_for_several_paths_is_one_document(tmp_path):
    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    out = tmp_path / "report.json"
    assert run("check", *BROKEN, "--format", "json", "-o", out).returncode == 1
    document = json.loads(out.read_text())
    jsonschema.validate(document, schema)
    assert [r["path"] for r in document["reports"]] == BROKEN


def test_text_output_file_has_no_colour_codes(tmp_path):
    out = tmp_path / "report.txt"
    assert run("check", BROKEN[0], "--output", out).returncode == 1
    text = out.read_text()
    assert "BN001 bn-missing-moving-stats" in text and "\x1b[" not in text


def _policy_run(tmp_path: Path, toml: str, *extra):
    (tmp_path / "pyproject.toml").write_text(toml)
    return run("check", *map(os.path.abspath, BROKEN[:2]), "--format", "json", *extra, cwd=tmp_path)


def test_policy_in_pyproject_ignores_and_changes_severity(tmp_path):
    result = _policy_run(
        tmp_path, '[tool.ckptdoctor]\nignore = ["nonfinite-values"]\n[tool.ckptdoctor.severity]\nBN001 = "warning"\n'
    )
    assert result.returncode == 0, result.stderr
    findings = [f for r in json.loads(result.stdout)["reports"] for f in r["findings"]]
    assert {(f["code"], f["severity"]) for f in findings} == {("BN001", "warning")}
    assert (
        _policy_run(
            tmp_path, '[tool.ckptdoctor]\nfail-on = "warning"\n[tool.ckptdoctor.severity]\nBN001 = "warning"\n'
        ).returncode
        == 1
    )


def test_policy_overrides_by_path_glob(tmp_path):
    toml = '[[tool.ckptdoctor.overrides]]\npaths = ["*/finetune_trainable/*"]\nignore = ["BN001"]\n'
    findings = [f["name"] for r in json.loads(_policy_run(tmp_path, toml).stdout)["reports"] for f in r["findings"]]
    assert findings == ["nonfinite-values"]


def test_policy_errors_are_one_line(tmp_path):
    result = _policy_run(tmp_path, '[tool.ckptdoctor]\nignore = ["no-such-rule"]\n')
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown rule 'no-such-rule'" in result.stderr
    config = tmp_path / "policy.toml"
    config.write_text('ignore = ["BN001", "VAL001"]\n')
    assert run("check", *BROKEN[:2], "--config", config).returncode == 0


def test_rules_and_explain():
    listing = run("rules").stdout
    for rule in CATALOGUE:
        assert rule.code in listing and rule.name in listing
    explained = run("explain", "bn-missing-moving-stats")
    assert explained.returncode == 0
    assert "expected 4 variables, but received 2" in explained.stdout
    assert "Key .../BatchNorm/moving_mean not found in checkpoint" in explained.stdout
    assert run("explain", "bn001").stdout == explained.stdout
    missing = run("explain", "XYZ999")
    assert missing.returncode == 2 and "no such rule" in missing.stderr
