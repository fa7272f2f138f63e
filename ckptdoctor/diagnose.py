"""The library entry points behind `inspect` and `check`: open, classify, scan, run the rules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from ckptdoctor.analysis.batchnorm import group_batchnorm
from ckptdoctor.analysis.roles import classify
from ckptdoctor.formats import Resolved, open_checkpoint
from ckptdoctor.model import Report
from ckptdoctor.rules import CheckContext, Checkpoint, run_rules


@contextmanager
def opened(path: str | os.PathLike[str]) -> Iterator[tuple[Checkpoint, Resolved]]:
    """An opened, classified checkpoint; raises CheckpointError when it cannot be read at all."""
    reader, resolved = open_checkpoint(path)
    try:
        variables = classify(reader.tensors())
        yield Checkpoint(reader, variables, group_batchnorm(variables)), resolved
    finally:
        reader.close()


def _report(path: str | os.PathLike[str], checkpoint: Checkpoint, resolved: Resolved, findings=()) -> Report:
    return Report(
        path=os.fspath(path),
        format=checkpoint.reader.format,
        resolved=resolved.location,
        note=resolved.note,
        variables=checkpoint.variables,
        batchnorm=checkpoint.batchnorm,
        findings=tuple(findings),
    )


def inspect(path: str | os.PathLike[str]) -> Report:
    """List every variable with its role, and the BatchNorm layers; reads no tensor values."""
    with opened(path) as (checkpoint, resolved):
        return _report(path, checkpoint, resolved)


def check(path: str | os.PathLike[str], reference: str | os.PathLike[str] | None = None) -> Report:
    """Diagnose a checkpoint: every rule over one full scan of its bytes, optionally against a reference."""
    with opened(path) as (checkpoint, resolved):
        scan = checkpoint.reader.scan()
        if reference is None:
            findings = run_rules(CheckContext(checkpoint, scan))
        else:
            with opened(reference) as (reference_checkpoint, _):
                findings = run_rules(CheckContext(checkpoint, scan, reference_checkpoint))
        return _report(path, checkpoint, resolved, findings)
