"""Rules about BatchNorm moving statistics: missing, never updated, stale, invalid."""

from __future__ import annotations

from collections.abc import Iterator

from ckptdoctor.analysis.matching import identity
from ckptdoctor.analysis.staleness import share_left
from ckptdoctor.model import Finding, FormatFamily, Role, Severity
from ckptdoctor.rules.base import CheckContext, Rule

_MISSING_CAUSE = {
    FormatFamily.TF1: "the checkpoint was most likely saved with var_list=tf.trainable_variables(), which leaves "
    "out the non-trainable moving statistics; restoring it for evaluation fails with 'Key .../moving_mean not "
    "found in checkpoint'",
    FormatFamily.KERAS: "the file was most likely written from the trainable weights only (a converter or a hand-made "
    "export); Keras refuses it with 'Layer ... expected N variables, but received M' or 'Weight count mismatch'",
    FormatFamily.TF2: "the saved object held no moving statistics for this layer; a restore leaves them unbound "
    "('Unresolved object in checkpoint' or, with expect_partial(), silently at 0/1)",
}


_RECALIBRATE = "ckptdoctor recalibrate CKPT --data SAMPLES --out FIXED"
# A Keras file or TF2 checkpoint is recalibrated by running its model: the command refuses to start without it.
_RECALIBRATE_WITH_MODEL = "ckptdoctor recalibrate CKPT --model MODEL --data SAMPLES --out FIXED"
_PATCH = "ckptdoctor patch CKPT --from FULL_SAVE --out FIXED"

_MISSING_FIX = {
    FormatFamily.TF1: f"repair with: {_PATCH} (FULL_SAVE: a save of the same run with every variable), or "
    f"without one: {_RECALIBRATE}; from now on save with tf.compat.v1.train.Saver() (all global variables), "
    "not var_list=tf.trainable_variables()",
    FormatFamily.KERAS: f"repair with: {_PATCH} (FULL_SAVE: a .keras, .weights.h5 or .h5 of the same model that "
    f"has them), or without one: {_RECALIBRATE_WITH_MODEL}; from now on save from the model itself "
    "(model.save('model.keras') or model.save_weights('model.weights.h5')), which keeps the non-trainable weights",
    FormatFamily.TF2: f"repair with: {_PATCH} (FULL_SAVE: a checkpoint of the same model that has them), or "
    f"without one: {_RECALIBRATE_WITH_MODEL}; from now on save tf.train.Checkpoint(model=model), which "
    "tracks every variable, not a list of trainable_variables",
}

_AT_INIT_CAUSE = {
    FormatFamily.TF1: "the update ops never ran: the train op did not depend on tf.GraphKeys.UPDATE_OPS, so "
    "evaluation normalises with the wrong values",
    FormatFamily.KERAS: "the layers never ran in training mode: a custom loop called model(x) without "
    "training=True, or the layers were frozen (trainable=False also runs BatchNorm in inference mode), so "
    "evaluation normalises with the wrong values",
    FormatFamily.TF2: "the layers never ran in training mode: the training step called model(x) without "
    "training=True, or the layers were frozen, so evaluation normalises with the wrong values",
}
_AT_INIT_FIX = {
    FormatFamily.TF1: "make the train op depend on the update ops (with tf.control_dependencies("
    f"tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS))) and retrain, or recompute: {_RECALIBRATE}",
    FormatFamily.KERAS: f"recompute the statistics: {_RECALIBRATE_WITH_MODEL}; then train with model.fit or call "
    "model(x, training=True) in custom loops",
    FormatFamily.TF2: f"recompute the statistics: {_RECALIBRATE_WITH_MODEL}; then call model(x, training=True) in the "
    "training step",
}

_MATCH_REFERENCE_CAUSE = {
    FormatFamily.TF1: "the update ops (tf.GraphKeys.UPDATE_OPS) never ran during fine-tuning",
    FormatFamily.KERAS: "the layers ran in inference mode during fine-tuning (a frozen base model, or "
    "training=False in the call); intended when fine-tuning with a frozen base",
    FormatFamily.TF2: "the layers ran in inference mode during fine-tuning (training=False in the call, or "
    "frozen layers)",
}
_MATCH_REFERENCE_FIX = {
    FormatFamily.TF1: "make the train op depend on tf.GraphKeys.UPDATE_OPS (slim.learning.create_train_op does) "
    f"and fine-tune again, or lower the BatchNorm decay for short runs; or recompute: {_RECALIBRATE}",
    FormatFamily.KERAS: "if the base was meant to stay frozen, ignore this rule (policy ignore); otherwise "
    f"fine-tune with the layers trainable and training=True, or recompute: {_RECALIBRATE_WITH_MODEL}",
    FormatFamily.TF2: "call model(x, training=True) in the fine-tuning step and fine-tune again, or recompute: "
    f"{_RECALIBRATE_WITH_MODEL}",
}

_STALE_PREMISE = (
    "after N update steps at decay d, a moving statistic still holds d^N of the value training started from "
    "(0/1, or the pretrained statistics), so evaluation normalises mostly with statistics of other data"
)
# Keras files and TF2 checkpoints share their BatchNormalization layer, so the same cause and repair.
_STALE_KERAS_CAUSE = (
    f"{_STALE_PREMISE}: too few steps for the momentum (Keras' default 0.99 takes ~300 steps to move 95% of the way)"
)
_STALE_CAUSE = {
    FormatFamily.TF1: f"{_STALE_PREMISE}: too few steps for the decay (slim's default 0.9997 takes ~10,000 steps "
    "to move 95% of the way)",
    FormatFamily.KERAS: _STALE_KERAS_CAUSE,
    FormatFamily.TF2: _STALE_KERAS_CAUSE,
}

_STALE_KERAS_FIX = (
    f"recompute the statistics: {_RECALIBRATE_WITH_MODEL}; for short runs lower "
    "BatchNormalization(momentum=0.9...0.99) or train longer"
)
_STALE_FIX = {
    FormatFamily.TF1: f"recompute the statistics: {_RECALIBRATE}; for short runs lower the decay "
    "(slim.batch_norm(decay=0.9...0.99), tf.compat.v1.layers.batch_normalization(momentum=...)) or train longer",
    FormatFamily.KERAS: _STALE_KERAS_FIX,
    FormatFamily.TF2: _STALE_KERAS_FIX,
}

_BAD_STATISTICS_HINT = (
    f"recompute the statistics: {_RECALIBRATE} (Keras and TF2: with --model MODEL), or go back to an earlier save "
    "whose statistics are sound"
)
_BAD_STATISTICS_FIX = {
    family: f"recompute the statistics: {command}, or go back to an earlier save whose statistics are sound"
    for family, command in (
        (FormatFamily.TF1, _RECALIBRATE),
        (FormatFamily.KERAS, _RECALIBRATE_WITH_MODEL),
        (FormatFamily.TF2, _RECALIBRATE_WITH_MODEL),
    )
}


def _missing_moving_stats(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    cause = rule.cause_for(ctx.family)
    for layer in ctx.target.batchnorm:
        missing = layer.missing_statistics
        if missing:
            name, detail = ctx.layer_subject(layer), f"no {' or '.join(missing)}"
            yield _layer_finding(rule, ctx, layer.layer, f"BatchNorm layer {name} has {detail}: {cause}", detail)


def _layer_finding(
    rule: Rule, ctx: CheckContext, layer: str, message: str, detail: str, hint: str | None = None
) -> Finding:
    """A finding about one BatchNorm layer, named as inspect names it, with its path as the key."""
    return rule.finding(ctx.layer_subject(layer), message, hint, key=layer, detail=detail, family=ctx.family)


def _stats_at_init(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    for layer in ctx.target.batchnorm:
        if layer.statistics is None:
            continue
        mean, variance = (ctx.statistic(key) for key in layer.statistics)
        if not mean or variance is None:  # unreadable, or no channels
            continue
        if all(value == 0 for value in mean) and all(value == 1 for value in variance):
            yield _layer_finding(
                rule,
                ctx,
                layer.layer,
                f"BatchNorm layer {ctx.layer_subject(layer)} still has its initial statistics (moving_mean all 0, "
                f"moving_variance all 1): {rule.cause_for(ctx.family)}",
                "moving_mean all 0, moving_variance all 1",
            )


def _model_was_trained(ctx: CheckContext) -> bool:
    """True when some weight stored in both checkpoints has different values."""
    import numpy as np

    assert ctx.reference is not None
    theirs = {identity(v): v for v in ctx.reference.variables if v.role is Role.WEIGHT}
    for var in ctx.target.variables:
        other = theirs.get(identity(var))
        if var.role is not Role.WEIGHT or other is None or other.shape != var.shape:
            continue
        mine, reference = ctx.values(var.name), ctx.reference.values(other.name)
        if mine is not None and reference is not None and not np.array_equal(mine, reference):
            return True
    return False


def _same_bits(ctx: CheckContext, mine: str, theirs: str) -> bool:
    assert ctx.reference is not None
    a, b = ctx.values(mine), ctx.reference.values(theirs)
    return a is not None and b is not None and a.shape == b.shape and a.tobytes() == b.tobytes()


def _stats_match_reference(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    if ctx.reference is None or not _model_was_trained(ctx):
        return
    for layer in ctx.target.batchnorm:
        other = ctx.reference.find_layer(layer, ctx.target)
        mine, theirs = layer.statistics, other.statistics if other else None
        if mine is None or theirs is None:
            continue
        if all(_same_bits(ctx, a, b) for a, b in zip(mine, theirs, strict=True)):
            yield _layer_finding(
                rule,
                ctx,
                layer.layer,
                f"BatchNorm layer {ctx.layer_subject(layer)} has moving statistics bit-identical to the reference "
                f"while the trained weights differ from it: {rule.cause_for(ctx.family)}",
                "statistics identical to the reference",
            )


def _variance_negative(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    # A variance of exactly 0 is healthy: a dead channel (e.g. after ReLU) has no spread, and evaluation
    # divides by sqrt(0 + epsilon). Only a negative variance is impossible; NaN is nonfinite-values' job.
    for layer in ctx.target.batchnorm:
        variance = ctx.statistic(layer.moving_variance) if layer.moving_variance else None
        if variance is None:
            continue
        lowest = min((value for value in variance if value < 0), default=None)
        if lowest is not None:
            negative = sum(1 for value in variance if value < 0)
            detail = f"{negative} of {len(variance)} moving_variance values are negative (min {lowest:g})"
            yield _layer_finding(
                rule,
                ctx,
                layer.layer,
                f"BatchNorm layer {ctx.layer_subject(layer)}: {detail}; a variance cannot be negative and "
                "sqrt(variance + epsilon) is NaN",
                detail,
            )


def _percent(share: float) -> str:
    """73% for everyday shares; small ones keep two significant digits instead of rounding to 0%."""
    return f"{share:.0%}" if share >= 0.01 or share == 0 else f"{share * 100:.2g}%"


def _stats_stale(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    updates = ctx.updates
    if updates is None or not updates.steps:  # no steps known, or none taken (bn-stats-match-reference's case)
        return
    for layer in updates.layers:
        share = share_left(layer.decay, updates.steps)
        if share < ctx.stale_threshold:
            continue
        detail = f"{_percent(share)} still the starting values after {updates.steps} steps at decay {layer.decay:g}"
        moved = (
            f"BatchNorm layer {ctx.layer_subject(layer.layer)}: {_percent(share)} of these statistics are still the "
            f"values training started from: {updates.steps} steps at decay {layer.decay:g}"
        )
        if layer.frozen:
            yield _layer_finding(
                rule,
                ctx,
                layer.layer,
                f"{moved}, but the layer is frozen (trainable: false), so its statistics stay as loaded by design",
                f"{detail}; frozen (trainable: false), so by design",
                "nothing to do if the layer was meant to stay frozen",
            )._replace(severity=Severity.INFO)
        else:
            yield _layer_finding(rule, ctx, layer.layer, moved, detail)


def _variance_all_zero(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    for layer in ctx.target.batchnorm:
        variance = ctx.statistic(layer.moving_variance) if layer.moving_variance else None
        if variance and not any(variance):
            yield _layer_finding(
                rule,
                ctx,
                layer.layer,
                f"BatchNorm layer {ctx.layer_subject(layer)}: every one of its {len(variance)} moving_variance "
                "values is 0, so evaluation divides every channel by sqrt(epsilon)",
                f"all {len(variance)} moving_variance values are 0",
            )


RULES = (
    Rule(
        "BN001",
        "bn-missing-moving-stats",
        Severity.ERROR,
        "BatchNorm layer lacks moving_mean or moving_variance",
        "A BatchNorm layer stores beta (and often gamma) but not its moving statistics. In evaluation "
        "(is_training=False, training=False) BatchNorm normalises with moving_mean and moving_variance, so "
        "loading fails: TF1 says `NotFoundError: Key .../BatchNorm/moving_mean not found in checkpoint`; "
        "Keras 3 says `Layer 'bn_Conv1' expected 4 variables, but received 2 variables during loading`; "
        "legacy Keras says `Weight count mismatch for layer #1 ... Layer expects 4 weight(s). Received 2`; "
        "TF2 restores report `Unresolved object in checkpoint: ...moving_variance` or unbound objects, and "
        "with expect_partial() the layer silently keeps 0/1. The usual cause is "
        "`tf.train.Saver(var_list=tf.trainable_variables())` (moving statistics are not trainable), or a "
        "converter or hand-written export that kept only trainable weights. Save with `tf.train.Saver()` or "
        "`tf.global_variables()` instead, or merge the statistics from a full save of the same run.",
        "repair with: ckptdoctor patch CKPT --from FULL_SAVE --out FIXED when a full save of the same run "
        "exists, otherwise ckptdoctor recalibrate CKPT --data SAMPLES.npy --out FIXED (TF1: the PREFIX.meta "
        "beside it; Keras/TF2: --model MODEL); save with tf.train.Saver() (all global variables) from now on",
        _missing_moving_stats,
        causes=_MISSING_CAUSE,
        fixes=_MISSING_FIX,
    ),
    Rule(
        "BN002",
        "bn-stats-at-init",
        Severity.ERROR,
        "BatchNorm moving statistics still at their initial 0/1",
        "moving_mean is all 0 and moving_variance all 1, the values BatchNorm starts with. Training updated "
        "the weights but never the statistics: in TF1 the train op did not depend on "
        "`tf.GraphKeys.UPDATE_OPS` (wrap it in `tf.control_dependencies(tf.get_collection(tf.GraphKeys."
        "UPDATE_OPS))`); in Keras and TF2 the layers never ran in training mode (a custom loop calling "
        "`model(x)` without `training=True`, or layers frozen with `trainable=False`). Evaluation then "
        "normalises with the wrong values and accuracy collapses.",
        "recompute the statistics over training data: ckptdoctor recalibrate CKPT --data SAMPLES.npy --out "
        "FIXED (Keras and TF2: with --model MODEL); run the UPDATE_OPS with the train op (tf.control_dependencies) "
        "from now on",
        _stats_at_init,
        causes=_AT_INIT_CAUSE,
        fixes=_AT_INIT_FIX,
    ),
    Rule(
        "BN003",
        "bn-stats-match-reference",
        Severity.WARNING,
        "BatchNorm statistics unchanged from the reference although the weights were trained",
        "The layer's moving statistics are bit-identical to the reference checkpoint (usually the pretrained "
        "model fine-tuning started from), while the trained weights differ from it. The update ops never "
        "ran during fine-tuning, so the statistics describe the old data. With a high decay (slim's 0.9997) "
        "and few steps statistics also move very little even when the updates ran.",
        "recompute the statistics over the fine-tuning data: ckptdoctor recalibrate CKPT --data SAMPLES.npy "
        "--out FIXED (Keras and TF2: with --model MODEL; a patch from the reference would copy the same old "
        "values); make the train op depend on "
        "tf.GraphKeys.UPDATE_OPS (slim.learning.create_train_op does) from now on",
        _stats_match_reference,
        needs_reference=True,
        causes=_MATCH_REFERENCE_CAUSE,
        fixes=_MATCH_REFERENCE_FIX,
    ),
    Rule(
        "BN004",
        "bn-variance-nonpositive",  # the slug predates the rule's narrowing to negative values; slugs are stable
        Severity.ERROR,
        "BatchNorm moving_variance has negative values",
        "A variance is never negative: sqrt(variance + epsilon) becomes NaN in evaluation. Such values come "
        "from a corrupted file, a bad conversion or a hand-edited checkpoint. A variance of exactly 0 is not "
        "reported here: dead channels (always 0 after a ReLU) have none, and evaluation divides them by "
        "sqrt(epsilon) harmlessly; a layer whose every variance is 0 is bn-variance-all-zero (BN006).",
        _BAD_STATISTICS_HINT,
        _variance_negative,
        fixes=_BAD_STATISTICS_FIX,
    ),
    Rule(
        "BN005",
        "bn-stats-stale",
        Severity.WARNING,
        "BatchNorm moving statistics moved only part of the way from where training started",
        "A moving statistic is updated as v <- d*v + (1-d)*batch_value, so after N update steps at decay d it "
        "still holds d^N of the value training started from (the initial 0/1, or the pretrained statistics). "
        "slim's default decay 0.9997 over 1,000 fine-tuning steps leaves 74% (tensorflow/models#4367, "
        "tensorflow#1122); Keras' momentum 0.99 over 100 steps leaves 37%. Evaluation then normalises with "
        "statistics that mostly describe other data. The decay is read from the TF1 meta graph beside the "
        "checkpoint (the AssignMovingAvg update ops, or FusedBatchNormV3's exponential_avg_factor) or from "
        "`momentum` in a Keras model config; the steps from global_step, the optimizer's iterations or the "
        "`-NNN` of a TF1 prefix (with --reference: the difference between the two). --decay and --steps "
        "override them, and the policy's `stale-threshold` (default 0.25) sets the share that is reported. "
        "Layers that are frozen (Keras trainable: false) keep their statistics by design and are info only.",
        "recompute the statistics over training data: ckptdoctor recalibrate CKPT --data SAMPLES --out FIXED "
        "(Keras and TF2: with --model MODEL); for short runs, lower the BatchNorm decay (e.g. 0.9-0.99) or train "
        "longer",
        _stats_stale,
        causes=_STALE_CAUSE,
        fixes=_STALE_FIX,
    ),
    Rule(
        "BN006",
        "bn-variance-all-zero",
        Severity.WARNING,
        "Every moving_variance value of a BatchNorm layer is 0",
        "Single dead channels have a variance of 0, but a whole layer without spread means the statistics "
        "were zeroed (by a conversion, an initialiser or a hand edit) or the layer only ever saw constant input. "
        "Evaluation then divides every channel by sqrt(epsilon), amplifying it by about 30-1000x.",
        _BAD_STATISTICS_HINT,
        _variance_all_zero,
        fixes=_BAD_STATISTICS_FIX,
    ),
)
