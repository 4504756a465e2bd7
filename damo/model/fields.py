"""Checking a config dataclass read from a user's file: every field of the type it declares.

A ``config.json`` or ``processor_config.json`` is JSON anyone can edit; a string where a number
belongs otherwise fails as a ``TypeError`` deep inside a forward pass, at the first question.
"""
from __future__ import annotations

import math
import types
import typing
from dataclasses import fields

MAX_LAYERS = 512   # layers or blocks of one stack: the largest LLMs have under 130, and building is per layer


def _fits(value: object, kind: object) -> bool:
    """Whether ``value`` is of the declared type ``kind`` (ints, finite floats, text, containers, unions)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, origin or kind)


def check_fields(obj: object, where: str) -> None:
    """Raise ValueError naming ``where`` and the field if a field of dataclass ``obj`` does not hold
    its declared type, or if a ``layers``/``blocks`` count is negative or past :data:`MAX_LAYERS`."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _fits(value, hints[f.name]):
            raise ValueError(f"{where}.{f.name} must be {_name(hints[f.name])}, got {value!r}")
        if f.name in ("layers", "blocks") and not 0 <= value <= MAX_LAYERS:
            raise ValueError(f"{where}.{f.name} must be between 0 and {MAX_LAYERS}, got {value!r}")


def _name(kind: object) -> str:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_name(k) for k in args)
    names = {int: "a whole number", float: "a finite number", bool: "true or false", str: "text", dict: "an object",
             list: "a list", type(None): "null"}
    return names.get(typing.get_origin(kind) or kind, str(kind))
