"""Outputs in an object store (`s3://`, `gs://`, `az://`, `memory://`, …): the checkpoint is written locally
by the usual writer, into a private staging directory, then uploaded so that no reader ever sees half of it.

Every file goes first to a temporary key beside its final one (named like a local temporary: the marker, our
pid, a random tail); only when all are uploaded is each moved onto its final key (one copy where the store
has no rename), the data files first and the index last: a reader that finds the index finds its data."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ckptdoctor.errors import OutputError, first_line
from ckptdoctor.formats import Resolved
from ckptdoctor.writer.atomic import TEMP_MARKER
from ckptdoctor.writer.base import Edits, Progress
from ckptdoctor.writer.guard import input_files

if TYPE_CHECKING:
    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.formats.remote import Store
    from ckptdoctor.writer.checkpoint import WriteResult


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

    out = remember_secrets(out)
    store = Store(out)
    if store.protocol in HTTP_PROTOCOLS:
        raise OutputError(f"{out}: cannot write to an HTTP server; write to a local path or a bucket")
    name = out.rsplit("/", 1)[-1]
    if not name or store.is_directory(out):
        raise OutputError(f"{out}: the output must name a checkpoint prefix or file, not a directory")
    readers = [source.reader, *(checkpoint.reader for checkpoint in also_read), *edits.readers()]
    inputs = {shown_url(path) for reader in readers for path in input_files(reader)}
    with tempfile.TemporaryDirectory(prefix="ckptdoctor-upload-") as staging:
        written = write_checkpoint(
            source, edits, os.path.join(staging, name), also_read=also_read, force=False, progress=progress
        )
        parent = out[: -len(name)]
        finals = {local: parent + Path(local).name for local in written.written}
        for final in finals.values():
            if final in inputs:
                raise OutputError(f"{out}: the output must not be one of the inputs (it would replace {final})")
        if not force and any(store.is_file(final) for final in finals.values()):
            raise OutputError(f"{out}: a checkpoint exists at the output (use --force to replace it)")
        _upload(store, finals)
    prefix = parent + Path(written.out).name
    return WriteResult(prefix, tuple(finals.values()), written.placed, Resolved(written.resolved.storage, prefix))


def _upload(store: Store, finals: dict[str, str]) -> None:
    """Each local file to a temporary key, then onto its final key: data first, the index last."""
    from ckptdoctor.formats.remote import hide_secrets

    tail = f"{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}"
    ordered = sorted(finals.items(), key=lambda item: item[1].endswith(".index"))
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
