"""Output that cannot be forged: hostile tensor names and file names in every output format, a reader that
closes the pipe early, and action.yml's inputs kept out of its shell scripts."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from conftest import CLI_TIMEOUT, FIXTURE_BUNDLES, KERAS_FILES, REALWORLD, ROOT, cli_command, cli_env, run_cli
from test_names import batchnorm, write_bundle

# Layer names an attacker would pick; each layer holds 0/1 statistics, so each is the subject of one finding.
HOSTILE = {
    "workflow": "x\n::error file=x::forged",
    "finding": "x\nerror   BN001 bn-missing-moving-stats fake\nBN001 error fake",
    "escape": "x\x1b[2J\x1b[31mred\x1b]0;title\x07",
    "carriage": "x\rerror   BN001 overwritten",
    "close_tag": "[/]",
    "markup": "[blink red]x[/]",
    "emoji": ":thumbs_up: [link=https://evil]y[/link]",
    "xml": "x\x00\x01\x0b\x1f\ufffe\uffff",
    "separators": "x\u2028y\u2029\u202eevil\x85\x9b",
    "undecodable": b"bn\xff\xfe",
}
FINDING_LINE = re.compile(r"^(error|warning|info) +[A-Z]+\d{3} ")


def _key(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else name.encode()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> Path:
    tensors = {}
    for name in HOSTILE.values():
        tensors |= batchnorm(_key(name), 0.0, 1.0)
    return write_bundle(tmp_path_factory.mktemp("hostile") / "model.ckpt", tensors)


def _assert_nothing_unsafe(text: str) -> None:
    """No control character but the newlines between lines, no separator, no bidi override, valid UTF-8."""
    text.encode("utf-8")  # strict: no surrogate got through
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\ufffe\uffff]", text), repr(text)


def test_text_check_grouped_by_rule_is_as_safe(hostile):
    result = run_cli("check", hostile)
    assert result.returncode == 1 and result.stderr == ""
    _assert_nothing_unsafe(result.stdout)
    assert "x\\x0a::error file=x::forged" in result.stdout and "[blink red]x[/]" in result.stdout
    assert not any(line.startswith(("::", "BN001")) for line in result.stdout.splitlines())


def test_text_check_prints_one_finding_line_per_finding(hostile):
    result = run_cli("check", hostile, "--verbose")
    assert result.returncode == 1
    assert result.stderr == ""
    _assert_nothing_unsafe(result.stdout)
    lines = result.stdout.splitlines()
    assert sum(bool(FINDING_LINE.match(line)) for line in lines) == len(HOSTILE)
    assert not any(line.startswith(("::", "BN001")) for line in lines)
    assert f"{len(HOSTILE)} findings: {len(HOSTILE)} error" in lines[-1]
    for escaped in ("x\\x0a::error file=x::forged", "x\\x1b[2J\\x1b[31mred", "[/]", "[blink red]x[/]", "bn\\xff\\xfe"):
        assert escaped in result.stdout
    assert ":thumbs_up: [link=https://evil]y[/link]" in result.stdout  # neither an emoji nor a hyperlink


def test_text_inspect_shows_markup_literally(hostile):
    result = run_cli("inspect", hostile)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    _assert_nothing_unsafe(result.stdout)
    assert "[/]/" in result.stdout and "[blink red]x[/]/" in result.stdout


def test_github_commands_cannot_be_forged(hostile, tmp_path):
    """One workflow command per finding; the file property is escaped as GitHub's toolkit does."""
    folder = tmp_path / "we,ird:dir%"
    folder.mkdir()
    prefix = write_bundle(folder / "model.ckpt", batchnorm(_key(HOSTILE["workflow"]), 0.0, 1.0))
    result = run_cli("check", hostile, prefix, "--format", "github")
    assert result.returncode == 1
    _assert_nothing_unsafe(result.stdout)
    lines = result.stdout.splitlines()
    assert len(lines) == len(HOSTILE) + 1
    assert all(re.match(r"^::error file=[^,:]+,title=BN002 bn-stats-at-init::", line) for line in lines)
    assert "file=" + str(folder).replace("%", "%25").replace(":", "%3A").replace(",", "%2C") in lines[-1]


def test_junit_parses_with_hostile_names(hostile):
    result = run_cli("check", hostile, "--format", "junit")
    assert result.returncode == 1
    _assert_nothing_unsafe(result.stdout.replace("\n", ""))
    root = ET.fromstring(result.stdout)  # raised "not well-formed" on \x00 or \ufffe before
    failed = [case.get("name") for case in root.iter("testcase") if case.find("failure") is not None]
    assert len(failed) == len(HOSTILE)
    assert "BN002 bn-stats-at-init: bn\\xff\\xfe" in failed


def test_json_is_utf8_with_names_escaped_and_hex(hostile):
    result = run_cli("check", hostile, "--format", "json")  # decoded as strict UTF-8
    assert result.returncode == 1
    report = json.loads(result.stdout)
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, json.loads((ROOT / "docs" / "report.schema.json").read_text()))
    stored = {bytes.fromhex(v["name_hex"]) for v in report["variables"] if "name_hex" in v}
    assert {_key(name) + b"/moving_mean" for name in HOSTILE.values() if "[" not in str(name)} <= stored
    assert {f["subject"] for f in report["findings"]} >= {"x\\x0a::error file=x::forged", "bn\\xff\\xfe"}


def test_sarif_uris_are_percent_encoded_and_valid(tmp_path):
    schema_path = REALWORLD.parent / "schemas" / "sarif-schema-2.1.0.json"
    if not schema_path.is_file():
        pytest.skip(f"official SARIF schema not available ({schema_path} is absent)")
    jsonschema = pytest.importorskip("jsonschema")
    relative = Path("my models #1 100%") / "model.ckpt"
    write_bundle(tmp_path / relative, batchnorm(b"bn\xff\n::error", 0.0, 1.0))
    absolute = write_bundle(tmp_path / "abs dir#" / "model.ckpt", batchnorm(b"bn", 0.0, 1.0))
    result = run_cli("check", relative, absolute, "--format", "sarif", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    jsonschema.validate(document, json.loads(schema_path.read_text()))
    first, second = (r["locations"][0] for r in document["runs"][0]["results"])
    uri = first["physicalLocation"]["artifactLocation"]["uri"]
    assert uri == "my%20models%20%231%20100%25/model.ckpt.index"
    assert unquote_to_bytes(uri) == os.fsencode(relative) + b".index"
    assert first["logicalLocations"][0]["name"] == "bn\\xff\\x0a::error"
    absolute_uri = second["physicalLocation"]["artifactLocation"]["uri"]
    assert absolute_uri.startswith("file:///") and " " not in absolute_uri and "#" not in absolute_uri


def test_error_for_a_hostile_path_is_one_line(tmp_path):
    result = run_cli("inspect", str(tmp_path / "no\nsuch\x1b[31m[/]"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "no\\x0asuch\\x1b[31m[/]" in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["inspect", str(FIXTURE_BUNDLES["finetune_full"])], 0),
        (["inspect", str(FIXTURE_BUNDLES["finetune_full"]), "--format", "json"], 0),
        (["check", str(FIXTURE_BUNDLES["finetune_trainable"])], 1),  # the verdict stands: findings
        (["check", str(FIXTURE_BUNDLES["finetune_trainable"]), "--format", "sarif"], 1),
        (["rules"], 0),
    ],
)
def test_a_reader_that_stops_early_is_not_an_error(args, expected):
    """`ckptdoctor inspect X | head -1`: the pipe is closed before the first write, so every write fails."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = subprocess.run(
        cli_command(*args), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=CLI_TIMEOUT, env=cli_env()
    )
    os.close(write_end)
    assert process.returncode == expected
    assert process.stderr == ""  # no traceback, no "Exception ignored ... BrokenPipeError"


@pytest.mark.parametrize(("command", "expected"), [("inspect", 0), ("check", 1)])
def test_head_on_the_output_keeps_the_exit_code(tmp_path, command, expected):
    """The same through a real `| head -1`: rich writes line by line, and head is gone after the first."""
    tensors = {f"net/conv{i}/weights".encode(): [1.0] for i in range(2000)} | batchnorm(b"net/bn", 0.0, 1.0)
    prefix = write_bundle(tmp_path / "model.ckpt", tensors)
    script = f"{shlex.join(cli_command(command, prefix))} | head -1; echo ${{PIPESTATUS[0]}}"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=CLI_TIMEOUT, env=cli_env())
    assert result.stdout.splitlines() == [f"checkpoint {prefix}  format tf1-name-based", str(expected)]
    assert result.stderr == ""


# ---- action.yml -------------------------------------------------------------------------------------


def _run_scripts(action: str) -> list[tuple[dict[str, str], str]]:
    """Each `run:` script of the composite action with its step's `env:` (no YAML library needed)."""
    scripts = []
    for step in re.split(r"\n    - ", action.split("\n  steps:\n", 1)[1]):
        env_block = step.split("\n      env:\n", 1)[1] if "\n      env:\n" in step else ""
        env = dict(re.findall(r"^        (\w+): (.+)$", env_block, re.M))
        block = re.search(r"^      run: \|\n((?:        .*\n|\n)+)", step + "\n", re.M)
        inline = re.search(r"^      run: (?!\|)(.+)$", step, re.M)
        if block:
            scripts.append((env, "".join(line[8:] + "\n" for line in block.group(1).splitlines())))
        elif inline:
            scripts.append((env, inline.group(1)))
    return scripts


def test_action_scripts_take_inputs_only_through_env():
    scripts = _run_scripts((ROOT / "action.yml").read_text())
    assert len(scripts) == 3
    for _, script in scripts:
        assert "${{" not in script, script
    (check_env,) = [env for env, script in scripts if "ckptdoctor check" in script]
    assert check_env["CKPTDOCTOR_PATHS"] == "${{ inputs.paths }}"
    assert check_env["CKPTDOCTOR_REFERENCE"] == "${{ inputs.reference }}"


def _check_step_argv(tmp_path: Path, paths: str, reference: str = "") -> list[str]:
    """Run the action's check script with a stand-in `ckptdoctor` that records its arguments."""
    (check_script,) = [s for _, s in _run_scripts((ROOT / "action.yml").read_text()) if "ckptdoctor check" in s]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "ckptdoctor"
    recorder.write_text('#!/bin/bash\nprintf "%s\\0" "$@" > "$ARGV_FILE"\nexit 1\n')
    recorder.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGV_FILE": str(tmp_path / "argv"),
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
        "CKPTDOCTOR_PATHS": paths,
        "CKPTDOCTOR_REFERENCE": reference,
        "CKPTDOCTOR_FAIL_ON": "error",
        "CKPTDOCTOR_SARIF_FILE": "out.sarif",
    }
    (tmp_path / "github_output").unlink(missing_ok=True)
    result = subprocess.run(["bash", "-c", check_script], cwd=tmp_path, env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "github_output").read_text() == "status=1\n"
    return (tmp_path / "argv").read_bytes().decode().split("\0")[:-1]


def test_action_inputs_are_data_not_code(tmp_path):
    hostile = 'a.ckpt; touch pwned1 $(touch pwned2) `touch pwned3` "x'
    argv = _check_step_argv(tmp_path, hostile, reference="$(touch pwned4); touch pwned5")
    assert not list(tmp_path.glob("pwned*"))
    options = ["--fail-on", "error", "--format", "sarif", "--output", "out.sarif"]
    assert argv == ["check", "--reference", "$(touch pwned4); touch pwned5", *options, "--", *hostile.split()]


def test_action_paths_one_per_line_keep_spaces_and_globs_expand(tmp_path):
    for name in ("b.keras", "a.keras"):
        (tmp_path / name).touch()
    argv = _check_step_argv(tmp_path, "my models/model.ckpt\n  *.keras\n\n")
    assert argv[-3:] == ["my models/model.ckpt", "a.keras", "b.keras"]
    assert _check_step_argv(tmp_path, "one two")[-3:] == ["--", "one", "two"]


# ---- how the process ends -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "expected"), [("inspect", 0), ("check", 1)])
def test_a_closed_stdout_keeps_the_exit_code(command, expected):
    """`ckptdoctor check X >&-`: Python starts without sys.stdout; the output goes nowhere, the verdict stands."""
    process = subprocess.run(
        cli_command(command, FIXTURE_BUNDLES["finetune_trainable"]),
        stderr=subprocess.PIPE,
        text=True,
        timeout=CLI_TIMEOUT,
        env=cli_env(),
        preexec_fn=lambda: os.close(1),
    )
    assert (process.returncode, process.stderr) == (expected, "")


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "PYTHONUNBUFFERED"])
@pytest.mark.parametrize(
    "arguments",
    [
        ("--help",),  # argparse drops a failed write of the help, and exits 0
        ("--version",),
        ("inspect", "--help"),
        ("inspect", str(FIXTURE_BUNDLES["finetune_full"]), "--format", "json"),
        ("check", str(FIXTURE_BUNDLES["finetune_full"])),
        ("rules",),
    ],
    ids=lambda arguments: " ".join(arguments[:1] + arguments[2:]),
)
def test_output_that_cannot_be_written_is_an_error_not_a_pass(arguments, buffered):
    """Users' stdout is buffered, so a full disk shows at a flush; PYTHONUNBUFFERED makes it show at the write.
    Either way: exit 2 and one line, never a traceback or the command's 0 with its output lost."""
    env = cli_env() if buffered else cli_env({"PYTHONUNBUFFERED": "1"})
    with open("/dev/full", "w") as full:  # every write fails with ENOSPC, as on a full disk
        process = subprocess.run(
            cli_command(*arguments),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=CLI_TIMEOUT,
            env=env,
        )
    assert (process.returncode, process.stderr) == (
        2,
        "ckptdoctor: error: cannot write to stdout (No space left on device)\n",
    )


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through Linux's /proc")
@pytest.mark.parametrize(("chosen", "threads"), [(None, 1), ("2", 2)])
def test_the_command_line_asks_numpy_for_one_blas_thread_unless_the_user_chose(chosen, threads):
    """OpenBLAS starts a spinning thread per core at numpy's import; ckptdoctor multiplies no matrices. (A Keras
    file: h5py imports numpy, where a TF bundle's check needs none.)"""
    code = (
        "import atexit, os, sys\n"
        "atexit.register(lambda: sys.stderr.write(f\"THREADS {len(os.listdir('/proc/self/task'))} \""
        " f\"{'numpy' in sys.modules}\\n\"))\n"
        "from ckptdoctor.cli import main\n"
        f"sys.argv = ['ckptdoctor', 'check', {str(KERAS_FILES['healthy/model.weights.h5'])!r}]\n"
        "main()\n"
    )
    env = cli_env({"OPENBLAS_NUM_THREADS": chosen} if chosen else {})
    if chosen is None:
        env.pop("OPENBLAS_NUM_THREADS", None)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert f"THREADS {threads} True\n" in result.stderr


@pytest.mark.parametrize(("path", "expected"), [(FIXTURE_BUNDLES["finetune_full"], 0), ("/nonexistent/model", 2)])
def test_a_closed_stderr_keeps_the_exit_code(path, expected):
    """`check X 2>&-`: an error that cannot be shown is still an error (2), and a clean checkpoint still 0."""
    process = subprocess.run(
        cli_command("check", path),
        stdout=subprocess.DEVNULL,
        timeout=CLI_TIMEOUT,
        env=cli_env(),
        preexec_fn=lambda: os.close(2),
    )
    assert process.returncode == expected


@pytest.mark.parametrize("columns", ["²", "٣", "-5", "wide"])
def test_a_strange_columns_value_is_ignored_not_an_error(columns):
    """`²` is a digit to str.isdigit, not to int(): the width falls back as shutil's does."""
    for args in (["check", FIXTURE_BUNDLES["finetune_trainable"]], ["check", "--help"]):
        result = run_cli(*args, env={"COLUMNS": columns})
        assert result.returncode in (0, 1) and "unexpected" not in result.stderr, result.stderr


def test_a_name_ending_in_a_superscript_digit_is_listed(tmp_path):
    """Listings sort `vars/2` before `vars/10` by their digits; `conv1²` has a part that only looks like one."""
    prefix = write_bundle(tmp_path / "model.ckpt", {"net/bias1²".encode(): [1.0], b"net/bias10": [1.0]})
    result = run_cli("inspect", prefix)
    assert result.returncode == 0, result.stderr
    assert "bias1²" in result.stdout


def test_a_writing_command_whose_summary_cannot_be_shown_says_it_is_stdout(tmp_path):
    """`strip ... > /dev/full`: the checkpoint is written in full before anything is printed, so the one line
    names stdout, not the output checkpoint, and the exit code still says something failed."""
    out = tmp_path / "stripped" / "model.ckpt-20"
    with open("/dev/full", "w") as full:
        process = subprocess.run(
            cli_command("strip", FIXTURE_BUNDLES["finetune_full"], "--out", out),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=CLI_TIMEOUT,
            env=cli_env(),
        )
    assert (process.returncode, process.stderr) == (
        2,
        "ckptdoctor: error: cannot write to stdout (No space left on device)\n",
    )
    assert run_cli("check", out).returncode == 0  # the stripped checkpoint is complete and healthy
