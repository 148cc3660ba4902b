"""The console's device list: filter, search, sort and page the device registry.

Built on :class:`api.views.DeviceList` (decoded once while LMDB is unchanged).
A filtered and sorted view is kept per (status, search, sort) for as long as
the rows it came from, so turning the pages of 100,000 devices costs a slice,
and a new search one pass over a prepared list of lower-cased names.
"""
from __future__ import annotations

from typing import Any

from api.views import DeviceList, connected_ms, device_row

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


class Listing:
    def __init__(self, devices: DeviceList) -> None:
        self.devices = devices
        self._source: list[tuple[bytes, dict[str, Any]]] | None = None
        self._haystack: list[str] = []
        self._views: dict[tuple[str, str, str, bool], list[int]] = {}

    def _prepare(self) -> list[tuple[bytes, dict[str, Any]]]:
        rows = self.devices.rows()
        if rows is not self._source:
            self._source = rows
            self._haystack = [
                f"{k.decode('utf-8', 'replace')}\x00{r.get('username') or ''}".lower()
                for k, r in rows]
            self._views = {}
        return rows

    def view(self, status: str, search: str, sort: str, desc: bool) -> list[int]:
        """Indexes into the rows, filtered and in order."""
        rows = self._prepare()
        key = (status, search.lower(), sort, desc)
        found = self._views.get(key)
        if found is not None:
            return found
        needle = key[1]
        hay = self._haystack
        idx = [i for i, (_, r) in enumerate(rows)
               if (status == "all" or (r.get("status") == "active") == (status == "active"))
               and (not needle or needle in hay[i])]
        if sort == "connected":
            # rows are newest first already (DeviceList)
            if not desc:
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
        if len(self._views) >= _CACHE_SIZE:
            self._views.pop(next(iter(self._views)))
        self._views[key] = idx
        return idx

    def page(self, status: str, search: str, sort: str, desc: bool, page: int,
             limit: int) -> tuple[list[dict[str, Any]], int]:
        """The rows of one page and the number of matching devices."""
        rows = self._prepare()
        idx = self.view(status, search, sort, desc)
        chunk = idx[(page - 1) * limit:page * limit]
        return [console_row(*rows[i]) for i in chunk], len(idx)
