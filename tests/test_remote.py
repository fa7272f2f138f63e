"""Checkpoints behind HTTP and in buckets, read by byte range: a real HTTP server (with ranges, counting what it
sends), moto's S3 API server, a GCS emulator (counting what it sends) and Azurite, all on 127.0.0.1 and started
here; the CLI runs as a real subprocess."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import FIXTURE_BUNDLES, FIXTURES, KERAS, TF1, realworld, run_cli
from remote_servers import Azurite, GcsEmulator, HttpServer, free_port, s3_env
from synthetic import write_synthetic

pytest.importorskip("fsspec", reason="fsspec not installed (a dependency of ckptdoctor)")

BIG = 8 << 20  # the synthetic checkpoint's tensor bytes: a listing must fetch a tiny part of this


def _report(result) -> dict:
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    for field in ("path", "resolved", "file", "note"):
        report.pop(field)
    return report


@pytest.fixture
def http(tmp_path):
    pytest.importorskip("aiohttp", reason="aiohttp not installed (the [http] extra)")
    root = tmp_path / "srv"
    root.mkdir()
    server = HttpServer(root)
    yield server
    server.close()


@pytest.fixture
def synthetic(http) -> Path:
    """A two-shard TF1 bundle of 8 MiB at /run/model.ckpt-5 on the HTTP server."""
    prefix = http.root / "run" / "model.ckpt-5"
    prefix.parent.mkdir()
    write_synthetic(prefix, BIG, 400, shards=2)
    return prefix


def test_inspect_over_http_fetches_the_index_only(http, synthetic):
    local = run_cli("inspect", "-f", "json", synthetic)
    remote = run_cli("--stats", "inspect", "-f", "json", f"{http.url}/run/model.ckpt-5")
    assert _report(remote) == _report(local)
    served = http.served
    assert set(served.sent) == {"/run/model.ckpt-5.index"}, served.lines  # no data shard is read
    assert served.total_sent() < 64 << 10 and served.total_requests() <= 6, served.lines
    # --stats says what the server saw: the same bytes (requests: ours count a HEAD fsspec retries as one)
    total = re.search(r"remote reads in all: (\d+) requests, ([\d,]+) bytes", remote.stderr)
    assert total, remote.stderr
    assert int(total.group(2).replace(",", "")) == served.total_sent()
    assert 0 < int(total.group(1)) <= served.total_requests()


def test_check_over_http_reads_every_byte_once(http, synthetic):
    local = run_cli("check", "-f", "json", synthetic)
    remote = run_cli("check", "-f", "json", f"{http.url}/run/model.ckpt-5")
    assert remote.returncode == local.returncode, remote.stderr
    assert _report(remote) == _report(local)
    sizes = {f"/run/{file.name}": file.stat().st_size for file in synthetic.parent.iterdir()}
    assert dict(http.served.sent) == sizes  # each file fetched exactly once, whole, and nothing else


def test_check_larger_than_the_cache_reads_every_byte_once(http):
    """Past the read cache (32 MiB), only reading in the shards' order keeps each byte to one fetch: the
    index's key order jumps back and forth between tensors, and read-ahead windows are dropped before use."""
    from ckptdoctor.formats.remote import MAX_CACHED_BYTES

    prefix = http.root / "big" / "model.ckpt-1"
    prefix.parent.mkdir()
    write_synthetic(prefix, MAX_CACHED_BYTES + (8 << 20), 1200, shards=2)
    result = run_cli("check", "-f", "json", f"{http.url}/big/model.ckpt-1")
    assert result.returncode == 0, result.stderr
    sizes = {f"/big/{file.name}": file.stat().st_size for file in prefix.parent.iterdir()}
    assert sum(sizes.values()) > MAX_CACHED_BYTES
    assert dict(http.served.sent) == sizes
    assert all(http.served.overlapping(path) == [] for path in sizes)


def test_http_directory_needs_its_state_file(http, synthetic):
    refused = run_cli("inspect", f"{http.url}/run/")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "plain HTTP cannot list" in refused.stderr
    # TF1 Savers write absolute paths of the training machine: only the name is taken, inside the directory
    (synthetic.parent / "checkpoint").write_text('model_checkpoint_path: "/home/train/../run/model.ckpt-5"\n')
    for url in (f"{http.url}/run/", f"{http.url}/run"):  # with or without the slash
        found = run_cli("inspect", "-f", "json", url)
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["resolved"] == f"{http.url}/run/model.ckpt-5"


def test_http_member_file_and_missing_prefix(http, synthetic):
    member = run_cli("inspect", "-f", "json", f"{http.url}/run/model.ckpt-5.data-00001-of-00002")
    assert member.returncode == 0, member.stderr
    assert json.loads(member.stdout)["resolved"] == f"{http.url}/run/model.ckpt-5"
    missing = run_cli("inspect", f"{http.url}/run/model.ckpt-6")
    assert missing.returncode == 2
    assert missing.stderr == f"ckptdoctor: error: {http.url}/run/model.ckpt-6: no such file or checkpoint prefix\n"


@pytest.mark.parametrize("name", ["model.keras", "model.weights.h5", "model.h5"])
def test_keras_files_over_http(http, name):
    shutil.copy(KERAS / "stats_removed" / name, http.root / name)
    for command in ("inspect", "check"):
        local = run_cli(command, "-f", "json", KERAS / "stats_removed" / name)
        remote = run_cli(command, "-f", "json", f"{http.url}/{name}")
        assert remote.returncode == local.returncode, remote.stderr
        assert _report(remote) == _report(local)


def test_tf2_object_graph_over_http(http):
    shutil.copytree(KERAS / "healthy" / "savedmodel", http.root / "sm")
    local = run_cli("inspect", "-f", "json", KERAS / "healthy" / "savedmodel")
    remote = run_cli("inspect", "-f", "json", f"{http.url}/sm/")  # a SavedModel directory: its variables/
    assert _report(remote) == _report(local)
    assert json.loads(remote.stdout)["format"] == "tf-savedmodel"


def test_tokens_and_passwords_never_printed(http, synthetic):
    http.token = "s3cr3t-token"
    url = f"http://alice:pa55word@127.0.0.1:{http.port}/run/model.ckpt-5?token=s3cr3t-token"
    result = run_cli("--stats", "check", "-f", "json", url)
    assert result.returncode == 0, result.stderr
    assert all("token=s3cr3t-token" in line for line in http.served.lines if line.startswith("GET"))
    wrong = run_cli("--stats", "inspect", url.replace("token=s3cr3t-token", "token=stolen-guess"))
    assert wrong.returncode == 2 and "HTTP 403" in wrong.stderr
    for output in (result.stdout, result.stderr, wrong.stdout, wrong.stderr):
        assert "s3cr3t" not in output and "pa55word" not in output and "alice" not in output
        assert "stolen-guess" not in output
    assert json.loads(result.stdout)["path"] == f"{http.url}/run/model.ckpt-5"


def test_redirect_to_another_host_is_refused(http):
    shutil.copy(KERAS / "healthy" / "model.weights.h5", http.root / "model.weights.h5")
    http.redirects["/alias.weights.h5"] = "/model.weights.h5"  # same host: followed
    http.redirects["/away.weights.h5"] = f"http://localhost:{http.port}/model.weights.h5"
    assert run_cli("inspect", f"{http.url}/alias.weights.h5").returncode == 0
    away = run_cli("inspect", f"{http.url}/away.weights.h5")
    assert away.returncode == 2
    assert away.stderr.count("\n") == 1 and "redirects to another host (localhost)" in away.stderr, away.stderr
    assert not any(line.startswith("GET /model.weights.h5") for line in http.served.lines[-3:])


def test_match_reads_the_meta_graph_by_url(http):
    """`match CKPT_URL --meta-graph META_URL` as locally; a meta graph over the size cap is refused from its
    size alone (no byte of it fetched); a missing one is one line."""
    from ckptdoctor.formats.meta_graph import MAX_META_BYTES

    match = FIXTURES / "match"
    shutil.copytree(match / "counter", http.root / "counter")
    shutil.copy(match / "model.meta", http.root / "model.meta")
    local = run_cli("match", "-f", "json", match / "counter", "--meta-graph", match / "model.meta")
    remote = run_cli("match", "-f", "json", f"{http.url}/counter/model.ckpt", "--meta-graph", f"{http.url}/model.meta")
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert _report(remote) == _report(local)
    with (http.root / "huge.meta").open("wb") as huge:
        huge.truncate(MAX_META_BYTES + 1)
    refused = run_cli("match", f"{http.url}/counter/model.ckpt", "--meta-graph", f"{http.url}/huge.meta")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"{http.url}/huge.meta: it is larger than 64 MiB, not read" in refused.stderr
    assert http.served.sent["/huge.meta"] == 0
    missing = run_cli("match", f"{http.url}/counter/model.ckpt", "--meta-graph", f"{http.url}/gone.meta")
    assert missing.returncode == 2
    assert missing.stderr == f"ckptdoctor: error: {http.url}/gone.meta: meta graph file not found\n"


def test_stale_statistics_use_the_meta_graph_beside_a_remote_checkpoint(http):
    """bn-stats-stale reads the decays from PREFIX.meta beside the checkpoint, over HTTP as on disk."""
    shutil.copytree(FIXTURES / "stale" / "steps_10", http.root / "steps_10")
    local = run_cli("check", "-f", "json", FIXTURES / "stale" / "steps_10" / "model.ckpt-10")
    remote = run_cli("check", "-f", "json", f"{http.url}/steps_10/model.ckpt-10")
    assert remote.returncode == local.returncode, remote.stderr
    assert _report(remote) == _report(local)
    assert any(finding["code"] == "BN005" for finding in json.loads(remote.stdout)["findings"])
    assert (
        http.served.sent["/steps_10/model.ckpt-10.meta"] == (http.root / "steps_10/model.ckpt-10.meta").stat().st_size
    )


def test_server_without_ranges_is_one_line(http, synthetic):
    http.ignore_ranges = True
    result = run_cli("check", f"{http.url}/run/model.ckpt-5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "ignored the byte range" in result.stderr, result.stderr


def test_file_url_reads_as_the_local_path(tmp_path):
    local = run_cli("inspect", "-f", "json", FIXTURE_BUNDLES["finetune_full"])
    as_url = run_cli("inspect", "-f", "json", f"file://{FIXTURE_BUNDLES['finetune_full']}")
    assert _report(as_url) == _report(local)


def test_missing_store_library_says_which_extra(tmp_path):
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    result = run_cli("inspect", "gs://bucket/run/model.ckpt")
    assert result.returncode == 2
    assert "needs gcsfs" in result.stderr and "ckptdoctor[gcs]" in result.stderr and result.stderr.count("\n") == 1


def test_stats_without_remote_reads():
    result = run_cli("--stats", "inspect", FIXTURE_BUNDLES["finetune_full"])
    assert result.returncode == 0
    assert result.stderr == "ckptdoctor: stats: no remote reads\n"


# ---- S3: moto's server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("s3fs", reason="s3fs not installed (the [s3] extra)")
    server_module = pytest.importorskip("moto.server", reason="moto[server] not installed (the dev extra)")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    yield endpoint
    server.stop()


@pytest.fixture
def bucket(s3, request):
    """A fresh bucket, and an s3fs filesystem to put fixtures in and look at what the CLI wrote."""
    import s3fs

    env = s3_env(s3)
    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"], endpoint_url=s3)
    name = re.sub(r"[^a-z0-9]", "-", request.node.name.lower())[:50].strip("-")
    fs.mkdir(name)
    yield fs, name, env
    fs.rm(name, recursive=True)


def test_s3_directory_by_listing_and_savedmodel(bucket):
    fs, name, env = bucket
    fs.put(str(TF1 / "finetune_full") + "/", f"{name}/run/", recursive=True)
    fs.rm(f"{name}/run/checkpoint")  # no state file: the listing finds the one index
    listed = run_cli("inspect", "-f", "json", f"s3://{name}/run", env=env)
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert report["resolved"] == f"s3://{name}/run/model.ckpt-20" and "no checkpoint state file" in report["note"]
    assert _report(listed) == _report(run_cli("inspect", "-f", "json", FIXTURE_BUNDLES["finetune_full"]))
    fs.put(str(KERAS / "healthy" / "savedmodel") + "/", f"{name}/sm/", recursive=True)
    savedmodel = run_cli("check", "-f", "json", f"s3://{name}/sm", env=env)
    assert savedmodel.returncode == 0, savedmodel.stderr
    assert json.loads(savedmodel.stdout)["format"] == "tf-savedmodel"


def test_patch_reads_and_writes_s3(bucket):
    fs, name, env = bucket
    fs.put(str(TF1 / "finetune_trainable") + "/", f"{name}/trainable/", recursive=True)
    before = fs.cat(f"{name}/trainable/model.ckpt-20.index")
    target, out = f"s3://{name}/trainable/model.ckpt-20", f"s3://{name}/fixed/model.ckpt"
    assert run_cli("check", target, env=env).returncode == 1  # statistics missing
    patched = run_cli("patch", target, "--from", FIXTURE_BUNDLES["finetune_full"], "--out", out, env=env)
    assert patched.returncode == 0, patched.stderr
    assert sorted(fs.ls(f"{name}/fixed")) == [
        f"{name}/fixed/checkpoint",
        f"{name}/fixed/model.ckpt.data-00000-of-00001",
        f"{name}/fixed/model.ckpt.index",
    ]
    assert run_cli("check", out, env=env).returncode == 0
    assert run_cli("check", f"s3://{name}/fixed", env=env).returncode == 0  # found through its state file
    again = run_cli("patch", target, "--from", FIXTURE_BUNDLES["finetune_full"], "--out", out, env=env)
    assert again.returncode == 2 and "use --force" in again.stderr
    onto_input = run_cli(
        "patch", target, "--from", FIXTURE_BUNDLES["finetune_full"], "--out", target, "--force", env=env
    )
    assert onto_input.returncode == 2 and "must not be one of the inputs" in onto_input.stderr
    assert fs.cat(f"{name}/trainable/model.ckpt-20.index") == before


def test_s3_output_replaces_an_older_checkpoint_whole_and_names_itself_latest(bucket, tmp_path):
    """An output over a 2-shard checkpoint (with --force): the old shards go, and the directory's state file
    names the new checkpoint as latest and still lists the other one, as TF's Saver and a local write do."""
    from ckptdoctor.formats.state_file import parse_state

    fs, name, env = bucket
    old = tmp_path / "old" / "model.ckpt"
    old.parent.mkdir()
    write_synthetic(old, 1 << 16, 8, shards=2)
    (old.parent / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-9"\nall_model_checkpoint_paths: "model.ckpt-9"\n'
    )
    fs.put(str(old.parent) + "/", f"{name}/out/", recursive=True)
    out = f"s3://{name}/out/model.ckpt"
    args = ("patch", FIXTURE_BUNDLES["finetune_trainable"], "--from", FIXTURE_BUNDLES["finetune_full"], "--out", out)
    refused = run_cli(*args, env=env)
    assert refused.returncode == 2 and "use --force" in refused.stderr
    assert len(fs.ls(f"{name}/out")) == 4  # nothing written
    patched = run_cli(*args, "--force", env=env)
    assert patched.returncode == 0, patched.stderr
    assert f"s3://{name}/out/checkpoint: latest was model.ckpt-9, now model.ckpt" in patched.stdout
    assert sorted(fs.ls(f"{name}/out", refresh=True)) == [
        f"{name}/out/checkpoint",
        f"{name}/out/model.ckpt.data-00000-of-00001",
        f"{name}/out/model.ckpt.index",
    ]
    state = parse_state(fs.cat(f"{name}/out/checkpoint"), "checkpoint")
    assert state.model_checkpoint_path == "model.ckpt"
    assert list(state.all_model_checkpoint_paths) == ["model.ckpt-9", "model.ckpt"]
    assert run_cli("check", f"s3://{name}/out/", env=env).returncode == 0


def test_s3_damaged_state_file_stops_the_write_before_any_upload(bucket):
    fs, name, env = bucket
    fs.pipe(f"{name}/out/checkpoint", b"\xff\xfe not a state file")
    out = f"s3://{name}/out/model.ckpt"
    result = run_cli(
        "patch",
        FIXTURE_BUNDLES["finetune_trainable"],
        "--from",
        FIXTURE_BUNDLES["finetune_full"],
        "--out",
        out,
        env=env,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"s3://{name}/out/checkpoint: not a valid checkpoint state file" in result.stderr
    assert fs.ls(f"{name}/out", refresh=True) == [f"{name}/out/checkpoint"]


def test_upload_puts_every_file_at_a_temporary_key_then_the_index_then_the_state_file(tmp_path):
    """What a store sees during a remote write, recorded by the store itself (fsspec's memory filesystem)."""
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from ckptdoctor.patch import patch
    from ckptdoctor.writer.atomic import TEMP_MARKER

    class RecordingFileSystem(MemoryFileSystem):
        protocol = "recording"
        store: dict = {}  # noqa: RUF012 - fsspec's memory filesystems keep their files on the class
        pseudo_dirs = [""]  # noqa: RUF012
        log: list[tuple[str, str]] = []  # noqa: RUF012

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path.replace("recording://", "memory://", 1))

        def put_file(self, lpath, rpath, *args, **kwargs):
            self.log.append(("put", rpath))
            return super().put_file(lpath, rpath, *args, **kwargs)

        def mv(self, path1, path2, *args, **kwargs):
            self.log.append(("mv", path2))
            return super().mv(path1, path2, *args, **kwargs)

    fsspec.register_implementation("recording", RecordingFileSystem, clobber=True)
    result = patch(
        FIXTURE_BUNDLES["finetune_trainable"], FIXTURE_BUNDLES["finetune_full"], "recording://out/model.ckpt"
    )
    log = RecordingFileSystem.log
    puts, moves = [path for op, path in log if op == "put"], [path for op, path in log if op == "mv"]
    assert [op for op, _ in log] == ["put"] * len(puts) + ["mv"] * len(moves)  # every upload before any move
    assert all(TEMP_MARKER in path for path in puts)
    assert len(moves) == 3 and moves[0].endswith(".data-00000-of-00001")  # data first,
    assert moves[1].endswith("model.ckpt.index") and moves[2].endswith("/out/checkpoint")  # the state file last
    assert sorted(RecordingFileSystem().find("/out")) == [
        "/out/checkpoint",
        "/out/model.ckpt.data-00000-of-00001",
        "/out/model.ckpt.index",
    ]
    assert result.out == "recording://out/model.ckpt"


# ---- GCS: gcp-storage-emulator ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gcs():
    pytest.importorskip("gcsfs", reason="gcsfs not installed (the [gcs] extra)")
    pytest.importorskip("gcp_storage_emulator", reason="gcp-storage-emulator not installed (the dev extra)")
    emulator = GcsEmulator()
    yield emulator
    emulator.close()


def test_gcs_inspect_fetches_the_index_only_and_check_every_byte_once(gcs, tmp_path):
    fs = gcs.filesystem()
    fs.mkdir("ckpt-gcs")
    prefix = tmp_path / "run" / "model.ckpt-5"
    prefix.parent.mkdir()
    write_synthetic(prefix, BIG, 400, shards=2)
    gcs.put(prefix.parent, "ckpt-gcs/run/")
    gcs.sent.clear()
    listed = run_cli("inspect", "-f", "json", "gs://ckpt-gcs/run/", env=gcs.env())  # no state file: listed
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["resolved"] == "gs://ckpt-gcs/run/model.ckpt-5"
    assert _report(listed) == _report(run_cli("inspect", "-f", "json", prefix))
    index = prefix.parent / "model.ckpt-5.index"
    assert dict(gcs.sent) == {"ckpt-gcs/run/model.ckpt-5.index": index.stat().st_size}  # no data shard read
    gcs.sent.clear()
    checked = run_cli("check", "-f", "json", "gs://ckpt-gcs/run/model.ckpt-5", env=gcs.env())
    local = run_cli("check", "-f", "json", prefix)
    assert checked.returncode == local.returncode, checked.stderr
    assert _report(checked) == _report(local)
    assert dict(gcs.sent) == {f"ckpt-gcs/run/{file.name}": file.stat().st_size for file in prefix.parent.iterdir()}


def test_gcs_missing_object_is_one_line(gcs):
    gcs.filesystem().mkdir("ckpt-gcs-missing")
    result = run_cli("inspect", "gs://ckpt-gcs-missing/run/model.ckpt-1", env=gcs.env())
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "gs://ckpt-gcs-missing/run/model.ckpt-1" in result.stderr


def test_patch_writes_gcs_and_the_result_reads_back(gcs, tmp_path):
    """gs:// as an output: the files go up, the state file names the checkpoint, and the result checks clean
    and equals the same patch written locally, tensor by tensor."""
    fs = gcs.filesystem()
    fs.mkdir("ckpt-gcs-out")
    out = "gs://ckpt-gcs-out/fixed/model.ckpt"
    args = ("patch", FIXTURE_BUNDLES["finetune_trainable"], "--from", FIXTURE_BUNDLES["finetune_full"], "--out")
    patched = run_cli(*args, out, env=gcs.env())
    assert patched.returncode == 0, patched.stderr
    assert sorted(fs.ls("ckpt-gcs-out/fixed", refresh=True)) == [
        "ckpt-gcs-out/fixed/checkpoint",
        "ckpt-gcs-out/fixed/model.ckpt.data-00000-of-00001",
        "ckpt-gcs-out/fixed/model.ckpt.index",
    ]
    local = tmp_path / "fixed" / "model.ckpt"
    assert run_cli(*args, local).returncode == 0
    for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
        assert fs.cat(f"ckpt-gcs-out/fixed/{name}") == (local.parent / name).read_bytes()
    checked = run_cli("check", "-f", "json", "gs://ckpt-gcs-out/fixed", env=gcs.env())  # through its state file
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["resolved"] == out
    again = run_cli(*args, out, env=gcs.env())
    assert again.returncode == 2 and "use --force" in again.stderr


# ---- Azure: Azurite (a Node package) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure():
    pytest.importorskip("adlfs", reason="adlfs not installed (the [azure] extra)")
    executable = shutil.which("azurite-blob")
    if executable is None:
        pytest.skip("Azurite not installed (a Node package: npm install -g azurite)")
    server = Azurite(executable)
    yield server
    server.close()


def test_azure_inspect_check_and_patch(azure):
    fs = azure.filesystem()
    fs.mkdir("ckpt")
    fs.put(str(TF1 / "finetune_trainable") + "/", "ckpt/trainable/", recursive=True)
    target, out = "az://ckpt/trainable/model.ckpt-20", "az://ckpt/fixed/model.ckpt"
    for command in ("inspect", "check"):
        remote = run_cli(command, "-f", "json", "az://ckpt/trainable", env=azure.env())
        local = run_cli(command, "-f", "json", FIXTURE_BUNDLES["finetune_trainable"])
        assert remote.returncode == local.returncode, remote.stderr
        assert _report(remote) == _report(local)
    patched = run_cli("patch", target, "--from", FIXTURE_BUNDLES["finetune_full"], "--out", out, env=azure.env())
    assert patched.returncode == 0, patched.stderr
    assert run_cli("check", out, env=azure.env()).returncode == 0
    assert sorted(fs.ls("ckpt/fixed", detail=False)) == [
        "ckpt/fixed/checkpoint",
        "ckpt/fixed/model.ckpt.data-00000-of-00001",
        "ckpt/fixed/model.ckpt.index",
    ]


def test_a_sharded_v1_save_over_http_is_reached_through_its_meta(http):
    """`export.meta` beside `export-00000-of-00001`, as for a local path (red-team pass: over HTTP it said the
    index export.index was missing)."""
    (http.root / "v1").mkdir()
    shutil.copy(realworld("serving_v1_half_plus_two/export-00000-of-00001"), http.root / "v1" / "export-00000-of-00001")
    (http.root / "v1" / "export.meta").write_bytes(b"")
    result = run_cli("inspect", "-f", "json", f"{http.url}/v1/export.meta")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resolved"] == f"{http.url}/v1/export-00000-of-00001" and report["format"] == "tf-v1-legacy"
