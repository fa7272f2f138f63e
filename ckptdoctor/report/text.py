"""Text output for a person: variables grouped by layer, role totals, BatchNorm summary, findings."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import groupby

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.model import Finding, Report, Role, Severity
from ckptdoctor.names import encode_name, shown

_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_INDENT = " " * 8  # finding details sit under the finding line
_ROLE_STYLE = {
    Role.WEIGHT: "",
    Role.BN_STATISTIC: "magenta",
    Role.OPTIMIZER_SLOT: "dim",
    Role.EMA: "blue",
    Role.COUNTER: "cyan",
    Role.OTHER: "dim",
}


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _natural(text: str) -> tuple:
    """Sort `vars/2` before `vars/10`."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def _shown(text: str, style: str = "") -> Text:
    """Untrusted text as a rich Text: escaped by `shown`, and never parsed as markup or emoji codes."""
    return Text(shown(text), style=style)


def _header(console: Console, report: Report) -> None:
    console.print(
        Text.assemble(("checkpoint ", "bold"), _shown(report.resolved), ("  format ", "bold"), _shown(report.format)),
        soft_wrap=True,
    )
    if report.note:
        console.print(_shown(f"note: {report.note}", style="dim"), soft_wrap=True)


def render_inspect(console: Console, report: Report) -> None:
    _header(console, report)
    named = any(v.full_name for v in report.variables)
    table = Table(show_edge=False, pad_edge=False, expand=False)
    table.add_column("variable", overflow="fold")
    if named:
        table.add_column("full name", overflow="fold", style="dim")
    for column in ("dtype", "shape"):
        table.add_column(column)
    table.add_column("size", justify="right")
    table.add_column("role")
    by_layer = sorted(report.variables, key=lambda v: (encode_name(v.layer), _natural(v.path)))
    for layer, members in groupby(by_layer, key=lambda v: v.layer):
        table.add_row(_shown(f"{layer or '(top level)'}/", style="bold"), *[""] * (len(table.columns) - 1))
        for var in members:
            local = var.path[len(layer) + 1 :] if layer and var.path.startswith(layer + "/") else var.path
            cells = [_shown(f"  {local}"), *([_shown(var.full_name or "")] if named else [])]
            shape = "[" + ", ".join(map(str, var.shape)) + "]"
            role = Text(var.role.value, style=_ROLE_STYLE[var.role])
            table.add_row(*cells, _shown(var.dtype), shape, human_bytes(var.nbytes), role)
    console.print(table)
    _role_totals(console, report)
    _batchnorm_summary(console, report)


def _role_totals(console: Console, report: Report) -> None:
    counts: Counter[Role] = Counter()
    sizes: defaultdict[Role, int] = defaultdict(int)
    for var in report.variables:
        counts[var.role] += 1
        sizes[var.role] += var.nbytes
    table = Table(title="totals by role", show_edge=False, title_justify="left")
    table.add_column("role")
    table.add_column("tensors", justify="right")
    table.add_column("size", justify="right")
    for role in Role:
        if counts[role]:
            table.add_row(role.value, str(counts[role]), human_bytes(sizes[role]))
    table.add_row(Text("all", style="bold"), str(len(report.variables)), human_bytes(sum(sizes.values())))
    console.print(table)


def _batchnorm_summary(console: Console, report: Report) -> None:
    layers = report.batchnorm
    if not layers:
        console.print("BatchNorm: no BatchNorm layers found")
        return
    incomplete = [layer for layer in layers if layer.missing_statistics]
    held = Counter(part for layer in layers for part in PARTS if getattr(layer, part))
    parts = ", ".join(f"{part} {held[part]}" for part in PARTS)
    status = Text(f"{len(incomplete)} lack moving statistics", style="bold red") if incomplete else Text("all complete")
    console.print(Text.assemble(("BatchNorm: ", "bold"), f"{len(layers)} layers ({parts}); ", status))
    for layer in incomplete[:10]:
        console.print(_shown(f"  {layer.layer}: no {' or '.join(layer.missing_statistics)}"), soft_wrap=True)
    if len(incomplete) > 10:
        console.print(f"  … and {len(incomplete) - 10} more")


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """`check`'s text without colour, for --output: wide enough that long names stay on one line."""
    import io

    if not reports:
        return ""
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, highlight=False, no_color=True)
    for report in reports:
        render_check(console, report)
    return buffer.getvalue()


def render_check(console: Console, report: Report) -> None:
    """One report as `check` prints it, in colour where the console has colour."""
    _header(console, report)
    console.print(
        f"{len(report.variables)} variables, {len(report.batchnorm)} BatchNorm layers, "
        f"{human_bytes(sum(v.nbytes for v in report.variables))}"
    )
    for finding in report.findings:
        _print_finding(console, finding)
    counts = Counter(f.severity for f in report.findings)
    if not report.findings:
        console.print(Text("no findings", style="bold green"))
    else:
        summary = ", ".join(f"{counts[s]} {s.value}" for s in reversed(Severity) if counts[s])
        console.print(Text(f"{len(report.findings)} findings: {summary}", style="bold"))


def _print_finding(console: Console, finding: Finding) -> None:
    """Each line whole (soft_wrap): a long name wrapped by rich could start a line that reads as a finding."""
    console.print(
        Text.assemble(
            (f"{finding.severity.value:<7} ", _SEVERITY_STYLE[finding.severity]),
            (f"{finding.code} {finding.name} ", "bold"),
            _shown(finding.subject),
        ),
        soft_wrap=True,
    )
    console.print(Text.assemble(_INDENT, _shown(finding.message)), soft_wrap=True)
    console.print(Text.assemble(_INDENT, _shown(f"hint: {finding.hint}", style="dim")), soft_wrap=True)
