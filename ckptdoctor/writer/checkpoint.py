"""The one way every command writes a checkpoint: `write_checkpoint(source, edits, out)`.

Around the format's own write, in one place: the output path checks, the refusal of data outside the
inputs' files, the output guard (no file written or deleted is an input file), the output lock, the
debris of dead writers, cleanup on SIGTERM/SIGHUP, and a bundle's directory state file."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import OutputError
from ckptdoctor.formats import CheckpointReader, Resolved
from ckptdoctor.formats.bytesource import is_url
from ckptdoctor.model import Format, Storage
from ckptdoctor.typed import NamedTuple
from ckptdoctor.writer.atomic import clear_debris
from ckptdoctor.writer.base import CheckpointWriter, Edits, Placed, Progress
from ckptdoctor.writer.guard import input_files, lock_path, output_lock, refuse_overwriting_inputs
from ckptdoctor.writer.registry import writer_for
from ckptdoctor.writer.signals import cleanup_on_termination
from ckptdoctor.writer.state import check_state_update, state_lock, state_path, update_state_file

if TYPE_CHECKING:
    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.formats.base import CheckpointReader


class WriteResult(NamedTuple):
    out: str  # the output as written (a bundle's prefix)
    written: tuple[str, ...]  # the files that make up the output
    placed: tuple[Placed, ...]  # where each added tensor landed, in the order of `Edits.add`
    resolved: Resolved  # what was written, to read it back as exactly that (whatever its name suggests)
    state_change: str | None = None  # what changed in the directory's `checkpoint` state file


def refuse_external_data(readers: Sequence[CheckpointReader]) -> None:
    """Never copy what lies outside a checkpoint's files (HDF5 external storage, links, virtual datasets)."""
    for reader in readers:
        for name, where in getattr(reader, "external", {}).items():
            raise OutputError(f"{reader.location}: {name} is {where}; ckptdoctor refuses data outside the file")


def _existing(writer: CheckpointWriter, out: str, outputs: list[str], inputs: list[str], force: bool) -> list[Path]:
    """The files already at the output, once it is clear that writing there destroys no input."""
    previous = writer.existing_outputs(out)
    refuse_overwriting_inputs(out, [*outputs, *map(str, previous)], inputs)
    for path in writer.output_files(out):  # a rename cannot replace a directory: refused before an older index goes
        if os.path.isdir(path) and not os.path.islink(path):
            raise OutputError(f"{path}: a directory is where the output's file goes; move it away first")
    if previous and not force:
        raise OutputError(f"{out}: a checkpoint exists at the output (use --force to replace it)")
    return previous


def write_checkpoint(
    source: Checkpoint,
    edits: Edits,
    out: str | os.PathLike[str],
    *,
    also_read: Sequence[Checkpoint] = (),
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """Write SOURCE with EDITS applied to OUT, in SOURCE's format.

    `also_read` are other checkpoints the edits were planned from (a donor): their files are protected like
    the source's even where no tensor is taken from them. Everything that can refuse the write is checked
    before the first byte is written; the write holds OUT's lock, and SIGTERM or SIGHUP during it removes
    the temporaries as Ctrl-C does. `progress(done_bytes, total_bytes)` follows a bundle's tensors.
    An output URL is written locally, then uploaded (writer/remote.py)."""
    if is_url(os.fspath(out)):
        from ckptdoctor.writer.remote import write_remote

        return write_remote(source, edits, os.fspath(out), also_read=also_read, force=force, progress=progress)
    reader = source.reader
    writer = writer_for(reader.format, reader.location)
    out_text = writer.output_path(os.fspath(out))
    parent = Path(out_text).parent
    if not Path(out_text).name or Path(out_text).is_dir():
        raise OutputError(f"{out}: the output must name a checkpoint prefix or file, not a directory")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{parent}: not a directory")
    readers = [reader, *(checkpoint.reader for checkpoint in also_read), *edits.readers()]
    refuse_external_data(readers)
    inputs = list(dict.fromkeys(path for each in readers for path in input_files(each)))  # a donor once, not per tensor
    is_bundle = writer.storage is Storage.BUNDLE
    state_files = [str(state_path(out_text)), lock_path(str(state_path(out_text)))] if is_bundle else []
    outputs = [*writer.output_files(out_text), lock_path(out_text), *state_files]  # locks are deleted on release
    _existing(writer, out_text, outputs, inputs, force)
    prepared = writer.prepare(source, edits)
    if is_bundle:
        check_state_update(out_text)  # a state file we could not update stops the write now, not after it
    parent.mkdir(parents=True, exist_ok=True)
    # Both locks before the first byte: a lock that cannot be taken must not leave a written output behind.
    with cleanup_on_termination(), output_lock(out_text), state_lock(out_text) if is_bundle else nullcontext():
        previous = _existing(writer, out_text, outputs, inputs, force)  # as it is now that we hold the lock
        clear_debris(out_text, inputs)
        written = prepared.write(out_text, previous, progress)
        state_change = update_state_file(out_text, inputs, locked=True) if is_bundle else None
    resolved = Resolved(writer.storage, out_text, note=_output_note(reader), verified=written.verified)
    return WriteResult(out_text, written.files, written.placed, resolved, state_change)


def _output_note(reader: CheckpointReader) -> str | None:
    """What the output is where its input was more than a checkpoint (the re-check shows it as a note)."""
    if reader.format is Format.TF_SAVEDMODEL:
        return (
            "written from a SavedModel's variables, as a checkpoint: the SavedModel's graph (saved_model.pb) and "
            "assets were not copied"
        )
    return None
