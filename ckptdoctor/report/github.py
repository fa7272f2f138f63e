"""GitHub Actions workflow commands: one `::error`/`::warning`/`::notice` line per finding."""

from __future__ import annotations

from collections.abc import Sequence

from ckptdoctor.model import Report, Severity
from ckptdoctor.names import shown

_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def _escape_data(text: str) -> str:
    """As GitHub's toolkit escapes command data; `shown` first, so no control character is left for a runner."""
    return shown(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    """Every finding is annotated at its own level, whatever the threshold."""
    lines = []
    for report in reports:
        for finding in report.findings:
            properties = (
                f"file={_escape_property(report.file)},title={_escape_property(f'{finding.code} {finding.name}')}"
            )
            message = _escape_data(f"{finding.subject}: {finding.message} (hint: {finding.hint})")
            lines.append(f"::{_COMMAND[finding.severity]} {properties}::{message}")
    return "".join(line + "\n" for line in lines)
