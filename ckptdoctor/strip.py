"""A deployment checkpoint: the weights and BatchNorm statistics kept, the training state dropped.

Dropped: optimizer slots and state (`beta1_power`, a Keras optimizer's variables, its `iter` and learning
rate), learning-rate variables, ExponentialMovingAverage shadows, and step counters unless `keep_step`.
With `use_ema` each variable is first written from its moving average, under its own name, so the output
evaluates with the averaged weights and needs no EMA code: a `tf.train.ExponentialMovingAverage` shadow (what
`ema.variables_to_restore()` restores) or a Keras optimizer's average (`use_ema=True`, what
`optimizer.finalize_variable_values` writes into the model); `ema_averages` finds them in every format.
The moving statistics are always kept: dropping them (`Saver(var_list=tf.trainable_variables())`) is what
breaks evaluation (bn-missing-moving-stats)."""

from __future__ import annotations

import contextlib
import os
import re

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.analysis.roles import EMA, OPTIMIZER_SCOPES, owner_path, shadowed_name
from ckptdoctor.errors import OutputError
from ckptdoctor.formats import Resolved
from ckptdoctor.model import Format, Role, TensorInfo, Variable
from ckptdoctor.names import shown
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import Any

    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.writer.base import Edits

LEARNING_RATES = frozenset({"learning_rate", "lr"})  # scalar variables a schedule or optimizer trains with
OPTIMIZER_GROUPS = frozenset({"optimizer", "optimizer_weights", "training"})  # Keras files, TF1 Keras scopes
# The recorded names of a Keras optimizer's moving averages (use_ema=True), the averaged variable's in group 1.
TF_KERAS_AVERAGE = re.compile(r"[^/]+/average/(.+)")  # tf.keras 2.11+: `Adam/average/dense/kernel`
KERAS3_AVERAGE = re.compile(r"[^/]+/(.+)_average")  # Keras 3: `adam/dense_kernel_average`
KERAS3_OPTIMIZER_VARS = "optimizer/vars/"  # a Keras 3 file's optimizer variables, by position


class Dropped(NamedTuple):
    name: str
    what: str  # why it goes: "optimizer state", "EMA shadow", …
    nbytes: int
    subject: str  # the name `inspect` shows it by (TF2: not the raw key)


class StripPlan(NamedTuple):
    dropped: tuple[Dropped, ...]
    from_ema: tuple[tuple[str, str], ...]  # (variable, the shadow its values are taken from)
    without_shadow: tuple[str, ...]  # with use_ema: variables kept as stored, since no shadow averages them


class StripResult(NamedTuple):
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


def _unique(variables: list[Variable], key) -> dict[str, Variable]:
    """Variables by a name they are found under; a name two of them share finds neither (ambiguous)."""
    found: dict[str, Variable] = {}
    shared: set[str] = set()
    for variable in variables:
        name = key(variable)
        if name is None:
            continue
        if name in found:
            shared.add(name)
        found[name] = variable
    return {name: variable for name, variable in found.items() if name not in shared}


def _named_averages(checkpoint: Checkpoint) -> list[tuple[Variable, Variable]]:
    """(variable, its average) where the average's name says whose it is.

    - `tf.train.ExponentialMovingAverage` shadows: `<var>/ExponentialMovingAverage`, the checkpoint key in a
      TF1 bundle, the recorded variable name (full name) in a TF2 object graph, where the shadows are tracked
      wherever the training script put them (`Checkpoint(averaged=[ema.average(v) ...])`).
    - tf.keras (2.11+) optimizers with `use_ema=True`: `<Optimizer>/average/<var>`, in a legacy `.h5`'s
      `optimizer_weights` and in a TF2 object graph.
    - Keras 3 optimizers with `use_ema=True` in a TF2 object graph: `<optimizer>/<var path, / as _>_average`.
    """
    infos = {info.name: info for info in checkpoint.reader.tensors()}
    averaged = [v for v in checkpoint.variables if v.role in (Role.WEIGHT, Role.BN_STATISTIC)]
    by_path = _unique(averaged, lambda v: v.path)
    by_full_name = _unique(averaged, lambda v: v.full_name)
    by_keras3_name = _unique(averaged, lambda v: v.full_name and v.full_name.replace("/", "_"))
    by_any = {v.path for v in averaged} | {v.full_name for v in averaged if v.full_name}
    by_any |= {v.full_name.replace("/", "_") for v in averaged if v.full_name}
    pairs = []
    for average in checkpoint.variables:
        full_name = average.full_name or ""
        if average.role is Role.EMA and EMA in average.path.split("/"):
            owner_name, owners = owner_path(infos[average.name], average.role), by_path
        elif average.role is Role.EMA and (shadowed := shadowed_name(full_name)) is not None:
            owner_name, owners = shadowed, by_full_name
        elif average.role is Role.OPTIMIZER_SLOT and (match := TF_KERAS_AVERAGE.fullmatch(full_name)):
            owner_name, owners = match.group(1), by_full_name
        elif average.role is Role.OPTIMIZER_SLOT and (match := KERAS3_AVERAGE.fullmatch(full_name)):
            owner_name, owners = match.group(1), by_keras3_name
        else:
            continue
        owner = owners.get(owner_name)
        if owner is None:  # averaging nothing stored, or a name variables share (eager `Variable`s): never guess
            whose = (
                f"is of {shown(owner_name)}, which"
                f" {'is not one' if owner_name not in by_any else 'is not the only one'} of the checkpoint's variables"
                if owner_name
                else "names no variable"  # the key is `ExponentialMovingAverage` itself
            )
            raise OutputError(
                f"{checkpoint.reader.location}: --use-ema: the moving average {shown(average.name)} {whose};"
                " strip without --use-ema"
            )
        pairs.append((owner, average))
    return pairs


def _keras3_config(location: str) -> dict[str, Any] | None:
    """config.json of a `.keras` archive."""
    import zipfile

    from ckptdoctor.formats.bytesource import SourceFile, is_url, open_source
    from ckptdoctor.formats.keras_common import parse_json
    from ckptdoctor.formats.keras_v3 import CONFIG_MEMBER, MAX_CONFIG_SIZE, read_member

    with contextlib.ExitStack() as stack:
        source = stack.enter_context(SourceFile(open_source(location))) if is_url(location) else location
        archive = stack.enter_context(zipfile.ZipFile(source))
        if CONFIG_MEMBER not in archive.namelist():
            return None
        return parse_json(read_member(location, archive, CONFIG_MEMBER, MAX_CONFIG_SIZE), location)


def _keras3_positional_averages(checkpoint: Checkpoint) -> list[tuple[Variable, Variable]]:
    """A Keras 3 optimizer's averages (`use_ema=True`) in a `.keras` file, which stores the optimizer's
    variables by position only (`optimizer/vars/<i>`): `iterations`, the learning rate where it is a variable
    (not a schedule), then one average per trainable variable in `model.trainable_variables` order, which is
    the config's layer order and each layer's variables in stored order. The config says whether the optimizer
    keeps averages; every average's shape must match its variable's, or nothing is paired."""
    reader = checkpoint.reader
    location = reader.location
    optimizer_vars = sorted(
        (int(v.name.rpartition("/")[2]), v) for v in checkpoint.variables if v.name.startswith(KERAS3_OPTIMIZER_VARS)
    )
    if not optimizer_vars:
        return []
    if reader.format is not Format.KERAS_ZIP:
        raise OutputError(
            f"{location}: --use-ema: a .weights.h5 file does not record whether its optimizer keeps moving averages"
            " (use_ema) nor where they are among its variables; strip the model's .keras file instead"
        )
    config = _keras3_config(location) or {}
    compile_config = config.get("compile_config") or {}
    optimizer = compile_config.get("optimizer") if isinstance(compile_config, dict) else None
    settings = optimizer.get("config") if isinstance(optimizer, dict) else None
    if not isinstance(settings, dict) or settings.get("use_ema") is not True:
        return []
    learning_rate = settings.get("learning_rate")
    first = 2 if isinstance(learning_rate, (int, float)) and not isinstance(learning_rate, bool) else 1
    layers = getattr(reader, "configs", {})
    frozen = [path for path, layer in layers.items() if not layer.trainable]
    trainable = []
    for path in layers:  # config order: a nested model's layers follow it
        if any(path == f or path.startswith(f + "/") for f in frozen):
            continue
        own = [v for v in checkpoint.variables if v.layer == path and v.role is Role.WEIGHT]
        trainable += sorted(own, key=lambda v: int(v.name.rpartition("/")[2]))
    averages = [v for index, v in optimizer_vars if first <= index < first + len(trainable)]
    if len(averages) != len(trainable) or any(
        (a.dtype, a.shape) != (v.dtype, v.shape) for a, v in zip(averages, trainable, strict=True)
    ):
        raise OutputError(
            f"{location}: --use-ema: the optimizer's moving averages (optimizer/vars/{first}…) do not line up with"
            f" the model's {len(trainable)} trainable variables as its config orders them"
        )
    return list(zip(trainable, averages, strict=True))


def ema_averages(checkpoint: Checkpoint) -> list[tuple[Variable, Variable]]:
    """(variable, the stored tensor holding its moving average) for every averaged variable; OutputError where a
    variable has two."""
    pairs = _named_averages(checkpoint)
    if checkpoint.reader.format in (Format.KERAS_ZIP, Format.KERAS_WEIGHTS_H5):
        pairs += _keras3_positional_averages(checkpoint)
    seen: dict[str, str] = {}
    for owner, average in pairs:
        if seen.setdefault(owner.name, average.name) != average.name:
            raise OutputError(
                f"{checkpoint.reader.location}: {shown(owner.name)} has two moving averages"
                f" ({shown(seen[owner.name])} and {shown(average.name)}); strip without --use-ema"
            )
    return pairs


def plan_strip(checkpoint: Checkpoint, use_ema: bool = False, keep_step: bool = False) -> tuple[Edits, StripPlan]:
    """The edits that make the deployment checkpoint, and what they drop; OutputError where there is nothing
    to keep, or `use_ema` finds no moving average."""
    from ckptdoctor.writer.base import Edits, Replacement, Stored

    infos = {info.name: info for info in checkpoint.reader.tensors()}
    dropped: list[Dropped] = []
    for variable in checkpoint.variables:
        why = _training_state(infos[variable.name], variable.role, variable.path, keep_step)
        if why is not None:
            dropped.append(Dropped(variable.name, why, variable.nbytes, checkpoint.subjects[variable.name]))
    from_ema: list[tuple[str, str]] = []
    without: list[str] = []
    if use_ema:
        averages = {owner.name: average for owner, average in ema_averages(checkpoint)}
        if not averages:
            raise OutputError(
                f"{checkpoint.reader.location}: --use-ema: no variable has an ExponentialMovingAverage shadow"
                " or an optimizer's moving average (use_ema) here"
            )
        gone = {d.name for d in dropped}
        for variable in checkpoint.variables:
            average = averages.get(variable.name)
            if variable.name in gone:
                continue
            if average is not None:
                if (average.dtype, average.shape) != (variable.dtype, variable.shape):
                    raise OutputError(
                        f"{checkpoint.reader.location}: the average {average.name} is"
                        f" {average.dtype}{list(average.shape)} but {variable.name} is"
                        f" {variable.dtype}{list(variable.shape)}"
                    )
                from_ema.append((variable.name, average.name))
            elif variable.role in (Role.WEIGHT, Role.BN_STATISTIC):
                without.append(variable.name)
    edits = Edits(
        replace=tuple(Replacement(name, Stored(checkpoint.reader, average)) for name, average in from_ema),
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
