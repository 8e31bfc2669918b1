"""The admin server: the status page at `/`, the JSON API under `/api/v1/`, actions behind a token.

Errors are the API's documents (`{"error", "message"}`) with the status the OpenAPI document
declares: 404 unknown rollout, 409 a transition the phase does not allow (or a lost
compare-and-set), 401/403 for actions without the token, 503 while Redis is unreachable.
"""

from __future__ import annotations

import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lvm_gateway.admin import page, views
from lvm_gateway.admin.model import (
    ACTIONS,
    ActionResult,
    AdvanceRequest,
    Error,
    RollbackRequest,
    RolloutList,
)
from lvm_gateway.admin.openapi import openapi_document
from lvm_gateway.contract.strict import pydantic_errors
from lvm_gateway.errors import AdminServerError, RolloutError, UnknownRolloutError
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.store import RolloutStore

# Shorter tokens are refused at start-up: a guessable secret is worse than none.
MIN_TOKEN_LENGTH = 16
# abort takes a reason like rollback: both stop the rollout at weight 0.
_BODIES: dict[str, type[BaseModel]] = {
    "advance": AdvanceRequest,
    "rollback": RollbackRequest,
    "abort": RollbackRequest,
}


def check_token(token: str | None, source: str) -> str | None:
    """The configured token, None for read-only; too short a token is a start-up error."""
    if not token:
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise AdminServerError(
            f"{source} holds {len(token)} characters; an admin token needs at least "
            f"{MIN_TOKEN_LENGTH} (e.g. `openssl rand -hex 24`)"
        )
    return token


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = Error(error=code, message=message).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


def _answer(doc: BaseModel) -> Response:
    return JSONResponse(doc.model_dump(mode="json"))


class AdminApp:
    def __init__(self, redis_url: str, prefix: str, token: str | None) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.token = token
        self._store: RolloutStore | None = None
        self.app = Starlette(
            routes=[
                Route("/", self.index),
                Route("/partials/rollouts", self.partial),
                Route("/api/v1/openapi.json", self.openapi),
                Route("/api/v1/rollouts", self.list_rollouts),
                Route("/api/v1/rollouts/{name}", self.get_rollout),
                Route("/api/v1/rollouts/{name}/history", self.get_history),
                Route("/api/v1/rollouts/{name}/{action}", self.act, methods=["POST"]),
                Mount("/static", StaticFiles(directory=Path(__file__).parent / "static")),
            ],
            exception_handlers={
                UnknownRolloutError: self._unknown,
                RolloutError: self._refused,
                RedisError: self._redis_down,
                HTTPException: self._http,
            },
            lifespan=self._lifespan,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        client = open_client(self.redis_url)
        self._store = RolloutStore(client, self.prefix)
        try:
            yield
        finally:
            await client.aclose()

    @property
    def store(self) -> RolloutStore:
        assert self._store is not None, "the lifespan opens the store"
        return self._store

    # -- errors ------------------------------------------------------------------------------

    async def _unknown(self, _request: Request, exc: Exception) -> Response:
        return _error(404, "unknown_rollout", str(exc))

    async def _refused(self, _request: Request, exc: Exception) -> Response:
        return _error(409, "refused", str(exc))

    async def _redis_down(self, request: Request, exc: Exception) -> Response:
        message = f"Redis is unreachable ({type(exc).__name__}: {exc}); retrying on refresh"
        if request.url.path.startswith("/api/"):
            return _error(503, "redis_unavailable", message)
        return Response(message, status_code=503, media_type="text/plain")

    async def _http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/api/"):
            code = "not_found" if exc.status_code == 404 else "http_error"
            return _error(exc.status_code, code, f"{exc.detail}: {request.url.path}")
        return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")

    # -- the page ----------------------------------------------------------------------------

    async def index(self, _request: Request) -> Response:
        rollouts = await page.rollouts(self.store)
        html = page.render("page.html", rollouts=rollouts, actions_enabled=self.token is not None)
        return HTMLResponse(html)

    async def partial(self, _request: Request) -> Response:
        return HTMLResponse(page.render("rollouts.html", rollouts=await page.rollouts(self.store)))

    # -- the API -----------------------------------------------------------------------------

    async def openapi(self, _request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def list_rollouts(self, _request: Request) -> Response:
        return _answer(RolloutList(rollouts=await views.summaries(self.store)))

    async def get_rollout(self, request: Request) -> Response:
        return _answer(await views.detail(self.store, request.path_params["name"]))

    async def get_history(self, request: Request) -> Response:
        return _answer(await views.history(self.store, request.path_params["name"]))

    def _authorize(self, request: Request) -> Response | None:
        if self.token is None:
            return _error(
                403,
                "read_only",
                "actions are disabled: this admin server has no token configured "
                "(set the variable named by --admin-token-env)",
            )
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        challenge = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not given.strip():
            return _error(
                401, "unauthorized", "actions need 'Authorization: Bearer <token>'", challenge
            )
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return _error(401, "unauthorized", "wrong token", challenge)
        return None

    async def _body(self, request: Request, action: str) -> BaseModel | Response | None:
        raw = await request.body()
        try:
            data = json.loads(raw) if raw.strip() else None
        except (ValueError, UnicodeDecodeError):
            return _error(400, "bad_request", "the body must be JSON (or empty)")
        model = _BODIES.get(action)
        if model is None:
            if data not in (None, {}):
                return _error(400, "bad_request", f"{action} takes no body")
            return None
        try:
            return model.model_validate({} if data is None else data)
        except ValidationError as exc:
            return _error(400, "bad_request", "; ".join(pydantic_errors(exc)))

    async def act(self, request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ACTIONS:
            known = ", ".join(ACTIONS)
            return _error(404, "unknown_action", f"unknown action {action!r} (known: {known})")
        denied = self._authorize(request)
        if denied is not None:
            return denied
        body = await self._body(request, action)
        if isinstance(body, Response):
            return body
        who = f"admin page ({request.client.host if request.client else 'unknown'})"
        store = self.store
        if isinstance(body, AdvanceRequest):
            status = await ops.advance(store, name, body.to, body.full, body.force, who)
        elif isinstance(body, RollbackRequest) and action == "abort":
            status = await ops.abort(store, name, body.reason, who)
        elif isinstance(body, RollbackRequest):
            status = await ops.rollback(store, name, body.reason, who)
        elif action == "start":
            status = await ops.start(store, name, who)
        elif action == "pause":
            status = await ops.pause(store, name, who)
        else:
            status = await ops.resume(store, name, who)
        summary = views.summary(status, await store.registered(name))
        return _answer(ActionResult(action=action, rollout=summary))  # type: ignore[arg-type]
