"""The CI gate as a library call: check several checkpoints under a policy and reach one verdict.

`ckptdoctor check` only renders what `gate` returns, so a library user gets the same reports and the same
exit code as the command line."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from ckptdoctor.errors import CheckpointError
from ckptdoctor.formats.bytesource import without_secrets
from ckptdoctor.formats.resolve import Resolved
from ckptdoctor.model import Report, Severity
from ckptdoctor.policy import ExitCode, Policy, combined_exit_code
from ckptdoctor.typed import NamedTuple

PathProgress = Callable[[str, int, int], None]  # (path, bytes done, bytes in all)


class Unreadable(NamedTuple):
    """A path that could not be checked at all, and the one-line reason."""

    path: str
    message: str


class Verdict(NamedTuple):
    reports: tuple[Report, ...]  # one per readable path, findings after the policy
    unreadable: tuple[Unreadable, ...]
    fail_on: Severity  # the threshold the exit code was decided at
    exit_code: ExitCode


def gate(
    paths: Sequence[str | os.PathLike[str] | Resolved],
    reference: str | os.PathLike[str] | None = None,
    policy: Policy | None = None,
    fail_on: Severity | None = None,
    decay: float | None = None,
    steps: int | None = None,
    progress: PathProgress | None = None,
) -> Verdict:
    """Check every path (an unreadable one does not stop the others), apply the policy, decide the exit code.

    `fail_on` overrides the policy's threshold; `decay` and `steps` override what the files record for
    bn-stats-stale; `progress(path, done, total)` follows each scan. A `Resolved` path is read as exactly
    what it says (a writer's output, whatever its name suggests)."""
    from ckptdoctor.diagnose import check

    policy = policy or Policy()
    reports: list[Report] = []
    unreadable: list[Unreadable] = []
    for path in paths:
        location = path.location if isinstance(path, Resolved) else os.fspath(path)
        shown = without_secrets(location)  # a URL's token never reaches a report
        scan_progress = None if progress is None else _bind(progress, shown)
        try:
            report = check(
                path,
                reference=reference,
                progress=scan_progress,
                decay=decay,
                steps=steps,
                stale_threshold=policy.stale_threshold,
            )
        except CheckpointError as error:
            unreadable.append(Unreadable(shown, str(error)))
            continue
        reports.append(policy.apply_to_report(shown, report))
    threshold = policy.threshold(fail_on)
    code = combined_exit_code((r.findings for r in reports), threshold, any_unreadable=bool(unreadable))
    return Verdict(tuple(reports), tuple(unreadable), threshold, code)


def _bind(progress: PathProgress, path: str) -> Callable[[int, int], None]:
    def scan_progress(done: int, total: int) -> None:
        progress(path, done, total)

    return scan_progress
