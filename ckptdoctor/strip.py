"""A deployment checkpoint: the weights and BatchNorm statistics kept, the training state dropped.

Dropped: optimizer slots and state (`beta1_power`, a Keras optimizer's variables, its `iter` and learning
rate), learning-rate variables, ExponentialMovingAverage shadows, and step counters unless `keep_step`.
With `use_ema` each variable is first written from its shadow (what `ema.variables_to_restore()` restores,
under the variable's own name), so the output evaluates with the averaged weights and needs no EMA code.
The moving statistics are always kept: dropping them (`Saver(var_list=tf.trainable_variables())`) is what
breaks evaluation (bn-missing-moving-stats)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckptdoctor.analysis.roles import OPTIMIZER_SCOPES, owner_path
from ckptdoctor.errors import OutputError
from ckptdoctor.formats import Resolved
from ckptdoctor.model import Role, TensorInfo

if TYPE_CHECKING:
    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.writer.base import Edits

LEARNING_RATES = frozenset({"learning_rate", "lr"})  # scalar variables a schedule or optimizer trains with
OPTIMIZER_GROUPS = frozenset({"optimizer", "optimizer_weights", "training"})  # Keras files, TF1 Keras scopes


@dataclass(frozen=True)
class Dropped:
    name: str
    what: str  # why it goes: "optimizer state", "EMA shadow", …
    nbytes: int


@dataclass(frozen=True)
class StripPlan:
    dropped: tuple[Dropped, ...]
    from_ema: tuple[tuple[str, str], ...]  # (variable, the shadow its values are taken from)
    without_shadow: tuple[str, ...]  # with use_ema: variables kept as stored, since no shadow averages them


@dataclass(frozen=True)
class StripResult:
    source: str
    out: str
    written: tuple[str, ...]  # the files that make up the output
    plan: StripPlan
    size_before: int  # bytes of the source's files
    size_after: int  # bytes of the output's files
    resolved: Resolved  # what was written, to read it back as exactly that
    state_change: str | None = None  # what changed in the directory's `checkpoint` state file


def _training_state(info: TensorInfo, role: Role, path: str, keep_step: bool) -> str | None:
    """Why a tensor is left out of a deployment checkpoint, or None to keep it."""
    parts = path.split("/")
    in_optimizer = (
        info.optimizer_state
        or parts[0] in OPTIMIZER_GROUPS
        or (
            len(parts) > 1 and parts[0] in OPTIMIZER_SCOPES  # TF1 Keras: `Adam/iter`, `Adam/learning_rate`
        )
    )
    if role is Role.EMA:
        return "EMA shadow"
    if role is Role.OPTIMIZER_SLOT or in_optimizer:
        return "optimizer state"
    if role is Role.COUNTER:
        return None if keep_step else "step counter"
    if parts[-1] in LEARNING_RATES and info.shape == ():
        return "learning rate"
    return None


def plan_strip(checkpoint: Checkpoint, use_ema: bool = False, keep_step: bool = False) -> tuple[Edits, StripPlan]:
    """The edits that make the deployment checkpoint, and what they drop; OutputError where there is nothing
    to keep, or `use_ema` finds no shadow."""
    from ckptdoctor.writer.base import Edits, Replacement, Stored

    infos = {info.name: info for info in checkpoint.reader.tensors()}
    dropped: list[Dropped] = []
    for variable in checkpoint.variables:
        why = _training_state(infos[variable.name], variable.role, variable.path, keep_step)
        if why is not None:
            dropped.append(Dropped(variable.name, why, variable.nbytes))
    from_ema: list[tuple[str, str]] = []
    without: list[str] = []
    if use_ema:
        by_path = {v.path: v for v in checkpoint.variables}
        shadows = {}
        for variable in checkpoint.variables:
            if variable.role is Role.EMA:
                owner = by_path.get(owner_path(infos[variable.name], variable.role))
                if owner is not None and owner.role is not Role.EMA:
                    shadows[owner.name] = variable
        if not shadows:
            raise OutputError(
                f"{checkpoint.reader.location}: --use-ema: no variable has an ExponentialMovingAverage shadow here"
            )
        gone = {d.name for d in dropped}
        for variable in checkpoint.variables:
            shadow = shadows.get(variable.name)
            if shadow is not None and variable.name not in gone:
                if (shadow.dtype, shadow.shape) != (variable.dtype, variable.shape):
                    raise OutputError(
                        f"{checkpoint.reader.location}: the shadow {shadow.name} is {shadow.dtype}{list(shadow.shape)}"
                        f" but {variable.name} is {variable.dtype}{list(variable.shape)}"
                    )
                from_ema.append((variable.name, shadow.name))
            elif variable.role in (Role.WEIGHT, Role.BN_STATISTIC) and variable.name not in gone:
                without.append(variable.name)
    edits = Edits(
        replace=tuple(Replacement(name, Stored(checkpoint.reader, shadow)) for name, shadow in from_ema),
        drop=frozenset(d.name for d in dropped),
    )
    return edits, StripPlan(tuple(dropped), tuple(from_ema), tuple(without))


def _size(paths: list[str] | tuple[str, ...]) -> int:
    return sum(os.stat(path).st_size for path in paths)


def strip(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    use_ema: bool = False,
    keep_step: bool = False,
    force: bool = False,
) -> StripResult:
    """Write the deployment checkpoint of PATH to OUT, in PATH's format (see the module docstring)."""
    from ckptdoctor.analysis.checkpoint import opened
    from ckptdoctor.writer.checkpoint import write_checkpoint
    from ckptdoctor.writer.guard import input_files

    with opened(path) as checkpoint:
        edits, plan = plan_strip(checkpoint, use_ema=use_ema, keep_step=keep_step)
        before = _size(input_files(checkpoint.reader))
        result = write_checkpoint(checkpoint, edits, out, force=force)
        return StripResult(
            checkpoint.reader.location,
            result.out,
            result.written,
            plan,
            before,
            _size(result.written),
            result.resolved,
            result.state_change,
        )
