"""Every path form a user may type resolves to the checkpoint they mean, with a note saying what was chosen."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import KERAS, TF1, copy_checkpoint, realworld

from ckptdoctor.formats.resolve import resolve
from ckptdoctor.model import CheckpointError, Format, Storage

PREFIX = TF1 / "finetune_full" / "model.ckpt-20"
KERAS_HEALTHY = KERAS / "healthy"
SAVEDMODEL = KERAS_HEALTHY / "savedmodel"


@pytest.mark.parametrize(
    "given", [PREFIX, f"{PREFIX}.index", f"{PREFIX}.data-00000-of-00001", f"{PREFIX}.meta", PREFIX.parent]
)
def test_every_form_of_a_tf1_checkpoint(given):
    resolved = resolve(given)
    assert (resolved.storage, resolved.location) == (Storage.BUNDLE, str(PREFIX))


def test_member_file_and_directory_get_a_note():
    assert "model.ckpt-20" in resolve(f"{PREFIX}.data-00000-of-00001").note
    assert "latest" in resolve(PREFIX.parent).note
    assert resolve(PREFIX).note is None


def test_directory_uses_state_file_latest():
    resolved = resolve(realworld("tfx_estimator_name_based"))
    assert resolved.location.endswith("model.ckpt-1000")  # not -999, which sorts after it by name


def test_directory_without_state_file_takes_newest(tmp_path):
    older = copy_checkpoint(TF1 / "pretrained" / "model.ckpt", tmp_path)
    newer = copy_checkpoint(PREFIX, tmp_path)
    os.utime(f"{older}.index", (1, 1))
    resolved = resolve(tmp_path)
    assert resolved.location == str(newer)
    assert "no checkpoint state file" in resolved.note


def test_moved_directory_with_absolute_state_paths(tmp_path):
    prefix = copy_checkpoint(PREFIX, tmp_path)
    (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "/gone/elsewhere/{prefix.name}"\n')
    assert resolve(tmp_path).location == str(prefix)


def test_savedmodel_directory_and_its_variables_prefix():
    directory = realworld("serving_sm_half_plus_two_tf2")
    for given in (directory, directory / "variables" / "variables"):
        resolved = resolve(given)
        assert resolved.format == "tf-savedmodel"
        assert resolved.location == str(directory / "variables" / "variables")


def test_v1_checkpoint_is_recognised():
    path = realworld("serving_v1_half_plus_two/export-00000-of-00001")
    assert resolve(path).storage is Storage.V1


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "no such file or checkpoint prefix"),
        ("empty_dir", "no checkpoint in this directory"),
        ("text_file", "not a recognised checkpoint format"),
        ("data_without_index", "model.ckpt-20.index is missing"),
        ("bad_state_file", "not a valid checkpoint state file"),
    ],
)
def test_unreadable_paths_give_one_line_errors(tmp_path, setup, message):
    target = tmp_path / "model.ckpt-20"
    if setup == "empty_dir":
        target = tmp_path
    elif setup == "text_file":
        target.write_text("hello")
    elif setup == "data_without_index":
        shutil.copy(f"{PREFIX}.data-00000-of-00001", tmp_path)
        target = tmp_path / "model.ckpt-20.data-00000-of-00001"
    elif setup == "bad_state_file":
        (tmp_path / "checkpoint").write_text("this is { not text format")
        target = tmp_path
    with pytest.raises(CheckpointError, match=message) as error:
        resolve(target)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("form", ["", "variables", "variables/variables", "saved_model.pb"])
def test_every_path_form_of_a_savedmodel_gets_one_format(form):
    resolved = resolve(SAVEDMODEL / form if form else SAVEDMODEL)
    assert (resolved.format, resolved.location) == ("tf-savedmodel", str(SAVEDMODEL / "variables" / "variables"))
    if form != "variables/variables":  # the prefix itself is what was asked for: nothing to explain
        assert str(SAVEDMODEL) in resolved.note


@pytest.mark.parametrize("name", ["model.h5", "model.weights.h5", "model.keras"])
def test_folder_with_one_keras_file_resolves_to_it_with_a_note(tmp_path, name):
    shutil.copy(KERAS_HEALTHY / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a checkpoint")  # sniffed and passed over
    resolved = resolve(tmp_path)
    assert resolved.location == str(tmp_path / name)
    assert resolved.note == f"using {name}, the only checkpoint file in {tmp_path}"


def test_folder_with_one_v1_file_resolves_to_it(tmp_path):
    shutil.copy(realworld("serving_v1_half_plus_two/export-00000-of-00001"), tmp_path / "export")
    resolved = resolve(tmp_path)
    assert (resolved.storage, resolved.location) == (Storage.V1, str(tmp_path / "export"))


def test_folder_with_several_checkpoint_files_names_them(tmp_path):
    for name in ("a.weights.h5", "b.keras"):
        shutil.copy(KERAS_HEALTHY / name.replace("a.", "model.").replace("b.", "model."), tmp_path / name)
    with pytest.raises(CheckpointError, match=r"2 checkpoint files here \(a.weights.h5, b.keras\): name one"):
        resolve(tmp_path)


def test_folder_file_reached_by_symlink_is_not_followed(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "model.keras").symlink_to(KERAS_HEALTHY / "model.keras")
    with pytest.raises(CheckpointError, match="no checkpoint in this directory"):
        resolve(tmp_path / "inside")


@pytest.mark.parametrize("given", ["export.meta", "export-?????-of-00001"])
def test_a_sharded_v1_save_is_reached_through_its_graph_or_tf_s_pattern(tmp_path, given):
    """Saver(sharded=True) in V1 writes `export-00000-of-00001` beside `export.meta`; TF names the checkpoint by
    the pattern `export-?????-of-00001` (tf.train.list_variables takes it), and a user may give the .meta."""
    shutil.copy(realworld("serving_v1_half_plus_two/export-00000-of-00001"), tmp_path / "export-00000-of-00001")
    (tmp_path / "export.meta").write_bytes(b"")  # the graph's bytes are not read to find the checkpoint
    resolved = resolve(tmp_path / given)
    assert (resolved.storage, resolved.location) == (Storage.V1, str(tmp_path / "export-00000-of-00001"))
    assert resolved.note == f"reading V1 checkpoint export-00000-of-00001 (given {given})"


def test_a_v1_save_in_several_files_is_refused_in_one_line(tmp_path):
    shutil.copy(realworld("serving_v1_half_plus_two/export-00000-of-00001"), tmp_path / "export-00000-of-00002")
    with pytest.raises(CheckpointError, match=r"export-\?{5}-of-00002: a V1 checkpoint in 2 files"):
        resolve(tmp_path / "export-?????-of-00002")


@pytest.mark.parametrize("name", ["export-?????-of-00001\n", "model.ckpt-20.index\n"])
def test_a_name_ending_in_a_newline_is_not_the_name_without_it(tmp_path, name):
    """`$` also matches before a final newline: `e-?????-of-00001<newline>` read e-00000-of-00001 (red-team)."""
    shutil.copy(realworld("serving_v1_half_plus_two/export-00000-of-00001"), tmp_path / "export-00000-of-00001")
    copy_checkpoint(PREFIX, tmp_path)
    with pytest.raises(CheckpointError):
        resolve(tmp_path / name)


@pytest.mark.parametrize(
    "given",
    [
        f"{SAVEDMODEL}/variables/./variables",
        f"{SAVEDMODEL}/variables//variables",
        f"{SAVEDMODEL}/./variables/variables.index",
    ],
)
def test_dot_and_doubled_slashes_read_as_pathlib_reads_them(given):
    """resolve splits paths itself (pathlib costs a listing ~3 ms): `.` and empty components are dropped as
    pathlib drops them, so a SavedModel's variables stay a SavedModel however the path is spelled."""
    assert resolve(given).format is Format.TF_SAVEDMODEL


def test_a_state_file_naming_dot_names_no_checkpoint(tmp_path):
    """`model_checkpoint_path: "."` names the directory itself: no checkpoint, so the newest index is taken, not
    a checkpoint named after the directory."""
    run = tmp_path / "run"
    run.mkdir()
    copy_checkpoint(TF1 / "pretrained" / "model.ckpt", run)
    (run / "model.ckpt.index").rename(run / "run.index")
    (run / "model.ckpt.data-00000-of-00001").rename(run / "run.data-00000-of-00001")
    newer = copy_checkpoint(PREFIX, run)
    os.utime(run / "run.index", (1, 1))
    (run / "checkpoint").write_text('model_checkpoint_path: "."\n')
    resolved = resolve(run)
    assert resolved.location == str(newer) and "state file names no existing checkpoint" in resolved.note


def test_a_member_named_by_a_trailing_slash_is_named_in_the_message(tmp_path):
    (tmp_path / "miss").mkdir()
    (tmp_path / "miss" / ".meta").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"index miss\.index is missing"):
        resolve(f"{tmp_path}/miss/.meta")
