"""check as a CI gate: SARIF valid against the official schema, JUnit, GitHub commands, --output, policy."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_BUNDLES, FIXTURES, KERAS, REALWORLD, ROOT, bundle_header, entry_proto, run_cli, write_index

from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.rules import CATALOGUE, Command

jsonschema = pytest.importorskip("jsonschema")
BROKEN = [
    str(FIXTURE_BUNDLES["finetune_trainable"]),
    str(KERAS / "stats_nan" / "model.weights.h5"),
    str(FIXTURE_BUNDLES["finetune_full"]),
]
REFERENCE = ["--reference", str(FIXTURE_BUNDLES["pretrained"])]
MATCH = [str(FIXTURES / "match" / "head"), "--meta-graph", str(FIXTURES / "match" / "model.meta")]
# What the catalogue says each command evaluates: read from the rules' data, never a list of codes
CHECK_RULES = {rule.code for rule in CATALOGUE if rule.command is Command.CHECK}
MATCH_RULES = {rule.code for rule in CATALOGUE if rule.command is Command.MATCH}
NEEDS_REFERENCE = {rule.code for rule in CATALOGUE if rule.needs_reference}


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
    assert set(rules) == CHECK_RULES - NEEDS_REFERENCE  # the rules that ran: no MAP rule, no BN003 without --reference
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
    cases = {case.get("name").split()[0]: case for case in suites[2].iter("testcase")}  # no findings
    assert set(cases) == CHECK_RULES  # every rule check runs, once
    assert {code for code, case in cases.items() if case.find("skipped") is None} == CHECK_RULES - NEEDS_REFERENCE


def test_junit_warnings_below_fail_on_are_not_failures():
    noupdate = [FIXTURE_BUNDLES["finetune_noupdate"], "--reference", FIXTURE_BUNDLES["pretrained"]]
    root = ET.fromstring(run("check", *noupdate, "--format", "junit").stdout)
    assert root.get("failures") == "0"
    root = ET.fromstring(run("check", *noupdate, "--format", "junit", "--fail-on", "warning").stdout)
    assert root.get("failures") == "4"


def _cases(suite: ET.Element) -> dict[str, list[ET.Element]]:
    """A testsuite's testcases by rule code (the first word of each name)."""
    cases: dict[str, list[ET.Element]] = {}
    for case in suite.iter("testcase"):
        cases.setdefault(case.get("name").split()[0], []).append(case)
    return cases


def test_junit_claims_only_the_rules_check_ran():
    """A rule of `match` is no testcase of a check; a rule needing --reference is skipped without one (saying
    so), and is a real testcase (passed, or its findings) with one."""
    assert MATCH_RULES and NEEDS_REFERENCE <= CHECK_RULES and NEEDS_REFERENCE
    full, noupdate = str(FIXTURE_BUNDLES["finetune_full"]), str(FIXTURE_BUNDLES["finetune_noupdate"])
    result = run("check", full, "--format", "junit")
    assert result.returncode == 0, result.stderr
    (suite,) = ET.fromstring(result.stdout).findall("testsuite")
    cases = _cases(suite)
    assert set(cases) == CHECK_RULES
    skipped = {code: case.find("skipped") for code, (case,) in cases.items() if case.find("skipped") is not None}
    assert set(skipped) == NEEDS_REFERENCE
    assert {element.get("message") for element in skipped.values()} == {"needs --reference"}
    assert (suite.get("tests"), suite.get("skipped")) == (str(len(CHECK_RULES)), str(len(NEEDS_REFERENCE)))

    (suite,) = ET.fromstring(run("check", full, *REFERENCE, "--format", "junit").stdout).findall("testsuite")
    cases = _cases(suite)
    assert set(cases) == CHECK_RULES and suite.get("skipped") == "0"
    assert all(case.find("skipped") is None for members in cases.values() for case in members)
    result = run("check", noupdate, *REFERENCE, "--format", "junit", "--fail-on", "warning")
    (suite,) = ET.fromstring(result.stdout).findall("testsuite")
    flagged = [case for code in NEEDS_REFERENCE for case in _cases(suite)[code]]
    assert len(flagged) == 4 and all(case.find("failure") is not None for case in flagged)  # ran, and failed


def test_a_rule_the_policy_ignores_is_skipped_not_passed(tmp_path):
    """`ignore = ["bn-stats-at-init"]`: the rule ran, but its verdict was thrown away, so a CI report must not
    show it as a passed test; its findings go too, and SARIF does not describe it."""
    config = tmp_path / "policy.toml"
    config.write_text('ignore = ["bn-stats-at-init"]\n', encoding="utf-8")
    noupdate = str(FIXTURE_BUNDLES["finetune_noupdate"])
    result = run("check", noupdate, "--config", str(config), "--format", "junit")
    (suite,) = ET.fromstring(result.stdout).findall("testsuite")
    (case,) = _cases(suite)["BN002"]
    assert case.find("skipped").get("message") == "ignored by the policy" and case.find("failure") is None
    assert suite.get("skipped") == str(len(NEEDS_REFERENCE) + 1)
    sarif = json.loads(run("check", noupdate, "--config", str(config), "--format", "sarif").stdout)
    assert "BN002" not in _sarif_rules(sarif)


def test_junit_of_match_lists_only_match_rules():
    result = run("match", *MATCH, "--format", "junit")
    assert result.returncode == 1, result.stderr
    (suite,) = ET.fromstring(result.stdout).findall("testsuite")
    cases = _cases(suite)
    assert set(cases) == MATCH_RULES
    assert any(case.find("failure") is not None for case in cases["MAP002"])  # the head's shape mismatch


def _sarif_rules(document: dict) -> list[str]:
    """The driver's rule ids, after checking that every result's ruleIndex points at its own rule."""
    (sarif_run,) = document["runs"]
    ids = [rule["id"] for rule in sarif_run["tool"]["driver"]["rules"]]
    assert all(ids[result["ruleIndex"]] == result["ruleId"] for result in sarif_run["results"])
    return ids


def test_sarif_describes_only_the_rules_that_ran():
    schema_path = REALWORLD.parent / "schemas" / "sarif-schema-2.1.0.json"
    schema = json.loads(schema_path.read_text()) if schema_path.is_file() else None
    catalogue_order = [rule.code for rule in CATALOGUE]
    documents = {
        "check": run("check", str(FIXTURE_BUNDLES["finetune_full"]), "--format", "sarif"),
        "check --reference": run("check", str(FIXTURE_BUNDLES["finetune_noupdate"]), *REFERENCE, "-f", "sarif"),
        "match": run("match", *MATCH, "--format", "sarif"),
    }
    expected = {
        "check": CHECK_RULES - NEEDS_REFERENCE,
        "check --reference": CHECK_RULES,
        "match": MATCH_RULES,
    }
    for invocation, result in documents.items():
        document = json.loads(result.stdout)
        if schema is not None:
            jsonschema.validate(document, schema)
        ids = _sarif_rules(document)
        assert set(ids) == expected[invocation], invocation
        assert ids == [code for code in catalogue_order if code in ids]  # catalogue order, each once
    assert document["runs"][0]["results"]  # match's findings are still reported


def _one_layer_checkpoint(tmp_path: Path) -> Path:
    """A bundle holding one variable, the beta of one BatchNorm layer without its moving statistics."""
    ones = np.ones(4, "<f4").tobytes()
    entry = entry_proto([4], len(ones), 0, crc=mask(crc32c(ones)))
    return write_index(tmp_path / "model.ckpt", [bundle_header(), (b"bn/beta", entry)], ones)


def test_markdown_counts_in_singular_and_plural(tmp_path):
    one = run("check", _one_layer_checkpoint(tmp_path), "--format", "markdown")
    assert one.returncode == 1, one.stderr
    assert "❌ **fail**: 1 finding at or above error" in one.stdout
    assert "(tf1-name-based): 1 variable, 1 BatchNorm layer; 1 error\n" in one.stdout
    many = run(
        "check",
        FIXTURE_BUNDLES["finetune_trainable"],
        FIXTURE_BUNDLES["finetune_noupdate"],
        *REFERENCE,
        "-f",
        "markdown",
    )
    assert "❌ **fail**: 4 findings at or above error" in many.stdout
    assert "(tf1-name-based): 13 variables, 4 BatchNorm layers; 4 errors\n" in many.stdout
    assert "BatchNorm layers; 4 warnings\n" in many.stdout


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
