"""Persistence across restarts: retained messages and persistent sessions survive
SIGTERM; with [persistence] sync = true nothing acknowledged is lost to kill -9."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    CONTENT_TYPE,
    PUBACK,
    SESSION_EXPIRY,
    USER_PROPERTY,
    V5,
    V311,
    ConnectionClosed,
    parse_ack,
    persistent,
    publish,
)


def _restart(b: Broker) -> None:
    rc, elapsed = b.terminate()
    assert rc is not None, f"broker ignored SIGTERM for {elapsed:.1f}s"
    b.start()


def test_retained_survive_sigterm_restart(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """Retained messages (with their v5 properties) are stored durably."""
    b = make_broker()
    t1, t2 = mq.topic("r1"), mq.topic("r2")
    mq.raw_connected(V311, broker=b).publish(t1, b"kept v311", qos=1, retain=True)
    mq.raw_connected(V5, broker=b).publish(
        t2,
        b"kept v5",
        qos=0,
        retain=True,
        props={CONTENT_TYPE: "text/plain", USER_PROPERTY: [("k", "v")]},
    )
    _restart(b)
    sub = mq.raw_connected(V5, broker=b)
    sub.subscribe(mq.topic("#"), 1)
    got = {m.topic: m for m in sub.receive(2)}
    assert got[t1].payload == b"kept v311" and got[t1].retain
    assert got[t2].payload == b"kept v5" and got[t2].retain
    assert got[t2].props.get(CONTENT_TYPE) == "text/plain"
    assert got[t2].props.get(USER_PROPERTY) == [("k", "v")]


@pytest.mark.parametrize("version_", [V311, V5], ids=["v311", "v5"])
def test_persistent_session_survives_sigterm_restart(
    mq: Clients,
    make_broker: Callable[..., Broker],
    version_: int,
) -> None:
    """Subscriptions, queued QoS 1/2 messages and an in-flight (unacknowledged) one
    survive a restart; the in-flight one comes back first with DUP=1 [MQTT-4.4.0-1]."""
    b = make_broker()
    topic, cid = mq.topic("s"), mq.cid("s")
    sub = mq.raw(version_, broker=b)
    sub.connect(cid, **persistent(version_))
    sub.subscribe(topic, 2)
    pub = mq.raw_connected(version_, broker=b)
    pub.publish(topic, b"in-flight", qos=1)
    first = sub.expect_publish()
    assert first.payload == b"in-flight"
    sub.close()  # never acknowledged
    for i in range(4):
        pub.publish(topic, f"queued {i}".encode(), qos=1 + i % 2, pid=i + 2)
    pub.disconnect()
    _restart(b)
    sub = mq.raw(version_, broker=b)
    assert sub.connect(cid, **persistent(version_)).session_present is True
    got = sub.receive(5)
    assert got[0].payload == b"in-flight" and got[0].dup is True
    assert [m.payload for m in got[1:]] == [f"queued {i}".encode() for i in range(4)]
    assert [m.qos for m in got[1:]] == [1, 2, 1, 2]
    mq.raw_connected(version_, broker=b).publish(topic, b"live after restart", qos=1)
    assert sub.receive(1)[0].payload == b"live after restart"


def test_v5_session_expiry_survives_restart(
    mq: Clients, make_broker: Callable[..., Broker]
) -> None:
    """A v5 session with expiry 0 is not restored after a restart; one with a long
    expiry is."""
    b = make_broker()
    keep, drop = mq.cid("keep"), mq.cid("drop")
    c = mq.raw(V5, broker=b)
    c.connect(keep, clean=False, props={SESSION_EXPIRY: 600})
    c.subscribe(mq.topic("k"), 1)
    c.disconnect()
    d = mq.raw(V5, broker=b)
    d.connect(drop, clean=True, props={SESSION_EXPIRY: 0})
    d.subscribe(mq.topic("d"), 1)
    d.disconnect()
    _restart(b)
    c = mq.raw(V5, broker=b)
    assert c.connect(keep, clean=False, props={SESSION_EXPIRY: 600}).session_present is True
    d = mq.raw(V5, broker=b)
    assert d.connect(drop, clean=False, props={SESSION_EXPIRY: 600}).session_present is False


@pytest.mark.bwfast_only
def test_kill9_loses_nothing_acknowledged(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """With sync = true every QoS 1 message whose PUBACK the publisher received is
    delivered to the offline persistent subscriber after a kill -9 of the whole broker
    (supervisor and workers) and a restart; so is an acknowledged retained message.
    (Mosquitto only saves on shutdown or autosave, hence bwfast only.)"""
    b = make_broker(sync=True)
    topic, cid = mq.topic("k9"), mq.cid("k9")
    retained = mq.topic("k9-retained")
    sub = mq.raw(V311, broker=b)
    sub.connect(cid, clean=False)
    sub.subscribe(topic, 1)
    sub.disconnect()
    mq.raw_connected(V311, broker=b).publish(retained, b"retained before crash", qos=1, retain=True)

    pub = mq.raw_connected(V311, broker=b)
    total = 400
    acked: set[int] = set()
    stop = threading.Event()

    def read_acks() -> None:
        while not stop.is_set():
            try:
                p = pub.recv_packet(0.2)
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError):
                return
            if p.ptype == PUBACK:
                acked.add(parse_ack(p, V311).pid)

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    for i in range(1, total + 1):
        pub.send(publish(topic, str(i).encode(), qos=1, pid=i))
    deadline = time.monotonic() + 10
    while len(acked) < total // 4 and time.monotonic() < deadline:
        time.sleep(0.001)
    b.kill9()  # mid-stream: some messages acknowledged, others not yet
    stop.set()
    reader.join(2)
    acked_now = set(acked)
    assert acked_now, "no PUBACK before the kill"
    b.start()

    sub = mq.raw(V311, broker=b)
    assert sub.connect(cid, clean=False).session_present is True
    received: set[int] = set()
    while True:
        try:
            msg = sub.expect_publish(1.5)
        except AssertionError:
            break
        sub.ack(msg)
        received.add(int(msg.payload))
    missing = sorted(acked_now - received)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:10]}"
    check = mq.raw_connected(V311, broker=b)
    check.subscribe(retained, 1)
    assert check.receive(1)[0].payload == b"retained before crash"


@pytest.mark.bwfast_only
def test_kill9_qos2_acknowledged_survives(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """A QoS 2 message whose handshake completed (PUBREC, PUBREL, PUBCOMP) is not
    lost to kill -9 either, and is delivered once."""
    b = make_broker(sync=True)
    topic, cid = mq.topic("k9q2"), mq.cid("k9q2")
    sub = mq.raw(V5, broker=b)
    sub.connect(cid, **persistent(V5))
    sub.subscribe(topic, 2)
    sub.disconnect()
    pub = mq.raw_connected(V5, broker=b)
    pub.publish(topic, b"exactly once", qos=2, pid=9)
    b.kill9()
    b.start()
    sub = mq.raw(V5, broker=b)
    assert sub.connect(cid, **persistent(V5)).session_present is True
    assert sub.receive(1)[0].payload == b"exactly once"
    sub.expect_nothing(0.5)


def test_v5_clean_start_session_survives_restart(
    mq: Clients, make_broker: Callable[..., Broker]
) -> None:
    """Clean Start 1 only discards an older session; the new one is kept for its
    Session Expiry Interval [MQTT-3.1.2-23], across a restart too.

    Mosquitto 2.0.11 does not save such sessions to its database, so this fails
    against it; the spec wins."""
    b = make_broker()
    cid, topic = mq.cid("cs"), mq.topic("cs")
    c = mq.raw(V5, broker=b)
    c.connect(cid, clean=True, props={SESSION_EXPIRY: 600})
    c.subscribe(topic, 1)
    c.disconnect()
    mq.raw_connected(V5, broker=b).publish(topic, b"queued", qos=1)
    _restart(b)
    c = mq.raw(V5, broker=b)
    assert c.connect(cid, clean=False, props={SESSION_EXPIRY: 600}).session_present is True
    assert c.receive(1)[0].payload == b"queued"
