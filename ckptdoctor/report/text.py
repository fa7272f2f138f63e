"""Text output for a person: variables grouped by layer, role totals, BatchNorm summary, findings by rule.

Every line is printed whole and never padded: tables are plain aligned text without trailing spaces (cheap for
a listing of any length, and clean in a pipe), and only prose (a rule's explanation) is wrapped, at the
terminal's width on a TTY, at `COLUMNS` where a pipe's reader set it, otherwise not at all. A name is never
wrapped, so a long one cannot start a line that reads as a finding.

Output goes to a `TextSink`. Only a terminal that shows colour gets rich's Console (`ConsoleSink`); a pipe, a
file, `NO_COLOR` or a dumb terminal get `PlainSink`, which writes the same characters as plain strings and never
imports rich: its import alone cost CI's `check | cat` about 20 ms of CPU a run, for output without a style."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence
from functools import cached_property
from itertools import groupby

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.batchnorm import PARTS
from ckptdoctor.model import Finding, Format, FormatFamily, Report, Role, Severity
from ckptdoctor.names import encode_name, shown
from ckptdoctor.typed import Protocol

if TYPE_CHECKING:
    from typing import IO

    from rich.console import Console

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
    # isdecimal, as \d: a part of `conv1²` is `²`, which str.isdigit calls a digit and int() refuses
    return tuple((0, int(part), "") if part.isdecimal() else (1, 0, part) for part in re.split(r"(\d+)", text))


Segment = str | tuple[str, str]  # text, or (text, rich style); every name in it already escaped by `shown`
Cell = tuple[str, str]  # a table cell: (text already escaped by `shown`, rich style)


class TextSink(Protocol):
    """Where text output goes, one whole line at a time: a line is never wrapped by the sink, never padded, and
    written at once (flushed), so that it keeps its place among the lines on stderr."""

    is_terminal: bool  # prose wraps at `width` on a terminal

    @property
    def width(self) -> int: ...

    def line(self, *segments: Segment) -> None:
        """The segments as one line, exactly as given (styled where the sink shows colour)."""

    def blank(self) -> None:
        """An empty line."""

    def lines(self, block: Sequence[Sequence[Cell]]) -> None:
        """Many lines in one write: a table's block."""


class PlainSink:
    """Text without style into a file object: what every pipe, file and colourless terminal gets, without rich."""

    def __init__(self, file: IO[str], *, is_terminal: bool = False) -> None:
        self.file = file
        self.is_terminal = is_terminal

    @cached_property
    def width(self) -> int:
        """The width as rich's Console finds it: COLUMNS, a dumb terminal's 80, else the terminal of the first
        standard stream that has one, else 80 (rich would take 80 over COLUMNS on a dumb terminal unless LINES
        is set too; COLUMNS is what the user said)."""
        columns = _columns_set()
        if columns is not None:
            return columns
        if self.is_terminal and _dumb_terminal():
            return 80
        for descriptor in (0, 1, 2):
            try:
                return os.get_terminal_size(descriptor).columns or 80
            except (OSError, ValueError):
                continue
        return 80

    def line(self, *segments: Segment) -> None:
        self._write("".join(s if isinstance(s, str) else s[0] for s in segments) + "\n")

    def blank(self) -> None:
        self._write("\n")

    def lines(self, block: Sequence[Sequence[Cell]]) -> None:
        self._write("".join("".join(text for text, _ in line) + "\n" for line in block))

    def _write(self, text: str) -> None:
        self.file.write(text)
        self.file.flush()  # as rich does after each print: a closed pipe shows here, and stderr stays in order


class ConsoleSink:
    """Styled text through a rich Console, for a terminal that shows colour. Data is never parsed as markup or
    emoji codes: every segment becomes a rich Text as it is."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.is_terminal = console.is_terminal

    @property
    def width(self) -> int:
        return self.console.width

    def line(self, *segments: Segment) -> None:
        from rich.text import Text

        self.console.print(Text.assemble(*segments), soft_wrap=True)

    def blank(self) -> None:
        self.console.print()

    def lines(self, block: Sequence[Sequence[Cell]]) -> None:
        from rich.text import Text

        self.console.print(Text("\n").join(Text.assemble(*line) for line in block), soft_wrap=True)


def _is_terminal(file: IO[str]) -> bool:
    """Whether rich's Console would treat `file` as a terminal: TTY_COMPATIBLE=0 or 1 decides, then FORCE_COLOR
    (set: a terminal unless empty), then isatty."""
    compatible = os.environ.get("TTY_COMPATIBLE", "")
    if compatible in ("0", "1"):
        return compatible == "1"
    if "FORCE_COLOR" in os.environ:
        return os.environ["FORCE_COLOR"] != ""
    try:
        return file.isatty()
    except ValueError:  # closed
        return False


def _dumb_terminal() -> bool:
    return os.environ.get("TERM", "").lower() in ("dumb", "unknown")


def shows_colour(file: IO[str]) -> bool:
    """Colour (and so rich) only for a terminal as rich sees one, neither dumb nor told NO_COLOR."""
    return _is_terminal(file) and not _dumb_terminal() and not os.environ.get("NO_COLOR")


def stdout_sink() -> TextSink:
    """Standard output as a sink: rich's Console where it shows colour, otherwise plain text."""
    if not shows_colour(sys.stdout):
        return PlainSink(sys.stdout, is_terminal=_is_terminal(sys.stdout))
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            """Rich would exit 1 here, which reads as findings; the command line's `_writing_stdout` decides."""
            self.quiet = True
            raise BrokenPipeError

    return ConsoleSink(StdoutConsole(highlight=False))


def _shown(text: str, style: str = "") -> Cell:
    """Untrusted text as a segment: escaped by `shown` (a sink never parses it as markup or emoji codes)."""
    return (shown(text), style)


def _stripped(cells: Sequence[Cell]) -> list[Cell]:
    """The cells without the whitespace that would end their line (padding, a name's trailing space)."""
    out = list(cells)
    while out:
        text, style = out[-1]
        kept = text.rstrip()
        if kept:
            out[-1] = (kept, style)
            break
        out.pop()
    return out


def _line(sink: TextSink, *segments: Segment) -> None:
    """One whole line, without trailing whitespace."""
    sink.line(*_stripped([(s, "") if isinstance(s, str) else s for s in segments]))


def _columns_set() -> int | None:
    """COLUMNS where it is a number of ASCII digits (`²` is a digit to str.isdigit, not to int())."""
    columns = os.environ.get("COLUMNS", "")
    return int(columns) if columns.isascii() and columns.isdecimal() else None


def _prose_width(sink: TextSink) -> int | None:
    """Where prose wraps: the terminal's width, or COLUMNS where a pipe's reader set it; otherwise nowhere, so
    that a pipe or a file gets each paragraph on one line for grep and for the reader's own wrapping."""
    if sink.is_terminal or _columns_set() is not None:
        return max(sink.width, _MIN_PROSE_WIDTH)
    return None


def _paragraph(sink: TextSink, text: str, indent: str = "", style: str = "", continuation: str | None = None) -> None:
    """Prose wrapped at `_prose_width` between words, never inside one (a path or `--from` stays whole)."""
    width = _prose_width(sink)
    if width is None:
        _line(sink, (indent + text, style))
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
        _line(sink, (line, style))


def _width(text: str) -> int:
    """Terminal cells: an ASCII character is one; other text is measured by rich's cell_len (imported only for
    it: a wide character takes two cells, a combining one none)."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


class _Heading(tuple):
    """A table row that spans the line (a layer's heading): its (text, style) segments."""


_LINES_PER_WRITE = 2000  # a table goes out in blocks of lines: rich's cost is per print, not per line


def _table(sink: TextSink, header: Sequence[str], rows: Sequence[Sequence[Cell]], right: set[int]) -> None:
    """Plain aligned columns; a `_Heading` row spans the line. Each line loses its trailing padding: 100,000 rows
    in well under a second without colour."""
    cells = [row for row in rows if not isinstance(row, _Heading)]
    widths = [max([_width(title)] + [_width(row[i][0]) for row in cells]) for i, title in enumerate(header)]

    def aligned(row: Sequence[Cell]) -> list[Cell]:
        out: list[Cell] = []
        for i, (text, style) in enumerate(row):
            pad = (" " * (widths[i] - _width(text)), "")
            out += [(_GAP, "")] if i else []
            out += [pad, (text, style)] if i in right else [(text, style), pad]
        return _stripped(out)

    lines: list[Sequence[Cell]] = [aligned([(title, "bold") for title in header])]
    lines += [_stripped(row) if isinstance(row, _Heading) else aligned(row) for row in rows]
    for start in range(0, len(lines), _LINES_PER_WRITE):
        sink.lines(lines[start : start + _LINES_PER_WRITE])


def _header(sink: TextSink, report: Report) -> None:
    _line(sink, ("checkpoint ", "bold"), _shown(report.resolved), ("  format ", "bold"), _shown(report.format))
    if report.note:  # wrapped between words only: a name in it stays whole
        _paragraph(sink, f"note: {shown(report.note)}", style="dim", continuation=" " * 6)


def _framework_layer(members: Sequence) -> str | None:
    """The framework's name of a group's layer (`bn_default` for `model/_operations/2`), where every member's
    full name agrees on it."""
    scopes = {v.full_name.rpartition("/")[0] for v in members if v.full_name}
    return scopes.pop() if len(scopes) == 1 else None


MAX_TABLE_ROWS = 1000  # beyond this many variables, `inspect` shows totals by scope (`--all`: every variable)
MAX_SCOPE_ROWS = 50  # the totals by scope are at the deepest scope depth with at most this many scopes


def render_inspect(sink: TextSink, report: Report, every_variable: bool = False) -> None:
    """The variables by layer; past MAX_TABLE_ROWS (no one reads 100,000 rows) totals by scope instead, unless
    `every_variable`."""
    _header(sink, report)
    if every_variable or len(report.variables) <= MAX_TABLE_ROWS:
        _variable_table(sink, report)
    else:
        _scope_table(sink, report)
    _role_totals(sink, report)
    _batchnorm_summary(sink, report)


def _variable_table(sink: TextSink, report: Report) -> None:
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
    _table(sink, header, rows, right={size_column})


def _scope_table(sink: TextSink, report: Report) -> None:
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
        sink,
        (
            f"{plural(len(report.variables), 'variable')} in {plural(len(counts), 'scope')} "
            "(`inspect --all` lists every variable)",
            "dim",
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
    _table(sink, ["scope", "tensors", "size", "roles"], rows, right={1, 2})


_MAX_SCOPE_DEPTH = 64  # deeper scopes are summed into their ancestor at this depth


def _scope(layer: str, depth: int) -> str:
    return "/".join(layer.split("/")[:depth])


def _role_totals(sink: TextSink, report: Report) -> None:
    counts: Counter[Role] = Counter()
    sizes: defaultdict[Role, int] = defaultdict(int)
    for var in report.variables:
        counts[var.role] += 1
        sizes[var.role] += var.nbytes
    rows: list[Sequence[Cell]] = [
        [(role.value, ""), (str(counts[role]), ""), (human_bytes(sizes[role]), "")] for role in Role if counts[role]
    ]
    rows.append([("all", "bold"), (str(len(report.variables)), ""), (human_bytes(sum(sizes.values())), "")])
    sink.blank()
    _line(sink, ("totals by role", "bold"))
    _table(sink, ["role", "tensors", "size"], rows, right={1, 2})


def _batchnorm_summary(sink: TextSink, report: Report) -> None:
    sink.blank()
    layers = report.batchnorm
    if not layers:
        _line(sink, "BatchNorm: no BatchNorm layers found")
        return
    incomplete = [layer for layer in layers if layer.missing_statistics]
    held = Counter(part for layer in layers for part in PARTS if getattr(layer, part))
    parts = ", ".join(f"{part} {held[part]}" for part in PARTS)
    status = (f"{len(incomplete)} lack moving statistics", "bold red") if incomplete else "all complete"
    _line(sink, ("BatchNorm: ", "bold"), f"{plural(len(layers), 'layer')} ({parts}); ", status)
    for layer in incomplete[:10]:
        _line(sink, _shown(f"  {layer.layer}: no {' or '.join(layer.missing_statistics)}"))
    if len(incomplete) > 10:
        _line(sink, f"  … and {len(incomplete) - 10} more")


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """`check`'s text without colour, for --output: grouped by rule, each paragraph on one line (wrapped only
    where COLUMNS is set, as in a pipe)."""
    import io

    if not reports:
        return ""
    buffer = io.StringIO()
    sink = PlainSink(buffer)
    for report in reports:
        render_check(sink, report)
    return buffer.getvalue()


def _family(report: Report) -> FormatFamily | None:
    try:
        return Format(report.format).family
    except ValueError:
        return None


def render_check(sink: TextSink, report: Report, verbose: bool = False) -> None:
    """One report as `check` prints it, in colour where the sink has colour: the findings of each rule
    under its title, explanation and fix, one line per subject; `verbose` prints every finding in full."""
    _header(sink, report)
    _line(
        sink,
        f"{plural(len(report.variables), 'variable')}, {plural(len(report.batchnorm), 'BatchNorm layer')}, "
        f"{human_bytes(sum(v.nbytes for v in report.variables))}",
    )
    if verbose:
        for finding in report.findings:
            _print_finding(sink, finding)
    else:
        _print_by_rule(sink, report.findings, _family(report))
    counts = Counter(f.severity for f in report.findings)
    if not report.findings:
        _line(sink, ("no findings", "bold green"))
    else:
        summary = ", ".join(plural(counts[s], s.value) for s in reversed(Severity) if counts[s])
        _line(sink, (f"{plural(len(report.findings), 'finding')}: {summary}", "bold"))


def _print_by_rule(sink: TextSink, findings: Sequence[Finding], family: FormatFamily | None) -> None:
    from ckptdoctor.rules import BY_NAME

    groups: dict[tuple[str, Severity, str], list[Finding]] = {}
    for finding in findings:  # in the order rules ran: the catalogue's
        groups.setdefault((finding.code, finding.severity, finding.hint), []).append(finding)
    for (code, severity, hint), members in groups.items():
        rule = BY_NAME.get(code)
        first = members[0]
        sink.blank()
        _line(
            sink,
            (f"{severity.value} ", _SEVERITY_STYLE[severity]),
            (f"{code} {first.name}", "bold"),
            f" ({len(members)})" if len(members) > 1 else "",
        )
        if rule:
            _paragraph(sink, rule.title, "  ", style="bold")
            _paragraph(sink, rule.cause_for(family), "  ", style="dim")
        _paragraph(sink, f"fix: {shown(hint)}", "  ")
        column = min(max(len(shown(f.subject)) for f in members), _MAX_SUBJECT_COLUMN)
        for finding in members:
            subject = shown(finding.subject)
            detail = finding.detail if finding.detail is not None else finding.message
            _line(sink, "    ", subject.ljust(column), _GAP, _shown(detail))
    if groups:
        sink.blank()


def _print_finding(sink: TextSink, finding: Finding) -> None:
    """Each line whole: a long name wrapped could start a line that reads as a finding."""
    _line(
        sink,
        (f"{finding.severity.value:<7} ", _SEVERITY_STYLE[finding.severity]),
        (f"{finding.code} {finding.name} ", "bold"),
        _shown(finding.subject),
    )
    if finding.key is not None:
        _line(sink, _INDENT, _shown(f"key: {finding.key}", style="dim"))
    _line(sink, _INDENT, _shown(finding.message))
    _line(sink, _INDENT, _shown(f"hint: {finding.hint}", style="dim"))


def render_explanation(sink: TextSink, rule: Rule) -> None:
    """`explain`: what a rule finds, why, and the fix for each format family where they differ."""
    _line(sink, (f"{rule.code} {rule.name} ({rule.severity.value})", "bold"))
    _paragraph(sink, rule.title)
    sink.blank()
    _paragraph(sink, rule.explanation)
    families = [family for family in FormatFamily if family in rule.causes or family in rule.fixes]
    sink.blank()
    if not families:
        _paragraph(sink, f"Fix: {rule.hint}")
    for family in families:
        _line(sink, (f"{_FAMILY_TITLES[family]}:", "bold"))
        if family in rule.causes:
            _paragraph(sink, f"Cause: {rule.cause_for(family)}", "  ")
        _paragraph(sink, f"Fix: {rule.hint_for(family)}", "  ")


def render_rules(sink: TextSink, rules: Sequence[Rule]) -> None:
    """`rules`: the catalogue, one line per rule."""
    rows: list[Sequence[Cell]] = [
        [(rule.code, ""), (rule.name, ""), (rule.severity.value, ""), (rule.title, "")] for rule in rules
    ]
    _table(sink, ["code", "name", "severity", "what it finds"], rows, right=set())
