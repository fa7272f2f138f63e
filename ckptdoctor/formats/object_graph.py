"""The TF2 object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`): which object path and role each stored key has."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ckptdoctor.formats import protos

ATTRIBUTE_MARKER = "/.ATTRIBUTES/"
OPTIMIZER_EDGE = "optimizer"


@dataclass(frozen=True)
class GraphVariable:
    """What the object graph says about one checkpoint key."""

    key: str
    node_id: int
    path: str  # the path through the model where there is one, else the first path BFS finds
    full_name: str | None  # the TF1/Keras variable name the graph records, e.g. `bn/moving_mean`
    slot_of: str | None = None  # for an optimizer slot: the path of the variable it belongs to
    slot_name: str | None = None
    optimizer_only: bool = False  # reachable only through an optimizer (its own state)


def _paths(graph) -> list[list[str]]:
    """Every node's candidate paths: its first (BFS) parent path extended by each edge into it."""
    primary: dict[int, str] = {0: ""}
    queue = deque([0])
    while queue:
        node_id = queue.popleft()
        for child in graph.nodes[node_id].children:
            if 0 <= child.node_id < len(graph.nodes) and child.node_id not in primary:
                primary[child.node_id] = _join(primary[node_id], child.local_name)
                queue.append(child.node_id)
    candidates: list[list[str]] = [[] for _ in graph.nodes]
    for node_id in primary:
        for child in graph.nodes[node_id].children:
            if 0 <= child.node_id < len(graph.nodes):
                candidates[child.node_id].append(_join(primary[node_id], child.local_name))
    for node_id, path in primary.items():
        if path in candidates[node_id]:
            candidates[node_id].remove(path)
        candidates[node_id].insert(0, path)
    return candidates


def _join(parent: str, local_name: str) -> str:
    escaped = local_name.replace(".", "..").replace("/", ".S")  # trackable_utils.escape_local_name
    return f"{parent}/{escaped}" if parent else escaped


def _through_optimizer(path: str) -> bool:
    return OPTIMIZER_EDGE in path.split("/")[:-1] or path.split("/")[0].startswith(OPTIMIZER_EDGE)


@dataclass(frozen=True)
class ObjectGraph:
    proto: object  # TrackableObjectGraph
    variables: dict[str, GraphVariable]  # by checkpoint key
    nodes_by_path: dict[str, int]  # every path that reaches a node


def parse(serialized: bytes) -> ObjectGraph:
    """The decoded graph, and what it says about each checkpoint key that holds a value."""
    graph = protos.TrackableObjectGraph.FromString(serialized)
    candidates = _paths(graph)
    nodes_by_path = {path: node_id for node_id, paths in enumerate(candidates) for path in paths}
    preferred: dict[int, str] = {}
    for node_id, paths in enumerate(candidates):
        if paths:
            model_paths = [p for p in paths if not _through_optimizer(p)]
            preferred[node_id] = (model_paths or paths)[0]
    slots: dict[int, tuple[int, str, int]] = {}
    for optimizer_id, node in enumerate(graph.nodes):
        for slot in node.slot_variables:
            slots[slot.slot_variable_node_id] = (slot.original_variable_node_id, slot.slot_name, optimizer_id)
    variables: dict[str, GraphVariable] = {}
    for node_id, node in enumerate(graph.nodes):
        for attribute in node.attributes:
            key = attribute.checkpoint_key
            full_name = attribute.full_name or None
            if node_id in slots:
                original, slot_name, optimizer_id = slots[node_id]
                owner = preferred.get(original, f"(node {original})")
                optimizer_path = preferred.get(optimizer_id, OPTIMIZER_EDGE)
                path = f"{owner}/.OPTIMIZER_SLOT/{optimizer_path}/{slot_name}"
                variables[key] = GraphVariable(key, node_id, path, full_name, owner, slot_name)
                continue
            path = preferred.get(node_id) or key.split(ATTRIBUTE_MARKER)[0]
            optimizer_only = _through_optimizer(path)
            variables[key] = GraphVariable(key, node_id, path, full_name, optimizer_only=optimizer_only)
    return ObjectGraph(graph, variables, nodes_by_path)
