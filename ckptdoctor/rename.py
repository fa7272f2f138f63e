"""A new checkpoint whose names follow an assignment map: the map `match --assignment-map` writes.

The map is `{checkpoint_name: new_name}` as tf.compat.v1.train.init_from_checkpoint takes it: an entry whose
key ends in `/` moves a scope (`{"tower_0/": "/"}` drops the scope `tower_0/`, `{"/": "net/"}` puts every
name under `net/`), any other entry renames one tensor. An exact entry wins over a scope, a longer scope over
a shorter one. Names the map does not cover keep theirs; every entry must cover something.

TF1 name-based bundles are renamed key by key, tensor bytes copied as stored. Legacy Keras `.h5` files are
renamed layer by layer (the map applies to the weights' paths `layer/weight`; only the layer part may change).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from ckptdoctor import TYPE_CHECKING
from ckptdoctor.errors import ConfigError, OutputError
from ckptdoctor.formats import Resolved
from ckptdoctor.model import Format, FormatFamily, Role
from ckptdoctor.names import listed
from ckptdoctor.typed import NamedTuple

if TYPE_CHECKING:
    from ckptdoctor.analysis.checkpoint import Checkpoint

MAX_MAP_BYTES = 16 << 20  # a map of every variable of a very large model is a few MB
MAX_MAP_ENTRIES = 1_000_000
ROOT = "/"  # the map's name for the root scope, as init_from_checkpoint writes it


class RenameResult(NamedTuple):
    source: str
    out: str
    written: tuple[str, ...]  # the files that make up the output
    renamed: tuple[tuple[str, str], ...]  # (old name, new name) of every tensor renamed, sorted
    resolved: Resolved  # what was written, to read it back as exactly that
    state_change: str | None = None  # what changed in the directory's `checkpoint` state file
    # Optimizer slots under an optimizer scope (`training/Adagrad/<variable>/accumulator`, tf.keras and
    # Estimators) whose variable was renamed but which keep its old name: the optimizer will not find them.
    stranded_slots: tuple[str, ...] = ()
    slot_entry: tuple[str, str] | None = None  # a map entry that would move the first of them along


def stranded_slots(checkpoint: Checkpoint, renames: Mapping[str, str]) -> tuple[str, ...]:
    """The optimizer slots stored as `training/<Optimizer>/<variable>/...` whose variable `renames` moves while
    they stay: TF1 slim slots (`<variable>/Momentum`) move with their variable's scope, these do not."""
    from ckptdoctor.analysis.roles import OPTIMIZER_SCOPES

    stranded = []
    for variable in checkpoint.variables:
        parts = variable.name.split("/")
        if variable.name in renames or len(parts) < 4 or parts[0] != "training" or parts[1] not in OPTIMIZER_SCOPES:
            continue
        owner = "/".join(parts[2:-1])
        if owner in renames:
            stranded.append(variable.name)
    return tuple(sorted(stranded))


def slot_entry(slot: str, renames: Mapping[str, str]) -> tuple[str, str]:
    """The map entry that moves a stranded slot's scope as its variable's moved: for `dnn/...` renamed to
    `deep/...`, `training/Adagrad/dnn/` -> `training/Adagrad/deep/`."""
    parts = slot.split("/")
    optimizer, owner = "/".join(parts[:2]), "/".join(parts[2:-1])
    old, new = owner.split("/"), renames[owner].split("/")
    while len(old) > 1 and len(new) > 1 and old[-1] == new[-1]:  # the part the rename kept
        old, new = old[:-1], new[:-1]
    return f"{optimizer}/{'/'.join(old)}/", f"{optimizer}/{'/'.join(new)}/"


def parse_map(text: str | bytes, where: str) -> dict[str, str]:
    """An assignment map from JSON text; a ConfigError naming `where` when it is not one."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ConfigError(f"{where}: not a JSON assignment map ({error})") from None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ConfigError(f"{where}: an assignment map is a JSON object of names to names")
    if len(raw) > MAX_MAP_ENTRIES:
        raise ConfigError(f"{where}: more than {MAX_MAP_ENTRIES} entries")
    for old, new in raw.items():
        if not old or not new:
            raise ConfigError(f"{where}: an empty name in the entry '{old}': '{new}'")
        if old.endswith("/") != new.endswith("/"):
            raise ConfigError(
                f"{where}: '{old}': '{new}' maps a scope to a name or a name to a scope (a scope ends with '/')"
            )
    return raw


def load_map(path: str | os.PathLike[str]) -> dict[str, str]:
    """The assignment map in a JSON file, read with a bound."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_MAP_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{where}: cannot read the assignment map ({error.strerror})") from None
    if len(text) > MAX_MAP_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_MAP_BYTES >> 20} MiB, not an assignment map")
    return parse_map(text, where)


def map_name(assignment: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(new name, the entry that decided it) for a name the map covers, else None."""
    if name in assignment and not name.endswith("/"):
        return assignment[name], name
    scope = name
    while "/" in scope:
        scope = scope[: scope.rindex("/")]
        if scope + "/" in assignment:
            return _moved(assignment[scope + "/"], name[len(scope) + 1 :]), scope + "/"
    if ROOT in assignment:
        return _moved(assignment[ROOT], name), ROOT
    return None


def _moved(new_scope: str, rest: str) -> str:
    return rest if new_scope == ROOT else new_scope + rest


def plan_renames(checkpoint: Checkpoint, assignment: Mapping[str, str], where: str) -> dict[str, str]:
    """Old tensor name -> new for every tensor the map renames; OutputError for a map that does not fit."""
    reader = checkpoint.reader
    family = Format(reader.format).family
    used: set[str] = set()
    renames: dict[str, str] = {}
    if family is FormatFamily.TF1:
        for variable in checkpoint.variables:
            mapped = map_name(assignment, variable.name)
            if mapped is not None:
                used.add(mapped[1])
                if mapped[0] != variable.name:
                    renames[variable.name] = mapped[0]
    elif Format(reader.format) is Format.KERAS_H5:
        for variable in checkpoint.variables:
            if variable.role is Role.OPTIMIZER_SLOT or "/" not in variable.path:
                continue
            mapped = map_name(assignment, variable.path)
            if mapped is None:
                continue
            used.add(mapped[1])
            new_name = _renamed_weight(variable.name, variable.path, mapped[0], reader.location)
            if new_name != variable.name:
                renames[variable.name] = new_name
    else:
        raise OutputError(
            f"{reader.location}: rename writes TF1 name-based checkpoints and legacy Keras .h5 files; a "
            f"{reader.format} checkpoint restores by "
            + ("its object graph, not by name" if family is FormatFamily.TF2 else "layer position, not by name")
        )
    unused = sorted(set(assignment) - used)
    if unused:
        raise OutputError(f"{where}: the map names {listed(unused, 1)}, which is not in {reader.location}")
    return renames


def _renamed_weight(name: str, path: str, new_path: str, location: str) -> str:
    """A legacy Keras dataset's new name when its layer is renamed: `[root/]layer/layer/w` -> `new/new/w`."""
    layer, _, weight = path.partition("/")
    new_layer, _, new_weight = new_path.partition("/")
    if new_weight != weight or not new_layer:
        raise OutputError(f"{location}: cannot rename {path} to {new_path}: Keras files rename whole layers")
    parts = name.split("/")
    at = parts.index(layer)
    parts[at] = new_layer
    if at + 1 < len(parts) - 1 and parts[at + 1] == layer:  # the weight's own scope is its layer's name
        parts[at + 1] = new_layer
    return "/".join(parts)


def rename(
    path: str | os.PathLike[str],
    map_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    force: bool = False,
) -> RenameResult:
    """Write the checkpoint at PATH to OUT with its names following the assignment map at MAP_PATH."""
    from ckptdoctor.analysis.checkpoint import opened
    from ckptdoctor.writer.base import Edits
    from ckptdoctor.writer.checkpoint import write_checkpoint
    from ckptdoctor.writer.guard import refuse_overwriting_inputs
    from ckptdoctor.writer.registry import writer_for

    assignment = load_map(map_path)
    with opened(path) as checkpoint:
        renames = plan_renames(checkpoint, assignment, os.fspath(map_path))
        writer = writer_for(checkpoint.reader.format, checkpoint.reader.location)
        outputs = writer.output_files(writer.output_path(os.fspath(out)))
        refuse_overwriting_inputs(os.fspath(out), outputs, [os.fspath(map_path)])  # the map is an input too
        result = write_checkpoint(checkpoint, Edits(rename=renames), out, force=force)
        stranded = stranded_slots(checkpoint, renames)
        return RenameResult(
            checkpoint.reader.location,
            result.out,
            result.written,
            tuple(sorted(renames.items())),
            result.resolved,
            result.state_change,
            stranded,
            slot_entry(stranded[0], renames) if stranded else None,
        )
