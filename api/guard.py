"""Shared pieces of the route handlers: the token check and JSON responses."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial, wraps
from typing import Any

from sanic import HTTPResponse
from sanic.request import Request
from sanic.response import json as json_response

from api.errors import REASON, STATUS
from api.tokens import bearer

Handler = Callable[..., Awaitable[HTTPResponse]]

# Real JSON, double quotes, UTF-8 ids as they are (CONTRACT.md "Responses are JSON").
dumps = partial(json.dumps, ensure_ascii=False, separators=(",", ":"))


def reply(body: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> HTTPResponse:
    return json_response(body, status=status, headers=headers, dumps=dumps)


def success(reason: str | None = None, **fields: Any) -> HTTPResponse:
    """``{"bwapi-status": "success", ...}`` with the reason first, as the spec prints it."""
    body: dict[str, Any] = {}
    if reason is not None:
        body[REASON] = reason
    body[STATUS] = "success"
    body.update(fields)
    return reply(body)


def no_data() -> HTTPResponse:
    """The listings' "When data not found" answer (spec): a success with no rows."""
    return reply({STATUS: "success", REASON: "no_data_found"})


def authorized(handler: Handler) -> Handler:
    """Every call but login needs a live token (spec, "Authorization Header");
    the check reads the revocation list each time, so logout applies at once."""

    @wraps(handler)
    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        token = bearer(request.headers.get("authorization"))
        request.ctx.claims = request.app.ctx.tokens.check(token)
        return await handler(request, *args, **kwargs)

    return wrapper
