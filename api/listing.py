"""The console's device list: filter, search, sort and page the device registry.

A filtered and sorted view is kept per (status, search, sort, order) for as
long as the snapshot it came from, so turning the pages of 100,000 devices
costs a slice, and a new search one pass over a prepared list of lower-cased
names (off the event loop).
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from api.views import connected_ms, device_row

if TYPE_CHECKING:
    from bwfast.store import Store

SORTS = ("connected", "id", "username", "status")
STATUSES = ("all", "active", "inactive")
_CACHE_SIZE = 8


def console_row(key: bytes, rec: dict[str, Any]) -> dict[str, Any]:
    row = device_row(key, rec)
    row["username"] = rec.get("username") if isinstance(rec.get("username"), str) else None
    row["worker"] = rec.get("worker") if isinstance(rec.get("worker"), int) else None
    row["address"] = rec.get("peer") if isinstance(rec.get("peer"), str) else None
    row["protocol"] = rec.get("version") if isinstance(rec.get("version"), int) else None
    row["disconnected_time"] = rec.get("disconnected") if isinstance(
        rec.get("disconnected"), int) else None
    return row


class _Snapshot:
    __slots__ = ("rows", "haystack", "views", "txnid")

    def __init__(self, rows: list[tuple[bytes, dict[str, Any]]], haystack: list[str],
                 txnid: int) -> None:
        self.rows, self.haystack, self.txnid = rows, haystack, txnid
        self.views: dict[tuple[str, str, str, bool], list[int]] = {}


class Listing:
    """Snapshots of the device registry, rebuilt in a thread.

    Reading and decoding 100,000 rows takes about a second: done on the event
    loop it would stall every other request, and done on every change (devices
    connect all the time) it would never stop. So a snapshot is rebuilt off the
    loop, at most once per REFRESH seconds (or three times its own build time,
    when that is longer), and only when LMDB changed. A cheap rebuild (a small
    registry) is waited for, so a new device shows at once; an expensive one
    runs in the background while requests page the snapshot they have (at
    100,000 devices: the first request waits ~1.5 s, later pages take a few ms,
    and a new device shows within about five seconds).
    """

    REFRESH = 0.25
    CHEAP = 0.05  # seconds: a rebuild this quick is waited for

    def __init__(self, store: Store) -> None:
        self.store = store
        self.snap: _Snapshot | None = None
        self._built = 0.0
        self._cost = 0.0
        self._task: asyncio.Task[None] | None = None

    def _build(self) -> _Snapshot:
        txnid = self.store.env.info()["last_txnid"]
        rows = [(k, r) for k, r in self.store.items("devices") if isinstance(r, dict)]
        rows.sort(key=lambda kr: (-connected_ms(kr[1]), kr[0]))
        hay = [f"{k.decode('utf-8', 'replace')}\x00{r.get('username') or ''}".lower()
               for k, r in rows]
        return _Snapshot(rows, hay, txnid)

    async def _current(self) -> _Snapshot:
        now = time.monotonic()
        snap = self.snap
        if self._task is None and now - self._built >= max(self.REFRESH, 3 * self._cost):
            if snap is not None and self.store.env.info()["last_txnid"] == snap.txnid:
                self._built = now  # nothing written anywhere since
            else:
                self._task = asyncio.create_task(self._rebuild())
        if self._task is not None and (snap is None or self._cost < self.CHEAP):
            await asyncio.shield(self._task)
        assert self.snap is not None
        return self.snap

    async def _rebuild(self) -> None:
        started = time.monotonic()
        try:
            self.snap = await asyncio.get_running_loop().run_in_executor(None, self._build)
        finally:
            self._built = time.monotonic()
            self._cost = self._built - started
            self._task = None

    @staticmethod
    def _view(snap: _Snapshot, status: str, needle: str, sort: str, desc: bool) -> list[int]:
        """Indexes into the snapshot's rows, filtered and in order."""
        rows, hay = snap.rows, snap.haystack
        idx = [i for i, (_, r) in enumerate(rows)
               if (status == "all" or (r.get("status") == "active") == (status == "active"))
               and (not needle or needle in hay[i])]
        if sort == "connected":
            if not desc:  # the snapshot is newest first already
                idx.reverse()
        else:
            def sort_key(i: int) -> tuple[Any, ...]:
                k, r = rows[i]
                if sort == "id":
                    return (k,)
                if sort == "username":
                    return (str(r.get("username") or ""), k)
                return (r.get("status") != "active", -connected_ms(r), k)
            idx.sort(key=sort_key, reverse=desc)
        return idx

    async def page(self, status: str, search: str, sort: str, desc: bool, page: int,
                   limit: int) -> tuple[list[dict[str, Any]], int]:
        """The rows of one page and the number of matching devices."""
        snap = await self._current()
        key = (status, search.lower(), sort, desc)
        idx = snap.views.get(key)
        if idx is None:  # a new filter or order: one pass over the snapshot, off the loop
            idx = await asyncio.get_running_loop().run_in_executor(
                None, self._view, snap, status, key[1], sort, desc)
            if len(snap.views) >= _CACHE_SIZE:
                snap.views.pop(next(iter(snap.views)))
            snap.views[key] = idx
        chunk = idx[(page - 1) * limit:page * limit]
        return [console_row(*snap.rows[i]) for i in chunk], len(idx)
