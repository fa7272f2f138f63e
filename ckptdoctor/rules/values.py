"""Rules about tensor values in general."""

from __future__ import annotations

import math
from collections.abc import Iterator

from ckptdoctor.model import Finding, FormatFamily, Severity
from ckptdoctor.rules.base import CheckContext, Rule


def _nonfinite(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    shapes = {v.name: v.shape for v in ctx.target.variables}
    for name, count in sorted(ctx.scan.nonfinite.items()):
        subject, detail = ctx.tensor_subject(name), f"{count} NaN or Inf values (of {math.prod(shapes.get(name, ()))})"
        yield rule.finding(subject, f"{subject} holds {detail}", key=name, detail=detail, family=ctx.family)


_NONFINITE_FIX = {
    FormatFamily.TF1: "restore an earlier checkpoint from before the loss diverged, and find the first NaN step "
    "(tf.compat.v1.add_check_numerics_ops() in the training graph)",
    FormatFamily.KERAS: "restore an earlier save from before the loss diverged; stop training at the first NaN "
    "with keras.callbacks.TerminateOnNaN() and find its cause (tf.debugging.enable_check_numerics())",
    FormatFamily.TF2: "restore an earlier checkpoint from before the loss diverged (tf.train.CheckpointManager "
    "keeps several), and find the first NaN step with tf.debugging.enable_check_numerics()",
}


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
        fixes=_NONFINITE_FIX,
    ),
)
