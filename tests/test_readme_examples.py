"""The README's example outputs are what the tool prints today (scripts/readme_examples.py runs it)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

GENERATOR = ROOT / "scripts" / "readme_examples.py"
README = ROOT / "README.md"


def _generator(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, GENERATOR, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_readme_examples_match_real_runs():
    result = _generator()
    assert result.returncode == 0, f"{result.stdout}{result.stderr}"


def test_a_stale_example_is_caught(tmp_path):
    """The comparison can fail: one changed output line in a copy of the README is named, with its diff."""
    stale = README.read_text(encoding="utf-8").replace("4 findings: 4 errors", "3 findings: 3 errors", 1)
    copy = tmp_path / "README.md"
    copy.write_text(stale, encoding="utf-8")
    result = _generator("--readme", copy)
    assert result.returncode == 1
    assert "README examples out of date: quickstart" in result.stdout
    assert "+4 findings: 4 errors" in result.stdout


def test_quick_start_output_fits_the_terminal():
    """Every output line of the Quick start (rendered at 100 columns) fits them, with no trailing spaces."""
    readme = README.read_text(encoding="utf-8").splitlines()
    start = readme.index("<!-- example: quickstart -->") + 2
    block = readme[start : readme.index("```", start)]
    output = [line for line in block if not line.startswith("$ ")]
    assert len(output) > 20
    assert all(len(line) <= 100 and line == line.rstrip() for line in output), output
