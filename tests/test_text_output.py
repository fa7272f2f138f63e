"""Text output with and without rich: a pipe, a file and a colourless terminal get plain strings (rich is not
imported: issue 13), a terminal with colour gets rich's Console; both show the same characters, names escaped.

The plain sink is checked against rich itself: the same report through `PlainSink` and through `ConsoleSink`
over a colourless rich Console is the same text, and a coloured run of the CLI without its SGR escapes is the
plain run byte for byte."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_TIMEOUT, FIXTURE_BUNDLES, KERAS_FILES, cli_command, cli_env, read_pty, run_cli
from rich.cells import cell_len
from rich.console import Console
from test_forged_output import HOSTILE, _assert_nothing_unsafe, _key
from test_names import batchnorm, write_bundle

from ckptdoctor import diagnose
from ckptdoctor.report import text
from ckptdoctor.rules import CATALOGUE

TRAINABLE = FIXTURE_BUNDLES["finetune_trainable"]
FULL = FIXTURE_BUNDLES["finetune_full"]
SGR = re.compile("\x1b\\[[0-9;]*m")  # what rich writes for a style: Select Graphic Rendition, nothing else
NO_STYLE = {"NO_COLOR": "", "FORCE_COLOR": None, "TTY_COMPATIBLE": None, "TERM": "xterm"}
WIDE_NAMES = ["卷积", "ｆｕｌｌ", "emoji😀", "e\u0301", "plain"]  # wide, fullwidth, emoji, combining, ASCII


def _env(**settings: str | None) -> dict[str, str]:
    """The CLI's environment with the colour settings given (None: unset), whatever the test runner has."""
    env = cli_env()
    for name, value in {**NO_STYLE, "COLUMNS": None, **settings}.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _run(*args: object, **settings: str | None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cli_command(*args), capture_output=True, env=_env(**settings), timeout=CLI_TIMEOUT)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    """Layers named to forge lines, escapes, markup, emoji codes and bidi overrides; two lack their statistics,
    so that names stand in findings, in the BatchNorm summary and in what patch adds."""
    tensors = {}
    for name in HOSTILE.values():
        tensors |= batchnorm(_key(name), 0.0, 1.0)
    for name in ("[bold]missing[/bold]", ":thumbs_up:"):
        tensors |= batchnorm(name.encode(), None, None)
    return write_bundle(tmp_path_factory.mktemp("hostile") / "model.ckpt", tensors)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> Path:
    """Variables whose names take more or fewer terminal cells than characters, in the table's first column."""
    tensors = batchnorm("网络/卷积1".encode(), 0.25, 0.5)
    tensors |= {f"net/{name}".encode(): [[1.0, 2.0]] for name in WIDE_NAMES}
    return write_bundle(tmp_path_factory.mktemp("wide") / "model.ckpt", tensors)


# ---- the plain sink against rich --------------------------------------------------------------------------


def _renders(hostile: Path, wide: Path):
    """Every text renderer over reports that exercise it: tables (with wide names), findings grouped and
    verbose, prose, the catalogue."""
    for path in (TRAINABLE, FIXTURE_BUNDLES["damaged_values"], KERAS_FILES["stats_removed/model.h5"], hostile, wide):
        listing, report = diagnose.inspect(path), diagnose.check(path)
        yield lambda sink, listing=listing: text.render_inspect(sink, listing)
        yield lambda sink, report=report: text.render_check(sink, report)
        yield lambda sink, report=report: text.render_check(sink, report, verbose=True)
    yield lambda sink: text.render_rules(sink, CATALOGUE)
    for rule in CATALOGUE:
        yield lambda sink, rule=rule: text.render_explanation(sink, rule)


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_plain_sink_writes_what_a_colourless_rich_console_writes(hostile, wide, terminal, monkeypatch):
    """On a terminal prose wraps at the width; in a pipe it does not: both sinks agree on every character."""
    monkeypatch.setenv("COLUMNS", "64")
    compared = 0
    for render in _renders(hostile, wide):
        plain, rich = io.StringIO(), io.StringIO()
        render(text.PlainSink(plain, is_terminal=terminal))
        render(text.ConsoleSink(Console(file=rich, force_terminal=terminal, color_system=None, highlight=False)))
        assert plain.getvalue() == rich.getvalue()
        assert all(line == line.rstrip() for line in plain.getvalue().splitlines())
        compared += 1
    assert compared > 15  # the renders ran


def test_wide_names_line_up_in_terminal_cells(wide):
    """The dtype column starts at the same terminal cell on every row, whatever the characters before it."""
    rows = [line for line in run_cli("inspect", wide).stdout.splitlines() if "float32" in line]
    assert {row.split()[0] for row in rows} == {*WIDE_NAMES, "beta", "gamma", "moving_mean", "moving_variance"}
    assert len({cell_len(row[: row.index("float32")]) for row in rows}) == 1
    assert len({row.index("float32") for row in rows}) > 1  # in characters they differ: cells were counted


# ---- what is imported ----------------------------------------------------------------------------------------


def _modules(args: list[str], expected: int, **settings: str | None) -> set[str]:
    """The modules a real `python -m ckptdoctor ARGS` has loaded when it exits, stdout a pipe."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
        "from ckptdoctor.cli import main\n"
        f"sys.argv = ['ckptdoctor', *{args!r}]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(**settings), timeout=CLI_TIMEOUT
    )
    assert result.returncode == expected, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


def _rich(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m == "rich" or m.startswith("rich."))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["inspect", str(FULL)], 0),
        (["check", str(TRAINABLE)], 1),
        (["check", str(TRAINABLE), "--verbose"], 1),
        (["rules"], 0),
        (["explain", "BN001"], 0),
    ],
    ids=["inspect", "check", "check-verbose", "rules", "explain"],
)
def test_text_into_a_pipe_does_not_import_rich(args, expected):
    modules = _modules(args, expected)
    assert "ckptdoctor.report.text" in modules  # the probe saw the real work
    assert _rich(modules) == []


def test_patch_and_a_text_report_file_do_not_import_rich(tmp_path):
    patched = _modules(["patch", str(TRAINABLE), "--from", str(FULL), "--out", str(tmp_path / "fixed" / "m")], 0)
    assert "ckptdoctor.writer.bundle" in patched and _rich(patched) == []
    report = tmp_path / "report.txt"
    written = _modules(["check", str(TRAINABLE), "--format", "text", "--output", str(report)], 1, FORCE_COLOR="1")
    assert "BN001" in report.read_text() and _rich(written) == []


@pytest.mark.parametrize(
    "settings",
    [{"NO_COLOR": "1", "FORCE_COLOR": "1"}, {"TERM": "dumb", "FORCE_COLOR": "1"}, {"TTY_COMPATIBLE": "0"}],
    ids=["NO_COLOR", "dumb", "TTY_COMPATIBLE=0"],
)
def test_told_no_colour_is_plain_and_without_rich(settings):
    """A terminal as rich sees one (FORCE_COLOR) that shows no colour still gets plain text, wrapped as a
    terminal's (80 columns: rich's width for a dumb terminal, and for none at all)."""
    modules = _modules(["check", str(TRAINABLE)], 1, **settings)
    assert _rich(modules) == []
    result = _run("check", TRAINABLE, **settings)
    assert b"\x1b" not in result.stdout
    if "FORCE_COLOR" in settings:
        assert max(map(len, result.stdout.decode().splitlines()[3:-2])) <= 80


# ---- colour ----------------------------------------------------------------------------------------------------


def _same_but_style(coloured: bytes, plain: bytes) -> None:
    """Colour adds SGR escapes and nothing else: no other escape, every character where it was."""
    assert SGR.search(coloured.decode()), "no colour"
    unstyled = SGR.sub("", coloured.decode())
    assert "\x1b" not in unstyled
    assert unstyled == plain.decode()


@pytest.mark.parametrize(
    "args",
    [["check"], ["check", "--verbose"], ["inspect"], ["inspect", "--all"]],
    ids=["check", "check-verbose", "inspect", "inspect-all"],
)
def test_forced_colour_styles_hostile_names_without_changing_a_character(hostile, args):
    command, *options = args
    coloured = _run(command, hostile, *options, FORCE_COLOR="1", COLUMNS="100")
    plain = _run(command, hostile, *options, COLUMNS="100")
    assert coloured.returncode == plain.returncode == (1 if command == "check" else 0)
    _same_but_style(coloured.stdout, plain.stdout)
    _assert_nothing_unsafe(plain.stdout.decode())
    for escaped in ("x\\x1b[2J\\x1b[31mred", "[blink red]x[/]", ":thumbs_up:", "bn\\xff\\xfe", "\\u202eevil"):
        assert escaped in plain.stdout.decode()


def test_patch_shows_markup_and_emoji_codes_literally_with_and_without_colour(tmp_path):
    """patch's own lines (what it added, what it wrote) went through rich's print, which turned `:thumbs_up:`
    in a name into an emoji; both paths now show every name as stored."""
    layers = [b"net/:thumbs_up:/BatchNorm", b"net/[bold]x[/bold]/BatchNorm", b"net/\x1b[31mred/BatchNorm"]
    target = write_bundle(
        tmp_path / "target" / "model.ckpt", {k: v for n in layers for k, v in batchnorm(n, None, None).items()}
    )
    donor = write_bundle(
        tmp_path / "donor" / "model.ckpt", {k: v for n in layers for k, v in batchnorm(n, 0.3, 0.7).items()}
    )
    out = tmp_path / "fixed :thumbs_up:" / "model.ckpt"
    outputs = []
    for settings in ({}, {"FORCE_COLOR": "1"}):
        result = _run("patch", target, "--from", donor, "--out", out, COLUMNS="100", **settings)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
        for path in out.parent.iterdir():
            path.unlink()
    plain = outputs[0].decode()
    _same_but_style(outputs[1], outputs[0])
    assert "  + net/:thumbs_up:/BatchNorm: moving_mean, moving_variance  float32[4]" in plain.splitlines()
    assert "  + net/[bold]x[/bold]/BatchNorm: moving_mean, moving_variance  float32[4]" in plain.splitlines()
    assert "net/\\x1b[31mred/BatchNorm" in plain and f"wrote {out}.index" in plain.splitlines()


def test_a_real_terminal_gets_colour():
    """stdout on a pseudo-terminal, nothing forced: rich's colour, and the same characters as in a pipe."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        cli_command("check", TRAINABLE), stdout=follower, stderr=subprocess.PIPE, env=_env(COLUMNS="100")
    )
    _, errors = process.communicate(timeout=CLI_TIMEOUT)
    os.close(follower)
    shown = read_pty(leader)
    assert process.returncode == 1, errors
    plain = _run("check", TRAINABLE, COLUMNS="100").stdout
    _same_but_style(shown.replace(b"\r\n", b"\n"), plain)


@pytest.mark.parametrize("settings", [{}, {"FORCE_COLOR": "1"}], ids=["plain", "colour"])
def test_a_reader_that_stops_early_keeps_the_exit_code_on_both_paths(settings):
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = subprocess.run(
        cli_command("check", TRAINABLE),
        stdout=write_end,
        stderr=subprocess.PIPE,
        env=_env(**settings),
        timeout=CLI_TIMEOUT,
    )
    os.close(write_end)
    assert process.returncode == 1
    assert process.stderr == b""


def test_stdout_and_stderr_keep_their_order_in_one_pipe(tmp_path):
    """Each line is written when printed, as rich did: an unreadable path's error stands where it happened."""
    result = subprocess.run(
        cli_command("check", FULL, tmp_path / "absent"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=_env(),
        timeout=CLI_TIMEOUT,
    )
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 2
    assert lines[0].startswith("ckptdoctor: error: ") and lines[1].startswith("checkpoint ")


def test_a_text_report_file_is_plain_even_with_colour_forced(tmp_path):
    """`--output` is a file: never styled, never wrapped as a terminal's, whatever FORCE_COLOR says."""
    forced, plain = tmp_path / "forced.txt", tmp_path / "plain.txt"
    assert _run("check", TRAINABLE, "-f", "text", "--output", forced, FORCE_COLOR="1").returncode == 1
    assert _run("check", TRAINABLE, "-f", "text", "--output", plain).returncode == 1
    assert forced.read_bytes() == plain.read_bytes()
    assert b"\x1b" not in plain.read_bytes() and b"error BN001 bn-missing-moving-stats (4)\n" in plain.read_bytes()


def test_columns_zero_still_prints_everything():
    """COLUMNS=0 made rich's console zero cells wide, and it printed nothing at all (exit code as usual); prose
    now wraps at the narrowest width, and every other line stays whole."""
    result = _run("check", TRAINABLE, COLUMNS="0")
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 1
    assert lines[-1] == "4 findings: 4 errors" and "error BN001 bn-missing-moving-stats (4)" in lines
    prose = [line for line in lines if line.startswith("  ") and not line.startswith("    ")]  # the rule's text
    assert len(prose) > 5 and max(map(len, prose)) <= 40
