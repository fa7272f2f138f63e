"""Rules about ExponentialMovingAverage shadows: a checkpoint restored through `ema.variables_to_restore()`."""

from __future__ import annotations

from collections.abc import Iterator

from ckptdoctor.analysis.roles import EMA
from ckptdoctor.model import Finding, Role, Severity
from ckptdoctor.names import listed
from ckptdoctor.rules.base import CheckContext, Rule

_NAMED = 3  # variables named in a finding's message


def _shadowed(path: str) -> str:
    """The variable an EMA shadow averages: `conv/weights/ExponentialMovingAverage` -> `conv/weights`."""
    parts = path.split("/")
    return "/".join(parts[: parts.index(EMA)])


def _partial_coverage(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    variables = ctx.target.variables
    averaged = {_shadowed(v.path) for v in variables if v.role is Role.EMA and EMA in v.path.split("/")}
    if not averaged:
        return
    lacking: dict[str, list[str]] = {}
    for variable in variables:
        if variable.role in (Role.WEIGHT, Role.BN_STATISTIC) and variable.path not in averaged:
            lacking.setdefault(variable.layer, []).append(variable.path)
    for layer, paths in sorted(lacking.items()):
        named = listed(paths, _NAMED)
        yield rule.finding(
            layer or paths[0],
            f"{named} {'has' if len(paths) == 1 else 'have'} no {EMA} shadow while {len(averaged)} other variables "
            f"do: restoring with ema.variables_to_restore() fails with 'Key {paths[0]}/{EMA} not found in checkpoint'",
        )


RULES = (
    Rule(
        "EMA001",
        "ema-partial-coverage",
        Severity.WARNING,
        "Some variables have ExponentialMovingAverage shadows and others do not",
        "The checkpoint holds ExponentialMovingAverage shadows (`<var>/ExponentialMovingAverage`) for some "
        "variables but not for others, most often the BatchNorm moving statistics: the training script ran "
        "`ema.apply(tf.trainable_variables())`, while the evaluation script restores with "
        "`tf.train.Saver(ema.variables_to_restore())`, which also asks for a shadow of every variable in the "
        "MOVING_AVERAGE_VARIABLES collection (slim's batch_norm puts its moving statistics there). The restore "
        "then fails with `Key .../moving_mean/ExponentialMovingAverage not found in checkpoint` "
        "(google/automl#214, tensorpack#880).",
        "restore the variables without a shadow under their own names (variables_to_restore(moving_avg_variables="
        "tf.trainable_variables())), or write a checkpoint that needs no EMA code: ckptdoctor strip CKPT --use-ema "
        "--out OUT (each variable from its shadow where it has one, as stored otherwise)",
        _partial_coverage,
    ),
)
