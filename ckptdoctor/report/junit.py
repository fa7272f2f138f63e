"""JUnit XML for CI test views: a testsuite per checkpoint, a testcase per rule and subject.

Only the rules that ran are testcases: a rule of another command (match's MAP rules in a check) is absent,
and one this invocation could not run (BN003 without --reference) is a `<skipped>` testcase saying what it
needs, which GitHub's test reporters, GitLab and Jenkins count and show as skipped, never as passed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from ckptdoctor.model import Report, Severity
from ckptdoctor.names import shown
from ckptdoctor.rules import CATALOGUE


def render(reports: Sequence[Report], threshold: Severity) -> str:
    """Findings at or above `threshold` are failures. Every untrusted string goes through `shown`, which
    leaves no character XML 1.0 forbids."""
    root = ET.Element("testsuites", name="ckptdoctor")
    total_tests = total_failures = 0
    for report in reports:
        checkpoint = shown(report.path)
        suite = ET.SubElement(root, "testsuite", name=checkpoint)
        failures = 0
        flagged = {finding.code for finding in report.findings}
        ran = set(report.rules.ran) if report.rules is not None else set()
        skipped = dict(report.rules.skipped) if report.rules is not None else {}
        for rule in CATALOGUE:
            name = f"{rule.code} {rule.name}"
            if rule.code in ran and rule.code not in flagged:  # found nothing: passes once for the whole checkpoint
                ET.SubElement(suite, "testcase", classname=checkpoint, name=name)
            elif rule.code in skipped:
                case = ET.SubElement(suite, "testcase", classname=checkpoint, name=name)
                ET.SubElement(case, "skipped", message=skipped[rule.code])
        for finding in report.findings:
            case = ET.SubElement(
                suite, "testcase", classname=checkpoint, name=shown(f"{finding.code} {finding.name}: {finding.subject}")
            )
            if finding.severity.rank >= threshold.rank:
                failure = ET.SubElement(case, "failure", message=shown(finding.message), type=finding.code)
                failure.text = f"{finding.severity.value}: {shown(finding.message)}\nhint: {shown(finding.hint)}"
                failures += 1
            else:
                ET.SubElement(case, "system-out").text = f"{finding.severity.value}: {shown(finding.message)}"
        tests = len(suite)
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
        suite.set("skipped", str(len(skipped)))
        total_tests += tests
        total_failures += failures
    root.set("tests", str(total_tests))
    root.set("failures", str(total_failures))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
