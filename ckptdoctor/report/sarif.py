"""SARIF 2.1.0 for code-scanning dashboards: the rule catalogue as driver rules, one result per finding."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckptdoctor import __version__
from ckptdoctor.model import Report, Severity
from ckptdoctor.rules import CATALOGUE

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def artifact_uri(path: str) -> str:
    """Relative paths stay relative (code scanning resolves them against the repository); others are file URIs."""
    candidate = Path(path)
    return candidate.resolve().as_uri() if candidate.is_absolute() else candidate.as_posix()


def to_dict(reports: list[Report]) -> dict[str, Any]:
    index = {rule.code: position for position, rule in enumerate(CATALOGUE)}
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
        for rule in CATALOGUE
    ]
    results = [
        {
            "ruleId": finding.code,
            "ruleIndex": index[finding.code],
            "level": _LEVEL[finding.severity],
            "message": {"text": f"{finding.message}. Hint: {finding.hint}"},
            "locations": [
                {
                    "physicalLocation": {"artifactLocation": {"uri": artifact_uri(report.file)}},
                    "logicalLocations": [
                        {"name": finding.subject, "fullyQualifiedName": finding.subject, "kind": "variable"}
                    ],
                }
            ],
        }
        for report in reports
        for finding in report.findings
    ]
    driver = {
        "name": "ckptdoctor",
        "version": __version__,
        "rules": rules,
    }
    return {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [{"tool": {"driver": driver}, "results": results}]}


def render(reports: list[Report]) -> str:
    return json.dumps(to_dict(reports), indent=2, ensure_ascii=False) + "\n"
