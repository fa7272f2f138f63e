"""The one place that decides exit codes, and the policy (ignored rules, severities) applied before it."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from enum import IntEnum

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.staleness import DEFAULT_STALE_THRESHOLD
from ckptdoctor.errors import ConfigError
from ckptdoctor.model import Finding, Report, RulesRun, Severity
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:  # pathlib and fnmatch load where a policy is read: `inspect` only needs ExitCode
    from pathlib import Path
    from typing import Any

IGNORED = "ignored by the policy"  # why a rule that ran is reported as skipped


class ExitCode(IntEnum):
    OK = 0  # nothing at or above the --fail-on severity; verify: TensorFlow restored it
    FINDINGS = 1  # findings at or above --fail-on; verify: missing or mismatched variables
    ERROR = 2  # could not run: unreadable input, bad arguments or policy, missing optional dependency, a stall


def exit_code(findings: Iterable[Finding], fail_on: Severity = Severity.ERROR) -> ExitCode:
    """The exit code of one checkpoint's findings (after the policy) at the `fail_on` threshold."""
    failing = any(finding.severity.rank >= fail_on.rank for finding in findings)
    return ExitCode.FINDINGS if failing else ExitCode.OK


def outcome_exit_code(passed: bool) -> ExitCode:
    """Commands without findings to weigh (diff, verify): OK when they passed, FINDINGS when not."""
    return ExitCode.OK if passed else ExitCode.FINDINGS


def combined_exit_code(
    findings_per_checkpoint: Iterable[Iterable[Finding]], fail_on: Severity, any_unreadable: bool
) -> ExitCode:
    """Several checkpoints give one code: ERROR if any could not be read, else the worst of the others."""
    if any_unreadable:
        return ExitCode.ERROR
    return max((exit_code(findings, fail_on) for findings in findings_per_checkpoint), default=ExitCode.OK)


class Override(NamedTuple):
    paths: tuple[str, ...]  # globs matched against the checkpoint path as given
    ignore: frozenset[str] = frozenset()
    severity: Mapping[str, Severity] = {}


class Policy(NamedTuple):
    """`[tool.ckptdoctor]` in pyproject.toml, or a TOML file given with --config (same keys at top level)."""

    fail_on: Severity | None = None
    ignore: frozenset[str] = frozenset()  # rule codes or slugs
    severity: Mapping[str, Severity] = {}
    overrides: tuple[Override, ...] = ()
    source: str | None = None
    stale_threshold: float = DEFAULT_STALE_THRESHOLD  # bn-stats-stale: share of the starting statistics left

    def threshold(self, fail_on: Severity | None = None) -> Severity:
        """The severity that fails: the caller's (--fail-on) wins over the policy's, which wins over error."""
        return fail_on or self.fail_on or Severity.ERROR

    def _for(self, path: str) -> tuple[set[str], dict[str, Severity]]:
        """The rules ignored and the severities changed for `path`, overrides applied."""
        from fnmatch import fnmatch
        from pathlib import PurePath

        ignore, severity = set(self.ignore), dict(self.severity)
        posix = PurePath(path).as_posix()
        for override in self.overrides:
            if any(fnmatch(posix, pattern) for pattern in override.paths):
                ignore |= override.ignore
                severity |= override.severity
        return ignore, severity

    def apply_to_report(self, path: str, report: Report) -> Report:
        """The report as the policy leaves it for `path`: its findings through `apply`, and the rules it ignores
        moved from those that ran to those skipped, so that a CI report never shows an ignored rule as passed."""
        ignore, severity = self._for(path)
        findings = _applied(report.findings, ignore, severity)
        if report.rules is None:
            return report._replace(findings=findings)
        from ckptdoctor.rules import BY_NAME

        ignored = {BY_NAME[name].code for name in ignore if name in BY_NAME}
        rules = RulesRun(
            ran=tuple(code for code in report.rules.ran if code not in ignored),
            skipped=report.rules.skipped + tuple((code, IGNORED) for code in report.rules.ran if code in ignored),
        )
        return report._replace(findings=findings, rules=rules)

    def apply(self, path: str, findings: Iterable[Finding]) -> tuple[Finding, ...]:
        """The findings that remain for `path`, with severities changed as configured."""
        return _applied(findings, *self._for(path))


def _applied(findings: Iterable[Finding], ignore: set[str], severity: dict[str, Severity]) -> tuple[Finding, ...]:
    """The findings not ignored, each with the severity configured for its rule (by code or name)."""
    kept = []
    for finding in findings:
        if finding.code in ignore or finding.name in ignore:
            continue
        changed = severity.get(finding.code) or severity.get(finding.name)
        kept.append(finding._replace(severity=changed) if changed else finding)
    return tuple(kept)


def _toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration ({error})") from None


def _severity(value: Any, where: str) -> Severity:
    try:
        return Severity(str(value))
    except ValueError:
        raise ConfigError(f"{where}: severity must be error, warning or info, not {value!r}") from None


def _rules(values: Any, where: str, known: set[str]) -> frozenset[str]:
    names = frozenset(str(v) for v in values or ())
    unknown = names - known
    if unknown:
        raise ConfigError(f"{where}: unknown rule {sorted(unknown)[0]!r} (see `ckptdoctor rules`)")
    return names


def _severities(table: Any, where: str, known: set[str]) -> dict[str, Severity]:
    table = table or {}
    _rules(table.keys(), where, known)
    return {str(rule): _severity(level, where) for rule, level in table.items()}


def _share(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where}: stale-threshold must be a number above 0 and at most 1, not {value!r}")
    return float(value)


def load_policy(config: str | None = None, cwd: Path | None = None) -> Policy:
    """The policy from --config, else from ./pyproject.toml's [tool.ckptdoctor], else the defaults."""
    from pathlib import Path

    from ckptdoctor.rules import BY_NAME

    known = set(BY_NAME)
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"{config}: configuration file not found")
        data = _toml(path)
        table = data.get("tool", {}).get("ckptdoctor", data) if path.name == "pyproject.toml" else data
    else:
        path = (cwd or Path.cwd()) / "pyproject.toml"
        if not path.is_file():
            return Policy()
        table = _toml(path).get("tool", {}).get("ckptdoctor")
        if table is None:
            return Policy()
    where = str(path)
    overrides = tuple(
        Override(
            paths=tuple(str(p) for p in item.get("paths", ())),
            ignore=_rules(item.get("ignore"), where, known),
            severity=_severities(item.get("severity"), where, known),
        )
        for item in table.get("overrides", ())
    )
    fail_on = table.get("fail-on")
    return Policy(
        fail_on=_severity(fail_on, where) if fail_on is not None else None,
        ignore=_rules(table.get("ignore"), where, known),
        severity=_severities(table.get("severity"), where, known),
        overrides=overrides,
        source=where,
        stale_threshold=_share(table.get("stale-threshold", DEFAULT_STALE_THRESHOLD), where),
    )
