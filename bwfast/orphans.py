"""Persistent sessions of a dead worker, served from LMDB until it is back.

When a peer's link drops (kill -9), messages that would be forwarded to it are
matched here instead, against the subscriptions of the persistent sessions it
held (their LMDB records), and written straight into those sessions' LMDB
queues before the publisher gets its PUBACK. Whoever loads such a session
next (the restarted worker, or the worker its client reconnects to) finds the
messages there. A session whose client already reconnected on a live worker
gets them through that worker instead.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bwfast.message import Message
from bwfast.session import SubOpts, queue_key
from bwfast.topics import SubTrie, parse_shared

if TYPE_CHECKING:
    from bwfast.cluster import Cluster


class Orphans:
    def __init__(self, cluster: Cluster, peer: int) -> None:
        self.cluster = cluster
        self.peer = peer
        self.trie = SubTrie()
        self._last_seq = 0
        store = cluster.worker.store
        for key, rec in store.items("sessions"):
            # Held by the dead worker, or just taken from it by a live one (whose
            # copy then gets the messages routed to the dead one, once).
            if rec.get("f", -1) != peer and store.get("clients", key) != peer:
                continue
            cid = key.decode()
            for filt, opts in rec["s"].items():
                if parse_shared(filt)[0] is None:  # shared groups pick live members
                    self.trie.add(filt, cid, SubOpts.from_record(opts))

    def _seq(self) -> int:
        """Queue sequence numbers above any the dead worker used (it counted from 1)."""
        self._last_seq = max(self._last_seq + 1, time.time_ns())
        return self._last_seq

    def deliver(self, msg: Message) -> int:
        cluster = self.cluster
        store = cluster.worker.store
        n = 0
        for subs in self.trie.match(msg.topic):
            for cid, opts in subs.items():
                if opts.no_local and cid == msg.origin:
                    continue
                qos = min(opts.qos, msg.qos)
                retain = msg.retain if opts.rap else False
                sub_ids = [opts.sub_id] if opts.sub_id else None
                # Into the session's LMDB queue first, whoever delivers it: the
                # publisher's ack waits for that commit, so a crash loses nothing.
                owner = store.get("clients", cid.encode())
                back = owner is not None and owner != self.peer and cluster.bus.is_up(owner)
                seq = 0
                if qos or not back:
                    seq = self._seq()
                    store.put("queue", queue_key(cid, seq),
                              [msg.to_record(), qos, retain, sub_ids, 0, 0])
                if back:
                    # Its client is back elsewhere: that worker takes the record over.
                    cluster.forward_to_session(owner, cid, msg, qos, retain, sub_ids, seq)
                n += 1
        return n
