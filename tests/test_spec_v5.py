"""MQTT 5.0 features: topic aliases, message expiry, no-local, subscription
identifiers, forwarded properties, maximum packet size, reason strings and
receive maximum (5.0 sections 3.1.2.11, 3.3.2.3, 3.8.3.1, 4.9)."""

from __future__ import annotations

import time

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    MESSAGE_EXPIRY,
    PAYLOAD_FORMAT,
    PUBREC,
    RC_MALFORMED,
    RC_PROTOCOL_ERROR,
    RC_RECEIVE_MAX_EXCEEDED,
    RC_TOPIC_ALIAS_INVALID,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    RESPONSE_TOPIC,
    SUBSCRIPTION_ID,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    USER_PROPERTY,
    V5,
    PacketTypes,
    Publish,
    parse_disconnect,
    persistent,
    props_for,
    puback,
    pubcomp,
    publish,
    pubrec,
    sub_options,
)

# ---- topic aliases, client to server (5.0 section 3.3.2.3.4)


def test_topic_alias_from_client(mq: Clients) -> None:
    """An alias set with a topic can then be used with an empty topic name and can be
    remapped [MQTT-3.3.2-12]; subscribers (no Topic Alias Maximum) get full topic
    names and no alias [MQTT-3.3.2-8]."""
    t1, t2 = mq.topic("alias", "one"), mq.topic("alias", "two")
    sub = mq.raw_connected(V5)
    sub.subscribe(mq.topic("alias", "#"), 1)
    pub = mq.raw(V5)
    ack = pub.connect(mq.cid())
    assert ack.props.get(TOPIC_ALIAS_MAXIMUM, 0) >= 1
    pub.publish(t1, b"a", qos=1, props={TOPIC_ALIAS: 1})
    pub.publish("", b"b", qos=1, pid=2, props={TOPIC_ALIAS: 1})
    pub.publish(t2, b"c", qos=1, pid=3, props={TOPIC_ALIAS: 1})
    pub.publish("", b"d", qos=1, pid=4, props={TOPIC_ALIAS: 1})
    got = sub.receive(4)
    assert [(m.topic, m.payload) for m in got] == [(t1, b"a"), (t1, b"b"), (t2, b"c"), (t2, b"d")]
    assert all(TOPIC_ALIAS not in m.props for m in got)


@pytest.mark.parametrize("case", ["above_max", "zero"])
def test_topic_alias_invalid(mq: Clients, broker: Broker, case: str) -> None:
    """An alias of 0 or above the server's Topic Alias Maximum gets DISCONNECT 0x94
    Topic Alias invalid and the connection is closed [MQTT-3.3.2-8] [MQTT-3.3.2-9]."""
    alias = broker.conf["topic_alias_maximum"] + 1 if case == "above_max" else 0
    c = mq.raw_connected(V5)
    c.send(publish(mq.topic("x"), b"x", qos=0, version=V5, props={TOPIC_ALIAS: alias}))
    packets = c.wait_closed()
    assert packets and packets[-1].ptype == DISCONNECT, packets
    rc = parse_disconnect(packets[-1], V5).rc
    if case == "above_max":
        assert rc == RC_TOPIC_ALIAS_INVALID
    else:
        # Alias 0 is forbidden [MQTT-3.3.2-8] but the spec names no code for it:
        # 0x94 fits best, 0x82 is the generic one, Mosquitto sends 0x81.
        assert rc in (RC_TOPIC_ALIAS_INVALID, RC_PROTOCOL_ERROR, RC_MALFORMED)


def test_topic_alias_unknown_with_empty_topic(mq: Clients) -> None:
    """An empty topic name with an alias that was never set is a Protocol Error
    (5.0 section 3.3.2.3.4): DISCONNECT 0x82 and close."""
    c = mq.raw_connected(V5)
    c.send(publish("", b"x", qos=0, version=V5, props={TOPIC_ALIAS: 3}))
    packets = c.wait_closed()
    assert packets and packets[-1].ptype == DISCONNECT, packets
    assert parse_disconnect(packets[-1], V5).rc == RC_PROTOCOL_ERROR


def test_topic_alias_to_client_respects_its_maximum(mq: Clients) -> None:
    """The server may use aliases towards a client that declared a Topic Alias
    Maximum, never above it [MQTT-3.1.2-26]; resolved topics must be right."""
    topic = mq.topic("ta")
    sub = mq.raw_connected(V5, props={TOPIC_ALIAS_MAXIMUM: 2})
    sub.subscribe(topic, 1)
    pub = mq.raw_connected(V5)
    for i in range(3):
        pub.publish(topic, str(i).encode(), qos=1, pid=i + 1)
    aliases: dict[int, str] = {}
    for m in sub.receive(3):
        alias = m.props.get(TOPIC_ALIAS)
        if alias is not None:
            assert 1 <= alias <= 2
            if m.topic:
                aliases[alias] = m.topic
            resolved = aliases.get(alias)
        else:
            resolved = m.topic
        assert resolved == topic


# ---- message expiry (5.0 section 3.3.2.3.3)


def test_message_expiry_offline_queue_and_retained(mq: Clients) -> None:
    """A queued message whose Message Expiry Interval passed is not delivered; a live
    one is sent with the interval minus its time in the server [MQTT-3.3.2-5]
    [MQTT-3.3.2-6]; an expired retained message is not sent to new subscribers."""
    topic, retained = mq.topic("exp"), mq.topic("exp-r")
    cid = mq.cid("e")
    sub = mq.raw(V5)
    sub.connect(cid, **persistent(V5))
    sub.subscribe(topic, 1)
    sub.disconnect()
    pub = mq.raw_connected(V5)
    pub.publish(topic, b"short", qos=1, pid=1, props={MESSAGE_EXPIRY: 1})
    pub.publish(topic, b"long", qos=1, pid=2, props={MESSAGE_EXPIRY: 60})
    pub.publish(topic, b"forever", qos=1, pid=3)
    pub.publish(retained, b"stale", qos=1, pid=4, retain=True, props={MESSAGE_EXPIRY: 1})
    pub.publish(retained + "/ok", b"fresh", qos=1, pid=5, retain=True)
    time.sleep(2.2)
    sub = mq.raw(V5)
    assert sub.connect(cid, **persistent(V5)).session_present is True
    got = sub.receive(2)
    assert [m.payload for m in got] == [b"long", b"forever"]
    remaining = got[0].props.get(MESSAGE_EXPIRY)
    assert remaining is not None and 55 <= remaining <= 58, remaining
    assert MESSAGE_EXPIRY not in got[1].props
    sub.subscribe(retained + "/#", 1, pid=9)
    fresh = sub.receive(1)[0]
    assert fresh.payload == b"fresh"
    sub.expect_nothing(0.3)


def test_message_expiry_forwarded_live(mq: Clients) -> None:
    """A live message keeps its Message Expiry Interval (at most the sent value)."""
    topic = mq.topic("exp")
    sub = mq.raw_connected(V5)
    sub.subscribe(topic, 1)
    mq.raw_connected(V5).publish(topic, b"x", qos=1, props={MESSAGE_EXPIRY: 120})
    value = sub.receive(1)[0].props.get(MESSAGE_EXPIRY)
    assert value is not None and 118 <= value <= 120


# ---- no local, subscription identifiers


def test_no_local(mq: Clients) -> None:
    """No Local 1: the client's own messages are not sent back to it [MQTT-3.8.3-3];
    other clients' messages are."""
    topic, done = mq.topic("nl"), mq.topic("done")
    c = mq.raw_connected(V5)
    c.subscribe([(topic, sub_options(1, no_local=True)), (done, sub_options(0))])
    c.publish(topic, b"mine", qos=1)
    c.publish(done, b"end", qos=0)
    assert [m.topic for m in c.collect_until(done)] == [done]
    mq.raw_connected(V5).publish(topic, b"theirs", qos=1)
    assert c.receive(1)[0].payload == b"theirs"


def test_without_no_local_own_messages_return(mq: Clients) -> None:
    """Without No Local a client receives its own publications (control case)."""
    topic = mq.topic("own")
    c = mq.raw_connected(V5)
    c.subscribe(topic, 1)
    c.send(publish(topic, b"echo", qos=0, version=V5))
    assert c.expect_publish().payload == b"echo"


def test_subscription_identifier(mq: Clients) -> None:
    """A subscription's identifier is sent with the messages it matches
    (5.0 section 3.3.2.3.8); without one, none is sent."""
    with_id, without = mq.topic("sid", "a"), mq.topic("sid", "b")
    sub = mq.raw_connected(V5)
    sub.subscribe(with_id, 1, props={SUBSCRIPTION_ID: 42})
    sub.subscribe(without, 1, pid=2)
    pub = mq.raw_connected(V5)
    pub.publish(with_id, b"1", qos=1)
    pub.publish(without, b"2", qos=1, pid=2)
    a, b = sub.receive(2)
    assert a.props.get(SUBSCRIPTION_ID) == [42]
    assert SUBSCRIPTION_ID not in b.props


def test_subscription_identifiers_overlapping(mq: Clients) -> None:
    """Overlapping subscriptions with different identifiers: the message carries both
    identifiers (one copy) or each copy carries its own [MQTT-3.3.4-3] [MQTT-3.3.4-4]."""
    base, done = mq.topic("sid"), mq.topic("done")
    sub = mq.raw_connected(V5)
    sub.subscribe(f"{base}/+", 1, props={SUBSCRIPTION_ID: 7})
    sub.subscribe(f"{base}/#", 1, pid=2, props={SUBSCRIPTION_ID: 268435455})
    sub.subscribe(done, 0, pid=3)
    pub = mq.raw_connected(V5)
    pub.publish(f"{base}/x", b"x", qos=1)
    pub.publish(done, b"end")
    copies = [m for m in sub.collect_until(done) if m.topic != done]
    ids = sorted(i for m in copies for i in m.props.get(SUBSCRIPTION_ID, []))
    assert ids == [7, 268435455]
    assert 1 <= len(copies) <= 2


# ---- forwarded properties (5.0 section 3.3.2.3)


def _forwarded(msg: Publish) -> dict[int, object]:
    return {
        k: v
        for k, v in msg.props.items()
        if k not in (MESSAGE_EXPIRY, SUBSCRIPTION_ID, TOPIC_ALIAS)
    }


FORWARDED = {
    PAYLOAD_FORMAT: 1,
    CONTENT_TYPE: "text/plain; charset=utf-8",
    RESPONSE_TOPIC: "reply/here",
    CORRELATION_DATA: b"\x00\x01corr\xff",
    USER_PROPERTY: [("b", "2"), ("a", "1"), ("b", "3"), ("", "")],
}


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_properties_forwarded_unchanged(mq: Clients, qos: int) -> None:
    """Payload Format Indicator [MQTT-3.3.2-4], Content Type, Response Topic,
    Correlation Data and User Properties (order kept) [MQTT-3.3.2-17] [MQTT-3.3.2-18]
    reach the subscriber unchanged."""
    topic = mq.topic("props")
    sub = mq.raw_connected(V5)
    sub.subscribe(topic, 2)
    mq.raw_connected(V5).publish(topic, "héllo".encode(), qos=qos, props=FORWARDED)
    msg = sub.receive(1)[0]
    assert msg.payload == "héllo".encode()
    assert _forwarded(msg) == FORWARDED


def test_properties_kept_on_retained_message(mq: Clients) -> None:
    """A retained message keeps its properties when sent to a later subscriber."""
    topic = mq.topic("props-r")
    mq.raw_connected(V5).publish(topic, b"r", qos=1, retain=True, props=FORWARDED)
    sub = mq.raw_connected(V5)
    sub.subscribe(topic, 1)
    msg = sub.receive(1)[0]
    assert msg.retain and _forwarded(msg) == FORWARDED


def test_properties_reach_paho(mq: Clients) -> None:
    """The same properties as a paho v5 client sees them."""
    topic = mq.topic("paho")
    sub = mq.paho(V5)
    sub.subscribe(topic, 1)
    pub = mq.paho(V5)
    pub.publish(
        topic,
        b"p",
        qos=1,
        props=props_for(
            PacketTypes.PUBLISH,
            ContentType="ct",
            ResponseTopic="rt",
            CorrelationData=b"cd",
            PayloadFormatIndicator=0,
            UserProperty=[("k", "v"), ("k", "w")],
        ),
    )
    p = sub.get().props
    assert (p.ContentType, p.ResponseTopic, p.CorrelationData) == ("ct", "rt", b"cd")
    assert p.UserProperty == [("k", "v"), ("k", "w")]


# ---- maximum packet size towards the client (5.0 section 3.1.2.11.4)


def test_client_maximum_packet_size(mq: Clients) -> None:
    """A message larger than the client's Maximum Packet Size is not sent to that
    client [MQTT-3.1.2-24] [MQTT-3.1.2-25]; other subscribers still get it."""
    topic, done = mq.topic("mps"), mq.topic("done")
    small = mq.raw_connected(V5, props={MAXIMUM_PACKET_SIZE: 200})
    small.subscribe([(topic, 1), (done, 0)])
    big = mq.raw_connected(V5)
    big.subscribe([(topic, 1), (done, 0)])
    pub = mq.raw_connected(V5)
    pub.publish(topic, b"L" * 500, qos=1)
    pub.publish(topic, b"small", qos=1, pid=2)
    pub.publish(done, b"end")
    assert [m.payload for m in small.collect_until(done)] == [b"small", b"end"]
    assert [len(m.payload) for m in big.collect_until(done)] == [500, 5, 3]
    assert small.is_open()


# ---- reason strings and properties from the client on acks


def test_client_acks_with_reason_strings(mq: Clients) -> None:
    """Acks from the client may carry a reason code below 0x80, a Reason String and
    User Properties (5.0 sections 3.4.2.2, 3.5.2.2, 3.7.2.2); the broker accepts them."""
    topic = mq.topic("rs")
    extra = {REASON_STRING: "all good", USER_PROPERTY: [("why", "test")]}
    sub = mq.raw_connected(V5)
    sub.subscribe(topic, 2)
    pub = mq.raw_connected(V5)
    pub.publish(topic, b"1", qos=1)
    m1 = sub.expect_publish()
    assert m1.pid is not None
    sub.send(puback(m1.pid, version=V5, rc=0, props=extra))
    pub.publish(topic, b"2", qos=2, pid=2)
    m2 = sub.expect_publish()
    assert m2.pid is not None
    sub.send(pubrec(m2.pid, version=V5, rc=0, props=extra))
    rel = sub.expect_ack(6)
    assert rel.pid == m2.pid
    sub.send(pubcomp(m2.pid, version=V5, rc=0, props=extra))
    assert sub.is_open()
    pub.publish(topic, b"3", qos=1, pid=3)
    assert sub.receive(1)[0].payload == b"3"
    sub.disconnect(rc=0, props={REASON_STRING: "bye"})


def test_publish_to_no_subscribers_v5_puback(mq: Clients) -> None:
    """PUBACK to a message nobody receives is 0x00 or 0x10 No matching subscribers
    (5.0 section 3.4.2.1)."""
    c = mq.raw_connected(V5)
    c.send(publish(mq.topic("nobody"), b"x", qos=1, pid=5, version=V5))
    ack = c.expect_ack(4)
    assert ack.pid == 5 and ack.rc in (0x00, 0x10)


# ---- receive maximum from the client's side (5.0 section 3.3.4)


def test_receive_maximum_exceeded_by_client(mq: Clients, limits_broker: Broker) -> None:
    """A client sending more unacknowledged QoS 2 PUBLISHes than the server's Receive
    Maximum gets DISCONNECT 0x93 Receive Maximum exceeded (5.0 section 3.3.4, after
    [MQTT-3.3.4-7]); within the limit all get PUBREC.

    Mosquitto 2.0.11 answers the extra PUBLISH with PUBREC 0x97 Quota exceeded and
    keeps the connection, so this fails against it; the spec wins."""
    c = mq.raw(V5, broker=limits_broker)
    ack = c.connect(mq.cid(), keepalive=20)
    limit = ack.props.get(RECEIVE_MAXIMUM, 65535)
    count = min(limit, 50)
    for pid in range(1, count + 1):
        c.send(publish(mq.topic("rx"), b"x", qos=2, pid=pid, version=V5))
    for _ in range(count):
        c.expect(PUBREC)
    if limit > 50:
        return  # no limit announced: nothing more to check within a sane time
    c.send(publish(mq.topic("rx"), b"x", qos=2, pid=count + 1, version=V5))
    packets = c.wait_closed()
    assert packets and packets[-1].ptype == DISCONNECT, packets
    assert parse_disconnect(packets[-1], V5).rc == RC_RECEIVE_MAX_EXCEEDED
