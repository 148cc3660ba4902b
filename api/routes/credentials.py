"""``add_auth``, ``edit_auth``, ``remove_auth`` (spec: "Add Authentication", ...).

Credentials are salted PBKDF2-SHA512 records (bwfast.auth) in the ``auth`` database,
never the password. Workers read them at each CONNECT, so a change applies to
the next CONNECT on any worker as soon as it is committed. Hashing may take tens
of milliseconds, so it runs in a thread, off the event loop. The spec wraps
these three answers in ``{"status": {...}}``; missing parameters and token
errors keep the flat shape, as the spec prints them.

``edit_auth`` and ``remove_auth`` also disconnect every live connection that
authenticated as that username (CONTRACT.md, "Access control"), on every
worker, before answering: a revoked device keeps nothing (v5: DISCONNECT 0x98).
"""
from __future__ import annotations

import asyncio
from typing import Any

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.errors import REASON, STATUS, Conflict, NotFound
from api.guard import authorized, reply
from api.params import Params
from api.views import MAX_KEY
from bwfast.auth import hash_password, verify_password

bp = Blueprint("credentials", url_prefix="/bwiot/api/v1")


def _status(ok: bool, reason: str) -> dict[str, Any]:
    return {"status": {REASON: reason, STATUS: "success" if ok else "fail"}}


def _username(params: Params) -> str:
    # an MQTT UTF-8 string [MQTT-1.5.4-2], and a key LMDB can hold
    username = params.text("username", no_nul=True, max_bytes=MAX_KEY)
    assert username is not None
    return username


def _password(params: Params, name: str, alias: str | None = None) -> str:
    """``name``, or ``alias`` when only that one is given."""
    if alias is not None and params.raw(name) is None and params.raw(alias) is not None:
        name = alias
    value = params.text(name)
    assert value is not None
    return value


@bp.post("/add_auth")
@authorized
async def add_auth(request: Request) -> HTTPResponse:
    params = Params(request)
    username = _username(params)
    password = _password(params, "password")
    store = request.app.ctx.store
    key = username.encode("utf-8")
    if store.get("auth", key) is None:
        record = await asyncio.to_thread(hash_password, password)
        if store.get("auth", key) is None:  # looked again: the hash took a while
            store.put("auth", key, record)
            store.commit()
            return reply(_status(True, f"Added Authentication Credentials. '{username}'"))
    raise Conflict(_status(False, "Username already exist"))


@bp.post("/edit_auth")
@authorized
async def edit_auth(request: Request) -> HTTPResponse:
    params = Params(request)
    username = _username(params)
    password = _password(params, "new_password", alias="password")
    store = request.app.ctx.store
    key = username.encode("utf-8")
    if store.get("auth", key) is not None:
        record = await asyncio.to_thread(hash_password, password)
        if store.get("auth", key) is not None:  # not removed meanwhile
            store.put("auth", key, record)
            store.commit()
            await request.app.ctx.workers.kick_user(username)
            return reply(_status(True, f"Updated Authentication Credentials. '{username}'"))
    raise NotFound(_status(False, f"Failed to update Authentication Credentials. '{username}'"))


@bp.post("/remove_auth")
@authorized
async def remove_auth(request: Request) -> HTTPResponse:
    """The spec names the password too: when given, it must be the user's,
    as the pair (username, password) is what gets removed."""
    params = Params(request)
    username = _username(params)
    password = params.text("password", required=False, allow_empty=True)
    store = request.app.ctx.store
    key = username.encode("utf-8")
    record = store.get("auth", key)
    matches = record is not None and (
        password is None or await asyncio.to_thread(verify_password, record, password))
    if not matches:
        raise NotFound(_status(False, "This username does not exist."))
    store.delete("auth", key)
    store.commit()
    await request.app.ctx.workers.kick_user(username)
    return reply(_status(True, f"Removed Authentication Credentials. '{username}'"))
