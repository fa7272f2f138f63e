"""The library entry points behind `inspect` and `check`: open, classify, scan, run the rules."""

from __future__ import annotations

import os
from collections.abc import Callable

from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.formats import Resolved
from ckptdoctor.model import Finding, Report


def _report(
    path: str | os.PathLike[str] | Resolved, checkpoint: Checkpoint, findings: tuple[Finding, ...] = ()
) -> Report:
    return Report(
        path=path.location if isinstance(path, Resolved) else os.fspath(path),
        format=checkpoint.reader.format,
        resolved=checkpoint.resolved.location,
        note=checkpoint.resolved.note,
        file=checkpoint.resolved.location + (".index" if checkpoint.resolved.kind == "bundle" else ""),
        variables=checkpoint.variables,
        batchnorm=checkpoint.batchnorm,
        findings=findings,
    )


def inspect(path: str | os.PathLike[str]) -> Report:
    """List every variable with its role, and the BatchNorm layers; reads no tensor values."""
    with opened(path) as checkpoint:
        return _report(path, checkpoint)


def check(
    path: str | os.PathLike[str] | Resolved,
    reference: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Diagnose a checkpoint: every rule over one full scan of its bytes, optionally against a reference.

    `progress(done, total)` is called with byte counts as the scan advances."""
    from ckptdoctor.rules import CheckContext, run_rules  # inspect never needs the rule catalogue

    with opened(path) as checkpoint:
        scan = checkpoint.reader.scan(progress)
        if reference is None:
            return _report(path, checkpoint, run_rules(CheckContext(checkpoint, scan)))
        with opened(reference) as reference_checkpoint:
            return _report(path, checkpoint, run_rules(CheckContext(checkpoint, scan, reference_checkpoint)))
