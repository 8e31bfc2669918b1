"""Validation errors in the words of the person who wrote the file, not of pydantic.

`humanize(exc, document, model)` turns a `pydantic.ValidationError` into one line per problem:
the path as written in the YAML (`routes[0].policy.canary.weight`), what is wrong in user terms
(`must be a list`, not `Input should be a valid tuple`), the offending value
(`150 is more than 100 (the maximum)`), and for an unknown key the closest known one. Union
member names and validator names that pydantic adds to locations (`str`, `dict[str,any]`,
`literal['shadow']`, `function-after[...]`) are not in the document: they are dropped, and the
alternatives they stood for are merged into one message (`must be a number or 'shadow'`).
"""

from __future__ import annotations

import difflib
import json
import re
import types
from collections.abc import Iterable
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

_MISSING = object()
_INDEXED = re.compile(r"\[(\d+)\]((?:\.[A-Za-z_][A-Za-z0-9_]*)*): ")

# What each pydantic type error expects, said as a YAML author would.
_EXPECTED = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_parsing_size": "a whole number of at most 64 bits",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "set_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "finite_number": "a finite number",
    "none_required": "empty",
}
_SCALAR_NAMES = frozenset({"str", "int", "float", "bool", "none", "dict", "list", "tuple", "set"})


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest known name, else ``; append it to a message."""
    choices = list(known)
    text = str(name)
    folded = [k for k in choices if k.lower() == text.lower()]
    close = folded or difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def show(value: Any) -> str:
    """A value as the YAML author would recognise it, short."""
    if value is _MISSING or value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 60 else f'{text[:56]}..."'
    if isinstance(value, int | float):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return " (a string)"
    if isinstance(value, bool):
        return " (a boolean)"
    return ""


def format_path(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            text = show(part) if not isinstance(part, str) else part
            out += f".{text}" if out else text
    return out or "(document)"


def _is_tag(part: Any) -> bool:
    """A location part pydantic adds (a union member or validator), never a YAML key."""
    return isinstance(part, str) and ("[" in part or part in _SCALAR_NAMES or part[:1].isupper())


def _walk(document: Any, loc: tuple[Any, ...]) -> tuple[list[Any], Any, bool]:
    """(path as written, the value there, whether the error is about a mapping's key).

    For a key error the path is the mapping's: pydantic's location holds the key converted
    (`on:` is read as True and located as 1), the error's input holds the key as read.
    """
    path: list[Any] = []
    node = document
    for part in loc:
        if part == "[key]":
            return path[:-1], _MISSING, True
        if _contains(node, part):
            node = node[part]
        elif _is_tag(part):
            continue
        else:
            node = _MISSING  # a required key the document does not have
        path.append(part)
    return path, node, False


def _contains(node: Any, part: Any) -> bool:
    if isinstance(node, list):
        return isinstance(part, int) and 0 <= part < len(node)
    return isinstance(node, dict) and _has_key(node, part)


def _has_key(node: dict[Any, Any], part: Any) -> bool:
    try:
        return part in node
    except TypeError:
        return False


def _unwrap(tp: Any) -> list[Any]:
    """The alternatives of a union annotation (None dropped), else the annotation itself."""
    if get_origin(tp) in (Union, types.UnionType):
        return [a for a in get_args(tp) if a is not type(None)]
    return [tp]


def _model_at(model: type[BaseModel], path: list[Any]) -> type[BaseModel] | None:
    """The model that validates the mapping at `path`, when the annotations say which."""
    candidates: list[Any] = [model]
    for part in path:
        following: list[Any] = []
        for tp in (alt for c in candidates for alt in _unwrap(c)):
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                field = tp.model_fields.get(part) if isinstance(part, str) else None
                if field is not None:
                    following.append(field.annotation)
            elif get_origin(tp) is dict:
                following.append(get_args(tp)[1])
            elif get_origin(tp) in (tuple, list) and get_args(tp):
                following.append(get_args(tp)[0])
        candidates = following
    models = [
        tp
        for c in candidates
        for tp in _unwrap(c)
        if isinstance(tp, type) and issubclass(tp, BaseModel)
    ]
    return models[0] if len(models) == 1 else None


def _bound(kind: str, value: Any, ctx: dict[str, Any]) -> str:
    limit = show(next(iter(ctx.values())))
    return {
        "less_than_equal": f"{show(value)} is more than {limit} (the maximum)",
        "greater_than_equal": f"{show(value)} is less than {limit} (the minimum)",
        "greater_than": f"{show(value)} must be more than {limit}",
        "less_than": f"{show(value)} must be less than {limit}",
    }[kind]


def _message(err: Any, value: Any, key: bool, path: list[Any], model: Any) -> tuple[str, str]:
    """(what is expected, for merging alternatives; or "", the whole message)."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if key:
        return "", (
            f"the name {show(err['input'])} must be a string (YAML reads unquoted on/off/yes/no/"
            "true/false/null and numbers as other types: quote it)"
        )
    if kind == "missing":
        return "", "missing (required)"
    if kind == "extra_forbidden":
        owner = _model_at(model, path[:-1]) if model is not None else None
        hint = did_you_mean(path[-1], owner.model_fields) if owner is not None else ""
        return "", f"unknown key{hint}"
    if kind in ("less_than_equal", "greater_than_equal", "greater_than", "less_than"):
        return "", _bound(kind, value, ctx)
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace("' or '", "', '")
        return f"one of {expected}" if "," in expected else expected, ""
    if kind in _EXPECTED:
        return _EXPECTED[kind], ""
    if kind in ("string_too_long", "too_long"):
        return "", f"{len(value)} long, more than the maximum of {ctx.get('max_length')}"
    if kind in ("string_too_short", "too_short"):
        return "", f"needs at least {ctx.get('min_length')}, got {len(value)}"
    if kind == "string_pattern_mismatch":
        return "", f"{show(value)} does not match {ctx.get('pattern')}"
    msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return "", msg.replace("Input should be", "must be")


def humanize(
    exc: ValidationError,
    document: Any,
    model: type[BaseModel] | None = None,
    prefix: str = "",
) -> list[str]:
    """One line per problem in `document` (the data given to `model.model_validate`), each
    `path: message`, alternatives at one path merged; `prefix` is prepended to paths
    (a policy's params validated on their own)."""
    order: list[str] = []
    expected: dict[str, list[str]] = {}
    values: dict[str, Any] = {}
    whole: dict[str, list[str]] = {}
    for err in exc.errors():
        path, value, key = _walk(document, tuple(err["loc"]))
        if value is _MISSING and err["type"] != "missing":
            value = err.get("input", _MISSING)
        want, msg = _message(err, value, key, path, model)
        inner = _INDEXED.match(msg)
        if inner is not None:
            # A validator pointing inside a list ("[2]: must be > 20", "[1].pause.duration: ...")
            # extends the path.
            msg = msg[inner.end() :]
            keys = [k for k in inner.group(2).split(".") if k]
            path = [*path, int(inner.group(1)), *keys]
        where = format_path(path)
        if prefix:
            where = prefix if where == "(document)" else f"{prefix}.{where}"
        if where not in whole:
            order.append(where)
            whole[where], expected[where] = [], []
        if want:
            if want not in expected[where]:
                expected[where].append(want)
            values[where] = value
        elif msg not in whole[where]:
            whole[where].append(msg)
    lines = []
    for where in order:
        if expected[where]:
            value = values[where]
            lines.append(
                f"{where}: must be {' or '.join(expected[where])}, got {show(value)}{_kind(value)}"
            )
        lines.extend(f"{where}: {msg}" for msg in whole[where])
    return lines
