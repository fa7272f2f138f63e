"""What the Keras readers share: HDF5 attribute decoding, model configs, values and scans of datasets."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator

from ckptdoctor import TYPE_CHECKING, dtypes
from ckptdoctor.errors import first_line
from ckptdoctor.formats.base import MAX_EXPANDED_BYTES, SCAN_CHUNK, Progress, ScanResult, VerifiedBytes
from ckptdoctor.formats.bytesource import SourceFile, is_url, open_source, require_regular
from ckptdoctor.formats.resolve import HDF5_SIGNATURE
from ckptdoctor.model import CheckpointError, IntegrityProblem, LayerConfig, ProblemKind, TensorInfo
from ckptdoctor.names import decode_name
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import Any

    import h5py
    import numpy as np

# Soft links are followed by hand, a bounded number of hops: HDF5 itself would follow external links too.
MAX_SOFT_LINK_HOPS = 16
# HDF5 inflates a compressed chunk whole, into a buffer of its declared size, whatever the file stores: a few
# KB can declare a chunk of gigabytes. Keras never compresses, and h5py's default chunks are far smaller.
MAX_FILTERED_CHUNK_BYTES = 32 << 20
# Compressed data inflating over this many times its stored size is refused (a dataset) or left unread (the
# scan, once the whole file's budget is spent): real weights barely compress, only crafted data reaches it.
MAX_COMPRESSION_RATIO = 100
# ... except small ones: a dataset of zeros compresses a thousandfold, and inflating 16 MiB costs nothing.
RATIO_FREE_BYTES = 16 << 20


def hdf5_truncation(path: str) -> str | None:
    """Why an HDF5 file is shorter than its superblock says it is, or None where the length is fine.

    The HDF5 library refuses such files with a cryptic "truncated file: eof = …"; a partial download is the
    usual cause, and saying so is more useful."""
    import struct
    from contextlib import closing

    with closing(open_source(path)) as source:
        head, size = source.read(0, 96), source.size()
    if not head.startswith(HDF5_SIGNATURE) or len(head) < 16:
        return None
    version, offset_size = head[8], head[13] if head[8] in (0, 1) else head[9]
    if offset_size not in (2, 4, 8):
        return "superblock is damaged (invalid offset size)"
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[offset_size]
    if version in (0, 1):
        base_at = 24 + (4 if version == 1 else 0)
        eof_at = base_at + 2 * offset_size
    elif version in (2, 3):
        base_at = 12
        eof_at = base_at + 2 * offset_size
    else:
        return f"superblock version {version} is unknown"
    if len(head) < eof_at + offset_size:
        return "superblock is cut short"
    (base,) = struct.unpack_from(fmt, head, base_at)
    (eof,) = struct.unpack_from(fmt, head, eof_at)
    if base + eof > size:
        return f"file is truncated: {size} bytes of the {base + eof} its superblock records (partial download?)"
    return None


def import_h5py():
    try:
        import h5py
    except ImportError:  # pragma: no cover - h5py is a dependency; this guards broken installs
        raise CheckpointError("reading Keras files needs h5py: pip install h5py") from None
    return h5py


def decode_text(value: Any) -> str:
    return decode_name(value) if isinstance(value, bytes) else clean_text(str(value))


def string_list_attr(group: h5py.Group, name: str) -> list[str]:
    """A list-of-strings attribute, joined from `name0`, `name1`, … where Keras chunked a long list."""
    if name in group.attrs:
        values = group.attrs[name]
    else:
        values, index = [], 0
        while f"{name}{index}" in group.attrs:
            values.extend(group.attrs[f"{name}{index}"])
            index += 1
    if getattr(values, "dtype", None) is not None and values.dtype.kind == "f":  # empty lists are float64
        return []
    return [decode_text(v) for v in values]


def strip_device_suffix(name: str) -> str:
    """Keras 2 weight names end in `:0`."""
    return re.sub(r":\d+$", "", name)


def layer_configs(config: dict[str, Any] | None, prefix: str = "") -> dict[str, LayerConfig]:
    """Every layer of a Keras model config by name, nested models' layers under their model's name."""
    out: dict[str, LayerConfig] = {}
    if not isinstance(config, dict):
        return out
    for layer in config.get("config", {}).get("layers", []) or []:
        if not isinstance(layer, dict):
            continue
        settings = layer.get("config", {}) or {}
        name = settings.get("name")
        if not isinstance(name, str):
            continue
        path = f"{prefix}{name}"
        class_name = str(layer.get("class_name", ""))
        momentum = settings.get("momentum")
        out[path] = LayerConfig(
            path,
            class_name,
            bool(settings.get("scale", True)),
            bool(settings.get("center", True)),
            float(momentum) if isinstance(momentum, (int, float)) and not isinstance(momentum, bool) else None,
            settings.get("trainable", True) is not False,
        )
        if isinstance(settings.get("layers"), list):
            out.update(layer_configs(layer, prefix=f"{path}/"))
    return out


def parse_json(text: str | bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested past Python's limit
        raise CheckpointError(f"{where}: model configuration is not valid JSON") from None
    return value if isinstance(value, dict) else {}


def clean_text(text: str) -> str:
    """A name as h5py hands it over (undecodable bytes as surrogates), kept as is: the bytes are its identity,
    and reports escape it for display (ckptdoctor.names.shown)."""
    return text


def dataset_info(dataset: h5py.Dataset, **fields: Any) -> TensorInfo:
    dtype = dataset_dtype_name(dataset)
    shape = tuple(int(d) for d in dataset.shape)
    name = clean_text(dataset.name.lstrip("/"))
    if "path" in fields:
        fields["path"] = clean_text(fields["path"])
    return TensorInfo(name, dtype, shape, math.prod(shape) * dataset.dtype.itemsize, **fields)


def dataset_dtype_name(dataset: h5py.Dataset) -> str:
    if decode_text(dataset.attrs.get("dtype", "")) == "bfloat16":
        return "bfloat16"
    kind = dataset.dtype
    if kind.kind in "SUO":
        return "string"
    if kind.kind == "b":
        return "bool"
    return {"f": "float", "i": "int", "u": "uint", "c": "complex"}[kind.kind] + str(kind.itemsize * 8)


def read_dataset(dataset: h5py.Dataset, dtype_name: str | None = None) -> np.ndarray:
    """A dataset's values, refused (CheckpointError) where they are not plainly stored in this file."""
    import numpy as np

    refusal = outside_storage(dataset) or unstored_bytes(dataset)
    if refusal is None and _is_filtered(dataset) and dataset.nbytes > MAX_EXPANDED_BYTES:
        refusal = f"compressed to expand to {dataset.nbytes} bytes, over the {MAX_EXPANDED_BYTES >> 20} MiB cap"
    if refusal:
        raise CheckpointError(f"{clean_text(dataset.name.lstrip('/'))} is {refusal}")
    values = np.asarray(dataset[()])
    if (dtype_name or dataset_dtype_name(dataset)) == "bfloat16" and values.dtype == np.uint16:
        return dtypes.widen_bfloat16(values)
    return values


def outside_storage(dataset: h5py.Dataset) -> str | None:
    """Where a dataset's values live when not in this file (external raw storage, virtual dataset)."""
    if dataset.is_virtual:
        sources = sorted({decode_text(source.file_name) for source in dataset.virtual_sources()})
        return f"a virtual dataset mapped from {', '.join(sources) or 'other files'}"
    external = dataset.external
    if external:
        return f"stored outside the file, in {decode_text(external[0][0])}"
    return None


def unstored_bytes(dataset: h5py.Dataset) -> str | None:
    """Why a dataset declares more values than the file stores (chunks never written), or None.

    HDF5 hands out fill values for unwritten storage, so reading such a dataset costs its declared size
    in time and memory while the file holds nothing: a few KB can claim gigabytes."""
    import h5py

    declared = dataset.nbytes
    if declared == 0:
        return None
    layout = dataset.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        stored = dataset.id.get_storage_size()
        if stored < declared:
            return f"declared as {declared} bytes {_shape_text(dataset)} but the file stores {stored}"
    elif layout == h5py.h5d.CHUNKED:
        expected = math.prod(-(-size // chunk) for size, chunk in zip(dataset.shape, dataset.chunks, strict=True))
        written = dataset.id.get_num_chunks()
        if written < expected:
            return (
                f"declared as {declared} bytes {_shape_text(dataset)} but only {written} of its {expected} "
                "chunks were ever written"
            )
        if _is_filtered(dataset):
            return _inflation(dataset)
    return None


def _inflation(dataset: h5py.Dataset) -> str | None:
    """Why a compressed dataset inflates too far to be read, or None."""
    chunk_bytes = math.prod(dataset.chunks) * dataset.dtype.itemsize
    if chunk_bytes > MAX_FILTERED_CHUNK_BYTES:
        return f"stored in compressed chunks of {chunk_bytes} bytes, over the {MAX_FILTERED_CHUNK_BYTES >> 20} MiB cap"
    declared, stored = dataset.nbytes, dataset.id.get_storage_size()
    if declared > RATIO_FREE_BYTES and declared > MAX_COMPRESSION_RATIO * stored:
        return (
            f"compressed from {declared} bytes into {stored}, over the {MAX_COMPRESSION_RATIO}:1 that ckptdoctor "
            "inflates"
        )
    return None


def _shape_text(dataset: h5py.Dataset) -> str:
    return f"({dataset.dtype}{list(dataset.shape)})"


def _is_filtered(dataset: h5py.Dataset) -> bool:
    return dataset.chunks is not None and dataset.id.get_create_plist().get_nfilters() > 0


def scan_datasets(
    datasets: dict[str, h5py.Dataset],
    dtype_names: dict[str, str],
    outside: dict[str, str],
    progress: Progress | None = None,
) -> ScanResult:
    """Read every dataset once, a slab at a time: NaN/Inf counts for float ones, and the ones HDF5 cannot
    read at all. Data outside the file (`outside`: name -> where it points) is reported, never read."""

    nonfinite: dict[str, int] = {}
    problems = [IntegrityProblem(ProblemKind.EXTERNAL_DATA, name, where) for name, where in outside.items()]
    readable = {name: dataset for name, dataset in datasets.items() if name not in outside}
    total, done = sum(d.nbytes for d in readable.values()), 0
    inflating = _InflationBudget(readable.values())
    for name, dataset in readable.items():
        try:
            unstored = unstored_bytes(dataset) or inflating.refusal(dataset)
            if unstored:
                problems.append(IntegrityProblem(ProblemKind.SIZE_MISMATCH, name, unstored))
                done += dataset.nbytes
                continue
            is_float = dtype_names[name] in ("float16", "float32", "float64", "bfloat16")
            bad = 0
            for values in _slabs(dataset, dtype_names[name]):
                if is_float:
                    bad += dtypes.count_nonfinite(values)
                done += values.size * dataset.dtype.itemsize
                if progress:
                    progress(min(done, total), total)  # per slab: the stall watchdog sees a large dataset move
        except Exception as error:  # HDF5 raises OSError, ValueError, RuntimeError… on damaged chunks
            problems.append(IntegrityProblem(ProblemKind.DATASET_UNREADABLE, name, first_line(error)))
            continue
        if bad:
            nonfinite[name] = bad
    return ScanResult(nonfinite=nonfinite, problems=tuple(problems))


class _InflationBudget:
    """What one scan may inflate from compressed datasets: MAX_COMPRESSION_RATIO times what they store in
    all (at least MAX_EXPANDED_BYTES), so many datasets that each pass alone cannot add up to hours."""

    def __init__(self, datasets: Iterable[h5py.Dataset]) -> None:
        stored = sum(_compressed_size(d) for d in datasets)
        self.left = max(MAX_EXPANDED_BYTES, MAX_COMPRESSION_RATIO * stored)

    def refusal(self, dataset: h5py.Dataset) -> str | None:
        if not _is_filtered(dataset):
            return None
        if dataset.nbytes > self.left:
            return (
                f"compressed to inflate to {dataset.nbytes} bytes, past what this file's compressed data may "
                f"inflate to in all ({MAX_COMPRESSION_RATIO}:1 of what it stores); not read"
            )
        self.left -= dataset.nbytes
        return None


def _compressed_size(dataset: h5py.Dataset) -> int:
    try:
        return dataset.id.get_storage_size() if _is_filtered(dataset) else 0
    except Exception:  # damaged metadata: the dataset's own read reports it
        return 0


def _slabs(dataset: h5py.Dataset, dtype_name: str) -> Iterator[np.ndarray]:
    """The dataset's values in pieces of about SCAN_CHUNK bytes, over every dimension.

    Large compressed chunks are read one chunk at a time, so that no chunk is decompressed twice."""
    import numpy as np

    if dataset.ndim == 0 or dataset.nbytes <= SCAN_CHUNK:
        yield read_dataset(dataset, dtype_name)
        return
    if dataset.chunks is not None and math.prod(dataset.chunks) * dataset.dtype.itemsize >= SCAN_CHUNK:
        regions: Iterator[tuple[slice, ...]] = dataset.iter_chunks()
    else:
        regions = _regions(tuple(dataset.shape), dataset.dtype.itemsize)
    for region in regions:
        yield np.asarray(dataset[region])


def _regions(shape: tuple[int, ...], itemsize: int, prefix: tuple[slice, ...] = ()) -> Iterator[tuple[slice, ...]]:
    """Index tuples covering `shape` in order, each at most SCAN_CHUNK bytes (or one element wide)."""
    row = math.prod(shape[1:]) * itemsize
    if row <= SCAN_CHUNK or len(shape) == 1:
        step = max(1, SCAN_CHUNK // max(1, row))
        for start in range(0, shape[0], step):
            yield (*prefix, slice(start, min(start + step, shape[0])))
        return
    for index in range(shape[0]):  # a single row is too big: split it along the next dimension
        yield from _regions(shape[1:], itemsize, (*prefix, slice(index, index + 1)))


class OutsideLink(NamedTuple):
    """An HDF5 external link: a name in this file for an object in another file."""

    path: str  # the link's own path in this file
    target: str  # "file:/object" it points at


def member(group: h5py.Group, path: str, hops: int = 0) -> Any:
    """`group[path]` without ever leaving the file: the object, None where nothing is there, or an
    OutsideLink where the path meets an external link (h5py's own lookups and `in` would follow it)."""
    import h5py

    current: Any = group.file if path.startswith("/") else group
    walked = current.name.rstrip("/")
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if not isinstance(current, h5py.Group):
            return None
        name = part.encode("utf-8", "surrogateescape")
        links = current.id.links
        if not links.exists(name):
            return None
        kind = links.get_info(name).type
        walked = f"{walked}/{part}"
        if kind == h5py.h5l.TYPE_HARD:
            current = current[name]
        elif kind == h5py.h5l.TYPE_SOFT and hops < MAX_SOFT_LINK_HOPS:
            current = member(current, links.get_val(name).decode("utf-8", "surrogateescape"), hops + 1)
            if current is None or isinstance(current, OutsideLink):
                return current
        elif kind == h5py.h5l.TYPE_EXTERNAL:
            file_name, object_name = links.get_val(name)
            return OutsideLink(clean_text(walked.lstrip("/")), f"{decode_text(file_name)}:{decode_text(object_name)}")
        else:  # a user-defined link class, or a soft link chain too long to be anything but a loop
            return None
    return current


def unlisted_datasets(file: h5py.File, listed: dict[str, h5py.Dataset]) -> list[h5py.Dataset | OutsideLink]:
    """Datasets and external links outside the layout a reader understood, so a listing shows every one.

    Both walks follow hard links only: nothing outside the file is opened."""
    import h5py

    names: list[str] = []
    outside: list[OutsideLink] = []

    def visit_object(name: bytes, info) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:  # low-level walk: no object is built for the listed ones
            names.append(name.decode("utf-8", "surrogateescape"))

    def visit_link(name: bytes, info) -> None:
        if info.type == h5py.h5l.TYPE_EXTERNAL:
            link = member(file, name.decode("utf-8", "surrogateescape"))
            if isinstance(link, OutsideLink) and link.path not in listed:
                outside.append(link)

    h5py.h5o.visit(file.id, visit_object, info=True)
    file.id.links.visit(visit_link, info=True)
    return [file[name.encode("utf-8", "surrogateescape")] for name in names if clean_text(name) not in listed] + outside


def open_hdf5(source, path: str):
    """h5py.File for reading, with a truncated file or a damaged structure as a one-line CheckpointError."""
    h5py = import_h5py()
    if isinstance(source, str):
        require_regular(source)  # libhdf5 would wait forever on a FIFO
        truncated = hdf5_truncation(source)
        if truncated:
            raise CheckpointError(f"{path}: HDF5 {truncated}")
        if is_url(source):  # libhdf5 reads through a file object, by range
            source = SourceFile(open_source(source))
    try:
        return h5py.File(source, "r")
    except Exception as error:  # HDF5 reports damage as OSError, ValueError or RuntimeError
        raise CheckpointError(f"{path}: HDF5 file cannot be opened ({first_line(error)})") from None


def damaged_structure(path: str, error: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: HDF5 structure is damaged ({type(error).__name__}: {first_line(error)})")


class Hdf5Reader:
    """What both Keras readers do once their layout walk has listed datasets: list, read, scan, close."""

    location: str
    file: h5py.File

    def _start(self) -> None:
        self._datasets: dict[str, h5py.Dataset] = {}
        self._dtypes: dict[str, str] = {}
        self._infos: list[TensorInfo] = []
        self.external: dict[str, str] = {}  # name -> where its values live outside this file; never read
        self._read_budget: _InflationBudget | None = None

    def _child(self, group: h5py.Group, path: str) -> Any:
        """`group[path]` inside this file, or None; an external link met on the way is listed and noted."""
        found = member(group, path)
        if isinstance(found, OutsideLink):
            self._add(found)
            return None
        return found

    def _add(self, dataset: h5py.Dataset | OutsideLink | None, **fields: Any) -> None:
        import h5py

        if isinstance(dataset, OutsideLink):
            if dataset.path not in self._datasets and dataset.path not in self.external:
                self.external[dataset.path] = f"an external link to {dataset.target}"
                self._infos.append(TensorInfo(dataset.path, "external", (), 0, **fields))
            return
        if isinstance(dataset, h5py.Dataset) and clean_text(dataset.name.lstrip("/")) not in self._datasets:
            info = dataset_info(dataset, **fields)
            self._datasets[info.name] = dataset
            self._dtypes[info.name] = info.dtype
            self._infos.append(info)
            outside = outside_storage(dataset)
            if outside:
                self.external[info.name] = outside

    def _add_unlisted(self) -> None:
        """Datasets outside the layout (metrics/…, strays), so that a listing shows every one h5py sees."""
        for found in unlisted_datasets(self.file, self._datasets):
            name = found.path if isinstance(found, OutsideLink) else found.name.lstrip("/")
            self._add(found, path=name.replace("/vars/", "/"))

    def _list_safely(self, walk) -> None:
        """Run the layout walk; damaged metadata becomes one CheckpointError and the file is closed."""
        try:
            walk()
            self._add_unlisted()
        except CheckpointError:
            self.close()
            raise
        except Exception as error:  # h5py raises many types when group or attribute metadata is damaged
            self.close()
            raise damaged_structure(self.location, error) from None

    def tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(self._infos)

    def read(self, name: str) -> np.ndarray:
        if name in self.external:
            raise CheckpointError(f"{self.location}: {name} is {self.external[name]}; ckptdoctor never follows it")
        dataset = self._datasets[name]
        try:
            if self._read_budget is None:  # one budget for every read of this reader (diff reads them all)
                self._read_budget = _InflationBudget(self._datasets.values())
            over = self._read_budget.refusal(dataset)
            if over:
                raise CheckpointError(f"{name} is {over}")
            return read_dataset(dataset, self._dtypes[name])
        except CheckpointError as error:
            raise CheckpointError(f"{self.location}: {error}") from None
        except Exception as error:
            raise damaged_structure(self.location, error) from None

    def numbers(self, name: str) -> dtypes.Numbers | None:
        return dtypes.numbers_of(self.read(name))  # h5py reads into numpy in any case

    def scan(self, progress: Progress | None = None, verified: VerifiedBytes | None = None) -> ScanResult:
        return scan_datasets(self._datasets, self._dtypes, self.external, progress)

    def files(self) -> tuple[str, ...]:
        return (self.location,)  # a .keras archive too: its weights are read in place

    def close(self) -> None:
        self.file.close()
