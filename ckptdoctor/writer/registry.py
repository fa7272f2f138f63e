"""Which writer writes each checkpoint format: one table, used by every command that writes (patch, strip, …)."""

from __future__ import annotations

from dataclasses import dataclass

from ckptdoctor.errors import OutputError
from ckptdoctor.model import Format
from ckptdoctor.writer.base import CheckpointWriter


@dataclass(frozen=True)
class NotWritable:
    """A format ckptdoctor reads but does not write, and why."""

    reason: str


def _registry() -> dict[Format, CheckpointWriter | NotWritable]:
    from ckptdoctor.writer.bundle_checkpoint import BundleCheckpointWriter
    from ckptdoctor.writer.keras import KerasLegacyWriter, KerasV3Writer

    bundle = BundleCheckpointWriter()
    return {
        Format.TF1_NAME_BASED: bundle,
        Format.TF2_OBJECT_BASED: bundle,
        Format.TF_SAVEDMODEL: bundle,  # its variables bundle, written as a bundle at the output prefix
        Format.TF_V1_LEGACY: NotWritable(
            "V1 checkpoints (one SSTable file) are read only; TF itself no longer writes them"
        ),
        Format.KERAS_H5: KerasLegacyWriter(),
        Format.KERAS_WEIGHTS_H5: KerasV3Writer(zipped=False),
        Format.KERAS_ZIP: KerasV3Writer(zipped=True),
    }


WRITERS: dict[Format, CheckpointWriter | NotWritable] = _registry()


def writer_for(format: Format | str, location: str) -> CheckpointWriter:
    """The writer for a source of this format; an OutputError naming the source where there is none."""
    try:
        entry = WRITERS[Format(format)]
    except (KeyError, ValueError):
        raise OutputError(f"{location}: ckptdoctor does not write {format} checkpoints") from None
    if isinstance(entry, NotWritable):
        raise OutputError(f"{location}: ckptdoctor does not write {Format(format).value} checkpoints: {entry.reason}")
    return entry
