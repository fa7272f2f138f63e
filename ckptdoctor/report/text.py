"""Text output for a person: variables grouped by layer, role totals, BatchNorm summary, findings by rule.

Every line is printed whole (`soft_wrap`) and never padded: tables are plain aligned text without trailing
spaces (cheap for a listing of any length, and clean in a pipe), and only prose (a rule's explanation) is wrapped,
at the console's width: the terminal's on a TTY, `COLUMNS` or 80 in a pipe. A name is never wrapped, so a long
one cannot start a line that reads as a finding."""

from __future__ import annotations

import os
import re
import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import groupby
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.model import Finding, Format, FormatFamily, Report, Role, Severity
from ckptdoctor.names import encode_name, shown

if TYPE_CHECKING:
    from ckptdoctor.rules import Rule

_SEVERITY_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_INDENT = " " * 8  # --verbose: finding details sit under the finding line
_ROLE_STYLE = {
    Role.WEIGHT: "",
    Role.BN_STATISTIC: "magenta",
    Role.OPTIMIZER_SLOT: "dim",
    Role.EMA: "blue",
    Role.COUNTER: "cyan",
    Role.OTHER: "dim",
}
_GAP = "  "  # between table columns
_MAX_SUBJECT_COLUMN = 48  # longer subjects are not padded: one long name does not push every detail aside
_FAMILY_TITLES = {
    FormatFamily.TF1: "TF1 graphs (tf.train.Saver checkpoints, V1 files)",
    FormatFamily.KERAS: "Keras files (.keras, .weights.h5, .h5; Keras 3 and tf.keras)",
    FormatFamily.TF2: "TF2 object checkpoints and SavedModels",
}
_MIN_PROSE_WIDTH = 40  # a very narrow terminal still gets readable paragraphs


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 finding`, `4 findings`, `1 BatchNorm layer`."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def _natural(text: str) -> tuple:
    """Sort `vars/2` before `vars/10`."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def _shown(text: str, style: str = "") -> Text:
    """Untrusted text as a rich Text: escaped by `shown`, and never parsed as markup or emoji codes."""
    return Text(shown(text), style=style)


def _line(console: Console, *parts: Text | str | tuple[str, str]) -> None:
    """One whole line: never wrapped, never padded."""
    text = Text.assemble(*parts)
    text.rstrip()
    console.print(text, soft_wrap=True)


def _prose_width(console: Console) -> int | None:
    """Where prose wraps: the terminal's width, or COLUMNS where a pipe's reader set it; otherwise nowhere, so
    that a pipe or a file gets each paragraph on one line for grep and for the reader's own wrapping."""
    if console.is_terminal or os.environ.get("COLUMNS", "").isdigit():
        return max(console.width, _MIN_PROSE_WIDTH)
    return None


def _paragraph(console: Console, text: str, indent: str = "", style: str = "", continuation: str | None = None) -> None:
    """Prose wrapped at `_prose_width` between words, never inside one (a path or `--from` stays whole)."""
    width = _prose_width(console)
    if width is None:
        _line(console, Text(indent + text, style=style))
        return
    wrapped = textwrap.wrap(
        text,
        width=width,
        initial_indent=indent,
        subsequent_indent=indent if continuation is None else continuation,
        break_long_words=False,
        break_on_hyphens=False,
    )
    for line in wrapped:
        _line(console, Text(line, style=style))


Cell = tuple[str, str]  # (text already escaped by `shown`, rich style)


def _width(text: str) -> int:
    """Terminal cells: an ASCII character is one (rich's cell_len measures every character)."""
    return len(text) if text.isascii() else cell_len(text)


class _Heading(tuple):
    """A table row that spans the line (a layer's heading): its (text, style) segments."""


_LINES_PER_WRITE = 2000  # a table goes out in blocks of lines: rich's cost is per print, not per line


def _table(console: Console, header: Sequence[str], rows: Sequence[Sequence[Cell]], right: set[int]) -> None:
    """Plain aligned columns; a `_Heading` row spans the line. Without colour (a pipe, a file) the lines are
    written as plain strings: 100,000 rows in well under a second; with colour, rich styles each block."""
    cells = [row for row in rows if not isinstance(row, _Heading)]
    widths = [max([_width(title)] + [_width(row[i][0]) for row in cells]) for i, title in enumerate(header)]

    def aligned(row: Sequence[Cell]) -> list[Cell]:
        out: list[Cell] = []
        for i, (text, style) in enumerate(row):
            pad = (" " * (widths[i] - _width(text)), "")
            out += [(_GAP, "")] if i else []
            out += [pad, (text, style)] if i in right else [(text, style), pad]
        return out

    lines: list[Sequence[Cell]] = [aligned([(title, "bold") for title in header])]
    lines += [row if isinstance(row, _Heading) else aligned(row) for row in rows]
    plain = console.no_color or not console.is_terminal or console.color_system is None
    for start in range(0, len(lines), _LINES_PER_WRITE):
        block = lines[start : start + _LINES_PER_WRITE]
        if plain:
            console.file.write("".join("".join(text for text, _ in line).rstrip() + "\n" for line in block))
        else:
            text = Text("\n").join(Text.assemble(*line) for line in block)
            text.rstrip()
            console.print(text, soft_wrap=True)


def _header(console: Console, report: Report) -> None:
    _line(console, ("checkpoint ", "bold"), _shown(report.resolved), ("  format ", "bold"), _shown(report.format))
    if report.note:  # wrapped between words only: a name in it stays whole
        _paragraph(console, f"note: {shown(report.note)}", style="dim", continuation=" " * 6)


def _framework_layer(members: Sequence) -> str | None:
    """The framework's name of a group's layer (`bn_default` for `model/_operations/2`), where every member's
    full name agrees on it."""
    scopes = {v.full_name.rpartition("/")[0] for v in members if v.full_name}
    return scopes.pop() if len(scopes) == 1 else None


MAX_TABLE_ROWS = 1000  # beyond this many variables, `inspect` shows totals by scope (`--all`: every variable)
MAX_SCOPE_ROWS = 50  # the totals by scope are at the deepest scope depth with at most this many scopes


def render_inspect(console: Console, report: Report, every_variable: bool = False) -> None:
    """The variables by layer; past MAX_TABLE_ROWS (no one reads 100,000 rows) totals by scope instead, unless
    `every_variable`."""
    _header(console, report)
    if every_variable or len(report.variables) <= MAX_TABLE_ROWS:
        _variable_table(console, report)
    else:
        _scope_table(console, report)
    _role_totals(console, report)
    _batchnorm_summary(console, report)


def _variable_table(console: Console, report: Report) -> None:
    named = any(v.full_name for v in report.variables)
    header = ["variable", *(["full name"] if named else []), "dtype", "shape", "size", "role"]
    size_column = len(header) - 2
    rows: list[Sequence[Cell]] = []
    by_layer = sorted(report.variables, key=lambda v: (encode_name(v.layer), _natural(v.path)))
    for layer, group in groupby(by_layer, key=lambda v: v.layer):
        members = list(group)
        heading = [(shown(f"{layer or '(top level)'}/"), "bold")]
        framework = _framework_layer(members) if layer else None
        if framework and framework != layer:
            heading.append((shown(f"  ({framework})"), "dim"))
        rows.append(_Heading(heading))
        for var in members:
            local = var.path[len(layer) + 1 :] if layer and var.path.startswith(layer + "/") else var.path
            shape = "[" + ", ".join(map(str, var.shape)) + "]"
            rows.append(
                [
                    (shown(f"  {local}"), ""),
                    *([(shown(var.full_name or ""), "dim")] if named else []),
                    (shown(var.dtype), ""),
                    (shape, ""),
                    (human_bytes(var.nbytes), ""),
                    (var.role.value, _ROLE_STYLE[var.role]),
                ]
            )
    _table(console, header, rows, right={size_column})


def _scope_table(console: Console, report: Report) -> None:
    """Tensors, size and roles per scope, at the deepest scope depth that still fits MAX_SCOPE_ROWS rows."""
    depth = 1
    while depth < _MAX_SCOPE_DEPTH and len({_scope(v.layer, depth + 1) for v in report.variables}) <= MAX_SCOPE_ROWS:
        depth += 1
    counts: defaultdict[str, Counter[Role]] = defaultdict(Counter)
    sizes: defaultdict[str, int] = defaultdict(int)
    for var in report.variables:
        scope = _scope(var.layer, depth)
        counts[scope][var.role] += 1
        sizes[scope] += var.nbytes
    _line(
        console,
        Text(
            f"{plural(len(report.variables), 'variable')} in {plural(len(counts), 'scope')} "
            "(`inspect --all` lists every variable)",
            style="dim",
        ),
    )
    rows = [
        [
            (shown(f"{scope or '(top level)'}/"), ""),
            (str(sum(counts[scope].values())), ""),
            (human_bytes(sizes[scope]), ""),
            (", ".join(f"{role.value} {counts[scope][role]}" for role in Role if counts[scope][role]), ""),
        ]
        for scope in sorted(counts, key=encode_name)
    ]
    _table(console, ["scope", "tensors", "size", "roles"], rows, right={1, 2})


_MAX_SCOPE_DEPTH = 64  # deeper scopes are summed into their ancestor at this depth


def _scope(layer: str, depth: int) -> str:
    return "/".join(layer.split("/")[:depth])


def _role_totals(console: Console, report: Report) -> None:
    counts: Counter[Role] = Counter()
    sizes: defaultdict[Role, int] = defaultdict(int)
    for var in report.variables:
        counts[var.role] += 1
        sizes[var.role] += var.nbytes
    rows: list[Sequence[Cell]] = [
        [(role.value, ""), (str(counts[role]), ""), (human_bytes(sizes[role]), "")] for role in Role if counts[role]
    ]
    rows.append([("all", "bold"), (str(len(report.variables)), ""), (human_bytes(sum(sizes.values())), "")])
    console.print()
    _line(console, ("totals by role", "bold"))
    _table(console, ["role", "tensors", "size"], rows, right={1, 2})


def _batchnorm_summary(console: Console, report: Report) -> None:
    console.print()
    layers = report.batchnorm
    if not layers:
        _line(console, "BatchNorm: no BatchNorm layers found")
        return
    incomplete = [layer for layer in layers if layer.missing_statistics]
    held = Counter(part for layer in layers for part in PARTS if getattr(layer, part))
    parts = ", ".join(f"{part} {held[part]}" for part in PARTS)
    status = Text(f"{len(incomplete)} lack moving statistics", style="bold red") if incomplete else Text("all complete")
    _line(console, ("BatchNorm: ", "bold"), f"{plural(len(layers), 'layer')} ({parts}); ", status)
    for layer in incomplete[:10]:
        _line(console, _shown(f"  {layer.layer}: no {' or '.join(layer.missing_statistics)}"))
    if len(incomplete) > 10:
        _line(console, f"  … and {len(incomplete) - 10} more")


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """`check`'s text without colour, for --output: grouped by rule, each paragraph on one line."""
    import io

    if not reports:
        return ""
    buffer = io.StringIO()
    console = Console(file=buffer, highlight=False, no_color=True)
    for report in reports:
        render_check(console, report)
    return buffer.getvalue()


def _family(report: Report) -> FormatFamily | None:
    try:
        return Format(report.format).family
    except ValueError:
        return None


def render_check(console: Console, report: Report, verbose: bool = False) -> None:
    """One report as `check` prints it, in colour where the console has colour: the findings of each rule
    under its title, explanation and fix, one line per subject; `verbose` prints every finding in full."""
    _header(console, report)
    _line(
        console,
        f"{plural(len(report.variables), 'variable')}, {plural(len(report.batchnorm), 'BatchNorm layer')}, "
        f"{human_bytes(sum(v.nbytes for v in report.variables))}",
    )
    if verbose:
        for finding in report.findings:
            _print_finding(console, finding)
    else:
        _print_by_rule(console, report.findings, _family(report))
    counts = Counter(f.severity for f in report.findings)
    if not report.findings:
        _line(console, Text("no findings", style="bold green"))
    else:
        summary = ", ".join(plural(counts[s], s.value) for s in reversed(Severity) if counts[s])
        _line(console, Text(f"{plural(len(report.findings), 'finding')}: {summary}", style="bold"))


def _print_by_rule(console: Console, findings: Sequence[Finding], family: FormatFamily | None) -> None:
    from ckptdoctor.rules import BY_NAME

    groups: dict[tuple[str, Severity, str], list[Finding]] = {}
    for finding in findings:  # in the order rules ran: the catalogue's
        groups.setdefault((finding.code, finding.severity, finding.hint), []).append(finding)
    for (code, severity, hint), members in groups.items():
        rule = BY_NAME.get(code)
        first = members[0]
        console.print()
        _line(
            console,
            (f"{severity.value} ", _SEVERITY_STYLE[severity]),
            (f"{code} {first.name}", "bold"),
            f" ({len(members)})" if len(members) > 1 else "",
        )
        if rule:
            _paragraph(console, rule.title, "  ", style="bold")
            _paragraph(console, rule.cause_for(family), "  ", style="dim")
        _paragraph(console, f"fix: {shown(hint)}", "  ")
        column = min(max(len(shown(f.subject)) for f in members), _MAX_SUBJECT_COLUMN)
        for finding in members:
            subject = shown(finding.subject)
            detail = finding.detail if finding.detail is not None else finding.message
            _line(console, "    ", Text(subject.ljust(column)), _GAP, _shown(detail))
    if groups:
        console.print()


def _print_finding(console: Console, finding: Finding) -> None:
    """Each line whole: a long name wrapped could start a line that reads as a finding."""
    _line(
        console,
        (f"{finding.severity.value:<7} ", _SEVERITY_STYLE[finding.severity]),
        (f"{finding.code} {finding.name} ", "bold"),
        _shown(finding.subject),
    )
    if finding.key is not None:
        _line(console, _INDENT, _shown(f"key: {finding.key}", style="dim"))
    _line(console, _INDENT, _shown(finding.message))
    _line(console, _INDENT, _shown(f"hint: {finding.hint}", style="dim"))


def render_explanation(console: Console, rule: Rule) -> None:
    """`explain`: what a rule finds, why, and the fix for each format family where they differ."""
    _line(console, Text(f"{rule.code} {rule.name} ({rule.severity.value})", style="bold"))
    _paragraph(console, rule.title)
    console.print()
    _paragraph(console, rule.explanation)
    families = [family for family in FormatFamily if family in rule.causes or family in rule.fixes]
    console.print()
    if not families:
        _paragraph(console, f"Fix: {rule.hint}")
    for family in families:
        _line(console, Text(f"{_FAMILY_TITLES[family]}:", style="bold"))
        if family in rule.causes:
            _paragraph(console, f"Cause: {rule.cause_for(family)}", "  ")
        _paragraph(console, f"Fix: {rule.hint_for(family)}", "  ")


def render_rules(console: Console, rules: Sequence[Rule]) -> None:
    """`rules`: the catalogue, one line per rule."""
    rows: list[Sequence[Cell]] = [
        [(rule.code, ""), (rule.name, ""), (rule.severity.value, ""), (rule.title, "")] for rule in rules
    ]
    _table(console, ["code", "name", "severity", "what it finds"], rows, right=set())
