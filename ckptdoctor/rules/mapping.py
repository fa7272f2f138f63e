"""Rules about names that do not line up between a checkpoint and the model that restores it (`match`).

These rules need the model, which `check` does not have: they belong to `match` (`Command.MATCH`), which
makes their findings from a MatchResult (`findings`); `check` never runs them. Being in the catalogue gives
them stable codes, the policy (ignore, severity), `explain`, and SARIF's and JUnit's reports of a match like
every other rule."""

from __future__ import annotations

from collections.abc import Iterator

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.model import Finding, Severity
from ckptdoctor.rules.base import CheckContext, Command, Rule

if TYPE_CHECKING:  # match (and its model loading) is imported by `ckptdoctor match`, not by every `check`
    from ckptdoctor.match import MatchResult

_EXAMPLES = 3  # renamed variables named in a rename finding's message


def _only_in_match(rule: Rule, ctx: CheckContext) -> Iterator[Finding]:
    """Never called by `check`, which runs no `match` rule; `match` makes findings from a MatchResult."""
    return iter(())


def _shape(shape: tuple[int, ...] | None) -> str:
    return "[?]" if shape is None else "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


_MAP_HINT = "restore through the assignment map: ckptdoctor match CKPT ... --assignment-map MAP.json"
_BN_HINT = (
    "the checkpoint lacks this BatchNorm statistic: add it from a full save with `ckptdoctor patch CKPT "
    "--from FULL_SAVE --out FIXED`, or recalibrate it by running the model in training mode on a few batches"
)

RULES = (
    Rule(
        "MAP001",
        "match-missing",
        Severity.ERROR,
        "A model variable is not in the checkpoint",
        "The model restores a variable that the checkpoint holds under no name, not even after the renames "
        "ckptdoctor looks for (scope prefixes, Keras counters, kernel/weights, BatchNorm naming). TensorFlow "
        "stops at the first one with `Key ... not found in checkpoint`; Keras with a weight count mismatch. "
        "Usually the model gained a layer, or the checkpoint was saved with a var_list that left it out (BatchNorm "
        "moving statistics are not trainable and are lost by `var_list=tf.trainable_variables()`).",
        "initialise it in the model (a new layer), or save the checkpoint again with every variable",
        _only_in_match,
        command=Command.MATCH,
    ),
    Rule(
        "MAP002",
        "match-shape-mismatch",
        Severity.ERROR,
        "A model variable has another shape in the checkpoint",
        "The checkpoint holds the variable under the model's name with another shape, typically a head built for "
        "another number of classes or a changed layer width. TensorFlow fails with `Assign requires shapes of both "
        "tensors to match` (or `Shape of variable ... doesn't match`). ckptdoctor never renames around it: the "
        "values cannot be used as they are.",
        "leave this variable out of the restore (init_from_checkpoint without it, or a Saver var_list without it) "
        "and train it anew",
        _only_in_match,
        command=Command.MATCH,
    ),
    Rule(
        "MAP003",
        "match-dtype-mismatch",
        Severity.ERROR,
        "A model variable has another dtype in the checkpoint",
        "The checkpoint holds the variable under the model's name and shape but another dtype (float16 against "
        "float32, int32 against int64). A Saver restore fails with `Tensor type mismatch`.",
        "cast the checkpoint's values to the model's dtype in a converted checkpoint, or build the model with the "
        "checkpoint's dtype",
        _only_in_match,
        command=Command.MATCH,
    ),
    Rule(
        "MAP004",
        "match-unexpected",
        Severity.WARNING,
        "A checkpoint variable is taken by no model variable",
        "A weight or BatchNorm statistic in the checkpoint is not restored into the model under any name. A "
        "restore succeeds, but those values are dropped: often a layer that was removed, or a variable the model "
        "now names so differently that no rename finds it. Optimizer slots, EMA shadows and step counters are "
        "expected extras and are not reported.",
        "check that the layer was meant to be dropped; if not, map it by hand in the assignment map",
        _only_in_match,
        command=Command.MATCH,
    ),
    Rule(
        "MAP005",
        "match-renamed",
        Severity.ERROR,
        "Model variables are stored under other names",
        "The checkpoint holds these model variables under other names: a scope added or removed (multi-tower "
        "training, `model/` wrappers, Estimator scopes), a Keras layer counter shifted (`batch_normalization_3` "
        "vs `batch_normalization`), slim's weights/biases for kernel/bias. A plain restore fails with `Key ... "
        "not found in checkpoint`. ckptdoctor found one global rename that lines them up with equal dtype and "
        "shape; `--assignment-map` writes the map that restores through it.",
        _MAP_HINT,
        _only_in_match,
        command=Command.MATCH,
    ),
    Rule(
        "MAP006",
        "match-ambiguous",
        Severity.ERROR,
        "A model variable could be restored from more than one checkpoint key",
        "Two renames fit equally well and send this variable to different checkpoint keys of equal dtype and "
        "shape (two towers, two copies of a sub-model). ckptdoctor does not guess which one was meant.",
        "decide which scope to restore from and write that entry of the assignment map by hand",
        _only_in_match,
        command=Command.MATCH,
    ),
    Rule(
        "MAP007",
        "match-fresh-training-state",
        Severity.INFO,
        "Optimizer slots or counters of the model are not in the checkpoint",
        "The model (a training graph) has optimizer slots, EMA shadows or step counters that the checkpoint "
        "does not hold, as when fine-tuning from a checkpoint saved without its optimizer. They start fresh, "
        "which is usually intended; a Saver over all variables would fail on them.",
        "restore only the model's weights and statistics (the assignment map) and initialise the rest",
        _only_in_match,
        command=Command.MATCH,
    ),
)

_BY_CODE = {rule.code: rule for rule in RULES}


def findings(result: MatchResult) -> tuple[Finding, ...]:
    """The findings for one match, in the order a person reads them: what blocks the restore first."""
    out: list[Finding] = []
    missing, shape, dtype, unexpected = (_BY_CODE[c] for c in ("MAP001", "MAP002", "MAP003", "MAP004"))
    renamed, ambiguous, fresh = (_BY_CODE[c] for c in ("MAP005", "MAP006", "MAP007"))
    if result.renamed:
        examples = ", ".join(f"{p.model} <- {p.checkpoint}" for p in result.renamed[:_EXAMPLES])
        how = "; ".join(str(rename) for rename in result.renames)
        out.append(
            renamed.finding(
                how,
                f"{len(result.renamed)} model variables are stored under other names ({how}), e.g. {examples}",
            )
        )
    for ambiguity in result.ambiguous:
        keys = " or ".join(ambiguity.candidates)
        out.append(ambiguous.finding(ambiguity.model, f"{ambiguity.model} could be restored from {keys}"))
    for variable in result.missing:
        hint = _BN_HINT if variable.name in result.missing_statistics else None
        text = f"{variable.name} ({variable.dtype}{_shape(variable.shape)}) is not in the checkpoint"
        out.append(missing.finding(variable.name, text, hint))
    for mismatch in result.shape_mismatch:
        model, stored = mismatch.model, mismatch.stored
        text = f"{model.name}: the model has {_shape(model.shape)}, the checkpoint {_shape(stored.shape)}"
        out.append(shape.finding(model.name, text))
    for mismatch in result.dtype_mismatch:
        model, stored = mismatch.model, mismatch.stored
        out.append(
            dtype.finding(model.name, f"{model.name}: the model has {model.dtype}, the checkpoint {stored.dtype}")
        )
    for stored in result.unexpected:
        text = f"{stored.name} ({stored.dtype}{_shape(stored.shape)}) is restored into no model variable"
        out.append(unexpected.finding(stored.name, text))
    if result.missing_training_state:
        names = [v.name for v in result.missing_training_state]
        text = f"{len(names)} optimizer slots or counters start fresh, e.g. {', '.join(names[:_EXAMPLES])}"
        out.append(fresh.finding(names[0], text))
    return tuple(out)
