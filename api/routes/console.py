"""The web console: its static files at ``/``, the credential list and the
Live view's event stream (api/live.py).

The pages are static (no build step): api/static/ ships in the package. They
hold no data; everything they show comes from the REST API with the login's
bearer token, so the console is exactly as protected as the API.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
from typing import cast

from bwfast.topics import valid_filter
from sanic import Blueprint, HTTPResponse
from sanic.request import Request
from sanic.response import file, redirect

from api.errors import APIError, BadParameter, NotFound, fail_body
from api.guard import authorized, success
from api.live import LiveError, Tap, broker_address, event, is_internal
from api.params import Params
from api.tokens import bearer

STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
HEARTBEAT = 10.0   # seconds between keep-alive comments; the token is checked again then

bp = Blueprint("console")
FILES = frozenset(("console.css", "console.js", "vendor/uPlot.iife.min.js",
                   "vendor/uPlot.min.css", "vendor/uPlot.LICENSE"))


@bp.get("/")
async def index(request: Request) -> HTTPResponse:
    return await file(os.path.join(STATIC, "index.html"), headers={"Cache-Control": "no-cache"})


@bp.get("/bwiot")
async def bevywise_ui(request: Request) -> HTTPResponse:
    """Where the Bevywise broker serves its UI: the console is at ``/``."""
    return redirect("/")


@bp.get("/static/<name:path>")
async def static(request: Request, name: str) -> HTTPResponse:
    """The console's files: only those listed (nothing else on disk is reachable)."""
    if name not in FILES:
        raise NotFound(fail_body("Unknown endpoint"))
    mime = "text/plain; charset=utf-8" if name.endswith("LICENSE") else None
    return await file(os.path.join(STATIC, name), mime_type=mime,
                      headers={"Cache-Control": "no-cache"})


@bp.get("/bwiot/api/v1/credentials", ignore_body=False)
@authorized
async def credentials(request: Request) -> HTTPResponse:
    """Every username that may CONNECT (never a hash), in order."""
    return success(usernames=[k.decode("utf-8", "replace")
                              for k, rec in request.app.ctx.store.items("auth")
                              if not is_internal(rec)])


class _Unavailable(APIError):
    status_code = 503


@bp.get("/bwiot/api/v1/live", ignore_body=False)
@authorized
async def live(request: Request) -> HTTPResponse:
    """Server-sent events: one ``data:`` line of JSON per message matching
    ``filter`` (topic, qos, retain, size, payload in base64); ends when the
    browser goes away or the token is revoked (logout)."""
    filt = Params(request).text("filter", no_nul=True)
    assert filt is not None
    if not valid_filter(filt):
        raise BadParameter("filter", "filter must be a valid topic filter")
    ctx = request.app.ctx
    token = bearer(request.headers.get("authorization"))
    host, port = broker_address(ctx.cfg)
    tap = Tap(host, port, ctx.live_ident, filt)
    try:
        reader = await tap.open()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, LiveError) as e:
        tap.close()
        raise _Unavailable(fail_body(f"Cannot subscribe: {e}")) from None
    response = await request.respond(content_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
    assert response is not None
    queue: asyncio.Queue[dict | None] = asyncio.Queue(maxsize=1000)

    async def pump() -> None:
        try:
            async for msg in tap.messages(reader):
                if queue.full():
                    continue  # the browser is slower than the topic: skip, never pile up
                queue.put_nowait(msg)
        except (OSError, asyncio.IncompleteReadError):
            pass
        queue.put_nowait(None)

    task = asyncio.create_task(pump())
    try:
        await response.send(event({"subscribed": filt}))
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), HEARTBEAT)
            except TimeoutError:
                ctx.tokens.check(token)  # logged out meanwhile: stop
                await response.send(": ping\n\n")
                continue
            if msg is None:
                break
            await response.send(event(msg))
    except (APIError, OSError, asyncio.CancelledError):
        pass
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        tap.close()
        with contextlib.suppress(Exception):
            await response.eof()
    return cast(HTTPResponse, None)  # streamed already: Sanic sends nothing more
