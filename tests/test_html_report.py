"""check --format html and --format markdown: a self-contained page with BatchNorm charts, and a compact table.

The checkpoints are built here with the project's bundle writer: healthy layers, one layer each broken the
ways the rules know (statistics at init, a negative variance, NaN, statistics missing), one named by an
attacker, and a reference training started from. The page is parsed as XML (it is well-formed by design),
searched for anything it would load from elsewhere, and rendered in headless Chromium where one is installed."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import FLOAT32, ROOT, run_cli
from test_forged_output import _run_scripts

from ckptdoctor.formats.crc import crc32c, mask
from ckptdoctor.model import BatchNormLayer, BatchNormStats, Finding, Report, Severity, StatisticSummary
from ckptdoctor.names import shown
from ckptdoctor.report import OutputFormat, render
from ckptdoctor.report import html as html_report
from ckptdoctor.report.markdown import code
from ckptdoctor.writer.bundle import BundleWriter

HOSTILE = "net/<script>alert('x')</script> \"q\" &amp; \x1b[31m\nline2 |pipe| `tick` ![i](http://e.x/i.png)"
CHANNELS = 16
LAYERS = 12
BROKEN = {2: "at-init", 5: "negative-variance", 8: "nan", 10: "missing", 11: "hostile"}


def _write_bundle(prefix: Path, tensors: dict[str, np.ndarray]) -> Path:
    writer = BundleWriter(str(prefix))
    for name, values in tensors.items():
        raw = values.astype("<f4").tobytes()
        writer.add(name.encode("utf-8", "surrogateescape"), FLOAT32, values.shape, raw, mask(crc32c(raw)))
    writer.commit()
    return prefix


def _layer_name(index: int) -> str:
    return HOSTILE if BROKEN.get(index) == "hostile" else f"net/block{index // 4}/conv{index % 4}/BatchNorm"


def _demo(directory: Path, layers: int = LAYERS, seed: int = 0) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A fine-tuned checkpoint with broken layers and the pretrained one it started from; returns both
    prefixes and the tensors of the fine-tuned one."""
    rng = np.random.default_rng(seed)
    pretrained: dict[str, np.ndarray] = {}
    finetuned: dict[str, np.ndarray] = {}
    for index in range(layers):
        scope = _layer_name(index)
        conv = scope.rpartition("/")[0]
        weights = rng.normal(0, 0.1, (3, CHANNELS)).astype("f4")
        pretrained[f"{conv}/weights"], finetuned[f"{conv}/weights"] = weights, weights + 0.01
        mean = rng.normal(0, 0.5, CHANNELS).astype("f4")
        variance = rng.uniform(0.2, 2.0, CHANNELS).astype("f4")
        pretrained[f"{scope}/beta"] = finetuned[f"{scope}/beta"] = np.zeros(CHANNELS, "f4")
        pretrained[f"{scope}/moving_mean"], pretrained[f"{scope}/moving_variance"] = mean, variance
        kind = BROKEN.get(index)
        if kind == "missing":
            continue
        if kind != "hostile":  # the updates ran, so the statistics moved; the hostile layer's never did (BN003)
            mean, variance = mean * (1 + (index + 1) / 10), variance * (1 + (index + 1) / 20)
        if kind == "at-init":
            mean, variance = np.zeros(CHANNELS, "f4"), np.ones(CHANNELS, "f4")
        elif kind == "negative-variance":
            variance = variance.copy()
            variance[:3] = -0.5
        elif kind == "nan":
            mean = mean.copy()
            mean[0] = np.nan
        finetuned[f"{scope}/moving_mean"], finetuned[f"{scope}/moving_variance"] = mean, variance
    (directory / "pretrained").mkdir(parents=True)
    (directory / "finetuned").mkdir()
    reference = _write_bundle(directory / "pretrained" / "model.ckpt", pretrained)
    target = _write_bundle(directory / "finetuned" / "model.ckpt-20", finetuned)
    return target, reference, finetuned


def _page(path: Path) -> ET.Element:
    """The page parsed as XML: it must be well-formed (a parse error fails the test)."""
    return ET.fromstring(path.read_text(encoding="utf-8").split("\n", 1)[1])


def _assert_self_contained(text: str, root: ET.Element) -> None:
    """Nothing to load: no script, link, image, frame, object or font, no url() or @import in styles, no
    href or src but same-page anchors."""
    loaders = {"script", "link", "img", "iframe", "object", "embed", "image", "use", "audio", "video", "source"}
    assert not [element.tag for element in root.iter() if element.tag in loaders]
    for element in root.iter():
        for attribute, value in element.attrib.items():
            if attribute in ("href", "src", "srcset", "xlink:href", "action", "data") or attribute.endswith("}href"):
                assert value.startswith("#"), (attribute, value)
            assert not attribute.startswith("on"), attribute
    styles = "".join(style.text or "" for style in root.iter("style"))
    assert "url(" not in styles and "@import" not in styles and "@font-face" not in styles
    assert not re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", text), "control characters in the page"


def test_html_report_charts_every_layer_and_groups_findings(tmp_path):
    target, reference, _ = _demo(tmp_path)
    out = tmp_path / "report.html"
    result = run_cli("check", target, "--reference", reference, "--format", "html", "--output", out)
    assert result.returncode == 1, result.stderr
    assert result.stdout == "" and result.stderr == ""
    text = out.read_text(encoding="utf-8")
    root = _page(out)
    _assert_self_contained(text, root)

    found = root.findall(".//tr[@class='layer']")
    by_name = {"".join(row.find("td").itertext()): row for row in found}
    assert len(by_name) == len(found) == LAYERS  # one row per layer
    rows = [by_name[shown(_layer_name(index))] for index in range(LAYERS)]
    for index, row in enumerate(rows):
        charts = row.findall(".//svg[@class='layer-chart']")
        changes = row.findall(".//svg[@class='change-chart']")
        missing = BROKEN.get(index) == "missing"
        assert len(charts) == (0 if missing else 2), index  # moving_mean and moving_variance drawn
        assert len(changes) == (0 if missing else 2), index  # how far each moved from the reference
    # the broken layers are marked with the rule that found them
    codes = {i: {"".join(b.itertext()) for b in rows[i].findall(".//span")} for i in range(LAYERS)}
    assert {"BN002"} <= codes[2] and {"BN004"} <= codes[5] and {"BN001"} <= codes[10] and {"BN003"} <= codes[11]
    assert not codes[0]

    # findings grouped by rule, each with its fix
    groups = {"".join(d.find("summary").find("span").itertext()): d for d in root.iter("details")}
    assert set(groups) == {"BN001", "BN002", "BN003", "BN004", "VAL001"}
    for group in groups.values():
        assert "".join(group.find("p").itertext()).startswith("Fix: ")

    # the hostile name is text, shown escaped, never markup
    assert not list(root.iter("script"))
    page_text = "".join(root.itertext())
    assert shown(HOSTILE) in page_text and "\x1b" not in text and "<script>alert" not in text


def test_batchnorm_stats_in_json_match_the_stored_values(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    target, reference, tensors = _demo(tmp_path)
    result = run_cli("check", target, "--reference", reference, "--format", "json")
    document = json.loads(result.stdout)
    jsonschema.validate(document, json.loads((ROOT / "docs" / "report.schema.json").read_text()))
    stats = {entry["layer"]: entry for entry in document["batchnorm_stats"]}
    assert len(stats) == LAYERS
    for index in range(LAYERS):
        entry = stats[shown(_layer_name(index))]
        if BROKEN.get(index) == "missing":
            assert entry["moving_mean"] is None and entry["mean_change"] is None
            continue
        for part in ("moving_mean", "moving_variance"):
            values = tensors[f"{_layer_name(index)}/{part}"].astype("f8")
            finite = values[np.isfinite(values)]
            summary = entry[part]
            assert summary["count"] == values.size and summary["nonfinite"] == values.size - finite.size
            expected = [finite.min(), *np.quantile(finite, (0.25, 0.5, 0.75)), finite.max(), finite.mean()]
            assert [summary[k] for k in ("min", "q1", "median", "q3", "max", "mean")] == pytest.approx(expected)
    # a layer at init moved from the reference; a healthy one by the factor the demo applied; the hostile not
    assert stats[shown(_layer_name(2))]["variance_change"] > 0
    mean = tensors[f"{_layer_name(4)}/moving_mean"].astype("f8")
    before = mean / (1 + 5 / 10)
    expected_change = np.abs(mean - before).max() / max(np.abs(mean).max(), np.abs(before).max())
    assert stats[shown(_layer_name(4))]["mean_change"] == pytest.approx(expected_change, rel=1e-5)
    assert stats[shown(HOSTILE)]["mean_change"] == stats[shown(HOSTILE)]["variance_change"] == 0
    # inspect reads no values, so it has no statistics
    listing = json.loads(run_cli("inspect", target, "--format", "json").stdout)
    assert "batchnorm_stats" not in listing


def _scale_report(layers: int) -> Report:
    """A report as check gives for a checkpoint of `layers` BatchNorm layers, every one with a finding: the
    page must stay small and readable however many there are."""
    rng = np.random.default_rng(1)
    batchnorm, stats, findings = [], [], []
    for index in range(layers):
        name = f"model/stage{index // 1000}/block{index % 1000}/bn"
        batchnorm.append(BatchNormLayer(name, f"{name}/gamma", f"{name}/beta", f"{name}/mean", f"{name}/variance"))
        low, high = sorted(rng.normal(0, 1, 2))
        variance = float(rng.uniform(0.1, 3)) if index != 777 else 1e12  # one layer far from the others
        mean = StatisticSummary(64, 0, low, low / 2, 0.0, high / 2, high, 0.0)
        stats.append(BatchNormStats(name, mean, StatisticSummary(64, 0, 0.01, 0.5, variance, 2, 3e12, 1), 0.0, 0.1))
        findings.append(Finding("BN003", "bn-stats-match-reference", Severity.WARNING, name, f"{name} same", "fix"))
    return Report(
        path="big",
        format="tf1-name-based",
        resolved="big",
        note=None,
        file="big.index",
        variables=(),
        batchnorm=tuple(batchnorm),
        findings=tuple(findings),
        batchnorm_stats=tuple(stats),
    )


def test_html_report_at_25000_layers_is_bounded(tmp_path):
    report = _scale_report(25_000)
    started = time.monotonic()
    text = render([report], OutputFormat.HTML, Severity.ERROR)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"rendering 25,000 layers took {elapsed:.1f} s"
    assert len(text.encode()) < 2_000_000, len(text.encode())
    page = tmp_path / "big.html"
    page.write_text(text, encoding="utf-8")
    root = _page(page)
    _assert_self_contained(text, root)
    overview = root.find(".//svg")  # the first chart is the overview of every layer
    assert overview is not None
    assert overview.get("class") == "overview" and "layer 25000" in "".join(overview.itertext())
    rows = root.findall(".//tr[@class='layer']")
    assert len(rows) == html_report.LAYER_ROWS  # the ones that matter most, not 25,000 rows
    assert "model/stage0/block777/bn" in {"".join(row.find("td").itertext()) for row in rows}
    items = root.findall(".//details/ul/li")
    assert len(items) == html_report.FINDINGS_PER_RULE + 1
    assert f"and {25_000 - html_report.FINDINGS_PER_RULE} more" in "".join(items[-1].itertext())


# ---- a real browser ---------------------------------------------------------------------------------------


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium); the page is still parsed as XML"
)


def _chromium(page: Path, *mode: str) -> subprocess.CompletedProcess[bytes]:
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        flags = ["--headless", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
        flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
        flags += ["--no-sandbox"] if os.geteuid() == 0 else []
        return subprocess.run([CHROMIUM, *flags, *mode, page.as_uri()], capture_output=True, timeout=60)


def _png_rows(png: bytes) -> list[bytes]:
    """The filtered scanlines of an 8-bit RGB(A) PNG: enough to tell a drawn page from a blank one."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", png[16:26])
    chunks, position = [], 8
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        if kind == b"IDAT":
            chunks.append(png[position + 8 : position + 8 + length])
        position += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = 1 + width * {2: 3, 6: 4}[colour] * depth // 8
    return [raw[row * stride : (row + 1) * stride] for row in range(height)]


@needs_chromium
def test_chromium_renders_the_report(tmp_path):
    target, reference, _ = _demo(tmp_path)
    page = tmp_path / "report.html"
    assert run_cli("check", target, "-r", reference, "-f", "html", "-o", page).returncode == 1
    screenshot = tmp_path / "shot.png"
    result = _chromium(page, f"--screenshot={screenshot}", "--window-size=1400,2000")
    assert screenshot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    rows = _png_rows(screenshot.read_bytes())
    assert len(rows) == 2000 and len(set(rows)) > 200  # text and charts drawn, not a blank or error page
    # what the browser built from the page: every layer row and chart, and no element the name smuggled in
    dom = _chromium(page, "--dump-dom").stdout.decode()
    assert dom.count('<tr class="layer">') == LAYERS
    assert dom.count('class="layer-chart"') == 2 * (LAYERS - 1)
    assert "<script" not in dom and "<img" not in dom


@needs_chromium
def test_chromium_renders_25000_layers(tmp_path):
    page = tmp_path / "big.html"
    page.write_text(render([_scale_report(25_000)], OutputFormat.HTML, Severity.ERROR), encoding="utf-8")
    dom = _chromium(page, "--dump-dom").stdout.decode()
    assert dom.count('<tr class="layer">') == html_report.LAYER_ROWS
    assert dom.count('class="overview"') == 1


# ---- markdown ---------------------------------------------------------------------------------------------


def test_markdown_table_keeps_hostile_names_as_text(tmp_path):
    from markdown_it import MarkdownIt

    target, reference, _ = _demo(tmp_path)
    result = run_cli("check", target, "--reference", reference, "--format", "markdown")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("### ckptdoctor check: ") and "fail" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| rule | severity | count | example subjects |"
    for row in table:  # every row has exactly four cells: no name added a column
        assert len(re.split(r"(?<!\\)\|", row)) == 6, row

    document = MarkdownIt("commonmark").enable("table").render(result.stdout)
    assert "<a " not in document and "<img" not in document and "<script" not in document
    cells = re.findall(r"<td[^>]*>(.*?)</td>", document)
    assert len(cells) == 4 * (len(table) - 2)
    spans = {span for cell in cells for span in re.findall(r"<code>(.*?)</code>", cell)}
    import html

    assert html.escape(shown(HOSTILE), quote=False) in {html.escape(html.unescape(s), quote=False) for s in spans}
    counts = {re.findall(r"<code>(.*?)</code>", cells[i])[0]: int(cells[i + 2]) for i in range(0, len(cells), 4)}
    assert counts == {"BN001": 1, "BN002": 1, "BN003": 1, "BN004": 1, "VAL001": 1}


@pytest.mark.parametrize("name", ["a|b", "`x`", "``", "a\\|b", " lead", "<b>", "[l](http://x)", "x\ny", ""])
def test_markdown_code_span_shows_the_escaped_name(name):
    from markdown_it import MarkdownIt

    document = MarkdownIt("commonmark").enable("table").render(f"| h |\n|---|\n| {code(name)} |\n")
    (cell,) = re.findall(r"<td>(.*?)</td>", document, re.S)
    if not name:
        assert cell == "<em>(empty)</em>"
        return
    import html

    assert cell == f"<code>{html.escape(shown(name), quote=False)}</code>"


def test_action_writes_the_markdown_summary(tmp_path):
    """The composite action's check step appends `check --format markdown` to the job summary when GitHub
    gives one, with the same paths and options as the SARIF run."""
    (check_script,) = [s for _, s in _run_scripts((ROOT / "action.yml").read_text()) if "ckptdoctor check" in s]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "ckptdoctor"
    stand_in.write_text(
        '#!/bin/bash\nprintf "%s " "$@" >> "$ARGV_FILE"; echo >> "$ARGV_FILE"\necho "| table |"\nexit 1\n'
    )
    stand_in.chmod(0o755)
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ARGV_FILE": str(tmp_path / "argv"),
        "GITHUB_OUTPUT": str(tmp_path / "github_output"),
        "GITHUB_STEP_SUMMARY": str(summary),
        "CKPTDOCTOR_PATHS": "a.ckpt b.keras",
        "CKPTDOCTOR_REFERENCE": "",
        "CKPTDOCTOR_FAIL_ON": "warning",
        "CKPTDOCTOR_SARIF_FILE": "out.sarif",
        "CKPTDOCTOR_JOB_SUMMARY": "true",
    }
    result = subprocess.run(["bash", "-c", check_script], cwd=tmp_path, env=env, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "argv").read_text().splitlines()
    assert calls == [
        "check --fail-on warning --format sarif --output out.sarif -- a.ckpt b.keras ",
        "check --fail-on warning --format markdown -- a.ckpt b.keras ",
    ]
    assert summary.read_text() == "earlier step\n| table |\n"
    assert (tmp_path / "github_output").read_text() == "status=1\n"  # the SARIF run's status decides

    (tmp_path / "argv").unlink()
    subprocess.run(["bash", "-c", check_script], cwd=tmp_path, env={**env, "CKPTDOCTOR_JOB_SUMMARY": "false"})
    assert len((tmp_path / "argv").read_text().splitlines()) == 1


def test_overview_scale_puts_outliers_at_the_edge():
    summaries = [StatisticSummary(4, 0, -1.0, 0, 0, 0, 1.0, 0), StatisticSummary(4, 0, -1e30, 0, 0, 0, 1e30, 0)]
    scale = html_report._mean_scale(summaries, 100)
    assert scale.x(-1e30) == pytest.approx(100 * 0.03 / 1.06, abs=0.5) and scale.x(1e30) < 100
    assert scale.x(-math.inf) == 0 and scale.x(math.inf) == 100  # never off the chart
