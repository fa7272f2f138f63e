"""BatchNorm moving statistics summarised per layer: a fixed handful of numbers each, for the report's charts.

Plain Python over the statistics' numbers, no numpy: a layer has at most a few thousand channels, and numpy's
import (~70 ms) would cost more than every summary of a 100-layer network together."""

from __future__ import annotations

import math
from collections.abc import Callable

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.model import BatchNormLayer, BatchNormStats, StatisticSummary

if TYPE_CHECKING:
    from ckptdoctor.dtypes import Numbers

Statistic = Callable[[str], "Numbers | None"]  # a statistic's numbers by key, None where unreadable


def _quantile(ordered: list[float], q: float) -> float:
    """numpy's default (linear) quantile of sorted values."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def summarize(values: Numbers) -> StatisticSummary:
    if math.isfinite(sum(values)):  # nothing is NaN or Inf (either would carry into the sum): no filter to run
        ordered = sorted(values)
    else:
        ordered = sorted(value for value in values if math.isfinite(value))
    if not ordered:
        return StatisticSummary(len(values), len(values), None, None, None, None, None, None)
    return StatisticSummary(
        size=len(values),
        nonfinite=len(values) - len(ordered),
        min=float(ordered[0]),
        q1=_quantile(ordered, 0.25),
        median=_quantile(ordered, 0.5),
        q3=_quantile(ordered, 0.75),
        max=float(ordered[-1]),
        mean=math.fsum(ordered) / len(ordered),
    )


def relative_change(mine: Numbers | None, theirs: Numbers | None) -> float | None:
    """max|a - b| / max(max|a|, max|b|) over the finite pairs: 0 identical, up to 2 (sign flipped)."""
    if mine is None or theirs is None or len(mine) != len(theirs):
        return None
    pairs = [(a, b) for a, b in zip(mine, theirs, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return None
    scale = max(max(abs(a), abs(b)) for a, b in pairs)
    return 0.0 if scale == 0 else max(abs(a - b) for a, b in pairs) / scale


def batchnorm_stats(
    target: Checkpoint, statistic: Statistic, reference: Checkpoint | None = None
) -> tuple[BatchNormStats, ...]:
    """One summary per BatchNorm layer of `target`, reading its statistics through `statistic` (which skips
    damaged tensors); with a reference, each statistic's change from the reference's matching layer."""

    def read(layer: BatchNormLayer, part: str, read_numbers: Statistic) -> Numbers | None:
        key = getattr(layer, part)
        return None if key is None else read_numbers(key)

    summaries = []
    for layer in target.batchnorm:
        mean, variance = read(layer, "moving_mean", statistic), read(layer, "moving_variance", statistic)
        changes: tuple[float | None, float | None] = (None, None)
        other = reference.find_layer(layer, target) if reference is not None else None
        if reference is not None and other is not None:
            changes = (
                relative_change(mean, read(other, "moving_mean", reference.numbers)),
                relative_change(variance, read(other, "moving_variance", reference.numbers)),
            )
        summaries.append(
            BatchNormStats(
                layer=layer.layer,
                moving_mean=None if mean is None else summarize(mean),
                moving_variance=None if variance is None else summarize(variance),
                mean_change=changes[0],
                variance_change=changes[1],
            )
        )
    return tuple(summaries)
