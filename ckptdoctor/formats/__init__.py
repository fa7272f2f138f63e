"""Checkpoint readers, one module per format, chosen by `open_checkpoint`."""

from __future__ import annotations

import os

from ckptdoctor.formats.base import CheckpointReader, ScanResult
from ckptdoctor.formats.resolve import Resolved, resolve

__all__ = ["CheckpointReader", "Resolved", "ScanResult", "open_checkpoint"]


def open_checkpoint(path: str | os.PathLike[str]) -> tuple[CheckpointReader, Resolved]:
    """The reader for whatever checkpoint `path` means, and how it was resolved."""
    resolved = resolve(path)
    if resolved.kind == "v1":
        from ckptdoctor.formats.tf_v1 import V1Reader

        return V1Reader(resolved.location), resolved
    from ckptdoctor.formats.tf_bundle import BundleReader

    return BundleReader(resolved.location, resolved.format), resolved
