"""The device registry rows History keeps for the REST API (real LMDB in tmp)."""
from __future__ import annotations

import time
from types import SimpleNamespace

from bwfast.history import History
from bwfast.message import Message
from bwfast.store import Store


def conn(cid: str) -> SimpleNamespace:
    """The attributes of a connection the registry row is made of."""
    return SimpleNamespace(client_id=cid, listener="mqtt", peer="127.0.0.1:5000",
                           username=None, version=4)


def flushed(*histories: History) -> None:
    """Each history's flush, then the worker's commit of the batch."""
    for h in histories:
        h.flush()
        h.store.commit()


def test_rows_are_written_by_the_flush_not_per_connect(tmp_path):
    store = Store(str(tmp_path), sync=False)
    h = History(store, 0)
    h.connected(conn("d1"))
    assert not store.dirty  # a CONNECT costs no LMDB write of its own
    flushed(h)
    row = store.get("devices", b"d1")
    assert row["status"] == "active" and row["worker"] == 0 and row["listener"] == "mqtt"


def test_connect_and_disconnect_within_one_interval_leave_an_inactive_row(tmp_path):
    store = Store(str(tmp_path), sync=False)
    h = History(store, 0)
    h.connected(conn("d1"))
    h.disconnected("d1")
    flushed(h)
    row = store.get("devices", b"d1")
    assert row["status"] == "inactive" and row["disconnected"] >= row["connected"]


def test_disconnect_after_a_flush_marks_our_row_inactive(tmp_path):
    store = Store(str(tmp_path), sync=False)
    h = History(store, 0)
    h.connected(conn("d1"))
    flushed(h)
    h.disconnected("d1")
    flushed(h)
    assert store.get("devices", b"d1")["status"] == "inactive"


def test_a_device_that_moved_to_another_worker_keeps_its_row(tmp_path):
    """Worker 0 learns of the old connection's end after worker 1 wrote the new
    connection's row: worker 0 must not mark the device inactive."""
    store = Store(str(tmp_path), sync=False)
    h0, h1 = History(store, 0), History(store, 1)
    h0.connected(conn("d1"))
    flushed(h0)
    h1.connected(conn("d1"))
    flushed(h1)
    h0.disconnected("d1")
    flushed(h0)
    row = store.get("devices", b"d1")
    assert row["status"] == "active" and row["worker"] == 1


def test_reconnect_on_the_same_worker_before_the_flush_stays_active(tmp_path):
    store = Store(str(tmp_path), sync=False)
    h = History(store, 0)
    h.connected(conn("d1"))
    flushed(h)
    h.disconnected("d1")
    h.connected(conn("d1"))
    flushed(h)
    assert store.get("devices", b"d1")["status"] == "active"


def test_a_quick_reconnect_elsewhere_written_first_stays_active(tmp_path):
    """Connected and gone on worker 0, connected again on worker 1 within one
    interval; worker 1 flushes first. Worker 0's older row must not win."""
    store = Store(str(tmp_path), sync=False)
    h0, h1 = History(store, 0, 2), History(store, 1, 2)
    h0.connected(conn("d1"))
    h0.disconnected("d1")
    time.sleep(0.002)
    h1.connected(conn("d1"))
    flushed(h1)
    flushed(h0)
    row = store.get("devices", b"d1")
    assert row["status"] == "active" and row["worker"] == 1


def test_what_a_departed_device_did_is_written_then_let_go(tmp_path):
    store = Store(str(tmp_path), sync=False)
    h = History(store, 0)
    h.connected(conn("d1"))
    h.event("d1", Message("ev", b"last words", 1, False))
    h.command("d1", Message("cmd", b"bye", 0, False))
    h.disconnected("d1")
    flushed(h)
    assert [r[:2] for r in store.get("events", b"d1")] == [["ev", b"last words"]]
    assert [r[:2] for r in store.get("commands", b"d1")] == [["cmd", b"bye"]]
    assert "d1" not in h.events and "d1" not in h.commands  # no memory kept for it


def test_an_ended_session_leaves_the_row_of_its_new_holder(tmp_path):
    """Worker 0's clean session ended (the client reconnected on worker 1, which
    holds it now per `clients`): worker 0's flush must not delete worker 1's row."""
    store = Store(str(tmp_path), sync=False)
    store.put("clients", b"d1", 1)
    store.put("subs", b"d1", {"a/b": 1})
    store.commit()
    h0 = History(store, 0, 2)
    h0.subscriptions_changed(SimpleNamespace(client_id="d1", subs={}), gone=True)  # type: ignore[arg-type]
    flushed(h0)
    assert store.get("subs", b"d1") == {"a/b": 1}
    store.put("clients", b"d1", 0)
    h0.subscriptions_changed(SimpleNamespace(client_id="d1", subs={}), gone=True)  # type: ignore[arg-type]
    flushed(h0)
    assert store.get("subs", b"d1") is None


def test_clean_subs_keeps_restored_and_foreign_rows(tmp_path):
    store = Store(str(tmp_path), sync=False)
    for cid in (b"kept", b"stale", b"foreign"):
        store.put("subs", cid, {"t": 0})
    store.commit()
    h = History(store, 0, 2)
    assert h.clean_subs(["kept"], lambda cid: cid != "foreign") == 1
    store.commit()
    assert [k for k, _ in store.items("subs")] == [b"foreign", b"kept"]
