"""The README's example outputs, from real runs of the CLI on the fixtures.

Each example block in README.md follows a marker line `<!-- example: NAME -->`; its content is the commands
of EXAMPLES[NAME] (as `$ ckptdoctor ...`) with what each printed, normalised (temporary paths, the version)
and shortened where long. Regenerate with

    python scripts/readme_examples.py --write

Without --write it compares and exits 1 naming each example that differs (tests/test_readme_examples.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
OUT = "/tmp/ckptdoctor-demo"  # what the temporary output directory is shown as
COLUMNS = 100  # the width the examples are rendered at
MARKER = re.compile(r"^<!-- example: ([a-z_]+) -->$")
JSON_LINE = 110  # a JSON member longer than this is shown one key a line
JSON_TEXT = 70  # characters of a long string (message, hint) an abridged JSON report keeps


def _abridge_listing(text: str) -> str:
    """inspect's table cut after the first layers, then its totals and BatchNorm summary whole."""
    lines = text.splitlines()
    totals = next(i for i, line in enumerate(lines) if line.startswith("totals by role"))
    return "\n".join([*lines[:12], "...", "", *lines[totals:]])


def _cut(value: object) -> object:
    if isinstance(value, str) and len(value) > JSON_TEXT:
        return value[:JSON_TEXT] + "..."
    return value


def _abridge_json(text: str) -> str:
    """The report with one element of each list, no chart data, long strings cut: its shape, readably."""
    report = json.loads(text)
    report.pop("batchnorm_stats", None)
    for key in ("variables", "batchnorm", "findings"):
        report[key] = [{k: _cut(v) for k, v in item.items()} for item in report[key][:1]]
    lines = ["{"]
    for index, (key, value) in enumerate(report.items()):
        comma = "," if index < len(report) - 1 else ""
        if isinstance(value, list) and len(json.dumps(value)) + len(key) + 6 > JSON_LINE:
            items = [_compact(" " * 4, item, "," if i < len(value) - 1 else "") for i, item in enumerate(value)]
            lines += [f'  "{key}": [', *items, f"  ]{comma}"]
        else:
            lines.append(_compact(f'  "{key}": ', value, comma))
    return "\n".join([*lines, "}"])


def _compact(prefix: str, value: object, comma: str) -> str:
    """`prefix` and the value on one line; an object too long for one: a member a line, under its brace."""
    line = f"{prefix}{json.dumps(value, ensure_ascii=False)}{comma}"
    if len(line) <= JSON_LINE or not isinstance(value, dict):
        return line
    members = [f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in value.items()]
    return prefix + "{" + (",\n" + " " * (len(prefix) + 1)).join(members) + "}" + comma


@dataclass(frozen=True)
class Example:
    commands: tuple[str, ...]  # ckptdoctor arguments, `{out}` for the temporary output directory
    shorten: Callable[[str], str] | None = None
    show_commands: bool = True
    exit_codes: tuple[int, ...] = field(default=(0, 1))


EXAMPLES = {
    "quickstart": Example(
        (
            "check fixtures/tf1/finetune_trainable",
            "patch fixtures/tf1/finetune_trainable --from fixtures/tf1/finetune_full --out {out}/model.ckpt-20 --force",
        )
    ),
    "inspect": Example(("inspect fixtures/tf1/finetune_full",), shorten=_abridge_listing),
    "check": Example(("check fixtures/keras/stats_init/model.weights.h5",)),
    "patch": Example(
        (
            "patch fixtures/keras/stats_removed/model.weights.h5 --from fixtures/keras/healthy/model.keras "
            "--out {out}/fixed.weights.h5",
        )
    ),
    "json": Example(
        ("check fixtures/keras/stats_nan/model.weights.h5 --format json",), shorten=_abridge_json, show_commands=False
    ),
}


def _version() -> str:
    sys.path.insert(0, str(ROOT))
    from ckptdoctor import __version__

    return __version__


def run(example: Example) -> str:
    """The block's text: each command and what it printed (stdout then stderr), normalised."""
    env = {**os.environ, "COLUMNS": str(COLUMNS), "TF_CPP_MIN_LOG_LEVEL": "3", "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    parts = []
    with tempfile.TemporaryDirectory(prefix="readme-") as out:
        for command in example.commands:
            args = shlex.split(command.format(out=out))
            done = subprocess.run(
                [sys.executable, "-m", "ckptdoctor", *args], cwd=ROOT, env=env, capture_output=True, text=True
            )
            if done.returncode not in example.exit_codes:
                raise SystemExit(f"readme example `ckptdoctor {command}` exited {done.returncode}: {done.stderr}")
            text = (done.stdout + done.stderr).replace(out, OUT).replace(_version(), "0.1.0")
            text = "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
            text = example.shorten(text) if example.shorten else text
            shown = f"$ ckptdoctor {command.format(out=OUT)}\n{text}" if example.show_commands else text
            parts.append(shown)
    return "\n\n".join(parts)


def blocks(readme: str) -> dict[str, tuple[int, int]]:
    """Each example's block content as (start, end) line indices in the README (fences excluded)."""
    lines = readme.splitlines()
    found = {}
    for index, line in enumerate(lines):
        match = MARKER.match(line)
        if match:
            start = index + 2  # the marker, then the opening fence
            end = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
            found[match.group(1)] = (start, end)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite README.md with fresh examples")
    parser.add_argument("--readme", type=Path, default=README, help="the README to compare or rewrite")
    options = parser.parse_args()
    readme = options.readme.read_text(encoding="utf-8")
    lines = readme.splitlines()
    places = blocks(readme)
    if set(places) != set(EXAMPLES):
        print(f"README example markers {sorted(places)} differ from {sorted(EXAMPLES)}", file=sys.stderr)
        return 1
    stale = []
    for name, (start, end) in sorted(places.items(), key=lambda item: -item[1][0]):  # last first: indices hold
        fresh = run(EXAMPLES[name]).splitlines()
        if lines[start:end] != fresh:
            stale.append(name)
            if not options.write:
                diff = difflib.unified_diff(lines[start:end], fresh, f"README {name}", "run", lineterm="")
                print("\n".join(diff))
            lines[start:end] = fresh
    if options.write:
        options.readme.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{options.readme.name}: {len(stale)} example(s) rewritten: {', '.join(sorted(stale)) or 'none'}")
        return 0
    if stale:
        print(f"README examples out of date: {', '.join(sorted(stale))}; run python scripts/readme_examples.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
