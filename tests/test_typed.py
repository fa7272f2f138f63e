"""ckptdoctor.typed's NamedTuple makes, without importing typing, the record typing.NamedTuple makes."""

from __future__ import annotations

import pickle
import typing

import pytest

from ckptdoctor import typed
from ckptdoctor.model import BatchNormLayer, TensorInfo


def _declare(base: type) -> type:
    class Shape(base):  # type: ignore[valid-type,misc]
        """A stored tensor's shape."""

        name: str
        dims: tuple[int, ...] = ()
        dtype: str | None = None

        @property
        def rank(self) -> int:
            return len(self.dims)

        def renamed(self, name: str) -> Shape:
            return self._replace(name=name)

    return Shape


def test_a_record_is_what_typing_makes():
    ours, theirs = _declare(typed.NamedTuple), _declare(typing.NamedTuple)
    assert ours is not theirs and ours.__mro__[1:] == theirs.__mro__[1:] == (tuple, object)
    for attribute in ("_fields", "_field_defaults", "__doc__", "__module__", "__qualname__", "__match_args__"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert set(ours.__annotations__) == set(theirs.__annotations__) == {"name", "dims", "dtype"}
    for made in (ours("bn", (3,)), theirs("bn", (3,))):
        assert made == ("bn", (3,), None) and made.rank == 1 and made.renamed("x").name == "x"
        assert made._asdict() == {"name": "bn", "dims": (3,), "dtype": None}
        with pytest.raises(AttributeError):
            made.name = "changed"  # type: ignore[misc]
    assert repr(ours("bn")) == repr(theirs("bn")) == "Shape(name='bn', dims=(), dtype=None)"


def test_the_records_pickle_and_compare_as_tuples():
    info = TensorInfo("bn/moving_mean", "float32", (4,), 16)
    assert pickle.loads(pickle.dumps(info)) == info
    assert info == ("bn/moving_mean", "float32", (4,), 16, None, None, None, False)
    layer = BatchNormLayer("bn", None, None, "bn/moving_mean", None)
    assert pickle.loads(pickle.dumps(layer)) == layer


def _late_field_refused(base: type, defaults: int) -> str:
    """The message for a field without a default after `defaults` fields with one."""
    fields = [f"    {name}: int" + (" = 0" if number < defaults else "") for number, name in enumerate("abc")]
    with pytest.raises(TypeError) as refused:
        exec("\n".join(["class Late(base):", *fields]), {"base": base, "__name__": __name__})
    return str(refused.value)


def test_typings_rules_hold():
    for defaults in (1, 2):  # "field a", "fields a, b": typing's words
        assert _late_field_refused(typed.NamedTuple, defaults) == _late_field_refused(typing.NamedTuple, defaults)

    with pytest.raises(AttributeError, match="Cannot overwrite NamedTuple attribute _replace"):

        class Replacing(typed.NamedTuple):
            a: int

            def _replace(self, **changes: object) -> None: ...

    with pytest.raises(TypeError):

        class Mixed(typed.NamedTuple, dict):  # type: ignore[misc]
            a: int


def test_a_protocol_is_a_plain_base_at_run_time():
    """Nothing checks a protocol at run time; the protocols ckptdoctor declares stay plain classes."""
    from ckptdoctor.formats.base import CheckpointReader
    from ckptdoctor.formats.bytesource import ByteSource

    assert typed.Protocol is object
    assert CheckpointReader.__mro__ == (CheckpointReader, object) and ByteSource.__mro__ == (ByteSource, object)
