"""The JSON report shared by `inspect` and `check` (schema in docs/report.schema.json)."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

from ckptdoctor import TYPE_CHECKING, __version__
from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.model import BatchNormStats, Report, Role, Severity, StatisticSummary, Variable
from ckptdoctor.names import encode_name, shown

if TYPE_CHECKING:
    from typing import Any

SCHEMA_VERSION = "1.2"  # 1.1: names shown escaped, name_hex where that changed them; 1.2: findings' key


def to_dict(report: Report) -> dict[str, Any]:
    return _document(report, list)


class _Encoded(list):
    """Records already encoded, one JSON text each: `_pieces` writes them as they are."""


def _encoded(records: Iterable[Any]) -> _Encoded:
    """Each record encoded as soon as it is made, so that 100,000 variables never live as dicts at once."""
    return _Encoded(map(_ONE_LINE.encode, records))


def _document(report: Report, records: Callable[[Iterable[Any]], Any]) -> dict[str, Any]:
    """The report as JSON data; `records` makes each list of records (variables, layers, findings, stats)."""
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
        "variables": records(map(_variable, report.variables)),
        "batchnorm": records(
            {
                "layer": shown(layer.layer),
                **{part: _shown_or_none(getattr(layer, part)) for part in PARTS},
                "missing": list(layer.missing_statistics),
            }
            for layer in report.batchnorm
        ),
        "findings": records(
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
        ),
        **({} if report.batchnorm_stats is None else {"batchnorm_stats": records(map(_stats, report.batchnorm_stats))}),
    }


def _summary(summary: StatisticSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return dict(zip(_SUMMARY_KEYS, summary, strict=True))


# The record's fields as the JSON report names them: `size` is `count` there (a tuple's `count` is a method).
_SUMMARY_KEYS = tuple("count" if name == "size" else name for name in StatisticSummary._fields)


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
    name = shown(v.name)
    return {
        "name": name,
        **({"name_hex": encode_name(v.name).hex()} if name != v.name else {}),  # escaping changed it
        "dtype": v.dtype,
        "shape": list(v.shape),
        "elements": math.prod(v.shape),
        "bytes": v.nbytes,
        "role": v.role.value,
        "layer": _shown_layer(v.layer),
        "path": name if v.path == v.name else shown(v.path),  # TF1: the path is the key
        "full_name": _shown_or_none(v.full_name),
    }


@functools.lru_cache(maxsize=4096)
def _shown_layer(layer: str) -> str:
    """A layer's name, escaped once for all its variables."""
    return shown(layer)


# json's C encoder runs only without `indent` (the indenting encoder is pure Python: seconds for 100,000
# variables), so the layout is ours: containers indented down to a record, each record on one line.
_ONE_LINE = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), allow_nan=True)
_INDENT = "  "


def _pieces(value: Any, levels: int, indent: str = "") -> Iterator[str]:
    """`value`'s text in pieces, its containers indented `levels` deep and anything deeper on one line (C
    encoder); a record list (`_Encoded`) one record per line. Pieces, joined once by the caller: joining at each
    level would copy 100,000 variables' text once per level."""
    if (levels <= 0 and not isinstance(value, _Encoded)) or not isinstance(value, (dict, list)) or not value:
        yield _ONE_LINE.encode(value)
        return
    inner = indent + _INDENT
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    yield opening
    for number, item in enumerate(value.items() if isinstance(value, dict) else value):
        yield ("\n" if number == 0 else ",\n") + inner
        if isinstance(value, _Encoded):
            yield item  # a record, encoded already
        elif isinstance(value, dict):
            key, item_value = item
            yield _ONE_LINE.encode(key) + ": "
            yield from _pieces(item_value, levels - 1, inner)
        else:
            yield from _pieces(item, levels - 1, inner)
    yield f"\n{indent}{closing}"


def _text(document: dict[str, Any], levels: int) -> str:
    return "".join((*_pieces(document, levels), "\n"))


_REPORT_LEVELS = 2  # the report's keys, then one line per variable, layer, finding and summary entry


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """One report as itself; several as {"schema_version", "reports": [...]}, in the order given.

    Every finding is listed whatever the threshold (the exit code says which ones fail)."""
    if len(reports) == 1:
        return _text(_document(reports[0], _encoded), _REPORT_LEVELS)
    document = {"schema_version": SCHEMA_VERSION, "reports": [_document(report, _encoded) for report in reports]}
    return _text(document, _REPORT_LEVELS + 2)
