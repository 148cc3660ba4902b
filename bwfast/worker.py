"""A worker process: one uvloop loop, its listeners, and the end-of-iteration tick.

The tick is the heart of the batching: it runs once per loop iteration in which
anything happened, commits the staged LMDB writes in one transaction (then
sends the acknowledgements that waited for them), and writes every dirty
connection's buffer with one syscall each.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, MutableSequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from bwfast import codes as c
from bwfast.acl import AclError, Rule, Rules, read_acl_file, stored_rules
from bwfast.auth import VerifiedCache, cheap, check
from bwfast.cluster import Cluster
from bwfast.control import start_control
from bwfast.fastpath import Lane
from bwfast.handlers import table
from bwfast.history import FLUSH_INTERVAL, History
from bwfast.listeners import start_listeners
from bwfast.message import Message
from bwfast.nodes import REMOTE_BASE, NodeLink
from bwfast.observe import count_qos
from bwfast.protocol import Connection
from bwfast.quota import Quota
from bwfast.registry import SessionRegistry
from bwfast.retain import RetainStore
from bwfast.router import Router
from bwfast.stats import Stats, sys_topics
from bwfast.store import Store

if TYPE_CHECKING:
    from bwfast.config import Config

log = logging.getLogger("bwfast.worker")

class AckTarget(Protocol):
    """Who gets ordered acknowledgements: an MQTT connection or an API control link."""

    acks: deque[list] | None

    def write(self, data: bytes) -> None: ...

    def disconnect(self, reason_code: int, reason: str = "") -> None: ...


SEQ_MASK = (1 << 64) - 1  # Worker.ack: peer workers' part of a seq
CONNECT_TIMEOUT = 10.0  # seconds a socket may stay open without a CONNECT
SCAN_INTERVAL = 0.25    # keepalive / clock granularity


class Worker:
    def __init__(self, cfg: Config, index: int = 0, nworkers: int = 1,
                 slots: MutableSequence[int] | None = None) -> None:
        self.cfg = cfg
        self.index = index
        self.nworkers = nworkers
        self.loop: asyncio.AbstractEventLoop = asyncio.get_event_loop()
        self.now = time.monotonic()
        self.wall = time.time()
        self.handlers = table()
        self.stats = Stats()
        self.quota = Quota(cfg.broker.max_connections, slots, index)
        count_qos(self.handlers, self.stats)
        self.store = Store(cfg.broker.data_dir, sync=cfg.persistence.sync)
        self.router = Router()
        self.retained = RetainStore(self.store)
        self.sessions = SessionRegistry(self)
        self.history = History(self.store, index, nworkers)
        self.verified = VerifiedCache()
        self._hashers: ThreadPoolExecutor | None = None
        self.cluster: Cluster | None = Cluster(self, nworkers) if nworkers > 1 else None
        self.router.history = self.history
        if self.cluster is not None:
            self.router.orphans = self.cluster.orphans
        self._new_routes: list[str] = []
        self._gone_routes: list[str] = []
        self.conns: set[Connection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self._dirty: list[Connection] = []
        self._tick_scheduled = False
        self._commit_timer: asyncio.TimerHandle | None = None
        self._commit_at = 0.0
        self._stopping = False
        self._timers: list[asyncio.TimerHandle] = []
        self.stopped = asyncio.Event()
        self.lane = Lane(self, nworkers, cfg.broker.max_packet_size)
        self.lane.slow_forwarded = self._slow_forwarded
        # [cluster]: other nodes through NATS (bwfast/nodes.py); None on a lone node.
        self.nodes: NodeLink | None = NodeLink(self) if cfg.cluster.enabled else None
        # [acl] enabled: every session gets a ClientAcl over these rules (None: no checks).
        self.acl_rules: Rules | None = None
        self._acl_file_rules: list[Rule] = []
        if cfg.acl.enabled:
            self.acl_rules = Rules(cfg.acl.default == "allow")
            self.reload_acl()

    # -- start / stop -----------------------------------------------------------------------
    async def start(self) -> None:
        self.history.mark_all_inactive()
        n_retained = self.retained.load()
        n_sessions = self.sessions.load()
        self.history.clean_subs(self.sessions.sessions, self._answers_for)
        if self.cluster is not None:
            self._new_routes.clear()  # peers learn our routes from "hello"
            self.cluster.load_routes()
        if self.store.dirty:
            self.store.commit()
        if self.cluster is not None:
            await self.cluster.start()
            # Peers wrote to our sessions' LMDB queues while we were down (orphans.py),
            # possibly after we loaded them: take what we missed.
            for session in list(self.sessions.sessions.values()):
                self.sessions.rescan_later(session)
        if self.nodes is not None:
            await self.nodes.start()
        if self.sessions.publish_orphan_wills():
            self.schedule_tick()
        self.servers.append(await start_control(self, os.path.join(self.cfg.broker.data_dir, "run")))
        b = self.cfg.broker
        self.servers.extend(await start_listeners(self))
        log.info("worker %d listening on %s:%d (%d retained, %d sessions restored)",
                 self.index, b.host, b.port, n_retained, n_sessions)
        self._every(SCAN_INTERVAL, self._scan)
        self._every(FLUSH_INTERVAL, self._flush_history)
        if b.sys_interval:
            self._every(b.sys_interval, self._sys_tick)

    def _answers_for(self, cid: str | None) -> bool:
        """Is this worker the one to judge cid's records at start-up (the
        sessions database's owner rule, Cluster.owns)? None: an id stored as
        a digest, judged only when there is no other worker."""
        if self.cluster is None:
            return True
        return cid is not None and self.cluster.owns(cid)

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

    @property
    def stopping(self) -> bool:
        return self._stopping

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
        if self._hashers is not None:  # queued checks of CONNECTs that are being closed
            self._hashers.shutdown(wait=False, cancel_futures=True)
        self.sessions.shutdown()
        self.history.sessions_ended(self.sessions.sessions.values())
        self.history.flush()
        self.history.mark_all_inactive()
        self.store.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.nodes is not None:
            await self.nodes.close()
        await asyncio.sleep(0.05)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        self.stopped.set()

    # -- the tick ---------------------------------------------------------------------------
    def mark_dirty(self, conn: Connection) -> None:
        self._dirty.append(conn)
        self.schedule_tick()

    def schedule_tick(self) -> None:
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_scheduled = False
        self.wall = time.time()
        if self._new_routes or self._gone_routes:
            self.announce_routes()
        store = self.store
        if store.dirty:
            # Group commit (Store.commit_wait): at light load every iteration
            # commits at once; under a storm each transaction carries many.
            now = time.monotonic()
            wait = store.commit_wait(now)
            if wait <= 0:
                store.commit(now, self.cluster.bus.flush if self.cluster is not None else None)
            elif self._commit_timer is None or self._commit_at > now + wait:
                if self._commit_timer is not None:
                    self._commit_timer.cancel()
                # The loop's timers count whole milliseconds: never ask for less
                # than one, or a timer due "now" spins until the gap is over.
                wait = max(wait, 0.001)
                self._commit_at = now + wait
                self._commit_timer = self.loop.call_later(wait, self._commit_due)
        dirty = self._dirty
        if dirty:
            self._dirty = []
            for conn in dirty:
                if not conn.hold:
                    conn.flush()
        if self.cluster is not None:
            self.cluster.bus.flush()
        if self.nodes is not None:
            self.nodes.flush()

    def _commit_due(self) -> None:
        self._commit_timer = None
        if not self._stopping:
            self.schedule_tick()

    def ack(self, conn: AckTarget, data: bytes, then: Callable[[], Any] | None = None,
            seq: int = 0) -> None:
        """Send an acknowledgement once what it confirms holds.

        That is: the LMDB writes staged in this iteration are committed, and
        (seq) every peer worker answered. Acks of one connection leave in the
        order their packets came [MQTT-4.6.0-2], waiting behind each other.
        """
        entry: list[Any] = [data, 0, then]
        if self.store.urgent:
            entry[1] += 1
            self.store.after_commit(lambda: self.release(conn, entry))
            self.schedule_tick()
        # seq: peer workers' seq in the low 64 bits, other nodes' above (see publish).
        lseq, rseq = seq & SEQ_MASK, seq >> 64
        if lseq and self.cluster is not None and self.cluster.attach(lseq, conn, entry):
            entry[1] += 1
        if rseq and self.nodes is not None and self.nodes.attach(rseq, conn, entry):
            entry[1] += 1
        acks = conn.acks
        if entry[1] == 0 and not acks:
            conn.write(data)
            if then is not None:
                then()
            return
        if acks is None:
            acks = conn.acks = deque()
        acks.append(entry)

    def hold_until_commit(self, conn: Connection) -> None:
        """What conn has to send (in order, whatever is written after) leaves once the
        LMDB writes staged now are committed: a QoS 2 PUBLISH with the packet id a
        restarted broker would resend it with (exactly once across a crash)."""
        if conn.hold or not self.store.urgent:
            return
        conn.hold = True

        def unhold() -> None:
            conn.hold = False
            if conn.out:
                self._dirty.append(conn)
                self.schedule_tick()

        self.store.after_commit(unhold)
        self.schedule_tick()

    def release(self, conn: AckTarget, entry: list) -> None:
        """One thing an ack waited for is done; send every ack now free, in order."""
        entry[1] -= 1
        acks = conn.acks
        while acks and acks[0][1] <= 0:
            data, _, then = acks.popleft()
            conn.write(data)
            if then is not None:
                then()

    # -- access control -----------------------------------------------------------------------
    def reload_acl(self) -> tuple[int, str]:
        """Re-read the acl_file and the LMDB rules (SIGHUP, the ``acl_reload`` control
        command); return (generation, error). A bad acl_file keeps its previous rules.

        Decisions cached per client go stale with the generation, and the fast
        lane's plans (which leave out subscribers that may not read) are dropped,
        so the change applies to the next message, live subscriptions included.
        """
        rules = self.acl_rules
        if rules is None:
            return 0, ""
        error = ""
        if self.cfg.acl.file:
            try:
                self._acl_file_rules = read_acl_file(self.cfg.acl.file)
            except AclError as e:
                error = str(e)
                log.error("acl_file not reloaded, previous rules kept: %s", error)
        rules.load(self._acl_file_rules + stored_rules(self.store))
        self.router.invalidate()
        return rules.generation, error

    # -- subscriptions and routes ---------------------------------------------------------------------
    def subscribe(self, session: Any, filt: str, opts: Any) -> None:
        if self.router.subscribe(session, filt, opts):
            if self.cluster is not None:
                self._new_routes.append(filt)
            if self.nodes is not None:
                self.nodes.route_added(filt)

    def unsubscribe(self, session: Any, filt: str) -> None:
        if self.router.unsubscribe(session, filt):
            if self.cluster is not None:
                self._gone_routes.append(filt)
            if self.nodes is not None:
                self.nodes.route_removed(filt)

    def announce_routes(self) -> int:
        """Tell peers about route changes; return the seq a SUBACK must wait on (0: none)."""
        seq = 0
        if self.cluster is not None:
            if self._gone_routes:
                gone, self._gone_routes = self._gone_routes, []
                self.cluster.routes_removed([f for f in gone if f not in self.router.local_routes])
            if self._new_routes:
                new, self._new_routes = self._new_routes, []
                seq = self.cluster.routes_added([f for f in new if f in self.router.local_routes])
        if self.nodes is not None:
            seq |= self.nodes.announce() << 64
        return seq

    # -- messages ---------------------------------------------------------------------------
    def publish(self, msg: Message, confirm: bool = False) -> tuple[int, int]:
        """Route one message, keep it if retained; return (deliveries, seq to wait on).

        With ``confirm`` (a QoS 1/2 PUBLISH), the returned seq is answered once
        every peer it was forwarded to holds it durably.
        """
        if self.cluster is not None and not msg.mid:
            msg.mid = self.cluster.new_mid()
        n, forwards = self.router.publish(msg)
        seq = 0
        if forwards:
            rseq = 0
            if self.nodes is not None:  # other nodes first: it takes them out of forwards
                before = len(forwards)
                rseq = self.nodes.forward(msg, forwards, confirm)
                n += before - len(forwards)
            if forwards:
                assert self.cluster is not None
                seq = self.cluster.forward(msg, forwards, confirm)
                n += len(forwards)
            seq |= rseq << 64
        if msg.retain:
            self.retained.set(msg)
            if self.cluster is not None:
                self.cluster.retained_changed(msg)
            if self.nodes is not None:
                self.nodes.kv.retained_changed(msg)
        return n, seq

    def _slow_forwarded(self, cid: str, mid: int, topic: str, payload: bytes, normal: bool,
                        groups: list[tuple[str, str]]) -> None:
        """A peer's fast-lane message that needs the general path here."""
        msg = Message(topic, payload, 0, False, None, 0.0, cid, self.wall)
        msg.mid = mid
        self.router.deliver_forwarded(msg, normal, groups)

    def forward_to_session(self, peer: int, session: Any, msg: Message, qos: int, retain: bool,
                           sub_ids: list[int] | None, seq: int = 0) -> None:
        if peer >= REMOTE_BASE and self.nodes is not None:  # moving to another node
            self.nodes.forward_to_session(session.client_id, msg, qos, retain, sub_ids)
            return
        assert self.cluster is not None
        self.cluster.forward_to_session(peer, session.client_id, msg, qos, retain, sub_ids, seq)

    def claim(self, cid: str, clean: bool, proceed: Callable[[], None]) -> None:
        """Make sure no other worker holds cid's session, then proceed with the CONNECT."""
        if self.nodes is not None and self.nodes.connected:
            cluster = self.cluster
            # First from another node (nodekv.py), then from our peer workers.
            self.nodes.kv.claim(cid, clean, proceed if cluster is None
                                else lambda: cluster.claim(cid, clean, proceed))
        elif self.cluster is None:
            proceed()
        else:
            self.cluster.claim(cid, clean, proceed)

    def authenticate(self, username: str | None, password: bytes | None,
                     done: Callable[[int], None]) -> None:
        """Call ``done(0)`` when the CONNECT may proceed, else ``done(reason code)``.

        A password seen before is checked at once (VerifiedCache), and so is a
        record that is cheap to check (bwfast.auth.cheap: PBKDF2 at the default
        costs ~64 us of CPU, the hop to a thread and back ~34 us more). A costly one
        (scrypt, many iterations) runs in this worker's hashing threads (the
        hashes release the GIL), so a storm of first CONNECTs never stalls the
        loop that carries everyone's messages. A record of an older format
        (scrypt, `$6$`) that passes is rewritten as PBKDF2-SHA512 (bwfast.auth.check).
        """
        if not self.cfg.authentication.enabled:
            done(0)
            return
        if not username or password is None:
            done(c.BAD_USERNAME_OR_PASSWORD)
            return
        key = username.encode()
        record = self.store.get("auth", key)
        known = self.verified.lookup(username, record, password)
        if known is None and record is not None and cheap(record):
            known, newer = check(record, password)
            self._verified(username, key, record, password, known, newer)
        if known is not None:
            done(0 if known else c.BAD_USERNAME_OR_PASSWORD)
            return

        def checked(fut: asyncio.Future) -> None:
            ok, newer = (False, None) if fut.cancelled() or fut.exception() else fut.result()
            if ok and self.store.get("auth", key) != record:
                # Removed or changed (remove_auth / edit_auth) while the hash ran: the
                # revocation's kick could not see this CONNECT yet, so refuse it here.
                ok = False
            self._verified(username, key, record, password, ok, newer)
            done(0 if ok else c.BAD_USERNAME_OR_PASSWORD)
            self.schedule_tick()

        if self._hashers is None:  # one thread per core: more only queue for the same CPUs
            self._hashers = ThreadPoolExecutor(os.cpu_count() or 1, "bwfast-auth")
        self.loop.run_in_executor(self._hashers, check, record, password
                                  ).add_done_callback(checked)

    def _verified(self, username: str, key: bytes, record: dict[str, Any] | None,
                  password: bytes, ok: bool, newer: dict[str, Any] | None) -> None:
        """Remember a passed check; store the upgraded record unless the user's
        record changed meanwhile (edit_auth, remove_auth)."""
        if not ok or record is None:
            return
        if newer is not None and not self._stopping and self.store.replace_if(
                "auth", key, record, newer):
            record = newer
        self.verified.remember(username, record, password)

    def on_connected(self, conn: Connection) -> None:
        self.stats.connects += 1
        self.history.connected(conn)

    def _flush_history(self) -> None:
        self.history.flush()
        if self.store.dirty:
            self.schedule_tick()

    # -- periodic jobs -------------------------------------------------------------------------
    def _scan(self) -> None:
        """Keepalive at 1.5x [MQTT-3.1.2-22] and sockets that never sent CONNECT."""
        self.now = now = time.monotonic()
        self.wall = time.time()
        if self.cluster is not None:
            self.cluster.sweep()
        if self.nodes is not None:
            self.nodes.sweep()
        for conn in list(self.conns):
            if conn.closing:
                continue
            if conn.session is None:
                if now - conn.created > CONNECT_TIMEOUT:
                    conn.close()
            elif conn.keepalive and now - conn.last_rx > conn.keepalive * 1.5:
                conn.disconnect(c.KEEP_ALIVE_TIMEOUT, "keep alive timeout")

    def _sys_tick(self) -> None:
        """Share our figures; worker 0 publishes the sums on `$SYS` for everyone."""
        counters = self.stats.snapshot()
        connected = self.sessions.connected_count()
        subs = sum(len(s.subs) for s in self.sessions.sessions.values())
        listeners: dict[str, int] = {}
        for conn in self.conns:
            if conn.session is not None and not conn.closing:
                listeners[conn.listener] = listeners.get(conn.listener, 0) + 1
        rows: dict[int, list[Any]] = {
            self.index: [counters, connected, len(self.sessions), subs, listeners]}
        if self.cluster is not None:
            self.cluster.share_stats(counters, connected, len(self.sessions), subs, listeners)
            if self.index != 0:
                return
            rows.update(self.cluster.peer_stats)
        totals = {k: sum(r[0].get(k, 0) for r in rows.values()) for k in counters}
        topics = sys_topics(totals, sum(r[1] for r in rows.values()),
                            sum(r[2] for r in rows.values()), sum(r[3] for r in rows.values()),
                            len(self.retained), self.nworkers, int(time.time() - self.stats.started))
        for k, r in rows.items():
            topics[f"$SYS/broker/workers/{k}/clients/connected"] = str(r[1])
        for name in self.enabled_listeners():
            count = sum(r[4].get(name, 0) for r in rows.values() if len(r) > 4)
            topics[f"$SYS/broker/listeners/{name}/clients/connected"] = str(count)
        if self.nodes is not None:  # each node's figures under its name, and their sums
            topics.update(self.nodes.sys_topics(
                totals, sum(r[1] for r in rows.values()), sum(r[2] for r in rows.values()),
                sum(r[3] for r in rows.values())))
        for topic, payload in topics.items():
            msg = Message(topic, payload.encode(), 0, True)
            self.publish_local(msg)

    def enabled_listeners(self) -> list[str]:
        cfg = self.cfg
        names = ["mqtt"]
        if cfg.tls.enabled:
            names.append("tls")
        if cfg.websocket.enabled:
            names.append("ws")
            if cfg.tls.enabled:
                names.append("wss")
        return names

    def publish_local(self, msg: Message) -> None:
        """A broker-made message ($SYS): routed everywhere, retained in memory only."""
        n, forwards = self.router.publish(msg)
        if forwards and self.nodes is not None:
            # Each node makes its own $SYS: drop the other nodes' routes.
            for peer in [p for p in forwards if p >= REMOTE_BASE]:
                del forwards[peer]
        if forwards and self.cluster is not None:
            self.cluster.forward(msg, forwards, False)
        self.retained.set(msg, persist=False)
        if self.cluster is not None:
            self.cluster.retained_changed(msg)


def run_worker(cfg: Config, index: int = 0, nworkers: int = 1,
               slots: MutableSequence[int] | None = None) -> None:
    """Process entry point: uvloop, signals, serve until SIGTERM/SIGINT."""
    import uvloop

    async def main() -> None:
        worker = Worker(cfg, index, nworkers, slots)
        await worker.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
        loop.add_signal_handler(signal.SIGHUP, worker.reload_acl)  # the supervisor forwards it
        await worker.stopped.wait()

    uvloop.run(main())
