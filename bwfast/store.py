"""The LMDB environment: the only module that imports lmdb (DESIGN.md, "LMDB").

Writes are group-committed: callers stage puts and deletes during a loop
iteration and the worker calls :meth:`Store.commit` once at the end of it, so
there is never one transaction per message. Callbacks registered with
:meth:`Store.after_commit` run once the staged writes are durable; the broker
uses them to hold back PUBACK/PUBREC/SUBACK until the state they acknowledge
is on disk (``[persistence] sync = true``).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

import lmdb
import msgpack

log = logging.getLogger("bwfast.store")

SCHEMA_VERSION = 1
DB_NAMES = (
    "meta", "sessions", "subs", "routes", "retained", "queue", "inflight", "auth",
    "devices", "events", "commands", "wills", "revoked", "clients", "acl",
)
# What the broker acknowledges lives here: with [persistence] sync, a batch that
# touches these is fsynced before its acks go out. Other records (the device
# registry, history, ownership) are committed with the same batch but without
# an fsync of their own: a power cut may lose their last moments, never an
# acknowledged message.
DURABLE_DBS = frozenset({"sessions", "queue", "inflight", "retained", "auth", "meta", "revoked",
                         "acl"})
# Records nothing waits for: what the REST API lists (seen within a second).
# A batch of only these is committed lazily and holds back no acknowledgement
# (see `urgent`). `clients` is not one of them: a CONNECT for the same client id
# on another worker right after our CONNACK must find us there (takeover).
LAZY_DBS = frozenset({"devices", "events", "commands", "subs"})
# Group commit pacing (the worker asks `Store.commit_wait` at the end of each loop
# iteration): an urgent batch commits at most once per COMMIT_GAP, a lazy one once
# per LAZY_COMMIT_GAP.
COMMIT_GAP = 0.001
LAZY_COMMIT_GAP = 0.05
DEFAULT_MAP_SIZE = 8 << 30  # sparse file; grows on demand up to this
# Upper bounds (seconds) of the commit latency histogram (/metrics).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
MAX_KEY = 480  # LMDB's limit is 511 bytes; a topic may be 65535


def dbkey(key: bytes) -> bytes:
    """Keys over LMDB's limit (long topics, filters) are stored under a digest;
    records whose key matters keep the full name in their value."""
    if len(key) <= MAX_KEY:
        return key
    return b"\xff#" + hashlib.sha256(key).digest()


pack: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)  # the C function itself


class StoreError(Exception):
    """The LMDB environment is unusable (wrong schema, corrupt, unwritable)."""


class Store:
    """One process's handle on the shared LMDB environment.

    Open it after fork, never before (py-lmdb docs). One writer at a time across
    processes is LMDB's own rule; our write transactions are short.
    """

    def __init__(self, path: str, sync: bool = True, map_size: int = DEFAULT_MAP_SIZE) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        self.path = path
        self.sync = sync
        try:
            self.env = lmdb.open(
                # No fsync per commit: commit() syncs itself when a batch holds
                # durable records (see DURABLE_DBS).
                path, map_size=map_size, max_dbs=len(DB_NAMES) + 2, sync=False,
                metasync=False, max_readers=512, readahead=False,
                mode=0o600,  # the JWT secret, credential hashes, messages: ours only
            )
        except lmdb.Error as e:
            raise StoreError(f"cannot open LMDB environment in {path}: {e}") from e
        for name in ("data.mdb", "lock.mdb"):  # files made by an older bwfast (0644)
            file = os.path.join(path, name)
            st = os.stat(file) if os.path.exists(file) else None
            if st is not None and st.st_mode & 0o077 and st.st_uid == os.geteuid():
                os.chmod(file, 0o600)
        self.env.reader_check()  # clear stale readers left by a crashed process
        self.dbs = {name: self.env.open_db(name.encode()) for name in DB_NAMES}
        self._pending: dict[tuple[str, bytes], bytes | None] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._needs_sync = False
        self._urgent = False
        # Commit latency: counts per COMMIT_BUCKETS bound (+ one over all), sum.
        self._latency = [0] * (len(COMMIT_BUCKETS) + 1)
        self._latency_sum = 0.0
        self.last_commit = 0.0  # time.monotonic() when the last commit began (commit_wait)
        self.synced = False     # the last commit fsynced (with sync, a durable batch)
        self._check_schema()

    # -- schema -----------------------------------------------------------------
    def _check_schema(self) -> None:
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"schema", db=self.dbs["meta"])
            if raw is None:
                txn.put(b"schema", pack(SCHEMA_VERSION), db=self.dbs["meta"])
                return
        try:
            version = unpack(raw)
        except Exception as e:  # noqa: BLE001 - any decode failure means corrupt
            raise StoreError(f"{self.path}: corrupt schema record") from e
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, this bwfast reads {SCHEMA_VERSION}")

    # -- staged writes ------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._pending) or bool(self._callbacks)

    @property
    def urgent(self) -> bool:
        """Staged writes an acknowledgement must wait for (anything outside LAZY_DBS),
        or callbacks waiting for the commit."""
        return self._urgent or bool(self._callbacks)

    def put(self, db: str, key: bytes, value: Any, durable: bool | None = None) -> None:
        """Stage a write; ``durable=False`` skips the fsync for a record whose loss in
        a power cut costs nothing acknowledged (default: by database)."""
        self._pending[(db, dbkey(key))] = pack(value)
        self._staged(db, durable)

    def delete(self, db: str, key: bytes, durable: bool | None = None) -> None:
        self._pending[(db, dbkey(key))] = None
        self._staged(db, durable)

    def _staged(self, db: str, durable: bool | None) -> None:
        """What a staged write to ``db`` asks of the commit: soon (urgent), fsynced."""
        if db not in LAZY_DBS:
            self._urgent = True
        if durable or (durable is None and db in DURABLE_DBS):
            self._needs_sync = True

    def pending_keys(self) -> dict[tuple[str, bytes], bytes | None]:
        """Staged, uncommitted writes (read-only view for callers that must skip them)."""
        return self._pending

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def commit_wait(self, now: float) -> float:
        """Seconds until the staged batch should commit; <= 0: now.

        Group commit: a batch waits until COMMIT_GAP after the last commit began
        (LAZY_COMMIT_GAP when nothing waits for it), so a storm of CONNECTs or
        QoS 1 messages shares one transaction (~25 page writes, whatever it holds).
        But after a commit that fsynced, a batch that acknowledgements wait for
        (after_commit callbacks) goes at once: the loop was blocked for the fsync,
        so whatever arrived meanwhile is already in this batch, and waiting longer
        only holds back the acks. (The loop's timers count whole milliseconds, so
        the gap costs 1-2 ms per round: a publisher whose window of 20 waits on
        our PUBACKs got 20 messages per 1-2 ms, ~10-12 k msg/s, whatever the disk.)
        Batches nobody waits for (a drain's deliveries) keep the gap: committing
        each of them, with its fsync, halved the drain rate.
        """
        if self.urgent:
            if self.synced and self._callbacks:
                return 0.0
            return self.last_commit + COMMIT_GAP - now
        return self.last_commit + LAZY_COMMIT_GAP - now

    def commit(self, now: float | None = None,
               before_sync: Callable[[], None] | None = None) -> None:
        """Write everything staged in one transaction, then run the callbacks.
        ``now`` (time.monotonic()) is when it began, for :meth:`commit_wait`.

        ``before_sync`` runs once the transaction is written, before the fsync: the
        worker sends its peers what this batch forwards there, so that a crash
        during the fsync never leaves a publisher's QoS 2 packet id recorded as
        taken while the message itself never left (its resend would be dropped)."""
        pending, self._pending = self._pending, {}
        callbacks, self._callbacks = self._callbacks, []
        needs_sync, self._needs_sync = self._needs_sync, False
        self._urgent = False
        self.last_commit = time.monotonic() if now is None else now
        self.synced = bool(pending) and needs_sync and self.sync
        if pending:
            started = time.perf_counter()
            try:
                self._write(pending, skip_bad=False)
            except lmdb.Error:
                # One bad record must not cost everyone else's writes (and acks).
                log.exception("LMDB batch failed; writing its records one by one")
                self._write(pending, skip_bad=True)
            if before_sync is not None:
                before_sync()
            if needs_sync and self.sync:
                self.env.sync(True)
            took = time.perf_counter() - started
            self._latency[bisect_left(COMMIT_BUCKETS, took)] += 1
            self._latency_sum += took
        for cb in callbacks:
            try:
                cb()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the rest
                log.exception("after-commit callback failed")

    def _write(self, pending: dict[tuple[str, bytes], bytes | None], skip_bad: bool) -> None:
        dbs = self.dbs
        with self.env.begin(write=True) as txn:
            for (db, key), value in pending.items():
                try:
                    if value is None:
                        txn.delete(key, db=dbs[db])
                    else:
                        txn.put(key, value, db=dbs[db])
                except lmdb.Error:
                    if not skip_bad:
                        raise
                    log.error("dropped an LMDB write to %s (%d-byte key)", db, len(key))

    def commit_latency(self) -> dict[str, Any]:
        """The histogram of commit times: counts per bucket (not cumulative), sum."""
        return {"bounds": list(COMMIT_BUCKETS), "counts": list(self._latency),
                "sum": self._latency_sum}

    def replace_if(self, db: str, key: bytes, expected: Any, value: Any) -> bool:
        """Write ``value`` at once, in its own transaction, only if the committed
        record is still ``expected``: LMDB serialises writers across processes, so
        a change committed meanwhile by another process (the REST API's edit_auth)
        is never overwritten. Not fsynced: losing it in a power cut loses nothing."""
        key, db_ = dbkey(key), self.dbs[db]
        with self.env.begin(write=True) as txn:
            raw = txn.get(key, db=db_)
            if raw is None or unpack(raw) != expected:
                return False
            txn.put(key, pack(value), db=db_)
        return True

    # -- reads --------------------------------------------------------------------
    def get(self, db: str, key: bytes) -> Any:
        key = dbkey(key)
        if (db, key) in self._pending:
            raw = self._pending[(db, key)]
        else:
            with self.env.begin(db=self.dbs[db]) as txn:
                raw = txn.get(key)
        return None if raw is None else unpack(raw)

    def items(self, db: str, prefix: bytes = b"") -> Iterator[tuple[bytes, Any]]:
        """Committed records of ``db`` whose key starts with ``prefix``, in key order."""
        out: list[tuple[bytes, Any]] = []
        with self.env.begin(db=self.dbs[db]) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return iter(())
            for key, raw in cur:
                if not key.startswith(prefix):
                    break
                out.append((bytes(key), unpack(raw)))
        return iter(out)

    def page(self, db: str, prefix: bytes, after: bytes, limit: int) -> list[tuple[bytes, Any]]:
        """Up to ``limit`` committed records under ``prefix`` whose key sorts after
        ``after`` (b"": from the first), in key order: a page without reading the rest."""
        out: list[tuple[bytes, Any]] = []
        with self.env.begin(db=self.dbs[db]) as txn:
            cur = txn.cursor()
            if not cur.set_range(max(prefix, after)):
                return out
            for key, raw in cur:
                if not key.startswith(prefix):
                    break
                if after and key == after:
                    continue
                out.append((bytes(key), unpack(raw)))
                if len(out) >= limit:
                    break
        return out

    def entries(self, db: str) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.dbs[db])["entries"])

    def size(self) -> int:
        """Bytes of the environment in use (pages up to the last one written)."""
        info = self.env.info()
        return (int(info["last_pgno"]) + 1) * int(self.env.stat()["psize"])

    def delete_prefix(self, db: str, prefix: bytes) -> None:
        """Stage deletion of every committed and staged key under ``prefix``."""
        if db not in LAZY_DBS:
            self._urgent = True
        for key, _ in self.items(db, prefix):
            self._pending[(db, key)] = None
        for (d, key) in list(self._pending):
            if d == db and key.startswith(prefix):
                self._pending[(d, key)] = None

    # -- claims -------------------------------------------------------------------
    def close(self) -> None:
        self.commit()
        self.env.sync(True)
        self.env.close()
