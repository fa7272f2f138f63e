"""The one small protocol every checkpoint reader implements, and what a full scan returns."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.model import Format, IntegrityProblem, LayerConfig, TensorInfo
from ckptdoctor.typed import NamedTuple, Protocol

if TYPE_CHECKING:
    import numpy as np

    from ckptdoctor.dtypes import Numbers

SCAN_CHUNK = 8 << 20  # bytes read at a time when streaming a tensor
# `read()` builds at most this many bytes of values that a file stores in fewer bytes (a V1 splat, compressed
# HDF5 chunks): a few stored bytes must never cost gigabytes. Values stored byte for byte are not capped.
MAX_EXPANDED_BYTES = 256 << 20

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class ScanResult(NamedTuple):
    """What one pass over every stored byte found: non-finite counts and integrity damage."""

    nonfinite: Mapping[str, int] = {}  # tensor name -> count of NaN/Inf elements
    problems: tuple[IntegrityProblem, ...] = ()


class VerifiedBytes:
    """Tensor bytes a writer checked as it wrote them: the CRC-32C (unmasked) and NaN/Inf count of each
    range, keyed by the file's identity (st_dev, st_ino), offset, size and dtype code. A re-check of the
    output takes these instead of reading the same bytes back; any range not here is read as usual, and the
    output's index, read from disk, still decides which ranges hold which tensor."""

    __slots__ = ("files", "ranges")

    def __init__(self) -> None:
        self.ranges: dict[tuple[int, int, int, int, int], tuple[int, int]] = {}
        self.files: dict[tuple[int, int], tuple[int, int, int]] = {}  # file_state once written

    def lookup(self, status: os.stat_result, offset: int, size: int, dtype_code: int) -> tuple[int, int] | None:
        """(crc32c, nonfinite) of the range as the writer computed them, or None where it did not check it or
        the file (`status`, an fstat of the open file) is no longer in the state the writer left it in."""
        if self.files.get((status.st_dev, status.st_ino)) != file_state(status):
            return None
        return self.ranges.get((status.st_dev, status.st_ino, offset, size, dtype_code))


def file_state(status: os.stat_result) -> tuple[int, int, int]:
    """What changes when a file's bytes do (or a new file takes over its inode): size, mtime and ctime."""
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns


class CheckpointReader(Protocol):
    format: Format  # decided from the bytes (and, for a SavedModel, from where the variables lie)
    location: str  # the prefix or file actually read

    def tensors(self) -> tuple[TensorInfo, ...]:
        """Every stored variable, in key order, without reading values."""
        ...

    def layers(self) -> tuple[LayerConfig, ...]:
        """Layers a saved model configuration declares (empty where the file has none)."""
        ...

    def read(self, name: str) -> np.ndarray:
        """One tensor's values."""
        ...

    def numbers(self, name: str) -> Numbers | None:
        """A real-valued tensor's elements, flattened, as plain Python numbers (`dtypes.decode_numbers`); None for
        a string or complex one. What rules read: a TF bundle's are decoded without importing numpy."""
        ...

    def scan(self, progress: Progress | None = None, verified: VerifiedBytes | None = None) -> ScanResult:
        """Read every stored byte once: checksums, sizes and non-finite values; reports bytes done. Ranges in
        `verified` (a writer's own check of what it just wrote) are taken from there where the reader can
        tell they are the same bytes of the same file."""
        ...

    def files(self) -> tuple[str, ...]:
        """Every file this reader reads (a bundle's index and each data shard; else the one file), so a writer
        can refuse to write over any of them."""
        ...

    def close(self) -> None: ...
