"""The command line: typer and rich live here and in the text reporter only."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ckptdoctor import __version__, watchdog
from ckptdoctor.model import CheckpointError, Severity
from ckptdoctor.policy import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK, exit_code

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Inspect, check, repair and verify TensorFlow and Keras checkpoints.",
)


@functools.cache
def _stdout() -> Console:
    from rich.console import Console  # not imported for JSON output: start-up time matters in CI loops

    console = Console(highlight=False)
    if not console.is_terminal:  # pipes and CI logs: wide enough that long variable names stay on one line
        console = Console(highlight=False, width=160)
    return console


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class FailOn(str, Enum):
    error = "error"
    warning = "warning"
    info = "info"


def _error(message: str) -> None:
    sys.stderr.write(f"ckptdoctor: error: {message}\n")


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Anything that stops a command becomes one line on stderr and exit code 2."""
    try:
        yield
    except CheckpointError as error:
        _error(str(error))
        raise typer.Exit(EXIT_ERROR) from None


def _version(value: bool) -> None:
    if value:
        _stdout().print(f"ckptdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    pass


PathArg = Annotated[
    str, typer.Argument(help="Checkpoint prefix, any of its files, or a directory.", show_default=False)
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]


@app.command()
def inspect(path: PathArg, output_format: FormatOpt = OutputFormat.text) -> None:
    """List every variable with dtype, shape, size and role, grouped by layer, with a BatchNorm summary."""
    from ckptdoctor.diagnose import inspect as run_inspect

    watchdog.subject(path)
    with _one_line_errors():
        report = run_inspect(path)
    if output_format is OutputFormat.json:
        from ckptdoctor.report.json import render

        sys.stdout.write(render(report))
    else:
        from ckptdoctor.report.text import render_inspect

        render_inspect(_stdout(), report)


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    junit = "junit"
    github = "github"


@app.command()
def check(
    paths: Annotated[
        list[str], typer.Argument(help="Checkpoints (prefixes, files or directories).", show_default=False)
    ],
    reference: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on Python 3.9
        typer.Option("--reference", "-r", help="The checkpoint training started from (e.g. the pretrained model)."),
    ] = None,
    fail_on: Annotated[
        Optional[FailOn],  # noqa: UP045
        typer.Option(
            "--fail-on", help="Lowest severity that makes the exit code 1 [default: error].", show_default=False
        ),
    ] = None,
    output_format: Annotated[CheckFormat, typer.Option("--format", "-f", help="Output format.")] = CheckFormat.text,
    output: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--output", "-o", help="Write the report to this file instead of stdout.", show_default=False),
    ] = None,
    config: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--config", help="Policy file (TOML); default: [tool.ckptdoctor] in ./pyproject.toml.", show_default=False
        ),
    ] = None,
    decay: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--decay",
            min=0.0,
            max=1.0,
            help="BatchNorm decay (momentum) for every layer, over what the files say.",
            show_default=False,
        ),
    ] = None,
    steps: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--steps",
            min=0,
            help="Training steps since the statistics started, over what the files say.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Diagnose checkpoints; exit 0 healthy, 1 findings at or above --fail-on, 2 unreadable."""
    import dataclasses

    from ckptdoctor.diagnose import check as run_check
    from ckptdoctor.policy import load_policy

    with _one_line_errors():
        policy = load_policy(config)
    threshold = Severity(fail_on.value) if fail_on else (policy.fail_on or Severity.ERROR)
    reports, unreadable = [], False
    show_progress = output_format is CheckFormat.text and output is None and sys.stderr.isatty()
    for path in paths:
        try:
            watchdog.subject(path)
            with _progress_bar(show_progress, f"scanning {path}") as bar:

                def progress(done: int, total: int, bar=bar) -> None:
                    watchdog.beat()
                    if bar:
                        bar(done, total)

                report = run_check(
                    path,
                    reference=reference,
                    progress=progress,
                    decay=decay,
                    steps=steps,
                    stale_threshold=policy.stale_threshold,
                )
        except CheckpointError as error:
            _error(str(error))
            unreadable = True
            continue
        reports.append(dataclasses.replace(report, findings=policy.apply(path, report.findings)))
    if output_format is CheckFormat.text and output is None:
        from ckptdoctor.report.text import render_check

        for report in reports:
            render_check(_stdout(), report)
    else:
        with _one_line_errors():
            _emit(_render_check(reports, output_format, threshold), output)
    worst = max((exit_code(r.findings, threshold) for r in reports), default=EXIT_OK)
    raise typer.Exit(EXIT_ERROR if unreadable else worst)


@contextmanager
def _progress_bar(enabled: bool, description: str) -> Iterator[object]:
    """A rich progress bar on stderr in bytes, only on a terminal and only for text output."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _render_check(reports: list, output_format: CheckFormat, threshold: Severity) -> str:
    if output_format is CheckFormat.json:
        from ckptdoctor.report.json import render_many

        return render_many(reports)
    if output_format is CheckFormat.sarif:
        from ckptdoctor.report.sarif import render

        return render(reports)
    if output_format is CheckFormat.junit:
        from ckptdoctor.report.junit import render

        return render(reports, threshold)
    if output_format is CheckFormat.github:
        from ckptdoctor.report.github import render

        return render(reports)
    import io

    from rich.console import Console

    from ckptdoctor.report.text import render_check

    if not reports:
        return ""
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, highlight=False, no_color=True)
    for report in reports:
        render_check(console, report)
    return buffer.getvalue()


def _emit(text: str, output: str | None) -> None:
    """Write to stdout (rich colours on a terminal for text) or atomically to --output."""
    if output is None:
        sys.stdout.write(text)
        return
    from ckptdoctor.writer.atomic import write_atomically

    try:
        write_atomically(output, text.encode("utf-8"))
    except OSError as error:
        raise CheckpointError(f"{output}: cannot write the report ({error.strerror})") from None


@app.command()
def rules() -> None:
    """List every rule: code, name, severity and what it finds."""
    from rich.table import Table

    from ckptdoctor.rules import CATALOGUE

    table = Table(show_edge=False)
    for column in ("code", "name", "severity", "what it finds"):
        table.add_column(column, overflow="fold")
    for rule in CATALOGUE:
        table.add_row(rule.code, rule.name, rule.severity.value, rule.title)
    _stdout().print(table)


@app.command()
def explain(
    rule: Annotated[str, typer.Argument(help="A rule code (BN001) or name (bn-missing-moving-stats).")],
) -> None:
    """What a rule means, why it happens (with the TF/Keras error it explains) and how to fix it."""
    from rich.text import Text

    from ckptdoctor.rules import BY_NAME

    found = BY_NAME.get(rule) or BY_NAME.get(rule.upper())
    if found is None:
        _error(f"{rule}: no such rule (see `ckptdoctor rules`)")
        raise typer.Exit(EXIT_ERROR)
    console = _stdout()
    console.print(Text(f"{found.code} {found.name} ({found.severity.value})", style="bold"))
    console.print(found.title)
    console.print()
    console.print(Text(found.explanation))
    console.print()
    console.print(Text(f"Fix: {found.hint}"))


@app.command()
def patch(
    target: Annotated[str, typer.Argument(help="The checkpoint that lacks statistics.", show_default=False)],
    donor: Annotated[str, typer.Option("--from", help="A full save holding the statistics.", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Prefix of the new checkpoint.", show_default=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace a checkpoint already at --out.")] = False,
) -> None:
    """Write a new checkpoint: TARGET plus the moving statistics its BatchNorm layers lack, from DONOR."""
    from ckptdoctor.diagnose import check as run_check
    from ckptdoctor.patch import patch as run_patch
    from ckptdoctor.report.text import render_check

    watchdog.subject(target)
    with _one_line_errors(), _progress_bar(sys.stderr.isatty(), f"writing {out}") as bar:

        def progress(done: int, total: int) -> None:
            watchdog.beat()
            if bar:
                bar(done, total)

        result = run_patch(target, donor, out, force=force, progress=progress)
    if result.added:
        layers = len({a.layer for a in result.added})
        _stdout().print(f"added {len(result.added)} tensors to {layers} BatchNorm layers from {result.donor}:")
        for addition in result.added:
            _stdout().print(f"  + {addition.key}  {addition.dtype}{list(addition.shape)}", markup=False)
    else:
        _stdout().print("nothing was missing: the output is a copy of the target")
    _stdout().print(f"wrote {' and '.join(result.written)}", markup=False)
    _stdout().print("re-checking the result:")
    with _one_line_errors():
        report = run_check(result.out)
    render_check(_stdout(), report)
    raise typer.Exit(exit_code(report.findings))


@app.command()
def verify(
    checkpoint: PathArg,
    meta_graph: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--meta-graph", help="TF1: the evaluation graph's .meta (MetaGraphDef).", show_default=False),
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--model", help="Keras/TF2: MODEL.keras or package.module:builder.", show_default=False),
    ] = None,
) -> None:
    """Restore CHECKPOINT into the real model in TensorFlow or Keras (needs the tf extra)."""
    from ckptdoctor.verify import verify_meta_graph, verify_model

    if (meta_graph is None) == (model is None):
        _error("verify needs exactly one of --meta-graph (TF1 graphs) or --model (Keras and TF2)")
        raise typer.Exit(EXIT_ERROR)
    with _one_line_errors():
        result = verify_meta_graph(checkpoint, meta_graph) if meta_graph else verify_model(checkpoint, model)
    _stdout().print(f"{result.graph_variables} variables in the model, checkpoint {result.checkpoint}", markup=False)
    for key in result.missing:
        _stdout().print(f"  missing     {key}", markup=False)
    for mismatch in result.mismatched:
        _stdout().print(
            f"  mismatched  {mismatch.key}: graph {mismatch.expected}, checkpoint {mismatch.found}", markup=False
        )
    if result.tf_error:
        _stdout().print(f"the restore failed: {result.tf_error}", markup=False, soft_wrap=True)
    if result.ok:
        _stdout().print("[bold green]restored for real: every variable matched[/]")
    raise typer.Exit(EXIT_OK if result.ok else EXIT_FINDINGS)


def _run_app() -> int:
    """The command, as an exit code; any exception is one line on stderr, never a traceback."""
    try:
        app()
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else (0 if exit.code is None else EXIT_ERROR)
    except Exception as error:  # the promise is one line, never a traceback
        if os.environ.get("CKPTDOCTOR_DEBUG"):
            raise
        _error(f"unexpected {type(error).__name__}: {error} (set CKPTDOCTOR_DEBUG=1 for a traceback)")
        return EXIT_ERROR
    return EXIT_OK


def main() -> None:
    watchdog.enable()
    sys.exit(_run_app())
