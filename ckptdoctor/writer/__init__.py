"""Writers: every output is streamed to temporary files beside the target and renamed into place.

`write_checkpoint(source, Edits(...), out)` is the one entry point of every command that writes a checkpoint;
`writer_for(format)` picks the format's `CheckpointWriter`. Both are imported on first use, so that writing a
report (`writer.atomic`) loads no checkpoint writer."""

from __future__ import annotations

from ckptdoctor import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from ckptdoctor.writer.base import Edits, NewTensor, Replacement, Stored, Values
    from ckptdoctor.writer.checkpoint import WriteResult, write_checkpoint
    from ckptdoctor.writer.registry import writer_for

_LAZY = {
    "Edits": "ckptdoctor.writer.base",
    "NewTensor": "ckptdoctor.writer.base",
    "Replacement": "ckptdoctor.writer.base",
    "Stored": "ckptdoctor.writer.base",
    "Values": "ckptdoctor.writer.base",
    "WriteResult": "ckptdoctor.writer.checkpoint",
    "write_checkpoint": "ckptdoctor.writer.checkpoint",
    "writer_for": "ckptdoctor.writer.registry",
}
__all__ = [
    "Edits",
    "NewTensor",
    "Replacement",
    "Stored",
    "Values",
    "WriteResult",
    "write_checkpoint",
    "writer_for",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
