"""`ckptdoctor match`: fixtures made by TensorFlow with names that do not line up, the renames found, and the
assignment map proven by restoring through it in TensorFlow (Saver var_list and init_from_checkpoint)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
from conftest import FIXTURE_BUNDLES, FIXTURES, KERAS, ROOT, realworld, run_cli

from ckptdoctor.match import Rename, RenameKind, assignment_map, match, match_variables, saver_var_list
from ckptdoctor.model import Role, Variable

MATCH = FIXTURES / "match"
META = MATCH / "model.meta"

# How scripts/make_match_fixtures.py saved each checkpoint, as the renames that undo it.
EXPECTED_RENAMES = {
    "prefix": {Rename(RenameKind.PREFIX, "", "tower_0/")},
    "counter": {
        Rename(RenameKind.COUNTER, "conv", offset=2),
        Rename(RenameKind.COUNTER, "batch_normalization", offset=2),
        Rename(RenameKind.COUNTER, "dense", offset=1),
    },
    "leaf": {Rename(RenameKind.LEAVES, new="slim")},
    "head": set(),
    "ambiguous": set(),
}


def _fixture_script():
    spec = importlib.util.spec_from_file_location("make_match_fixtures", ROOT / "scripts" / "make_match_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", sorted(EXPECTED_RENAMES))
def test_match_finds_exactly_the_renames_that_made_the_fixture(case):
    result, report = match(MATCH / case, meta_graph=str(META))
    assert set(result.renames) == EXPECTED_RENAMES[case]
    assert len(result.renames) == len(EXPECTED_RENAMES[case])
    codes = {finding.code for finding in report.findings}
    if case == "head":  # a changed head is a shape mismatch, never "fixed" by a rename
        assert {m.model.name for m in result.shape_mismatch} == {"dense/kernel", "dense/bias"}
        assert codes == {"MAP002"} and not result.renamed
        assert not any("dense" in model for model in assignment_map_models(result.assignment_map))
    elif case == "ambiguous":  # two towers fit equally: reported, never guessed
        assert len(result.ambiguous) == result.model_variables == 14
        assert all(len(a.candidates) == 2 for a in result.ambiguous)
        assert result.assignment_map == {} and codes == {"MAP006"}
    else:
        assert len(result.matched) + len(result.renamed) == result.model_variables == 14
        assert codes == {"MAP005"} and not result.missing and not result.unexpected
    if case == "prefix":  # Momentum slots and global_step are set apart, not "unexpected"
        assert len(result.training_state) == 11 and result.assignment_map == {"tower_0/": "/"}


def assignment_map_models(mapping: dict[str, str]) -> list[str]:
    return list(mapping.values())


@pytest.mark.parametrize(("case", "code"), [("prefix", 1), ("head", 1), ("ambiguous", 1)])
def test_cli_is_a_gate_and_writes_the_map(tmp_path, case, code):
    out = tmp_path / "map.json"
    run = run_cli("match", MATCH / case, "--meta-graph", META, "--assignment-map", out, "-f", "json")
    assert run.returncode == code, run.stderr
    findings = json.loads(run.stdout)[0]["findings"] if isinstance(json.loads(run.stdout), list) else None
    assert findings is None or findings
    assert json.loads(out.read_text()) == match(MATCH / case, meta_graph=str(META))[0].assignment_map


def test_policy_applies_like_check(tmp_path):
    config = tmp_path / "policy.toml"
    config.write_text('ignore = ["match-renamed"]\n')
    run = run_cli("match", str(MATCH / "leaf"), "--meta-graph", str(META), "--config", str(config))
    assert run.returncode == 0, run.stdout
    sarif = run_cli("match", str(MATCH / "head"), "--meta-graph", str(META), "-f", "sarif")
    assert sarif.returncode == 1 and "MAP002" in sarif.stdout


def _blocked_env(tmp_path) -> dict[str, str]:
    blocker = tmp_path / "blocked" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is not installed here')\n")
    return {"PYTHONPATH": os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")])}


def test_match_works_without_tensorflow_for_meta_graphs_and_keras_files(tmp_path):
    env = _blocked_env(tmp_path)
    model = str(KERAS / "healthy" / "model.keras")
    healthy = run_cli("match", str(KERAS / "healthy/model.weights.h5"), "--model", model, env=env)
    assert healthy.returncode == 0, healthy.stderr
    assert "18 matched by name" in healthy.stdout
    lost = run_cli("match", str(KERAS / "stats_removed/model.weights.h5"), "--model", model, env=env)
    assert lost.returncode == 1 and "MAP001" in lost.stdout and "ckptdoctor patch" in lost.stdout  # BN stats: patch
    meta = run_cli("match", str(MATCH / "counter"), "--meta-graph", str(META), env=env)
    assert meta.returncode == 1 and "counter of 'dense' layers is +1" in meta.stdout, meta.stderr
    builder = run_cli("match", str(MATCH / "counter"), "--model", "no_such.module:build", env=env)
    assert builder.returncode == 2 and builder.stderr.count("\n") == 1 and "pip install" in builder.stderr


def _run(args) -> subprocess.CompletedProcess:
    return run_cli("match", *args)


def test_bad_meta_graphs_are_one_line_exit_2(tmp_path):
    from ckptdoctor.formats import protos

    garbage = tmp_path / "garbage.meta"
    garbage.write_bytes(b"\xff" * 64)
    link = tmp_path / "link.meta"
    link.symlink_to(META)
    meta = protos.MetaGraphDef()
    meta.ParseFromString(META.read_bytes())
    for entry in meta.collection_def:
        if entry.key == "variables":
            definition = protos.VariableDef()
            definition.ParseFromString(entry.value.bytes_list.value[0])
            definition.variable_name = "nowhere:0"
            entry.value.bytes_list.value[0] = definition.SerializeToString()
    dangling = tmp_path / "dangling.meta"
    dangling.write_bytes(meta.SerializeToString())
    for bad, words in [
        (garbage, "cannot be parsed"),
        (link, "symbolic link"),
        (dangling, "nowhere"),
        (tmp_path / "none", "not found"),
    ]:
        run = _run([str(MATCH / "leaf"), "--meta-graph", str(bad)])
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and words in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_assignment_map_never_replaces_an_input(tmp_path):
    before = META.read_bytes()
    run = _run([str(MATCH / "leaf"), "--meta-graph", str(META), "--assignment-map", str(META)])
    assert run.returncode == 2 and "must not be one of the inputs" in run.stderr
    assert META.read_bytes() == before


def _stored(*entries: tuple[str, tuple[int, ...]]) -> list[Variable]:
    return [Variable(name, "float32", shape, 4, Role.WEIGHT, name.rpartition("/")[0], name) for name, shape in entries]


def _model(*entries: tuple[str, tuple[int, ...]]):
    from ckptdoctor.formats.model_spec import ModelVariable

    return [ModelVariable(name, "float32", shape) for name, shape in entries]


def test_slim_batchnorm_suffix_and_removed_scope_are_found():
    shapes = [("net/conv/BatchNorm/beta", (4,)), ("net/conv/BatchNorm/moving_mean", (4,)), ("net/conv/weights", (3, 4))]
    model = _model(*[(f"model/{n.replace('BatchNorm', 'batch_normalization')}:0", s) for n, s in shapes])
    result = match_variables(model, _stored(*shapes))
    kinds = {rename.kind for rename in result.renames}
    assert kinds == {RenameKind.COMPONENT, RenameKind.SUFFIX, RenameKind.PREFIX}, result.renames
    assert len(result.renamed) == 3 and not result.missing


def test_saver_var_list_expands_the_map_as_init_from_checkpoint_does():
    pairs = match_variables(
        _model(("a/x", (1,)), ("a/y", (2,)), ("b", (3,))), _stored(("t/a/x", (1,)), ("t/a/y", (2,)), ("t/b", (3,)))
    )
    mapping = pairs.assignment_map
    assert mapping == {"t/": "/"}
    assert saver_var_list(mapping, ["a/x", "a/y", "b"]) == {"t/a/x": "a/x", "t/a/y": "a/y", "t/b": "b"}
    partial = assignment_map(pairs.renamed, unmatched=["a/z"])  # a/z unmatched: scope a/ cannot map whole
    assert partial == {"t/a/x": "a/x", "t/a/y": "a/y", "t/b": "b"}


RESTORABLE = ["prefix", "counter", "leaf", "head"]


@pytest.mark.parametrize("case", RESTORABLE)
def test_tensorflow_restores_through_the_map(tf, case):
    """Saver(var_list) on the imported meta graph and init_from_checkpoint in a graph built in Python:
    every mapped variable ends up equal to the checkpoint's value."""
    import numpy as np

    tf1 = tf.compat.v1
    prefix = str(MATCH / case / "model.ckpt")
    result, _ = match(MATCH / case, meta_graph=str(META))
    mapping = result.assignment_map
    stored = tf.train.load_checkpoint(prefix)
    expected_pairs = {p.checkpoint: p.model for p in (*result.matched, *result.renamed)}

    graph = tf.Graph()
    with graph.as_default():
        tf1.train.import_meta_graph(str(META))
        variables = {v.op.name: v for v in tf1.global_variables()}
        pairs = saver_var_list(mapping, variables)
        assert pairs == expected_pairs
        saver = tf1.train.Saver(var_list={key: variables[name] for key, name in pairs.items()})
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            saver.restore(session, prefix)
            for key, name in pairs.items():
                np.testing.assert_array_equal(session.run(variables[name]), stored.get_tensor(key))

    build_model = _fixture_script().build_model
    graph = tf.Graph()
    with graph.as_default():
        build_model(tf1.placeholder(tf.float32, [None, 8, 8, 3]))
        tf1.train.init_from_checkpoint(prefix, mapping)
        variables = {v.op.name: v for v in tf1.global_variables()}
        with tf1.Session(graph=graph) as session:
            session.run(tf1.global_variables_initializer())
            for key, name in expected_pairs.items():
                np.testing.assert_array_equal(session.run(variables[name]), stored.get_tensor(key))
    assert len(expected_pairs) == (12 if case == "head" else 14)


def test_a_tf1_savedmodel_matches_its_own_graph_read_from_saved_model_pb():
    """`--meta-graph saved_model.pb`: the SavedModel's serving MetaGraphDef, read natively; its variables
    (name-based, no object graph) restore by name in TF1, so they are matched by name, not refused as TF2."""
    directory = realworld("serving_sm_half_plus_two_mkl")
    result = run_cli("match", directory, "--meta-graph", directory / "saved_model.pb")
    assert result.returncode == 0, result.stderr
    assert "9 model variables: 9 matched by name" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x12\xff\xff", "cannot be parsed as a SavedModel (saved_model.pb) (DecodeError)"),
        (b"\x08\x01", "a SavedModel without a MetaGraphDef"),
    ],
    ids=["damaged", "no-graph"],
)
def test_a_saved_model_pb_that_holds_no_graph_is_one_line(tmp_path, content, message):
    (tmp_path / "saved_model.pb").write_bytes(content)
    result = run_cli("match", FIXTURE_BUNDLES["finetune_full"], "--meta-graph", tmp_path / "saved_model.pb")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr


def test_a_saved_model_pb_of_millions_of_empty_graphs_is_refused_before_parsing(tmp_path):
    """33 million empty MetaGraphDefs fit in the 64 MiB a meta graph may have and took 2 GiB and 23 s to parse
    (red-team pass); they are counted on the wire first."""
    (tmp_path / "saved_model.pb").write_bytes(b"\x12\x00" * 1_000_000)
    result = run_cli("match", FIXTURE_BUNDLES["finetune_full"], "--meta-graph", tmp_path / "saved_model.pb")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "a SavedModel with more than 64 MetaGraphDefs, not read" in result.stderr


def test_a_graph_that_lists_no_variables_is_refused_not_matched_to_nothing():
    """A TF2 SavedModel's graph keeps its variables in the object graph, not in collections: matching by name
    would call every checkpoint variable unexpected and pass (red-team pass)."""
    tf2 = realworld("serving_sm_half_plus_two_tf2")
    result = run_cli("match", FIXTURE_BUNDLES["finetune_full"], "--meta-graph", tf2 / "saved_model.pb")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "its graph lists no variables" in result.stderr and "verify --model" in result.stderr
