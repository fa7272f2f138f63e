"""Merge the BatchNorm moving statistics a checkpoint lacks from a donor save into a new checkpoint."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.formats import Resolved
from ckptdoctor.formats.keras_h5 import KerasH5Reader
from ckptdoctor.formats.keras_v3 import KerasV3Reader
from ckptdoctor.formats.tf_bundle import BundleReader
from ckptdoctor.model import TensorInfo
from ckptdoctor.writer.atomic import clear_debris
from ckptdoctor.writer.guard import OutputError, input_files, output_lock, refuse_overwriting_inputs
from ckptdoctor.writer.signals import cleanup_on_termination
from ckptdoctor.writer.state import read_state, state_path, update_state_file


class PatchError(OutputError):
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
    resolved: Resolved  # what was written, to read it back as exactly that (whatever its name suggests)
    state_change: str | None = None  # what changed in the directory's `checkpoint` state file


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


def _check_output(out: str, is_bundle: bool, outputs: list[str], inputs: list[str], force: bool) -> list[Path]:
    """The files already at the output, once it is clear that writing there destroys no input."""
    previous = existing_outputs(out, is_bundle)
    refuse_overwriting_inputs(out, [*outputs, *map(str, previous)], inputs)
    if previous and not force:
        raise PatchError(f"{out}: a checkpoint exists at the output (use --force to replace it)")
    return previous


def patch(
    target_path: str | os.PathLike[str],
    donor_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
    progress: Callable[..., None] | None = None,
) -> PatchResult:
    """Write TARGET plus the statistics its BatchNorm layers lack, taken from DONOR, to OUT.

    Everything that can refuse the patch is checked before the first byte is written. The write holds
    OUT's lock, and SIGTERM or SIGHUP during it removes the temporaries as Ctrl-C does.
    `progress(done_bytes, total_bytes)` is called after each tensor of a TF bundle is written."""
    from ckptdoctor.writer import keras as keras_writer
    from ckptdoctor.writer import patch_bundle

    out_text = os.fspath(out)
    with opened(target_path) as target, opened(donor_path) as donor:
        is_bundle = isinstance(target.reader, BundleReader)
        is_keras = isinstance(target.reader, (KerasV3Reader, KerasH5Reader))
        if not (is_bundle or is_keras):
            raise PatchError(f"{target.reader.location}: patch does not write {target.reader.format} checkpoints")
        if is_bundle and out_text.endswith(".index"):
            out_text = out_text[: -len(".index")]
        parent = Path(out_text).parent
        if not Path(out_text).name or Path(out_text).is_dir():
            raise PatchError(f"{out}: --out must name a checkpoint prefix or file, not a directory")
        if parent.exists() and not parent.is_dir():
            raise PatchError(f"{parent}: not a directory")
        inputs = input_files(target.reader) + input_files(donor.reader)
        for reader in (target.reader, donor.reader):
            for name, where in getattr(reader, "external", {}).items():  # never copy what lies outside the file
                raise PatchError(f"{reader.location}: {name} is {where}; patch refuses data outside the file")
        if is_bundle:
            outputs = [*patch_bundle.output_files(out_text), str(state_path(out_text))]
            resolved = Resolved("bundle", out_text)
        else:
            outputs = [out_text]
            resolved = Resolved("zip" if target.reader.format == "keras-zip" else "hdf5", out_text)
        _check_output(out_text, is_bundle, outputs, inputs, force)
        additions = plan(target, donor)
        if is_bundle:
            read_state(parent)  # a state file we could not update stops the patch now, not after the write
            bundle_plan = patch_bundle.prepare(target, donor, additions)
        parent.mkdir(parents=True, exist_ok=True)
        state_change = None
        with cleanup_on_termination(), output_lock(out_text):
            previous = _check_output(out_text, is_bundle, outputs, inputs, force)  # as it is now that we hold it
            clear_debris(out_text)
            if is_bundle:
                written = patch_bundle.write(bundle_plan, out_text, previous, progress)
                additions = bundle_plan.additions
                state_change = update_state_file(out_text)
            else:
                written, additions = keras_writer.write(target, donor, additions, out_text)
        return PatchResult(
            target.reader.location,
            donor.reader.location,
            out_text,
            written,
            tuple(additions),
            resolved,
            state_change,
        )
