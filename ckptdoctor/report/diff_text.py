"""`ckptdoctor diff` as text for a person: summaries by role and by BatchNorm layer, then the tensors.

Plain text, never markup: every name from a checkpoint goes through `names.shown`, one line per item."""

from __future__ import annotations

from ckptdoctor.diff import PARAMETERS, STATISTICS, CheckpointRef, DiffReport, LayerDiff, Outcome, Side, TensorDiff
from ckptdoctor.model import Role
from ckptdoctor.names import shown

_MARK = {Outcome.CHANGED: "~", Outcome.ADDED: "+", Outcome.REMOVED: "-", Outcome.UNREADABLE: "!"}


def _number(value: float) -> str:
    return f"{value:.6g}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _checkpoint(ref: CheckpointRef) -> str:
    return f"{shown(ref.resolved)} ({ref.format})"


def tolerance_text(report: DiffReport) -> str:
    nan = "NaN at the same position in both counts as equal"
    if report.atol == 0 and report.rtol == 0:
        return f"exact: floats bit for bit ({nan}), integers, booleans and strings exactly"
    return (
        f"floats within atol {_number(report.atol)} or rtol {_number(report.rtol)} of max(|a|, |b|) ({nan}); "
        "integers, booleans and strings exactly"
    )


def headline(report: DiffReport) -> str:
    """`12 weights changed, 0 of 8 BatchNorm statistics changed`: what a fine-tune without update ops shows."""
    weights = next((r for r in report.roles if r.role is Role.WEIGHT), None)
    statistics = sum(layer.count(STATISTICS, Outcome.CHANGED, Outcome.UNCHANGED) for layer in report.batchnorm)
    statistics_changed = sum(layer.count(STATISTICS, Outcome.CHANGED) for layer in report.batchnorm)
    text = (
        f"{_plural(weights.changed if weights else 0, 'weight')} changed, "
        f"{statistics_changed} of {statistics} BatchNorm statistics changed"
    )
    for outcome in (Outcome.REMOVED, Outcome.ADDED, Outcome.UNREADABLE):
        count = sum(len(layer.with_outcome(STATISTICS, outcome)) for layer in report.batchnorm)
        if count:
            text += f", {count} {outcome.value}"
    return text


def _counts(changed: int, compared: int, added: int, removed: int, unreadable: int) -> str:
    parts = [f"{changed} of {compared} changed"]
    parts += [f"{count} {what}" for count, what in ((added, "added"), (removed, "removed")) if count]
    if unreadable:
        parts.append(f"{unreadable} unreadable")
    return ", ".join(parts)


def _layer_line(layer: LayerDiff) -> str:
    name = shown(layer.layer) + (f" ({shown(layer.name)})" if layer.name != layer.layer else "")
    groups = []
    for label, kinds in (("parameters", PARAMETERS), ("statistics", STATISTICS)):
        compared = layer.count(kinds, Outcome.CHANGED, Outcome.UNCHANGED)
        text = f"{label} {layer.count(kinds, Outcome.CHANGED)} of {compared} changed"
        for outcome in (Outcome.ADDED, Outcome.REMOVED, Outcome.UNREADABLE):
            parts = layer.with_outcome(kinds, outcome)
            if parts:
                text += f", {' and '.join(parts)} {outcome.value}"
        groups.append(text)
    return f"  {name}: {'; '.join(groups)}"


def _spec(side: Side) -> str:
    return f"{shown(side.dtype)}[{', '.join(map(str, side.shape))}]"


def _item(tensor: TensorDiff) -> str:
    words = [f"  {_MARK[tensor.outcome]} {shown(tensor.name)}"]
    aliases = [shown(tensor.framework_name)] if tensor.framework_name != tensor.name else []
    if tensor.a is not None and tensor.b is not None and tensor.a.name != tensor.b.name:
        aliases.append(f"B: {shown(tensor.b.name)}")
    if aliases:  # `layers/batch_normalization/vars/2 (bn_default/moving_mean)`
        words.append(f"({'; '.join(aliases)})")
    words.append(tensor.role.value)
    specs = dict.fromkeys(_spec(side) for side in (tensor.a, tensor.b) if side is not None)
    words.append(" -> ".join(specs))  # `float32[8] -> float64[8]` where the dtype or shape changed
    values = tensor.values
    if tensor.outcome is Outcome.UNREADABLE:
        words.append(f"bytes unreadable in {' and '.join(side.upper() for side in tensor.unreadable_in)}")
    elif tensor.outcome is Outcome.CHANGED and values is None:
        words.append("values not compared")
    elif tensor.outcome is Outcome.CHANGED and values is not None:
        detail = f"{values.differing} of {values.elements} elements differ"
        finite_differences = values.differing > values.nonfinite_mismatches
        if finite_differences and values.max_abs_diff is not None and values.max_rel_diff is not None:
            detail += f", max abs {_number(values.max_abs_diff)}, max rel {_number(values.max_rel_diff)}"
        if values.nonfinite_mismatches:
            detail += f", {values.nonfinite_mismatches} NaN/Inf on one side only"
        words.append(detail)
    return "  ".join(words)


def render(report: DiffReport) -> str:
    lines = [
        f"diff A {_checkpoint(report.a)}",
        f"  to B {_checkpoint(report.b)}",
        *(f"note: {shown(ref.note)}" for ref in (report.a, report.b) if ref.note),
        f"compared {report.compared} tensors: {tolerance_text(report)}",
        "by role:",
        *(
            f"  {summary.role.value:<15} "
            + _counts(summary.changed, summary.compared, summary.added, summary.removed, summary.unreadable)
            for summary in report.roles
        ),
    ]
    if report.batchnorm:
        lines += ["by BatchNorm layer:", *(_layer_line(layer) for layer in report.batchnorm)]
    lines.append(f"summary: {headline(report)}")
    for outcome, items in (
        (Outcome.CHANGED, report.changed),
        (Outcome.REMOVED, report.removed),
        (Outcome.ADDED, report.added),
        (Outcome.UNREADABLE, report.unreadable),
    ):
        if items:
            lines.append(f"{outcome.value} ({len(items)}):")
            lines += [_item(tensor) for tensor in items]
    if report.identical:
        lines.append("identical: every common tensor is equal, nothing added or removed")
    else:
        lines.append(
            f"differ: {len(report.changed)} changed, {len(report.added)} added, {len(report.removed)} removed, "
            f"{len(report.unreadable)} unreadable"
        )
    return "\n".join(lines) + "\n"
