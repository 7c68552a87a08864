"""Check a dict against an official SDK's request TypedDict, strictly.

The SDKs type requests as TypedDicts, which nothing checks at run time (and
pydantic ignores unknown keys and checks ``Iterable`` fields lazily), so this
walks the type: every key must be declared, every required key present, every
value of a declared type, literals among their values; a union passes if one
member does. Pydantic models found inside (response blocks that the SDK also
accepts) are validated with ``model_validate``.
"""

from __future__ import annotations

import collections.abc
import types
import typing

import typing_extensions
from typing import Any, Literal, Union

from pydantic import BaseModel
from typing_extensions import get_args, get_origin, get_type_hints, is_typeddict  # the SDKs' TypedDicts are typing_extensions'

_SEQUENCES = (list, collections.abc.Iterable, collections.abc.Sequence, tuple)
_MAPPINGS = (dict, collections.abc.Mapping)


class Mismatch(AssertionError):
    pass


def check(value: Any, tp: Any, path: str = "body") -> None:
    """Raise ``Mismatch`` naming the first place ``value`` does not fit ``tp``."""
    if tp is Any or tp is object:
        return
    origin, args = get_origin(tp), get_args(tp)
    if origin is typing.Annotated or origin is typing_extensions.Annotated:
        return check(value, args[0], path)
    if is_typeddict(tp):
        if not isinstance(value, dict):
            raise Mismatch(f"{path}: expected an object for {tp.__name__}, got {value!r:.60}")
        hints = get_type_hints(tp)
        unknown = set(value) - set(hints)
        if unknown:
            raise Mismatch(f"{path}: {tp.__name__} has no field(s) {sorted(unknown)}")
        missing = set(tp.__required_keys__) - set(value)
        if missing:
            raise Mismatch(f"{path}: {tp.__name__} needs {sorted(missing)}")
        for k, v in value.items():
            check(v, hints[k], f"{path}.{k}")
        return
    if origin is Union or origin is types.UnionType:
        errors = []
        for member in args:
            try:
                check(value, member, path)
                return
            except Mismatch as exc:
                errors.append(str(exc))
        raise Mismatch(f"{path}: fits no member of the union: " + " | ".join(errors[:4]))
    if origin is Literal or origin is typing_extensions.Literal:
        if value not in args:
            raise Mismatch(f"{path}: {value!r} is not one of {args}")
        return
    if origin in _SEQUENCES:
        if not isinstance(value, list):
            raise Mismatch(f"{path}: expected an array, got {value!r:.60}")
        for i, item in enumerate(value):
            check(item, args[0] if args else Any, f"{path}[{i}]")
        return
    if origin in _MAPPINGS or tp in _MAPPINGS:
        if not isinstance(value, dict):
            raise Mismatch(f"{path}: expected an object, got {value!r:.60}")
        return
    if tp is type(None):
        if value is not None:
            raise Mismatch(f"{path}: expected null")
        return
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp in (str, bool):
        ok = isinstance(value, tp)
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        try:
            tp.model_validate(value)
        except Exception as exc:  # pydantic's ValidationError: the value is not that model
            raise Mismatch(f"{path}: not a {tp.__name__}: {exc}") from None
        return
    else:
        return  # a type this walk does not know (e.g. a file upload): not what these tests send
    if not ok:
        raise Mismatch(f"{path}: expected {tp.__name__}, got {value!r:.60}")
