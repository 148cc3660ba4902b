"""Every listener a worker binds with SO_REUSEPORT: MQTT over TCP (and, later, TLS, WS, WSS)."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bwfast.protocol import Connection

if TYPE_CHECKING:
    from bwfast.worker import Worker


async def start_listeners(worker: Worker) -> list[asyncio.AbstractServer]:
    b = worker.cfg.broker
    server = await worker.loop.create_server(
        lambda: Connection(worker, "mqtt"), b.host, b.port, reuse_port=True, backlog=4096)
    return [server]


def identity_username(conn: Connection) -> str | None:
    """The username a TLS client certificate gives (use_identity_as_username); None if none."""
    return None
