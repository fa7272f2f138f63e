"""BatchNorm moving statistics summarised per layer: a fixed handful of numbers each, for the report's charts.

Plain Python over the statistics' numbers: a layer has at most a few thousand channels, and numpy's import
(~70 ms) would cost more than every summary of a 100-layer network together. numpy takes over only for a
statistic too large for Python floats (`SORTED_IN_PYTHON_UP_TO`)."""

from __future__ import annotations

import math
from collections.abc import Callable

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.checkpoint import Checkpoint
from ckptdoctor.model import BatchNormLayer, BatchNormStats, StatisticSummary

if TYPE_CHECKING:
    import numpy as np

    from ckptdoctor.dtypes import Numbers

Statistic = Callable[[str], "Numbers | None"]  # a statistic's numbers by key, None where unreadable


# Past this many elements a statistic is sorted by numpy. As Python floats (~40 bytes each while sorting) a
# crafted 200 MB statistic took 2.5 GiB and 27 s; numpy's sort takes what it took before plain numbers. No
# BatchNorm layer has that many channels, so checking a real network never imports numpy here.
SORTED_IN_PYTHON_UP_TO = 1 << 16


def _quantile(ordered: list[float] | np.ndarray, q: float) -> float:
    """numpy's default (linear) quantile of sorted values, finite for finite values of any size."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    below, above, fraction = float(ordered[low]), float(ordered[high]), position - low
    value = below + (above - below) * fraction
    # The difference of two values near opposite ends of the float range overflows; their weighted sum cannot.
    return value if math.isfinite(value) else below * (1 - fraction) + above * fraction


def _ordered_and_mean(values: Numbers) -> tuple[list[float], float]:
    """The finite values in ascending order, and their exact mean: finite even where their sum is not (values
    near 1.8e308)."""
    if math.isfinite(sum(values)):  # nothing is NaN or Inf (either would carry into the sum): no filter to run
        ordered = sorted(values)
    else:
        ordered = sorted(value for value in values if math.isfinite(value))
    if not ordered:
        return ordered, math.nan
    try:
        mean = math.fsum(ordered) / len(ordered)
    except OverflowError:  # values near ±1.8e308: their sum overflows, the sum of their quarters' shares cannot
        mean = math.fsum(value / 4 / len(ordered) for value in ordered) * 4
    return ordered, _within(mean, ordered)


def _ordered_and_mean_by_numpy(values: Numbers) -> tuple[np.ndarray, float]:
    """`_ordered_and_mean` for a statistic too large for Python floats (numpy sums pairwise, not exactly)."""
    import numpy as np

    stored = np.asarray(values, dtype=np.float64)  # a view of the array's buffer: no object per element
    ordered = stored[np.isfinite(stored)]  # a copy, sorted in place: the cached statistic stays as read
    ordered.sort()
    if not ordered.size:
        return ordered, math.nan
    with np.errstate(over="ignore", invalid="ignore"):  # a sum past the largest float, then inf - inf
        mean = float(ordered.mean())
        if not math.isfinite(mean):
            mean = float((ordered / 4 / ordered.size).sum()) * 4
    return ordered, _within(mean, ordered)


def _within(mean: float, ordered: list[float] | np.ndarray) -> float:
    """The mean kept between the least and the greatest value, where a rounding could take it past them (to
    infinity, next to the largest float)."""
    return min(max(mean, float(ordered[0])), float(ordered[-1]))


def summarize(values: Numbers) -> StatisticSummary:
    large = len(values) > SORTED_IN_PYTHON_UP_TO
    ordered, mean = _ordered_and_mean_by_numpy(values) if large else _ordered_and_mean(values)
    if not len(ordered):
        return StatisticSummary(len(values), len(values), None, None, None, None, None, None)
    return StatisticSummary(
        size=len(values),
        nonfinite=len(values) - len(ordered),
        min=float(ordered[0]),
        q1=_quantile(ordered, 0.25),
        median=_quantile(ordered, 0.5),
        q3=_quantile(ordered, 0.75),
        max=float(ordered[-1]),
        mean=mean,
    )


def relative_change(mine: Numbers | None, theirs: Numbers | None) -> float | None:
    """max|a - b| / max(max|a|, max|b|) over the finite pairs: 0 identical, up to 2 (sign flipped). Computed on
    halves: the difference of two values near 1.8e308 of opposite sign overflows, that of their halves cannot."""
    if mine is None or theirs is None or len(mine) != len(theirs):
        return None
    if len(mine) > SORTED_IN_PYTHON_UP_TO:
        return _relative_change_by_numpy(mine, theirs)
    scale = difference = -1.0
    for a, b in zip(mine, theirs, strict=True):
        if math.isfinite(a) and math.isfinite(b):
            scale = max(scale, abs(a / 2), abs(b / 2))
            difference = max(difference, abs(a / 2 - b / 2))
    return None if scale < 0 else 0.0 if scale == 0 else difference / scale


def _relative_change_by_numpy(mine: Numbers, theirs: Numbers) -> float | None:
    import numpy as np

    a, b = (np.asarray(values, dtype=np.float64) / 2 for values in (mine, theirs))
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return None
    a, b = a[both], b[both]
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
    return 0.0 if scale == 0 else float(np.abs(a - b).max()) / scale


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
