"""How far BatchNorm moving statistics can have moved: the decay d per layer and the number N of update steps.

After N updates at decay d a moving statistic still holds d**N of the value training started from (slim's
0.9997 over 1,000 steps leaves 74%). d comes from the files: a TF1 meta graph beside the checkpoint (the
update ops), or `momentum` in a Keras model config. N comes from `global_step`, the optimizer's
`iter`/`iterations` (never `save_counter`, which counts saves), or a TF1 prefix's `-NNN`; with a reference,
N is the difference between the two. Command-line values override both.
"""

from __future__ import annotations

import math
import os
import re

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.model import BATCHNORM_STATISTICS, Format, FormatFamily, LayerDecay, Role, StatisticsUpdates, Storage

if TYPE_CHECKING:
    from typing import TypeGuard

    from ckptdoctor.analysis.checkpoint import Checkpoint

DEFAULT_STALE_THRESHOLD = 0.25  # share of the starting values still held at which bn-stats-stale fires

GLOBAL_STEP = "global_step"
OPTIMIZER_ITERATIONS = frozenset({"iter", "iterations", "iteration", "_iterations"})
# In TF1 formats a `-NNN` prefix suffix is the training step (tf.train.Saver's global_step argument); a TF2
# CheckpointManager's `ckpt-N` counts saves instead.
_STEP_IN_PREFIX = re.compile(r"-(\d{1,18})$")


def share_left(decay: float, steps: int) -> float:
    """The share of the starting value a moving statistic still holds after `steps` updates at `decay`."""
    return decay**steps


def find_updates(
    target: Checkpoint,
    reference: Checkpoint | None = None,
    decay: float | None = None,
    steps: int | None = None,
    read_counters: bool = True,
) -> StatisticsUpdates | None:
    """The decay and steps the files record (or the overrides give); None when neither is known.

    Without `read_counters` no tensor value is read (a listing imports no numpy): steps come from the prefix."""
    layers, note = _layer_decays(target, decay)
    if steps is not None:
        found: tuple[int, str] | None = (steps, "--steps")
    elif read_counters:
        found = _steps_since(target, reference)
    else:
        found = _step_in_prefix(target)
    if not layers and found is None and note is None:
        return None
    return StatisticsUpdates(
        steps=found[0] if found else None, steps_source=found[1] if found else None, layers=layers, note=note
    )


def _steps_since(target: Checkpoint, reference: Checkpoint | None) -> tuple[int, str] | None:
    mine = steps_of(target)
    theirs = steps_of(reference) if reference is not None else None
    if mine is None or theirs is None or theirs[0] > mine[0]:
        return mine  # a counter below the reference's restarted with the fine-tuning run: it counts that run
    return mine[0] - theirs[0], f"{mine[1]} minus the reference's {theirs[0]}"


def steps_of(checkpoint: Checkpoint) -> tuple[int, str] | None:
    """The training step a checkpoint records, and where it was read."""
    counters = [v for v in checkpoint.variables if v.role is Role.COUNTER and v.shape in ((), (1,))]
    leaf = {v.name: v.path.rpartition("/")[2] for v in counters}
    global_steps = sorted((v for v in counters if leaf[v.name] == GLOBAL_STEP), key=lambda v: len(v.path))
    iterations = sorted((v for v in counters if leaf[v.name] in OPTIMIZER_ITERATIONS), key=lambda v: len(v.path))
    for variable in (*global_steps, *iterations):
        value = _integer(checkpoint, variable.name, variable.dtype)
        if value is not None:
            return value, variable.path
    return _step_in_prefix(checkpoint)


def _step_in_prefix(checkpoint: Checkpoint) -> tuple[int, str] | None:
    if checkpoint.reader.format.family is FormatFamily.TF1:
        match = _STEP_IN_PREFIX.search(os.path.basename(checkpoint.resolved.location))
        if match:
            return int(match.group(1)), "the prefix"
    return None


def _integer(checkpoint: Checkpoint, name: str, dtype: str) -> int | None:
    if not dtype.startswith(("int", "uint")):
        return None
    numbers = checkpoint.numbers(name)
    if numbers is None or len(numbers) != 1:
        return None
    value = int(numbers[0])
    return value if value >= 0 else None


def _valid(decay: float | None) -> TypeGuard[float]:
    return decay is not None and math.isfinite(decay) and 0.0 <= decay <= 1.0


def _layer_decays(target: Checkpoint, override: float | None) -> tuple[tuple[LayerDecay, ...], str | None]:
    """Each BatchNorm layer with moving statistics whose decay is known; a layer with none is skipped."""
    configs = {config.path: config for config in target.reader.layers() if config.is_batchnorm}
    from_graph, note = _meta_graph_decays(target) if override is None else ({}, None)
    layers = []
    for layer in target.batchnorm:
        if layer.missing_statistics == BATCHNORM_STATISTICS:
            continue
        config = configs.get(layer.layer)
        frozen = config is not None and not config.trainable
        if override is not None:
            layers.append(LayerDecay(layer.layer, override, "--decay", frozen))
        elif config is not None and _valid(config.momentum):
            layers.append(LayerDecay(layer.layer, config.momentum, "keras-config", frozen))
        else:
            decays = [from_graph[k] for k in (layer.moving_mean, layer.moving_variance) if k in from_graph]
            if decays:  # the stalest statistic speaks for the layer
                layers.append(LayerDecay(layer.layer, max(decays), "meta-graph", frozen))
    return tuple(layers), note


def _meta_graph_decays(target: Checkpoint) -> tuple[dict[str, float], str | None]:
    if target.resolved.storage is not Storage.BUNDLE or target.reader.format is not Format.TF1_NAME_BASED:
        return {}, None
    from ckptdoctor.formats.bytesource import is_url
    from ckptdoctor.formats.resolve import meta_graph_path

    path = meta_graph_path(target.resolved.location)
    if not is_url(path) and not os.path.lexists(path):  # no graph beside it: its reader is not even imported
        return {}, None
    from ckptdoctor.formats.meta_graph import read_decays

    found = read_decays(path)
    note = f"{path}: no decay read, {found.problem}" if found.problem else None
    return dict(found.decays), note
