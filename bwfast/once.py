"""Exactly once for the REST commands that publish (``send_all``, ``send_client``).

The API process may hand one request to more than one worker: a worker that
does not answer may be stalled (SIGSTOP, a long GC pause, swapping) with the
request still sitting in its socket, so the API asks another one too rather
than keep its caller waiting (api/workers.py). Each request carries an id; a
worker runs it only after it has *claimed* that id in LMDB (`requests`), in a
write transaction of its own, so exactly one claim wins across processes. A
worker that gets to the request late finds the id claimed and does nothing.
When no worker answered in time, the API claims the id itself: if it wins, no
worker will ever run the request and the caller is told it failed; if it
loses, a worker took the request and the caller is told it succeeded.

Ids begin with the time they were made (ms, big-endian), so old claims are
dropped from the front of the database, and a worker refuses a request older
than MAX_AGE outright: by then its claim may be gone, and its caller long
answered.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bwfast.store import Store

DB = "requests"
API = -1          # the owner the API process claims an id as
MAX_AGE = 60.0    # seconds: a request older than this is never run
KEEP = 600.0      # seconds a claim is kept (well past MAX_AGE)


def new_id() -> bytes:
    """8 bytes of wall-clock ms, 8 random bytes."""
    return int(time.time() * 1000).to_bytes(8, "big") + os.urandom(8)


def expired(rid: bytes) -> bool:
    """Too old to run (or not an id at all)."""
    if not isinstance(rid, bytes) or len(rid) != 16:
        return True
    return time.time() - int.from_bytes(rid[:8], "big") / 1000 > MAX_AGE


def claim(store: Store, rid: bytes, owner: int) -> int | None:
    """Claim ``rid`` for ``owner`` (a worker index, or API); return None when the
    claim is ours, else the owner that claimed it first."""
    horizon = int((time.time() - KEEP) * 1000).to_bytes(8, "big")
    held = store.claim(DB, rid, owner, expire_below=horizon)
    return None if held is None else int(held)


def admit(store: Store, owner: int, args: dict[str, Any]) -> dict[str, Any] | None:
    """A worker's check before it runs a request: None when it may (the request's
    ``once`` id is its claim now, or the caller sent none), else the answer:
    ``{"ok": False, "claimed": True}`` (someone else has the id) or
    ``{"ok": False, "error": "expired"}``."""
    rid = args.get("once")
    if rid is None:  # a caller that hands the request to one worker only
        return None
    if expired(rid):
        return {"ok": False, "error": "expired"}
    if claim(store, rid, owner) is not None:
        return {"ok": False, "claimed": True}
    return None
