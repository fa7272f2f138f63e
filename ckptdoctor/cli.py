"""The command line: argparse here, rich only in the text reporter (for a terminal with colour) and the
progress bars (for stderr on a terminal).

argparse, not typer: importing typer alone took 2.7x `python -c pass`, more than issue 13 allows `--help`
(2.5x). This module's own imports are what parsing and `--help` need (the standard library, names.py, the
report formats' enum); every command imports the library, and the text reporter, when it runs."""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import Enum

from ckptdoctor import TYPE_CHECKING, __version__  # not typing's TYPE_CHECKING: see ckptdoctor/__init__.py
from ckptdoctor.names import listed, shown
from ckptdoctor.report import OutputFormat
from ckptdoctor.report import render as render_report

if TYPE_CHECKING:
    from typing import Any, NoReturn

    from _typeshed import SupportsWrite

    from ckptdoctor.formats import Resolved
    from ckptdoctor.gate import Verdict
    from ckptdoctor.model import Severity
    from ckptdoctor.patch import Addition
    from ckptdoctor.policy import Policy
    from ckptdoctor.report.text import TextSink

SEVERITIES = ("error", "warning", "info")  # model.Severity's values: model.py is not imported to show the help


@functools.cache
def _stdout() -> TextSink:
    """Where text goes: plain strings into a pipe or a file (rich is not imported: start-up time matters in CI
    loops), rich's Console on a terminal with colour."""
    from ckptdoctor.report.text import stdout_sink

    return stdout_sink()


class InspectFormat(str, Enum):
    """What `inspect --format` writes: the listing for a person, or the JSON report."""

    text = "text"
    json = "json"


class DiffFormat(str, Enum):
    text = "text"
    json = "json"


def _error(message: str) -> None:
    """One line: file and tensor names in the message are untrusted and could hold a newline or an escape. Where
    stderr itself cannot take it (`2>/dev/full`), the exit code is all that is left to say it."""
    with suppress(OSError, ValueError):
        sys.stderr.write(f"ckptdoctor: error: {shown(message)}\n")


def _warning(message: str) -> None:
    """One line on stderr, escaped as `_error`'s is; the command goes on."""
    sys.stderr.write(f"ckptdoctor: warning: {shown(message)}\n")


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flush at interpreter exit has nowhere to fail ("Exception ignored
    ... BrokenPipeError") once the reader has closed the pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


@contextmanager
def _writing_stdout() -> Iterator[None]:
    """Around whatever writes to stdout. `ckptdoctor inspect X | head -1`: a reader that closes the pipe early is
    not an error; the rest of the output is dropped and the command's own exit code stands (not an error's 2,
    nor a 1 that would read as findings). Any other failed write (`> report.json` on a full disk) is: one line
    and exit 2, never a traceback, and never the command's 0 with its output lost."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()
    except OSError as error:
        from ckptdoctor.policy import ExitCode

        _silence_stdout()  # what is still buffered would fail again at exit
        _error(f"cannot write to stdout ({error.strerror or error})")
        raise SystemExit(ExitCode.ERROR) from None


def _flushed_stdout() -> bool:
    """Flush stdout: True when everything written reached it (or a reader stopped early), False once the error
    is said (see `_writing_stdout`)."""
    try:
        with _writing_stdout():
            sys.stdout.flush()
    except SystemExit:
        return False
    except ValueError:  # stdout closed
        pass
    return True


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Anything that stops a command becomes one line on stderr and exit code 2."""
    from ckptdoctor.errors import CkptDoctorError

    try:
        yield
    except CkptDoctorError as error:
        from ckptdoctor.policy import ExitCode

        _error(str(error))
        raise SystemExit(ExitCode.ERROR) from None


def _supervise(*inputs: str | None) -> None:
    """Run the rest of the command under the stall watchdog when an input is read by native code (HDF5)."""
    from ckptdoctor import watchdog
    from ckptdoctor.policy import ExitCode

    watchdog.subject(next((i for i in inputs if i), "the input"))
    watchdog.supervise(inputs, ExitCode.ERROR)


def _print_remote_stats() -> None:
    """One line per remote file read (URLs without their secrets), then the total; the work's own process
    prints it (the stall watchdog's waiting parent leaves with os._exit)."""
    remote = sys.modules.get("ckptdoctor.formats.remote")  # never imported: nothing was read remotely
    lines = [] if remote is None else remote.stats_lines()
    for line in lines or ["no remote reads"]:
        sys.stderr.write(f"ckptdoctor: stats: {shown(line)}\n")


def inspect(*, path: str, output_format: InspectFormat, every_variable: bool) -> int:
    """List every variable with dtype, shape, size and role, grouped by layer, with a BatchNorm summary."""
    from ckptdoctor.diagnose import inspect as run_inspect
    from ckptdoctor.policy import ExitCode

    _supervise(path)
    with _one_line_errors():
        report = run_inspect(path)
    with _writing_stdout():
        if output_format is InspectFormat.json:
            from ckptdoctor.report.json import render

            _write_document(render([report]))
            sys.stdout.flush()  # inside the guard: a closed pipe shows here, not at interpreter exit
        else:
            from ckptdoctor.report.text import render_inspect

            render_inspect(_stdout(), report, every_variable=every_variable)
    return ExitCode.OK


def check(
    *,
    paths: list[str],
    reference: str | None,
    fail_on: Severity | None,
    output_format: OutputFormat,
    output: str | None,
    config: str | None,
    decay: float | None,
    steps: int | None,
    verbose: bool,
) -> int:
    """Diagnose checkpoints: BatchNorm statistics missing, at init, stale or broken, NaN/Inf, damaged bytes; exit 0
    healthy, 1 findings at or above --fail-on, 2 unreadable."""
    from ckptdoctor import watchdog
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
            fail_on=fail_on,
            decay=decay,
            steps=steps,
            progress=progress,
        )
    for unreadable in verdict.unreadable:
        _error(unreadable.message)
    reports = list(verdict.reports)
    if output_format is OutputFormat.TEXT and output is None:  # live, in colour on a terminal
        from ckptdoctor.report.text import render_check

        with _writing_stdout():
            for report in reports:
                render_check(_stdout(), report, verbose=verbose)
    else:
        with _one_line_errors(), _writing_stdout():
            _emit(render_report(reports, output_format, verdict.fail_on), output)
            sys.stdout.flush()
    return verdict.exit_code


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


DOCUMENT_SLICE = 1 << 20  # characters of a document encoded and written at a time


def _write_document(text: str) -> None:
    """A whole document to stdout, a slice at a time: one write would first encode a copy of all of it (the JSON
    report of 100,000 variables is ~35 MB)."""
    for start in range(0, len(text), DOCUMENT_SLICE):
        sys.stdout.write(text[start : start + DOCUMENT_SLICE])


def _emit(text: str, output: str | None) -> None:
    """Write to stdout, or to --output: a regular file atomically, a FIFO, device or link written through."""
    if output is None:
        _write_document(text)
        return
    from ckptdoctor.errors import OutputError
    from ckptdoctor.writer.atomic import write_report

    try:
        write_report(output, text)
    except OSError as error:
        raise OutputError(f"{output}: cannot write the report ({error.strerror})") from None


def rules() -> int:
    """List every rule: code, name, severity and what it finds."""
    from ckptdoctor.policy import ExitCode
    from ckptdoctor.report.text import render_rules
    from ckptdoctor.rules import CATALOGUE

    with _writing_stdout():
        render_rules(_stdout(), CATALOGUE)
    return ExitCode.OK


def explain(*, rule: str) -> int:
    """What a rule means, why it happens (with the TF/Keras error it explains) and how to fix it, per format."""
    from ckptdoctor.policy import ExitCode
    from ckptdoctor.rules import BY_NAME

    found = BY_NAME.get(rule) or BY_NAME.get(rule.upper())
    if found is None:
        _error(f"{rule}: no such rule (see `ckptdoctor rules`)")
        return ExitCode.ERROR
    from ckptdoctor.report.text import render_explanation

    with _writing_stdout():
        render_explanation(_stdout(), found)
    return ExitCode.OK


def patch(*, target: str, donor: str, out: str, force: bool, name_map: str | None) -> int:
    """Write a new checkpoint: TARGET plus the moving statistics its BatchNorm layers lack, from DONOR."""
    from ckptdoctor import watchdog
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
    with _writing_stdout():
        if result.added:
            for line in _additions_by_layer(result.added, result.donor):
                _say(line)
        else:
            _say("nothing was missing: the output is a copy of the target")
        _show_written(result.written, result.state_change, verdict)
    return verdict.exit_code


MAX_PATCHED_LAYERS_SHOWN = 20  # patch's summary: one line per layer up to this many, then a count
MAX_LAYERS_NAMED = 20  # a warning names this many layers, then counts the rest


def _additions_by_layer(added: Sequence[Addition], donor: str) -> list[str]:
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


def verify(*, checkpoint: str, meta_graph: str | None, model: str | None) -> int:
    """Restore CHECKPOINT into the real model in TensorFlow or Keras (needs the tf extra)."""
    from ckptdoctor.policy import ExitCode, outcome_exit_code
    from ckptdoctor.verify import verify_meta_graph, verify_model

    if (meta_graph is None) == (model is None):
        _error("verify needs exactly one of --meta-graph (TF1 graphs) or --model (Keras and TF2)")
        return ExitCode.ERROR
    _supervise(checkpoint)
    with _one_line_errors():
        if meta_graph is not None:
            result = verify_meta_graph(checkpoint, meta_graph)
        else:
            assert model is not None  # exactly one of the two, checked above
            result = verify_model(checkpoint, model)
    with _writing_stdout():
        summary = f"{result.graph_variables} variables in the model, checkpoint {result.checkpoint}"
        _say(shown(summary))
        for key in result.missing:
            _say(f"  missing     {shown(key)}")
        for mismatch in result.mismatched:
            line = f"  mismatched  {mismatch.key}: graph {mismatch.expected}, checkpoint {mismatch.found}"
            _say(shown(line))
        for warning in result.warnings:
            _warning(warning)
        for note in result.notes:
            _say(f"note: {shown(note)}")
        if result.tf_error:
            _say(f"the restore failed: {shown(result.tf_error)}")
        if result.ok:
            _stdout().line(("restored for real: every variable matched", "bold green"))
    return outcome_exit_code(result.ok)


def diff(*, a: str, b: str, output_format: DiffFormat, atol: float, rtol: float) -> int:
    """Compare two checkpoints tensor by tensor, in any formats; exit 0 identical, 1 differences, 2 unreadable."""
    from ckptdoctor import watchdog
    from ckptdoctor.diff import diff as run_diff

    _supervise(a, b)
    with _one_line_errors():
        report = run_diff(a, b, atol=atol, rtol=rtol, progress=watchdog.beat)
    if output_format is DiffFormat.json:
        from ckptdoctor.report.diff_json import render
    else:
        from ckptdoctor.report.diff_text import render
    with _writing_stdout():
        _write_document(render(report))
        sys.stdout.flush()  # inside the guard: a closed pipe shows here, not at interpreter exit
    return report.exit_code


def match(
    *,
    checkpoint: str,
    meta_graph: str | None,
    model: str | None,
    assignment_map: str | None,
    fail_on: Severity | None,
    output_format: OutputFormat,
    config: str | None,
) -> int:
    """Match CHECKPOINT against the model that restores it: matched, missing, unexpected, shape and dtype
    mismatches, and the renames that make names line up; exit 0 all matched, 1 findings at or above --fail-on, 2
    unreadable."""
    import json

    from ckptdoctor.errors import OutputError
    from ckptdoctor.match import match as run_match
    from ckptdoctor.match import summary
    from ckptdoctor.policy import ExitCode, exit_code, load_policy

    if (meta_graph is None) == (model is None):
        _error("match needs exactly one of --meta-graph (TF1 graphs) or --model (Keras)")
        return ExitCode.ERROR
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
    report = policy.apply_to_report(checkpoint, report)
    threshold = policy.threshold(fail_on)
    with _writing_stdout():
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
    return exit_code(report.findings, threshold)


LISTED = 50  # tensors strip and rename name one per line; a large model's hundreds of slots are counted


def _load_policy() -> Policy:
    """The project's policy, loaded before a writing command writes: a bad one stops it before any byte."""
    from ckptdoctor.policy import load_policy

    with _one_line_errors():
        return load_policy()


def _recheck(resolved: Resolved, policy: Policy) -> Verdict:
    """Check what a writing command wrote, read as exactly what was written, through the library gate: every
    policy key applies exactly as in `check`. Run before anything is printed, so a closed pipe cannot lose it."""
    from ckptdoctor import watchdog
    from ckptdoctor.gate import gate

    return gate([resolved], policy=policy, progress=lambda *_: watchdog.beat())


def _say(line: str) -> None:
    """One line of text on stdout as given: names in it are already escaped; nothing is markup or an emoji
    code, nothing wraps."""
    _stdout().line(line)


def _show_written(written: Sequence[str], state_change: str | None, verdict: Verdict) -> None:
    """What every writing command ends with: the files written (one per line: two long paths would not fit a
    terminal), what changed in the state file, and the re-check."""
    from ckptdoctor.report.text import render_check

    for path in written:
        _say(f"wrote {shown(path)}")
    if state_change:
        _say(shown(state_change))
    _say("re-checking the result:")
    for unreadable in verdict.unreadable:
        _error(unreadable.message)
    for report in verdict.reports:
        render_check(_stdout(), report)


def strip(*, checkpoint: str, out: str, use_ema: bool, keep_step: bool, force: bool) -> int:
    """Write a deployment checkpoint without optimizer state, learning rates, EMA shadows and step counters; the
    weights and BatchNorm statistics are kept."""
    from collections import Counter

    from ckptdoctor.report.text import human_bytes
    from ckptdoctor.strip import strip as run_strip

    policy = _load_policy()
    _supervise(checkpoint)
    with _one_line_errors():
        result = run_strip(checkpoint, out, use_ema=use_ema, keep_step=keep_step, force=force)
    verdict = _recheck(result.resolved, policy)
    with _writing_stdout():
        plan = result.plan
        kinds = Counter(dropped.what for dropped in plan.dropped)
        summary = ", ".join(f"{count} {what}" for what, count in sorted(kinds.items()))
        if plan.dropped:
            _say(f"dropped {len(plan.dropped)} tensors ({summary}):")
        else:
            _say("no training state to drop: the output holds every tensor of the input")
        for dropped in plan.dropped[:LISTED]:
            _say(f"  - {shown(dropped.subject)}  ({dropped.what}, {human_bytes(dropped.nbytes)})")
        if len(plan.dropped) > LISTED:
            _say(f"  … and {len(plan.dropped) - LISTED} more")
        if plan.from_ema:
            averaged = f"{len(plan.from_ema)} variables written from their moving averages"
            _say(f"{averaged} (EMA shadows or optimizer averages)")
        if plan.without_shadow:
            _say(f"kept as stored, without a shadow: {shown(listed(plan.without_shadow, 1))}")
        _say(f"files on disk: {human_bytes(result.size_before)} -> {human_bytes(result.size_after)}")
        _show_written(result.written, result.state_change, verdict)
    return verdict.exit_code


def rename(*, checkpoint: str, name_map: str, out: str, force: bool) -> int:
    """Write CHECKPOINT with its names following MAP (TF1 keys, legacy Keras layer names), bytes as stored."""
    from ckptdoctor.rename import rename as run_rename

    policy = _load_policy()
    _supervise(checkpoint)
    with _one_line_errors():
        result = run_rename(checkpoint, name_map, out, force=force)
    verdict = _recheck(result.resolved, policy)
    with _writing_stdout():
        _say(f"renamed {len(result.renamed)} tensors:")
        for old, new in result.renamed[:LISTED]:
            _say(f"  {shown(old)} -> {shown(new)}")
        if len(result.renamed) > LISTED:
            _say(f"  … and {len(result.renamed) - LISTED} more")
        _show_written(result.written, result.state_change, verdict)
    if result.stranded_slots and result.slot_entry:
        old, new = result.slot_entry
        _warning(
            f"{_plural(len(result.stranded_slots), 'optimizer slot')} left under the old variable names (e.g. "
            f"{result.stranded_slots[0]}), where an optimizer restoring the renamed variables will not look; to "
            f'move them too, add "{old}": "{new}" to the map'
        )
    return verdict.exit_code


def recalibrate(
    *,
    checkpoint: str,
    data: str,
    out: str,
    meta_graph: str | None,
    model: str | None,
    input_name: str | None,
    feed: list[str] | None,
    batch_size: int,
    batches: int | None,
    samples: int | None,
    force: bool,
) -> int:
    """Recompute BatchNorm statistics by running the model in training mode over samples (needs the tf extra)."""
    from ckptdoctor import watchdog
    from ckptdoctor.recalibrate import MIN_SAMPLES, DataSpec, parse_feeds
    from ckptdoctor.recalibrate import recalibrate as run_recalibrate

    policy = _load_policy()
    with _one_line_errors():
        feeds = parse_feeds(feed or [])
    spec = DataSpec(data, batch_size=batch_size, batches=batches, samples=samples)
    _supervise(checkpoint, model)  # before TensorFlow's import: the watched work runs in a forked child
    with _one_line_errors(), _sample_progress(sys.stderr.isatty()) as bar:

        def advance(done: int, total: int | None) -> None:
            watchdog.beat()  # each batch is progress: a model or data that stops answering is stopped
            if bar:
                bar(done, total)

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
        _warning(f"only {result.samples} samples; population statistics from fewer than {MIN_SAMPLES:,} are noisy")
    if result.untouched:
        _warning(
            f"{_plural(len(result.untouched), 'BatchNorm layer')} of the checkpoint the model computed no statistics "
            f"for, written as they were: {listed(result.untouched, MAX_LAYERS_NAMED)}"
        )
    with _writing_stdout():
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
    return verdict.exit_code


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


# ------------------------------------------------------------------------------------------ the command line


class _HelpFormatter(argparse.HelpFormatter):
    """Help in one style for every command: `usage: ckptdoctor check [OPTIONS] PATH...`, each option's forms
    then its metavar once (`-f, --format {text,json}`), and after the help what applies: `[required]`, the
    default, the bounds of a number."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        # argparse would import shutil for the width (2.6 ms, in every run: add_argument builds a formatter),
        # and take 2 columns off it, as here.
        super().__init__(prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width)

    def _format_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None) -> str:
        """`%(prog)s [OPTIONS]` and the arguments: argparse's own usage line would list every option."""
        if usage is None:
            arguments = [_usage_metavar(action) for action in actions if not action.option_strings]
            usage = " ".join(["%(prog)s", "[OPTIONS]", *arguments])
        return super()._format_usage(usage, actions, groups, prefix)

    def _format_action(self, action: argparse.Action) -> str:
        """The command list without argparse's `COMMAND` line above it."""
        text = super()._format_action(action)
        return text.partition("\n")[2] if action.nargs == argparse.PARSER else text

    def _iter_indented_subactions(self, action: argparse.Action) -> Generator[argparse.Action, None, None]:
        """The commands at the options' indent: argparse would indent them further, and then line up every help
        text as though they were not."""
        if isinstance(action, argparse._SubParsersAction):
            yield from action._get_subactions()

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {metavar}"

    def _split_lines(self, text: str, width: int) -> list[str]:
        """Help wrapped to the terminal, but a bracketed note (`[default: error]`) never broken across lines."""
        glued = re.sub(r"\[[^\]]*\]", lambda note: note.group().replace(" ", "\0"), text)
        return [line.replace("\0", " ") for line in super()._split_lines(glued, width)]

    def _get_help_string(self, action: argparse.Action) -> str:
        notes = []
        if action.required and action.option_strings:
            notes.append("required")
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and action.nargs != 0:
            default = action.default.value if isinstance(action.default, Enum) else action.default
            notes.append(f"default: {default}")
        if isinstance(action.type, _Bounded):
            notes.append(action.type.bounds)
        help = action.help or ""
        return f"{help}  [{'; '.join(notes).replace('%', '%%')}]" if notes else help  # argparse %-formats help


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns: COLUMNS where it is a positive number, else stdout's terminal, else 80."""
    with suppress(ValueError):  # `COLUMNS=²` is a digit to str.isdigit, not to int()
        if (columns := int(os.environ.get("COLUMNS", ""))) > 0:
            return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def _usage_metavar(action: argparse.Action) -> str:
    """An argument as the usage line names it: `CHECKPOINT`, `PATH...`, `COMMAND ...`."""
    metavar = str(action.metavar or action.dest.upper())
    return {"+": f"{metavar}...", argparse.PARSER: f"{metavar} ..."}.get(str(action.nargs), metavar)


class _Parser(argparse.ArgumentParser):
    """Every parser of the command line: options spelled out in full (no prefix of one is taken for it), help
    in `_HelpFormatter`'s style, `-h` beside `--help`, and what the user typed escaped in an error."""

    def __init__(self, arguments: Callable[[argparse.ArgumentParser], None] | None = None, **settings: Any) -> None:
        super().__init__(allow_abbrev=False, add_help=False, formatter_class=_HelpFormatter, **settings)
        self.add_argument("-h", "--help", action="help", help="Show this message and exit.")
        self._parsing = False
        # A command's own arguments are declared when it is the one parsed: declaring all eleven commands'
        # took ~2 ms of every run.
        self._undeclared = arguments

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[Any, list[str]]:
        """A command's paths may stand before, between and after its options (`check A -f json B`), as they
        could under click; nothing is left over: an argument a command does not know is the command's usage
        error (argparse would hand it up for the top-level parser to report, with the top-level usage)."""
        if self._undeclared is not None:
            declare, self._undeclared = self._undeclared, None
            declare(self)
        if self._parsing or self._subparsers is not None:  # argparse's own passes; the top level's commands
            return super().parse_known_args(args, namespace)
        # After `--` everything is a path (the action passes globs so): argparse's intermixed parsing would read
        # `--output=x` there as an option once its first pass has dropped the `--`.
        intermixed = args is None or "--" not in args
        self._parsing = True
        try:
            parse = super().parse_known_intermixed_args if intermixed else super().parse_known_args
            parsed, extras = parse(args, namespace)
        finally:
            self._parsing = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        """As argparse's, but a write that fails is not dropped: `--help > /dev/full` would exit 0 with nothing
        written (`_writing_stdout` says it instead)."""
        if message:
            (file or sys.stderr).write(message)

    def error(self, message: str) -> NoReturn:
        """argparse's usage and one line naming the argument, exit 2."""
        from ckptdoctor.policy import ExitCode

        self.print_usage(sys.stderr)
        self.exit(ExitCode.ERROR, f"{self.prog}: error: {shown(message)}\n")


class _Bounded:
    """An option's number, refused unless within bounds (NaN never is): argparse's usage error names the option."""

    def __init__(self, kind: type[int] | type[float], low: float, high: float | None = None) -> None:
        self.kind, self.low, self.high = kind, low, high
        self.bounds = f"{low:g}<=x<={high:g}" if high is not None else f"x>={low:g}"  # never wrapped

    def __call__(self, text: str) -> float:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {self.kind.__name__} value: {text!r}") from None
        if not (self.low <= value and (self.high is None or value <= self.high)):
            raise argparse.ArgumentTypeError(f"{text} is not in the range {self.bounds}")
        return value


def _member_of(enum: Callable[[], type[Enum]]) -> Callable[[str], Any]:
    """An option's value as the member of `enum()` (called once the option is given: the enum's module is not
    imported for `--help`); any other value is left to argparse's choices check, whose error lists them."""

    def convert(text: str) -> Any:
        members = enum()
        return members(text) if text in {member.value for member in members} else text

    return convert


def _severity() -> type[Enum]:
    from ckptdoctor.model import Severity

    return Severity


# Arguments and options several commands share, declared once.


def _checkpoint_argument(parser: argparse.ArgumentParser, dest: str = "checkpoint") -> None:
    parser.add_argument(dest, metavar="CHECKPOINT", help="Checkpoint prefix, any of its files, or a directory.")


def _format_option(parser: argparse.ArgumentParser, formats: type[Enum], default: Enum) -> None:
    choices = [member.value for member in formats]
    parser.add_argument(
        "-f",
        "--format",
        dest="output_format",
        type=_member_of(lambda: formats),
        choices=choices,
        default=default,
        help="Output format.",
    )


def _fail_on_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-on",
        type=_member_of(_severity),
        choices=SEVERITIES,
        help="Lowest severity that makes the exit code 1 [default: error].",  # the policy file's, else error
    )


def _force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="Replace a checkpoint already at --out.")


def _out_option(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("-o", "--out", metavar="OUT", required=True, help=help)


def _inspect_arguments(parser: argparse.ArgumentParser) -> None:
    _checkpoint_argument(parser, "path")
    _format_option(parser, InspectFormat, InspectFormat.text)
    parser.add_argument(
        "--all",
        dest="every_variable",
        action="store_true",
        help="Text: every variable, however many (past 1000 the table shows totals by scope).",
    )


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", metavar="PATH", nargs="+", help="Checkpoints (prefixes, files or directories).")
    parser.add_argument(
        "-r",
        "--reference",
        metavar="CHECKPOINT",
        help="The checkpoint training started from (e.g. the pretrained model).",
    )
    _fail_on_option(parser)
    _format_option(parser, OutputFormat, OutputFormat.TEXT)
    parser.add_argument("-o", "--output", metavar="FILE", help="Write the report to this file instead of stdout.")
    parser.add_argument(
        "--config", metavar="FILE", help="Policy file (TOML); default: [tool.ckptdoctor] in ./pyproject.toml."
    )
    parser.add_argument(
        "--decay",
        metavar="D",
        type=_Bounded(float, 0.0, 1.0),
        help="BatchNorm decay (momentum) for every layer, over what the files say.",
    )
    parser.add_argument(
        "--steps",
        metavar="N",
        type=_Bounded(int, 0),
        help="Training steps since the statistics started, over what the files say.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="Text: every finding in full, not one line per subject."
    )


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rule", metavar="RULE", help="A rule code (BN001) or name (bn-missing-moving-stats).")


def _patch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help="The checkpoint that lacks statistics.")
    parser.add_argument(
        "--from", dest="donor", metavar="DONOR", required=True, help="A full save holding the statistics."
    )
    _out_option(parser, "Prefix of the new checkpoint.")
    _force_option(parser)
    parser.add_argument(
        "--map",
        dest="name_map",
        metavar="MAP",
        help="Assignment map (JSON, as match --assignment-map writes) from the donor's names to the target's.",
    )


def _verify_arguments(parser: argparse.ArgumentParser) -> None:
    _checkpoint_argument(parser)
    parser.add_argument("--meta-graph", metavar="META", help="TF1: the evaluation graph's .meta (MetaGraphDef).")
    parser.add_argument("--model", metavar="MODEL", help="Keras/TF2: MODEL.keras or package.module:builder.")


def _diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="The checkpoint before.")
    parser.add_argument("b", metavar="B", help="The checkpoint after.")
    _format_option(parser, DiffFormat, DiffFormat.text)
    parser.add_argument(
        "--atol",
        metavar="ATOL",
        type=_Bounded(float, 0.0),
        default=0.0,
        help="Absolute tolerance for float values.",
    )
    parser.add_argument(
        "--rtol",
        metavar="RTOL",
        type=_Bounded(float, 0.0),
        default=0.0,
        help="Relative tolerance for float values, of max(|a|, |b|).",
    )


def _match_arguments(parser: argparse.ArgumentParser) -> None:
    _checkpoint_argument(parser)
    parser.add_argument("--meta-graph", metavar="META", help="TF1: the graph's .meta (MetaGraphDef).")
    parser.add_argument("--model", metavar="MODEL", help="Keras: MODEL.keras, or package.module:builder (tf extra).")
    parser.add_argument(
        "--assignment-map", metavar="FILE", help="Write the init_from_checkpoint assignment map (JSON) here."
    )
    _fail_on_option(parser)
    _format_option(parser, OutputFormat, OutputFormat.TEXT)
    parser.add_argument("--config", metavar="FILE", help="Policy file (TOML), as for check.")


def _strip_arguments(parser: argparse.ArgumentParser) -> None:
    _checkpoint_argument(parser)
    _out_option(parser, "The deployment checkpoint to write.")
    parser.add_argument(
        "--use-ema", action="store_true", help="Write each variable from its ExponentialMovingAverage shadow."
    )
    parser.add_argument("--keep-step", action="store_true", help="Keep global_step and save_counter.")
    _force_option(parser)


def _rename_arguments(parser: argparse.ArgumentParser) -> None:
    _checkpoint_argument(parser)
    parser.add_argument(
        "--map",
        dest="name_map",
        metavar="MAP",
        required=True,
        help="Assignment map (JSON): {'old_scope/': 'new_scope/'} or exact names.",
    )
    _out_option(parser, "The renamed checkpoint to write.")
    _force_option(parser)


def _recalibrate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="The checkpoint to recalibrate.")
    parser.add_argument(
        "--data",
        metavar="DATA",
        required=True,
        help="Samples: FILE.npy, FILE.npz (one array per input) or package.module:function.",
    )
    _out_option(parser, "Prefix or file of the new checkpoint.")
    parser.add_argument(
        "--meta-graph", metavar="META", help="TF1: the training graph [default: CHECKPOINT's PREFIX.meta]."
    )
    parser.add_argument("--model", metavar="MODEL", help="Keras/TF2: MODEL.keras or package.module:builder.")
    parser.add_argument(
        "--input",
        dest="input_name",
        metavar="NAME",
        help="TF1: the placeholder the samples go to (when not the one float placeholder).",
    )
    parser.add_argument(
        "--feed",
        metavar="NAME=VALUE",
        action="append",
        help="TF1: another placeholder's value, NAME=VALUE (is_training=true, keep_prob=1).",
    )
    parser.add_argument(
        "--batch-size", metavar="N", type=_Bounded(int, 1), default=32, help="Samples per batch (.npy/.npz)."
    )
    parser.add_argument("--batches", metavar="N", type=_Bounded(int, 1), help="Use at most this many batches.")
    parser.add_argument("--samples", metavar="N", type=_Bounded(int, 1), help="Use at most this many samples.")
    _force_option(parser)


# Each command in the order `--help` lists them, with what declares its arguments.
_COMMANDS: tuple[tuple[Callable[..., int], Callable[[argparse.ArgumentParser], None] | None], ...] = (
    (inspect, _inspect_arguments),
    (check, _check_arguments),
    (rules, None),
    (explain, _explain_arguments),
    (patch, _patch_arguments),
    (verify, _verify_arguments),
    (diff, _diff_arguments),
    (match, _match_arguments),
    (strip, _strip_arguments),
    (rename, _rename_arguments),
    (recalibrate, _recalibrate_arguments),
)


def _parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The command line that parses `argv`: each command's function is its parser's `run`, called with the
    parsed values. A command's docstring is its description, up to the first `;` its line in the list.

    Only the command `argv` names gets a parser: each costs ~0.1 ms, with the lookups on disk for argparse's
    translated headings. Every command gets one wherever the top level might do more than run that command
    (its help, an unknown or missing command, `--`, a word argparse reads as a value), for the lists that show
    them all."""
    root = _Parser(prog="ckptdoctor", description="Inspect, check, repair and verify TensorFlow and Keras checkpoints.")
    root.add_argument(
        "--version", action="version", version=f"ckptdoctor {__version__}", help="Show the version and exit."
    )
    root.add_argument(
        "--stats", action="store_true", help="Afterwards, print on stderr the requests and bytes of each remote read."
    )
    commands = root.add_subparsers(title="commands", metavar="COMMAND", prog="ckptdoctor")
    named = next((word for word in argv if word != "--stats"), None)  # --stats: the one option before a command
    for run, arguments in [command for command in _COMMANDS if command[0].__name__ == named] or _COMMANDS:
        about = " ".join((run.__doc__ or "").split())
        summary = about.split("; ")[0].removesuffix(".") + "."
        parser = commands.add_parser(run.__name__, help=summary, description=about, arguments=arguments)
        parser.set_defaults(run=run)
    return root


def _run_app(argv: Sequence[str] | None = None) -> int:
    """The command, as an exit code; any exception is one line on stderr, never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = _parser(argv)
        with _writing_stdout():  # --help and --version print here
            arguments = vars(parser.parse_args(argv))
        if arguments.pop("stats"):
            import atexit

            atexit.register(_print_remote_stats)
        run = arguments.pop("run", None)
        if run is None:  # no command: the help, on stderr, exit 2 as for any incomplete command line
            from ckptdoctor.policy import ExitCode

            parser.print_help(sys.stderr)
            return ExitCode.ERROR
        return int(run(**arguments))
    except SystemExit as exit:  # argparse's help, version and usage errors; a command stopped early
        # The help into `| head -1` or a full disk: shown here, not at interpreter exit.
        if _flushed_stdout() and (isinstance(exit.code, int) or exit.code is None):
            return exit.code or 0
        from ckptdoctor.policy import ExitCode  # not before: --help imports no model

        return ExitCode.ERROR
    except Exception as error:  # the promise is one line, never a traceback
        if os.environ.get("CKPTDOCTOR_DEBUG"):
            raise
        from ckptdoctor.policy import ExitCode

        _error(f"unexpected {type(error).__name__}: {error} (set CKPTDOCTOR_DEBUG=1 for a traceback)")
        return ExitCode.ERROR


def main() -> None:
    # numpy's OpenBLAS starts a thread per core when numpy is imported, and those threads spin waiting for work
    # for a while. ckptdoctor never multiplies matrices; on 2 cores the spinning took a core from the kernel's
    # copy in `patch` (109 MB copied in ~120 ms instead of ~45 ms). The command line is our own process, so it
    # asks for one BLAS thread unless the user chose; the library leaves its host process's setting alone.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Started with stdout or stderr closed (`>&-`, `2>&-`): what would go there goes nowhere, as into a closed
    # pipe, and the exit code still says what happened.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open until the process ends)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115
    # A last guard: a name that reaches stdout without `shown` (an undecodable byte kept as a surrogate) is
    # written as an escape rather than failing the command.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    _leave(_run_app())


def _leave(code: int) -> None:
    """Exit with `code` once the command is done, without the interpreter's teardown.

    Everything a command writes is durable and closed before it returns; what the teardown would still do is
    free every object one by one, ~11 ms with numpy loaded (a tenth of `cp` + `sync` of the checkpoint patch
    is measured against). So: the atexit handlers (--stats), the standard streams flushed, then os._exit. A
    helper thread still closing a file (`writer.atomic.Displaced`) is finished by the kernel as we exit.
    CKPTDOCTOR_DEBUG keeps the normal exit, for tools that hook the teardown."""
    if os.environ.get("CKPTDOCTOR_DEBUG"):
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()  # the handlers a normal exit would run (--stats registers one)
    if not _flushed_stdout():
        from ckptdoctor.policy import ExitCode

        code = ExitCode.ERROR
    with suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)
