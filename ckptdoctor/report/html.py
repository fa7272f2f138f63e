"""One self-contained HTML page for a person: summary, findings by rule with the fix, and BatchNorm charts.

No scripts, styles, fonts or images are loaded from anywhere: the style is inline and the charts are inline
SVG drawn here, so the page works offline and as a CI artifact. Every name goes through `names.shown` and
then HTML escaping. The page is also well-formed XML (quoted attributes, closed elements, no named entities
but XML's own), which is how the tests check its structure.

Size stays bounded whatever the checkpoint: an overview chart bins all layers into at most OVERVIEW_BINS
columns; a row of charts per layer is drawn for up to LAYER_ROWS layers, beyond that for the LAYER_ROWS that
matter most (findings first, then the ones furthest from the typical statistics); each rule lists at most
FINDINGS_PER_RULE findings. The JSON report has everything."""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence

from ckptdoctor import __version__
from ckptdoctor.model import BatchNormStats, Finding, Report, Severity, StatisticSummary
from ckptdoctor.names import shown
from ckptdoctor.typed import NamedTuple

LAYER_ROWS = 300  # layers drawn one row each; more layers: the LAYER_ROWS that matter most
OVERVIEW_BINS = 500  # columns of the overview chart; consecutive layers share a column beyond that
OVERVIEW_FROM = 30  # more layers than fit a screen as rows: an overview chart of all of them comes first
FINDINGS_PER_RULE = 50  # findings listed under each rule; the rest are counted
OPEN_FINDINGS = 20  # up to this many findings the rules are shown open; more: closed, so the charts stay in view

_BOX_WIDTH, _BOX_HEIGHT = 300, 16  # one layer's distribution chart
_CHANGE_WIDTH = 140  # one layer's "moved from the reference" bar
_OVERVIEW_WIDTH, _PANEL_HEIGHT, _TRACK_HEIGHT = 1000, 110, 10
_MARGIN = 56  # left margin of the overview for tick labels
_MAX_COLUMN = 16  # widest overview column: a few layers make a narrow chart, not wide blocks
_TITLE = 16  # a panel's title band

_COLOUR = {Severity.ERROR: "#c62828", Severity.WARNING: "#ef6c00", Severity.INFO: "#1565c0", None: "#546e7a"}
_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1c2329;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;word-break:break-all}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#5f6b73;margin:0 0 12px}
table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:middle}
.summary td:first-child{color:#5f6b73}.layers td,.layers th{border-bottom:1px solid #eceff1}
.layers th{position:sticky;top:0;background:#fff;font-weight:600;vertical-align:bottom}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere;min-width:200px;max-width:420px}
.badge{display:inline-block;border-radius:3px;padding:0 6px;color:#fff;font-size:12px;font-weight:600}
.pass{background:#2e7d32}.fail{background:#c62828}.error{background:#c62828}.warning{background:#ef6c00}
.info{background:#1565c0}details{margin:6px 0;border:1px solid #dfe3e6;border-radius:4px;padding:4px 10px}
summary{cursor:pointer;font-weight:600}.fix{background:#f1f8e9;padding:4px 8px;border-radius:3px}
li{margin:2px 0}.subject{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.muted{color:#78858d;font-size:12px}svg text{font-family:system-ui,sans-serif;font-size:10px;fill:#5f6b73}
"""


def _text(text: str) -> str:
    """Untrusted text for HTML: escaped for display, then for markup (quotes too: it may sit in an attribute)."""
    return html.escape(shown(text), quote=True)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _percent(value: float) -> str:
    return f"{value * 100:.3g}%"


# ---- scales -----------------------------------------------------------------------------------------------


class _Scale(NamedTuple):
    """Values to pixels along [0, width]: `transform` maps a value to an axis unit (log10 for variances, a
    symmetric log for means), clamped to the domain so that an outlier sits at the edge instead of off it."""

    transform: Callable[[float], float]
    low: float
    high: float
    width: float
    ticks: tuple[float, ...]

    def x(self, value: float) -> float:
        unit = min(max(self.transform(value), self.low), self.high)
        return (unit - self.low) / (self.high - self.low) * self.width


def _symlog(value: float) -> float:
    """Linear near 0, logarithmic beyond ±1: means of a few tenths and a broken 1e30 fit on one axis."""
    return math.copysign(math.log10(1 + abs(value)), value)


def _log10(value: float) -> float:
    return math.log10(value) if value > 0 else -math.inf  # clamped to the left edge: a non-positive variance


def _domain(units: Iterable[float]) -> tuple[float, float]:
    finite = [unit for unit in units if math.isfinite(unit)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    if high - low < 1e-9:
        return low - 0.5, high + 0.5
    pad = (high - low) * 0.03
    return low - pad, high + pad


def _scale(
    summaries: Sequence[StatisticSummary],
    transform: Callable[[float], float],
    candidates: Iterable[float],
    width: float,
) -> _Scale:
    """A shared axis for every layer's statistic: the domain spans all finite values; ticks at the round
    candidates inside it, or at the extremes where fewer than two fall inside."""
    values = [v for s in summaries for v in (s.min, s.max) if v is not None and math.isfinite(transform(v))]
    low, high = _domain(map(transform, values))
    ticks = [v for v in candidates if low <= transform(v) <= high] if values else []  # no data: a bare axis
    if len(ticks) < 2 and values:
        ticks = sorted({min(values), max(values)})
    return _Scale(transform, low, high, width, _thin(ticks, transform, low, high))


def _mean_scale(summaries: Sequence[StatisticSummary], width: float) -> _Scale:
    round_values = [0.0] + [sign * 10.0**k for k in range(-3, 39) for sign in (-1, 1)]
    return _scale(summaries, _symlog, sorted(round_values), width)


def _variance_scale(summaries: Sequence[StatisticSummary], width: float) -> _Scale:
    return _scale(summaries, _log10, [10.0**k for k in range(-45, 39)], width)


def _thin(ticks: Sequence[float], transform: Callable[[float], float], low: float, high: float) -> tuple[float, ...]:
    """At most 6 ticks a sixth of the axis apart: 0 first, then the round values of largest magnitude."""
    kept: list[float] = []
    for tick in sorted(ticks, key=lambda t: (t != 0, -abs(t))):
        if len(kept) < 6 and all(abs(transform(tick) - transform(k)) >= (high - low) / 6 for k in kept):
            kept.append(tick)
    return tuple(sorted(kept))


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


# ---- per-layer charts -------------------------------------------------------------------------------------


def _distribution(summary: StatisticSummary | None, scale: _Scale, colour: str, what: str) -> str:
    """Whisker min-max, box q1-q3, median line; the tooltip holds the numbers."""
    if summary is None:
        return '<span class="muted">not stored or unreadable</span>'
    tooltip = (
        f"{what}: {summary.size} values, min {_number(summary.min)}, q1 {_number(summary.q1)}, median "
        f"{_number(summary.median)}, q3 {_number(summary.q3)}, max {_number(summary.max)}, mean {_number(summary.mean)}"
        + (f", {summary.nonfinite} NaN/Inf" if summary.nonfinite else "")
    )
    parts = [f"<title>{html.escape(tooltip)}</title>"]
    middle = _BOX_HEIGHT / 2
    if summary.min is not None and summary.max is not None:
        assert summary.q1 is not None and summary.q3 is not None and summary.median is not None
        x0, x1 = scale.x(summary.min), scale.x(summary.max)
        q1, q3, median = scale.x(summary.q1), scale.x(summary.q3), scale.x(summary.median)
        parts.append(f'<line x1="{x0:.1f}" y1="{middle}" x2="{x1:.1f}" y2="{middle}" stroke="{colour}"/>')
        parts.append(
            f'<rect x="{q1:.1f}" y="3" width="{max(q3 - q1, 1.5):.1f}" height="{_BOX_HEIGHT - 6}" '
            f'fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>'
        )
        parts.append(f'<line x1="{median:.1f}" y1="1" x2="{median:.1f}" y2="{_BOX_HEIGHT - 1}" stroke="#000"/>')
    if summary.nonfinite:
        parts.append(f'<text x="{_BOX_WIDTH - 2}" y="12" text-anchor="end" fill="#c62828">NaN/Inf</text>')
    return (
        f'<svg class="layer-chart" width="{_BOX_WIDTH}" height="{_BOX_HEIGHT}" '
        f'viewBox="0 0 {_BOX_WIDTH} {_BOX_HEIGHT}" role="img">{"".join(parts)}</svg>'
    )


def _change_bar(change: float | None, largest: float, what: str) -> str:
    if change is None:
        return '<span class="muted">–</span>'
    length = 0.0 if largest == 0 else change / largest * (_CHANGE_WIDTH - 44)
    colour = "#c62828" if change == 0 else "#00897b"
    return (
        f'<svg class="change-chart" width="{_CHANGE_WIDTH}" height="{_BOX_HEIGHT}" role="img">'
        f"<title>{what} moved {_percent(change)} of its magnitude from the reference</title>"
        f'<rect x="0" y="4" width="{max(length, 1):.1f}" height="8" fill="{colour}"/>'
        f'<text x="{max(length, 1) + 4:.1f}" y="12">{_percent(change)}</text></svg>'
    )


def _axis(scale: _Scale, width: float, label: str) -> str:
    """The column header of a distribution column: its name and tick labels on the shared axis."""

    def anchor(x: float) -> str:  # labels near an edge extend inwards, so none is clipped
        return "start" if x < 20 else "end" if x > width - 20 else "middle"

    ticks = "".join(
        f'<line x1="{scale.x(t):.1f}" y1="14" x2="{scale.x(t):.1f}" y2="20" stroke="#90a4ae"/>'
        f'<text x="{scale.x(t):.1f}" y="11" text-anchor="{anchor(scale.x(t))}">{_tick_label(t)}</text>'
        for t in scale.ticks
    )
    return f'{label}<br/><svg class="axis" width="{width}" height="20">{ticks}</svg>'


# ---- the overview: every layer, binned ---------------------------------------------------------------------


def _overview(
    stats: Sequence[BatchNormStats],
    worst: dict[str, Severity],
    mean_scale: _Scale,
    variance_scale: _Scale,
    with_reference: bool,
) -> str:
    """Layers in checkpoint order along x (binned), each statistic's range (light) and the range of the
    layers' medians (dark) up the y axis; a track marks bins holding a layer with findings."""
    count = len(stats)
    bins = min(count, OVERVIEW_BINS)
    step = min((_OVERVIEW_WIDTH - _MARGIN) / bins, _MAX_COLUMN)
    right = _MARGIN + step * bins
    stroke = f"{min(max(step * 0.8, 1), 8):.2f}"
    members: defaultdict[int, list[BatchNormStats]] = defaultdict(list)
    for position, layer in enumerate(stats):
        members[position * bins // count].append(layer)

    def column(index: int) -> float:
        return _MARGIN + (index + 0.5) * step

    panels = []
    top = 0.0

    def panel(title: str, scale: _Scale, pick: Callable[[BatchNormStats], StatisticSummary | None]) -> None:
        nonlocal top
        height = _PANEL_HEIGHT
        panels.append(f'<text x="{_MARGIN}" y="{top + 10:.0f}" font-weight="600">{title}</text>')
        top += _TITLE

        def y(value: float) -> float:
            return top + height - scale.x(value) / scale.width * height

        ranges, medians = [], []
        for index, layers in members.items():
            summaries = [s for s in map(pick, layers) if s is not None and s.min is not None]
            if not summaries:
                continue
            low = min(s.min for s in summaries if s.min is not None)
            high = max(s.max for s in summaries if s.max is not None)
            middle = [s.median for s in summaries if s.median is not None]
            x = column(index)
            ranges.append(f"M{x:.1f} {y(low):.1f}V{min(y(high), y(low) - 1):.1f}")
            medians.append(f"M{x:.1f} {y(min(middle)):.1f}V{min(y(max(middle)), y(min(middle)) - 1.5):.1f}")
        grid = "".join(
            f'<line x1="{_MARGIN}" y1="{y(t):.1f}" x2="{right:.1f}" y2="{y(t):.1f}" stroke="#eceff1"/>'
            f'<text x="{_MARGIN - 4}" y="{y(t) + 3:.1f}" text-anchor="end">{_tick_label(t)}</text>'
            for t in scale.ticks
        )
        panels.append(
            f'{grid}<path d="{"".join(ranges)}" stroke="#90caf9" stroke-width="{stroke}"/>'
            f'<path d="{"".join(medians)}" stroke="#1565c0" stroke-width="{stroke}"/>'
        )
        top += height + 8

    panel("moving_mean (symmetric log axis)", mean_scale, lambda s: s.moving_mean)
    panel("moving_variance (log axis)", variance_scale, lambda s: s.moving_variance)
    if with_reference:
        largest = max((c for s in stats for c in (s.mean_change, s.variance_change) if c is not None), default=0.0)
        panels.append(
            f'<text x="{_MARGIN}" y="{top + 10:.0f}" font-weight="600">largest move from the reference '
            f"(full height {_percent(largest)}; red: unchanged)</text>"
        )
        top += _TITLE
        moved: list[str] = []
        unchanged: list[str] = []
        baseline = top + _PANEL_HEIGHT / 2
        for index, layers in members.items():
            changes = [c for s in layers for c in (s.mean_change, s.variance_change) if c is not None]
            if not changes:
                continue
            height = 0.0 if largest == 0 else max(changes) / largest * (_PANEL_HEIGHT / 2)
            (moved if height else unchanged).append(f"M{column(index):.1f} {baseline:.1f}v{-max(height, 3):.1f}")
        panels.append(
            f'<line x1="{_MARGIN}" y1="{baseline:.1f}" x2="{right:.1f}" y2="{baseline:.1f}" stroke="#cfd8dc"/>'
            f'<path d="{"".join(moved)}" stroke="#00897b" stroke-width="{stroke}"/>'
            f'<path d="{"".join(unchanged)}" stroke="#c62828" stroke-width="{stroke}"/>'
        )
        top += _PANEL_HEIGHT / 2 + 8
    marks: defaultdict[Severity, list[str]] = defaultdict(list)
    for index, layers in members.items():
        severities = [worst[s.layer] for s in layers if s.layer in worst]
        if severities:
            marks[max(severities, key=lambda s: s.rank)].append(f"M{column(index):.1f} {top:.1f}v{_TRACK_HEIGHT}")
    track = "".join(
        f'<path d="{"".join(paths)}" stroke="{_COLOUR[severity]}" stroke-width="{stroke}"/>'
        for severity, paths in marks.items()
    )
    top += _TRACK_HEIGHT
    axis = (
        f'<text x="{_MARGIN - 4}" y="{top - 1:.0f}" text-anchor="end">findings</text>{track}'
        f'<text x="{_MARGIN}" y="{top + 14:.0f}">layer 1</text>'
        f'<text x="{max(right, _MARGIN + 260):.1f}" y="{top + 14:.0f}" text-anchor="end">layer {count} '
        f"(checkpoint order{f', {count / bins:.3g} layers a column' if bins < count else ''})</text>"
    )
    height = top + 20
    return (
        f'<svg class="overview" width="{_OVERVIEW_WIDTH}" height="{height:.0f}" viewBox="0 0 {_OVERVIEW_WIDTH} '
        f'{height:.0f}" role="img" fill="none">{"".join(panels)}{axis}</svg>'
    )


# ---- the page ---------------------------------------------------------------------------------------------


def _layer_severities(report: Report) -> dict[str, Severity]:
    """The worst severity among findings about each BatchNorm layer, or about one of its tensors."""
    owner = {layer.layer: layer.layer for layer in report.batchnorm}
    for layer in report.batchnorm:
        for key in (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance):
            if key is not None:
                owner[key] = layer.layer
    worst: dict[str, Severity] = {}
    for finding in report.findings:
        name = owner.get(finding.subject)
        if name is not None and (name not in worst or finding.severity.rank > worst[name].rank):
            worst[name] = finding.severity
    return worst


def _layer_findings(report: Report) -> dict[str, list[Finding]]:
    by_layer: defaultdict[str, list[Finding]] = defaultdict(list)
    names = {layer.layer for layer in report.batchnorm}
    for finding in report.findings:
        if finding.subject in names:
            by_layer[finding.subject].append(finding)
    return by_layer


def _most_notable(stats: Sequence[BatchNormStats], worst: dict[str, Severity]) -> list[BatchNormStats]:
    """Up to LAYER_ROWS layers: those with findings (worst first), then those with NaN/Inf, then those whose
    median statistics lie furthest from the median layer's; kept in checkpoint order."""

    def median_of(units: list[float]) -> float:
        return sorted(units)[len(units) // 2] if units else 0.0

    def units(
        pick: Callable[[BatchNormStats], StatisticSummary | None], transform: Callable[[float], float]
    ) -> dict[str, float]:
        """Each layer's median on the axis (a non-positive variance has no place on a log axis: left out)."""
        medians = {s.layer: summary.median for s in stats if (summary := pick(s)) and summary.median is not None}
        return {layer: unit for layer, median in medians.items() if math.isfinite(unit := transform(median))}

    means = units(lambda s: s.moving_mean, _symlog)
    variances = units(lambda s: s.moving_variance, _log10)
    typical_mean, typical_variance = median_of(list(means.values())), median_of(list(variances.values()))

    def rank(layer: BatchNormStats) -> tuple[int, int, float]:
        severity = worst.get(layer.layer)
        nonfinite = sum(s.nonfinite for s in (layer.moving_mean, layer.moving_variance) if s is not None)
        distance = abs(means.get(layer.layer, typical_mean) - typical_mean) + abs(
            variances.get(layer.layer, typical_variance) - typical_variance
        )
        return (severity.rank if severity else -1, min(nonfinite, 1), distance)

    order = {id(layer): position for position, layer in enumerate(stats)}
    chosen = sorted(stats, key=rank, reverse=True)[:LAYER_ROWS]
    return sorted(chosen, key=lambda layer: order[id(layer)])


def _badges(findings: Iterable[Finding]) -> str:
    return " ".join(
        f'<span class="badge {f.severity.value}" title="{_text(f.message)}">{_text(f.code)}</span>' for f in findings
    )


def _statistics(report: Report) -> str:
    stats = report.batchnorm_stats or ()
    if not stats:
        return "<p>No BatchNorm layers.</p>" if report.batchnorm_stats is not None else ""
    worst = _layer_severities(report)
    by_layer = _layer_findings(report)
    means = [s.moving_mean for s in stats if s.moving_mean is not None]
    variances = [s.moving_variance for s in stats if s.moving_variance is not None]
    mean_scale, variance_scale = _mean_scale(means, _BOX_WIDTH), _variance_scale(variances, _BOX_WIDTH)
    with_reference = any(s.mean_change is not None or s.variance_change is not None for s in stats)
    overview_means = _mean_scale(means, _PANEL_HEIGHT)
    overview_variances = _variance_scale(variances, _PANEL_HEIGHT)
    parts = ["<h3>BatchNorm statistics</h3>"]
    if len(stats) > OVERVIEW_FROM:
        parts.append(f'<p class="muted">All {len(stats)} layers, in checkpoint order.</p>')
        parts.append(_overview(stats, worst, overview_means, overview_variances, with_reference))
    shown_layers = list(stats) if len(stats) <= LAYER_ROWS else _most_notable(stats, worst)
    if len(shown_layers) < len(stats):
        parts.append(
            f'<p class="muted">One row each for {len(shown_layers)} of {len(stats)} layers: those with findings '
            "first, then those with NaN/Inf, then those whose statistics lie furthest from the typical layer's. "
            "<code>--format json</code> has every layer's numbers.</p>"
        )
    largest = max((c for s in stats for c in (s.mean_change, s.variance_change) if c is not None), default=0.0)
    header = (
        f"<tr><th>layer</th><th>findings</th><th>{_axis(mean_scale, _BOX_WIDTH, 'moving_mean')}</th>"
        f"<th>{_axis(variance_scale, _BOX_WIDTH, 'moving_variance')}</th>"
        + ("<th>moved from reference<br/>mean · variance</th>" if with_reference else "")
        + "</tr>"
    )
    rows = []
    for layer in shown_layers:
        colour = _COLOUR[worst.get(layer.layer)]
        cells = [
            f'<td class="name">{_text(layer.layer)}</td>',
            f"<td>{_badges(by_layer.get(layer.layer, ()))}</td>",
            f"<td>{_distribution(layer.moving_mean, mean_scale, colour, 'moving_mean')}</td>",
            f"<td>{_distribution(layer.moving_variance, variance_scale, colour, 'moving_variance')}</td>",
        ]
        if with_reference:
            cells.append(
                f"<td>{_change_bar(layer.mean_change, largest, 'moving_mean')}<br/>"
                f"{_change_bar(layer.variance_change, largest, 'moving_variance')}</td>"
            )
        rows.append(f'<tr class="layer">{"".join(cells)}</tr>')
    parts.append(f'<table class="layers"><thead>{header}</thead><tbody>{"".join(rows)}</tbody></table>')
    parts.append(
        '<p class="muted">Each row: the line spans min to max of the finite values, the box the middle half '
        "(q1 to q3), the black tick the median; hover for the numbers. Rows with findings are coloured by their "
        "worst severity.</p>"
    )
    return "".join(parts)


def _findings(report: Report) -> str:
    from ckptdoctor.rules import BY_NAME

    if not report.findings:
        return "<h3>Findings</h3><p>No findings.</p>"
    groups: defaultdict[str, list[Finding]] = defaultdict(list)
    for finding in report.findings:
        groups[finding.code].append(finding)
    parts = ["<h3>Findings by rule</h3>"]
    opened = ' open="open"' if len(report.findings) <= OPEN_FINDINGS else ""
    ordered = sorted(groups.items(), key=lambda item: (-max(f.severity.rank for f in item[1]), item[0]))
    for code, findings in ordered:
        rule = BY_NAME.get(code)
        severities = Counter(f.severity for f in findings)
        counts = ", ".join(f"{severities[s]} {s.value}" for s in reversed(Severity) if severities[s])
        worst = max(severities, key=lambda s: s.rank)
        title = f" — {_text(rule.title)}" if rule else ""
        fix = rule.hint if rule else findings[0].hint
        items = "".join(
            f'<li><span class="badge {f.severity.value}">{f.severity.value}</span> '
            f'<span class="subject">{_text(f.subject)}</span>: {_text(f.message)}'
            + (f'<br/><span class="muted">fix: {_text(f.hint)}</span>' if f.hint != fix else "")
            + "</li>"
            for f in findings[:FINDINGS_PER_RULE]
        )
        more = len(findings) - FINDINGS_PER_RULE
        if more > 0:
            items += f'<li class="muted">… and {more} more (<code>--format json</code> lists every one)</li>'
        parts.append(
            f'<details{opened}><summary><span class="badge {worst.value}">{_text(code)}</span> '
            f"{_text(findings[0].name)}{title} · {counts}</summary>"
            f'<p class="fix"><b>Fix:</b> {_text(fix)}</p><ul>{items}</ul></details>'
        )
    return "".join(parts)


def _summary(report: Report, threshold: Severity) -> str:
    failing = sum(1 for f in report.findings if f.severity.rank >= threshold.rank)
    severities = Counter(f.severity for f in report.findings)
    counts = ", ".join(f"{severities[s]} {s.value}" for s in reversed(Severity) if severities[s]) or "none"
    verdict = (
        f'<span class="badge fail">FAIL</span> {failing} at or above {threshold.value}'
        if failing
        else f'<span class="badge pass">PASS</span> nothing at or above {threshold.value}'
    )
    rows = [
        ("verdict", verdict),
        ("format", _text(report.format)),
        ("path", f'<span class="subject">{_text(report.path)}</span>'),
        *([("note", _text(report.note))] if report.note else []),
        ("variables", f"{len(report.variables)} ({_bytes(sum(v.nbytes for v in report.variables))})"),
        ("BatchNorm layers", str(len(report.batchnorm))),
        ("findings", counts),
    ]
    body = "".join(f"<tr><td>{label}</td><td>{value}</td></tr>" for label, value in rows)
    return f'<table class="summary">{body}</table>'


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    threshold = threshold or Severity.ERROR
    sections = "".join(
        f'<section class="report" id="report-{index}"><h2>{_text(report.resolved)}</h2>'
        f"{_summary(report, threshold)}{_findings(report)}{_statistics(report)}</section>"
        for index, report in enumerate(reports, 1)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>'
        f"<title>ckptdoctor check</title><style>{_STYLE}</style></head><body>"
        f'<h1>ckptdoctor check</h1><p class="meta">ckptdoctor {html.escape(__version__)} · {len(reports)} '
        f"checkpoint{'s' if len(reports) != 1 else ''} · fails at {threshold.value}</p>"
        f"{sections}</body></html>\n"
    )
