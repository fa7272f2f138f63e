"""The class bases ckptdoctor takes from `typing`, without importing typing at run time.

Type checkers read `typing.NamedTuple` and `typing.Protocol` here. At run time `typing` cost ~3 ms to import on
the 2-core machine issue 13 measures on, and its NamedTuple another ~0.06 ms a class (it compiles a ForwardRef
for every field's annotation): ~4.5 ms of `inspect`, which is allowed 4x `python -c pass` in all. So:

- `NamedTuple` builds the record with `collections.namedtuple`, as typing's does, from the class statement's
  annotations (left as strings: every module says `from __future__ import annotations`), with typing's rules:
  defaults only after the fields without one, namedtuple's own attributes not overwritten, methods, properties
  and the docstring kept. The class statement only: no functional form, no Generic record.
- `Protocol` is a plain base: nothing checks a protocol at run time, and no class inherits from one. A protocol
  that `isinstance` checks (`runtime_checkable`) takes typing's own.
"""

from __future__ import annotations

from ckptdoctor import TYPE_CHECKING

__all__ = ["NamedTuple", "Protocol"]

if TYPE_CHECKING:
    from typing import NamedTuple, Protocol
else:
    from collections import namedtuple

    # As typing.NamedTuple: what a record may not define, and what the class statement makes that the named tuple
    # has its own of.
    _PROHIBITED = frozenset(
        {
            *("__new__", "__init__", "__slots__", "__getnewargs__"),
            *("_fields", "_field_defaults", "_make", "_replace", "_asdict", "_source"),
        }
    )
    _SPECIAL = frozenset({"__annotations__", "__module__", "__name__"})

    class _RecordMaker(type):
        """`class Name(NamedTuple): ...` runs this: the class made is a `collections.namedtuple`."""

        def __new__(cls, typename: str, bases: tuple[type, ...], namespace: dict[str, object]) -> type:
            if bases != (NamedTuple,):
                raise TypeError("a NamedTuple record has no other base")
            fields = namespace.get("__annotations__", {})
            with_default: list[str] = []
            for field in fields:
                if field in namespace:
                    with_default.append(field)
                elif with_default:
                    after = f"{'s' if len(with_default) > 1 else ''} {', '.join(with_default)}"
                    raise TypeError(f"Non-default namedtuple field {field} cannot follow default field{after}")
            record = namedtuple(
                typename, fields, defaults=[namespace[name] for name in with_default], module=namespace["__module__"]
            )
            record.__annotations__ = record.__new__.__annotations__ = fields
            for key, value in namespace.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in fields:
                    setattr(record, key, value)
            return record

    NamedTuple = type.__new__(_RecordMaker, "NamedTuple", (), {"__module__": __name__})

    Protocol = object
