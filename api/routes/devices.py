"""The listings (spec: "Device List" ... "WILL Topic"), read straight from LMDB.

Workers keep ``devices``, ``subs``, ``events``, ``commands`` and ``wills``
current (bwfast/history.py, bwfast/registry.py); reads here are short read
transactions. Ids come URL-decoded in the query and may be any UTF-8.
"""
from __future__ import annotations

import math

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api import nodes, views
from api.errors import NotFound, fail_body
from api.guard import authorized, no_data, success
from api.params import Params

bp = Blueprint("devices", url_prefix="/bwiot/api/v1")

PAGE_LIMIT = 10        # devices/ rows per page by default (CONTRACT.md)
MAX_PAGE_LIMIT = 1000
HISTORY_LIMIT = 1      # last_events/last_commands: 1 by default, up to 10 (spec)
MAX_HISTORY = 10


def _device_id(params: Params, required: bool) -> str | None:
    return params.text("device_id", required=required)


@bp.get("/devices", ignore_body=False)
@authorized
async def devices(request: Request) -> HTTPResponse:
    """Every device, active or not, most recent first, a page at a time.
    ``page`` in the answer is the number of pages (as the Bevywise UI reads it)."""
    params = Params(request)
    page = params.integer("page", 1, 1, 10**9)
    limit = params.integer("limit", PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
    rows = await nodes.device_rows(request.app.ctx)  # [cluster]: every node's
    pages = math.ceil(len(rows) / limit)
    if page > pages:
        raise NotFound(fail_body("No Device / Invalid Page"))
    chunk = rows[(page - 1) * limit:page * limit]
    return success(data=[views.device_row(k, r) for k, r in chunk], page=pages,
                   current_page=page, total=len(rows))


@bp.get("/connected_devices", ignore_body=False)
@authorized
async def connected_devices(request: Request) -> HTTPResponse:
    """Active devices, numbered from "1" in the order they connected."""
    rows = [r for _, r in await nodes.device_rows(request.app.ctx)
            if r.get("status") == "active"]
    rows.reverse()
    ids = {str(n): views.device_row(b"", r)["device_id"] for n, r in enumerate(rows, 1)}
    return success(devices=ids)


@bp.get("/subscriptions", ignore_body=False)
@authorized
async def subscriptions(request: Request) -> HTTPResponse:
    """Every subscription of every device, or of ``device_id`` only."""
    device_id = _device_id(Params(request), required=False)
    store = request.app.ctx.store
    ctx = request.app.ctx
    if device_id is not None:
        rec = views.lookup(store, "subs", device_id)
        if rec is None and ctx.cluster:
            rec = dict(await nodes.rows(ctx, "subs")).get(device_id)
        found = [(device_id, rec)] if isinstance(rec, dict) else []
    elif ctx.cluster:
        found = [(cid, r) for cid, r in await nodes.rows(ctx, "subs") if isinstance(r, dict)]
    else:
        found = [(views.key_text(k), r) for k, r in store.items("subs") if isinstance(r, dict)]
    names = (nodes.names(await nodes.device_rows(ctx)) if ctx.cluster
             else ctx.devices.names())
    rows = [{"topic": f, "device_name": names.get(cid, cid), "QoS": qos, "device_id": cid}
            for cid, subs in found for f, qos in sorted(subs.items())]
    return success(subscriptions=rows) if rows else no_data()


async def _history(request: Request, db: str, key: str) -> HTTPResponse:
    params = Params(request)
    device_id = _device_id(params, required=True)
    assert device_id is not None
    limit = params.integer("limit", HISTORY_LIMIT, 1, MAX_HISTORY)
    rows = views.message_rows(views.lookup(request.app.ctx.store, db, device_id), limit)
    return success(None, **{key: rows}) if rows else no_data()


@bp.get("/last_events_by_device", ignore_body=False)
@authorized
async def last_events_by_device(request: Request) -> HTTPResponse:
    """The newest messages the device published (up to 10), newest first."""
    return await _history(request, "events", "events")


@bp.get("/last_commands_to_device", ignore_body=False)
@authorized
async def last_commands_to_device(request: Request) -> HTTPResponse:
    """The newest messages delivered to the device (up to 10), newest first."""
    return await _history(request, "commands", "commands")


@bp.get("/wills", ignore_body=False)
@authorized
async def wills(request: Request) -> HTTPResponse:
    """The will each device has right now, or ``device_id``'s only."""
    device_id = _device_id(Params(request), required=False)
    store = request.app.ctx.store
    ctx = request.app.ctx
    if device_id is not None:
        rec = views.lookup(store, "wills", device_id)
        if rec is None and ctx.cluster:
            rec = dict(await nodes.rows(ctx, "wills")).get(device_id)
        found = [(device_id, rec)]
    elif ctx.cluster:
        found = await nodes.rows(ctx, "wills")
    else:
        found = [(views.key_text(k), r) for k, r in store.items("wills")]
    names = ((nodes.names(await nodes.device_rows(ctx)) if ctx.cluster
              else ctx.devices.names()) if found else {})
    rows = [row for cid, rec in found
            if (row := views.will_row(cid, names.get(cid, cid), rec)) is not None]
    return success(will=rows) if rows else no_data()
