"""The JSON report shared by `inspect` and `check` (schema in docs/report.schema.json)."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from ckptdoctor import __version__
from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.model import Report, Role, Severity

SCHEMA_VERSION = "1.0"


def to_dict(report: Report) -> dict[str, Any]:
    roles = Counter(v.role.value for v in report.variables)
    severities = Counter(f.severity.value for f in report.findings)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ckptdoctor", "version": __version__},
        "path": report.path,
        "resolved": report.resolved,
        "file": report.file,
        "format": report.format,
        "note": report.note,
        "summary": {
            "variables": len(report.variables),
            "bytes": sum(v.nbytes for v in report.variables),
            "by_role": {role.value: roles.get(role.value, 0) for role in Role},
            "batchnorm_layers": len(report.batchnorm),
            "findings": {s.value: severities.get(s.value, 0) for s in Severity},
        },
        "variables": [
            {
                "name": v.name,
                "dtype": v.dtype,
                "shape": list(v.shape),
                "elements": math.prod(v.shape),
                "bytes": v.nbytes,
                "role": v.role.value,
                "layer": v.layer,
                "path": v.path,
                "full_name": v.full_name,
            }
            for v in report.variables
        ],
        "batchnorm": [
            {
                "layer": layer.layer,
                **{part: getattr(layer, part) for part in PARTS},
                "missing": list(layer.missing_statistics),
            }
            for layer in report.batchnorm
        ],
        "findings": [
            {
                "code": f.code,
                "name": f.name,
                "severity": f.severity.value,
                "subject": f.subject,
                "message": f.message,
                "hint": f.hint,
            }
            for f in report.findings
        ],
    }


def render(report: Report) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"


def render_many(reports: list[Report]) -> str:
    """One report as itself; several as {"schema_version", "reports": [...]}, in the order given."""
    if len(reports) == 1:
        return render(reports[0])
    document = {"schema_version": SCHEMA_VERSION, "reports": [to_dict(report) for report in reports]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
