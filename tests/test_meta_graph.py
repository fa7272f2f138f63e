"""The native MetaGraphDef reader: decays from real TF graphs, and hostile .meta files that must not hurt."""

from __future__ import annotations

import os
import struct
import time

import numpy as np
import pytest
from conftest import FIXTURES

from ckptdoctor.formats import protos
from ckptdoctor.formats.meta_graph import MAX_META_BYTES, read_decays

STALE = FIXTURES / "stale"


def test_fixture_graph_gives_each_statistic_its_decay_through_op_inputs():
    """Ops live under net/tower_0/, variables under net/: the map comes from inputs, and both update forms fold."""
    found = read_decays(str(STALE / "steps_3" / "model.ckpt-3.meta"))
    assert found.problem is None
    assert set(found.decays) == {
        f"net/{bn}/{s}" for bn in ("fused_bn", "plain_bn") for s in ("moving_mean", "moving_variance")
    }
    for decay in found.decays.values():
        assert decay == pytest.approx(0.9, abs=1e-6)


def test_absent_meta_is_silent(tmp_path):
    assert read_decays(str(tmp_path / "model.ckpt-3.meta")).decays == {}
    assert read_decays(str(tmp_path / "model.ckpt-3.meta")).problem is None


def _graph(*nodes) -> protos.MetaGraphDef:
    meta = protos.MetaGraphDef()
    for name, op, inputs, value in nodes:
        node = meta.graph_def.node.add(name=name, op=op)
        node.input.extend(inputs)
        if value is not None:  # a float, or (DataType, tensor_content)
            tensor = node.attr.add(key="value").value.tensor
            if isinstance(value, tuple):
                tensor.dtype, tensor.tensor_content = value
            else:
                tensor.dtype = 1
                tensor.float_val.append(value)
    return meta


def _update(factor_inputs: list[str], *extra):
    """A ref-variable moving average update whose factor is the node `factor`, plus extra nodes."""
    return _graph(
        ("bn/moving_mean", "VariableV2", [], None),
        ("upd/read", "Identity", ["bn/moving_mean"], None),
        ("batch_mean", "Placeholder", [], None),
        ("upd/sub_1", "Sub", ["upd/read", "batch_mean:0"], None),
        ("upd/mul", "Mul", ["upd/sub_1", *factor_inputs], None),
        ("upd/AssignSub", "AssignSub", ["bn/moving_mean", "upd/mul", "^batch_mean"], None),
        *extra,
    )


def _write(tmp_path, meta) -> str:
    path = tmp_path / "model.ckpt-1.meta"
    path.write_bytes(meta.SerializeToString())
    return str(path)


def test_folds_simple_scalar_expressions(tmp_path):
    meta = _update(
        ["factor"],
        ("one", "Const", [], 1.0),
        ("momentum", "Const", [], (2, struct.pack("<d", 0.97))),  # DT_DOUBLE in tensor_content
        ("momentum_read", "Identity", ["momentum"], None),
        ("factor", "Sub", ["one", "momentum_read"], None),
    )
    assert read_decays(_write(tmp_path, meta)).decays == {"bn/moving_mean": pytest.approx(0.97)}


@pytest.mark.parametrize(
    "extra",
    [
        [("factor", "Sub", ["factor", "factor"], None)],  # a cycle
        [("factor", "Const", [], (1, b"\0" * (1 << 20)))],  # a 1 MiB "scalar"
        [("factor", "Const", [], 7.0)],  # 1 - 7 is no decay
        [("factor", "Placeholder", [], None)],  # not a constant
        [(f"factor{'' if i == 0 else i}", "Identity", [f"factor{i + 1}"], None) for i in range(5000)]
        + [("factor5000", "Const", [], 0.1)],  # a chain deeper than anything TF writes
    ],
    ids=["cycle", "huge-const", "out-of-range", "not-constant", "deep-chain"],
)
def test_hostile_constant_expressions_give_no_decay(tmp_path, extra):
    found = read_decays(_write(tmp_path, _update(["factor"], *extra)))
    assert found.decays == {} and found.problem is None


def test_an_update_of_another_variable_is_not_a_moving_average(tmp_path):
    """Mul(Sub(other, x), 0.1) assigned to moving_mean is not v <- v - (v - x)(1 - d): no decay."""
    meta = _update(["factor"], ("factor", "Const", [], 0.1), ("other", "VariableV2", [], None))
    meta.graph_def.node[1].input[0] = "other"
    assert read_decays(_write(tmp_path, meta)).decays == {}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", None),  # an empty MetaGraphDef: no graph, nothing to say
        (b"\x08garbage" * 100, "cannot be parsed"),
        (b"\x12\x06\x0a\x04\x0a\x02\xff\xfe", "cannot be parsed"),  # a node name that is not UTF-8
    ],
    ids=["empty", "garbage", "bad-utf8"],
)
def test_damaged_meta_gives_a_problem_or_nothing(tmp_path, content, problem):
    path = tmp_path / "model.ckpt-1.meta"
    path.write_bytes(content)
    found = read_decays(str(path))
    assert found.decays == {}
    assert found.problem == problem or problem in found.problem


def test_oversized_meta_is_not_read(tmp_path):
    path = tmp_path / "model.ckpt-1.meta"
    with open(path, "wb") as file:  # sparse: no disk space, no memory
        file.truncate(MAX_META_BYTES + 1)
    found = read_decays(str(path))
    assert found.decays == {} and "larger than" in found.problem


def test_links_and_fifos_are_not_opened(tmp_path):
    outside = tmp_path / "elsewhere.meta"
    outside.write_bytes(_update(["f"], ("f", "Const", [], 0.1)).SerializeToString())
    link = tmp_path / "model.ckpt-1.meta"
    link.symlink_to(outside)
    assert read_decays(str(link)).decays == {} and "symbolic link" in read_decays(str(link)).problem
    fifo = tmp_path / "model.ckpt-2.meta"
    os.mkfifo(fifo)  # opening it for reading would block forever
    assert "not a regular file" in read_decays(str(fifo)).problem


def test_tf_fused_batch_norm_exponential_avg_factor(tf, tmp_path):
    """A TF1 graph whose FusedBatchNormV3 does the moving average itself (exponential_avg_factor 0.2 -> d 0.8)."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [2, 2, 2, 3])
        with tf1.variable_scope("bn"):
            mean = tf1.get_variable("moving_mean", [3], initializer=tf1.zeros_initializer(), trainable=False)
            variance = tf1.get_variable("moving_variance", [3], initializer=tf1.ones_initializer(), trainable=False)
        _, new_mean, new_variance = tf1.nn.fused_batch_norm(
            x, tf.ones([3]), tf.zeros([3]), mean, variance, is_training=True, exponential_avg_factor=0.2
        )
        tf1.assign(mean, new_mean)
        tf1.assign(variance, new_variance)
        path = str(tmp_path / "model.ckpt-1.meta")
        tf1.train.export_meta_graph(path)
    assert read_decays(path).decays == {"bn/moving_mean": pytest.approx(0.8), "bn/moving_variance": pytest.approx(0.8)}


def test_tf_ref_variable_assign_sub(tf, tmp_path):
    """TF1 ref variables (VariableV2 + AssignSub), the update written by hand as in older model code."""
    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        value = tf1.placeholder(tf.float32, [4])
        moving = tf1.get_variable("layer/BatchNorm/moving_mean", [4], use_resource=False, trainable=False)
        tf1.assign_sub(moving, (moving - value) * (1 - 0.95))
        path = str(tmp_path / "model.ckpt-1.meta")
        tf1.train.export_meta_graph(path)
    ops = {node.op for node in graph.as_graph_def().node}
    assert {"VariableV2", "AssignSub"} <= ops  # the graph really has the ref-variable form
    assert read_decays(path).decays == {"layer/BatchNorm/moving_mean": pytest.approx(0.95)}


# ------------------------------------------------------------------------ control flow v2 (If, StatelessIf)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "non-fused"])
def test_tf_layers_batchnorm_with_a_training_tensor_gives_the_decay_tf_applies(tf, tmp_path, fused):
    """tf.compat.v1.layers' BatchNorm with training=<placeholder> under TF 2.x graph mode builds If ops whose
    branch functions hold the update or the decay; the decay read must be the one TF applies in one update."""
    import warnings

    from tf_keras.src.legacy_tf_layers.normalization import batch_normalization

    tf1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        x = tf1.placeholder(tf.float32, [None, 2, 2, 3], name="x")
        training = tf1.placeholder_with_default(False, [], name="is_training")
        with warnings.catch_warnings():  # deprecated in favour of Keras, used by TF1 code all the same
            warnings.simplefilter("ignore", UserWarning)
            batch_normalization(x, momentum=0.93, training=training, fused=fused, name="bn")
        assert {"If", "StatelessIf"} & {op.type for op in graph.get_operations()}
        path = str(tmp_path / "model.ckpt-1.meta")
        tf1.train.export_meta_graph(path)
        data = np.random.default_rng(0).normal(3.0, 1.0, size=(4, 2, 2, 3)).astype(np.float32)
        with tf1.Session(graph=graph) as session:  # one update from moving_mean = 0: new = (1 - d) * batch mean
            session.run(tf1.global_variables_initializer())
            session.run(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS), {x: data, training: True})
            (moving_mean,) = [v for v in tf1.global_variables() if v.op.name == "bn/moving_mean"]
            moved = session.run(moving_mean)
    applied = 1.0 - moved / data.mean(axis=(0, 1, 2))
    found = read_decays(path)
    assert found.problem is None and set(found.decays) == {"bn/moving_mean", "bn/moving_variance"}
    np.testing.assert_allclose(found.decays["bn/moving_mean"], applied, rtol=1e-4)
    assert found.decays["bn/moving_variance"] == pytest.approx(0.93)


def _library_graph(functions, *nodes) -> protos.MetaGraphDef:
    """A meta graph of (name, op, inputs, value) nodes (value: a float, or {then, else} branch names) and
    functions given as (name, [argument], [(output, returned)], [nodes])."""
    meta = protos.MetaGraphDef()

    def add(target, name, op, inputs, value):
        node = target.add(name=name, op=op)
        node.input.extend(inputs)
        if isinstance(value, dict):
            for attr, function in value.items():
                node.attr.add(key=attr).value.func.name = function
        elif value is not None:
            tensor = node.attr.add(key="value").value.tensor
            tensor.dtype = 1
            tensor.float_val.append(value)

    for spec in nodes:
        add(meta.graph_def.node, *spec)
    for name, arguments, returns, body in functions:
        function = meta.graph_def.library.function.add()
        function.signature.name = name
        for argument in arguments:
            function.signature.input_arg.add(name=argument)
        for output, returned in returns:
            function.signature.output_arg.add(name=output)
            function.ret.add(key=output, value=returned)
        for spec in body:
            add(function.node_def, *spec)
    return meta


BRANCHES = {"then_branch": "update", "else_branch": "keep"}
UPDATING_BRANCH = (  # slim's non-fused update inside the cond's training branch, decay 0.95
    "update",
    ["var", "value"],
    [],
    [
        ("decay", "Const", [], 0.05),
        ("read", "ReadVariableOp", ["var"], None),
        ("sub", "Sub", ["read:value:0", "value"], None),
        ("mul", "Mul", ["sub:z:0", "decay:output:0"], None),
        ("AssignSubVariableOp", "AssignSubVariableOp", ["var", "mul:z:0"], None),
    ],
)
KEEPING_BRANCH = ("keep", ["var", "value"], [], [])
MAIN = (
    ("bn/moving_mean", "VarHandleOp", [], None),
    ("batch_mean", "Placeholder", [], None),
    ("is_training", "Placeholder", [], None),
    ("cond", "If", ["is_training", "bn/moving_mean", "batch_mean", "^batch_mean"], BRANCHES),
)


def test_an_update_inside_a_branch_function_gets_its_decay_through_the_conds_inputs(tmp_path):
    found = read_decays(_write(tmp_path, _library_graph([UPDATING_BRANCH, KEEPING_BRANCH], *MAIN)))
    assert found.problem is None and found.decays == {"bn/moving_mean": pytest.approx(0.95)}


def test_a_decay_from_a_cond_takes_the_branch_that_updates(tmp_path):
    """slim's fused form: v -= (v - batch) * (1 - StatelessIf), the cond giving 0.99 in training, 1.0 else."""
    meta = _update(["factor"], ("one", "Const", [], 1.0), ("factor", "Sub", ["one", "cond_1:0"], None))
    extra = _library_graph(
        [
            ("training", [], [("const", "Const:output:0")], [("Const", "Const", [], 0.99)]),
            ("inference", [], [("const", "Const:output:0")], [("Const", "Const", [], 1.0)]),
        ],
        ("pred", "Placeholder", [], None),
        ("cond_1", "StatelessIf", ["pred"], {"then_branch": "training", "else_branch": "inference"}),
    )
    meta.MergeFrom(extra)
    assert read_decays(_write(tmp_path, meta)).decays == {"bn/moving_mean": pytest.approx(0.99)}


@pytest.mark.parametrize(
    "functions, problem",
    [
        ([UPDATING_BRANCH], "names a branch its function library lacks"),
        ([UPDATING_BRANCH, ("keep", ["var"], [], [])], "other inputs than it takes"),
        (  # a branch whose cond calls the branch itself: nested without end
            [
                (*UPDATING_BRANCH[:3], [*UPDATING_BRANCH[3], ("inner", "If", ["p", "var", "value"], BRANCHES)]),
                KEEPING_BRANCH,
            ],
            "nested deeper than",
        ),
    ],
    ids=["missing-function", "signature-mismatch", "recursive-cond"],
)
def test_a_damaged_function_library_is_a_problem_not_an_exception(tmp_path, functions, problem):
    found = read_decays(_write(tmp_path, _library_graph(functions, *MAIN)))
    assert found.decays == {} and problem in found.problem


def test_the_nodes_read_in_branch_functions_are_bounded(tmp_path, monkeypatch):
    import ckptdoctor.formats.meta_graph as module

    conds = [(f"cond{i}", "If", ["is_training", "bn/moving_mean", "batch_mean"], BRANCHES) for i in range(200)]
    path = _write(tmp_path, _library_graph([UPDATING_BRANCH, KEEPING_BRANCH], *MAIN, *conds))
    assert read_decays(path).decays == {"bn/moving_mean": pytest.approx(0.95)}  # 201 conds: 1,005 nodes read
    monkeypatch.setattr(module, "MAX_FUNCTION_NODES", 1000)
    found = read_decays(path)
    assert found.decays == {} and "more than 1000 nodes of functions" in found.problem


# Found by a red-team pass; each case ran for minutes, took gigabytes or failed the whole check before the fix.
SECONDS_AT_MOST = 20  # a bound far from both sides: well under a second now, minutes before


def test_an_output_number_python_calls_a_digit_but_int_refuses_is_no_number(tmp_path):
    """`d:²`: str.isdigit accepts `²`, int() does not; the whole `check` failed on an unexpected ValueError."""
    meta = _update(["factor:\u00b2"], ("factor", "Const", [], 0.1))
    found = read_decays(_write(tmp_path, meta))
    assert found.problem is None and found.decays == {"bn/moving_mean": pytest.approx(0.9)}


def _nested_fanout(levels: int, arguments: int) -> protos.MetaGraphDef:
    """Each level's function calls the next through two conds, each cond passing `arguments` arguments: bodies
    double per level (2**levels) while the file grows linearly."""
    names = [f"a{i}" for i in range(arguments)]
    inner = ("level1", names, [], [("upd", "AssignSubVariableOp", [names[0], names[-1]], None)])
    functions = [inner]
    for level in range(2, levels + 1):
        branches = {"then_branch": f"level{level - 1}", "else_branch": f"level{level - 1}"}
        conds = [(f"c{j}", "StatelessIf", [names[0], *names], branches) for j in range(2)]
        functions.append((f"level{level}", names, [], conds))
    top = {"then_branch": f"level{levels}", "else_branch": f"level{levels}"}
    main = (("p", "Placeholder", [], None), ("c", "StatelessIf", ["p", *["p"] * arguments], top))
    return _library_graph(functions, *main)


def test_conds_calling_one_function_from_many_places_are_bounded_by_their_size(tmp_path):
    """The budget counted a body's nodes, not its arguments and inputs: 14 KB took 849 MiB and 5 s, 150 KB ran
    out of memory. Now the work is charged by size and stops with a problem."""
    path = _write(tmp_path, _nested_fanout(levels=8, arguments=1000))
    assert os.path.getsize(path) < 200_000
    started = time.monotonic()
    found = read_decays(path)
    assert time.monotonic() - started < SECONDS_AT_MOST  # ~0.6 s here
    assert found.decays == {} and "nodes of functions, not read" in found.problem


def test_a_cond_with_many_outputs_is_folded_in_linear_time(tmp_path):
    """Each output folded rebuilt the branch's whole output map: 16,000 outputs took over two minutes."""
    outputs = 16_000
    main = [("bn/moving_mean", "VariableV2", [], None), ("s", "Sub", ["bn/moving_mean", "x"], None)]
    main.append(("c", "StatelessIf", ["pred"], {"then_branch": "T", "else_branch": "T"}))
    for i in range(outputs):
        main += [(f"m{i}", "Mul", ["s", f"c:{i}"], None), (f"u{i}", "AssignSub", ["bn/moving_mean", f"m{i}"], None)]
    branch = ("T", [], [(f"o{i}", "d:output:0") for i in range(outputs)], [("d", "Const", [], 0.1)])
    path = _write(tmp_path, _library_graph([branch], *main))
    started = time.monotonic()
    found = read_decays(path)
    assert time.monotonic() - started < SECONDS_AT_MOST  # ~0.4 s here; over two minutes before
    assert found.problem is None and found.decays == {"bn/moving_mean": pytest.approx(0.9)}
