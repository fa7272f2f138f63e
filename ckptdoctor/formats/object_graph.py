"""The TF2 object graph (`_CHECKPOINTABLE_OBJECT_GRAPH`): which object path and role each stored key has."""

from __future__ import annotations

from collections import deque

from ckptdoctor.formats import protos
from ckptdoctor.formats.object_keys import ATTRIBUTE_MARKER
from ckptdoctor.typed import NamedTuple

OPTIMIZER_EDGE = "optimizer"


class GraphVariable(NamedTuple):
    """What the object graph says about one checkpoint key."""

    key: str
    node_id: int
    path: str  # the path through the model where there is one, else the first path BFS finds
    full_name: str | None  # the TF1/Keras variable name the graph records, e.g. `bn/moving_mean`
    slot_of: str | None = None  # for an optimizer slot: the path of the variable it belongs to
    slot_name: str | None = None
    optimizer_only: bool = False  # reachable only through an optimizer (its own state)


class ObjectGraphTooDeep(ValueError):
    """A path through the graph is longer than MAX_PATH_LENGTH: hostile or damaged, never written by TF."""


# A path is built per variable, so a deep chain would cost depth x nodes; TF's own paths are far shorter.
MAX_PATH_LENGTH = 1024
# Paths considered per node: TF shares an object between a handful of parents, while a hostile graph can give
# one variable a parent per node, and every candidate costs a path built and compared.
MAX_CANDIDATE_PATHS = 64


class _Paths:
    """Object paths built on demand from BFS parent pointers, each once: linear in what is asked for."""

    def __init__(self, graph) -> None:
        self.graph = graph
        count = len(graph.nodes)
        self.parent: dict[int, tuple[int, str]] = {}  # node -> (its first BFS parent, the edge's local name)
        self.edges_in: dict[int, list[tuple[int, str]]] = {}  # node -> every (parent, local name) into it
        seen, queue = {0}, deque([0])
        while queue:
            node_id = queue.popleft()
            for child in graph.nodes[node_id].children:
                if not 0 <= child.node_id < count:
                    continue
                self.edges_in.setdefault(child.node_id, []).append((node_id, child.local_name))
                if child.node_id not in seen:
                    seen.add(child.node_id)
                    self.parent[child.node_id] = (node_id, child.local_name)
                    queue.append(child.node_id)
        self._built: dict[int, str] = {0: ""} if count else {}

    def primary(self, node_id: int) -> str | None:
        """The node's first (BFS) path, or None where the root does not reach it."""
        chain = []
        while node_id not in self._built:
            if node_id not in self.parent:
                return None
            chain.append(node_id)
            node_id = self.parent[node_id][0]
        for child in reversed(chain):  # each ancestor's path is built once, from its parent's
            parent, local_name = self.parent[child]
            self._built[child] = self._join(self._built[parent], local_name)
        return self._built[node_id if not chain else chain[0]]

    def candidates(self, node_id: int) -> list[str]:
        """The primary path first, then each edge into the node extended from its parent's primary path;
        at most MAX_CANDIDATE_PATHS of them, in that order."""
        first = self.primary(node_id)
        if first is None:
            return []
        out = {first: None}  # a dict keeps the order and answers `in` at once
        for parent, local_name in self.edges_in.get(node_id, []):
            if len(out) >= MAX_CANDIDATE_PATHS:
                break
            out.setdefault(self._join(self.primary(parent) or "", local_name))
        return list(out)

    @staticmethod
    def _join(parent: str, local_name: str) -> str:
        path = _join(parent, local_name)
        if len(path) > MAX_PATH_LENGTH:
            raise ObjectGraphTooDeep(f"object graph has a path longer than {MAX_PATH_LENGTH} characters")
        return path


class NodesByPath:
    """Which node a path reaches, found by walking the graph edge by edge (no table of every path)."""

    def __init__(self, graph) -> None:
        self._graph = graph

    def get(self, path: str, default: int | None = None) -> int | None:
        node_id = 0
        for segment in path.split("/") if path else []:
            for child in self._graph.nodes[node_id].children:
                if 0 <= child.node_id < len(self._graph.nodes) and _join("", child.local_name) == segment:
                    node_id = child.node_id
                    break
            else:
                return default
        return node_id if self._graph.nodes else default

    def __contains__(self, path: str) -> bool:
        return self.get(path) is not None

    def __getitem__(self, path: str) -> int:
        node_id = self.get(path)
        if node_id is None:
            raise KeyError(path)
        return node_id


def escape_local_name(local_name: str) -> str:
    """An edge's name as it appears in a checkpoint key (trackable_utils.escape_local_name)."""
    return local_name.replace(".", "..").replace("/", ".S")


def _join(parent: str, local_name: str) -> str:
    escaped = escape_local_name(local_name)
    return f"{parent}/{escaped}" if parent else escaped


def _through_optimizer(path: str) -> bool:
    return OPTIMIZER_EDGE in path.split("/")[:-1] or path.split("/")[0].startswith(OPTIMIZER_EDGE)


class ObjectGraph(NamedTuple):
    proto: object  # TrackableObjectGraph
    variables: dict[str, GraphVariable]  # by checkpoint key
    nodes_by_path: NodesByPath  # the node any path reaches


def parse(serialized: bytes) -> ObjectGraph:
    """The decoded graph, and what it says about each checkpoint key that holds a value."""
    graph = protos.TrackableObjectGraph.FromString(serialized)
    paths = _Paths(graph)
    preferred: dict[int, str | None] = {}

    def preferred_path(node_id: int) -> str | None:
        """The first path through the model where there is one, else the first path at all."""
        if node_id not in preferred:
            candidates = paths.candidates(node_id)
            model_paths = [p for p in candidates if not _through_optimizer(p)]
            preferred[node_id] = next(iter(model_paths or candidates), None)
        return preferred[node_id]

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
                owner = preferred_path(original) or f"(node {original})"
                optimizer_path = preferred_path(optimizer_id) or OPTIMIZER_EDGE
                path = f"{owner}/.OPTIMIZER_SLOT/{optimizer_path}/{slot_name}"
                variables[key] = GraphVariable(key, node_id, path, full_name, owner, slot_name)
                continue
            path = preferred_path(node_id) or key.split(ATTRIBUTE_MARKER)[0]
            optimizer_only = _through_optimizer(path)
            variables[key] = GraphVariable(key, node_id, path, full_name, optimizer_only=optimizer_only)
    return ObjectGraph(graph, variables, NodesByPath(graph))
