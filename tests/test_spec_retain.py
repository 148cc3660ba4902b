"""Retained messages (3.1.1 section 3.3.1.3; 5.0 sections 3.3.1.3 and 3.8.3.1)."""

from __future__ import annotations

import pytest
from conftest import Clients
from mqtt_helpers import V5, Publish, RawClient, sub_options, subscribe


def _retained_then_sentinel(
    sub: RawClient, flt: str, sentinel: str, qos: int = 1, options: int | None = None
) -> list[Publish]:
    """Subscribe to flt, then to a topic known to hold a retained message; return what
    arrived before that sentinel (the retained messages for flt)."""
    sub.send(subscribe(11, [(flt, qos if options is None else options)], version=sub.version))
    sub.send(subscribe(12, [(sentinel, 0)], version=sub.version))
    got = sub.collect_until(sentinel)
    return got[:-1]


@pytest.fixture
def sentinel(mq: Clients) -> str:
    """A topic with a retained message, used to bound 'nothing retained' checks."""
    topic = mq.topic("sentinel")
    pub = mq.raw_connected()
    pub.publish(topic, b"s", qos=1, retain=True)
    pub.disconnect()
    return topic


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_retained_stored_and_flagged(mq: Clients, version: int, qos: int) -> None:
    """A retained PUBLISH is stored [MQTT-3.3.1-5] (QoS 0 too [MQTT-3.3.1-7]) and sent to
    a new subscriber with RETAIN=1 [MQTT-3.3.1-8] at min(QoS) of message and subscription."""
    topic = mq.topic("r")
    pub = mq.raw_connected(version)
    pub.publish(topic, b"kept", qos=qos, retain=True, pid=3)
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 2)
    msg = sub.receive(1)[0]
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (topic, b"kept", True, qos)


def test_retained_qos_downgraded(mq: Clients, version: int) -> None:
    """A retained QoS 2 message is delivered at the subscription's QoS 1."""
    topic = mq.topic("r")
    mq.raw_connected(version).publish(topic, b"two", qos=2, retain=True)
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 1)
    msg = sub.receive(1)[0]
    assert (msg.payload, msg.retain, msg.qos) == (b"two", True, 1)


def test_retained_replaced(mq: Clients, version: int, sentinel: str) -> None:
    """A new retained message replaces the previous one for the topic [MQTT-3.3.1-5]."""
    topic = mq.topic("r")
    pub = mq.raw_connected(version)
    pub.publish(topic, b"old", qos=1, retain=True)
    pub.publish(topic, b"new", qos=1, retain=True, pid=2)
    got = _retained_then_sentinel(mq.raw_connected(version), topic, sentinel)
    assert [(m.payload, m.retain) for m in got] == [(b"new", True)]


def test_non_retained_publish_keeps_retained(mq: Clients, version: int, sentinel: str) -> None:
    """A PUBLISH with RETAIN=0 neither stores nor replaces the retained message
    [MQTT-3.3.1-12] (3.1.1)."""
    topic = mq.topic("r")
    pub = mq.raw_connected(version)
    pub.publish(topic, b"keep", qos=1, retain=True)
    pub.publish(topic, b"live only", qos=1, retain=False, pid=2)
    got = _retained_then_sentinel(mq.raw_connected(version), topic, sentinel)
    assert [m.payload for m in got] == [b"keep"]


def test_retained_cleared_by_empty_payload(mq: Clients, version: int, sentinel: str) -> None:
    """A retained message with a zero-byte payload removes the retained message
    [MQTT-3.3.1-10] and is not stored [MQTT-3.3.1-11]; current subscribers get it
    as a normal message (RETAIN=0)."""
    topic = mq.topic("r")
    live = mq.raw_connected(version)
    live.subscribe(topic, 1)
    pub = mq.raw_connected(version)
    pub.publish(topic, b"short-lived", qos=1, retain=True)
    assert live.receive(1)[0].payload == b"short-lived"
    pub.publish(topic, b"", qos=1, retain=True, pid=2)
    cleared = live.receive(1)[0]
    assert (cleared.payload, cleared.retain) == (b"", False)
    assert _retained_then_sentinel(mq.raw_connected(version), topic, sentinel) == []


def test_live_forward_clears_retain_flag(mq: Clients, version: int) -> None:
    """A retained message forwarded to an existing subscription has RETAIN=0
    [MQTT-3.3.1-9] (5.0: unless Retain As Published, [MQTT-3.3.1-12])."""
    topic = mq.topic("r")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 1)
    mq.raw_connected(version).publish(topic, b"live", qos=1, retain=True)
    msg = sub.receive(1)[0]
    assert (msg.payload, msg.retain) == (b"live", False)


def test_retained_wildcard_subscribe(mq: Clients, version: int) -> None:
    """Every retained message matching a new wildcard subscription is sent, flagged."""
    base = mq.topic("many")
    pub = mq.raw_connected(version)
    topics = [f"{base}/a", f"{base}/b/c", f"{base}/d"]
    for i, t in enumerate(topics):
        pub.publish(t, t.encode(), qos=1, retain=True, pid=i + 1)
    sub = mq.raw_connected(version)
    sub.subscribe(f"{base}/#", 1)
    got = sub.receive(3)
    assert sorted(m.topic for m in got) == sorted(topics)
    assert all(m.retain and m.payload == m.topic.encode() for m in got)


# ---- v5 Retain Handling and Retain As Published (5.0 section 3.8.3.1)


def test_v5_retain_handling_0_sends_on_every_subscribe(mq: Clients) -> None:
    """Retain Handling 0: retained messages are sent at every subscribe [MQTT-3.3.1-9]."""
    topic = mq.topic("rh0")
    mq.raw_connected(V5).publish(topic, b"r", qos=1, retain=True)
    sub = mq.raw_connected(V5)
    sub.subscribe([(topic, sub_options(1, rh=0))])
    assert sub.receive(1)[0].retain is True
    sub.subscribe([(topic, sub_options(1, rh=0))], pid=2)
    again = sub.receive(1)[0]
    assert (again.payload, again.retain) == (b"r", True)


def test_v5_retain_handling_1_only_new_subscription(mq: Clients, sentinel: str) -> None:
    """Retain Handling 1: retained messages only if the subscription did not exist
    [MQTT-3.3.1-10] (5.0)."""
    topic = mq.topic("rh1")
    mq.raw_connected(V5).publish(topic, b"r", qos=1, retain=True)
    sub = mq.raw_connected(V5)
    first = _retained_then_sentinel(sub, topic, sentinel, options=sub_options(1, rh=1))
    assert [(m.payload, m.retain) for m in first] == [(b"r", True)]
    again = _retained_then_sentinel(sub, topic, sentinel, options=sub_options(1, rh=1))
    assert [m.topic for m in again] == []


def test_v5_retain_handling_2_never(mq: Clients, sentinel: str) -> None:
    """Retain Handling 2: no retained messages at subscribe [MQTT-3.3.1-11] (5.0); live
    messages still flow."""
    topic = mq.topic("rh2")
    pub = mq.raw_connected(V5)
    pub.publish(topic, b"r", qos=1, retain=True)
    sub = mq.raw_connected(V5)
    assert _retained_then_sentinel(sub, topic, sentinel, options=sub_options(1, rh=2)) == []
    pub.publish(topic, b"live", qos=1, pid=2)
    assert sub.receive(1)[0].payload == b"live"


@pytest.mark.parametrize("rap", [False, True])
def test_v5_retain_as_published(mq: Clients, rap: bool) -> None:
    """Retain As Published 1 keeps the RETAIN flag of a forwarded message, 0 clears it
    [MQTT-3.3.1-12] [MQTT-3.3.1-13] (5.0); a non-retained message stays RETAIN=0."""
    topic = mq.topic("rap")
    sub = mq.raw_connected(V5)
    sub.subscribe([(topic, sub_options(1, rap=rap))])
    pub = mq.raw_connected(V5)
    pub.publish(topic, b"retained", qos=1, retain=True)
    pub.publish(topic, b"plain", qos=1, pid=2)
    got = sub.receive(2)
    assert [(m.payload, m.retain) for m in got] == [(b"retained", rap), (b"plain", False)]


def test_v5_retained_at_subscribe_flagged_without_rap(mq: Clients) -> None:
    """Retained messages sent because of a new subscription carry RETAIN=1 whatever
    Retain As Published says [MQTT-3.3.1-8]."""
    topic = mq.topic("rap0")
    mq.raw_connected(V5).publish(topic, b"r", qos=0, retain=True)
    sub = mq.raw_connected(V5)
    sub.subscribe([(topic, sub_options(1, rap=False))])
    assert sub.receive(1)[0].retain is True
