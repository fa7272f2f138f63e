"""The `checkpoint` state file that names a directory's latest checkpoint."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from ckptdoctor.formats import protos
from ckptdoctor.formats.resolve import STATE_FILE, read_state_file
from ckptdoctor.writer.atomic import write_atomically


def write_state_file(prefix: str) -> None:
    """Name `prefix` as the latest checkpoint of its directory, keeping the checkpoints already listed."""
    directory = Path(prefix).parent
    state = read_state_file(directory) or protos.CheckpointState()
    name = Path(prefix).name
    paths = [p for p in state.all_model_checkpoint_paths if Path(p).name != name]
    del state.all_model_checkpoint_paths[:]
    del state.all_model_checkpoint_timestamps[:]  # they would no longer pair with the paths
    state.all_model_checkpoint_paths.extend([*paths, name])
    state.model_checkpoint_path = name
    write_atomically(directory / STATE_FILE, text_format.MessageToString(state).encode())
