"""Merge the BatchNorm moving statistics a checkpoint lacks from a donor save into a new checkpoint."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from ckptdoctor.analysis.checkpoint import Checkpoint, opened
from ckptdoctor.formats import protos
from ckptdoctor.formats.resolve import STATE_FILE, read_state_file
from ckptdoctor.formats.tf_bundle import BundleEntry, BundleReader
from ckptdoctor.model import CheckpointError
from ckptdoctor.writer.atomic import write_atomically
from ckptdoctor.writer.bundle import BundleWriter


class PatchError(CheckpointError):
    """The patch cannot be made as asked; nothing was written."""


@dataclass(frozen=True)
class Addition:
    layer: str
    statistic: str
    key: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PatchResult:
    target: str
    donor: str
    out: str
    added: tuple[Addition, ...]


def _bundle(checkpoint: Checkpoint, role: str) -> BundleReader:
    reader = checkpoint.reader
    if not isinstance(reader, BundleReader):
        raise PatchError(f"{reader.location}: patch needs a TF V2 checkpoint as {role}, not {reader.format}")
    return reader


def plan(target: Checkpoint, donor: Checkpoint) -> list[tuple[Addition, BundleEntry]]:
    """What to copy from the donor, validated against the target's layers; raises PatchError naming gaps."""
    target_reader, donor_reader = _bundle(target, "target"), _bundle(donor, "donor")
    additions, missing, mismatched = [], [], []
    for layer in target.batchnorm:
        param_key = layer.beta or layer.gamma
        param = target_reader.entry(param_key) if param_key else None
        for statistic in layer.missing_statistics:
            key = f"{layer.layer}/{statistic}"
            try:
                entry = donor_reader.entry(key)
            except KeyError:
                missing.append(key)
                continue
            if param is not None and (entry.dtype != param.dtype or entry.shape != param.shape):
                mismatched.append(
                    f"{key} is {entry.dtype.name}{list(entry.shape)} in the donor but the layer's "
                    f"{param_key.rsplit('/', 1)[-1]} is {param.dtype.name}{list(param.shape)}"
                )
                continue
            additions.append((Addition(layer.layer, statistic, key, entry.dtype.name, entry.shape), entry))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PatchError(f"{donor_reader.location}: donor lacks {len(missing)} needed tensors: {shown}")
    if mismatched:
        raise PatchError(f"{donor_reader.location}: donor statistics do not fit the target: {mismatched[0]}")
    return additions


def normalise_out(out: str | os.PathLike[str]) -> str:
    text = os.fspath(out)
    return text[: -len(".index")] if text.endswith(".index") else text


def existing_outputs(prefix: str) -> list[Path]:
    """The files of a checkpoint already at `prefix`, of any shard count."""
    path = Path(prefix)
    found = [*path.parent.glob(glob.escape(path.name) + ".data-*-of-*"), Path(prefix + ".index")]
    return sorted(p for p in found if p.is_file())


def patch(
    target_path: str | os.PathLike[str],
    donor_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
) -> PatchResult:
    prefix = normalise_out(out)
    if not Path(prefix).name:
        raise PatchError(f"{out}: --out must name a checkpoint prefix, not a directory")
    if Path(prefix).parent.exists() and not Path(prefix).parent.is_dir():
        raise PatchError(f"{Path(prefix).parent}: not a directory")
    with opened(target_path) as target, opened(donor_path) as donor:
        target_reader = _bundle(target, "target")
        for reader in (target_reader, donor.reader):
            if os.path.abspath(reader.location) == os.path.abspath(prefix):
                raise PatchError(f"{prefix}: the output must not be one of the inputs")
        previous = existing_outputs(prefix)
        if previous and not force:
            raise PatchError(f"{prefix}: a checkpoint exists at the output (use --force to replace it)")
        additions = plan(target, donor)
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        writer = BundleWriter(prefix)
        try:
            by_key = {e.key: (target_reader, e) for e in target_reader.entries.values()}
            by_key |= {entry.key: (donor.reader, entry) for _, entry in additions}
            for key in sorted(by_key):
                reader, entry = by_key[key]
                writer.copy(reader, entry)
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    for stale in previous:
        if stale.name not in (Path(writer.data_path).name, Path(writer.index_path).name):
            stale.unlink(missing_ok=True)
    write_state_file(prefix)
    return PatchResult(
        target=target_reader.location,
        donor=donor.reader.location,
        out=prefix,
        added=tuple(addition for addition, _ in additions),
    )


def write_state_file(prefix: str) -> None:
    """Name `prefix` as the latest checkpoint of its directory, keeping the checkpoints already listed."""
    directory = Path(prefix).parent
    state = read_state_file(directory) or protos.CheckpointState()
    name = Path(prefix).name
    paths = [p for p in state.all_model_checkpoint_paths if Path(p).name != name]
    del state.all_model_checkpoint_paths[:]
    del state.all_model_checkpoint_timestamps[:]
    state.all_model_checkpoint_paths.extend([*paths, name])
    state.model_checkpoint_path = name
    write_atomically(directory / STATE_FILE, text_format.MessageToString(state).encode())
