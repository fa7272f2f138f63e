"""The `checkpoint` state file beside TF checkpoints, read and written without protobuf on the common path.

TensorFlow writes it with `text_format.MessageToString(CheckpointState)`: one `field: value` line per value,
in field-number order. Reading a checkpoint directory and every write of a bundle go through this file, and
protobuf's text_format plus the runtime-built message cost ~17 ms of start-up, so the layout TF writes is
parsed and printed here directly. Anything else (comments, other spacing, `[...]` lists, fields out of
order, unknown fields, bad escapes, damage) goes to `text_format` itself, so the language accepted and the
errors raised stay exactly text_format's; tests/test_state_file_codec.py compares both on generated states."""

from __future__ import annotations

import math
import re
import warnings

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.model import CheckpointError
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from typing import Any

# One limit for reading a state file and for rewriting one. TF writes a line per listed checkpoint (tens to a
# few hundred bytes); a CheckpointManager(max_to_keep=None) lists every save of a run, so a long run's file
# can reach megabytes. 16 MiB bounds the memory and the parse (~2.5 s at worst, when text_format parses it).
MAX_STATE_FILE_SIZE = 16 << 20
# text_format's messages quote the offending line, which may be the whole file: the reason shown is cut here.
MAX_REASON_CHARS = 200


class CheckpointState(NamedTuple):
    """TF's CheckpointState message (tensorflow/python/checkpoint/checkpoint_state.proto, proto3)."""

    model_checkpoint_path: str = ""
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float = 0.0


# The fields in number order, as text_format prints them: (name, is a string, is repeated).
_FIELDS = (
    ("model_checkpoint_path", True, False),
    ("all_model_checkpoint_paths", True, True),
    ("all_model_checkpoint_timestamps", False, True),
    ("last_preserved_timestamp", False, False),
)
_FIELD_INDEX = {name: index for index, (name, _, _) in enumerate(_FIELDS)}

# The strict grammar of one line as text_format (or protobuf's C++ TextFormat) writes it. A string holds
# printable characters and the escapes \t \n \r \" \' \\ and three-digit octal (a byte); a double is Python's
# repr of a float (what text_format prints) or an integer (C++ prints 100.0 as 100), never with a leading zero
# (text_format refuses octal-looking floats).
# The string's body is checked in two linear scans rather than by one pattern of alternatives per character,
# which took 5 s over a 16 MiB line: its valid escapes are removed, and what is left must hold no backslash,
# quote or control character. (Every backslash starts an escape, so removing them left to right tokenises the
# body exactly as the grammar does.)
_DOUBLE = r"(-?inf|nan|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:e[+-][0-9]+)?)"
_LINE = re.compile(rf'([a-z_]+): (?:"(.*)"|{_DOUBLE})')
_VALID_ESCAPE = re.compile(r'\\(?:[tnr"\'\\]|[0-3][0-7][0-7])')
_NOT_PLAIN = re.compile(r'[\\"\x00-\x1f\x7f]')
_ESCAPE = re.compile(rb'\\([tnr"\'\\]|[0-7]{3})')
_UNESCAPED = {b"t": b"\t", b"n": b"\n", b"r": b"\r", b'"': b'"', b"'": b"'", b"\\": b"\\"}

# text_format's escapes for ASCII (text_encoding.CEscape): controls as three-digit octal, except \t \n \r.
_ASCII_ESCAPES = {code: f"\\{code:03o}" for code in (*range(32), 127)} | {
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord('"'): '\\"',
    ord("'"): "\\'",
    ord("\\"): "\\\\",
}


def parse_state(text: bytes, where: str) -> CheckpointState:
    """A CheckpointState from a state file's bytes; damage is one line naming the file (`where`)."""
    state = _parse_as_written(text)
    return state if state is not None else _parse_with_text_format(text, where)


def render_state(state: CheckpointState) -> str:
    """Exactly what `text_format.MessageToString` prints for the same CheckpointState message."""
    rendered = _render_as_written(state)
    return rendered if rendered is not None else _render_with_text_format(state)


def _parse_as_written(text: bytes) -> CheckpointState | None:
    """The state, where `text` is in the layout text_format writes; None for anything else."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not decoded:
        return CheckpointState()
    if not decoded.endswith("\n"):
        return None
    values: list[list[Any]] = [[] for _ in _FIELDS]
    last = 0
    for line in decoded[:-1].split("\n"):
        match = _LINE.fullmatch(line)
        if match is None:
            return None
        name, string, double = match.groups()
        if string is not None and _NOT_PLAIN.search(_VALID_ESCAPE.sub("", string)):
            return None
        index = _FIELD_INDEX.get(name)
        if index is None:
            return None
        _, is_string, repeated = _FIELDS[index]
        # In field order, a singular field at most once, and each value of its field's type.
        if index < last or (index == last and values[index] and not repeated) or (string is None) == is_string:
            return None
        value = _unescape(string) if is_string else float(double)
        if value is None:
            return None
        values[index].append(value)
        last = index
    path, paths, stamps, preserved = values
    return CheckpointState(path[0] if path else "", tuple(paths), tuple(stamps), preserved[0] if preserved else 0.0)


def _unescape(body: str) -> str | None:
    """A string's value from its escaped body; None where the bytes are not UTF-8 (text_format's error)."""
    if "\\" not in body:
        return body
    raw = _ESCAPE.sub(lambda m: _UNESCAPED.get(m[1]) or bytes((int(m[1], 8),)), body.encode())
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _render_as_written(state: CheckpointState) -> str | None:
    """text_format's output, built here; None where it depends on the protobuf version or backend:
    non-ASCII text (`as_utf8`'s default) and a singular -0.0 (upb prints it, pure Python does not)."""
    strings = (state.model_checkpoint_path, *state.all_model_checkpoint_paths)
    preserved = float(state.last_preserved_timestamp)
    if not all(text.isascii() for text in strings) or (preserved == 0 and math.copysign(1, preserved) < 0):
        return None
    lines = []
    if state.model_checkpoint_path:  # proto3: a singular field at its default is not printed
        lines.append(f'model_checkpoint_path: "{state.model_checkpoint_path.translate(_ASCII_ESCAPES)}"')
    lines += [f'all_model_checkpoint_paths: "{path.translate(_ASCII_ESCAPES)}"' for path in strings[1:]]
    # text_format prints a double as str(float): the shortest repr, inf, nan, 1e+20.
    lines += [f"all_model_checkpoint_timestamps: {float(stamp)!r}" for stamp in state.all_model_checkpoint_timestamps]
    if preserved != 0:  # nan included
        lines.append(f"last_preserved_timestamp: {preserved!r}")
    return "".join(line + "\n" for line in lines)


def _parse_with_text_format(text: bytes, where: str) -> CheckpointState:
    from google.protobuf import text_format

    from ckptdoctor.formats import protos

    message = protos.CheckpointState()
    try:
        with warnings.catch_warnings():
            # text_format unescapes with Python's unicode_escape, which keeps an unknown escape such as \q as
            # it is and warns of it: the accepted text is text_format's, the warning is noise to a user.
            warnings.simplefilter("ignore", DeprecationWarning)
            text_format.Parse(text.decode("utf-8"), message)
    except (text_format.ParseError, UnicodeDecodeError) as error:
        reason = str(error)
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[:MAX_REASON_CHARS] + "…"
        raise CheckpointError(f"{where}: not a valid checkpoint state file ({reason})") from None
    return from_message(message)


def _render_with_text_format(state: CheckpointState) -> str:
    from google.protobuf import text_format

    return str(text_format.MessageToString(to_message(state)))


def from_message(message: Any) -> CheckpointState:
    """The state held by a protobuf CheckpointState message (ckptdoctor's or TensorFlow's)."""
    return CheckpointState(
        message.model_checkpoint_path,
        tuple(message.all_model_checkpoint_paths),
        tuple(message.all_model_checkpoint_timestamps),
        message.last_preserved_timestamp,
    )


def to_message(state: CheckpointState) -> Any:
    """`state` as a protobuf CheckpointState message (`protos.CheckpointState`)."""
    from ckptdoctor.formats import protos

    return protos.CheckpointState(
        model_checkpoint_path=state.model_checkpoint_path,
        all_model_checkpoint_paths=state.all_model_checkpoint_paths,
        all_model_checkpoint_timestamps=state.all_model_checkpoint_timestamps,
        last_preserved_timestamp=state.last_preserved_timestamp,
    )
