"""Every listener a worker binds with SO_REUSEPORT: MQTT over TCP, TLS, WebSocket
and secure WebSocket.

Each worker binds every enabled listener on the same port as its siblings, so
the kernel spreads connections of every kind over the workers; what a client
on one listener publishes reaches subscribers on any other through the shared
router and cluster, with nothing listener-specific past this module. The
listener's name ("mqtt", "tls", "ws", "wss") travels with the Connection, for
use_identity_as_username, the device records and $SYS.
"""
from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bwfast.protocol import Connection
from bwfast.websocket import WebSocketConnection

if TYPE_CHECKING:
    from bwfast.config import TLSConfig
    from bwfast.worker import Worker

BACKLOG = 4096
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds; a client that stalls the handshake is dropped


def make_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    """The server context shared by the TLS and WSS listeners.

    TLS 1.2 at least. With ``require_certificate`` a client must present a
    certificate signed by ``cafile`` or the handshake fails (mutual TLS);
    without it no client certificate is asked for, as in Mosquitto.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.certfile, tls.keyfile)
    if tls.cafile:
        ctx.load_verify_locations(cafile=tls.cafile)
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.require_certificate else ssl.CERT_NONE
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # TLS 1.2 client renegotiation: a CPU sink
    return ctx


async def _serve(worker: Worker, factory: Callable[[], asyncio.BaseProtocol], port: int,
                 ssl_ctx: ssl.SSLContext | None = None) -> asyncio.AbstractServer:
    kwargs: dict[str, Any] = {}
    if ssl_ctx is not None:
        kwargs = {"ssl": ssl_ctx, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}
    return await worker.loop.create_server(
        factory, worker.cfg.broker.host, port, reuse_port=True, backlog=BACKLOG, **kwargs)


async def start_listeners(worker: Worker) -> list[asyncio.AbstractServer]:
    """Bind every enabled listener; return the servers (the worker closes them)."""
    cfg = worker.cfg
    servers = [await _serve(worker, lambda: Connection(worker, "mqtt"), cfg.broker.port)]
    ctx = make_ssl_context(cfg.tls) if cfg.tls.enabled else None
    try:
        if ctx is not None:
            servers.append(await _serve(
                worker, lambda: Connection(worker, "tls"), cfg.tls.port, ctx))
        ws = cfg.websocket
        if ws.enabled:
            servers.append(await _serve(
                worker, lambda: WebSocketConnection(worker, "ws", ws.path), ws.port))
            if ctx is not None:
                servers.append(await _serve(
                    worker, lambda: WebSocketConnection(worker, "wss", ws.path),
                    ws.tls_port, ctx))
    except BaseException:
        for server in servers:
            server.close()
        raise
    return servers


def identity_username(conn: Connection) -> str | None:
    """The client certificate's subject CN (use_identity_as_username); None if none.

    Only a certificate the handshake verified is there to read: getpeercert()
    is empty unless the context asked for and checked one (require_certificate).
    Like Mosquitto, the first commonName of the subject is the username.
    """
    transport = conn.transport
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None
