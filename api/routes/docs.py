"""``GET /bwiot/api/v1/openapi.json``: the API's own description (no token needed)."""
from __future__ import annotations

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.guard import reply
from api.openapi import document

bp = Blueprint("docs", url_prefix="/bwiot/api/v1")


@bp.get("/openapi.json", ignore_body=False)  # a body sent anyway is read, not logged
async def openapi(request: Request) -> HTTPResponse:
    return reply(document())
