"""The JSON report shared by `inspect` and `check` (schema in docs/report.schema.json)."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ckptdoctor import __version__
from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.model import BatchNormStats, Report, Role, Severity, StatisticSummary, Variable
from ckptdoctor.names import encode_name, needs_escaping, shown

SCHEMA_VERSION = "1.2"  # 1.1: names shown escaped, name_hex where that changed them; 1.2: findings' key


def to_dict(report: Report) -> dict[str, Any]:
    roles = Counter(v.role.value for v in report.variables)
    severities = Counter(f.severity.value for f in report.findings)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ckptdoctor", "version": __version__},
        "path": shown(report.path),
        "resolved": shown(report.resolved),
        "file": shown(report.file),
        "format": report.format,
        "note": _shown_or_none(report.note),
        "summary": {
            "variables": len(report.variables),
            "bytes": sum(v.nbytes for v in report.variables),
            "by_role": {role.value: roles.get(role.value, 0) for role in Role},
            "batchnorm_layers": len(report.batchnorm),
            "findings": {s.value: severities.get(s.value, 0) for s in Severity},
        },
        "variables": [_variable(v) for v in report.variables],
        "batchnorm": [
            {
                "layer": shown(layer.layer),
                **{part: _shown_or_none(getattr(layer, part)) for part in PARTS},
                "missing": list(layer.missing_statistics),
            }
            for layer in report.batchnorm
        ],
        "findings": [
            {
                "code": f.code,
                "name": f.name,
                "severity": f.severity.value,
                "subject": shown(f.subject),
                **({"key": shown(f.key)} if f.key is not None else {}),
                "message": shown(f.message),
                "hint": shown(f.hint),
            }
            for f in report.findings
        ],
        **({} if report.batchnorm_stats is None else {"batchnorm_stats": list(map(_stats, report.batchnorm_stats))}),
    }


def _summary(summary: StatisticSummary | None) -> dict[str, Any] | None:
    return None if summary is None else dataclasses.asdict(summary)


def _stats(stats: BatchNormStats) -> dict[str, Any]:
    return {
        "layer": shown(stats.layer),
        "moving_mean": _summary(stats.moving_mean),
        "moving_variance": _summary(stats.moving_variance),
        "mean_change": stats.mean_change,
        "variance_change": stats.variance_change,
    }


def _shown_or_none(text: str | None) -> str | None:
    return None if text is None else shown(text)


def _variable(v: Variable) -> dict[str, Any]:
    """Names are shown escaped; where escaping changed the key, name_hex holds its exact bytes."""
    return {
        "name": shown(v.name),
        **({"name_hex": encode_name(v.name).hex()} if needs_escaping(v.name) else {}),
        "dtype": v.dtype,
        "shape": list(v.shape),
        "elements": math.prod(v.shape),
        "bytes": v.nbytes,
        "role": v.role.value,
        "layer": shown(v.layer),
        "path": shown(v.path),
        "full_name": _shown_or_none(v.full_name),
    }


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """One report as itself; several as {"schema_version", "reports": [...]}, in the order given.

    Every finding is listed whatever the threshold (the exit code says which ones fail)."""
    if len(reports) == 1:
        return json.dumps(to_dict(reports[0]), indent=2, ensure_ascii=False) + "\n"
    document = {"schema_version": SCHEMA_VERSION, "reports": [to_dict(report) for report in reports]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
