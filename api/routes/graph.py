"""``GET /graph/client_count`` (spec: "Client Count"): connected clients now."""
from __future__ import annotations

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.guard import authorized, success

bp = Blueprint("graph", url_prefix="/graph")


@bp.get("/client_count", ignore_body=False)
@authorized
async def client_count(request: Request) -> HTTPResponse:
    """The sum of every worker's count; a worker that does not answer in time
    is counted from the registry (its devices marked active) instead."""
    ctx = request.app.ctx
    counts = await ctx.workers.counts()
    total = sum(c for c in counts if c is not None)
    silent = {k for k, c in enumerate(counts) if c is None}
    if silent:
        total += sum(1 for _, rec in ctx.devices.rows()
                     if rec.get("status") == "active" and rec.get("worker") in silent)
    return success(count=total)
