"""SARIF 2.1.0 for code-scanning dashboards: the rules that ran as driver rules, one result per finding.

`tool.driver.rules` lists the rules the reports' command evaluated (those of `Report.rules`), not the whole
catalogue: a check's SARIF describes no MAP rule (match's) and, without --reference, not BN003."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ckptdoctor import TYPE_CHECKING, __version__
from ckptdoctor.model import Finding, Report, Severity
from ckptdoctor.names import shown
from ckptdoctor.rules import CATALOGUE, Rule

if TYPE_CHECKING:
    from typing import Any

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def artifact_uri(path: str) -> str:
    """Relative paths stay relative (code scanning resolves them against the repository), percent-encoded from
    their exact bytes so that a space, `#`, `%` or an undecodable byte makes a valid URI; others are file URIs."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate.resolve().as_uri()  # percent-encodes the path's bytes itself
    return quote(os.fsencode(candidate.as_posix()), safe="/")


def _logical_location(finding: Finding) -> dict[str, str]:
    """The subject as inspect names it; the raw checkpoint key, where it differs, as its decorated (machine)
    name, the way SARIF pairs a readable name with a mangled one."""
    subject = shown(finding.subject)
    location = {"name": subject, "fullyQualifiedName": subject, "kind": "variable"}
    if finding.key is not None:
        location["decoratedName"] = shown(finding.key)
    return location


def _result(file: str, finding: Finding, rule_index: int) -> dict[str, Any]:
    return {
        "ruleId": finding.code,
        "ruleIndex": rule_index,
        "level": _LEVEL[finding.severity],
        "message": {"text": shown(f"{finding.message}. Hint: {finding.hint}")},
        "locations": [
            {
                "physicalLocation": {"artifactLocation": {"uri": artifact_uri(file)}},
                "logicalLocations": [_logical_location(finding)],
            }
        ],
    }


def _rules_run(reports: Sequence[Report]) -> list[Rule]:
    """The catalogue's rules that ran on any of the reports, or made a finding in one, in catalogue order."""
    codes = {code for report in reports if report.rules is not None for code in report.rules.ran}
    codes.update(finding.code for report in reports for finding in report.findings)
    return [rule for rule in CATALOGUE if rule.code in codes]


def to_dict(reports: Sequence[Report]) -> dict[str, Any]:
    described = _rules_run(reports)
    index = {rule.code: position for position, rule in enumerate(described)}
    rules = [
        {
            "id": rule.code,
            "name": rule.name,
            "shortDescription": {"text": rule.title},
            "fullDescription": {"text": rule.explanation},
            "help": {
                "text": f"{rule.explanation}\n\nFix: {rule.hint}",
                "markdown": f"{rule.explanation}\n\n**Fix:** {rule.hint}",
            },
            "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        }
        for rule in described
    ]
    results = [_result(report.file, finding, index[finding.code]) for report in reports for finding in report.findings]
    driver = {
        "name": "ckptdoctor",
        "version": __version__,
        "rules": rules,
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [{"tool": {"driver": driver}, "results": results}]}


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """Every finding is a result at its own level, whatever the threshold."""
    return json.dumps(to_dict(reports), indent=2, ensure_ascii=False) + "\n"
