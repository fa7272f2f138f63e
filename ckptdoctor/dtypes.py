"""TensorFlow DataType codes: names, element sizes and numpy equivalents."""

from __future__ import annotations

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    import numpy as np


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
