"""TensorFlow DataType codes: names, element sizes and numpy equivalents."""

from __future__ import annotations

import struct
import sys
from array import array

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import TypeAlias

    import numpy as np

    # A numeric tensor's elements, flattened, as plain Python numbers: floats as float64, integers exactly.
    Numbers: TypeAlias = "array[float] | array[int]"


class DType(NamedTuple):
    code: int
    name: str
    itemsize: int | None  # None for variable-size element types (string, variant)
    numpy: str | None  # little-endian numpy type string; None where numpy has no equivalent
    is_float: bool = False


_TABLE = [
    DType(1, "float32", 4, "<f4", True),
    DType(2, "float64", 8, "<f8", True),
    DType(3, "int32", 4, "<i4"),
    DType(4, "uint8", 1, "|u1"),
    DType(5, "int16", 2, "<i2"),
    DType(6, "int8", 1, "|i1"),
    DType(7, "string", None, None),
    DType(8, "complex64", 8, "<c8", True),
    DType(9, "int64", 8, "<i8"),
    DType(10, "bool", 1, "|b1"),
    DType(11, "qint8", 1, "|i1"),
    DType(12, "quint8", 1, "|u1"),
    DType(13, "qint32", 4, "<i4"),
    DType(14, "bfloat16", 2, "<u2", True),  # read as raw uint16, widened to float32 on decode
    DType(15, "qint16", 2, "<i2"),
    DType(16, "quint16", 2, "<u2"),
    DType(17, "uint16", 2, "<u2"),
    DType(18, "complex128", 16, "<c16", True),
    DType(19, "float16", 2, "<f2", True),
    DType(20, "resource", None, None),
    DType(21, "variant", None, None),
    DType(22, "uint32", 4, "<u4"),
    DType(23, "uint64", 8, "<u8"),
]

BY_CODE = {d.code: d for d in _TABLE}
BY_NAME = {d.name: d for d in _TABLE}


def from_code(code: int) -> DType:
    """The DType for a DataType enum value; unknown codes get a placeholder that reads as raw bytes."""
    return BY_CODE.get(code) or DType(code, f"dtype_{code}", None, None)


def widen_bfloat16(stored: np.ndarray) -> np.ndarray:
    """bfloat16 values stored as their uint16 bit patterns, as float32: bfloat16 is float32's upper half, so
    the widening is exact."""
    import numpy as np

    return (stored.astype(np.uint32) << 16).view(np.float32)


def count_nonfinite(values: np.ndarray) -> int:
    """How many elements are NaN or Inf."""
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(values.sum()):  # NaN and Inf propagate into a sum, which runs at memory speed
            return 0
    return int(values.size - np.count_nonzero(np.isfinite(values)))  # exact, only where something is wrong


def _array_code(codes: str, size: int) -> str:
    """The first of `codes` whose `array` items are `size` bytes (C's int and long differ between platforms)."""
    return next(code for code in codes if array(code).itemsize == size)


# The `array` type code holding each numpy type string's elements (bool as bytes, float16 through `struct`).
_ARRAY_CODES = {"f4": "f", "f8": "d", "b1": "B"} | {
    f"{kind}{size}": _array_code(codes, size)
    for kind, codes in (("i", "bhiql"), ("u", "BHIQL"))
    for size in (1, 2, 4, 8)
}
_HALVES_AT_ONCE = 1 << 16  # float16 elements `struct` decodes per call: its tuple of floats stays small
_AS_BOOL = bytes([0] + [1] * 255)


def holds_numbers(dtype: DType) -> bool:
    """Whether `decode_numbers` gives a tensor of this dtype as numbers: real ones of a known size."""
    return dtype.numpy is not None and dtype.itemsize is not None and not dtype.name.startswith("complex")


def decode_numbers(raw: bytes, dtype: DType) -> Numbers | None:
    """A real-valued tensor's stored little-endian elements (a whole number of them), flattened, without numpy:
    floats as float64 (bfloat16 widened exactly), integers and bools as they are; None for other dtypes
    (strings, complex). For the handful of numbers a rule reads (statistics, step counters): numpy costs ~70 ms
    to import, more than a whole `check` of a small checkpoint without it."""
    if not holds_numbers(dtype) or dtype.itemsize is None or dtype.numpy is None:  # (the last two for mypy)
        return None
    count = len(raw) // dtype.itemsize
    raw = raw[: count * dtype.itemsize]
    if dtype.name == "float16":  # `array` has no half floats; `struct` reads them exactly
        halves = array("d")
        for start in range(0, count, _HALVES_AT_ONCE):
            part = min(_HALVES_AT_ONCE, count - start)
            halves.extend(struct.unpack_from(f"<{part}e", raw, start * 2))
        return halves
    code = _ARRAY_CODES[dtype.numpy[1:]]
    if dtype.name == "bool":  # TF stores 0 or 1; any other byte reads as true, as numpy and TF read it
        raw = raw.translate(_AS_BOOL)
    elif dtype.name == "bfloat16":  # float32's upper half: zero-fill the lower one
        widened = bytearray(count * 4)
        widened[2::4], widened[3::4] = raw[0::2], raw[1::2]
        raw, code = bytes(widened), "f"
    stored = array(code)
    stored.frombytes(raw)
    if sys.byteorder == "big":
        stored.byteswap()
    return array("d", stored) if code == "f" else stored


def numbers_of(values: np.ndarray) -> Numbers | None:
    """`decode_numbers` for values a reader holds as numpy already (HDF5 and V1 tables are read through it)."""
    import numpy as np

    if values.dtype.kind not in "biuf":
        return None
    unsigned = values.dtype.kind == "u" and values.dtype.itemsize == 8
    code, native = ("d", np.float64) if values.dtype.kind == "f" else ("Q", np.uint64) if unsigned else ("q", np.int64)
    numbers = array(code)
    with np.errstate(invalid="ignore"):  # a signalling NaN stays a NaN, quietly, as `array` widens it
        numbers.frombytes(np.ascontiguousarray(values, dtype=native).tobytes())
    return numbers


# Where each float dtype's exponent starts in its little-endian elements: (element size, index of the byte
# holding the sign and the exponent's top bits, mask of those exponent bits). An element is NaN or Inf only
# where every exponent bit is set, so only where that byte has every bit of the mask set.
_EXPONENT_BYTE = {
    "float32": (4, 3, 0x7F),
    "complex64": (4, 3, 0x7F),  # two float32s
    "float64": (8, 7, 0x7F),
    "complex128": (8, 7, 0x7F),
    "bfloat16": (2, 1, 0x7F),
    "float16": (2, 1, 0x7C),
}
# For each mask, the byte values with all of its bits set (`bytes.__contains__` is a memchr per value).
_SUSPECT_BYTES = {mask: [bytes([b]) for b in range(256) if b & mask == mask] for mask in (0x7F, 0x7C)}


def may_hold_nonfinite(raw: bytes, dtype: DType) -> bool:
    """False where none of the float elements in `raw` (stored little-endian, a whole number of them) can be
    NaN or Inf, read from the exponent bytes alone, without numpy; True where one might be (or the dtype is not
    one it knows), for an exact count. Trained weights are never that large, so nearly every tensor is settled
    here, at ~7 GB/s."""
    layout = _EXPONENT_BYTE.get(dtype.name)
    if layout is None:
        return True
    size, at, mask = layout
    exponent_bytes = raw[at::size]
    return any(suspect in exponent_bytes for suspect in _SUSPECT_BYTES[mask])
