"""The rule catalogue: every rule with its stable code, slug, severity and explanation."""

from __future__ import annotations

from ckptdoctor.model import Finding
from ckptdoctor.rules import batchnorm, ema, integrity, mapping, values
from ckptdoctor.rules.base import CheckContext, Rule

CATALOGUE: tuple[Rule, ...] = batchnorm.RULES + values.RULES + ema.RULES + integrity.RULES + mapping.RULES
BY_NAME = {rule.name: rule for rule in CATALOGUE} | {rule.code: rule for rule in CATALOGUE}

__all__ = ["BY_NAME", "CATALOGUE", "CheckContext", "Rule", "run_rules"]


def run_rules(ctx: CheckContext) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    for rule in CATALOGUE:
        if rule.needs_reference and ctx.reference is None:
            continue
        findings.extend(rule.run(rule, ctx))
    return tuple(findings)
