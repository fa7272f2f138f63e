"""Names from untrusted bytes: their identity, and the one way they are shown.

Tensor keys, layer names and file names come from files anyone can craft. A key is any byte string, so a
name is decoded with `surrogateescape`, a lossless bijection: a stored `\\xff` byte and a literal
backslash-x-f-f are different names, and `encode_name` gives back the exact bytes to look the key up by.

Showing a name is another matter: it must never become a second line, a terminal escape, a workflow command
or a character XML refuses. Everything that reaches a person or a CI system goes through `shown`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

# Characters shown as escapes: C0 controls, DEL, C1 controls; surrogates (undecodable bytes and lone UTF-16
# halves); line and paragraph separators; bidirectional overrides and isolates (they reorder what a reader
# sees); the noncharacters U+FFFE/U+FFFF, which XML 1.0 forbids; and the backslash itself, so that what is
# shown is never ambiguous: a stored 0xff byte shows as `\xff`, a literal backslash-x-f-f as `\\xff`.
UNSAFE_CHARACTERS = "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069\ufffe\uffff\\\\]"
_UNDECODABLE = range(0xDC80, 0xDD00)  # surrogateescape maps byte 0xNN to U+DCNN


def decode_name(raw: bytes) -> str:
    """The name for a stored key: UTF-8 where it is, every other byte kept as a surrogate."""
    return raw.decode("utf-8", "surrogateescape")


def encode_name(name: str) -> bytes:
    """The stored key for a name `decode_name` made (exactly the bytes it came from)."""
    return name.encode("utf-8", "surrogateescape")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if match.group() == "\\":
        return "\\\\"
    if code in _UNDECODABLE:
        return f"\\x{code - 0xDC00:02x}"  # the byte that was stored
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


@functools.cache
def _unsafe() -> re.Pattern[str]:
    """Compiled when a name needs it (~0.6 ms: the ranges beyond ASCII make a large character set)."""
    return re.compile(UNSAFE_CHARACTERS)


def _plain(text: str) -> bool:
    """Printable ASCII without a backslash: nothing in it is unsafe (most names, checked without the pattern)."""
    return text.isascii() and text.isprintable() and "\\" not in text


def shown(text: str) -> str:
    """`text` for display: one line of valid UTF-8, unsafe characters as visible `\\xNN`/`\\uNNNN` escapes.

    Different texts are never shown alike (backslashes are doubled), so a finding names one layer only."""
    return text if _plain(text) else _unsafe().sub(_escape, text)


def needs_escaping(text: str) -> bool:
    return not _plain(text) and _unsafe().search(text) is not None


def is_writable_name(text: str) -> bool:
    """A name ckptdoctor may write, one a person chose (in a map file): non-empty, and nothing `shown` escapes
    but the backslash. Controls split every listing and log line; surrogates are bytes that are not UTF-8; the
    others reorder what a reader sees. (A name read from a checkpoint may hold anything: it is data.)"""
    return bool(text) and (_plain(text) or _unsafe().search(text.replace("\\", "")) is None)


def listed(names: Sequence[str], most: int) -> str:
    """`a, b, c`, the first `most` names then `and 12 more`, for a message that cannot name them all (escape
    the result with `shown` where it is shown)."""
    named = ", ".join(names[:most])
    return f"{named} and {len(names) - most} more" if len(names) > most else named
