"""The library entry points behind `inspect` and `check`: open, classify, scan, run the rules."""

from __future__ import annotations

import os
from collections.abc import Callable

from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.analysis.staleness import DEFAULT_STALE_THRESHOLD, find_updates
from ckptdoctor.formats import Resolved
from ckptdoctor.formats.bytesource import without_secrets
from ckptdoctor.model import BatchNormStats, Finding, Report, RulesRun, StatisticsUpdates, Storage


def report_of(
    path: str | os.PathLike[str] | Resolved,
    checkpoint: Checkpoint,
    findings: tuple[Finding, ...] = (),
    updates: StatisticsUpdates | None = None,
    batchnorm_stats: tuple[BatchNormStats, ...] | None = None,
    rules: RulesRun | None = None,
) -> Report:
    """The report on an opened checkpoint, as asked for by `path`, with what a command found in it."""
    return Report(
        path=path.location if isinstance(path, Resolved) else without_secrets(os.fspath(path)),
        format=checkpoint.reader.format.value,
        resolved=checkpoint.resolved.location,
        note=checkpoint.resolved.note,
        file=checkpoint.resolved.location + (".index" if checkpoint.resolved.storage is Storage.BUNDLE else ""),
        variables=checkpoint.variables,
        batchnorm=checkpoint.batchnorm,
        findings=findings,
        updates=updates,
        batchnorm_stats=batchnorm_stats,
        rules=rules,
    )


def inspect(path: str | os.PathLike[str]) -> Report:
    """List every variable with its role, and the BatchNorm layers; reads no tensor values.

    The decays found are reported, and the steps where the prefix gives them (a step counter is a value)."""
    with opened(path) as checkpoint:
        return report_of(path, checkpoint, updates=find_updates(checkpoint, read_counters=False))


def check(
    path: str | os.PathLike[str] | Resolved,
    reference: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    decay: float | None = None,
    steps: int | None = None,
    stale_threshold: float = DEFAULT_STALE_THRESHOLD,
) -> Report:
    """Diagnose a checkpoint: every rule over one full scan of its bytes, optionally against a reference.

    `progress(done, total)` is called with byte counts as the scan advances. `decay` and `steps` override
    what the files record for bn-stats-stale; it fires where a share of at least `stale_threshold` of the
    starting statistics is left."""
    from ckptdoctor.analysis.bnstats import batchnorm_stats
    from ckptdoctor.rules import CheckContext, Command, rules_run, run_rules  # inspect never needs the catalogue

    def diagnosed(checkpoint: Checkpoint, reference_checkpoint: Checkpoint | None) -> Report:
        scan = checkpoint.reader.scan(progress, checkpoint.resolved.verified)
        ctx = CheckContext(checkpoint, scan, reference_checkpoint, decay, steps, stale_threshold)
        findings = run_rules(ctx)
        stats = batchnorm_stats(checkpoint, ctx.statistic, reference_checkpoint)
        rules = rules_run(Command.CHECK, reference=reference_checkpoint is not None)
        return report_of(path, checkpoint, findings, ctx.updates, stats, rules)

    with opened(path) as checkpoint:
        if reference is None:
            return diagnosed(checkpoint, None)
        with opened(reference) as reference_checkpoint:
            return diagnosed(checkpoint, reference_checkpoint)
