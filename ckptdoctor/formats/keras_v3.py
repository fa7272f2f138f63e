"""Reader for Keras 3 weights: `.weights.h5` files and the `.keras` zip that holds one beside config.json."""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import zipfile
from typing import TYPE_CHECKING

from ckptdoctor.formats.base import Progress, ScanResult
from ckptdoctor.formats.keras_common import Hdf5Reader, decode_text, layer_configs, open_hdf5, parse_json
from ckptdoctor.model import CheckpointError, IntegrityProblem, LayerConfig

if TYPE_CHECKING:
    import h5py

WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"

# Variable names by position for layers whose order is fixed (the rest are shown by index).
_KERNEL_BIAS = ("kernel", "bias")
_KNOWN_ORDER = {
    "Dense": _KERNEL_BIAS,
    "Conv1D": _KERNEL_BIAS,
    "Conv2D": _KERNEL_BIAS,
    "Conv3D": _KERNEL_BIAS,
    "Conv2DTranspose": _KERNEL_BIAS,
    "Embedding": ("embeddings",),
    "LayerNormalization": ("gamma", "beta"),
}


def class_from_container(container: str) -> str:
    """Keras names weight containers after the snake_case class: `batch_normalization_2` -> BatchNormalization."""
    base = re.sub(r"_\d+$", "", container)
    special = {"conv1d": "Conv1D", "conv2d": "Conv2D", "conv3d": "Conv3D", "conv2d_transpose": "Conv2DTranspose"}
    return special.get(base) or "".join(part.capitalize() for part in base.split("_"))


class _StoredMember(io.RawIOBase):
    """A stored (uncompressed) zip member read in place, by offset: HDF5 seeks freely and reads what it
    needs, and a damaged byte shows up in the data instead of failing the whole archive's CRC check."""

    def __init__(self, path: str, start: int, size: int) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this object
        self._start, self._size, self._position = start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer) -> int:
        length = max(0, min(len(buffer), self._size - self._position))
        self._file.seek(self._start + self._position)
        data = self._file.read(length)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


def _member_file(path: str, info: zipfile.ZipInfo, archive: zipfile.ZipFile):
    """A file object over one member: in place when stored uncompressed (as Keras writes), else unzipped."""
    if info.compress_type != zipfile.ZIP_STORED:
        return archive.open(info)
    with open(path, "rb") as file:
        file.seek(info.header_offset)
        header = file.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    return _StoredMember(path, info.header_offset + 30 + name_length + extra_length, info.file_size)


def is_v3_layout(file: h5py.File) -> bool:
    return "layers" in file or "vars" in file


def _looks_like_gamma(dataset: h5py.Dataset) -> bool:
    """gamma starts at 1 and beta at 0, and training rarely moves either far: the nearer start wins."""
    import numpy as np

    values = np.asarray(dataset[()], dtype=np.float64)
    return values.size > 0 and float(np.median(np.abs(values - 1))) < float(np.median(np.abs(values)))


def _batchnorm_names(vars_group: h5py.Group, config: LayerConfig | None) -> list[str]:
    """Names of a BatchNormalization's stored variables, in index order.

    With the model config the order is exact. Without it (a bare .weights.h5), four variables are
    gamma, beta, moving_mean, moving_variance; three lack gamma or beta, told apart by the first one's
    values; two or one are parameters whose statistics were lost."""
    count = len(vars_group)
    if config is not None:
        expected = list(config.batchnorm_parts)
    elif count >= 4:
        expected = ["gamma", "beta", "moving_mean", "moving_variance"]
    elif count == 2:
        expected = ["gamma", "beta"]
    elif count in (1, 3):
        first = "gamma" if "0" in vars_group and _looks_like_gamma(vars_group["0"]) else "beta"
        expected = [first, "moving_mean", "moving_variance"]
    else:
        expected = []
    return expected[:count] + [str(i) for i in range(len(expected), count)]


class KerasV3Reader(Hdf5Reader):
    """Layout: /layers/<container>/vars/<i> (nested models recurse), /vars, /optimizer/vars/<i>."""

    def __init__(self, path: str, file: h5py.File | None = None) -> None:
        """`file` is the opened `.weights.h5`; without it, `path` is a `.keras` archive."""
        self.location = path
        self.format = "keras-weights-h5"
        self._zip: zipfile.ZipFile | None = None
        self.configs: dict[str, LayerConfig] = {}
        self._layers: dict[str, LayerConfig] = {}
        self.vars_groups: dict[str, str] = {}  # layer path -> HDF5 path of its `vars` group
        if file is None:
            self.format = "keras-zip"
            self.file = self._open_archive(path)
        else:
            self.file = file
        self._start()
        self._list_safely(self._walk)

    def _open_archive(self, path: str) -> h5py.File:
        try:
            self._zip = zipfile.ZipFile(path)
            names = set(self._zip.namelist())
            if WEIGHTS_MEMBER not in names:
                raise CheckpointError(f"{path}: .keras archive has no {WEIGHTS_MEMBER}")
            if CONFIG_MEMBER in names:
                self.configs = layer_configs(parse_json(self._zip.read(CONFIG_MEMBER), path))
            return open_hdf5(_member_file(path, self._zip.getinfo(WEIGHTS_MEMBER), self._zip), path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            if self._zip is not None:
                self._zip.close()
            if isinstance(error, zipfile.BadZipFile) and self._zip is None:
                raise CheckpointError(
                    f"{path}: damaged .keras archive: its zip directory is missing (truncated download?)"
                ) from None
            raise CheckpointError(f"{path}: damaged .keras archive ({error})") from None

    def _walk(self) -> None:
        if "layers" in self.file:
            self._walk_layers(self.file["layers"], prefix="")
        if "vars" in self.file:
            self._add_vars(self.file["vars"], path_prefix=decode_text(self.file["vars"].attrs.get("name", "model")))
        if "optimizer" in self.file and "vars" in self.file["optimizer"]:
            names = ["iterations", "learning_rate"]  # then one slot per trainable weight and slot kind
            self._add_vars(self.file["optimizer/vars"], path_prefix="optimizer", names=names, optimizer_state=True)

    def _walk_layers(self, layers: h5py.Group, prefix: str) -> None:
        for container in layers:
            group = layers[container]
            vars_group = group.get("vars")
            name = decode_text(vars_group.attrs.get("name", container)) if vars_group is not None else container
            path = f"{prefix}{name}"
            config = self.configs.get(path) or LayerConfig(path, class_from_container(container))
            self._layers[path] = config
            if vars_group is not None:
                self.vars_groups[path] = vars_group.name.lstrip("/")
                count = len(vars_group)
                if config.is_batchnorm:
                    names = _batchnorm_names(vars_group, self.configs.get(path))
                else:
                    names = list(_KNOWN_ORDER.get(config.class_name, ()))[:count]
                    names += [str(i) for i in range(len(names), count)]
                self._add_vars(vars_group, path_prefix=path, names=names)
            if "layers" in group:
                self._walk_layers(group["layers"], prefix=f"{path}/")

    def _add_vars(self, group: h5py.Group, path_prefix: str, names=None, optimizer_state: bool = False) -> None:
        for index in sorted(int(k) for k in group if k.isdigit()):  # h5py lists "10" before "2"
            leaf = names[index] if names and index < len(names) else str(index)
            self._add(group[str(index)], path=f"{path_prefix}/{leaf}", optimizer_state=optimizer_state)

    def layers(self) -> tuple[LayerConfig, ...]:
        return tuple(self._layers.values())

    def scan(self, progress: Progress | None = None) -> ScanResult:
        result = super().scan(progress)
        if self._zip is None:
            return result
        try:
            bad_member = self._zip.testzip()  # every member's CRC-32, as Keras's own unzip would check
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            bad_member, detail = self.location, str(error)
        else:
            detail = "bytes do not match the CRC-32 the archive records"
        if bad_member is None:
            return result
        problem = IntegrityProblem("archive-corrupt", bad_member, detail)
        return dataclasses.replace(result, problems=(*result.problems, problem))

    def close(self) -> None:
        super().close()
        if self._zip is not None:
            self._zip.close()
