"""One broker across worker processes: routes, forwarding, takeover, shared figures.

The bus (bus.py) moves frames; this module gives them meaning. Frames are
lists whose first item names the kind:

    ["hello", k, [filters]]        k's complete route list (sent on every link up)
    ["r+", k, [filters], seq]      k has its first local subscriber of these filters
    ["ra", j, seq]                 j applied route seq (SUBACK waits for every peer)
    ["r-", k, [filters]]           k has no local subscriber of these any more
    ["pubs", k, [[rec, normal, groups, seq], ...]]
                                   messages k matched for us (one frame per iteration);
                                   seq != 0: reply when durable
    ["done", j, seq]               j has the message of seq (committed to LMDB)
    ["ret", rec]                   retained message set or cleared on k
    ["take", k, cid, clean, seq]   k has a CONNECT for cid, which we hold
    ["taken", j, seq, present]     j closed/saved cid's session
    ["sfwd", j, cid, rec, qos, retain, sub_ids, seq]
                                   j handed cid's session to us and forwards what it still gets
    ["moved", k, cid, seq]         k (the new holder of cid, take seq) routes everything itself
    ["fence", j, seq] / ["fenced", k, seq]
                                   a round trip behind everything k sent j before
    ["mdone", j, cid, seq]         j forwarded its last message for cid (after its last sfwd)
    ["stats", k, counters, connected, sessions, subs, {listener: connected}]

The route table's truth is LMDB (`routes`: filter NUL worker -> [filter, worker]), read by a
worker at start; the tries are the fast copy. `clients` (client id ->
worker) says which worker holds a client's session.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bwfast.bus import Bus
from bwfast.codes import UNSPECIFIED_ERROR
from bwfast.message import Message
from bwfast.orphans import Orphans
from bwfast.registry import MOVE_TIMEOUT

if TYPE_CHECKING:
    from bwfast.session import Session
    from bwfast.worker import AckTarget, Worker

log = logging.getLogger("bwfast.cluster")

CONFIRM_TIMEOUT = 15.0  # seconds an ack waits for peers; then the publisher is disconnected
TAKE_TIMEOUT = 2.0
MID_MASK = (1 << 48) - 1  # a message id: (worker + 1) << 48 | a counter of 48 bits


def _stop_watching(session: Any) -> None:
    """The old holder never said it was done (it died, or a frame was lost): stop holding."""
    if session.held is not None:
        session.end_move_in()
    if session.adopted_from < 0:
        session.seen = None
    session.worker.router.invalidate()


def route_key(filt: str, worker: int) -> bytes:
    return filt.encode() + b"\x00" + bytes([worker])


class Cluster:
    def __init__(self, worker: Worker, nworkers: int) -> None:
        self.worker = worker
        self.index = worker.index
        self.nworkers = nworkers
        self.bus = Bus(worker.index, nworkers, os.path.join(worker.cfg.broker.data_dir, "run"),
                       self.on_frame, self.on_peer_up, self.on_peer_down, worker.schedule_tick)
        self._seq = 0
        # Message ids must not repeat across restarts: a restored session drops a
        # message whose id it has seen (a repeat through LMDB and a peer), so a
        # counter starting again at 1 made the first new messages after a restart
        # pass for old ones. Start from the clock (16 ids per microsecond of
        # headroom, wrapping every ~200 days).
        self._mid = (int(time.time() * 1_000_000) << 4) & MID_MASK
        # seq -> [peers still to answer, conn, ack entry, deadline, is a route announcement]
        self.waiters: dict[int, list] = {}
        self.takes: dict[int, tuple[Callable[[bool], None], float, int]] = {}
        # client id -> (worker that handed its session to us, the take's seq), until
        # that worker says it forwarded its last message ("mdone")
        self.moving: dict[str, tuple[int, int]] = {}
        # seq -> [peers still to answer, then, deadline] (fence)
        self.fences: dict[int, list] = {}
        self.orphans: dict[int, Orphans] = {}  # dead peer -> its persistent sessions
        self.peer_stats: dict[int, list] = {}
        self.hellos: set[int] = set()
        self.ready = asyncio.Event()  # every peer linked both ways and its routes known
        self.handlers: dict[str, Callable[[list], None]] = {
            "hello": self._on_hello, "r+": self._on_route_add, "ra": self._on_answer,
            "r-": self._on_route_remove, "pubs": self._on_pubs, "done": self._on_answer,
            "ret": self._on_retained, "take": self._on_take, "taken": self._on_taken,
            "stats": self._on_stats, "sfwd": self._on_session_forward, "moved": self._on_moved,
            "fence": self._on_fence, "fenced": self._on_fenced, "mdone": self._on_move_done,
        }

    def new_mid(self) -> int:
        """A message id unique across workers (see Session.seen)."""
        return self.new_mids(1)

    def new_mids(self, count: int) -> int:
        """The first of ``count`` consecutive message ids (the fast lane's reads)."""
        first = self._mid + 1
        self._mid = (self._mid + count) & MID_MASK
        return ((self.index + 1) << 48) | (first & MID_MASK)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- start-up -------------------------------------------------------------------------------
    def load_routes(self) -> None:
        """Peers' routes from LMDB; our own stale ones replaced by what we hold now."""
        store = self.worker.store
        router = self.worker.router
        for _, value in store.items("routes"):
            filt, owner = value
            if owner == self.index:
                store.delete("routes", route_key(filt, owner))
            elif owner < self.nworkers:
                router.add_peer_route(owner, filt)
        for filt in router.local_routes:
            store.put("routes", route_key(filt, self.index), [filt, self.index])

    def owns(self, cid: str) -> bool:
        """Is a stored session ours to load? Unowned or orphaned ones go to worker 0."""
        owner = self.worker.store.get("clients", cid.encode())
        if owner is None or owner >= self.nworkers:
            return self.index == 0
        return bool(owner == self.index)

    async def start(self, timeout: float = 5.0) -> None:
        """Link up with every peer before serving clients, so the first SUBACK already
        has every peer's routes behind it (peers still down after ``timeout`` read
        ours from LMDB when they come up)."""
        await self.bus.start()
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            down = [p for p in self.bus.peers if not self.bus.is_up(p) or p not in self.hellos]
            log.warning("workers %s not linked after %.0f s; serving anyway", down, timeout)

    def _check_ready(self) -> None:
        if not self.ready.is_set() and len(self.hellos) == len(self.bus.peers) and all(
                self.bus.is_up(p) for p in self.bus.peers):
            self.ready.set()

    def close(self) -> None:
        self.bus.close()

    # -- frames in ---------------------------------------------------------------------------------
    def on_frame(self, frame: list) -> None:
        self.handlers[frame[0]](frame)
        self.worker.schedule_tick()

    def on_peer_up(self, peer: int) -> None:
        self.bus.send(peer, ["hello", self.index, list(self.worker.router.local_routes)])
        self._check_ready()

    def on_peer_down(self, peer: int) -> None:
        """A peer died. Route announcements stop waiting for it (it reads routes
        from LMDB when it is back). Messages it never confirmed, and those routed
        to it until it is back, go to its persistent sessions' LMDB queues
        (orphans.py); frames still held for it are delivered when it returns."""
        self.hellos.discard(peer)
        if self.worker.stopping:
            return
        # Until it is back, its persistent sessions are served from LMDB; the
        # messages it never confirmed go there too (at least once, never lost).
        orphans = self.orphans[peer] = Orphans(self, peer)
        self.worker.router.invalidate()
        store = self.worker.store
        for seq, w in list(self.waiters.items()):
            if not w[4] and peer in w[0]:
                rec, normal = w[5][peer][:2]
                if normal:
                    orphans.deliver(Message.from_record(rec))
                store.after_commit(self._answer_later(peer, seq))
        self.worker.schedule_tick()
        for seq, (cb, _, owner) in list(self.takes.items()):
            if owner == peer:  # it died holding the session: LMDB has it
                del self.takes[seq]
                cb(False)
        for cid, (owner, _) in list(self.moving.items()):
            if owner == peer:  # it forwards nothing more
                del self.moving[cid]
                session = self.worker.sessions.sessions.get(cid)
                if session is not None and session.held is not None:
                    session.end_move_in()
        for seq, fence in list(self.fences.items()):
            fence[0].discard(peer)
            if not fence[0]:
                del self.fences[seq]
                fence[1]()
        for seq, w in list(self.waiters.items()):
            if w[4] and peer in w[0]:
                w[0].discard(peer)
                if not w[0]:
                    del self.waiters[seq]
                    if w[1] is not None:
                        self.worker.release(w[1], w[2])

    def _answer_later(self, peer: int, seq: int) -> Callable[[], None]:
        return lambda: self._on_answer(["done", peer, seq])

    def _on_hello(self, f: list) -> None:
        if self.orphans.pop(f[1], None) is not None:  # it is back and serves its sessions
            self.worker.router.invalidate()
        self.worker.router.replace_peer_routes(f[1], f[2])
        self.hellos.add(f[1])
        self._check_ready()

    def _on_route_add(self, f: list) -> None:
        for filt in f[2]:
            self.worker.router.add_peer_route(f[1], filt)
        self.bus.send(f[1], ["ra", self.index, f[3]])

    def _on_route_remove(self, f: list) -> None:
        for filt in f[2]:
            self.worker.router.remove_peer_route(f[1], filt)

    def _on_pubs(self, f: list) -> None:
        origin = f[1]
        lane = self.worker.lane
        for item in f[2]:
            if type(item[0]) is str:  # [client id, version, first mid, packets]: fastpath.Lane
                lane.deliver_forwarded(*item)
            else:
                rec, normal, groups, seq = item
                self._deliver_pub(origin, rec, normal, groups, seq)

    def _deliver_pub(self, origin: int, rec: list, normal: bool, groups: list, seq: int) -> None:
        msg = Message.from_record(rec)
        self.worker.router.deliver_forwarded(msg, normal, [tuple(g) for g in groups] if groups else [])
        if seq:
            self._send_committed(origin, ["done", self.index, seq])

    def _on_answer(self, f: list) -> None:
        w = self.waiters.get(f[2])
        if w is None:
            return
        w[0].discard(f[1])
        if not w[0]:
            del self.waiters[f[2]]
            if w[1] is not None:
                self.worker.release(w[1], w[2])

    def _on_retained(self, f: list) -> None:
        self.worker.retained.set(Message.from_record(f[1]), persist=False)

    def _on_take(self, f: list) -> None:
        _, requester, cid, clean, seq = f
        present = self.worker.sessions.hand_over(cid, clean, requester)
        self._send_committed(requester, ["taken", self.index, seq, present])

    def _on_taken(self, f: list) -> None:
        entry = self.takes.pop(f[2], None)
        if entry is not None:
            entry[0](bool(f[3]))

    def _on_stats(self, f: list) -> None:
        self.peer_stats[f[1]] = f[2:]

    def _on_session_forward(self, f: list) -> None:
        cid, rec, qos, retain, sub_ids = f[2:7]
        seq = f[7] if len(f) > 7 else 0
        sessions = self.worker.sessions
        session = sessions.sessions.get(cid)
        if session is None:
            moved = sessions.moving.get(cid)  # handed on already: forward it further
            if moved is None:
                log.warning("message for moved session %r that is not here", cid)
                return
            session = moved[0]
        session.deliver_now(Message.from_record(rec), qos, retain, sub_ids, seq)

    def _on_moved(self, f: list) -> None:
        """The new holder of a session we handed over routes everything itself now.

        Messages a peer sent us before it routed to the new holder may still be on
        their way (each peer's link is in order, but we read the links in any
        order): a fence round trip with every other peer lets them in before we
        drop our routes and tell the new holder we are done (_finish_move)."""
        requester, cid = f[1], f[2]
        token = f[3] if len(f) > 3 else 0
        self.fence(requester, lambda: self._finish_move(requester, cid, token))

    def fence(self, but: int, then: Callable[[], None]) -> None:
        """Call ``then`` once every peer but ``but`` answered a fence, i.e. once what
        they sent us before it is in (a stalled peer is waited for TAKE_TIMEOUT)."""
        peers = {p for p in self.bus.peers if p != but and self.bus.is_up(p)}
        if not peers:
            then()
            return
        seq = self.next_seq()
        self.fences[seq] = [peers, then, time.monotonic() + TAKE_TIMEOUT]
        for peer in peers:
            self.bus.send(peer, ["fence", self.index, seq])

    def _on_fence(self, f: list) -> None:
        self.bus.send(f[1], ["fenced", self.index, f[2]])  # after what we sent it before

    def _on_fenced(self, f: list) -> None:
        fence = self.fences.get(f[2])
        if fence is not None:
            fence[0].discard(f[1])
            if not fence[0]:
                del self.fences[f[2]]
                fence[1]()

    def _finish_move(self, requester: int, cid: str, token: int) -> None:
        """Stop forwarding; "mdone" follows the last forwarded message on the link."""
        self.worker.sessions.finish_move(cid)
        self._send_committed(requester, ["mdone", self.index, cid, token])

    def _on_move_done(self, f: list) -> None:
        _, owner, cid, token = f
        if self.moving.get(cid) != (owner, token):
            return
        del self.moving[cid]
        session = self.worker.sessions.sessions.get(cid)
        if session is not None and session.held is not None:
            session.end_move_in(keep_seen=True)
            # A peer's direct copy of a message the old holder forwarded may still be
            # on its way (links are read in any order): repeats are dropped until
            # every peer answered a fence.
            self.fence(owner, lambda: _stop_watching(session))

    def forward_to_session(self, peer: int, cid: str, msg: Message, qos: int, retain: bool,
                           sub_ids: list[int] | None, seq: int = 0) -> None:
        """Deliver through the worker a session was handed to (see hand_over).

        After the "taken" reply on the same link, so the session is there first.
        ``seq``: the message's record in the session's LMDB queue, which the new
        holder takes over (so a crash before it has the message loses nothing)."""
        self._send_committed(peer, ["sfwd", self.index, cid, msg.to_record(), qos, retain,
                                    sub_ids, seq])

    def _send_committed(self, peer: int, frame: list) -> None:
        """Send once what this iteration staged in LMDB is committed (in order with
        the other after-commit sends), or now when nothing is staged."""
        store = self.worker.store
        if store.urgent:
            store.after_commit(lambda: self.bus.send(peer, frame))
        else:
            self.bus.send(peer, frame)

    def session_live(self, cid: str) -> None:
        """CONNACK is out, so every worker routes cid's filters here: the old holder may stop."""
        moving = self.moving.get(cid)
        if moving is not None:
            self.bus.send(moving[0], ["moved", self.index, cid, moving[1]])

    # -- routes out ----------------------------------------------------------------------------------
    def routes_added(self, filters: list[str]) -> int:
        """Announce new local routes; return a seq the SUBACK must wait on (0: none)."""
        store = self.worker.store
        for filt in filters:
            store.put("routes", route_key(filt, self.index), [filt, self.index])
        up = {p for p in self.bus.peers if self.bus.is_up(p)}
        seq = self.next_seq()
        self.bus.broadcast(["r+", self.index, filters, seq])
        if not up:
            return 0
        self.waiters[seq] = [up, None, None, time.monotonic() + CONFIRM_TIMEOUT, True, None]
        return seq

    def routes_removed(self, filters: list[str]) -> None:
        store = self.worker.store
        for filt in filters:
            store.delete("routes", route_key(filt, self.index))
        self.bus.broadcast(["r-", self.index, filters])

    # -- messages out --------------------------------------------------------------------------------
    def forward(self, msg: Message, forwards: dict[int, list], confirm: bool) -> int:
        """Send msg once to each peer that matched; return a seq to wait on when confirm."""
        rec = msg.to_record()
        seq = self.next_seq() if confirm else 0
        frames = {}
        orphans = self.orphans
        for peer, (normal, groups) in list(forwards.items()):
            if peer in orphans:
                if normal:
                    orphans[peer].deliver(msg)  # into LMDB: the ack waits for the commit
                del forwards[peer]
                continue
            item = [rec, normal, groups, seq]
            self.bus.queue_item(peer, item)
            frames[peer] = item
        self.worker.stats.forwarded += len(forwards)
        if confirm and forwards:
            # The frames are kept until answered: a peer that dies before answering
            # gets them again when it is back (at least once, never lost).
            self.waiters[seq] = [set(forwards), None, None, time.monotonic() + CONFIRM_TIMEOUT,
                                 False, frames]
        return seq

    def retained_changed(self, msg: Message) -> None:
        self.bus.broadcast(["ret", msg.to_record()])

    def attach(self, seq: int, conn: AckTarget, entry: list) -> bool:
        """Tie an ack entry to a seq's answers; False when nothing is awaited any more."""
        w = self.waiters.get(seq)
        if w is None:
            return False
        w[1] = conn
        w[2] = entry
        return True

    def sweep(self) -> None:
        """Answers that never came (a peer died for good): let the acks go."""
        now = time.monotonic()
        for seq, w in list(self.waiters.items()):
            if now > w[3]:
                del self.waiters[seq]
                if w[4]:  # routes: the peer reads them from LMDB when it is back
                    if w[1] is not None:
                        self.worker.release(w[1], w[2])
                    continue
                # A message nobody confirmed is never acknowledged: the publisher is
                # disconnected instead, and sends it again when it reconnects.
                log.warning("peers %s did not confirm seq %d; disconnecting the publisher",
                            w[0], seq)
                if w[1] is not None:
                    w[1].disconnect(UNSPECIFIED_ERROR, "message not confirmed by peers")
        for seq, (cb, deadline, _) in list(self.takes.items()):
            if now > deadline:
                del self.takes[seq]
                cb(False)
        for seq, fence in list(self.fences.items()):
            if now > fence[2]:  # a stalled peer: its late messages may come out of order
                del self.fences[seq]
                log.warning("workers %s did not answer a fence in time", sorted(fence[0]))
                fence[1]()
        self.worker.sessions.sweep_moves()

    # -- sessions across workers ---------------------------------------------------------------------------
    def claim(self, cid: str, clean: bool, proceed: Callable[[], None]) -> None:
        """Make this worker the holder of cid, asking the old holder to let go first."""
        store = self.worker.store
        key = cid.encode()
        owner = store.get("clients", key)
        if owner is None or owner == self.index or owner >= self.nworkers:
            store.put("clients", key, self.index)
            proceed()
            return
        if not self.bus.is_up(owner):
            # The holder is down: its records in LMDB are current up to its last commit.
            self._adopt(cid, clean, owner)
            proceed()
            return
        seq = self.next_seq()

        def taken(present: bool) -> None:
            self._adopt(cid, clean, owner)
            if present and not clean:
                self.moving[cid] = (owner, seq)
                session = self.worker.sessions.sessions.get(cid)
                if session is not None:
                    # Until the old holder stops forwarding, some messages come twice,
                    # and those it forwards come first (Session.deliver holds the others).
                    # What the old holder queued for it came through LMDB: a copy
                    # routed here directly is a repeat.
                    if session.seen is None:
                        session.seen = set()
                    session.held = []
                    self.worker.router.invalidate()
                    self.worker.loop.call_later(MOVE_TIMEOUT + 5, _stop_watching, session)
            proceed()

        self.takes[seq] = (taken, time.monotonic() + TAKE_TIMEOUT, owner)
        self.bus.send(owner, ["take", self.index, cid, clean, seq])

    def _adopt(self, cid: str, clean: bool, owner: int) -> None:
        """Once the old holder let go (or died), LMDB is the truth: a persistent
        session is there, a clean start or a non-persistent one is not. Only
        then do we write ourselves down as the holder, so that whoever reads
        `clients` finds the session in our memory."""
        sessions = self.worker.sessions
        if clean:
            sessions.forget(cid)
        else:
            session = sessions.adopt(cid)
            if session is not None and not self.bus.is_up(owner):
                # Its holder died. Peers may still route messages to the dead one:
                # the record says where the session came from, so that their
                # orphan handling (orphans.py) finds it here, once (mid), and
                # what they wrote to its LMDB queue meanwhile is picked up.
                session.adopted_from = owner
                if session.seen is None:
                    session.seen = set()
                self.worker.router.invalidate()
                sessions.save(session)
                sessions.rescan_later(session)
                self.worker.loop.call_later(MOVE_TIMEOUT, self._settled, session)
        self.worker.store.put("clients", cid.encode(), self.index)

    def _settled(self, session: Session) -> None:
        session.adopted_from = -1
        session.seen = None
        self.worker.router.invalidate()
        if self.worker.sessions.sessions.get(session.client_id) is session:
            self.worker.sessions.save(session)

    def released(self, cid: str) -> None:
        """A non-persistent session ended here: nobody holds cid any more."""
        key = cid.encode()
        if self.worker.store.get("clients", key) == self.index:
            self.worker.store.delete("clients", key)

    # -- figures ---------------------------------------------------------------------------------------------
    def share_stats(self, counters: dict[str, int], connected: int, sessions: int, subs: int,
                    listeners: dict[str, int]) -> None:
        self.bus.broadcast(["stats", self.index, counters, connected, sessions, subs, listeners])
