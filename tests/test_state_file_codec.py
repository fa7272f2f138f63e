"""The `checkpoint` state file codec against protobuf's text_format itself: what it parses, what it prints,
which inputs it refuses, and that reading a directory or patching no longer imports protobuf for it."""

from __future__ import annotations

import os
import random
import struct
import warnings
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES, FIXTURES, realworld, run_cli
from google.protobuf import text_format

from ckptdoctor.formats import protos
from ckptdoctor.formats.state_file import (
    MAX_STATE_FILE_SIZE,
    CheckpointState,
    _parse_as_written,
    _render_as_written,
    from_message,
    parse_state,
    render_state,
    to_message,
)
from ckptdoctor.model import CheckpointError

WHERE = "/some/dir/checkpoint"
REALWORLD_STATE_FILES = ["golf_tf2_ckpt_manager", "tfx_estimator_name_based", "stochdepth_tf1_resnet_bn"]

# Characters that stress escaping: quotes, backslashes, controls, text_format's comment and message marks,
# and non-ASCII (two, three and four UTF-8 bytes, and Unicode line breaks Python's splitlines would split).
_CHARACTERS = [*"abcXYZ019_-./ :#{}<>[],;", '"', "'", "\\", "\n", "\r", "\t", "\x00", "\x1f", "\x7f"]
_CHARACTERS += ["é", "€", "😀", "\u2028", "\x85", "\ufeff", "ÿ"]
_DOUBLES = [0.0, -0.0, 1.0, -1.5, 1e20, 1e-7, 5e-324, 1.7976931348623157e308, 1764169323.123456, 1606867698.033619]
_DOUBLES += [float("inf"), float("-inf"), float("nan"), 1e16, 123456789012345678.0, 0.1, 2.5e-308]


def _random_path(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return f"/home/user/run-{rng.randrange(10**6)}/model.ckpt-{rng.randrange(10**7)}"
    return "".join(rng.choice(_CHARACTERS) for _ in range(rng.randrange(12)))


def _random_double(rng: random.Random) -> float:
    roll = rng.random()
    if roll < 0.4:
        return rng.choice(_DOUBLES)
    if roll < 0.7:
        return struct.unpack("<d", rng.randbytes(8))[0]  # any bit pattern: huge, tiny, subnormal, NaN payloads
    return rng.uniform(-1e10, 2e9)


def _random_message(rng: random.Random):
    """A CheckpointState message; the list lengths need not match (a file TF's Saver wrote, then edited)."""
    return protos.CheckpointState(
        model_checkpoint_path=_random_path(rng) if rng.random() < 0.8 else "",
        all_model_checkpoint_paths=[_random_path(rng) for _ in range(rng.randrange(5))],
        all_model_checkpoint_timestamps=[_random_double(rng) for _ in range(rng.randrange(5))],
        last_preserved_timestamp=_random_double(rng) if rng.random() < 0.7 else 0.0,
    )


MESSAGES = [_random_message(random.Random(seed)) for seed in range(400)]


def _key(state: CheckpointState) -> tuple:
    """A state compared by its doubles' bits, so that a NaN equals a NaN and -0.0 differs from 0.0."""
    doubles = (*state.all_model_checkpoint_timestamps, state.last_preserved_timestamp)
    return (
        state.model_checkpoint_path,
        state.all_model_checkpoint_paths,
        [struct.pack("<d", value) for value in doubles],
    )


def _text_format_outcome(text: bytes) -> tuple:
    """What protobuf's text_format makes of `text`: the state, or that it is refused."""
    message = protos.CheckpointState()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # unicode_escape on an unknown escape (\\q)
            text_format.Parse(text.decode("utf-8"), message)
    except (text_format.ParseError, UnicodeDecodeError):
        return ("refused",)
    return ("parsed", _key(from_message(message)))


def _our_outcome(text: bytes) -> tuple:
    try:
        return ("parsed", _key(parse_state(text, WHERE)))
    except CheckpointError as error:
        message = str(error)
        assert message.startswith(f"{WHERE}: not a valid checkpoint state file") and "\n" not in message, message
        return ("refused",)


@pytest.mark.parametrize("message", MESSAGES[:200], ids=range(200))
def test_parse_of_what_text_format_writes_is_fast_and_equals_text_format(message):
    text = text_format.MessageToString(message).encode()
    fast = _parse_as_written(text)
    assert fast is not None, text  # TF's own layout never needs text_format
    assert ("parsed", _key(fast)) == _text_format_outcome(text)
    assert _key(parse_state(text, WHERE)) == _key(fast)


@pytest.mark.parametrize("message", MESSAGES, ids=range(len(MESSAGES)))
def test_render_is_byte_for_byte_text_format(message):
    state = from_message(message)
    assert render_state(state) == text_format.MessageToString(message)
    if all(path.isascii() for path in (state.model_checkpoint_path, *state.all_model_checkpoint_paths)):
        assert _render_as_written(state) is not None  # built here: text_format only for non-ASCII and -0.0


def test_render_of_edge_values_is_text_format():
    for preserved in (0.0, -0.0, float("nan"), float("inf"), 1e-320):
        for paths in ((), ("",), ("a\\b\"c'\n",), ("é",)):
            state = CheckpointState("x" if paths else "", paths, (-0.0, 0.0, float("nan")), preserved)
            assert render_state(state) == text_format.MessageToString(to_message(state)), (preserved, paths)


HOSTILE = {
    "empty": b"",
    "only a newline": b"\n",
    "only spaces": b"   \n  ",
    "comment line": b'# saved by hand\nmodel_checkpoint_path: "a"\n',
    "trailing comment": b'model_checkpoint_path: "a"  # latest\n',
    "reordered": b'all_model_checkpoint_paths: "b"\nmodel_checkpoint_path: "a"\n',
    "interleaved": b'all_model_checkpoint_paths: "a"\nall_model_checkpoint_timestamps: 1.0\n'
    b'all_model_checkpoint_paths: "b"\n',
    "unknown field": b'model_checkpoint_path: "a"\nsave_counter: 3\n',
    "uppercase field": b'Model_checkpoint_path: "a"\n',
    "field number": b'1: "a"\n',
    "truncated string": b'model_checkpoint_path: "abc\n',
    "truncated at end": b'model_checkpoint_path: "abc',
    "no final newline": b'model_checkpoint_path: "abc"',
    "blank line": b'model_checkpoint_path: "a"\n\n',
    "crlf": b'model_checkpoint_path: "a"\r\nall_model_checkpoint_paths: "a"\r\n',
    "two spaces": b'model_checkpoint_path:  "a"\n',
    "space before colon": b'model_checkpoint_path : "a"\n',
    "no colon": b'model_checkpoint_path "a"\n',
    "tab (silent marker)": b'model_checkpoint_path:\t "a"\n',
    "single quotes": b"model_checkpoint_path: 'a'\n",
    "concatenated strings": b'model_checkpoint_path: "a" "b"\n',
    "braces": b"model_checkpoint_path { }\n",
    "angle brackets": b"model_checkpoint_path < >\n",
    "short repeated": b'all_model_checkpoint_paths: ["a", "b"]\nall_model_checkpoint_timestamps: [1, 2.5]\n',
    "semicolon": b'model_checkpoint_path: "a";\n',
    "duplicate singular": b'model_checkpoint_path: "a"\nmodel_checkpoint_path: "b"\n',
    "duplicate after default": b'model_checkpoint_path: ""\nmodel_checkpoint_path: "b"\n',
    "duplicate double": b"last_preserved_timestamp: 0.0\nlast_preserved_timestamp: 2.0\n",
    "duplicate double -0": b"last_preserved_timestamp: -0.0\nlast_preserved_timestamp: 2.0\n",
    "bad escape": b'model_checkpoint_path: "a\\qb"\n',
    "octal out of range": b'model_checkpoint_path: "\\777"\n',
    "one-digit octal": b'model_checkpoint_path: "\\1x"\n',
    "hex escape": b'model_checkpoint_path: "\\x41\\xe9"\n',
    "unicode escape": b'model_checkpoint_path: "\\u00e9"\n',
    "invalid UTF-8 by escape": b'model_checkpoint_path: "\\377"\n',
    "half a character by escape": b'model_checkpoint_path: "\\303"\n',
    "UTF-8 by octal escapes (C++)": b'model_checkpoint_path: "caf\\303\\251"\n',
    "raw invalid UTF-8": b'model_checkpoint_path: "\xff"\n',
    "literal NUL": b'model_checkpoint_path: "a\x00b"\n',
    "literal tab and DEL": b'model_checkpoint_path: "a\tb\x7f"\n',
    "BOM": b'\xef\xbb\xbfmodel_checkpoint_path: "a"\n',
    "string for a double": b'last_preserved_timestamp: "1"\n',
    "double for a string": b"model_checkpoint_path: 1.0\n",
    "binary junk": b"\x00\xff\xfe\x89HDF\r\n\x1a\n",
    "every byte": bytes(range(256)),
    "text": b"this is { not text format\n",
}
for _number in ["01.5", "00", "1.5f", "1e5", "1E+5", "-nan", "nan", "NaN", "Infinity", "-inf", "inff", ".5", "+1.5"]:
    HOSTILE[f"double {_number}"] = f"all_model_checkpoint_timestamps: {_number}\n".encode()
for _number in ["1_000", "0x10", "1e400", "-0", "1606867698", "0", "1.", "1e+", "- 1", "1.5.5", "0.000001"]:
    HOSTILE[f"double {_number}"] = f"last_preserved_timestamp: {_number}\n".encode()
_LINE = b'all_model_checkpoint_paths: "/home/user/experiments/run-7/model.ckpt-1000000"\n'
HOSTILE["2 MB as TF writes it"] = b'model_checkpoint_path: "m"\n' + _LINE * (2_000_000 // len(_LINE))
HOSTILE["2 MB of comments"] = b"# " + b"x" * 78 + b"\n" * (2_000_000 // 81)
HOSTILE["2 MB on one line"] = b'model_checkpoint_path: "' + b"a" * 2_000_000


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_odd_and_hostile_texts_get_text_formats_result_or_refusal(text):
    assert _our_outcome(text) == _text_format_outcome(text)


def test_a_long_refusal_stays_short():
    with pytest.raises(CheckpointError) as error:
        parse_state(HOSTILE["2 MB on one line"], WHERE)
    assert len(str(error.value)) < 400


def test_mutated_state_files_get_text_formats_result_or_refusal():
    """Each byte-level mutation of a file TF would write: the codec takes text_format's outcome every time."""
    rng = random.Random(13)
    pieces = [b'"', b"\\", b"\n", b" ", b":", b"#", b"0", b"e", b"-", b".", b"\xff", b"\xc3", b"'", b"n", b"]"]
    for message in MESSAGES[:150]:
        text = bytearray(text_format.MessageToString(message).encode())
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(text) + 1)
            action = rng.randrange(3)
            if action == 0:
                text[at:at] = rng.choice(pieces)
            elif action == 1:
                del text[at : at + rng.randrange(1, 4)]
            else:
                text[at : at + 1] = rng.choice(pieces)
        assert _our_outcome(bytes(text)) == _text_format_outcome(bytes(text)), bytes(text)


# Written by TF: our fixtures (scripts/) and third-party runs (a CheckpointManager's, with timestamps).
STATE_FILES = {f"fixtures/{p.parent.relative_to(FIXTURES)}": p for p in sorted(FIXTURES.rglob("checkpoint"))}
STATE_FILES |= {f"realworld/{name}": name for name in REALWORLD_STATE_FILES}


@pytest.mark.parametrize("where", STATE_FILES.values(), ids=STATE_FILES.keys())
def test_real_state_files_read_as_text_format_reads_them_and_print_back_the_same(where):
    path = where if isinstance(where, Path) else realworld(where) / "checkpoint"
    text = path.read_bytes()
    state = _parse_as_written(text)
    assert state is not None  # TF's layout
    assert ("parsed", _key(state)) == _text_format_outcome(text)
    assert render_state(state).encode() == text


def _imported_modules(*args: object) -> set[str]:
    result = run_cli(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    return {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def test_reading_a_directory_and_patching_import_no_protobuf_for_the_state_file(tmp_path):
    listed = _imported_modules("inspect", FIXTURE_BUNDLES["finetune_full"].parent, "--format", "json")
    assert "ckptdoctor.formats.state_file" in listed  # the probe saw the state file read
    assert sorted(m for m in listed if m.startswith("google.protobuf")) == []
    out = tmp_path / "out"
    out.mkdir()
    (out / "checkpoint").write_text('model_checkpoint_path: "old"\nall_model_checkpoint_paths: "old"\n')
    args = ("patch", FIXTURE_BUNDLES["finetune_trainable"], "--from", FIXTURE_BUNDLES["finetune_full"])
    patched = _imported_modules(*args, "--out", out / "fixed")
    assert "google.protobuf.text_format" not in patched
    assert (
        (out / "checkpoint")
        .read_text()
        .startswith('model_checkpoint_path: "fixed"\nall_model_checkpoint_paths: "old"\n')
    )


def test_one_size_limit_for_reading_and_for_rewriting(tmp_path):
    """A state file of megabytes (a long run of a CheckpointManager that keeps every save) is read and
    rewritten; one byte over the limit is refused by both, in one line, before anything is written."""
    out = tmp_path / "out"
    out.mkdir()
    state = out / "checkpoint"
    state.write_bytes(HOSTILE["2 MB as TF writes it"])
    args = ("patch", FIXTURE_BUNDLES["finetune_trainable"], "--from", FIXTURE_BUNDLES["finetune_full"])
    assert run_cli(*args, "--out", out / "fixed").returncode == 0
    rewritten = parse_state(state.read_bytes(), str(state))
    assert len(rewritten.all_model_checkpoint_paths) == HOSTILE["2 MB as TF writes it"].count(b"\n")
    assert rewritten.all_model_checkpoint_paths[-1] == "fixed"

    with state.open("r+b") as file:
        file.truncate(MAX_STATE_FILE_SIZE + 1)
    listing = sorted(p.name for p in out.iterdir())
    refused = run_cli("check", out)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"{state}: over {MAX_STATE_FILE_SIZE} bytes" in refused.stderr
    refused = run_cli(*args, "--out", out / "again")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"{state}: {MAX_STATE_FILE_SIZE + 1} bytes is too large" in refused.stderr
    assert sorted(p.name for p in out.iterdir()) == listing


def test_an_output_name_the_state_file_cannot_hold_is_refused_before_writing(tmp_path):
    """The state file is UTF-8 text: a file name of other bytes is refused in one line, not after the write."""
    args = ("patch", FIXTURE_BUNDLES["finetune_trainable"], "--from", FIXTURE_BUNDLES["finetune_full"])
    refused = run_cli(*args, "--out", tmp_path / os.fsdecode(b"fixed\xff"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "can name only UTF-8 file names" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_state_file_at_the_size_limit_in_one_line_parses_in_linear_time():
    """A pattern of alternatives per character took 5 s over one 16 MiB line; the two scans take ~0.1 s."""
    import time

    path = "a" * (MAX_STATE_FILE_SIZE - 40)
    text = f'model_checkpoint_path: "{path}"\n'.encode()
    started = time.perf_counter()
    state = parse_state(text, "checkpoint")
    assert time.perf_counter() - started < 2.0
    assert state.model_checkpoint_path == path
