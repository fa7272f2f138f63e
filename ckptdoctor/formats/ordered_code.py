"""TensorFlow's OrderedCode, enough to build the index keys of a partitioned variable's slices."""

from __future__ import annotations

# Header bits marking the length of a signed number's encoding (ordered_code.cc, kLengthToHeaderBits).
_HEADER_BITS = [
    (0, 0),
    (0x80, 0),
    (0xC0, 0),
    (0xE0, 0),
    (0xF0, 0),
    (0xF8, 0),
    (0xFC, 0),
    (0xFE, 0),
    (0xFF, 0),
    (0xFF, 0x80),
    (0xFF, 0xC0),
]


def num_increasing(value: int) -> bytes:
    """An unsigned number: one length byte, then the big-endian bytes without leading zeros."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


def string_increasing(text: bytes) -> bytes:
    return text.replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def signed_num_increasing(value: int) -> bytes:
    magnitude = ~value if value < 0 else value
    if magnitude < 64:
        return bytes([(_HEADER_BITS[1][0] ^ value) & 0xFF])
    length = (magnitude.bit_length() + 7) // 7
    buffer = bytearray(value.to_bytes(10, "big", signed=True))[10 - length :]
    buffer[0] ^= _HEADER_BITS[length][0]
    buffer[1] ^= _HEADER_BITS[length][1]
    return bytes(buffer)


def slice_key(name: bytes, extents: list[tuple[int, int]]) -> bytes:
    """The key of one slice: (start, length) per dimension, length -1 meaning the whole dimension."""
    key = num_increasing(0) + string_increasing(name) + num_increasing(len(extents))
    for start, length in extents:
        key += signed_num_increasing(start) + signed_num_increasing(length)
    return key
