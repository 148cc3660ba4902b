"""Credentials and ACL rules the same on every node (README, "Cluster").

The REST API and the CLI write a node's own LMDB (``auth``: username ->
salted hash; ``acl``: run-time rules). Worker 0 of each node looks at those
two databases every SCAN seconds and puts what changed into the JetStream KV
bucket ``bwfast_sync`` (key: ``<db>.<base64url of the LMDB key>``, value:
``[node, record]``; a removal deletes the key). Every node's worker 0 watches
the bucket and writes the other nodes' changes into its LMDB; an ACL change
then makes every worker of that node re-read its rules (``acl_reload`` on
``bwfast.reload.<node>``), a credentials change or removal disconnects that
user's live connections there (``kick_user``), as on the node where it was
made. Last writer wins.
"""
from __future__ import annotations

import asyncio
import base64
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.control import run_command

if TYPE_CHECKING:
    from bwfast.nodes import NodeLink

log = logging.getLogger("bwfast.nodes")

BUCKET = "bwfast_sync"
DBS = ("auth", "acl")
SCAN = 1.0  # seconds between two looks at the auth and acl databases (worker 0)


def reload_subject(node: str) -> str:
    return f"bwfast.reload.{node}"


class NodeSync:
    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.worker = link.worker
        self.kv: Any = None
        self.seen: dict[tuple[str, bytes], bytes] = {}  # (db, key) -> packed record
        self.task: asyncio.Task | None = None
        self.sub: Any = None
        self.watcher: Any = None

    async def joined(self) -> None:
        from bwfast.nodekv import _bucket

        nc = self.link.nc
        if self.sub is None:
            self.sub = await nc.subscribe(reload_subject(self.link.node), cb=self._on_reload)
        if self.worker.index != 0:
            return
        self.kv = await _bucket(nc.jetstream(), BUCKET)
        if self.watcher is not None:
            try:
                await self.watcher.stop()
            except Exception:  # noqa: BLE001 - its server may be gone
                pass
        self.watcher = await self.kv.watchall()
        loop = asyncio.get_running_loop()
        loop.create_task(self._watch(self.watcher))
        if self.task is None:
            self.seen = self._snapshot()  # what is here now; changes from here on travel
            self.task = loop.create_task(self._scan_loop())

    def _snapshot(self) -> dict[tuple[str, bytes], bytes]:
        store = self.worker.store
        return {(db, key): msgpack.packb(value) for db in DBS for key, value in store.items(db)}

    async def _scan_loop(self) -> None:
        while not self.link.closed:
            await asyncio.sleep(SCAN)
            if not self.link.connected or self.kv is None:
                continue
            try:
                await self._scan()
            except Exception as e:  # noqa: BLE001 - NATS away: the next look sends it
                log.debug("cluster: sync scan failed (%s)", e)

    async def _scan(self) -> None:
        now = self._snapshot()
        for k, packed in now.items():
            if self.seen.get(k) != packed:
                await self.kv.put(_kv_key(*k), msgpack.packb([self.link.node, packed]))
                self.seen[k] = packed
        for k in [k for k in self.seen if k not in now]:
            await self.kv.delete(_kv_key(*k))
            del self.seen[k]

    async def _watch(self, watcher: Any) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                try:
                    self._apply(entry)
                except Exception:  # noqa: BLE001 - one bad entry must not end the watch
                    log.exception("cluster: bad sync entry %s", entry.key)
        except Exception:  # noqa: BLE001 - ended with its connection; joined() renews it
            return

    def _apply(self, entry: Any) -> None:
        db, _, b64 = entry.key.partition(".")
        if db not in DBS:
            return
        key = base64.urlsafe_b64decode(b64.encode())
        store = self.worker.store
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            if (db, key) not in self.seen:
                return
            del self.seen[(db, key)]
            store.delete(db, key)
        else:
            origin, packed = msgpack.unpackb(entry.value, raw=False)
            if origin == self.link.node or self.seen.get((db, key)) == packed:
                return
            self.seen[(db, key)] = packed
            store.put(db, key, msgpack.unpackb(packed, raw=False, strict_map_key=False))
        store.commit()
        command = ["acl_reload", {}] if db == "acl" else ["kick_user", {"username": key.decode()}]
        asyncio.get_running_loop().create_task(self._tell_workers(command))

    async def _tell_workers(self, command: list) -> None:
        """Every worker of this node (us included) runs it (see _on_reload)."""
        await self.link.nc.publish(reload_subject(self.link.node), msgpack.packb(command))

    async def _on_reload(self, m: Any) -> None:
        try:
            command, args = msgpack.unpackb(m.data, raw=False)
        except Exception:  # noqa: BLE001 - a stranger on our subject
            return
        if command in ("acl_reload", "kick_user"):
            run_command(self.worker, command, args)
            self.worker.schedule_tick()


def _kv_key(db: str, key: bytes) -> str:
    return f"{db}.{base64.urlsafe_b64encode(key).decode() or '='}"
