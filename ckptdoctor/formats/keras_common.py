"""What the Keras readers share: HDF5 attribute decoding, model configs, values and scans of datasets."""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from ckptdoctor.formats.base import SCAN_CHUNK, Progress, ScanResult
from ckptdoctor.model import CheckpointError, IntegrityProblem, LayerConfig, TensorInfo

if TYPE_CHECKING:
    import h5py
    import numpy as np

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def hdf5_truncation(path: str) -> str | None:
    """Why an HDF5 file is shorter than its superblock says it is, or None where the length is fine.

    The HDF5 library refuses such files with a cryptic "truncated file: eof = …"; a partial download is the
    usual cause, and saying so is more useful."""
    import os
    import struct

    with open(path, "rb") as file:
        head = file.read(96)
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
    size = os.path.getsize(path)
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
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else clean_text(str(value))


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
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{where}: model configuration is not valid JSON") from None
    return value if isinstance(value, dict) else {}


def clean_text(text: str) -> str:
    """h5py hands undecodable name bytes over as surrogates; show them escaped, never as invalid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
    import numpy as np

    values = np.asarray(dataset[()])
    if (dtype_name or dataset_dtype_name(dataset)) == "bfloat16" and values.dtype == np.uint16:
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values


def scan_datasets(
    datasets: dict[str, h5py.Dataset], dtype_names: dict[str, str], progress: Progress | None = None
) -> ScanResult:
    """Read every dataset once: NaN/Inf counts for float ones, and the ones HDF5 cannot read at all."""
    nonfinite: dict[str, int] = {}
    problems: list[IntegrityProblem] = []
    total, done = sum(d.nbytes for d in datasets.values()), 0
    for name, dataset in datasets.items():
        done += dataset.nbytes
        if progress:
            progress(done, total)
        try:
            bad = _count_nonfinite(dataset, dtype_names[name])
        except Exception as error:  # HDF5 raises OSError, ValueError, RuntimeError… on damaged chunks
            problems.append(IntegrityProblem("dataset-unreadable", name, str(error).splitlines()[0][:200]))
            continue
        if bad:
            nonfinite[name] = bad
    return ScanResult(nonfinite=nonfinite, problems=tuple(problems))


def _count_nonfinite(dataset: h5py.Dataset, dtype_name: str) -> int:
    """NaN/Inf elements of a dataset (0 unless float); every byte is read, large datasets a slab at a time."""
    import numpy as np

    is_float = dtype_name in ("float16", "float32", "float64", "bfloat16")
    if dataset.ndim == 0 or dataset.nbytes <= SCAN_CHUNK:
        slabs = [read_dataset(dataset, dtype_name)]
    else:
        rows = max(1, SCAN_CHUNK // max(1, dataset.nbytes // dataset.shape[0]))
        slabs = (np.asarray(dataset[start : start + rows]) for start in range(0, dataset.shape[0], rows))
    bad = 0
    for values in slabs:
        if is_float:
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
    return bad


def unlisted_datasets(file: h5py.File, listed: dict[str, h5py.Dataset]) -> list[h5py.Dataset]:
    """Datasets outside the layout a reader understood, so that a listing still shows every one."""
    import h5py

    names: list[str] = []

    def visit(name: bytes, info) -> None:
        if info.type == h5py.h5o.TYPE_DATASET:  # low-level walk: no object is built for the listed ones
            names.append(name.decode("utf-8", "surrogateescape"))

    h5py.h5o.visit(file.id, visit, info=True)
    return [file[name] for name in names if clean_text(name) not in listed]


def open_hdf5(source, path: str):
    """h5py.File for reading, with a truncated file or a damaged structure as a one-line CheckpointError."""
    h5py = import_h5py()
    if isinstance(source, str):
        truncated = hdf5_truncation(source)
        if truncated:
            raise CheckpointError(f"{path}: HDF5 {truncated}")
    from ckptdoctor import watchdog

    watchdog.guard_native_code()  # libhdf5 can loop on damaged metadata: from here on, the CLI is supervised
    try:
        return h5py.File(source, "r")
    except Exception as error:  # HDF5 reports damage as OSError, ValueError or RuntimeError
        raise CheckpointError(f"{path}: HDF5 file cannot be opened ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def damaged_structure(path: str, error: BaseException) -> CheckpointError:
    return CheckpointError(f"{path}: HDF5 structure is damaged ({type(error).__name__}: {_first_line(error)})")


class Hdf5Reader:
    """What both Keras readers do once their layout walk has listed datasets: list, read, scan, close."""

    location: str
    file: h5py.File

    def _start(self) -> None:
        self._datasets: dict[str, h5py.Dataset] = {}
        self._dtypes: dict[str, str] = {}
        self._infos: list[TensorInfo] = []

    def _add(self, dataset: h5py.Dataset, **fields: Any) -> None:
        import h5py

        if isinstance(dataset, h5py.Dataset) and clean_text(dataset.name.lstrip("/")) not in self._datasets:
            info = dataset_info(dataset, **fields)
            self._datasets[info.name] = dataset
            self._dtypes[info.name] = info.dtype
            self._infos.append(info)

    def _add_unlisted(self) -> None:
        """Datasets outside the layout (metrics/…, strays), so that a listing shows every one h5py sees."""
        for dataset in unlisted_datasets(self.file, self._datasets):
            self._add(dataset, path=dataset.name.lstrip("/").replace("/vars/", "/"))

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
        dataset = self._datasets[name]
        try:
            return read_dataset(dataset, self._dtypes[name])
        except Exception as error:
            raise damaged_structure(self.location, error) from None

    def scan(self, progress: Progress | None = None) -> ScanResult:
        return scan_datasets(self._datasets, self._dtypes, progress)

    def close(self) -> None:
        self.file.close()
