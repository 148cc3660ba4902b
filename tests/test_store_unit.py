"""The LMDB store: group commit, after-commit callbacks, schema version (real LMDB in tmp)."""
from __future__ import annotations

import lmdb
import msgpack
import pytest

from bwfast.store import COMMIT_GAP, LAZY_COMMIT_GAP, SCHEMA_VERSION, Store, StoreError


def committed(s: Store, db: str, key: bytes) -> object:
    """What another process would read: the committed record, staged writes ignored."""
    with s.env.begin(db=s.dbs[db]) as txn:
        raw = txn.get(key)
    return None if raw is None else msgpack.unpackb(raw)


def test_staged_writes_reach_lmdb_only_at_commit(tmp_path):
    a = Store(str(tmp_path), sync=False)
    a.put("sessions", b"c1", {"e": 5})
    assert a.get("sessions", b"c1") == {"e": 5}  # own staged view
    assert committed(a, "sessions", b"c1") is None
    a.commit()
    assert committed(a, "sessions", b"c1") == {"e": 5}


def test_put_then_delete_in_one_iteration_never_reaches_disk(tmp_path):
    s = Store(str(tmp_path), sync=False)
    s.put("queue", b"x\x00\x01", [1])
    s.delete("queue", b"x\x00\x01")
    s.commit()
    assert list(s.items("queue")) == []


def test_after_commit_callbacks_run_in_order_after_the_write(tmp_path):
    s = Store(str(tmp_path), sync=True)
    seen: list[object] = []
    s.put("retained", b"t", [1])
    s.after_commit(lambda: seen.append(committed(s, "retained", b"t")))
    s.after_commit(lambda: seen.append("second"))
    assert s.dirty
    s.commit()
    assert seen == [[1], "second"]
    assert not s.dirty


def test_prefix_iteration_and_delete(tmp_path):
    s = Store(str(tmp_path), sync=False)
    for cid in ("a", "ab", "b"):
        for seq in (2, 1):
            s.put("queue", cid.encode() + b"\x00" + seq.to_bytes(8, "big"), [cid, seq])
    s.commit()
    assert [v for _, v in s.items("queue", b"a\x00")] == [["a", 1], ["a", 2]]
    s.delete_prefix("queue", b"a\x00")
    s.commit()
    assert [v[0] for _, v in s.items("queue")] == ["ab", "ab", "b", "b"]


def test_newer_schema_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path), max_dbs=4)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema", msgpack.packb(SCHEMA_VERSION + 1), db=meta)
    env.close()
    with pytest.raises(StoreError, match="schema version"):
        Store(str(tmp_path))


def test_corrupt_schema_record_is_refused(tmp_path):
    env = lmdb.open(str(tmp_path), max_dbs=4)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        txn.put(b"schema", b"\xc1", db=meta)  # 0xc1 is never valid msgpack
    env.close()
    with pytest.raises(StoreError, match="corrupt"):
        Store(str(tmp_path))


def test_keys_over_lmdbs_limit_are_stored_under_a_digest(tmp_path):
    s = Store(str(tmp_path), sync=False)
    topic = ("t/" * 400).encode()  # 800 bytes: over LMDB's 511-byte key limit
    s.put("retained", topic, ["full topic kept in the value"])
    s.commit()
    assert s.get("retained", topic) == ["full topic kept in the value"]
    s.delete("retained", topic)
    s.commit()
    assert s.get("retained", topic) is None


def test_one_bad_record_does_not_cost_the_rest_of_the_batch(tmp_path):
    s = Store(str(tmp_path), sync=False)
    done: list[bool] = []
    s.put("sessions", b"good", 1)
    s._pending[("sessions", b"")] = b"x"  # an empty key: LMDB refuses it
    s.after_commit(lambda: done.append(True))
    s.commit()
    assert s.get("sessions", b"good") == 1
    assert done == [True]


def test_only_batches_with_acknowledged_state_are_fsynced(tmp_path, monkeypatch):
    s = Store(str(tmp_path), sync=True)
    syncs: list[bool] = []
    real_sync = s.env.sync
    monkeypatch.setattr(s, "env", _SyncSpy(s.env, syncs, real_sync))
    s.put("devices", b"d1", {"status": "active"})   # registry: no fsync of its own
    s.commit()
    s.delete("queue", b"c\x00" + (1).to_bytes(8, "big"), durable=False)  # an ack
    s.commit()
    assert syncs == []
    s.put("queue", b"c\x00" + (2).to_bytes(8, "big"), [1])  # a message to keep
    s.commit()
    assert syncs == [True]


class _SyncSpy:
    """The real environment, with sync() calls recorded."""

    def __init__(self, env, calls, real_sync):
        self._env, self._calls, self._real = env, calls, real_sync

    def sync(self, force=False):
        self._calls.append(force)
        return self._real(force)

    def __getattr__(self, name):
        return getattr(self._env, name)


@pytest.mark.parametrize("db", ["devices", "events", "commands", "subs"])
def test_history_records_are_lazy_and_hold_back_no_ack(tmp_path, db):
    """What only the REST API reads is staged without making the batch urgent:
    the worker commits it later and acknowledgements don't wait for it."""
    s = Store(str(tmp_path), sync=False)
    s.put(db, b"dev", {"status": "active"})
    assert s.dirty and not s.urgent
    s.delete(db, b"other")
    assert not s.urgent
    s.commit()
    assert committed(s, db, b"dev") == {"status": "active"}


@pytest.mark.parametrize("db", ["sessions", "queue", "inflight", "retained", "clients", "routes",
                                "wills"])
def test_acknowledged_and_shared_records_make_the_batch_urgent(tmp_path, db):
    s = Store(str(tmp_path), sync=False)
    s.put("devices", b"dev", {})
    s.put(db, b"k", [1])
    assert s.urgent
    s.commit()
    assert not s.urgent and not s.dirty
    s.delete(db, b"k")
    assert s.urgent
    s.commit()
    s.delete_prefix(db, b"k")
    assert s.urgent


def test_a_pending_callback_makes_the_batch_urgent(tmp_path):
    """An ack already waiting for the commit keeps later acks behind it (order)."""
    s = Store(str(tmp_path), sync=False)
    s.after_commit(lambda: None)
    assert s.urgent
    s.commit()
    assert not s.urgent


@pytest.mark.parametrize("sync", [True, False])
def test_group_commit_pacing(tmp_path, sync):
    """commit_wait (times are given, nothing is timed): an urgent batch waits out
    COMMIT_GAP after the last commit began, a lazy one LAZY_COMMIT_GAP; after a
    commit that fsynced, a batch an ack waits for goes at once (the fsync already
    batched what arrived during it: a publisher waiting on our PUBACKs got 20
    messages per 1-2 ms of timer otherwise)."""
    s = Store(str(tmp_path), sync=sync)
    s.put("devices", b"d", {})
    s.commit(100.0)
    assert not s.synced
    s.put("events", b"e", {})  # lazy
    assert s.commit_wait(100.0) == pytest.approx(LAZY_COMMIT_GAP)
    s.put("clients", b"c", [1])  # urgent, not durable: the gap holds
    assert s.commit_wait(100.0002) == pytest.approx(COMMIT_GAP - 0.0002)
    assert s.commit_wait(100.0 + COMMIT_GAP) <= 0
    s.commit(100.002)
    assert not s.synced
    s.put("queue", b"q1", [1])  # durable
    s.commit(100.004)
    assert s.synced is sync
    s.put("queue", b"q2", [2])
    assert s.commit_wait(100.0041) > 0  # nobody waits for it: the gap holds
    s.after_commit(lambda: None)        # a PUBACK waits for it
    assert (s.commit_wait(100.0041) <= 0) is sync
    s.commit(100.0041)
    s.put("events", b"e2", {})
    s.commit(100.005)
    assert not s.synced  # a lazy batch is not fsynced
    s.put("events", b"e3", {})
    assert s.commit_wait(100.005) == pytest.approx(LAZY_COMMIT_GAP)


def test_replace_if_never_overwrites_a_record_changed_meanwhile(tmp_path):
    """The rehash of an older credential after a CONNECT: written at once only if
    the record is still the one that was checked (edit_auth may have run)."""
    s = Store(str(tmp_path))

    def elsewhere(value: object) -> None:  # another process's commit (the REST API)
        with s.env.begin(write=True, db=s.dbs["auth"]) as txn:
            if value is None:
                txn.delete(b"u")
            else:
                txn.put(b"u", msgpack.packb(value))

    s.put("auth", b"u", {"v": 1})
    s.commit()
    assert s.replace_if("auth", b"u", {"v": 1}, {"v": 2})
    assert committed(s, "auth", b"u") == {"v": 2}  # at once, no commit() needed
    elsewhere({"v": 3})
    assert not s.replace_if("auth", b"u", {"v": 2}, {"v": 4})
    assert committed(s, "auth", b"u") == {"v": 3}
    elsewhere(None)
    assert not s.replace_if("auth", b"u", {"v": 3}, {"v": 5})
    assert committed(s, "auth", b"u") is None
    s.close()
