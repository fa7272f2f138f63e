"""Reader for legacy V1 checkpoints (SaverDef.V1): one SSTable of SavedTensorSlices, values as TensorProtos."""

from __future__ import annotations

import math
from contextlib import closing

from ckptdoctor import TYPE_CHECKING, dtypes
from ckptdoctor.formats import protos
from ckptdoctor.formats.base import MAX_EXPANDED_BYTES, Progress, ScanResult, VerifiedBytes
from ckptdoctor.formats.bytesource import open_source
from ckptdoctor.formats.sstable import TableError, TableReader
from ckptdoctor.model import CheckpointError, Format, LayerConfig, TensorInfo
from ckptdoctor.names import encode_name

if TYPE_CHECKING:
    import numpy as np

# TensorProto's repeated value field for each dtype, where values are not in tensor_content.
_VALUE_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int32": "int_val",
    "int16": "int_val",
    "int8": "int_val",
    "uint8": "int_val",
    "int64": "int64_val",
    "bool": "bool_val",
    "float16": "half_val",
    "string": "string_val",
}


def is_v1_table(path: str) -> bool:
    """A V1 checkpoint is an SSTable whose first value is SavedTensorSlices (starts 0x0a, V2 headers 0x08)."""
    try:
        with closing(open_source(path)) as source:
            first = next(iter(TableReader(source)), None)
    except CheckpointError:
        return False
    return first is not None and first[0] == b"" and first[1][:1] == b"\x0a"


class V1Reader:
    format = Format.TF_V1_LEGACY

    def __init__(self, path: str) -> None:
        self.location = path
        try:
            with closing(open_source(path)) as source:
                records = list(TableReader(source))
        except TableError as error:
            raise CheckpointError(str(error)) from None
        header = protos.SavedTensorSlices.FromString(records[0][1])
        self._infos = {}
        for meta in header.meta.tensor:
            dtype = dtypes.from_code(meta.type)
            shape = tuple(int(d.size) for d in meta.shape.dim)
            nbytes = math.prod(shape) * (dtype.itemsize or 0)
            self._infos[meta.name] = TensorInfo(meta.name, dtype.name, shape, nbytes)
        self._slices: dict[str, list] = {}
        for _key, value in records[1:]:
            saved = protos.SavedTensorSlices.FromString(value).data
            self._slices.setdefault(saved.name, []).append(saved)

    def tensors(self) -> tuple[TensorInfo, ...]:
        return tuple(sorted(self._infos.values(), key=lambda t: encode_name(t.name)))

    def layers(self) -> tuple[LayerConfig, ...]:
        return ()  # TF bundles carry no model configuration

    def _stored(self, name: str) -> np.ndarray:
        """The values as stored: the whole tensor, or the single value of a splat (one value for all)."""
        import numpy as np

        info = self._infos[name]
        slices = self._slices.get(name, [])
        if len(slices) != 1 or any(extent.HasField("length") for extent in slices[0].slice.extent):
            raise CheckpointError(f"{self.location}: {name} is partitioned; reading its values is not supported")
        tensor = slices[0].data
        dtype = dtypes.BY_NAME[info.dtype]
        if tensor.tensor_content:
            return np.frombuffer(tensor.tensor_content, dtype=dtype.numpy)
        values = list(getattr(tensor, _VALUE_FIELDS[info.dtype]))
        if info.dtype == "float16":
            return np.array(values, dtype=np.uint16).view(np.float16)
        if info.dtype == "string":
            return np.array(values, dtype=object)
        return np.array(values, dtype=dtype.numpy)

    def read(self, name: str) -> np.ndarray:
        import numpy as np

        info = self._infos[name]
        stored = self._stored(name)
        count = math.prod(info.shape)
        if stored.size == 1 and count > 1:  # a splat: one value stands for all
            if count * stored.itemsize > MAX_EXPANDED_BYTES:
                raise CheckpointError(
                    f"{self.location}: {name} is one value repeated {count} times, over the "
                    f"{MAX_EXPANDED_BYTES >> 20} MiB that ckptdoctor expands in memory"
                )
            stored = np.full(count, stored[0], dtype=stored.dtype)
        return stored.reshape(info.shape)

    def numbers(self, name: str) -> dtypes.Numbers | None:
        return dtypes.numbers_of(self.read(name))

    def scan(self, progress: Progress | None = None, verified: VerifiedBytes | None = None) -> ScanResult:

        nonfinite = {}
        for info in self._infos.values():
            if dtypes.BY_NAME[info.dtype].is_float:
                stored = self._stored(info.name)  # a splat is counted from its one value, never expanded
                bad = dtypes.count_nonfinite(stored)
                count = math.prod(info.shape)
                if stored.size == 1 and count > 1:
                    bad *= count
                if bad:
                    nonfinite[info.name] = bad
        return ScanResult(nonfinite=nonfinite)

    def files(self) -> tuple[str, ...]:
        return (self.location,)

    def close(self) -> None:
        pass
