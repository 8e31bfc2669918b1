"""The base of every config type: strict, immutable, unknown keys refused.

Strict means what the YAML says is what the model gets: `timeout_ms: "250"`, `weight: "10"`
and `fallback: "yes"` are errors, not coerced; `.inf` and `.nan` are refused. How validation
errors read is `contract/humanize.py`.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


T = TypeVar("T")


def _list_as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# A YAML list held as an immutable tuple. Strict mode takes only tuples for tuple fields; YAML
# (and JSON round trips) give lists, so those, and only those, are converted before validation.
Seq = Annotated[tuple[T, ...], BeforeValidator(_list_as_tuple)]
