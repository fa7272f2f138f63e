"""Turn whatever path a user gives (prefix, any member file, directory) into one checkpoint to read."""

from __future__ import annotations

import os
import re
from contextlib import closing

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.formats.base import VerifiedBytes
from ckptdoctor.formats.bytesource import ByteSource, MissingFile, is_url, local_path, open_regular, open_source
from ckptdoctor.model import CheckpointError, Format, Storage
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:  # the state file's codec is imported where a directory is resolved, not for every prefix
    from pathlib import Path  # likewise pathlib (with urllib.parse and ipaddress, ~3 ms of a 45 ms listing)

    from ckptdoctor.formats.state_file import CheckpointState

STATE_FILE = "checkpoint"  # the file beside TF checkpoints that names the latest (read by formats/state_file.py)
SAVED_MODEL_FILE = "saved_model.pb"
MAX_FILES_TO_SNIFF = 64  # a folder of one checkpoint file: beyond this many files, ask for the file
_MEMBER_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})\Z")  # \Z: `$` also matches before a newline
# The name TF1 gives a V1 checkpoint saved with Saver(sharded=True), `export-?????-of-00001`, and its one file.
_V1_SHARD_PATTERN = re.compile(r"-\?{5}-of-(\d{5})\Z")
_V1_SINGLE_SHARD = "-00000-of-00001"


class Resolved(NamedTuple):
    storage: Storage
    location: str  # the prefix (bundle) or the file (v1, hdf5, zip)
    format: Format | None = None  # set where the path says more than the bytes, e.g. a SavedModel
    note: str | None = None  # one line telling the user what was chosen
    # A writer's output: the bytes it checked as it wrote them, which a re-check need not read again.
    verified: VerifiedBytes | None = None


def meta_graph_path(prefix: str) -> str:
    """Where TF1's Saver puts the MetaGraphDef of the checkpoint at `prefix`."""
    return prefix + ".meta"


def read_state_file(directory: Path) -> CheckpointState | None:
    """The directory's `checkpoint` state file, or None where there is none."""
    path = directory / STATE_FILE
    if not os.path.lexists(path):
        return None
    from ckptdoctor.formats.state_file import MAX_STATE_FILE_SIZE, parse_state

    try:
        fd = open_regular(path)  # a FIFO named `checkpoint` is refused here, not waited on
    except MissingFile:
        return None  # a dangling symlink: as if there were no state file
    try:
        text = os.pread(fd, MAX_STATE_FILE_SIZE + 1, 0)
    finally:
        os.close(fd)
    if len(text) > MAX_STATE_FILE_SIZE:
        raise CheckpointError(f"{path}: over {MAX_STATE_FILE_SIZE} bytes, not a checkpoint state file")
    return parse_state(text, str(path))


def _parts(path: str) -> list[str]:
    """`path`'s components as pathlib reads them, without importing it (~3 ms of a listing): empty and `.`
    components dropped, `..` kept."""
    if os.altsep:
        path = path.replace(os.altsep, os.sep)
    return [part for part in path.split(os.sep) if part not in ("", ".")]


def file_name(path: str) -> str:
    """`PurePath(path).name`: the last component, whatever slashes or `.` follow it (of a URL's path too)."""
    parts = _parts(path)
    return parts[-1] if parts else ""


def _state_path(directory: Path, stored: str) -> str:
    # TF1 Saver stores absolute paths; when the directory was moved they dangle, so fall back to the name.
    candidate = directory / stored  # an absolute `stored` replaces `directory`
    if _exists(str(candidate)):
        return str(candidate)
    return str(directory / file_name(stored))


def _exists(prefix: str) -> bool:
    return _has_index(prefix) or _is_v1_file(prefix)


def _has_index(prefix: str) -> bool:
    """Whether anything is at `<prefix>.index`; that it is a regular file is checked when it is opened, so
    a FIFO or directory there gets its own message instead of "missing"."""
    return os.path.exists(prefix + ".index")


def _is_v1_file(path: str) -> bool:
    from ckptdoctor.formats.tf_v1 import is_v1_table

    return os.path.isfile(path) and is_v1_table(path)


def _savedmodel(directory: Path) -> Resolved | None:
    prefix = directory / "variables" / "variables"
    if (directory / SAVED_MODEL_FILE).is_file() or os.path.isfile(f"{prefix}.index"):
        if not os.path.isfile(f"{prefix}.index"):
            raise CheckpointError(f"{directory}: SavedModel without variables (no variables/variables.index)")
        return Resolved(
            Storage.BUNDLE, str(prefix), Format.TF_SAVEDMODEL, f"reading the SavedModel's variables in {directory}"
        )
    return None


def _savedmodel_variables(directory: Path) -> Resolved | None:
    """`dir/variables` of a SavedModel: the same checkpoint, with the same format, as `dir` itself."""
    if directory.name == "variables" and _has_index(str(directory / "variables")):
        found = _savedmodel(directory.parent)
        if found is not None:
            return found
    return None


def _in_directory(directory: Path) -> Resolved:
    savedmodel = _savedmodel(directory) or _savedmodel_variables(directory)
    if savedmodel:
        return savedmodel
    state = read_state_file(directory)
    if state is not None and state.model_checkpoint_path:
        chosen = _state_path(directory, state.model_checkpoint_path)
        if _exists(chosen):
            return _resolve_prefix(chosen, f"using {file_name(chosen)}, the latest in {directory / STATE_FILE}")
    indexes = sorted(directory.glob("*.index"), key=lambda p: (p.stat().st_mtime, p.name))
    if indexes:
        prefix = str(indexes[-1])[: -len(".index")]
        why = "the state file names no existing checkpoint" if state is not None else "no checkpoint state file"
        note = f"using {file_name(prefix)}, the newest in {directory} ({why})"
        return Resolved(Storage.BUNDLE, prefix, note=note)
    return _single_file(directory)


def _single_file(directory: Path) -> Resolved:
    """A folder holding one checkpoint file (`.h5`, `.weights.h5`, `.keras`, a V1 checkpoint): that file.

    Files are sniffed by their bytes, never by their name; symlinks are not followed (they may lead out of the
    folder), and a folder of many files is not sniffed one by one."""
    files = sorted(entry for entry in directory.iterdir() if entry.is_file() and not entry.is_symlink())
    if len(files) > MAX_FILES_TO_SNIFF:
        raise CheckpointError(
            f"{directory}: no .index or state file, and {len(files)} files to choose from (over "
            f"{MAX_FILES_TO_SNIFF}): name the checkpoint file"
        )
    found = [(entry, resolved) for entry in files if (resolved := _sniffed_or_none(str(entry))) is not None]
    if not found:
        raise CheckpointError(
            f"{directory}: no checkpoint in this directory (no .index, {STATE_FILE}, Keras or V1 checkpoint file)"
        )
    if len(found) > 1:
        names = ", ".join(entry.name for entry, _ in found)
        raise CheckpointError(f"{directory}: {len(found)} checkpoint files here ({names}): name one of them")
    entry, resolved = found[0]
    return resolved._replace(note=f"using {entry.name}, the only checkpoint file in {directory}")


def _sniffed_or_none(path: str) -> Resolved | None:
    try:
        return _sniff_file(path)
    except CheckpointError:
        return None


def _v1_shards(prefix: str, shards: int, given: str) -> Resolved:
    """A V1 checkpoint TF1 saved in `shards` files (`prefix-00000-of-0000N`): read where it is one file."""
    if shards != 1:
        raise CheckpointError(f"{given}: a V1 checkpoint in {shards} files; ckptdoctor reads those of one file")
    path = prefix + _V1_SINGLE_SHARD
    if not _is_v1_file(path):
        raise CheckpointError(f"{given}: no V1 checkpoint file {file_name(path)}")
    return _v1_shard(path, given)


def _v1_shard(path: str, given: str) -> Resolved:
    note = f"reading V1 checkpoint {file_name(path)} (given {file_name(given)})"
    return Resolved(Storage.V1, path, note=note)


def _resolve_prefix(prefix: str, note: str | None = None) -> Resolved:
    if _has_index(prefix):
        if _parts(prefix)[-2:] == ["variables", "variables"]:
            return Resolved(Storage.BUNDLE, prefix, Format.TF_SAVEDMODEL, note)
        return Resolved(Storage.BUNDLE, prefix, note=note)
    if _is_v1_file(prefix):
        return Resolved(Storage.V1, prefix, note=note)
    raise CheckpointError(f"{prefix}: no checkpoint here")


def resolve(path: str | os.PathLike[str]) -> Resolved:
    """Find the checkpoint a path means, or raise CheckpointError with a one-line reason."""
    text = local_path(os.fspath(path))
    if is_url(text):
        return resolve_url(text)
    if os.path.isdir(text):
        from pathlib import Path

        return _in_directory(Path(text))
    if file_name(text) == SAVED_MODEL_FILE and os.path.isfile(text):
        from pathlib import Path

        return _in_directory(Path(text).parent)
    if _has_index(text):
        return _resolve_prefix(text)
    pattern = _V1_SHARD_PATTERN.search(text)
    if pattern:
        return _v1_shards(text[: pattern.start()], int(pattern.group(1)), text)
    member = _MEMBER_SUFFIX.search(text)
    if member:
        prefix = text[: member.start()]
        if _has_index(prefix) or _is_v1_file(prefix):
            note = f"reading checkpoint {file_name(prefix)} (given {file_name(text)})"
            return _resolve_prefix(prefix, note)
        if member.group(1) == "meta" and _is_v1_file(prefix + _V1_SINGLE_SHARD):  # a sharded V1 save's graph
            return _v1_shard(prefix + _V1_SINGLE_SHARD, text)
        if not os.path.exists(text):
            raise CheckpointError(f"{text}: file not found")
        raise CheckpointError(f"{text}: its checkpoint index {file_name(prefix)}.index is missing")
    if os.path.exists(text):
        return _sniff_file(text)  # refuses what is not a regular file, with one line saying what it is
    raise CheckpointError(f"{text}: no such file or checkpoint prefix")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def not_a_checkpoint(head: bytes) -> str | None:
    """What a file's first bytes say it is when that is a stand-in for a checkpoint, never a checkpoint."""
    if head.startswith(LFS_POINTER):
        return "is a Git LFS pointer, not the checkpoint itself (run `git lfs pull` to fetch the file)"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "is an HTML page, not a checkpoint (a failed or redirected download?)"
    return None


def read_head(path: str, length: int = 2048) -> bytes:
    """The first bytes of a regular file (a FIFO or device is refused, never waited on)."""
    try:
        fd = open_regular(path)
    except MissingFile:
        raise CheckpointError(f"{path}: no such file or checkpoint prefix") from None
    try:
        return os.pread(fd, length, 0)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror})") from None
    finally:
        os.close(fd)


def _sniff_file(path: str) -> Resolved:
    """Decide a single file's format from its bytes, never from its name."""
    read_head(path)  # refuses what is not a regular file, with one line saying what it is
    with closing(open_source(path)) as source:
        return _sniff_source(path, source)


def _sniff_source(path: str, source: ByteSource) -> Resolved:
    head = source.read(0, 2048)
    if not head:
        raise CheckpointError(f"{path}: file is empty")
    # HDF5 allows a user block before the superblock, at 512, 1024, 2048 … bytes.
    if head.startswith(HDF5_SIGNATURE) or _hdf5_after_user_block(source):
        return Resolved(Storage.HDF5, path)
    if head.startswith(ZIP_SIGNATURE):
        return Resolved(Storage.ZIP, path)
    stand_in = not_a_checkpoint(head)
    if stand_in:
        raise CheckpointError(f"{path}: {stand_in}")
    from ckptdoctor.formats.tf_v1 import is_v1_table

    if is_v1_table(path):
        return Resolved(Storage.V1, path)
    raise CheckpointError(f"{path}: not a recognised checkpoint format")


def _hdf5_after_user_block(source: ByteSource) -> bool:
    offset = 512
    while offset + 8 <= source.size():
        if source.read(offset, 8) == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


# ---- URLs: the same resolution through a store's requests (formats/remote.py) ---------------------------


def resolve_url(url: str) -> Resolved:
    """Find the checkpoint a URL means, as `resolve` does for a path: a prefix, a member file, a single file,
    or a directory (SavedModel, the `checkpoint` state file, else the newest `.index` where the store lists;
    plain HTTP cannot list, so there a directory needs its state file)."""
    from ckptdoctor.formats.remote import Store, remember_secrets

    url = remember_secrets(url)  # userinfo and query stay out of every name, message and report
    store = Store(url)
    if url.endswith("/") or store.is_directory(url):
        return _url_directory(store, url.rstrip("/"))
    if store.is_file(url + ".index"):
        return _url_prefix(store, url)
    member = _MEMBER_SUFFIX.search(url)
    if member:
        prefix = url[: member.start()]
        if store.is_file(prefix + ".index") or _url_is_v1(store, prefix):
            return _url_prefix(store, prefix, f"reading checkpoint {file_name(prefix)} (given {file_name(url)})")
        shard = prefix + _V1_SINGLE_SHARD
        if member.group(1) == "meta" and _url_is_v1(store, shard):  # a sharded V1 save's graph, as for a path
            note = f"reading V1 checkpoint {file_name(shard)} (given {file_name(url)})"
            return Resolved(Storage.V1, shard, note=note)
        if not store.is_file(url):
            raise CheckpointError(f"{url}: file not found")
        raise CheckpointError(f"{url}: its checkpoint index {file_name(prefix)}.index is missing")
    if not store.is_file(url):
        return _url_directory_else(store, url, CheckpointError(f"{url}: no such file or checkpoint prefix"))
    with closing(open_source(url)) as source:
        if not_a_checkpoint(source.read(0, 512)):  # e.g. an HTTP server's page for a directory
            return _url_directory_else(store, url, None, lambda: _sniff_source(url, source))
        return _sniff_source(url, source)


def _url_directory_else(store, url: str, error: CheckpointError | None, otherwise=None) -> Resolved:
    """Plain HTTP cannot say whether a URL is a directory: try it as one (its state file), and where that
    finds nothing, fail as a file would."""
    if not store.listable:
        try:
            return _url_directory(store, url)
        except CheckpointError:
            pass
    if otherwise is not None:
        return otherwise()
    raise error or CheckpointError(f"{url}: no such file or checkpoint prefix")


def _url_is_v1(store, url: str) -> bool:
    from ckptdoctor.formats.tf_v1 import is_v1_table

    return store.is_file(url) and is_v1_table(url)


def _url_prefix(store, prefix: str, note: str | None = None) -> Resolved:
    if store.is_file(prefix + ".index"):
        if prefix.endswith("/variables/variables"):
            return Resolved(Storage.BUNDLE, prefix, Format.TF_SAVEDMODEL, note)
        return Resolved(Storage.BUNDLE, prefix, note=note)
    if _url_is_v1(store, prefix):
        return Resolved(Storage.V1, prefix, note=note)
    raise CheckpointError(f"{prefix}: no checkpoint here")


def _url_directory(store, directory: str) -> Resolved:
    variables = f"{directory}/variables/variables"
    if store.is_file(variables + ".index"):
        return Resolved(Storage.BUNDLE, variables, Format.TF_SAVEDMODEL)
    if store.is_file(f"{directory}/{SAVED_MODEL_FILE}"):
        raise CheckpointError(f"{directory}: SavedModel without variables (no variables/variables.index)")
    state = _url_state(f"{directory}/{STATE_FILE}")
    if state is not None and state.model_checkpoint_path:
        chosen = f"{directory}/{_state_member(state.model_checkpoint_path)}"
        if store.is_file(chosen + ".index") or _url_is_v1(store, chosen):
            note = f"using {file_name(chosen)}, the latest in {directory}/{STATE_FILE}"
            return _url_prefix(store, chosen, note)
    why = "the state file names no existing checkpoint" if state is not None else "no checkpoint state file"
    if not store.listable:
        raise CheckpointError(
            f"{directory}: no checkpoint found ({why}; plain HTTP cannot list a directory: give the checkpoint "
            "prefix, e.g. …/model.ckpt-1000)"
        )
    indexes = store.indexes(directory)
    if indexes:
        prefix = indexes[-1][: -len(".index")]
        return Resolved(Storage.BUNDLE, prefix, note=f"using {file_name(prefix)}, the newest in {directory} ({why})")
    raise CheckpointError(f"{directory}: no checkpoint in this directory (no .index files, no {STATE_FILE} file)")


def _state_member(stored: str) -> str:
    """Where a state file's checkpoint lies relative to its directory. A training job wrote absolute paths
    of its own machine (or another bucket): only the name is taken, so a state file never sends a read
    outside its directory."""
    parts = stored.replace("\\", "/").split("/")
    if is_url(stored) or os.path.isabs(stored) or ".." in parts or "" in parts:
        return parts[-1]
    return "/".join(parts)


def _url_state(url: str) -> CheckpointState | None:
    from ckptdoctor.formats.state_file import MAX_STATE_FILE_SIZE, parse_state

    try:
        source = open_source(url)
    except MissingFile:
        return None
    with closing(source):
        if source.size() > MAX_STATE_FILE_SIZE:
            raise CheckpointError(f"{url}: over {MAX_STATE_FILE_SIZE} bytes, not a checkpoint state file")
        text = source.read(0, MAX_STATE_FILE_SIZE)
    return parse_state(text, url)
