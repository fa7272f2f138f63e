"""Rules about tensor values in general."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ckptdoctor.model import Finding, Severity
from ckptdoctor.rules.base import CheckContext, Rule


def _nonfinite(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    shapes = {v.name: v.shape for v in ctx.target.variables}
    for name, count in sorted(ctx.scan.nonfinite.items()):
        yield rule.finding(name, f"{name} holds {count} NaN or Inf values (of {math.prod(shapes.get(name, ()))})")


RULES = (
    Rule(
        "VAL001",
        "nonfinite-values",
        Severity.ERROR,
        "Tensor holds NaN or Inf",
        "A stored tensor has NaN or infinite elements. Any layer that uses it produces NaN outputs. The usual "
        "cause is a diverged training run (learning rate too high, log of zero, division by a zero "
        "variance) saved after the loss became NaN.",
        "restore an earlier checkpoint from before the loss diverged, and find the first NaN step "
        "(tf.debugging.enable_check_numerics)",
        _nonfinite,
    ),
)
