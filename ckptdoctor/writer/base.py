"""The writer interface: an edit plan as frozen data, and the protocol each checkpoint writer implements.

A command (patch, strip, rename, recalibrate) decides *what* changes as an `Edits` value; the writer for
the source's format decides *where* each change lands in that format (a TF2 graph node, a Keras `vars`
index, a legacy `weight_names` entry). `writer.checkpoint.write_checkpoint` does everything around the
write (guard, lock, debris, signals, state file) once for every command."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import OutputError
from ckptdoctor.formats.object_keys import OBJECT_GRAPH_KEY
from ckptdoctor.model import Storage
from ckptdoctor.names import is_writable_name
from ckptdoctor.typed import NamedTuple, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ckptdoctor.analysis.checkpoint import Checkpoint
    from ckptdoctor.formats.base import CheckpointReader, VerifiedBytes

Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


class UnsupportedEdit(OutputError):
    """The writer for this format cannot make this kind of edit (yet); nothing was written."""


class Stored(NamedTuple):
    """A tensor of another checkpoint, by its name there: copied as stored where both are bundles, else read."""

    reader: CheckpointReader
    name: str


class Values(NamedTuple):
    """A tensor given as values (computed statistics, say)."""

    array: np.ndarray


TensorSource = Stored | Values


class NewTensor(NamedTuple):
    """A tensor to add, named by the layer it belongs to and its variable there (e.g. "moving_mean").

    Each format places it its own way: TF keys `<layer>/<variable>` (and a TF2 graph node under the layer's
    object), Keras v3 the variable's index in the layer's `vars`, legacy Keras a dataset in `weight_names`.
    `layer` is the layer path as analysis names it (`BatchNormLayer.layer`)."""

    layer: str
    variable: str
    source: TensorSource
    full_name: str | None = None  # the framework's variable name, recorded where the format keeps one (TF2)


class Replacement(NamedTuple):
    """New values for a stored tensor, named as the source's reader lists it (`TensorInfo.name`).

    The dtype and shape must stay those of the stored tensor: the model that loads it expects them."""

    name: str
    source: TensorSource


class Edits(NamedTuple):
    """Everything a write changes in its source; what is not named is copied unchanged."""

    add: tuple[NewTensor, ...] = ()
    replace: tuple[Replacement, ...] = ()
    drop: frozenset[str] = frozenset()  # tensor names to leave out
    rename: Mapping[str, str] = {}  # old name -> new name

    def readers(self) -> list[CheckpointReader]:
        """The other checkpoints these edits read from: their files are inputs the output must not touch."""
        sources = [tensor.source for tensor in self.add] + [replacement.source for replacement in self.replace]
        return [source.reader for source in sources if isinstance(source, Stored)]


class Placed(NamedTuple):
    """Where an added tensor landed in the output, in the output format's own terms."""

    layer: str
    variable: str
    key: str


class Written(NamedTuple):
    files: tuple[str, ...]  # the files that make up the output
    placed: tuple[Placed, ...]  # one per `Edits.add`, in the same order
    verified: VerifiedBytes | None = None  # tensor bytes checked as they were written, for the re-check


class PreparedWrite(Protocol):
    """A write decided and checked against its source; `write` is the only step that touches the disk."""

    def write(self, out: str, previous: Sequence[Path], progress: Progress | None) -> Written:
        """Write the output at `out` through temporaries renamed into place; `previous` are the files of
        an older checkpoint at `out` (already checked against the inputs), which the write may delete."""
        ...


class CheckpointWriter(Protocol):
    """One per storage layout; chosen for a source by `writer.registry.writer_for(format)`."""

    storage: Storage  # what the output is, to read it back as exactly that

    def output_path(self, out: str) -> str:
        """The output as this writer names it (a bundle's prefix for `x.index`)."""
        ...

    def output_files(self, out: str) -> list[str]:
        """Every file the write creates at `out` (the output guard compares them with the inputs)."""
        ...

    def existing_outputs(self, out: str) -> list[Path]:
        """The files of a checkpoint already at `out`, which the write replaces or deletes."""
        ...

    def prepare(self, source: Checkpoint, edits: Edits) -> PreparedWrite:
        """Check the edits against the source and decide every byte's origin; writes nothing.

        Raises UnsupportedEdit for an edit this format cannot make, OutputError for one that does not fit."""
        ...


def refuse_unsupported(edits: Edits, location: str, what: str, drop: bool = False, rename: bool = False) -> None:
    """An edit a writer does not make is an error, never silently ignored."""
    if edits.drop and not drop:
        raise UnsupportedEdit(f"{location}: dropping tensors from {what} is not supported yet")
    if edits.rename and not rename:
        raise UnsupportedEdit(f"{location}: renaming tensors in {what} is not supported yet")


def check_drops_and_renames(source: Checkpoint, edits: Edits) -> None:
    """Every dropped or renamed tensor exists; no new name is empty, holds a control character, or lands on
    a name the output already has; and the output keeps at least one tensor. Raises OutputError."""
    location = source.reader.location
    names = {variable.name for variable in source.variables}  # classified at open: no second listing
    for name in sorted(edits.drop | set(edits.rename)):
        if name not in names:
            raise OutputError(f"{location}: no tensor {name} to {'drop' if name in edits.drop else 'rename'}")
    if OBJECT_GRAPH_KEY in edits.drop | set(edits.rename):
        raise OutputError(f"{location}: the object graph ({OBJECT_GRAPH_KEY}) cannot be dropped or renamed")
    both = edits.drop & set(edits.rename)
    if both:
        raise OutputError(f"{location}: {min(both)} is both dropped and renamed")
    kept = names - edits.drop - set(edits.rename)
    targets: dict[str, str] = {}
    for old, new in sorted(edits.rename.items()):
        if not is_writable_name(new):
            raise OutputError(
                f"{location}: cannot rename {old} to '{new}': a new name is non-empty text without control characters"
            )
        if new in targets:
            raise OutputError(f"{location}: {targets[new]} and {old} would both be renamed to {new}")
        if new in kept:
            raise OutputError(f"{location}: cannot rename {old} to {new}, which is already taken")
        targets[new] = old
    if edits.drop and not (kept | set(targets)) - {OBJECT_GRAPH_KEY}:
        raise OutputError(f"{location}: the edits would leave no tensor in the output")


def check_replacements(source: Checkpoint, edits: Edits) -> None:
    """Each replaced tensor exists in the source, and its new values have its dtype and shape."""
    infos = {variable.name: variable for variable in source.variables}
    specs = TensorSpecs()
    for replacement in edits.replace:
        info = infos.get(replacement.name)
        if info is None:
            raise OutputError(f"{source.reader.location}: no tensor {replacement.name} to replace")
        dtype, shape = specs.of(replacement.source)
        if (dtype, shape) != (info.dtype, info.shape):
            raise OutputError(
                f"{source.reader.location}: {replacement.name} is {info.dtype}{list(info.shape)}; "
                f"its replacement is {dtype}{list(shape)}"
            )


class TensorSpecs:
    """The dtype name and shape of tensor sources, without reading stored values (one listing per reader)."""

    def __init__(self) -> None:
        self._listings: dict[int, dict[str, tuple[str, tuple[int, ...]]]] = {}

    def of(self, source: TensorSource) -> tuple[str, tuple[int, ...]]:
        if isinstance(source, Values):
            return source.array.dtype.name, tuple(int(size) for size in source.array.shape)
        listing = self._listings.get(id(source.reader))
        if listing is None:
            listing = {info.name: (info.dtype, info.shape) for info in source.reader.tensors()}
            self._listings[id(source.reader)] = listing
        if source.name not in listing:
            raise OutputError(f"{source.reader.location}: no tensor {source.name}")
        return listing[source.name]


def values_of(source: TensorSource) -> np.ndarray:
    return source.array if isinstance(source, Values) else source.reader.read(source.name)
