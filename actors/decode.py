"""Decode a TOML document into a Struct type and report **every** error at once, in words.

msgspec stops at the first error and states a ``pattern`` constraint as the regular
expression itself. An operator fixing a file wants every mistake in one go, said as a
person would: "expected a duration such as 30s, 5m or 2h, got '5x' - at `$.agents.cancel_grace`".
So the decoded table is walked against the type first (unknown keys, missing keys, each
value against its field's type); each ``pattern`` carries its words in the ``Meta``'s
``description``. Only a document without errors is converted, by msgspec, whose answer stays
the authority. Imports only msgspec and the standard library.
"""

from __future__ import annotations

import re
import types
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import msgspec

T = TypeVar("T")


class Invalid(Exception):
    """A document with errors; ``errors`` holds each one, ending in ``- at `$.key.path```."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def decode_toml(data: bytes, type_: type[T]) -> T:
    """``data`` as ``type_``; raises :class:`Invalid` with every error, or msgspec's DecodeError
    for text that is not TOML at all (and RecursionError for nesting too deep to parse)."""
    raw = msgspec.toml.decode(data)
    return convert(raw, type_)


def convert(raw: Any, type_: type[T]) -> T:
    """As :func:`decode_toml`, from an already decoded table."""
    errors: list[str] = []
    _walk(raw, type_, "$", errors)
    if errors:
        raise Invalid(errors)
    try:
        return msgspec.convert(raw, type_)
    except msgspec.ValidationError as exc:  # a rule the walk does not know: msgspec's own words
        raise Invalid([str(exc)]) from None


def _unwrap(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    metas: list[msgspec.Meta] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        metas += [m for m in extra if isinstance(m, msgspec.Meta)]
    return tp, metas


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _walk(value: Any, tp: Any, path: str, errors: list[str]) -> None:
    base, metas = _unwrap(tp)
    origin = get_origin(base)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(base) if a is not type(None)]
        if value is None and len(options) < len(get_args(base)):
            return
        if len(options) == 1:
            _walk(value, options[0], path, errors)
            return
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        _walk_struct(value, base, path, errors)
        return
    if origin is list and isinstance(value, list):
        (item,) = get_args(base) or (Any,)
        if metas and (problem := _leaf(value, Annotated[(list, *metas)], metas)) is not None:
            errors.append(f"{problem} - at `{path}`")
        for i, element in enumerate(value):
            _walk(element, item, f"{path}[{i}]", errors)
        return
    if (problem := _leaf(value, tp, metas)) is not None:
        errors.append(f"{problem} - at `{path}`")


def _walk_struct(value: Any, struct: type[msgspec.Struct], path: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(f"expected a table, got {_kind(value)} - at `{path}`")
        return
    fields = {f.encode_name: f for f in msgspec.structs.fields(struct)}
    if struct.__struct_config__.forbid_unknown_fields:
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields)) or "none"
                errors.append(f"unknown key {key!r} (the keys here are: {known}) - at `{path}`")
    for name, field in fields.items():
        if name in value:
            _walk(value[name], field.type, f"{path}.{name}", errors)
        elif field.required:
            errors.append(f"the key {name!r} is required - at `{path}`")


def _leaf(value: Any, tp: Any, metas: list[msgspec.Meta]) -> str | None:
    """Why ``value`` is not a ``tp`` (in words), or None."""
    try:
        msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        pass_through = str(exc)
    else:
        return None
    base, _ = _unwrap(tp)
    if get_origin(base) is Literal and isinstance(value, str):
        return f"expected one of {', '.join(repr(a) for a in get_args(base))}, got {value!r}"
    for meta in metas:
        if meta.pattern is not None and isinstance(value, str) and re.search(meta.pattern, value) is None:
            return f"expected {meta.description or 'a value of another form'}, got {_shown(value)}"
    for name, words in _TYPE_WORDS.items():
        pass_through = pass_through.replace(name, words)
    scalar = isinstance(value, (str, int, float)) and " got " not in pass_through
    return pass_through[0].lower() + pass_through[1:] + (f", got {_shown(value)}" if scalar else "")


#: msgspec's names of TOML's types, as said in words.
_TYPE_WORDS = {
    "`object`": "a table", "`array`": "an array", "`str`": "a string", "`int`": "an integer",
    "`float`": "a number", "`bool`": "a boolean", "`null`": "nothing",
}  # fmt: skip


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "..."


def patterns_without_words(type_: Any, seen: set[Any] | None = None) -> list[str]:
    """The ``pattern`` constraints reachable from ``type_`` that have no ``description``
    (each would be shown as a regular expression: a test keeps this list empty)."""
    seen = set() if seen is None else seen
    found: list[str] = []
    base, metas = _unwrap(type_)
    found += [m.pattern for m in metas if m.pattern is not None and not m.description]
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        if base in seen:
            return found
        seen.add(base)
        for field in msgspec.structs.fields(base):
            found += patterns_without_words(field.type, seen)
    else:
        for arg in get_args(base):
            if arg is not type(None) and not isinstance(arg, (str, int, msgspec.Meta)):
                found += patterns_without_words(arg, seen)
    return found


__all__ = ["Invalid", "convert", "decode_toml", "patterns_without_words"]
