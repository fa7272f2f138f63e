"""Checkpoint readers, one module per format, chosen by `open_checkpoint`."""

from __future__ import annotations

import os

from ckptdoctor.formats.base import CheckpointReader, ScanResult
from ckptdoctor.formats.resolve import Resolved, resolve
from ckptdoctor.model import Storage

__all__ = ["CheckpointReader", "Resolved", "ScanResult", "open_checkpoint"]


def open_checkpoint(path: str | os.PathLike[str] | Resolved) -> tuple[CheckpointReader, Resolved]:
    """The reader for whatever checkpoint `path` means, and how it was resolved (or as already resolved:
    a writer reads back what it wrote as what it is, whatever its name suggests)."""
    resolved = path if isinstance(path, Resolved) else resolve(path)
    if resolved.storage is Storage.V1:
        from ckptdoctor.formats.tf_v1 import V1Reader

        return V1Reader(resolved.location), resolved
    if resolved.storage in (Storage.HDF5, Storage.ZIP):
        return _open_keras(resolved), resolved
    from ckptdoctor.formats.tf_bundle import BundleReader

    return BundleReader(resolved.location, resolved.format), resolved


def _open_keras(resolved: Resolved) -> CheckpointReader:
    from ckptdoctor.formats.keras_common import damaged_structure, open_hdf5
    from ckptdoctor.formats.keras_h5 import KerasH5Reader, is_legacy_layout
    from ckptdoctor.formats.keras_v3 import KerasV3Reader, is_v3_layout
    from ckptdoctor.model import CheckpointError

    if resolved.storage is Storage.ZIP:
        return KerasV3Reader(resolved.location)
    file = open_hdf5(resolved.location, resolved.location)  # opened once, handed to the reader that fits
    try:
        legacy, v3 = is_legacy_layout(file), is_v3_layout(file)
    except Exception as error:  # damaged root metadata
        file.close()
        raise damaged_structure(resolved.location, error) from None
    if legacy:
        return KerasH5Reader(resolved.location, file)
    if v3:
        return KerasV3Reader(resolved.location, file)
    file.close()
    raise CheckpointError(f"{resolved.location}: HDF5 file holds no Keras weights (no layer_names, no layers/)")
