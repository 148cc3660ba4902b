"""``[cluster] durable_sessions = true``: persistent sessions kept in JetStream too.

Each worker writes a snapshot of every persistent session it holds — the
same record a takeover hands over (nodekv.session_data: subscriptions,
queued and in-flight messages, QoS 2 packet ids) — into the KV bucket
``bwfast_sessions`` (client id -> [node, snapshot]) whenever the session
changed, looking every SNAP seconds; a session that ends here is deleted
from it. When a CONNECT on another node finds the session's node gone (none
of its workers answers the takeover request), that node installs the
snapshot: session present, its queue delivered.

What it does not cover: what changed in the last SNAP seconds (plus the KV
write) before a node died — a message queued for an offline session just
before, or an acknowledgement from the client.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from bwfast.nodes import NodeLink

log = logging.getLogger("bwfast.nodes")

BUCKET = "bwfast_sessions"
SNAP = 0.5  # seconds between two looks for changed sessions


class DurableSessions:
    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.worker = link.worker
        self.kv: Any = None
        self.sigs: dict[str, tuple] = {}
        self.task: asyncio.Task | None = None

    async def joined(self) -> None:
        from bwfast.nodekv import _bucket

        self.kv = await _bucket(self.link.nc.jetstream(), BUCKET)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self.link.closed:
            await asyncio.sleep(SNAP)
            if not self.link.connected or self.kv is None:
                continue
            try:
                await self._snapshot()
            except Exception as e:  # noqa: BLE001 - NATS away: the next look writes it
                log.debug("cluster: session snapshot failed (%s)", e)

    async def _snapshot(self) -> None:
        from bwfast.nodekv import kv_key, session_data

        node = self.link.node
        live = self.worker.sessions.sessions
        for cid, session in list(live.items()):
            if not session.persistent or session.moved_to >= 0:
                continue  # a session moving away is written by the node it goes to
            sig = (len(session.subs), hash(tuple(session.subs)), len(session.inflight),
                   len(session.queue or ()), session.seq, session.next_pid,
                   len(session.qos2_in), session.conn is None)
            if self.sigs.get(cid) == sig:
                continue
            await self.kv.put(kv_key(cid), msgpack.packb([node, session_data(session)]))
            self.sigs[cid] = sig
        for cid in [c for c in self.sigs if c not in live]:
            del self.sigs[cid]
            try:  # ours still (not written meanwhile by the node it moved to)?
                entry = await self.kv.get(kv_key(cid))
                if entry.value and msgpack.unpackb(entry.value, raw=False)[0] == node:
                    await self.kv.delete(kv_key(cid))
            except Exception:  # noqa: BLE001 - not there
                pass

    async def left_by(self, owner: str, cid: str) -> Any:
        """The snapshot ``owner`` (gone) left of cid's session, or None."""
        from bwfast.nodekv import kv_key

        if self.kv is None:
            return None
        try:
            entry = await asyncio.wait_for(self.kv.get(kv_key(cid)), 2.0)
        except Exception:  # noqa: BLE001 - KeyNotFound, or JetStream too slow
            return None
        origin, data = msgpack.unpackb(entry.value, raw=False, strict_map_key=False)
        return data if origin == owner else None
