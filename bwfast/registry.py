"""Session lifecycle: attach on CONNECT, takeover, detach, will, expiry, persistence.

A session outlives its connection when its expiry interval is above zero
(v3.1.1 clean session 0 = never expires; v5 Session Expiry Interval). Its
record in LMDB (`sessions`) holds the subscriptions; its QoS 1/2 messages are
`queue` records keyed by client id and sequence (session.py).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from bwfast.codes import MQTT5, SESSION_TAKEN_OVER
from bwfast.message import Message
from bwfast.session import NEVER_EXPIRES, Session, SubOpts

if TYPE_CHECKING:
    from bwfast.acl import ClientAcl
    from bwfast.protocol import Connection
    from bwfast.worker import Worker

log = logging.getLogger("bwfast.sessions")

MOVE_TIMEOUT = 10.0  # seconds a handed-over session keeps forwarding at most


class SessionRegistry:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.sessions: dict[str, Session] = {}
        self.moving: dict[str, tuple[Session, float]] = {}  # handed over, still forwarding

    def __len__(self) -> int:
        return len(self.sessions)

    def connected_count(self) -> int:
        return sum(1 for s in self.sessions.values() if s.conn is not None)

    # -- start-up ---------------------------------------------------------------------------
    def load(self) -> int:
        """Restore this worker's persistent sessions, subscriptions and messages from LMDB."""
        cluster = self.worker.cluster
        now = time.time()
        for key, rec in self.worker.store.items("sessions"):
            cid = key.decode()
            if cluster is not None and not cluster.owns(cid):
                continue
            self._restore(cid, rec, now)
        return len(self.sessions)

    def adopt(self, cid: str) -> Session | None:
        """Load one session another worker held (takeover, or its holder died)."""
        if cid in self.sessions:
            return self.sessions[cid]
        rec = self.worker.store.get("sessions", cid.encode())
        return None if rec is None else self._restore(cid, rec, time.time())

    def rescan_later(self, session: Session, delays: tuple[float, ...] = (0.3, 1.0, 3.0)) -> None:
        for delay in delays:
            self.worker.loop.call_later(delay, self.rescan, session)

    def rescan(self, session: Session) -> None:
        """Take queue records other workers wrote for this session meanwhile
        (orphans.py), the ones it does not hold already."""
        if self.sessions.get(session.client_id) is not session or self.worker.stopping:
            return  # (stopping: the store is closed)
        store = self.worker.store
        held = {e[5] for e in session.queue or ()} | {e[5] for e in session.inflight.values()}
        mids = {e[1].mid for e in session.queue or ()} | {
            e[1].mid for e in session.inflight.values()} | (session.seen or set())
        prefix = session.client_id.encode() + b"\x00"
        found = 0
        for qkey, qrec in store.items("queue", prefix):
            seq = int.from_bytes(qkey[-8:], "big")
            if seq in held or ("queue", qkey) in store.pending_keys():
                continue
            if _repeat(qrec, mids):  # delivered already, or held under another record
                store.delete("queue", qkey)
                continue
            if session.seen is not None and qrec[0][8:]:
                session.seen.add(qrec[0][8])  # a forwarded copy of it is a repeat
            session.restore_entry(seq, qrec)
            found += 1
        if found:
            # Records written meanwhile elsewhere go in their place, not at the end.
            session.queue = deque(sorted(session.queue or (), key=lambda e: e[5]))
            session.pump()
            self.worker.schedule_tick()

    def forget(self, cid: str) -> None:
        """A clean start elsewhere ends whatever session cid had (its holder is gone)."""
        if cid not in self.sessions:
            self._drop_records(cid)

    def _restore(self, cid: str, rec: dict, now: float) -> Session | None:
        store = self.worker.store
        expiry = rec["e"]
        dc = rec.get("d") or now
        if expiry != NEVER_EXPIRES and dc + expiry <= now:
            self._drop_records(cid)
            return None
        session = Session(cid, self.worker)
        session.version = rec["v"]
        session.expiry = expiry
        session.next_pid = rec.get("p", 1)
        session.disconnected_at = dc
        session.stored = True
        session.set_user(rec.get("u"))
        for filt, opts in rec["s"].items():
            o = SubOpts.from_record(opts)
            session.subs[filt] = o
            self.worker.subscribe(session, filt, o)
        mids: set[int] = set()
        for qkey, qrec in store.items("queue", cid.encode() + b"\x00"):
            if _repeat(qrec, mids):
                store.delete("queue", qkey)
                continue
            session.restore_entry(int.from_bytes(qkey[-8:], "big"), qrec)
        if self.worker.cluster is not None:
            # Peers may still send what we just read from LMDB (frames they held
            # for a dead worker): those repeats are dropped by mid for a while.
            session.seen = mids
            self.worker.loop.call_later(MOVE_TIMEOUT, _settle, session)
        for ikey, _ in store.items("inflight", cid.encode() + b"\x00"):
            session.qos2_in.add(int.from_bytes(ikey[-2:], "big"))
        self.sessions[cid] = session
        self.worker.history.subscriptions_changed(session)
        self._schedule_expiry(session, dc + expiry - now if expiry != NEVER_EXPIRES else None)
        return session

    def hand_over(self, cid: str, clean: bool, to: int) -> bool:
        """Worker ``to`` got a CONNECT for cid: let go of it; True if a session is kept for it.

        Make before break: the session's routes stay here, forwarding to ``to``,
        until ``to`` says every worker routes the session's filters to it
        (:meth:`finish_move`), so no message falls into the gap.
        """
        session = self.sessions.get(cid)
        if session is None:
            return False
        if session.conn is not None:
            self._take_over(session, clean)
        if session.held is not None:
            session.end_move_in()  # still moving in from a third worker: queue them here
        if clean or not session.persistent:
            self.destroy(session, publish_will=False, release=False)
            return False
        self._cancel_timers(session)
        session.stage_volatile()
        self.save(session)
        del self.sessions[cid]
        session.moved_to = to
        self.worker.router.invalidate()
        self.moving[cid] = (session, time.monotonic() + MOVE_TIMEOUT)
        return True

    def finish_move(self, cid: str) -> None:
        """The new holder routes everything itself now: drop the forwarding routes."""
        entry = self.moving.pop(cid, None)
        if entry is not None:
            session = entry[0]
            for filt in session.subs:
                self.worker.unsubscribe(session, filt)

    def sweep_moves(self) -> None:
        now = time.monotonic()
        for cid, (_, deadline) in list(self.moving.items()):
            if now > deadline:
                self.finish_move(cid)

    # -- connect / disconnect -------------------------------------------------------------------
    def attach(self, conn: Connection, cid: str, clean_start: bool, expiry: int) -> tuple[Session, bool]:
        """Bind a connection to its session; return (session, session_present)."""
        session = self.sessions.get(cid)
        if session is not None and session.conn is not None:
            self._take_over(session, clean_start)
        if session is not None:
            if session.expiry_handle is not None:
                session.expiry_handle.cancel()
                session.expiry_handle = None
            if session.will_handle is not None:
                # [MQTT-3.1.3-9]: reconnected within the will delay: no will.
                session.will_handle.cancel()
                session.will_handle = None
                self.set_will(session, None)
        if session is not None and clean_start:
            # The new session is ours as the old one was: keep the `clients` record
            # (released, a persistent new session would be unowned, and after a
            # restart worker 0 would load it while a CONNECT elsewhere made a new one).
            self.destroy(session, publish_will=False, release=False)
            session = None
        present = session is not None
        if session is None:
            session = Session(cid, self.worker)
            self.sessions[cid] = session
        session.conn = conn
        session.live = False  # nothing goes out before the CONNACK [MQTT-3.2.0-1]
        session.set_user(conn.username)
        self.worker.router.invalidate()
        session.version = conn.version
        session.expiry = expiry
        conn.session = session
        conn.client_id = cid
        self.save(session)
        return session, present

    def _take_over(self, session: Session, clean_start: bool) -> None:
        """[MQTT-3.1.4-3]: close the existing connection of this client id."""
        old = session.conn
        assert old is not None
        session.conn = None
        session.live = False
        self.worker.router.invalidate()
        old.session = None
        if session.will is not None and (session.will_delay == 0 or clean_start):
            self.publish_will(session)
        self.set_will(session, None)
        if old.version == MQTT5:
            old.session = session  # lets disconnect() speak v5 once more
            old.disconnect(SESSION_TAKEN_OVER, "session taken over")
            old.session = None
        else:
            old.close()

    def detach(self, conn: Connection) -> None:
        """The connection closed (by either side): will, then end or keep the session."""
        session = conn.session
        conn.session = None
        if session is None or session.conn is not conn:
            return
        session.conn = None
        session.live = False
        self.worker.router.invalidate()
        now = time.time()
        session.disconnected_at = now
        self.worker.history.disconnected(session.client_id)
        if session.will is not None:
            if conn.graceful or not conn.will_on_close:
                self.set_will(session, None)
            elif session.will_delay and session.expiry:
                delay = min(session.will_delay, session.expiry)
                session.will_handle = self.worker.loop.call_later(delay, self.publish_will, session)
            else:
                self.publish_will(session)
        if session.expiry == 0:
            self.destroy(session, publish_will=True)
            return
        self.save(session)
        if session.expiry != NEVER_EXPIRES:
            self._schedule_expiry(session, session.expiry)

    def set_will(self, session: Session, will: Message | None, delay: int = 0,
                 replace: bool = False) -> None:
        """Keep the will in LMDB (`wills`) too: a worker that crashed publishes
        its clients' wills when it is back, and the REST API lists them."""
        had = session.will is not None
        session.will = will
        session.will_delay = delay
        key = session.client_id.encode()
        if will is not None:
            self.worker.store.put("wills", key, {"m": will.to_record(), "d": delay,
                                                 "t": int(time.time() * 1000),
                                                 "u": session.username})
        elif had or (replace and self.worker.store.get("wills", key) is not None):
            # replace: a CONNECT supersedes any will left from before (a crashed worker's)
            self.worker.store.delete("wills", key)

    def publish_will(self, session: Session) -> None:
        will = session.will
        self.set_will(session, None)
        if session.will_handle is not None:
            session.will_handle.cancel()
            session.will_handle = None
        if will is not None:
            self._publish_will_message(will, session.acl)

    def _publish_will_message(self, will: Message, acl: ClientAcl | None) -> None:
        if acl is not None and not acl.may_write(will.topic):
            # Checked when published, like any PUBLISH (CONTRACT.md, "Access control").
            self.worker.stats.denied += 1
            log.debug("will of %s to %s denied", will.origin, will.topic)
            return
        now = time.time()
        will.created = now
        if will.expiry_at < 0:  # the Will's Message Expiry Interval runs from now
            will.expiry_at = now - will.expiry_at
        self.worker.publish(will)

    def publish_orphan_wills(self) -> int:
        """Wills of our clients whose connections died with this worker (kill -9):
        those connections closed without DISCONNECT, so their wills are due now."""
        cluster = self.worker.cluster
        n = 0
        for key, rec in self.worker.store.items("wills"):
            cid = key.decode()
            if cluster is not None and not cluster.owns(cid):
                continue
            session = self.sessions.get(cid)
            if session is not None and session.conn is not None:
                continue
            self.worker.store.delete("wills", key)
            rules = self.worker.acl_rules
            acl = rules.for_client(rec.get("u"), cid) if rules is not None else None
            self._publish_will_message(Message.from_record(rec["m"]), acl)
            n += 1
        return n

    # -- expiry and removal ---------------------------------------------------------------------
    def _schedule_expiry(self, session: Session, delay: float | None) -> None:
        if delay is None:
            return
        session.expiry_handle = self.worker.loop.call_later(max(0.0, delay), self._expire, session)

    def _expire(self, session: Session) -> None:
        session.expiry_handle = None
        if session.conn is None and self.sessions.get(session.client_id) is session:
            self.destroy(session, publish_will=True)

    def destroy(self, session: Session, publish_will: bool, release: bool = True) -> None:
        """End a session: will (if still pending), subscriptions, messages, records."""
        if publish_will and session.will is not None:
            self.publish_will(session)
        self._cancel_timers(session)
        worker = self.worker
        for filt in session.subs:
            worker.unsubscribe(session, filt)
        session.subs.clear()
        worker.history.subscriptions_changed(session, gone=True)
        session.discard_state()
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        if session.stored:
            self._drop_records(session.client_id)
            session.stored = False
        if release and worker.cluster is not None:
            worker.cluster.released(session.client_id)

    @staticmethod
    def _cancel_timers(session: Session) -> None:
        if session.will_handle is not None:
            session.will_handle.cancel()
            session.will_handle = None
        if session.expiry_handle is not None:
            session.expiry_handle.cancel()
            session.expiry_handle = None

    def _drop_records(self, cid: str) -> None:
        store = self.worker.store
        store.delete("sessions", cid.encode())
        store.delete_prefix("queue", cid.encode() + b"\x00")
        store.delete_prefix("inflight", cid.encode() + b"\x00")

    def save(self, session: Session) -> None:
        """Write the session record (subscriptions, expiry) if it is persistent."""
        if not session.persistent:
            if session.stored:
                self._drop_records(session.client_id)
                session.stored = False
            return
        self.worker.store.put("sessions", session.client_id.encode(), {
            "v": session.version,
            "e": session.expiry,
            "s": {f: o.to_record() for f, o in session.subs.items()},
            "d": session.disconnected_at if session.conn is None else 0,
            "p": session.next_pid,
            "f": session.adopted_from,  # >= 0: taken from that dead worker a moment ago
            "u": session.username,      # the ACL decides on it while the client is away
        })
        session.stored = True

    def shutdown(self) -> None:
        """Broker stopping: keep every persistent session's record current."""
        now = time.time()
        for session in list(self.sessions.values()):
            if session.conn is not None:
                self.set_will(session, None)  # not a failure of the client: no will later
                session.disconnected_at = now
                conn = session.conn
                session.conn = None
                session.live = False
                self.worker.router.invalidate()
                conn.session = None
            if session.persistent:
                session.stage_volatile()
            self.save(session)


def _repeat(rec: list, mids: set[int]) -> bool:
    """Is this queue record a message already among ``mids`` (then True), else note it.

    The same message can have two records: the one a worker wrote before it died
    without confirming, and the one orphans.py wrote for it (at least once on
    the bus, exactly once in the session: QoS 2 is never delivered twice)."""
    msg_rec = rec[0]
    mid = msg_rec[8] if len(msg_rec) > 8 else 0
    if not mid:
        return False
    if mid in mids:
        return True
    mids.add(mid)
    return False


def _settle(session: Session) -> None:
    """Restored a while ago: stop watching for repeats (unless a move still is)."""
    if session.held is None and session.adopted_from < 0 and session.seen is not None:
        session.seen = None
        session.worker.router.invalidate()
