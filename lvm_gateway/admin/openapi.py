"""The JSON API's OpenAPI 3.1 document, its schemas generated from admin/model.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lvm_gateway.admin.model import (
    ActionResult,
    AdvanceRequest,
    Detail,
    Error,
    History,
    RollbackRequest,
    RolloutList,
)

_ANSWERS: tuple[type[BaseModel], ...] = (ActionResult, Detail, Error, History, RolloutList)
_BODIES: tuple[type[BaseModel], ...] = (AdvanceRequest, RollbackRequest)
_REF = "#/components/schemas/{model}"
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "the rollout's name (its key under `rollouts:` in the policy file)",
    "schema": {"type": "string"},
}
_ACTION_DOCS = {
    "start": ("Start (or retry) the rollout from its first step", None),
    "advance": ("Move to the next step (gated on the analysis unless force)", AdvanceRequest),
    "pause": ("Hold the rollout at its step", None),
    "resume": ("Resume a paused rollout with a fresh step clock", None),
    "rollback": ("Send every user back to the stable variant", RollbackRequest),
    "abort": ("Abandon the rollout (weight 0, phase Aborted)", RollbackRequest),
}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "the request body is not valid for this action",
        401: "no or wrong bearer token",
        403: "actions are disabled: the server has no token configured",
        404: "no rollout by that name",
        409: "the transition is not allowed from the rollout's phase, or it changed meanwhile",
        503: "Redis is unreachable",
    }
    return {str(c): _json(Error, text[c]) for c in codes}


def _links() -> dict[str, Any]:
    """From the list to every operation on its first rollout (for stateful API testing)."""
    targets = ["getRollout", "getHistory", *(f"{a}Rollout" for a in _ACTION_DOCS)]
    name = {"name": "$response.body#/rollouts/0/name"}
    return {t: {"operationId": t, "parameters": name} for t in targets}


def openapi_document() -> dict[str, Any]:
    _, defs = models_json_schema(
        [(m, "serialization") for m in _ANSWERS] + [(m, "validation") for m in _BODIES],
        ref_template=_REF,
    )
    paths: dict[str, Any] = {
        "/api/v1/rollouts": {
            "get": {
                "operationId": "listRollouts",
                "summary": "Every registered rollout, in one line each",
                "responses": {
                    "200": {**_json(RolloutList, "the rollouts"), "links": _links()},
                    **_errors(503),
                },
            }
        },
        "/api/v1/rollouts/{name}": {
            "get": {
                "operationId": "getRollout",
                "summary": "A rollout's status, analysis, lanes and metrics over time",
                "parameters": [_NAME],
                "responses": {"200": _json(Detail, "the rollout"), **_errors(404, 503)},
            }
        },
        "/api/v1/rollouts/{name}/history": {
            "get": {
                "operationId": "getHistory",
                "summary": "Every transition of the rollout, oldest first, with its reason",
                "parameters": [_NAME],
                "responses": {"200": _json(History, "the history"), **_errors(404, 503)},
            }
        },
    }
    for action, (summary, body) in _ACTION_DOCS.items():
        op: dict[str, Any] = {
            "operationId": f"{action}Rollout",
            "summary": summary,
            "parameters": [_NAME],
            "security": [{"bearer": []}],
            "responses": {
                "200": _json(ActionResult, "the rollout after the transition"),
                **_errors(400, 401, 403, 404, 409, 503),
            },
        }
        if body is not None:
            op["requestBody"] = {
                "required": False,
                "content": {
                    "application/json": {"schema": {"$ref": _REF.format(model=body.__name__)}}
                },
            }
        paths[f"/api/v1/rollouts/{{name}}/{action}"] = {"post": op}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "lvm-gateway admin API",
            "version": "1",
            "description": "Rollouts as the control plane holds them in Redis; actions need "
            "`Authorization: Bearer <token>` (the variable named by --admin-token-env).",
        },
        "paths": paths,
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
