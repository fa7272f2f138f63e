"""The command line: typer and rich live here and in the text reporter only.

No `from __future__ import annotations` here: typer would `eval` every parameter's annotation string of every
command at each start (12 ms); annotations naming what only type checkers import are quoted instead."""

import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from ckptdoctor import __version__, watchdog
from ckptdoctor.errors import CkptDoctorError, OutputError
from ckptdoctor.model import Severity
from ckptdoctor.names import shown
from ckptdoctor.policy import ExitCode, exit_code, outcome_exit_code
from ckptdoctor.report import OutputFormat
from ckptdoctor.report import render as render_report

if TYPE_CHECKING:
    from rich.console import Console

    from ckptdoctor.formats import Resolved
    from ckptdoctor.gate import Verdict
    from ckptdoctor.patch import Addition
    from ckptdoctor.policy import Policy

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: `[default: error]` and `[tool.ckptdoctor]` are text, not markup
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Inspect, check, repair and verify TensorFlow and Keras checkpoints.",
)


class _Command(TyperCommand):
    """Usage lines name arguments by their metavar (`check [OPTIONS] PATH...`), not typer's `{paths}`."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                metavar = param.metavar or (param.name or "").upper()
                pieces.append(metavar if param.required else f"[{metavar}]")
        return pieces


def _plain_usage(typer_app: typer.Typer) -> None:
    """Every command, including those registered after this module's own, gets `_Command`'s usage line."""
    for info in typer_app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = _Command


@functools.cache
def _stdout() -> "Console":
    from rich.console import Console  # not imported for JSON output: start-up time matters in CI loops

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:
            """Rich would exit 1 here, which reads as findings; `_reader_may_stop` decides instead."""
            self.quiet = True
            raise BrokenPipeError

    # The terminal's width on a TTY; in a pipe COLUMNS or 80, used only to wrap prose: the text reporter prints
    # every other line whole and unpadded, so nothing is cut or filled with trailing spaces.
    return StdoutConsole(highlight=False)


class InspectFormat(str, Enum):
    """What `inspect --format` writes: the listing for a person, or the JSON report."""

    text = "text"
    json = "json"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"


def _error(message: str) -> None:
    """One line: file and tensor names in the message are untrusted and could hold a newline or an escape."""
    sys.stderr.write(f"ckptdoctor: error: {shown(message)}\n")


@contextmanager
def _reader_may_stop() -> Iterator[None]:
    """`ckptdoctor inspect X | head -1`: a reader that closes the pipe early is not an error.

    The rest of the output is dropped and the command's own exit code stands (click would turn the
    BrokenPipeError into exit 1, which reads as findings). stdout is pointed at /dev/null so that the flush
    at interpreter exit has nowhere to fail ("Exception ignored ... BrokenPipeError")."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Anything that stops a command becomes one line on stderr and exit code 2."""
    try:
        yield
    except CkptDoctorError as error:
        _error(str(error))
        raise typer.Exit(ExitCode.ERROR) from None


def _supervise(*inputs: str | None) -> None:
    """Run the rest of the command under the stall watchdog when an input is read by native code (HDF5)."""
    watchdog.subject(next((i for i in inputs if i), "the input"))
    watchdog.supervise(inputs, ExitCode.ERROR)


def _version(value: bool) -> None:
    if value:
        _stdout().print(f"ckptdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    stats: Annotated[
        bool, typer.Option("--stats", help="Afterwards, print on stderr the requests and bytes of each remote read.")
    ] = False,
) -> None:
    if stats:
        import atexit

        atexit.register(_print_remote_stats)


def _print_remote_stats() -> None:
    """One line per remote file read (URLs without their secrets), then the total; the work's own process
    prints it (the stall watchdog's waiting parent leaves with os._exit)."""
    remote = sys.modules.get("ckptdoctor.formats.remote")  # never imported: nothing was read remotely
    lines = [] if remote is None else remote.stats_lines()
    for line in lines or ["no remote reads"]:
        sys.stderr.write(f"ckptdoctor: stats: {shown(line)}\n")


PathArg = Annotated[
    str,
    typer.Argument(
        metavar="CHECKPOINT", help="Checkpoint prefix, any of its files, or a directory.", show_default=False
    ),
]
FormatOpt = Annotated[InspectFormat, typer.Option("--format", "-f", help="Output format.")]
# Options several commands share, declared once.
ReportFormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
FailOnOpt = Annotated[
    FailOn | None,
    typer.Option("--fail-on", help="Lowest severity that makes the exit code 1 [default: error].", show_default=False),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replace a checkpoint already at --out.")]


@app.command()
def inspect(
    path: PathArg,
    output_format: FormatOpt = InspectFormat.text,
    every_variable: Annotated[
        bool,
        typer.Option("--all", help="Text: every variable, however many (past 1000 the table shows totals by scope)."),
    ] = False,
) -> None:
    """List every variable with dtype, shape, size and role, grouped by layer, with a BatchNorm summary."""
    from ckptdoctor.diagnose import inspect as run_inspect

    _supervise(path)
    with _one_line_errors():
        report = run_inspect(path)
    with _reader_may_stop():
        if output_format is InspectFormat.json:
            from ckptdoctor.report.json import render

            sys.stdout.write(render([report]))
            sys.stdout.flush()  # inside the guard: a closed pipe shows here, not at interpreter exit
        else:
            from ckptdoctor.report.text import render_inspect

            render_inspect(_stdout(), report, every_variable=every_variable)


@app.command()
def check(
    paths: Annotated[
        list[str],
        typer.Argument(metavar="PATH...", help="Checkpoints (prefixes, files or directories).", show_default=False),
    ],
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            "-r",
            metavar="CHECKPOINT",
            help="The checkpoint training started from (e.g. the pretrained model).",
        ),
    ] = None,
    fail_on: FailOnOpt = None,
    output_format: ReportFormatOpt = OutputFormat.TEXT,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the report to this file instead of stdout.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Policy file (TOML); default: [tool.ckptdoctor] in ./pyproject.toml.",
            show_default=False,
        ),
    ] = None,
    decay: Annotated[
        float | None,
        typer.Option(
            "--decay",
            metavar="D",
            min=0.0,
            max=1.0,
            help="BatchNorm decay (momentum) for every layer, over what the files say.",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            metavar="N",
            min=0,
            help="Training steps since the statistics started, over what the files say.",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Text: every finding in full, not one line per subject.")
    ] = False,
) -> None:
    """Diagnose checkpoints; exit 0 healthy, 1 findings at or above --fail-on, 2 unreadable."""
    from ckptdoctor.gate import gate
    from ckptdoctor.policy import load_policy

    with _one_line_errors():
        policy = load_policy(config)
    _supervise(*paths, reference)
    if output is not None:
        from ckptdoctor.writer.guard import files_read, refuse_overwriting_inputs

        with _one_line_errors():  # before the first byte is read: a report never replaces what it checks
            refuse_overwriting_inputs(output, [output], files_read([*paths, reference]))
    show_progress = output_format is OutputFormat.TEXT and output is None and sys.stderr.isatty()
    with _progress_bar(show_progress) as bar:

        def progress(path: str, done: int, total: int) -> None:
            watchdog.subject(path)
            watchdog.beat()
            if bar:
                bar(f"scanning {shown(path)}", done, total)

        verdict = gate(
            paths,
            reference=reference,
            policy=policy,
            fail_on=Severity(fail_on.value) if fail_on else None,
            decay=decay,
            steps=steps,
            progress=progress,
        )
    for unreadable in verdict.unreadable:
        _error(unreadable.message)
    reports = list(verdict.reports)
    if output_format is OutputFormat.TEXT and output is None:  # live, in colour on a terminal
        from ckptdoctor.report.text import render_check

        with _reader_may_stop():
            for report in reports:
                render_check(_stdout(), report, verbose=verbose)
    else:
        with _one_line_errors(), _reader_may_stop():
            _emit(render_report(reports, output_format, verdict.fail_on), output)
            sys.stdout.flush()
    raise typer.Exit(verdict.exit_code)


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr in bytes, only on a terminal; yields `advance(description, done, total)`,
    which starts a new bar line whenever the description changes (one per checkpoint)."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:

        def advance(description: str, done: int, total: int) -> None:
            if description not in tasks:
                tasks[description] = bar.add_task(description, total=None)
            bar.update(tasks[description], completed=done, total=total)

        yield advance


def _emit(text: str, output: str | None) -> None:
    """Write to stdout, or to --output: a regular file atomically, a FIFO, device or link written through."""
    if output is None:
        sys.stdout.write(text)
        return
    from ckptdoctor.writer.atomic import write_report

    try:
        write_report(output, text)
    except OSError as error:
        raise OutputError(f"{output}: cannot write the report ({error.strerror})") from None


@app.command()
def rules() -> None:
    """List every rule: code, name, severity and what it finds."""
    from ckptdoctor.report.text import render_rules
    from ckptdoctor.rules import CATALOGUE

    with _reader_may_stop():
        render_rules(_stdout(), CATALOGUE)


@app.command()
def explain(
    rule: Annotated[str, typer.Argument(metavar="RULE", help="A rule code (BN001) or name (bn-missing-moving-stats).")],
) -> None:
    """What a rule means, why it happens (with the TF/Keras error it explains) and how to fix it, per format."""
    from ckptdoctor.rules import BY_NAME

    found = BY_NAME.get(rule) or BY_NAME.get(rule.upper())
    if found is None:
        _error(f"{rule}: no such rule (see `ckptdoctor rules`)")
        raise typer.Exit(ExitCode.ERROR)
    from ckptdoctor.report.text import render_explanation

    with _reader_may_stop():
        render_explanation(_stdout(), found)


@app.command()
def patch(
    target: Annotated[
        str, typer.Argument(metavar="TARGET", help="The checkpoint that lacks statistics.", show_default=False)
    ],
    donor: Annotated[
        str, typer.Option("--from", metavar="DONOR", help="A full save holding the statistics.", show_default=False)
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="OUT", help="Prefix of the new checkpoint.", show_default=False)
    ],
    force: ForceOpt = False,
    name_map: Annotated[
        str | None,
        typer.Option(
            "--map",
            help="Assignment map (JSON, as match --assignment-map writes) from the donor's names to the target's.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write a new checkpoint: TARGET plus the moving statistics its BatchNorm layers lack, from DONOR."""
    from ckptdoctor.patch import patch as run_patch

    policy = _load_policy()
    _supervise(target, donor)
    with _one_line_errors(), _progress_bar(sys.stderr.isatty()) as bar:

        def progress(done: int, total: int) -> None:
            watchdog.beat()
            if bar:
                bar(f"writing {shown(out)}", done, total)

        result = run_patch(target, donor, out, force=force, progress=progress, name_map=name_map)
    verdict = _recheck(result.resolved, policy)
    with _reader_may_stop():
        if result.added:
            for line in _additions_by_layer(result.added, result.donor):
                _say(line)
        else:
            _say("nothing was missing: the output is a copy of the target")
        _show_written(result.written, result.state_change, verdict)
    raise typer.Exit(verdict.exit_code)


MAX_PATCHED_LAYERS_SHOWN = 20  # patch's summary: one line per layer up to this many, then a count


def _additions_by_layer(added: Sequence["Addition"], donor: str) -> list[str]:
    """`added 8 tensors to 4 BatchNorm layers from DONOR:`, then one line per layer with what it got."""
    by_layer: dict[str, list[Addition]] = {}
    for addition in added:
        by_layer.setdefault(addition.layer, []).append(addition)
    layers = len(by_layer)
    lines = [f"donor {shown(donor)}", f"added {_plural(len(added), 'tensor')} to {_plural(layers, 'BatchNorm layer')}:"]
    for layer, members in list(by_layer.items())[:MAX_PATCHED_LAYERS_SHOWN]:
        parts = ", ".join(a.statistic for a in members)
        kinds = {f"{a.dtype}{list(a.shape)}" for a in members}
        lines.append(shown(f"  + {layer}: {parts}  {' / '.join(sorted(kinds))}"))
    if layers > MAX_PATCHED_LAYERS_SHOWN:
        lines.append(f"  … and {layers - MAX_PATCHED_LAYERS_SHOWN} more layers")
    return lines


def _plural(count: int, noun: str) -> str:
    from ckptdoctor.report.text import plural

    return plural(count, noun)


@app.command()
def verify(
    checkpoint: PathArg,
    meta_graph: Annotated[
        str | None,
        typer.Option(
            "--meta-graph", metavar="META", help="TF1: the evaluation graph's .meta (MetaGraphDef).", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", metavar="MODEL", help="Keras/TF2: MODEL.keras or package.module:builder.", show_default=False
        ),
    ] = None,
) -> None:
    """Restore CHECKPOINT into the real model in TensorFlow or Keras (needs the tf extra)."""
    from ckptdoctor.verify import verify_meta_graph, verify_model

    if (meta_graph is None) == (model is None):
        _error("verify needs exactly one of --meta-graph (TF1 graphs) or --model (Keras and TF2)")
        raise typer.Exit(ExitCode.ERROR)
    _supervise(checkpoint)
    with _one_line_errors():
        if meta_graph is not None:
            result = verify_meta_graph(checkpoint, meta_graph)
        else:
            assert model is not None  # exactly one of the two, checked above
            result = verify_model(checkpoint, model)
    with _reader_may_stop():
        summary = f"{result.graph_variables} variables in the model, checkpoint {result.checkpoint}"
        _say(shown(summary))
        for key in result.missing:
            _say(f"  missing     {shown(key)}")
        for mismatch in result.mismatched:
            line = f"  mismatched  {mismatch.key}: graph {mismatch.expected}, checkpoint {mismatch.found}"
            _say(shown(line))
        for warning in result.warnings:
            sys.stderr.write(f"ckptdoctor: warning: {shown(warning)}\n")
        for note in result.notes:
            _say(f"note: {shown(note)}")
        if result.tf_error:
            _say(f"the restore failed: {shown(result.tf_error)}")
        if result.ok:
            _stdout().print("[bold green]restored for real: every variable matched[/]")
    raise typer.Exit(outcome_exit_code(result.ok))


class DiffFormat(str, Enum):
    text = "text"
    json = "json"


@app.command()
def diff(
    a: Annotated[str, typer.Argument(metavar="A", help="The checkpoint before.", show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="The checkpoint after.", show_default=False)],
    output_format: Annotated[DiffFormat, typer.Option("--format", "-f", help="Output format.")] = DiffFormat.text,
    atol: Annotated[
        float, typer.Option("--atol", metavar="ATOL", min=0.0, help="Absolute tolerance for float values.")
    ] = 0.0,
    rtol: Annotated[
        float,
        typer.Option("--rtol", metavar="RTOL", min=0.0, help="Relative tolerance for float values, of max(|a|, |b|)."),
    ] = 0.0,
) -> None:
    """Compare two checkpoints tensor by tensor, in any formats; exit 0 identical, 1 differences, 2 unreadable."""
    from ckptdoctor.diff import diff as run_diff

    _supervise(a, b)
    with _one_line_errors():
        report = run_diff(a, b, atol=atol, rtol=rtol, progress=watchdog.beat)
    if output_format is DiffFormat.json:
        from ckptdoctor.report.diff_json import render
    else:
        from ckptdoctor.report.diff_text import render
    with _reader_may_stop():
        sys.stdout.write(render(report))
        sys.stdout.flush()  # inside the guard: a closed pipe shows here, not at interpreter exit
    raise typer.Exit(report.exit_code)


def _run_app() -> int:
    """The command, as an exit code; any exception is one line on stderr, never a traceback."""
    _plain_usage(app)
    try:
        app()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else ExitCode.ERROR)
    except Exception as error:  # the promise is one line, never a traceback
        if os.environ.get("CKPTDOCTOR_DEBUG"):
            raise
        _error(f"unexpected {type(error).__name__}: {error} (set CKPTDOCTOR_DEBUG=1 for a traceback)")
        return ExitCode.ERROR
    return ExitCode.OK


def main() -> None:
    # A last guard: a name that reaches stdout without `shown` (an undecodable byte kept as a surrogate) is
    # written as an escape rather than failing the command.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    sys.exit(_run_app())


@app.command()
def match(
    checkpoint: PathArg,
    meta_graph: Annotated[
        str | None,
        typer.Option("--meta-graph", metavar="META", help="TF1: the graph's .meta (MetaGraphDef).", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="MODEL",
            help="Keras: MODEL.keras, or package.module:builder (tf extra).",
            show_default=False,
        ),
    ] = None,
    assignment_map: Annotated[
        str | None,
        typer.Option(
            "--assignment-map",
            metavar="FILE",
            help="Write the init_from_checkpoint assignment map (JSON) here.",
            show_default=False,
        ),
    ] = None,
    fail_on: FailOnOpt = None,
    output_format: ReportFormatOpt = OutputFormat.TEXT,
    config: Annotated[
        str | None,
        typer.Option("--config", metavar="FILE", help="Policy file (TOML), as for check.", show_default=False),
    ] = None,
) -> None:
    """Match CHECKPOINT against the model that restores it: matched, missing, unexpected, shape and dtype
    mismatches, renames that line names up; exit 0 all matched, 1 findings at or above --fail-on, 2 unreadable."""
    import dataclasses
    import json

    from ckptdoctor.match import match as run_match
    from ckptdoctor.match import summary
    from ckptdoctor.policy import load_policy

    if (meta_graph is None) == (model is None):
        _error("match needs exactly one of --meta-graph (TF1 graphs) or --model (Keras)")
        raise typer.Exit(ExitCode.ERROR)
    with _one_line_errors():
        policy = load_policy(config)
    _supervise(checkpoint, model)
    with _one_line_errors():
        result, report = run_match(checkpoint, meta_graph=meta_graph, model=model)
        if assignment_map is not None:
            from ckptdoctor.writer.atomic import write_report
            from ckptdoctor.writer.guard import files_read, refuse_overwriting_inputs

            refuse_overwriting_inputs(assignment_map, [assignment_map], files_read([checkpoint, meta_graph, model]))
            try:
                write_report(assignment_map, json.dumps(result.assignment_map, indent=2, sort_keys=True) + "\n")
            except OSError as error:
                raise OutputError(f"{assignment_map}: cannot write the assignment map ({error.strerror})") from None
    report = dataclasses.replace(report, findings=policy.apply(checkpoint, report.findings))
    threshold = policy.threshold(Severity(fail_on.value) if fail_on else None)
    with _reader_may_stop():
        if output_format is OutputFormat.TEXT:
            from ckptdoctor.report.text import render_check

            render_check(_stdout(), report)
            for line in summary(result):
                _say(shown(line))
            if assignment_map is not None:
                _say(f"wrote the assignment map to {shown(assignment_map)}")
        else:
            sys.stdout.write(render_report([report], output_format, threshold))
            sys.stdout.flush()
    raise typer.Exit(exit_code(report.findings, threshold))


LISTED = 50  # tensors strip and rename name one per line; a large model's hundreds of slots are counted


def _load_policy() -> "Policy":
    """The project's policy, loaded before a writing command writes: a bad one stops it before any byte."""
    from ckptdoctor.policy import load_policy

    with _one_line_errors():
        return load_policy()


def _recheck(resolved: "Resolved", policy: "Policy") -> "Verdict":
    """Check what a writing command wrote, read as exactly what was written, through the library gate: every
    policy key applies exactly as in `check`. Run before anything is printed, so a closed pipe cannot lose it."""
    from ckptdoctor.gate import gate

    return gate([resolved], policy=policy, progress=lambda *_: watchdog.beat())


def _say(line: str) -> None:
    """One line of plain text on stdout: names in it are already escaped, nothing is markup, nothing wraps."""
    _stdout().print(line, markup=False, soft_wrap=True)


def _show_written(written: Sequence[str], state_change: str | None, verdict: "Verdict") -> None:
    """What every writing command ends with: the files written (one per line: two long paths would not fit a
    terminal), what changed in the state file, and the re-check."""
    from ckptdoctor.report.text import render_check

    for path in written:
        _say(f"wrote {shown(path)}")
    if state_change:
        _say(shown(state_change))
    _stdout().print("re-checking the result:")
    for unreadable in verdict.unreadable:
        _error(unreadable.message)
    for report in verdict.reports:
        render_check(_stdout(), report)


@app.command()
def strip(
    checkpoint: PathArg,
    out: Annotated[str, typer.Option("--out", "-o", help="The deployment checkpoint to write.", show_default=False)],
    use_ema: Annotated[
        bool, typer.Option("--use-ema", help="Write each variable from its ExponentialMovingAverage shadow.")
    ] = False,
    keep_step: Annotated[bool, typer.Option("--keep-step", help="Keep global_step and save_counter.")] = False,
    force: ForceOpt = False,
) -> None:
    """Write a deployment checkpoint: weights and BatchNorm statistics kept; optimizer state, learning rates,
    EMA shadows and step counters dropped."""
    from collections import Counter

    from ckptdoctor.report.text import human_bytes
    from ckptdoctor.strip import strip as run_strip

    policy = _load_policy()
    _supervise(checkpoint)
    with _one_line_errors():
        result = run_strip(checkpoint, out, use_ema=use_ema, keep_step=keep_step, force=force)
    verdict = _recheck(result.resolved, policy)
    with _reader_may_stop():
        plan = result.plan
        kinds = Counter(dropped.what for dropped in plan.dropped)
        summary = ", ".join(f"{count} {what}" for what, count in sorted(kinds.items()))
        if plan.dropped:
            _say(f"dropped {len(plan.dropped)} tensors ({summary}):")
        else:
            _say("no training state to drop: the output holds every tensor of the input")
        for dropped in plan.dropped[:LISTED]:
            _say(f"  - {shown(dropped.name)}  ({dropped.what}, {human_bytes(dropped.nbytes)})")
        if len(plan.dropped) > LISTED:
            _say(f"  … and {len(plan.dropped) - LISTED} more")
        if plan.from_ema:
            averaged = f"{len(plan.from_ema)} variables written from their moving averages"
            _say(f"{averaged} (EMA shadows or optimizer averages)")
        if plan.without_shadow:
            first = shown(plan.without_shadow[0])
            more = f" and {len(plan.without_shadow) - 1} more" if len(plan.without_shadow) > 1 else ""
            _say(f"kept as stored, without a shadow: {first}{more}")
        _say(f"size: {human_bytes(result.size_before)} -> {human_bytes(result.size_after)}")
        _show_written(result.written, result.state_change, verdict)
    raise typer.Exit(verdict.exit_code)


@app.command()
def rename(
    checkpoint: PathArg,
    name_map: Annotated[
        str,
        typer.Option(
            "--map", help="Assignment map (JSON): {'old_scope/': 'new_scope/'} or exact names.", show_default=False
        ),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="The renamed checkpoint to write.", show_default=False)],
    force: ForceOpt = False,
) -> None:
    """Write CHECKPOINT with its names following MAP (TF1 keys, legacy Keras layer names), bytes as stored."""
    from ckptdoctor.rename import rename as run_rename

    policy = _load_policy()
    _supervise(checkpoint)
    with _one_line_errors():
        result = run_rename(checkpoint, name_map, out, force=force)
    verdict = _recheck(result.resolved, policy)
    with _reader_may_stop():
        _say(f"renamed {len(result.renamed)} tensors:")
        for old, new in result.renamed[:LISTED]:
            _say(f"  {shown(old)} -> {shown(new)}")
        if len(result.renamed) > LISTED:
            _say(f"  … and {len(result.renamed) - LISTED} more")
        _show_written(result.written, result.state_change, verdict)
    raise typer.Exit(verdict.exit_code)


@app.command()
def recalibrate(
    checkpoint: Annotated[str, typer.Argument(help="The checkpoint to recalibrate.", show_default=False)],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Samples: FILE.npy, FILE.npz (one array per input) or package.module:function.",
            show_default=False,
        ),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Prefix or file of the new checkpoint.", show_default=False)],
    meta_graph: Annotated[
        str | None,
        typer.Option(
            "--meta-graph", help="TF1: the training graph [default: CHECKPOINT's PREFIX.meta].", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Keras/TF2: MODEL.keras or package.module:builder.", show_default=False),
    ] = None,
    input_name: Annotated[
        str | None,
        typer.Option(
            "--input",
            help="TF1: the placeholder the samples go to (when not the one float placeholder).",
            show_default=False,
        ),
    ] = None,
    feed: Annotated[
        list[str] | None,
        typer.Option(
            "--feed",
            help="TF1: another placeholder's value, NAME=VALUE (is_training=true, keep_prob=1).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Samples per batch (.npy/.npz).")] = 32,
    batches: Annotated[
        int | None, typer.Option("--batches", min=1, help="Use at most this many batches.", show_default=False)
    ] = None,
    samples: Annotated[
        int | None, typer.Option("--samples", min=1, help="Use at most this many samples.", show_default=False)
    ] = None,
    force: ForceOpt = False,
) -> None:
    """Recompute BatchNorm statistics by running the model in training mode over samples (needs the tf extra)."""
    from ckptdoctor.recalibrate import MIN_SAMPLES, DataSpec, parse_feeds
    from ckptdoctor.recalibrate import recalibrate as run_recalibrate

    policy = _load_policy()
    with _one_line_errors():
        feeds = parse_feeds(feed or [])
    spec = DataSpec(data, batch_size=batch_size, batches=batches, samples=samples)
    with _one_line_errors(), _sample_progress(sys.stderr.isatty()) as advance:
        result = run_recalibrate(
            checkpoint,
            spec,
            out,
            meta_graph=meta_graph,
            model=model,
            input_name=input_name,
            feeds=feeds,
            force=force,
            progress=advance,
        )
    verdict = _recheck(result.resolved, policy)
    if result.few_samples:
        sys.stderr.write(
            f"ckptdoctor: warning: only {result.samples} samples; population statistics from fewer than "
            f"{MIN_SAMPLES:,} are noisy\n"
        )
    with _reader_may_stop():
        _say(
            f"recalibrated {len(result.layers)} BatchNorm layers over {result.samples} samples in {result.batches} "
            f"batches: {result.replaced} statistics replaced, {result.added} added"
        )
        _say("  layer: largest relative change of moving_mean, moving_variance")
        for change in result.layers:
            moved = ", ".join(
                "added" if value is None else f"{value:.3g}" for value in (change.mean_change, change.variance_change)
            )
            _say(f"  {shown(change.layer)}: {moved}")
        _show_written(result.written, result.state_change, verdict)
    raise typer.Exit(verdict.exit_code)


@contextmanager
def _sample_progress(enabled: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    """A progress bar on stderr counting samples, only on a terminal."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("samples"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("samples", total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance
