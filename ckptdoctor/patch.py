"""Merge the BatchNorm moving statistics a checkpoint lacks from a donor save into a new checkpoint."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.formats.keras_h5 import KerasH5Reader
from ckptdoctor.formats.keras_v3 import KerasV3Reader
from ckptdoctor.formats.tf_bundle import BundleReader
from ckptdoctor.model import CheckpointError, TensorInfo
from ckptdoctor.writer.atomic import TEMP_MARKER


class PatchError(CheckpointError):
    """The patch cannot be made as asked; nothing was written."""


@dataclass(frozen=True)
class Addition:
    """One statistic to add: which target layer lacks it and where the donor holds it."""

    layer: str
    statistic: str  # "moving_mean" or "moving_variance"
    donor_key: str
    dtype: str
    shape: tuple[int, ...]
    key: str = ""  # where it lands in the output; set by the writer


@dataclass(frozen=True)
class PatchResult:
    target: str
    donor: str
    out: str
    written: tuple[str, ...]  # the files that make up the output
    added: tuple[Addition, ...]


def plan(target: Checkpoint, donor: Checkpoint) -> list[Addition]:
    """What to take from the donor, validated against the target's layers; raises PatchError naming gaps."""
    infos: dict[str, TensorInfo] = {t.name: t for t in target.reader.tensors()}
    donor_infos: dict[str, TensorInfo] = {t.name: t for t in donor.reader.tensors()}
    by_layer = {layer.layer: layer for layer in donor.batchnorm}
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
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PatchError(f"{location}: donor lacks {len(missing)} needed tensors: {shown}")
    if mismatched:
        raise PatchError(f"{location}: donor statistics do not fit the target: {mismatched[0]}")
    return additions


def existing_outputs(out: str, is_bundle: bool) -> list[Path]:
    """The files already at the output: a checkpoint's index and data shards, or the one file."""
    path = Path(out)
    if not is_bundle:
        return [path] if path.exists() else []
    shard = re.compile(re.escape(path.name) + r"\.data-\d{5}-of-\d{5}")
    found = [p for p in path.parent.glob(glob.escape(path.name) + ".data-*") if shard.fullmatch(p.name)]
    return sorted(p for p in [*found, Path(out + ".index")] if p.is_file())


def patch(
    target_path: str | os.PathLike[str],
    donor_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
    progress: Callable[..., None] | None = None,
) -> PatchResult:
    """Write TARGET plus the statistics its BatchNorm layers lack, taken from DONOR, to OUT.

    `progress(done_bytes, total_bytes)` is called after each tensor of a TF bundle is written."""
    from ckptdoctor.writer import keras as keras_writer
    from ckptdoctor.writer import patch_bundle

    out_text = os.fspath(out)
    with opened(target_path) as target, opened(donor_path) as donor:
        is_bundle = isinstance(target.reader, BundleReader)
        if is_bundle and out_text.endswith(".index"):
            out_text = out_text[: -len(".index")]
        parent = Path(out_text).parent
        if not Path(out_text).name or Path(out_text).is_dir():
            raise PatchError(f"{out}: --out must name a checkpoint prefix or file, not a directory")
        if parent.exists() and not parent.is_dir():
            raise PatchError(f"{parent}: not a directory")
        for reader in (target.reader, donor.reader):
            if os.path.abspath(reader.location) == os.path.abspath(out_text):
                raise PatchError(f"{out_text}: the output must not be one of the inputs")
            for name, where in getattr(reader, "external", {}).items():  # never copy what lies outside the file
                raise PatchError(f"{reader.location}: {name} is {where}; patch refuses data outside the file")
        previous = existing_outputs(out_text, is_bundle)
        if previous and not force:
            raise PatchError(f"{out_text}: a checkpoint exists at the output (use --force to replace it)")
        additions = plan(target, donor)
        parent.mkdir(parents=True, exist_ok=True)
        for debris in parent.glob(glob.escape(Path(out_text).name) + ".*" + TEMP_MARKER + "*"):
            debris.unlink(missing_ok=True)  # left by a patch that was killed; the marker makes it ours
        if is_bundle:
            written, additions = patch_bundle.write(target, donor, additions, out_text, previous, progress)
        elif isinstance(target.reader, (KerasV3Reader, KerasH5Reader)):
            written, additions = keras_writer.write(target, donor, additions, out_text)
        else:
            raise PatchError(f"{target.reader.location}: patch does not write {target.reader.format} checkpoints")
        return PatchResult(target.reader.location, donor.reader.location, out_text, written, tuple(additions))
