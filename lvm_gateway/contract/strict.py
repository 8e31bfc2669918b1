"""The base of every config type, and how a validation error's location is written for people."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def format_loc(loc: tuple[Any, ...]) -> str:
    """A pydantic location as the document's path: `rollouts.lvm.steps[2]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def pydantic_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    """Every error of a ValidationError as `path: message`, paths relative to `prefix`."""
    errors = []
    for err in exc.errors():
        # Function-validator locations add noise that is not in the document.
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        path = format_loc(loc)
        if prefix:
            path = prefix if path == "(document)" else f"{prefix}.{path}"
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith("[") and ": " in msg:
            # A validator that points inside a list ("[2]: must be > 20", "[1].pause.x: ...")
            # extends the path.
            index, msg = msg.split(": ", 1)
            path += index
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        errors.append(f"{path}: {msg}")
    return errors
