"""What the REST API lists: the device registry, each device's last events and commands.

Kept off the hot path: a publish or a delivery appends one tuple to an
in-memory ring (the last 10) and marks the device dirty; a connect or a
disconnect stages the device's row in memory. A timer writes the dirty rings
and rows to LMDB in one batch every FLUSH_INTERVAL, so the API sees them
within a second, and a storm of CONNECTs costs no LMDB write each. A device
that leaves keeps its rings until that flush has written them: a client that
publishes and disconnects at once (mosquitto_pub) is listed like any other.
LMDB records (msgpack), all keyed by client id:

    devices   {"id", "name", "connected": ms, "status": "active"|"inactive",
               "worker", "listener", "peer", "username", "version"}
    events    [[topic, payload, ms, qos, retain], ...]  oldest first, at most 10
    commands  the same, for messages delivered to the device
    subs      {filter: qos}  every current subscription (persistent or not); a
              non-persistent session's row goes when the broker stops, and
              one a crash left behind when its worker starts again
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from bwfast.store import dbkey

if TYPE_CHECKING:
    from bwfast.message import Message
    from bwfast.protocol import Connection
    from bwfast.session import Session
    from bwfast.store import Store

RING = 10
FLUSH_INTERVAL = 0.5


class History:
    __slots__ = ("store", "worker_index", "nworkers", "events", "commands", "dirty_events",
                 "dirty_commands", "dirty_subs", "rows", "gone", "departed")

    def __init__(self, store: Store, worker_index: int, nworkers: int = 1) -> None:
        self.store = store
        self.worker_index = worker_index
        self.nworkers = nworkers
        self.events: dict[str, deque] = {}
        self.commands: dict[str, deque] = {}
        self.dirty_events: set[str] = set()
        self.dirty_commands: set[str] = set()
        self.dirty_subs: dict[str, Session | None] = {}
        self.rows: dict[str, dict] = {}  # devices rows of connects since the last flush
        self.gone: dict[str, int] = {}   # client id -> ms of its disconnect since the last flush
        self.departed: set[str] = set()  # disconnected since the last flush: rings dropped after it

    # -- hot path: one append each ----------------------------------------------------------------
    def event(self, cid: str, msg: Message) -> None:
        self.event_ring(cid).append(msg)
        self.dirty_events.add(cid)

    def command(self, cid: str, msg: Message) -> None:
        self.command_ring(cid).append(msg)
        self.dirty_commands.add(cid)

    def event_ring(self, cid: str) -> deque:
        return _ring(self.events, cid)

    def command_ring(self, cid: str) -> deque:
        return _ring(self.commands, cid)

    def subscriptions_changed(self, session: Session, gone: bool = False) -> None:
        self.dirty_subs[session.client_id] = None if gone else session

    # -- connect / disconnect ------------------------------------------------------------------------
    def connected(self, conn: Connection) -> None:
        cid = conn.client_id
        self.gone.pop(cid, None)
        self.departed.discard(cid)
        self.rows[cid] = {
            "id": cid, "name": cid, "connected": int(time.time() * 1000), "status": "active",
            "worker": self.worker_index, "listener": conn.listener, "peer": conn.peer,
            "username": conn.username, "version": conn.version,
        }

    def disconnected(self, cid: str) -> None:
        now = int(time.time() * 1000)
        row = self.rows.get(cid)
        if row is not None:  # connected and gone within one flush interval
            row["status"] = "inactive"
            row["disconnected"] = now
        else:
            self.gone[cid] = now
        # Its rings may hold what it did in its last moments: the flush writes
        # them first, then lets them go.
        self.departed.add(cid)

    def _flush_rows(self) -> None:
        store = self.store
        if self.gone:
            for cid, ms in self.gone.items():
                # Only our own row: the device may have reconnected on another worker,
                # whose row must stay.
                key = cid.encode()
                rec = store.get("devices", key)
                if rec is not None and rec.get("worker") == self.worker_index \
                        and rec.get("status") == "active":
                    rec["status"] = "inactive"
                    rec["disconnected"] = ms
                    store.put("devices", key, rec)
            self.gone.clear()
        if self.rows:
            shared = self.nworkers > 1
            for cid, row in self.rows.items():
                key = cid.encode()
                if shared and self._newer_elsewhere(key, row["connected"]):
                    continue
                store.put("devices", key, row)
            self.rows.clear()

    def _newer_elsewhere(self, key: bytes, connected: int) -> bool:
        """The device connected again on another worker after our row's connect
        (a takeover, a quick reconnect) and that worker wrote its row first: that
        row is current, ours is not."""
        rec = self.store.get("devices", key)
        return rec is not None and rec.get("worker") != self.worker_index \
            and rec.get("connected", 0) > connected

    def mark_all_inactive(self) -> None:
        """Start-up/shut-down: whatever this worker had connected is not any more."""
        self._flush_rows()
        if self.store.dirty:
            self.store.commit()
        now = int(time.time() * 1000)
        for key, rec in self.store.items("devices"):
            if rec.get("worker") == self.worker_index and rec.get("status") == "active":
                rec["status"] = "inactive"
                rec["disconnected"] = now
                self.store.put("devices", key, rec)

    # -- the batch ------------------------------------------------------------------------------------
    def flush(self) -> None:
        store = self.store
        self._flush_rows()
        if self.dirty_events:
            for cid in self.dirty_events:
                self._put_ring(store, "events", cid, self.events.get(cid))
            self.dirty_events.clear()
        if self.dirty_commands:
            for cid in self.dirty_commands:
                self._put_ring(store, "commands", cid, self.commands.get(cid))
            self.dirty_commands.clear()
        if self.dirty_subs:
            for cid, session in self.dirty_subs.items():
                if session is None or not session.subs:
                    if not self._held_elsewhere(cid):
                        store.delete("subs", cid.encode())
                else:
                    store.put("subs", cid.encode(), {f: o.qos for f, o in session.subs.items()})
            self.dirty_subs.clear()
        if self.departed:
            for cid in self.departed:
                self.events.pop(cid, None)
                self.commands.pop(cid, None)
            self.departed.clear()

    def _held_elsewhere(self, cid: str) -> bool:
        """Another worker holds cid now (`clients`, bwfast/cluster.py): the row is
        its session's, which it writes itself; deleting it would lose that."""
        if self.nworkers < 2:
            return False
        owner = self.store.get("clients", cid.encode())
        return isinstance(owner, int) and owner != self.worker_index and 0 <= owner < self.nworkers

    # -- start-up and shut-down -------------------------------------------------------------------------
    def sessions_ended(self, sessions: Iterable[Session]) -> None:
        """Shut-down: sessions that are not persistent end with the broker
        [MQTT-3.1.2-6]; their subscriptions must not be listed after it."""
        for session in sessions:
            if not session.persistent:
                self.subscriptions_changed(session, gone=True)

    def clean_subs(self, held: Iterable[str], mine: Callable[[str | None], bool]) -> int:
        """Start-up: drop the `subs` rows of sessions that did not survive (clean
        sessions connected at a crash, whose rows nobody removed), i.e. rows this
        worker answers for (``mine``; None: a key stored as a digest, whose id is
        unknown) whose session it did not restore (``held``, from the `sessions`
        database). Returns how many were dropped."""
        keep = {dbkey(cid.encode()) for cid in held}
        n = 0
        for key, _ in self.store.items("subs"):
            if key in keep:
                continue
            try:
                cid: str | None = key.decode()
            except UnicodeDecodeError:  # a digest (an id over LMDB's key limit)
                cid = None
            if mine(cid):
                self.store.delete("subs", key)
                n += 1
        return n

    @staticmethod
    def _put_ring(store: Store, db: str, cid: str, ring: deque | None) -> None:
        if not ring:
            return
        key = cid.encode()
        old = store.get(db, key) or []
        rows = old + [_row(m) for m in ring]
        store.put(db, key, rows[-RING:])
        ring.clear()


def _ring(rings: dict[str, deque], cid: str) -> deque:
    ring = rings.get(cid)
    if ring is None:
        ring = rings[cid] = deque(maxlen=RING)
    return ring


def _row(m: Message | tuple) -> list:
    """A ring entry as stored: a Message, or the fast lane's (topic, packet, payload
    offset, wall time) of a QoS 0 non-retained message (bwfast.fastpath)."""
    if isinstance(m, tuple):
        topic, pkt, off, created = m
        return [topic, pkt[off:], int(created * 1000), 0, False]
    return [m.topic, m.payload, int(m.created * 1000), m.qos, m.retain]
