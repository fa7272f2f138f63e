"""CRC-32C (Castagnoli) as TensorFlow and LevelDB store it: computed in hardware, kept masked."""

from __future__ import annotations

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC-32C of `data`, continuing from `crc` when given."""
    return google_crc32c.extend(crc, data)


def mask(crc: int) -> int:
    """LevelDB's mask: stored CRCs are rotated and offset so CRCs of CRCs stay well distributed."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
