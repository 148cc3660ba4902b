"""Sessions: clean session / clean start, v5 session expiry, offline queues,
max_queued_messages and session takeover (3.1.1 sections 3.1.2.4, 3.1.4, 4.1;
5.0 sections 3.1.2.4, 3.1.2.11.2, 4.1)."""

from __future__ import annotations

import time

from conftest import Broker, Clients
from mqtt_helpers import (
    DISCONNECT,
    RC_SESSION_TAKEN_OVER,
    SESSION_EXPIRY,
    V5,
    V311,
    parse_disconnect,
    persistent,
)


def test_clean_session_discards_subscriptions(mq: Clients, version: int) -> None:
    """A clean session starts empty: subscriptions of the previous connection are gone
    [MQTT-3.1.2-6] (5.0 [MQTT-3.1.2-4])."""
    topic, done = mq.topic("c"), mq.topic("done")
    cid = mq.cid("c")
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    sub.subscribe(topic, 1)
    sub.disconnect()
    sub = mq.raw(version)
    assert sub.connect(cid, clean=True).session_present is False
    sub.subscribe(done, 0)
    pub = mq.raw_connected(version)
    pub.publish(topic, b"nobody", qos=1)
    pub.publish(done, b"end")
    assert [m.topic for m in sub.collect_until(done)] == [done]


def test_persistent_session_keeps_subscriptions(mq: Clients, version: int) -> None:
    """A resumed session keeps its subscriptions [MQTT-3.1.2-4] (5.0 [MQTT-3.1.2-5])."""
    topic = mq.topic("p")
    cid = mq.cid("p")
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    sub.subscribe(topic, 1)
    sub.disconnect()
    sub = mq.raw(version)
    assert sub.connect(cid, **persistent(version)).session_present is True
    mq.raw_connected(version).publish(topic, b"still here", qos=1)
    assert sub.receive(1)[0].payload == b"still here"


def test_offline_queue_delivered_in_order(mq: Clients, version: int) -> None:
    """QoS 1 and 2 messages published while a persistent session is offline are
    stored [MQTT-3.1.2-5] and delivered on reconnect, in order (4.6), each at
    min(published QoS, granted QoS)."""
    topic, done = mq.topic("q"), mq.topic("done")
    cid = mq.cid("q")
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    sub.subscribe([(topic, 2), (done, 0)])
    sub.disconnect()
    pub = mq.raw_connected(version)
    sent = [(i, 1 + i % 2) for i in range(8)]
    for i, qos in sent:
        pub.publish(topic, str(i).encode(), qos=qos, pid=i + 1)
    sub = mq.raw(version)
    assert sub.connect(cid, **persistent(version)).session_present is True
    pub.publish(done, b"end")
    got = [m for m in sub.collect_until(done) if m.topic == topic]
    assert [(int(m.payload), m.qos) for m in got] == sent


def test_offline_queue_wildcard_and_qos_downgrade(mq: Clients, version: int) -> None:
    """Queued messages follow the stored subscription's filter and QoS."""
    base, done = mq.topic("w"), mq.topic("done")
    cid = mq.cid("w")
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    sub.subscribe([(f"{base}/+", 1), (done, 0)])
    sub.disconnect()
    pub = mq.raw_connected(version)
    pub.publish(f"{base}/a", b"a", qos=2)
    pub.publish(f"{base}/b/c", b"no match", qos=1, pid=2)
    pub.publish(f"{base}/d", b"d", qos=1, pid=3)
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    pub.publish(done, b"end")
    got = [(m.topic, m.payload, m.qos) for m in sub.collect_until(done) if m.topic != done]
    assert got == [(f"{base}/a", b"a", 1), (f"{base}/d", b"d", 1)]


def test_max_queued_messages(mq: Clients, limits_broker: Broker, version: int) -> None:
    """An offline session holds at most max_queued_messages (5); the extra ones are
    dropped and what is delivered is in order."""
    limit = limits_broker.conf["max_queued_messages"]
    topic, done = mq.topic("mq"), mq.topic("done")
    cid = mq.cid("m")
    sub = mq.raw(version, broker=limits_broker)
    sub.connect(cid, keepalive=20, **persistent(version))
    sub.subscribe([(topic, 1), (done, 0)])
    sub.disconnect()
    pub = mq.raw_connected(version, broker=limits_broker, keepalive=20)
    for i in range(limit * 3):
        pub.publish(topic, str(i).encode(), qos=1, pid=i + 1)
    sub = mq.raw(version, broker=limits_broker)
    assert sub.connect(cid, keepalive=20, **persistent(version)).session_present is True
    pub.publish(done, b"end")
    got = [int(m.payload) for m in sub.collect_until(done) if m.topic == topic]
    assert 1 <= len(got) <= limit, got
    assert got == sorted(got) and len(set(got)) == len(got)


def test_v5_session_expiry_interval(mq: Clients) -> None:
    """A v5 session with Session Expiry 1 s is gone 1 s after the disconnect
    [MQTT-3.1.2-23]: reconnecting later finds no session and no queued messages."""
    topic, done = mq.topic("e"), mq.topic("done")
    cid = mq.cid("e")
    sub = mq.raw(V5)
    sub.connect(cid, clean=True, props={SESSION_EXPIRY: 1})
    sub.subscribe([(topic, 1), (done, 0)])
    sub.disconnect()
    mq.raw_connected(V5).publish(topic, b"expires with the session", qos=1)
    time.sleep(2.5)
    sub = mq.raw(V5)
    assert sub.connect(cid, clean=False, props={SESSION_EXPIRY: 1}).session_present is False
    sub.subscribe(done, 0)
    mq.raw_connected(V5).publish(done, b"end")
    assert [m.topic for m in sub.collect_until(done)] == [done]


def test_v5_session_kept_within_expiry(mq: Clients) -> None:
    """Within the Session Expiry Interval the session is resumed with its queue."""
    topic = mq.topic("k")
    cid = mq.cid("k")
    sub = mq.raw(V5)
    sub.connect(cid, clean=True, props={SESSION_EXPIRY: 30})
    sub.subscribe(topic, 1)
    sub.disconnect()
    mq.raw_connected(V5).publish(topic, b"waiting", qos=1)
    sub = mq.raw(V5)
    assert sub.connect(cid, clean=False, props={SESSION_EXPIRY: 30}).session_present is True
    assert sub.receive(1)[0].payload == b"waiting"


def test_v5_disconnect_sets_session_expiry_zero(mq: Clients) -> None:
    """A DISCONNECT may lower the Session Expiry Interval (5.0 section 3.14.2.2.2):
    0 ends the session at once."""
    cid = mq.cid("d")
    c = mq.raw(V5)
    c.connect(cid, clean=True, props={SESSION_EXPIRY: 60})
    c.subscribe(mq.topic("d"), 1)
    c.disconnect(rc=0, props={SESSION_EXPIRY: 0})
    c = mq.raw(V5)
    assert c.connect(cid, clean=False, props={SESSION_EXPIRY: 60}).session_present is False


def test_session_takeover(mq: Clients, version: int) -> None:
    """A second connection with the same client id takes over: the first is closed
    [MQTT-3.1.4-2] (v5 after DISCONNECT 0x8E Session taken over), the new one gets
    Session Present 1 and the session's subscriptions keep working.

    5.0 section 3.1.4 step 2 has the server send DISCONNECT 0x8E to the old client;
    Mosquitto 2.0.11 just closes it, so the v5 case fails against it."""
    topic = mq.topic("t")
    cid = mq.cid("t")
    first = mq.raw(version)
    first.connect(cid, **persistent(version))
    first.subscribe(topic, 1)
    second = mq.raw(version)
    assert second.connect(cid, **persistent(version)).session_present is True
    packets = first.wait_closed(3)
    if version == V5:
        assert packets and packets[0].ptype == DISCONNECT, packets
        assert parse_disconnect(packets[0], V5).rc == RC_SESSION_TAKEN_OVER
    else:
        assert packets == []
    mq.raw_connected(version).publish(topic, b"to the new owner", qos=1)
    assert second.receive(1)[0].payload == b"to the new owner"


def test_session_takeover_clean(mq: Clients, version: int) -> None:
    """Taking over with a clean session closes the old connection and starts afresh
    (Session Present 0, old subscriptions gone)."""
    topic, done = mq.topic("t"), mq.topic("done")
    cid = mq.cid("t")
    first = mq.raw(version)
    first.connect(cid, **persistent(version))
    first.subscribe(topic, 1)
    second = mq.raw(version)
    assert second.connect(cid, clean=True).session_present is False
    first.wait_closed(3)
    second.subscribe(done, 0)
    pub = mq.raw_connected(version)
    pub.publish(topic, b"old subscription", qos=1)
    pub.publish(done, b"end")
    assert [m.topic for m in second.collect_until(done)] == [done]


def test_takeover_by_other_protocol_version(mq: Clients) -> None:
    """A 3.1.1 connection can be taken over by a 5.0 one with the same client id."""
    cid = mq.cid("x")
    old = mq.raw(V311)
    old.connect(cid)
    new = mq.raw(V5)
    assert new.connect(cid).rc == 0
    old.wait_closed(3)
    assert new.is_open()
