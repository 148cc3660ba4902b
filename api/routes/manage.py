"""Management calls behind the console: client detail, clear a client's queue,
the console's device list, retained messages, broker stats.

Same conventions as the spec's endpoints (CONTRACT.md, "REST API"):
``bwapi-status`` success/fail, 400 for a missing or bad parameter, 404 for an
unknown client or topic. Live figures come from the workers' control sockets
(api/workers.py, bwfast/observe.py); the rest from LMDB.
"""
from __future__ import annotations

import math
from typing import Any

from bwfast.topics import valid_topic
from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api import views
from api.errors import BadParameter, NotFound, fail_body
from api.guard import authorized, no_data, success
from api.listing import SORTS, STATUSES, console_row
from api.params import Params
from api.stats import summary
from bwfast.store import dbkey

bp = Blueprint("manage", url_prefix="/bwiot/api/v1")

PAGE_LIMIT = 25
MAX_PAGE_LIMIT = 1000
PREVIEW = 1024   # bytes of a retained payload shown in the list
VERSIONS = {3: "3.1", 4: "3.1.1", 5: "5.0"}


def _clientid(params: Params) -> str:
    clientid = params.text("clientid", no_nul=True)
    assert clientid is not None
    return clientid


def _choice(params: Params, name: str, choices: tuple[str, ...], default: str) -> str:
    value = params.text(name, required=False) or default
    if value not in choices:
        raise BadParameter(name, f"{name} must be one of {', '.join(choices)}")
    return value


@bp.get("/client", ignore_body=False)
@authorized
async def client(request: Request) -> HTTPResponse:
    """One client: its registry row, the session its worker holds (connected or
    kept offline), subscriptions with QoS, queued and in-flight counts, will."""
    clientid = _clientid(Params(request))
    ctx = request.app.ctx
    rec = views.lookup(ctx.store, "devices", clientid)
    live = await ctx.workers.client(clientid)
    if not isinstance(rec, dict) and live is None:
        raise NotFound(fail_body(f"Unknown client:{clientid}"))
    row = console_row(clientid.encode(), rec if isinstance(rec, dict) else {"id": clientid})
    out: dict[str, Any] = {
        **row,
        "protocol_version": VERSIONS.get(row.pop("protocol") or 0),
        "session": live is not None,
        "connected": bool(live and live.get("connected")),
    }
    if live is not None:
        for key in ("protocol_version", "listener", "address", "username", "keepalive",
                    "persistent", "session_expiry", "queued", "inflight", "worker"):
            if live.get(key) is not None or key not in out:
                out[key] = live.get(key)
        out["subscriptions"] = live.get("subscriptions") or []
        will = live.get("will")
        out["will"] = None if will is None else {
            **views.payload_fields(will.pop("payload", b"")), **will}
    else:
        subs = views.lookup(ctx.store, "subs", clientid)
        out.update(persistent=False, queued=0, inflight=0, keepalive=None, session_expiry=0,
                   subscriptions=[{"topic": f, "QoS": q} for f, q in sorted(subs.items())]
                   if isinstance(subs, dict) else [])
        w = views.will_row(clientid, row["device_name"], views.lookup(ctx.store, "wills",
                                                                         clientid))
        out["will"] = None if w is None else {k: w[k] for k in ("topic", "QoS", "retain",
                                                                "message", "encoding") if k in w}
    # The worker's word is newer than the registry row (flushed every 0.5 s).
    if live is not None:
        out["status"] = "active" if out["connected"] else "inactive"
    return success(client=out)


@bp.post("/clear_queue")
@authorized
async def clear_queue(request: Request) -> HTTPResponse:
    """Drop the messages waiting in a client's offline queue (not those in flight)."""
    clientid = _clientid(Params(request))
    cleared = await request.app.ctx.workers.clear_queue(clientid)
    if cleared is None:
        raise NotFound(fail_body(f"No session for client:{clientid}"))
    return success(f"Queue cleared for client:{clientid}", cleared=cleared)


@bp.get("/clients", ignore_body=False)
@authorized
async def clients(request: Request) -> HTTPResponse:
    """The device registry for the console: ``status`` (all, active, inactive),
    ``search`` (part of the client id or username), ``sort`` (connected, id,
    username, status), ``order`` (asc, desc), ``page`` and ``limit``."""
    params = Params(request)
    status = _choice(params, "status", STATUSES, "all")
    search = params.text("search", required=False) or ""
    sort = _choice(params, "sort", SORTS, "connected")
    order = _choice(params, "order", ("asc", "desc"),
                    "desc" if sort == "connected" else "asc")
    page = params.integer("page", 1, 1, 10**9)
    limit = params.integer("limit", PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
    rows, total = await request.app.ctx.listing.page(status, search, sort, order == "desc", page, limit)
    return success(data=rows, total=total, current_page=page,
                   page=max(1, math.ceil(total / limit)))


def _retained_row(rec: Any, preview: bool) -> dict[str, Any] | None:
    if not isinstance(rec, (list, tuple)) or len(rec) < 8:
        return None
    payload = bytes(rec[1] or b"")
    row = {"topic": rec[0], "QoS": rec[2], "size": len(payload), "time": int(rec[7] * 1000)}
    if preview and len(payload) > PREVIEW:
        row["truncated"] = True
        payload = payload[:PREVIEW]
    return {**row, **views.payload_fields(payload)}


@bp.get("/retained", ignore_body=False)
@authorized
async def retained(request: Request) -> HTTPResponse:
    """Stored retained messages whose topic starts with ``prefix``, in topic order,
    ``limit`` at a time after ``after`` (the last topic of the previous page);
    payloads cut at 1 KB (``truncated``), whole in ``retained_message``."""
    params = Params(request)
    prefix = params.text("prefix", required=False) or ""
    after = params.text("after", required=False) or ""
    limit = params.integer("limit", 50, 1, MAX_PAGE_LIMIT)
    store = request.app.ctx.store
    found = store.page("retained", prefix.encode(), dbkey(after.encode()) if after else b"",
                       limit + 1)
    rows = [r for _, rec in found[:limit] if (r := _retained_row(rec, True)) is not None]
    if not rows:
        return no_data()
    return success(retained=rows, more=len(found) > limit, total=store.entries("retained"))


@bp.get("/retained_message", ignore_body=False)
@authorized
async def retained_message(request: Request) -> HTTPResponse:
    topic = Params(request).text("topic")
    assert topic is not None
    row = _retained_row(request.app.ctx.store.get("retained", topic.encode()), False)
    if row is None:
        raise NotFound(fail_body(f"No retained message:{topic}"))
    return success(retained=row)


@bp.post("/remove_retained")
@authorized
async def remove_retained(request: Request) -> HTTPResponse:
    """Clear a topic's retained message the MQTT way: an empty retained publish
    [MQTT-3.3.1-6], so every worker's copy goes too (subscribers of the topic get
    the empty message, as they would from a client)."""
    topic = Params(request).text("topic")
    assert topic is not None
    if not valid_topic(topic):
        raise BadParameter("topic", "topic must be a topic name: no + or #, no U+0000")
    ctx = request.app.ctx
    if ctx.store.get("retained", topic.encode()) is None:
        raise NotFound(fail_body(f"No retained message:{topic}"))
    answer = await ctx.workers.send_all({"topic": topic, "message": b"", "qos": 0,
                                         "retain": True})
    if answer is None:
        raise NotFound(fail_body("Message could not be delivered"))
    return success(f"Removed retained message:{topic}")


@bp.get("/stats", ignore_body=False)
@authorized
async def stats(request: Request) -> HTTPResponse:
    """Broker figures summed over workers (connections per listener and worker,
    messages and bytes in/out, retained, subscriptions, queued, dropped,
    uptime, version); ``series=1`` adds the last 15 minutes, one sample a second."""
    ctx = request.app.ctx
    params = Params(request)
    ctx.sampler.watched()
    out = summary(await ctx.workers.stats(), ctx.store)
    if params.flag("series"):
        ctx.sampler.add(out)
        out["series"] = ctx.sampler.series()
    return success(stats=out)
