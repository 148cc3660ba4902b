"""[cluster]: the listings over every node (bwfast/nodeapi.py answers for the others).

A node's listings read its own LMDB; with [cluster] on, the rows of the other
nodes are asked through one of this node's workers (``nodes_rows``) and merged:
a device known on several nodes (it moved) shows its most recent record, the
active one first. Without a cluster, or when no other node answers, the
listing is this node's alone.
"""
from __future__ import annotations

from typing import Any

from api import views


def _fresher(new: dict[str, Any], cur: dict[str, Any]) -> bool:
    new_active = new.get("status") == "active"
    if new_active != (cur.get("status") == "active"):
        return new_active
    return views.connected_ms(new) > views.connected_ms(cur)


async def device_rows(ctx: Any) -> list[tuple[bytes, dict[str, Any]]]:
    """Every node's devices, most recent first (as views.Devices.rows)."""
    rows = ctx.devices.rows()
    if not ctx.cluster:
        return rows
    remote = await ctx.workers.nodes_rows("devices")
    if not remote:
        return list(rows)
    merged = dict(rows)
    for key, rec in remote:
        if isinstance(key, bytes) and isinstance(rec, dict):
            cur = merged.get(key)
            if cur is None or _fresher(rec, cur):
                merged[key] = rec
    return sorted(merged.items(), key=lambda kr: (-views.connected_ms(kr[1]), kr[0]))


async def rows(ctx: Any, db: str) -> list[tuple[str, Any]]:
    """(client id, record) of ``db`` on every node; this node's first, once per id."""
    found = {views.key_text(k): r for k, r in ctx.store.items(db)}
    for key, rec in await ctx.workers.nodes_rows(db):
        if isinstance(key, bytes):
            found.setdefault(views.key_text(key), rec)
    return list(found.items())


def names(rows_: list[tuple[bytes, dict[str, Any]]]) -> dict[str, str]:
    return {views.key_text(k): str(r.get("name") or views.key_text(k)) for k, r in rows_}
