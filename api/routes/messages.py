"""``send_client`` and ``send_all`` (spec: "Clientsend", "Sendall").

Both go to the workers over their control sockets (api/workers.py); the
worker does what a PUBLISH would do, exactly once per call (bwfast/once.py).
The topic is a topic name, so wildcards are refused [MQTT-3.3.2-2].
"""
from __future__ import annotations

from typing import Any

from bwfast.topics import valid_topic
from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.errors import BadParameter, NotFound, fail_body
from api.guard import authorized, success
from api.params import Params
from api.views import lookup
from bwfast.store import Store

bp = Blueprint("messages", url_prefix="/bwiot/api/v1")

NOT_DELIVERED = "Message could not be delivered"


def _publish_args(params: Params) -> dict[str, Any]:
    """topic, message, QoS and retain, checked in the order the spec lists them."""
    topic = params.text("topic")
    assert topic is not None
    if not valid_topic(topic):
        raise BadParameter("topic", "topic must be a topic name: no + or #, no U+0000")
    message = params.payload("message")
    return {"topic": topic, "message": message, "qos": params.qos(),
            "retain": params.flag("retain")}


def _holder(store: Store, clientid: str) -> int | None:
    """The worker that holds the client: `clients` (written before its CONNACK,
    with more than one worker), else its device row (flushed within a second)."""
    owner = lookup(store, "clients", clientid)
    if isinstance(owner, int):
        return owner
    rec = lookup(store, "devices", clientid)
    hint = rec.get("worker") if isinstance(rec, dict) else None
    return hint if isinstance(hint, int) else None


@bp.post("/send_client")
@authorized
async def send_client(request: Request) -> HTTPResponse:
    """A PUBLISH to one connected client, subscribed to the topic or not,
    with the QoS and retain flag asked (CONTRACT.md); nothing stored for others."""
    params = Params(request)
    clientid = params.text("clientid")
    assert clientid is not None
    args = _publish_args(params)
    ctx = request.app.ctx
    if not await ctx.workers.send_client(clientid, _holder(ctx.store, clientid), args):
        raise NotFound(fail_body(NOT_DELIVERED))
    return success(f"Message sent to client:{clientid}")


@bp.post("/send_all")
@authorized
async def send_all(request: Request) -> HTTPResponse:
    """An ordinary publish: every matching subscriber gets it, and a retained
    one is stored as any client's would be."""
    args = _publish_args(Params(request))
    if await request.app.ctx.workers.send_all(args) is None:
        raise NotFound(fail_body(NOT_DELIVERED))
    return success(f"Message sent to subscribers of topic:{args['topic']}")
