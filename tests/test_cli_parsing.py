"""The command line's grammar (argparse): options spelled out in full, choices and bounds refused with argparse's
usage and one error line (exit 2), help in one style for every command, and what the user typed escaped."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import FIXTURE_BUNDLES, cli_command, cli_env, run_cli

import ckptdoctor
from ckptdoctor.model import Severity
from ckptdoctor.report import OutputFormat

FULL = str(FIXTURE_BUNDLES["finetune_full"])
COMMANDS = [  # every command; the top-level help lists each
    "inspect",
    "check",
    "rules",
    "explain",
    "patch",
    "verify",
    "diff",
    "match",
    "strip",
    "rename",
    "recalibrate",
]


def assert_usage_error(result: subprocess.CompletedProcess[str], command: str, *fragments: str) -> None:
    """argparse's usage line for `command`, then one line naming what is wrong; nothing on stdout."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    prog = f"ckptdoctor {command}" if command else "ckptdoctor"
    usage, error = result.stderr.splitlines()  # exactly two lines, no traceback
    assert usage.startswith(f"usage: {prog} [OPTIONS]")
    assert error.startswith(f"{prog}: error: "), error
    for fragment in fragments:
        assert fragment in error, error


def test_an_abbreviated_option_is_refused():
    """argparse would take `--verb` for `--verbose` (and `--form` for `--format`) without allow_abbrev=False."""
    assert_usage_error(run_cli("check", FULL, "--verb"), "check", "unrecognized arguments: --verb")
    assert_usage_error(run_cli("inspect", FULL, "--form", "json"), "inspect", "unrecognized arguments: --form")
    assert run_cli("check", FULL, "--verbose").returncode == 0  # spelled out, the same option works


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["check", FULL, "--decay", "2"], "--decay"),
        (["check", FULL, "--decay", "nan"], "--decay"),  # NaN compares false with both bounds
        (["check", FULL, "--decay", "-0.1"], "--decay"),
        (["check", FULL, "--steps", "-1"], "--steps"),
        (["check", FULL, "--steps", "1.5"], "--steps"),
        (["diff", FULL, FULL, "--atol", "-1"], "--atol"),
        (["diff", FULL, FULL, "--rtol", "-inf"], "--rtol"),
        (["recalibrate", FULL, "--data", "x.npy", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["recalibrate", FULL, "--data", "x.npy", "--out", "o", "--samples", "0"], "--samples"),
    ],
)
def test_a_number_out_of_bounds_is_a_usage_error_naming_the_option(args, option):
    assert_usage_error(run_cli(*args), args[0], f"argument {option}: ")


def test_the_bounds_themselves_are_accepted():
    assert run_cli("check", FULL, "--decay", "1", "--steps", "0", "--format", "json").returncode == 0
    assert run_cli("diff", FULL, FULL, "--atol", "0", "--rtol", "0").returncode == 0


def test_an_unknown_format_names_the_choices():
    result = run_cli("check", FULL, "--format", "bogus")
    assert_usage_error(result, "check", "argument -f/--format: invalid choice: 'bogus'")
    assert all(f"'{member.value}'" in result.stderr for member in OutputFormat)
    assert_usage_error(run_cli("inspect", FULL, "-f", "xml"), "inspect", "(choose from 'text', 'json')")
    assert_usage_error(run_cli("check", FULL, "--fail-on", "sometimes"), "check", "'error', 'warning', 'info'")


def test_the_severity_choices_are_the_severities():
    """cli.py lists them without importing model.py (for --help); --fail-on converts them to `Severity`."""
    from ckptdoctor.cli import SEVERITIES

    assert sorted(SEVERITIES) == sorted(member.value for member in Severity)


def test_an_unknown_command_or_no_command():
    assert_usage_error(run_cli("frobnicate"), "", "argument COMMAND: invalid choice: 'frobnicate'")
    bare = run_cli()
    assert bare.returncode == 2 and bare.stdout == ""  # no command: the top-level help, on stderr
    assert bare.stderr.startswith("usage: ckptdoctor [OPTIONS] COMMAND ...") and "recalibrate" in bare.stderr


def test_a_missing_argument_or_required_option():
    assert_usage_error(run_cli("inspect"), "inspect", "the following arguments are required: CHECKPOINT")
    assert_usage_error(run_cli("patch", FULL), "patch", "required: --from, -o/--out")


def test_what_the_user_typed_is_escaped_in_a_usage_error():
    """A name from a script (a checkpoint's, say) can hold a newline or a terminal escape: still one line."""
    result = run_cli("inspect", FULL, "extra\nline\x1b[2J")
    assert_usage_error(result, "inspect", "unrecognized arguments: extra")
    assert "\x1b" not in result.stderr


def test_version():
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"ckptdoctor {ckptdoctor.__version__}\n", "")


def test_every_command_has_help_in_one_style():
    listing = run_cli("--help")
    assert listing.returncode == 0 and listing.stdout.startswith("usage: ckptdoctor [OPTIONS] COMMAND ...\n")
    for command in COMMANDS:
        assert f"\n  {command} " in listing.stdout  # listed with its summary
        result = run_cli(command, "-h", env={"COLUMNS": "80"})
        assert result.returncode == 0 and result.stderr == "", result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"usage: ckptdoctor {command} [OPTIONS]"), lines[0]  # never __main__.py
        assert "-h, --help  " in result.stdout
        assert all(len(line) <= 80 and line == line.rstrip() for line in lines), result.stdout
        assert "<str>" not in result.stdout and "%" not in result.stdout


def test_options_show_their_value_once_with_defaults_and_bounds():
    out = run_cli("check", "-h", env={"COLUMNS": "200"}).stdout
    assert "-f, --format {text,json,sarif,junit,github,html,markdown}" in out
    assert "-r, --reference CHECKPOINT" in out and "--decay D" in out and "[0<=x<=1]" in out
    recalibrate = run_cli("recalibrate", "-h", env={"COLUMNS": "200"}).stdout
    assert "[default: 32; x>=1]" in recalibrate and "--data DATA" in recalibrate and "[required]" in recalibrate
    assert "[default: 0.0; x>=0]" in run_cli("diff", "-h", env={"COLUMNS": "200"}).stdout


def test_feed_is_repeatable():
    """Both --feed values reach the command: the bad first one is refused even though a good one follows."""
    result = run_cli("recalibrate", FULL, "--data", "x.npy", "--out", "o", "--feed", "oops", "--feed", "a=1")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--feed 'oops': expected NAME=VALUE" in result.stderr


def test_options_first_then_double_dash_then_paths(tmp_path):
    """As action.yml calls it: after `--`, a file named like an option is a path, not an option."""
    assert run_cli("check", "-f", "json", "--fail-on", "error", "--", FULL).returncode == 0
    named_like_an_option = tmp_path / "--output=x"
    named_like_an_option.write_bytes(b"not a checkpoint")
    result = run_cli("check", "-f", "json", "--", named_like_an_option, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--output=x" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args", [["--help"], ["check", "-h"], ["--version"], ["inspect", FULL, "-f", "json"]])
def test_a_reader_that_closed_the_pipe_is_not_an_error(args):
    """`ckptdoctor --help | head -0`: stdout is a pipe whose reader has gone before anything is written. Buffered
    as usual (argparse ignores a failed write; the buffer would fail at interpreter exit, with exit code 120)."""
    env = {name: value for name, value in cli_env().items() if name != "PYTHONUNBUFFERED"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            cli_command(*args), stdout=write_end, stderr=subprocess.PIPE, env=env, timeout=60, text=True
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


def test_paths_may_stand_between_options():
    """`check A -f json B`, as click allowed it: both paths are checked, the option applies."""
    result = run_cli("check", FIXTURE_BUNDLES["finetune_full"], "-f", "json", FIXTURE_BUNDLES["finetune_trainable"])
    assert result.returncode == 1, result.stderr  # the trainable-only save has findings
    paths = [report["path"] for report in json.loads(result.stdout)["reports"]]
    assert paths == [str(FIXTURE_BUNDLES["finetune_full"]), str(FIXTURE_BUNDLES["finetune_trainable"])]


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", FULL, "--format", "json"],
        ["--stats", "check", FULL, "-f", "json", FULL],
        ["patch", FULL, "--from", FULL, "--out", "o", "--force"],
        ["rules"],
        ["explain", "bn-stats-missing"],
    ],
)
def test_only_the_named_command_gets_a_parser_and_parses_as_the_whole_line(argv):
    """Making all eleven commands' parsers was ~1 ms of each run; the one named parses exactly as among all."""
    from ckptdoctor.cli import _parser

    commands = next(a for a in _parser(argv)._actions if a.dest == "==SUPPRESS==" and a.choices).choices
    assert list(commands) == [argv[1] if argv[0] == "--stats" else argv[0]]
    every = next(a for a in _parser([])._actions if a.dest == "==SUPPRESS==" and a.choices).choices
    assert list(every) == COMMANDS
    assert vars(_parser(argv).parse_args(argv)) == vars(_parser([]).parse_args(argv))


@pytest.mark.parametrize("argv", [["-h", "inspect"], ["--stats", "--help", "check"]])
def test_the_help_before_a_command_is_the_whole_help(argv):
    """`-h` first is the top level's help, listing every command, whatever word follows it."""
    result = run_cli(*argv)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: ckptdoctor [OPTIONS] COMMAND ...")
    commands = result.stdout.split("commands:")[1].splitlines()[1:]
    assert [line.split()[0] for line in commands if line.startswith("  ") and line[2] != " "] == COMMANDS


@pytest.mark.parametrize("argv", [["-", "inspect", FULL], ["-1", "rules"], ["--", "inspect", FULL]])
def test_a_word_argparse_takes_for_the_command_names_every_choice(argv):
    """argparse reads `-` or `-1` as the COMMAND: its error lists all eleven, as the full parser's does."""
    result = run_cli(*argv)
    assert result.returncode == 2
    assert "(choose from " + ", ".join(map(repr, COMMANDS)) + ")" in result.stderr
