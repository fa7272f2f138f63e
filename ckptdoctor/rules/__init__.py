"""The rule catalogue: every rule with its stable code, slug, severity and explanation."""

from __future__ import annotations

from ckptdoctor.model import Finding, RulesRun
from ckptdoctor.rules import batchnorm, ema, integrity, mapping, values
from ckptdoctor.rules.base import CheckContext, Command, Rule

CATALOGUE: tuple[Rule, ...] = batchnorm.RULES + values.RULES + ema.RULES + integrity.RULES + mapping.RULES
BY_NAME = {rule.name: rule for rule in CATALOGUE} | {rule.code: rule for rule in CATALOGUE}

__all__ = ["BY_NAME", "CATALOGUE", "CheckContext", "Command", "Rule", "rules_run", "run_rules"]


def _lacking(rule: Rule, *, reference: bool) -> str | None:
    """What the invocation lacks for `rule` to run, or None when it can run."""
    return "needs --reference" if rule.needs_reference and not reference else None


def rules_run(command: Command, *, reference: bool = False) -> RulesRun:
    """The rules `command` evaluates, and those of its rules it skips for want of an input."""
    own = [rule for rule in CATALOGUE if rule.command is command]
    return RulesRun(
        ran=tuple(rule.code for rule in own if _lacking(rule, reference=reference) is None),
        skipped=tuple((rule.code, why) for rule in own if (why := _lacking(rule, reference=reference)) is not None),
    )


def run_rules(ctx: CheckContext) -> tuple[Finding, ...]:
    """The findings of every rule `check` runs on this context (the ones `rules_run` names)."""
    ran = set(rules_run(Command.CHECK, reference=ctx.reference is not None).ran)
    findings: list[Finding] = []
    for rule in CATALOGUE:
        if rule.code in ran:
            findings.extend(rule.run(rule, ctx))
    return tuple(findings)
