"""Speed at scale: what `inspect` and `--help` import, and a listing that stays readable (and fast) at many
tensors. The timings themselves are measured by bench/run.py; these tests guard their causes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

from conftest import FIXTURE_BUNDLES, cli_env, run_cli

from ckptdoctor.report.text import MAX_SCOPE_ROWS, MAX_TABLE_ROWS

# Modules that cost start-up time and that these commands have no use for (typer and click: the CLI framework
# the command line left for argparse, which must not come back through a dependency).
HEAVY = ("numpy", "h5py", "tensorflow", "google.protobuf", "rich", "ckptdoctor.rules", "typer", "click")
FULL = str(FIXTURE_BUNDLES["finetune_full"])


def _imported(*args: str) -> set[str]:
    """The modules a real `python -m ckptdoctor ARGS` process has loaded when it exits."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
        "from ckptdoctor.cli import main\n"
        f"sys.argv = ['ckptdoctor', *{list(args)!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    return set(line.split()[1:])


def _loaded(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.startswith(prefixes))


def test_inspect_json_imports_nothing_it_does_not_use(tmp_path):
    """A bundle without a .meta beside it: listing needs neither protobuf, numpy, rich nor the rules."""
    modules = _imported("inspect", str(_many_tensors(tmp_path, 3)), "--format", "json")
    assert "ckptdoctor.formats.tf_bundle" in modules  # the probe saw the real work
    assert _loaded(modules, HEAVY) == []
    # a prefix named directly, with no graph beside it: neither the state file's codec nor the graph reader
    assert _loaded(modules, ("ckptdoctor.formats.state_file", "ckptdoctor.formats.meta_graph")) == []
    # Records are named tuples, not dataclasses: creating ~20 dataclasses costs ~11 ms, and `dataclasses` brings
    # inspect, ast and dis (~7 ms). pathlib brings urllib.parse and ipaddress (~3 ms); a prefix needs none of it.
    # The stall watchdog's signal and select are the forking parent's alone. typing (~3 ms, and ~0.06 ms more a
    # record class) is for type checkers: records and protocols come from ckptdoctor.typed.
    unused = {"dataclasses", "inspect", "pathlib", "urllib.parse", "signal", "select", "fnmatch", "typing"}
    assert unused & (modules - _at_start()) == set()


def _at_start() -> set[str]:
    """The modules the interpreter itself has loaded in the tests' environment (an editable install's import
    hook brings pathlib)."""
    code = "import sys; print(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=60)
    return set(result.stdout.split())


def test_check_and_patch_of_a_bundle_import_neither_numpy_nor_dataclasses(tmp_path):
    """numpy's import (~70 ms here) was most of what patch spent beyond cp + sync: the NaN/Inf count reads the
    exponent bytes, and the rules read statistics and step counters as plain numbers. Nor ~11 ms of dataclass
    creation."""
    prefix = str(_many_tensors(tmp_path, 3))
    for args in (
        ["check", prefix, "--format", "json"],
        ["check", FULL],
        ["patch", str(FIXTURE_BUNDLES["finetune_trainable"]), "--from", FULL, "--out", str(tmp_path / "out" / "m")],
    ):
        modules = _imported(*args)
        assert "ckptdoctor.rules" in modules  # the probe saw the real work (patch re-checks its output)
        assert _loaded(modules, ("numpy", "dataclasses", "inspect")) == []


def test_help_imports_no_reader():
    """Nor the data model: model.py's frozen dataclasses (and dataclasses' own import of inspect) cost more than
    the whole of argparse."""
    for args in (["--help"], ["check", "--help"], ["--version"]):
        modules = _imported(*args)
        assert "argparse" in modules  # the probe saw the real work
        assert _loaded(modules, (*HEAVY, "ckptdoctor.formats", "ckptdoctor.diagnose", "ckptdoctor.model")) == []
        # typing (~3 ms with what it brings) and shutil (argparse's way to the terminal width, 2.6 ms): the help
        # is measured against `python -c pass`, which imports neither
        assert {"typing", "shutil"} & modules == set()


def _many_tensors(directory: Path, layers: int) -> Path:
    """A TF1 bundle of `layers` slim BatchNorm layers in two blocks (4 tensors each), through the project's
    writer (bench/make_many.py writes the 100,000-tensor case with TensorFlow's SaveV2)."""
    import numpy as np

    from ckptdoctor import dtypes
    from ckptdoctor.formats.crc import crc32c, mask
    from ckptdoctor.writer.bundle import BundleWriter

    prefix = directory / "model.ckpt"
    writer = BundleWriter(str(prefix), num_shards=1)
    raw = np.ones(4, dtype="<f4").tobytes()
    names = sorted(
        f"net/block_{i % 2}/unit_{i}/BatchNorm/{part}".encode()
        for i in range(layers)
        for part in ("gamma", "beta", "moving_mean", "moving_variance")
    )
    for name in names:
        writer.add(name, dtypes.BY_NAME["float32"].code, (4,), raw, mask(crc32c(raw)))
    writer.commit()
    return prefix


def test_a_long_listing_shows_totals_by_scope_and_all_shows_every_row(tmp_path):
    layers = MAX_TABLE_ROWS // 4 + 1  # one layer past the bound
    prefix = str(_many_tensors(tmp_path, layers))
    bounded = run_cli("inspect", prefix)
    assert bounded.returncode == 0, bounded.stderr
    lines = bounded.stdout.splitlines()
    assert f"{layers * 4} variables in 2 scopes (`inspect --all` lists every variable)" in lines
    assert any(line.split()[:2] == ["net/block_0/", str((layers + 1) // 2 * 4)] for line in lines)
    assert len(lines) < MAX_SCOPE_ROWS + 30
    assert not any(line.strip().startswith("moving_variance") for line in lines)  # no variable rows

    every = run_cli("inspect", prefix, "--all")
    assert every.returncode == 0, every.stderr
    rows = [line for line in every.stdout.splitlines() if line.startswith("  ")]
    listed = json.loads(run_cli("inspect", prefix, "--format", "json").stdout)["variables"]
    assert len(rows) == len(listed) == layers * 4
    assert all(line == line.rstrip() for line in every.stdout.splitlines())  # aligned, never padded at the end
    assert "totals by role" in every.stdout and "BatchNorm: " in every.stdout


def test_a_short_listing_is_the_whole_table():
    result = run_cli("inspect", FULL)
    assert "variables in" not in result.stdout and "net/conv1/BatchNorm/" in result.stdout


def test_the_hand_serialised_descriptor_is_what_descriptor_pb2_builds():
    """protos.py avoids importing descriptor_pb2 at start-up; here descriptor_pb2 builds the same file from the
    same table, field by field, as protos.py did before."""
    from google.protobuf import descriptor_pb2

    from ckptdoctor.formats import protos

    field_type = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="ckptdoctor/tf_checkpoint.proto", package="ckptdoctor.tf")
    file.syntax = "proto3"
    by_name: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in protos._MESSAGES:
        outer, _, inner = full_name.partition(".")
        if outer not in by_name:
            by_name[outer] = file.message_type.add(name=outer)
        message = by_name[outer].nested_type.add(name=inner) if inner else by_name[outer]
        by_name[full_name] = message
        for name, number, type_name, repeated in fields:
            field = message.field.add(name=name, number=number)
            field.label = field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL
            if type_name in protos._SCALARS:
                field.type = getattr(field_type, f"TYPE_{type_name.upper()}")
            else:
                field.type = field_type.TYPE_MESSAGE
                field.type_name = f".ckptdoctor.tf.{type_name}"
    extent = by_name["TensorSliceProto.Extent"]
    extent.oneof_decl.add(name="has_length")
    extent.field[1].oneof_index = 0
    assert protos.serialized_file() == file.SerializeToString()


def _mutations(samples: list[bytes], count: int, seed: int):
    """Each sample with one to three bytes changed, deleted or inserted."""
    rng = random.Random(seed)
    for _ in range(count):
        value = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(value) + 1)
            choice = rng.random()
            if choice < 0.5 and where < len(value):
                value[where] = rng.randrange(256)
            elif choice < 0.75 and where < len(value):
                del value[where]
            else:
                value.insert(where, rng.randrange(256))
        yield bytes(value)


def test_the_index_shortcut_reads_what_protobuf_reads():
    """The listing parses index entries and the header without protobuf where they have TensorFlow's plain
    layout; on real entries and on damaged ones, whatever the shortcut accepts, protobuf reads the same."""
    from ckptdoctor.formats import protos
    from ckptdoctor.formats.bytesource import open_source
    from ckptdoctor.formats.sstable import TableReader
    from ckptdoctor.formats.tf_bundle import _canonical_entry, _canonical_header

    def reference_entry(value: bytes) -> tuple:
        proto = protos.BundleEntryProto.FromString(value)
        shape = tuple(int(d.size) for d in proto.shape.dim)
        return proto.dtype, shape, proto.shard_id, proto.offset, proto.size, proto.crc32c, len(proto.slices)

    def reference_header(value: bytes) -> tuple:
        header = protos.BundleHeaderProto.FromString(value)
        return header.num_shards, header.endianness, header.version.min_consumer

    entries, headers = [], []
    for prefix in FIXTURE_BUNDLES.values():
        source = open_source(f"{prefix}.index")
        try:
            records, _ = TableReader(source).read_all()
        finally:
            source.close()
        headers.append(records[0][1])
        entries += [value for key, value in records if key]
    assert all(_canonical_header(value) == reference_header(value) for value in headers)
    shortcut = [value for value in entries if _canonical_entry(value) is not None]
    assert len(shortcut) > len(entries) * 0.9  # TensorFlow's own entries take the shortcut
    assert all(_canonical_entry(value) == reference_entry(value) for value in shortcut)
    for parse, reference, samples in (
        (_canonical_entry, reference_entry, entries),
        (_canonical_header, reference_header, headers),
    ):
        taken = 0
        for value in _mutations(samples, 5000, seed=len(samples)):
            fields = parse(value)
            if fields is not None:
                taken += 1
                assert fields == reference(value), value.hex()
        assert taken > 100  # the damage exercised the shortcut, not only its refusals


def test_the_command_collects_cycles_rarely():
    """The `ckptdoctor` command raises the collector's threshold before the command line imports anything: no
    collection runs while `--version` imports argparse and the CLI (several did at the default). Importing the
    library leaves its host process's setting alone."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ckptdoctor": "ckptdoctor.__main__:main"}

    def collections_during(code: str) -> list[str]:
        probe = (
            "import atexit, gc, sys\n"
            "passes = []\n"
            "gc.callbacks.append(lambda phase, info: phase == 'start' and passes.append(info['generation']))\n"
            "atexit.register(lambda: print(len(passes), *gc.get_threshold()))\n"
            "sys.argv = ['ckptdoctor', '--version']\n"
        )
        run = subprocess.run([sys.executable, "-c", probe + code], capture_output=True, text=True, env=cli_env())
        assert run.returncode == 0, run.stderr
        return run.stdout.split()[-4:]

    from ckptdoctor.__main__ import GC_FIRST_GENERATION

    count, threshold, *_ = collections_during("from ckptdoctor.__main__ import main\npasses.clear()\nmain()\n")
    assert (count, threshold) == ("0", str(GC_FIRST_GENERATION))
    count, threshold, *_ = collections_during("from ckptdoctor.cli import main\nmain()\n")  # the library's own
    assert int(count) > 0 and threshold == "700"
