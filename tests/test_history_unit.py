"""The device registry rows History keeps for the REST API (real LMDB in tmp)."""
from __future__ import annotations

from types import SimpleNamespace

from bwfast.history import History
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
