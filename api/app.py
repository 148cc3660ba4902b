"""The REST API process: ``create_app()`` builds the Sanic app, ``run_api()``
serves it in the process the supervisor forks for it (DESIGN.md, "Processes").

Sanic runs in this one process on a loop we own (``create_server``): no
Sanic worker manager, no reloader, no access log (tokens must never reach a
log, CONTRACT.md). SIGTERM stops it: listening ends, idle connections close,
busy ones get a second, and the process exits 0.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
from typing import TYPE_CHECKING, Any

from sanic import HTTPResponse, Sanic
from sanic.exceptions import SanicException
from sanic.request import Request

from api import metrics
from api.errors import APIError, fail_body
from api.guard import dumps, reply
from api.listing import Listing
from api.live import Identity, provision, unprovision
from api.ratelimit import LoginThrottle
from api.routes import BLUEPRINTS, console
from api.stats import Sampler
from api.tokens import Tokens
from api.views import DeviceList
from api.workers import Workers
from bwfast.store import Store

if TYPE_CHECKING:
    from bwfast.config import Config

log = logging.getLogger("bwfast.api")

MAX_BODY = 1 << 20           # 413 beyond 1 MB (CONTRACT.md)
PRUNE_INTERVAL = 60.0        # forget expired revocations this often
STOP_GRACE = 1.0             # seconds a busy request gets after SIGTERM

# Reasons for the errors Sanic raises itself (routing, framing, size).
SANIC_REASONS = {
    400: "Bad request",
    404: "Unknown endpoint",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Request too large",
    414: "Request too large",
    417: "Expectation failed",
}

_names = itertools.count()


async def on_error(request: Request, exc: Exception) -> HTTPResponse:
    """Every failure is JSON with ``bwapi-status``; nothing leaks a traceback.

    Input is validated before use (api/params.py), so an exception that gets
    here unrecognised is a bug or a broken store: it is logged (without the
    request's headers, which hold the token) and answered 500 in JSON."""
    if isinstance(exc, APIError):
        return reply(exc.body, exc.status_code, getattr(exc, "headers", None) or None)
    if isinstance(exc, SanicException):
        status = int(getattr(exc, "status_code", 400) or 400)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
            return reply(fail_body("Internal error"), 500)
        return reply(fail_body(SANIC_REASONS.get(status, "Bad request")), status)
    log.exception("%s %s failed", request.method, request.path)
    return reply(fail_body("Internal error"), 500)


def create_app(cfg: Config, store: Store, workers: Workers, name: str | None = None) -> Sanic:
    """A fresh app bound to one Store handle and one set of worker links."""
    app = Sanic(name or f"bwfast_api_{next(_names)}", strict_slashes=False,
                configure_logging=False, dumps=dumps)
    app.config.update({
        "REQUEST_MAX_SIZE": MAX_BODY,
        "ACCESS_LOG": False,
        "MOTD": False,
        "NOISY_EXCEPTIONS": False,
        "GRACEFUL_SHUTDOWN_TIMEOUT": STOP_GRACE,
        "FALLBACK_ERROR_FORMAT": "json",
        "KEEP_ALIVE_TIMEOUT": 30,
        "REQUEST_TIMEOUT": 30,
    })
    app.ctx.cfg = cfg
    app.ctx.store = store
    app.ctx.workers = workers
    app.ctx.cluster = cfg.cluster.enabled  # listings over every node (api/nodes.py)
    if workers.store is None:
        workers.store = store
    app.ctx.tokens = Tokens(store, cfg.api.token_ttl)
    app.ctx.throttle = LoginThrottle()
    app.ctx.devices = DeviceList(store)
    app.ctx.listing = Listing(store)
    app.ctx.sampler = Sampler(workers, store)
    for bp in BLUEPRINTS:
        app.blueprint(bp)
    metrics.install(app)
    app.blueprint(metrics.bp)
    app.blueprint(console.bp)
    app.ctx.live_ident = Identity()
    app.error_handler.add(Exception, on_error)
    return app


async def _prune(tokens: Tokens) -> None:
    while True:
        try:
            tokens.prune()
        except Exception:  # noqa: BLE001 - pruning is housekeeping; try again later
            log.exception("pruning revoked tokens failed")
        await asyncio.sleep(PRUNE_INTERVAL)


async def _close_connections(connections: set[Any]) -> None:
    """Close idle keep-alive connections now, busy ones after STOP_GRACE."""
    for conn in list(connections):
        conn.close_if_idle()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOP_GRACE
    while connections and loop.time() < deadline:
        await asyncio.sleep(0.05)
        for conn in list(connections):
            conn.close_if_idle()
    for conn in list(connections):
        conn.abort()


async def serve(cfg: Config, nworkers: int) -> int:
    """Serve until SIGTERM; the exit code of the process."""
    store = Store(cfg.broker.data_dir, sync=cfg.persistence.sync)  # after fork (py-lmdb)
    workers = Workers(cfg.broker.data_dir, nworkers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        app = create_app(cfg, store, workers, name="bwfast_api")
        server = await app.create_server(host=cfg.api.host, port=cfg.api.port,
                                         access_log=False, return_asyncio_server=True)
    except OSError as e:
        log.error("REST API cannot listen on %s:%d: %s", cfg.api.host, cfg.api.port, e)
        store.close()
        return 1
    assert server is not None
    await server.startup()
    await server.before_start()
    await server.after_start()
    pruner = asyncio.create_task(_prune(app.ctx.tokens))
    app.ctx.live_ident = provision(cfg, store)
    if cfg.acl.enabled:
        asyncio.create_task(workers.acl_reload())  # the console's own read rule
    app.ctx.sampler.start()
    log.info("REST API on http://%s:%d/bwiot/api/v1/", cfg.api.host, cfg.api.port)
    await stop.wait()
    pruner.cancel()
    await app.ctx.sampler.stop()
    await server.before_stop()
    server.close()
    await _close_connections(server.connections)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(asyncio.shield(server.wait_closed()), STOP_GRACE)
    await server.after_stop()
    await workers.close()
    unprovision(store, app.ctx.live_ident)
    store.close()
    log.info("REST API stopped")
    return 0


def run_api(cfg: Config, nworkers: int) -> None:
    """The API process's body (the supervisor's target): serve until SIGTERM,
    exit 0; a start-up failure exits 1 so that the supervisor restarts it."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        code = runner.run(serve(cfg, nworkers))
    if code:
        raise SystemExit(code)
