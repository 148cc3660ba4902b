"""One broker across worker processes: routes, forwarding, takeover, shared figures.

The bus (bus.py) moves frames; this module gives them meaning. Frames are
lists whose first item names the kind:

    ["hello", k, [filters]]        k's complete route list (sent on every link up)
    ["r+", k, [filters], seq]      k has its first local subscriber of these filters
    ["ra", j, seq]                 j applied route seq (SUBACK waits for every peer)
    ["r-", k, [filters]]           k has no local subscriber of these any more
    ["pub", k, rec, normal, groups, seq]
                                   a message k matched for us; seq != 0: reply when durable
    ["done", j, seq]               j has the message of seq (committed to LMDB)
    ["ret", rec]                   retained message set or cleared on k
    ["take", k, cid, clean, seq]   k has a CONNECT for cid, which we hold
    ["taken", j, seq, present]     j closed/saved cid's session
    ["stats", k, counters, connected, sessions, subs]

The route table's truth is LMDB (`routes`: filter NUL worker -> 1), read by a
worker at start; the tries are the fast copy. `clients` (client id ->
worker) says which worker holds a client's session.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bwfast.bus import Bus
from bwfast.message import Message

if TYPE_CHECKING:
    from bwfast.protocol import Connection
    from bwfast.worker import Worker

log = logging.getLogger("bwfast.cluster")

CONFIRM_TIMEOUT = 10.0  # seconds an ack waits for peers before going out anyway
TAKE_TIMEOUT = 2.0


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
        # seq -> [peers still to answer, conn, ack entry, deadline, is a route announcement]
        self.waiters: dict[int, list] = {}
        self.takes: dict[int, tuple[Callable[[bool], None], float]] = {}
        self.peer_stats: dict[int, list] = {}
        self.forwarded = 0
        self.hellos: set[int] = set()
        self.ready = asyncio.Event()  # every peer linked both ways and its routes known
        self.handlers: dict[str, Callable[[list], None]] = {
            "hello": self._on_hello, "r+": self._on_route_add, "ra": self._on_answer,
            "r-": self._on_route_remove, "pub": self._on_pub, "done": self._on_answer,
            "ret": self._on_retained, "take": self._on_take, "taken": self._on_taken,
            "stats": self._on_stats,
        }

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # -- start-up -------------------------------------------------------------------------------
    def load_routes(self) -> None:
        """Peers' routes from LMDB; our own stale ones replaced by what we hold now."""
        store = self.worker.store
        router = self.worker.router
        for key, _ in store.items("routes"):
            filt, owner = key[:-2].decode(), key[-1]
            if owner == self.index:
                store.delete("routes", key)
            elif owner < self.nworkers:
                router.add_peer_route(owner, filt)
        for filt in router.local_routes:
            store.put("routes", route_key(filt, self.index), 1)

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
        """A peer died: it reads our routes from LMDB when it is back, so route
        announcements stop waiting for it. Forwarded messages keep waiting: the
        bus holds them for the restarted peer, which confirms them then."""
        self.hellos.discard(peer)
        for seq, w in list(self.waiters.items()):
            if w[4] and peer in w[0]:
                w[0].discard(peer)
                if not w[0]:
                    del self.waiters[seq]
                    if w[1] is not None:
                        self.worker.release(w[1], w[2])

    def _on_hello(self, f: list) -> None:
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

    def _on_pub(self, f: list) -> None:
        _, origin, rec, normal, groups, seq = f
        msg = Message.from_record(rec)
        self.worker.router.deliver_forwarded(msg, normal, [tuple(g) for g in groups])
        if seq:
            store = self.worker.store
            reply = ["done", self.index, seq]
            if store.dirty:
                store.after_commit(lambda: self.bus.send(origin, reply))
            else:
                self.bus.send(origin, reply)

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
        present = self.worker.sessions.hand_over(cid, clean)
        store = self.worker.store
        reply = ["taken", self.index, seq, present]
        if store.dirty:
            store.after_commit(lambda: self.bus.send(requester, reply))
        else:
            self.bus.send(requester, reply)

    def _on_taken(self, f: list) -> None:
        entry = self.takes.pop(f[2], None)
        if entry is not None:
            entry[0](bool(f[3]))

    def _on_stats(self, f: list) -> None:
        self.peer_stats[f[1]] = f[2:]

    # -- routes out ----------------------------------------------------------------------------------
    def routes_added(self, filters: list[str]) -> int:
        """Announce new local routes; return a seq the SUBACK must wait on (0: none)."""
        store = self.worker.store
        for filt in filters:
            store.put("routes", route_key(filt, self.index), 1)
        up = {p for p in self.bus.peers if self.bus.is_up(p)}
        seq = self.next_seq()
        self.bus.broadcast(["r+", self.index, filters, seq])
        if not up:
            return 0
        self.waiters[seq] = [up, None, None, time.monotonic() + CONFIRM_TIMEOUT, True]
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
        for peer, (normal, groups) in forwards.items():
            self.bus.send(peer, ["pub", self.index, rec, normal, groups, seq])
        self.forwarded += len(forwards)
        if confirm:
            self.waiters[seq] = [set(forwards), None, None, time.monotonic() + CONFIRM_TIMEOUT,
                                 False]
        return seq

    def retained_changed(self, msg: Message) -> None:
        self.bus.broadcast(["ret", msg.to_record()])

    def attach(self, seq: int, conn: Connection, entry: list) -> bool:
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
                log.warning("peers %s did not answer seq %d; acknowledging anyway", w[0], seq)
                if w[1] is not None:
                    self.worker.release(w[1], w[2])
        for seq, (cb, deadline) in list(self.takes.items()):
            if now > deadline:
                del self.takes[seq]
                cb(False)

    # -- sessions across workers ---------------------------------------------------------------------------
    def claim(self, cid: str, clean: bool, proceed: Callable[[], None]) -> None:
        """Make this worker the holder of cid, asking the old holder to let go first."""
        store = self.worker.store
        owner = store.get("clients", cid.encode())
        store.put("clients", cid.encode(), self.index)
        if owner is None or owner == self.index or owner >= self.nworkers:
            proceed()
            return
        if not self.bus.is_up(owner):
            # The holder is down: its records in LMDB are current up to its last commit.
            self.worker.sessions.adopt(cid)
            proceed()
            return
        seq = self.next_seq()

        def taken(present: bool) -> None:
            if present or not self.bus.is_up(owner):
                self.worker.sessions.adopt(cid)
            proceed()

        self.takes[seq] = (taken, time.monotonic() + TAKE_TIMEOUT)
        self.bus.send(owner, ["take", self.index, cid, clean, seq])

    def released(self, cid: str) -> None:
        """A non-persistent session ended here: nobody holds cid any more."""
        key = cid.encode()
        if self.worker.store.get("clients", key) == self.index:
            self.worker.store.delete("clients", key)

    # -- figures ---------------------------------------------------------------------------------------------
    def share_stats(self, counters: dict[str, int], connected: int, sessions: int, subs: int) -> None:
        self.bus.broadcast(["stats", self.index, counters, connected, sessions, subs])
