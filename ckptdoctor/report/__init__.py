"""Reporters: one per output format, each `render(reports, threshold) -> str`, chosen from `RENDERERS`.

A reporter module is imported when its format is first rendered: JSON output must not pay for rich (text)
or the rule catalogue (SARIF, JUnit) at start-up. The live terminal path (`check` to a terminal, in colour)
is `report.text.render_check`; the registered text renderer is the plain text used for `--output`."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from enum import Enum

from ckptdoctor import TYPE_CHECKING  # not typing's: see ckptdoctor/__init__.py

if TYPE_CHECKING:
    from ckptdoctor.model import Report, Severity

Renderer = Callable[[Sequence["Report"], "Severity"], str]  # (reports, threshold) -> the document


class OutputFormat(str, Enum):
    """What `check --format` writes."""

    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"
    JUNIT = "junit"
    GITHUB = "github"
    HTML = "html"
    MARKDOWN = "markdown"


def _module_render(module: str) -> Renderer:
    """`ckptdoctor.report.<module>.render`, imported on the first call."""

    def render(reports: Sequence[Report], threshold: Severity) -> str:
        reporter: Renderer = importlib.import_module(f"ckptdoctor.report.{module}").render
        return reporter(reports, threshold)

    render.__qualname__ = render.__name__ = f"render_{module}"
    return render


RENDERERS: dict[OutputFormat, Renderer] = {
    OutputFormat.TEXT: _module_render("text"),
    OutputFormat.JSON: _module_render("json"),
    OutputFormat.SARIF: _module_render("sarif"),
    OutputFormat.JUNIT: _module_render("junit"),
    OutputFormat.GITHUB: _module_render("github"),
    OutputFormat.HTML: _module_render("html"),
    OutputFormat.MARKDOWN: _module_render("markdown"),
}


def render(reports: Sequence[Report], output_format: OutputFormat, threshold: Severity) -> str:
    """The reports as one document in `output_format`; `threshold` is the lowest severity that fails."""
    return RENDERERS[OutputFormat(output_format)](reports, threshold)
