"""Merge the BatchNorm moving statistics a checkpoint lacks from a donor save into a new checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.errors import OutputError
from ckptdoctor.formats import Resolved
from ckptdoctor.model import BatchNormLayer
from ckptdoctor.names import listed
from ckptdoctor.typed import NamedTuple

# The patch cannot be made as asked; nothing was written. Every refusal of a write is an OutputError, whether
# patch's own validation or the writer's (an existing output, an input as the output): one kind to catch.
PatchError = OutputError


class Addition(NamedTuple):
    """One statistic to add: which target layer lacks it and where the donor holds it."""

    layer: str
    statistic: str  # "moving_mean" or "moving_variance"
    donor_key: str
    dtype: str
    shape: tuple[int, ...]
    key: str = ""  # where it landed in the output, as the writer placed it


class PatchResult(NamedTuple):
    target: str
    donor: str
    out: str
    written: tuple[str, ...]  # the files that make up the output
    added: tuple[Addition, ...]
    resolved: Resolved  # what was written, to read it back as exactly that (whatever its name suggests)
    state_change: str | None = None  # what changed in the directory's `checkpoint` state file


def _donor_layers(donor: Checkpoint, name_map: Mapping[str, str] | None) -> dict[str, BatchNormLayer]:
    """The donor's BatchNorm layers by path; with a map, by the target's path the map gives them."""
    if name_map is None:
        return {layer.layer: layer for layer in donor.batchnorm}
    from ckptdoctor.rename import map_name

    paths = {v.name: v.path for v in donor.variables}
    out = {}
    for layer in donor.batchnorm:
        key = layer.moving_mean or layer.moving_variance or layer.beta or layer.gamma
        mapped = map_name(name_map, paths.get(key, key)) if key else None
        out[mapped[0].rpartition("/")[0] if mapped else layer.layer] = layer
    return out


def plan(target: Checkpoint, donor: Checkpoint, name_map: Mapping[str, str] | None = None) -> list[Addition]:
    """What to take from the donor, validated against the target's layers; raises PatchError naming gaps.

    `name_map` (an assignment map, donor names to target names) pairs layers the two name differently."""
    infos = {v.name: v for v in target.variables}  # as read at open: no second listing of either
    donor_infos = {v.name: v for v in donor.variables}
    by_layer = _donor_layers(donor, name_map)
    by_name = {donor.layer_name(layer): layer for layer in donor.batchnorm}
    additions, missing, mismatched = [], [], []
    for layer in target.batchnorm:
        if not layer.missing_statistics:
            continue
        source = by_layer.get(layer.layer) or by_name.get(target.layer_name(layer))
        param_key = layer.beta or layer.gamma or layer.moving_mean or layer.moving_variance
        param = infos.get(param_key) if param_key else None
        for statistic in layer.missing_statistics:
            donor_key = getattr(source, statistic) if source else None
            if donor_key is None:
                missing.append(f"{layer.layer}/{statistic}")
                continue
            info = donor_infos[donor_key]
            if param is not None and (info.dtype != param.dtype or info.shape != param.shape):
                mismatched.append(
                    f"{donor_key} is {info.dtype}{list(info.shape)} in the donor but the layer's "
                    f"{param.name.rsplit('/', 1)[-1]} is {param.dtype}{list(param.shape)}"
                )
                continue
            additions.append(Addition(layer.layer, statistic, donor_key, info.dtype, info.shape))
    location = donor.reader.location
    if missing:
        raise PatchError(f"{location}: donor lacks {len(missing)} needed tensors: {listed(missing, 5)}")
    if mismatched:
        raise PatchError(f"{location}: donor statistics do not fit the target: {mismatched[0]}")
    return additions


def patch(
    target_path: str | os.PathLike[str],
    donor_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    name_map: str | os.PathLike[str] | None = None,
) -> PatchResult:
    """Write TARGET plus the statistics its BatchNorm layers lack, taken from DONOR, to OUT.

    Everything that can refuse the patch is checked before the first byte is written. The write holds
    OUT's lock, and SIGTERM or SIGHUP during it removes the temporaries as Ctrl-C does.
    `progress(done_bytes, total_bytes)` is called after each tensor of a TF bundle is written. `name_map` is
    an assignment map file (JSON, as `match --assignment-map` writes) from the donor's names to the target's."""
    from ckptdoctor.writer.base import Edits, NewTensor, Stored
    from ckptdoctor.writer.checkpoint import refuse_external_data, write_checkpoint

    assignment = None
    if name_map is not None:
        from ckptdoctor.rename import load_map

        assignment = load_map(name_map)
    with opened(target_path) as target, opened(donor_path) as donor:
        refuse_external_data([target.reader, donor.reader])  # before planning reads any value of theirs
        additions = plan(target, donor, assignment)
        full_names = {v.name: v.full_name for v in donor.variables}
        edits = Edits(
            add=tuple(
                NewTensor(a.layer, a.statistic, Stored(donor.reader, a.donor_key), full_names.get(a.donor_key))
                for a in additions
            )
        )
        result = write_checkpoint(target, edits, out, also_read=(donor,), force=force, progress=progress)
        added = tuple(
            addition._replace(key=placed.key) for addition, placed in zip(additions, result.placed, strict=True)
        )
        return PatchResult(
            target.reader.location,
            donor.reader.location,
            result.out,
            result.written,
            added,
            result.resolved,
            result.state_change,
        )
