"""The one place that decides exit codes."""

from __future__ import annotations

from collections.abc import Iterable

from ckptdoctor.model import Finding, Severity

EXIT_OK = 0  # nothing at or above the --fail-on severity
EXIT_FINDINGS = 1  # findings at or above --fail-on, or a verify that TensorFlow refused
EXIT_ERROR = 2  # could not run: unreadable input, bad arguments, missing optional dependency


def exit_code(findings: Iterable[Finding], fail_on: Severity = Severity.ERROR) -> int:
    failing = any(finding.severity.rank >= fail_on.rank for finding in findings)
    return EXIT_FINDINGS if failing else EXIT_OK
