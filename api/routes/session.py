"""``login`` and ``logout`` (spec: "Log-in API", "Logout")."""
from __future__ import annotations

import hmac
import math

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.errors import InvalidLogin, TooManyLogins
from api.guard import authorized, success
from api.params import Params

bp = Blueprint("session", url_prefix="/bwiot/api/v1")


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


@bp.post("/login")
async def login(request: Request) -> HTTPResponse:
    """The [api] username and password buy a token. Ten failures from one
    address within a minute lock it out for the rest of the minute (429)."""
    ctx = request.app.ctx
    addr = request.ip or "unknown"
    wait = ctx.throttle.blocked_for(addr)
    if wait > 0:
        raise TooManyLogins(math.ceil(wait))
    params = Params(request)
    username = params.text("username")
    password = params.text("password", allow_empty=True)
    assert username is not None and password is not None
    # Both compared, always: the time taken says nothing about which was wrong.
    ok_user = _same(username, ctx.cfg.api.username)
    ok_password = _same(password, ctx.cfg.api.password)
    if not (ok_user and ok_password):
        ctx.throttle.failed(addr)
        raise InvalidLogin()
    return success("Logged in", access_token=ctx.tokens.issue(username))


@bp.post("/logout")
@authorized
async def logout(request: Request) -> HTTPResponse:
    """Revoke this token at once; it is refused from the next call on."""
    request.app.ctx.tokens.revoke(request.ctx.claims)
    return success("Logged Out")
