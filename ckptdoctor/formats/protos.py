"""TensorFlow checkpoint protobuf messages, declared at runtime in a private descriptor pool.

Start-up time counts (a CI loop lists checkpoints): importing this module costs nothing; protobuf is imported
and the message classes are made on the first use of any of them (`protos.BundleEntryProto`). The file
descriptor is serialised here by hand (a few varints and strings) rather than built with `descriptor_pb2`,
whose import alone costs more than listing a checkpoint's index; tests/test_scale.py compares these bytes
with what descriptor_pb2 builds."""

from __future__ import annotations

from ckptdoctor import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    # The message classes are made at runtime from the descriptors below, so no type checker knows their fields:
    # they, and their instances, are typed as Any (`Message` in annotations).
    Message = Any

# FieldDescriptorProto.Type and .Label values (google/protobuf/descriptor.proto).
_SCALARS = {
    "double": 1,
    "float": 2,
    "int64": 3,
    "int32": 5,
    "fixed32": 7,
    "bool": 8,
    "string": 9,
    "bytes": 12,
    "uint32": 13,
}
_TYPE_MESSAGE = 11
_LABEL_OPTIONAL, _LABEL_REPEATED = 1, 3

# (message name, [(field name, number, type, repeated)]); a type that is not a scalar
# names another message of this file. Enums are declared as int32: same wire format.
_MESSAGES: list[tuple[str, list[tuple[str, int, str, bool]]]] = [
    ("TensorShapeProto.Dim", [("size", 1, "int64", False), ("name", 2, "string", False)]),
    ("TensorShapeProto", [("dim", 2, "TensorShapeProto.Dim", True), ("unknown_rank", 3, "bool", False)]),
    ("TensorSliceProto.Extent", [("start", 1, "int64", False), ("length", 2, "int64", False)]),
    ("TensorSliceProto", [("extent", 1, "TensorSliceProto.Extent", True)]),
    (
        "VersionDef",
        [("producer", 1, "int32", False), ("min_consumer", 2, "int32", False), ("bad_consumers", 3, "int32", True)],
    ),
    (
        "BundleHeaderProto",
        [("num_shards", 1, "int32", False), ("endianness", 2, "int32", False), ("version", 3, "VersionDef", False)],
    ),
    (
        "BundleEntryProto",
        [
            ("dtype", 1, "int32", False),
            ("shape", 2, "TensorShapeProto", False),
            ("shard_id", 3, "int32", False),
            ("offset", 4, "int64", False),
            ("size", 5, "int64", False),
            ("crc32c", 6, "fixed32", False),
            ("slices", 7, "TensorSliceProto", True),
        ],
    ),
    # Legacy V1 checkpoints (tensor_slice.proto, saved_tensor_slice.proto, tensor.proto).
    (
        "TensorProto",
        [
            ("dtype", 1, "int32", False),
            ("tensor_shape", 2, "TensorShapeProto", False),
            ("version_number", 3, "int32", False),
            ("tensor_content", 4, "bytes", False),
            ("float_val", 5, "float", True),
            ("double_val", 6, "double", True),
            ("int_val", 7, "int32", True),
            ("string_val", 8, "bytes", True),
            ("int64_val", 10, "int64", True),
            ("bool_val", 11, "bool", True),
            ("half_val", 13, "int32", True),
        ],
    ),
    (
        "SavedSliceMeta",
        [
            ("name", 1, "string", False),
            ("shape", 2, "TensorShapeProto", False),
            ("type", 3, "int32", False),
            ("slice", 4, "TensorSliceProto", True),
        ],
    ),
    ("SavedTensorSliceMeta", [("tensor", 1, "SavedSliceMeta", True), ("versions", 2, "VersionDef", False)]),
    (
        "SavedSlice",
        [("name", 1, "string", False), ("slice", 2, "TensorSliceProto", False), ("data", 3, "TensorProto", False)],
    ),
    ("SavedTensorSlices", [("meta", 1, "SavedTensorSliceMeta", False), ("data", 2, "SavedSlice", False)]),
    # TF2 object-based checkpoints: the `_CHECKPOINTABLE_OBJECT_GRAPH` tensor (trackable_object_graph.proto).
    ("BoolValue", [("value", 1, "bool", False)]),
    ("TrackableObject.ObjectReference", [("node_id", 1, "int32", False), ("local_name", 2, "string", False)]),
    (
        "TrackableObject.SerializedTensor",
        [
            ("name", 1, "string", False),
            ("full_name", 2, "string", False),
            ("checkpoint_key", 3, "string", False),
            ("optional_restore", 4, "bool", False),
        ],
    ),
    (
        "TrackableObject.SlotVariableReference",
        [
            ("original_variable_node_id", 1, "int32", False),
            ("slot_name", 2, "string", False),
            ("slot_variable_node_id", 3, "int32", False),
        ],
    ),
    ("TrackableObject.RegisteredSaver", [("name", 1, "string", False), ("object_name", 2, "string", False)]),
    (
        "TrackableObject",
        [
            ("children", 1, "TrackableObject.ObjectReference", True),
            ("attributes", 2, "TrackableObject.SerializedTensor", True),
            ("slot_variables", 3, "TrackableObject.SlotVariableReference", True),
            ("registered_saver", 4, "TrackableObject.RegisteredSaver", False),
            ("has_checkpoint_values", 5, "BoolValue", False),
        ],
    ),
    ("TrackableObjectGraph", [("nodes", 1, "TrackableObject", True)]),
    # TF1 meta graphs (`PREFIX.meta`, meta_graph.proto / graph.proto / node_def.proto / attr_value.proto):
    # only what reading the BatchNorm update ops needs. Other fields stay unknown fields, skipped by the parser.
    # `NodeDef.attr` is a map<string, AttrValue>: on the wire, a repeated entry message of key 1 and value 2.
    (
        "AttrValue",
        [
            ("s", 2, "bytes", False),
            ("i", 3, "int64", False),
            ("f", 4, "float", False),
            ("b", 5, "bool", False),
            ("type", 6, "int32", False),
            ("tensor", 8, "TensorProto", False),
            ("shape", 7, "TensorShapeProto", False),
            ("func", 10, "NameAttrList", False),
        ],
    ),
    ("NameAttrList", [("name", 1, "string", False)]),  # a cond's branch: the function's name
    ("NodeDef.AttrEntry", [("key", 1, "string", False), ("value", 2, "AttrValue", False)]),
    (
        "NodeDef",
        [
            ("name", 1, "string", False),
            ("op", 2, "string", False),
            ("input", 3, "string", True),
            ("attr", 5, "NodeDef.AttrEntry", True),
        ],
    ),
    ("GraphDef", [("node", 1, "NodeDef", True), ("library", 2, "FunctionDefLibrary", False)]),
    # The function library (function.proto, op_def.proto): the branches of control flow v2's If ops.
    ("OpDef.ArgDef", [("name", 1, "string", False)]),
    (
        "OpDef",
        [("name", 1, "string", False), ("input_arg", 2, "OpDef.ArgDef", True), ("output_arg", 3, "OpDef.ArgDef", True)],
    ),
    ("FunctionDef.RetEntry", [("key", 1, "string", False), ("value", 2, "string", False)]),
    (
        "FunctionDef",
        [("signature", 1, "OpDef", False), ("node_def", 3, "NodeDef", True), ("ret", 4, "FunctionDef.RetEntry", True)],
    ),
    ("FunctionDefLibrary", [("function", 1, "FunctionDef", True)]),
    # The `variables` and `trainable_variables` collections: serialized VariableDefs in a BytesList
    # (variable.proto); a partitioned variable's parts carry the checkpoint key in SaveSliceInfoDef.
    ("CollectionDef.BytesList", [("value", 1, "bytes", True)]),
    ("CollectionDef", [("bytes_list", 2, "CollectionDef.BytesList", False)]),
    ("MetaGraphDef.CollectionDefEntry", [("key", 1, "string", False), ("value", 2, "CollectionDef", False)]),
    ("MetaGraphDef.MetaInfoDef", [("tags", 4, "string", True)]),
    (
        "MetaGraphDef",
        [
            ("meta_info_def", 1, "MetaGraphDef.MetaInfoDef", False),
            ("graph_def", 2, "GraphDef", False),
            ("collection_def", 4, "MetaGraphDef.CollectionDefEntry", True),
        ],
    ),
    # saved_model.pb (saved_model.proto): the MetaGraphDefs of a SavedModel, one per set of tags.
    ("SavedModel", [("saved_model_schema_version", 1, "int64", False), ("meta_graphs", 2, "MetaGraphDef", True)]),
    (
        "SaveSliceInfoDef",
        [
            ("full_name", 1, "string", False),
            ("full_shape", 2, "int64", True),
            ("var_offset", 3, "int64", True),
            ("var_shape", 4, "int64", True),
        ],
    ),
    (
        "VariableDef",
        [
            ("variable_name", 1, "string", False),
            ("save_slice_info_def", 4, "SaveSliceInfoDef", False),
            ("is_resource", 5, "bool", False),
            ("trainable", 7, "bool", False),
        ],
    ),
    # The `checkpoint` state file beside checkpoints, in text format (checkpoint_state.proto).
    (
        "CheckpointState",
        [
            ("model_checkpoint_path", 1, "string", False),
            ("all_model_checkpoint_paths", 2, "string", True),
            ("all_model_checkpoint_timestamps", 3, "double", True),
            ("last_preserved_timestamp", 4, "double", False),
        ],
    ),
]

_PACKAGE = "ckptdoctor.tf"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _bytes_field(number: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _field(name: str, number: int, type_name: str, repeated: bool, oneof_index: int | None) -> bytes:
    """A FieldDescriptorProto: name 1, number 3, label 4, type 5, type_name 6, oneof_index 9."""
    out = _bytes_field(1, name) + _int_field(3, number)
    out += _int_field(4, _LABEL_REPEATED if repeated else _LABEL_OPTIONAL)
    if type_name in _SCALARS:
        out += _int_field(5, _SCALARS[type_name])
    else:
        out += _int_field(5, _TYPE_MESSAGE) + _bytes_field(6, f".{_PACKAGE}.{type_name}")
    return out + (b"" if oneof_index is None else _int_field(9, oneof_index))


# `length` sits in `oneof has_length`: an absent length means "to the end of the dimension".
_ONEOFS = {"TensorSliceProto.Extent": ("has_length", "length")}


def _message(full_name: str, nested: list[bytes]) -> bytes:
    """A DescriptorProto: name 1, field 2, nested_type 3, oneof_decl 8."""
    fields = dict(_MESSAGES).get(full_name, [])
    oneof = _ONEOFS.get(full_name)
    out = _bytes_field(1, full_name.rpartition(".")[2])
    for name, number, type_name, repeated in fields:
        out += _bytes_field(2, _field(name, number, type_name, repeated, 0 if oneof and oneof[1] == name else None))
    out += b"".join(_bytes_field(3, message) for message in nested)
    return out + (_bytes_field(8, _bytes_field(1, oneof[0])) if oneof else b"")


def serialized_file() -> bytes:
    """The FileDescriptorProto of every message above: name 1, package 2, message_type 4, syntax 12."""
    outer_names = dict.fromkeys(name.partition(".")[0] for name, _ in _MESSAGES)  # in order of first mention
    messages = [
        _message(
            outer, [_message(name, []) for name, _ in _MESSAGES if name.partition(".")[0] == outer and name != outer]
        )
        for outer in outer_names
    ]
    out = _bytes_field(1, "ckptdoctor/tf_checkpoint.proto") + _bytes_field(2, _PACKAGE)
    out += b"".join(_bytes_field(4, message) for message in messages)
    return out + _bytes_field(12, "proto3")


_CLASSES = (
    "TensorShapeProto",
    "TensorSliceProto",
    "BundleHeaderProto",
    "BundleEntryProto",
    "TensorProto",
    "SavedTensorSlices",
    "CheckpointState",
    "TrackableObjectGraph",
    "MetaGraphDef",
    "SavedModel",
    "VariableDef",
)


def __getattr__(name: str) -> Any:
    """Every message class, made together on the first access to one of them."""
    if name not in _CLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from google.protobuf import descriptor_pool, message_factory

    # A private pool, so that these declarations never collide with TensorFlow's own
    # `tensorflow.*` messages when both live in one process (verify imports TF).
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(serialized_file())
    for class_name in _CLASSES:
        descriptor = pool.FindMessageTypeByName(f"{_PACKAGE}.{class_name}")
        globals()[class_name] = message_factory.GetMessageClass(descriptor)
    return globals()[name]
