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
DEFAULT_MAP_SIZE = 8 << 30  # sparse file; grows on demand up to this
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
        os.makedirs(path, exist_ok=True)
        self.path = path
        self.sync = sync
        try:
            self.env = lmdb.open(
                # No fsync per commit: commit() syncs itself when a batch holds
                # durable records (see DURABLE_DBS).
                path, map_size=map_size, max_dbs=len(DB_NAMES) + 2, sync=False,
                metasync=False, max_readers=512, readahead=False,
            )
        except lmdb.Error as e:
            raise StoreError(f"cannot open LMDB environment in {path}: {e}") from e
        self.env.reader_check()  # clear stale readers left by a crashed process
        self.dbs = {name: self.env.open_db(name.encode()) for name in DB_NAMES}
        self._pending: dict[tuple[str, bytes], bytes | None] = {}
        self._callbacks: list[Callable[[], None]] = []
        self._needs_sync = False
        self._urgent = False
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

    def commit(self, before_sync: Callable[[], None] | None = None) -> None:
        """Write everything staged in one transaction, then run the callbacks.

        ``before_sync`` runs once the transaction is written, before the fsync: the
        worker sends its peers what this batch forwards there, so that a crash
        during the fsync never leaves a publisher's QoS 2 packet id recorded as
        taken while the message itself never left (its resend would be dropped)."""
        pending, self._pending = self._pending, {}
        callbacks, self._callbacks = self._callbacks, []
        needs_sync, self._needs_sync = self._needs_sync, False
        self._urgent = False
        if pending:
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

    def delete_prefix(self, db: str, prefix: bytes) -> None:
        """Stage deletion of every committed and staged key under ``prefix``."""
        if db not in LAZY_DBS:
            self._urgent = True
        for key, _ in self.items(db, prefix):
            self._pending[(db, key)] = None
        for (d, key) in list(self._pending):
            if d == db and key.startswith(prefix):
                self._pending[(d, key)] = None

    def close(self) -> None:
        self.commit()
        self.env.sync(True)
        self.env.close()
