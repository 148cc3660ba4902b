"""Exactly once for the REST commands that publish (``send_all``, ``send_client``).

The API process may hand one request to more than one worker: a worker that
does not answer may be stalled (SIGSTOP, a long GC pause, swapping) with the
request still sitting in its socket, so the API asks another one too rather
than keep its caller waiting (api/workers.py). Each request carries an id; a
worker runs it only after it has *claimed* that id: a file named after it in
``data_dir/requests/``, made with link(2), which fails when the name exists, so
exactly one claim wins across processes. (Not an LMDB record: a worker stopped
in the middle of any LMDB commit holds the one write lock, and the API's claim
would wait for it; a file claim never waits for anyone.) A
worker that gets to the request late finds the id claimed and does nothing.
When no worker answered in time, the API claims the id itself: if it wins, no
worker will ever run the request and the caller is told it failed; if it
loses, a worker took the request and the caller is told it succeeded.

Ids begin with the time they were made (ms, big-endian), so old claims are
swept by name, and a worker refuses a request older
than MAX_AGE outright: by then its claim may be gone, and its caller long
answered.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bwfast.store import Store

DIR = "requests"  # under data_dir
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
    folder = os.path.join(store.path, DIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    path = os.path.join(folder, rid.hex())
    # The owner goes in a file of our own first, then link(2) puts it under the
    # id's name: atomic, and it fails if the name exists, so a loser always reads
    # a complete record.
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(str(owner))
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(path) as f:
            return int(f.read())
    finally:
        os.unlink(tmp)
    if rid[7] == 0:  # about one claim in 256 sweeps what is past KEEP
        sweep(folder)
    return None


def sweep(folder: str) -> None:
    """Drop claims older than KEEP (their ids start with the time they were made)."""
    horizon = int((time.time() - KEEP) * 1000)
    for name in os.listdir(folder):
        try:
            made = int.from_bytes(bytes.fromhex(name[:16]), "big")
        except ValueError:
            continue
        if made < horizon:
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                pass


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
