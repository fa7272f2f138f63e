"""Which writer writes each checkpoint format: one table, used by every command that writes (patch, strip, …).

The table names each writer's module and class rather than importing them: writing a TF bundle must not pay
for importing the Keras writer (and h5py behind it), nor the other way round."""

from __future__ import annotations

import functools
import importlib

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import OutputError
from ckptdoctor.model import Format
from ckptdoctor.typed import NamedTuple
from ckptdoctor.writer.base import CheckpointWriter

if TYPE_CHECKING:
    from typing import Any


class NotWritable(NamedTuple):
    """A format ckptdoctor reads but does not write, and why."""

    reason: str


class WriterClass(NamedTuple):
    """A writer, named by module and class, made (once) with `options` when a command first needs it."""

    module: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()  # keyword arguments as (name, value) pairs: the record is hashable


_BUNDLE = WriterClass("ckptdoctor.writer.bundle_checkpoint", "BundleCheckpointWriter")
WRITERS: dict[Format, WriterClass | NotWritable] = {
    Format.TF1_NAME_BASED: _BUNDLE,
    Format.TF2_OBJECT_BASED: _BUNDLE,
    Format.TF_SAVEDMODEL: _BUNDLE,  # its variables bundle, written as a bundle at the output prefix
    Format.TF_V1_LEGACY: NotWritable(
        "V1 checkpoints (one SSTable file) are read only; TF itself no longer writes them"
    ),
    Format.KERAS_H5: WriterClass("ckptdoctor.writer.keras", "KerasLegacyWriter"),
    Format.KERAS_WEIGHTS_H5: WriterClass("ckptdoctor.writer.keras", "KerasV3Writer", (("zipped", False),)),
    Format.KERAS_ZIP: WriterClass("ckptdoctor.writer.keras", "KerasV3Writer", (("zipped", True),)),
}


@functools.cache
def _instance(entry: WriterClass) -> CheckpointWriter:
    writer: CheckpointWriter = getattr(importlib.import_module(entry.module), entry.name)(**dict(entry.options))
    return writer


def writer_for(format: Format | str, location: str) -> CheckpointWriter:
    """The writer for a source of this format; an OutputError naming the source where there is none."""
    try:
        entry = WRITERS[Format(format)]
    except (KeyError, ValueError):
        raise OutputError(f"{location}: ckptdoctor does not write {format} checkpoints") from None
    if isinstance(entry, NotWritable):
        raise OutputError(f"{location}: ckptdoctor does not write {Format(format).value} checkpoints: {entry.reason}")
    return _instance(entry)
