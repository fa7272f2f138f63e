"""A compact Markdown summary for `$GITHUB_STEP_SUMMARY` and pull-request comments: one table per checkpoint,
a row per rule with its severity, count and a few example subjects.

Names are untrusted: each goes through `names.shown` (no newline or control character survives) and is then
set as a code span, whose fence is longer than any run of backticks in it, so that nothing in a name becomes
emphasis, a link, an image or HTML; `|` is escaped, which GitHub's tables honour even inside a code span."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence

from ckptdoctor.model import Finding, Report, Severity
from ckptdoctor.names import shown
from ckptdoctor.report.text import plural

EXAMPLES = 3  # example subjects per rule; the rest are counted


def code(text: str) -> str:
    """`text` as an inline code span that shows exactly `shown(text)` in a GitHub table cell."""
    escaped = shown(text).replace("|", "\\|")
    if not escaped:
        return "*(empty)*"
    fence = "`" * (max((len(run) for run in re.findall("`+", escaped)), default=0) + 1)
    padding = " " if escaped[0] in "` " or escaped[-1] in "` " else ""  # CommonMark strips one space each side
    return f"{fence}{padding}{escaped}{padding}{fence}"


def _counts(findings: Sequence[Finding]) -> str:
    severities = Counter(f.severity for f in findings)
    return ", ".join(plural(severities[s], s.value) for s in reversed(Severity) if severities[s])


def _table(findings: Sequence[Finding]) -> list[str]:
    by_rule: defaultdict[str, list[Finding]] = defaultdict(list)
    for finding in findings:
        by_rule[finding.code].append(finding)
    rows = ["| rule | severity | count | example subjects |", "|---|---|---:|---|"]
    ordered = sorted(by_rule.items(), key=lambda item: (-max(f.severity.rank for f in item[1]), item[0]))
    for rule, members in ordered:
        subjects = list(dict.fromkeys(f.subject for f in members))
        examples = ", ".join(code(subject) for subject in subjects[:EXAMPLES])
        if len(subjects) > EXAMPLES:
            examples += f" and {len(subjects) - EXAMPLES} more"
        worst = max((f.severity for f in members), key=lambda s: s.rank)
        rows.append(f"| {code(rule)} {code(members[0].name)} | {worst.value} | {len(members)} | {examples} |")
    return rows


def render(reports: Sequence[Report], threshold: Severity | None = None) -> str:
    threshold = threshold or Severity.ERROR
    failing = sum(1 for r in reports for f in r.findings if f.severity.rank >= threshold.rank)
    verdict = (
        f"❌ **fail**: {plural(failing, 'finding')} at or above {threshold.value}"
        if failing
        else f"✅ **pass**: nothing at or above {threshold.value}"
    )
    lines = [f"### ckptdoctor check: {verdict}", ""]
    for report in reports:
        summary = f"{plural(len(report.variables), 'variable')}, {plural(len(report.batchnorm), 'BatchNorm layer')}"
        found = _counts(report.findings) or "no findings"
        lines.append(f"**{code(report.resolved)}** ({report.format}): {summary}; {found}")
        lines.append("")
        if report.findings:
            lines.extend(_table(report.findings))
            lines.append("")
    lines.append("`ckptdoctor explain CODE` says what a rule means and how to fix it.")
    return "\n".join(lines) + "\n"
