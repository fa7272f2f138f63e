"""`ckptdoctor diff --format json` (schema in docs/diff.schema.json).

Names are shown escaped like the JSON report's; where escaping changed a key, `name_hex` holds its bytes.
Numbers are finite JSON numbers: a difference that overflows float64 is written as the string "inf"."""

from __future__ import annotations

import json
import math

from ckptdoctor import TYPE_CHECKING, __version__
from ckptdoctor.diff import PARAMETERS, STATISTICS, CheckpointRef, DiffReport, Outcome, Side, TensorDiff
from ckptdoctor.names import encode_name, needs_escaping, shown

if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = "1.0"


def _name(key: str, name: str) -> dict[str, str]:
    return {key: shown(name), **({f"{key}_hex": encode_name(name).hex()} if needs_escaping(name) else {})}


def _number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "inf"


def _checkpoint(ref: CheckpointRef) -> dict[str, Any]:
    return {
        "path": shown(ref.path),
        "resolved": shown(ref.resolved),
        "format": ref.format,
        "note": None if ref.note is None else shown(ref.note),
    }


def _side(side: Side) -> dict[str, Any]:
    return {
        **_name("name", side.name),
        "dtype": side.dtype,
        "shape": list(side.shape),
        "role": side.role.value,
        "batchnorm_layer": None if side.batchnorm_layer is None else shown(side.batchnorm_layer),
    }


def _tensor(tensor: TensorDiff) -> dict[str, Any]:
    """Every item has `name` (A's key, or B's for an added tensor), `role` and the sides it exists in."""
    item: dict[str, Any] = {
        **_name("name", tensor.name),
        "role": tensor.role.value,
        "framework_name": shown(tensor.framework_name),
        "matched_by": None if tensor.matched_by is None else tensor.matched_by.value,
        "a": None if tensor.a is None else _side(tensor.a),
        "b": None if tensor.b is None else _side(tensor.b),
    }
    if tensor.outcome is Outcome.CHANGED:
        values = tensor.values
        item |= {
            "dtype_changed": tensor.dtype_changed,
            "shape_changed": tensor.shape_changed,
            "values_compared": values is not None,
            "elements": None if values is None else values.elements,
            "differing": None if values is None else values.differing,
            "nonfinite_mismatches": None if values is None else values.nonfinite_mismatches,
            "max_abs_diff": None if values is None else _number(values.max_abs_diff),
            "max_rel_diff": None if values is None else _number(values.max_rel_diff),
        }
    if tensor.outcome is Outcome.UNREADABLE:
        item["unreadable_in"] = list(tensor.unreadable_in)
    return item


def to_dict(report: DiffReport) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "ckptdoctor", "version": __version__},
        "a": _checkpoint(report.a),
        "b": _checkpoint(report.b),
        "tolerance": {"atol": report.atol, "rtol": report.rtol, "nan_equals_nan": True},
        "identical": report.identical,
        "summary": {
            "compared": report.compared,
            "changed": len(report.changed),
            "added": len(report.added),
            "removed": len(report.removed),
            "unreadable": len(report.unreadable),
            "by_role": {
                summary.role.value: {
                    "compared": summary.compared,
                    "changed": summary.changed,
                    "added": summary.added,
                    "removed": summary.removed,
                    "unreadable": summary.unreadable,
                }
                for summary in report.roles
            },
        },
        "batchnorm": [
            {
                "layer": shown(layer.layer),
                "name": shown(layer.name),
                "parts": {part: outcome.value for part, outcome in layer.parts},
                "parameters_compared": layer.count(PARAMETERS, Outcome.CHANGED, Outcome.UNCHANGED),
                "parameters_changed": layer.count(PARAMETERS, Outcome.CHANGED),
                "statistics_compared": layer.count(STATISTICS, Outcome.CHANGED, Outcome.UNCHANGED),
                "statistics_changed": layer.count(STATISTICS, Outcome.CHANGED),
            }
            for layer in report.batchnorm
        ],
        "changed": [_tensor(t) for t in report.changed],
        "added": [_tensor(t) for t in report.added],
        "removed": [_tensor(t) for t in report.removed],
        "unreadable": [_tensor(t) for t in report.unreadable],
    }


def render(report: DiffReport) -> str:
    return json.dumps(to_dict(report), indent=2, ensure_ascii=False) + "\n"
