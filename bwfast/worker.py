"""A worker process: one uvloop loop, its listeners, and the end-of-iteration tick.

The tick is the heart of the batching: it runs once per loop iteration in which
anything happened, commits the staged LMDB writes in one transaction (then
sends the acknowledgements that waited for them), and writes every dirty
connection's buffer with one syscall each.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bwfast import codes as c
from bwfast.auth import verify_password
from bwfast.handlers import table
from bwfast.message import Message
from bwfast.protocol import Connection
from bwfast.registry import SessionRegistry
from bwfast.retain import RetainStore
from bwfast.router import Router
from bwfast.stats import Stats, sys_topics
from bwfast.store import Store

if TYPE_CHECKING:
    from bwfast.config import Config

log = logging.getLogger("bwfast.worker")

CONNECT_TIMEOUT = 10.0  # seconds a socket may stay open without a CONNECT
SCAN_INTERVAL = 0.25    # keepalive / clock granularity


class Worker:
    def __init__(self, cfg: Config, index: int = 0) -> None:
        self.cfg = cfg
        self.index = index
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        self.now = time.monotonic()
        self.wall = time.time()
        self.handlers = table()
        self.stats = Stats()
        self.store = Store(cfg.broker.data_dir, sync=cfg.persistence.sync)
        self.router = Router()
        self.retained = RetainStore(self.store)
        self.sessions = SessionRegistry(self)
        self.conns: set[Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._dirty: list[Connection] = []
        self._tick_scheduled = False
        self._stopping = False
        self._timers: list[asyncio.TimerHandle] = []
        self.stopped = asyncio.Event()

    # -- start / stop -----------------------------------------------------------------------
    async def start(self) -> None:
        n_retained = self.retained.load()
        n_sessions = self.sessions.load()
        if self.store.dirty:
            self.store.commit()
        b = self.cfg.broker
        server = await self.loop.create_server(
            lambda: Connection(self, "mqtt"), b.host, b.port, reuse_port=True, backlog=4096)
        self.servers.append(server)
        log.info("worker %d listening on %s:%d (%d retained, %d sessions restored)",
                 self.index, b.host, b.port, n_retained, n_sessions)
        self._every(SCAN_INTERVAL, self._scan)
        if b.sys_interval:
            self._every(b.sys_interval, self._publish_sys)

    def _every(self, interval: float, fn: Callable[[], None]) -> None:
        def run() -> None:
            if self._stopping:
                return
            try:
                fn()
            except Exception:  # noqa: BLE001 - a periodic job must never die
                log.exception("periodic %s failed", fn.__name__)
            self._timers.append(self.loop.call_later(interval, run))
        self._timers.append(self.loop.call_later(interval, run))

    async def stop(self) -> None:
        """Stop accepting, tell clients (v5 0x8B), keep sessions, flush LMDB."""
        if self._stopping:
            return
        self._stopping = True
        for t in self._timers:
            t.cancel()
        for server in self.servers:
            server.close()
        for conn in list(self.conns):
            conn.will_on_close = False
            conn.disconnect(c.SERVER_SHUTTING_DOWN, "server shutting down")
        self.sessions.shutdown()
        self.store.close()
        await asyncio.sleep(0.05)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        self.stopped.set()

    # -- the tick ---------------------------------------------------------------------------
    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.loop.call_soon(self._tick)

    def schedule_tick(self) -> None:
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_scheduled = False
        if self.store.dirty:
            self.store.commit()
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for conn in dirty:
                conn.flush()

    def ack(self, conn: Connection, data: bytes, then: Callable[[], Any] | None = None) -> None:
        """Send an acknowledgement once the state it confirms is committed.

        Everything staged in this iteration is committed by the tick before
        any buffer is written, so acks keep their order [MQTT-4.6.0-2].
        """
        if self.store.dirty:
            def send() -> None:
                conn.write(data)
                if then is not None:
                    then()
            self.store.after_commit(send)
            self.schedule_tick()
            return
        conn.write(data)
        if then is not None:
            then()

    # -- messages ---------------------------------------------------------------------------
    def publish(self, msg: Message) -> int:
        """Route one message to its subscribers and keep it if retained."""
        n = self.router.publish(msg)
        if msg.retain:
            self.retained.set(msg)
        return n

    def authenticate(self, conn: Connection, username: str | None, password: bytes | None) -> int:
        """0 when the CONNECT may proceed, else the v5 reason code to refuse it with."""
        if not self.cfg.authentication.enabled:
            return 0
        if not username or password is None:
            return c.BAD_USERNAME_OR_PASSWORD
        if not verify_password(self.store.get("auth", username.encode()), password):
            return c.BAD_USERNAME_OR_PASSWORD
        return 0

    def on_connected(self, conn: Connection) -> None:
        self.stats.connects += 1

    # -- periodic jobs -------------------------------------------------------------------------
    def _scan(self) -> None:
        """Keepalive at 1.5x [MQTT-3.1.2-22] and sockets that never sent CONNECT."""
        self.now = now = time.monotonic()
        self.wall = time.time()
        for conn in list(self.conns):
            if conn.closing:
                continue
            if conn.session is None:
                if now - conn.created > CONNECT_TIMEOUT:
                    conn.close()
            elif conn.keepalive and now - conn.last_rx > conn.keepalive * 1.5:
                conn.disconnect(c.KEEP_ALIVE_TIMEOUT, "keep alive timeout")

    def _publish_sys(self) -> None:
        totals = self.stats.snapshot()
        subs = sum(len(s.subs) for s in self.sessions.sessions.values())
        topics = sys_topics(totals, self.sessions.connected_count(), len(self.sessions), subs,
                            len(self.retained), 1, int(time.time() - self.stats.started))
        for topic, payload in topics.items():
            msg = Message(topic, payload.encode(), 0, True)
            self.router.publish(msg)
            self.retained.set(msg, persist=False)


def run_worker(cfg: Config, index: int = 0) -> None:
    """Process entry point: uvloop, signals, serve until SIGTERM/SIGINT."""
    import uvloop

    async def main() -> None:
        worker = Worker(cfg, index)
        await worker.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
        await worker.stopped.wait()

    uvloop.run(main())
