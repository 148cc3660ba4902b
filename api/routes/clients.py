"""``kick``: disconnect a client by id, wherever it is connected (CONTRACT.md).

Every worker is asked (a client may have just moved; the registry can lag),
and the one that has it closes it: v5 gets DISCONNECT 0x98 (Administrative
action, as EMQX sends), v3 is closed. Its will is published, as EMQX does on
a kick: the client did not disconnect gracefully.
"""
from __future__ import annotations

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.errors import NotFound, fail_body
from api.guard import authorized, success
from api.params import Params

bp = Blueprint("clients", url_prefix="/bwiot/api/v1")


@bp.post("/kick")
@authorized
async def kick(request: Request) -> HTTPResponse:
    clientid = Params(request).text("clientid")
    assert clientid is not None
    if not await request.app.ctx.workers.kick(clientid):
        raise NotFound(fail_body(f"Client not connected:{clientid}"))
    return success(f"Client disconnected:{clientid}")
