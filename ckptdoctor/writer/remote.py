"""Outputs in an object store (`s3://`, `gs://`, `az://`, `memory://`, …): the checkpoint is written locally
by the usual writer, into a private staging directory, then uploaded so that no reader ever sees half of it.

Every file goes first to a temporary key beside its final one (named like a local temporary: the marker, our
pid, a random tail); only when all are uploaded is each moved onto its final key (one copy where the store
has no rename), the data files first, then the index, then a bundle's `checkpoint` state file: a reader that
finds the index finds its data, and one that follows the state file finds the index. Only then are the
files of an older checkpoint at the same prefix that the new one does not replace (shards of another shard
count) deleted. A store has no lock: two writers of one directory's state file at once keep one's change."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import OutputError, first_line
from ckptdoctor.formats import Resolved
from ckptdoctor.formats.resolve import STATE_FILE
from ckptdoctor.model import CheckpointError, Storage
from ckptdoctor.writer.atomic import temp_suffix
from ckptdoctor.writer.base import Edits, Progress
from ckptdoctor.writer.guard import input_files

if TYPE_CHECKING:
    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.formats.remote import Store
    from ckptdoctor.writer.checkpoint import WriteResult

# A bundle's files at a prefix, of any shard count: what a new checkpoint at that prefix replaces.
_BUNDLE_MEMBER = r"\.(index|data-\d{5}-of-\d{5})"


def write_remote(
    source: Checkpoint,
    edits: Edits,
    out: str,
    *,
    also_read: Sequence[Checkpoint] = (),
    force: bool = False,
    progress: Progress | None = None,
) -> WriteResult:
    """`write_checkpoint` for an output URL: the same checks and the same files, then uploaded."""
    from ckptdoctor.formats.remote import HTTP_PROTOCOLS, Store, remember_secrets, shown_url
    from ckptdoctor.writer.checkpoint import WriteResult, write_checkpoint
    from ckptdoctor.writer.registry import writer_for

    out = remember_secrets(out)
    store = Store(out)
    if store.protocol in HTTP_PROTOCOLS:
        raise OutputError(f"{out}: cannot write to an HTTP server; write to a local path or a bucket")
    writer = writer_for(source.reader.format, source.reader.location)
    out = writer.output_path(out)
    name = out.rsplit("/", 1)[-1]
    if not name or store.is_directory(out):
        raise OutputError(f"{out}: the output must name a checkpoint prefix or file, not a directory")
    parent = out[: -len(name)]
    is_bundle = writer.storage is Storage.BUNDLE
    readers = [source.reader, *(checkpoint.reader for checkpoint in also_read), *edits.readers()]
    inputs = {shown_url(path) for reader in readers for path in input_files(reader)}
    previous = _existing(store, parent, name, is_bundle)
    for final in previous:
        if final in inputs:
            raise OutputError(f"{out}: the output must not be one of the inputs (it would replace {final})")
    if previous and not force:
        raise OutputError(f"{out}: a checkpoint exists at the output (use --force to replace it)")
    with tempfile.TemporaryDirectory(prefix="ckptdoctor-upload-") as staging:
        state_url = parent + STATE_FILE
        if is_bundle:  # updated as a local one is, from the store's copy
            _download_state(state_url, Path(staging) / STATE_FILE)
        written = write_checkpoint(
            source, edits, os.path.join(staging, name), also_read=also_read, force=False, progress=progress
        )
        finals = {local: parent + Path(local).name for local in written.written}
        ordered = sorted(finals.items(), key=lambda item: item[1].endswith(".index"))  # data, then the index
        if written.state_change is not None:
            ordered.append((str(Path(staging) / STATE_FILE), state_url))  # and the state file last
        _upload(store, ordered)
        staged_state = str(Path(staging) / STATE_FILE)
        state_change = written.state_change and written.state_change.replace(staged_state, state_url)
    _delete_stale(store, [stale for stale in previous if stale not in finals.values()])
    prefix = parent + Path(written.out).name
    resolved = Resolved(written.resolved.storage, prefix)
    return WriteResult(prefix, tuple(finals.values()), written.placed, resolved, state_change)


def _existing(store: Store, parent: str, name: str, is_bundle: bool) -> list[str]:
    """The files of a checkpoint already at the output: a bundle's index and shards of any shard count (by
    listing the directory), or the one file."""
    if not is_bundle:
        return [parent + name] if store.is_file(parent + name) else []
    member = re.compile(re.escape(name) + _BUNDLE_MEMBER)
    return sorted(url for url in store.files(parent) if member.fullmatch(url[len(parent) :]))


def _download_state(url: str, local: Path) -> None:
    """The directory's state file, from the store into the staging directory; none where there is none.
    One that is not a state file stops the write before anything is uploaded."""
    from ckptdoctor.formats.bytesource import MissingFile, open_source
    from ckptdoctor.formats.state_file import MAX_STATE_FILE_SIZE, parse_state

    try:
        source = open_source(url)
    except MissingFile:
        return
    except CheckpointError as error:
        raise OutputError(f"{error}; the checkpoint state file cannot be read") from None
    with contextlib.closing(source):
        if source.size() > MAX_STATE_FILE_SIZE:
            raise OutputError(f"{url}: {source.size()} bytes is too large for a checkpoint state file")
        text = source.read(0, MAX_STATE_FILE_SIZE)
    try:
        parse_state(text, url)
    except CheckpointError as error:
        raise OutputError(f"{error}; move it away first") from None
    local.write_bytes(text)


def _upload(store: Store, ordered: list[tuple[str, str]]) -> None:
    """Each (local file, final key) to a temporary key, then onto its final key in the order given."""
    from ckptdoctor.formats.remote import hide_secrets

    tail = temp_suffix()
    temporaries: list[str] = []
    final = ordered[0][1]
    try:
        for local, final in ordered:
            temporary = store.fs_path(final + tail)
            temporaries.append(temporary)
            store.fs.put_file(local, temporary)
        for temporary, (_, final) in zip(temporaries, ordered, strict=True):
            store.fs.mv(temporary, store.fs_path(final))
    except BaseException as error:
        for temporary in temporaries:
            with contextlib.suppress(Exception):  # already moved, or the store is gone: nothing more to clean
                store.fs.rm_file(temporary)
        if not isinstance(error, Exception):
            raise
        detail = hide_secrets(f"{type(error).__name__}: {first_line(error)}")
        raise OutputError(f"{final}: upload failed ({detail})") from None


def _delete_stale(store: Store, stale: list[str]) -> None:
    """The older checkpoint's files the new one did not replace; the new checkpoint is complete already."""
    from ckptdoctor.formats.remote import hide_secrets

    for url in stale:
        try:
            store.fs.rm_file(store.fs_path(url))
        except FileNotFoundError:
            pass
        except Exception as error:
            detail = hide_secrets(f"{type(error).__name__}: {first_line(error)}")
            raise OutputError(
                f"{url}: the new checkpoint is written, but this file of the one it replaced could not be deleted "
                f"({detail})"
            ) from None
