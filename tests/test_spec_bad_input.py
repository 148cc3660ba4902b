"""Malformed packets and protocol errors close only the offending connection, with a
v5 DISCONNECT reason code where the spec asks for one (3.1.1 section 4.8;
5.0 sections 4.13 and 1.5), while an already connected client keeps working."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    CONNACK,
    CONNECT,
    DISCONNECT,
    PUBLISH,
    PUBREL,
    RC_MALFORMED,
    RC_PACKET_TOO_LARGE,
    RC_PROTOCOL_ERROR,
    RC_TOPIC_NAME_INVALID,
    SUBSCRIBE,
    UNSUBSCRIBE,
    V5,
    V311,
    Packet,
    RawClient,
    connect,
    encode_properties,
    mqtt_str,
    packet,
    parse_disconnect,
    pingreq,
    publish,
    subscribe,
    u16,
    varint,
)

Builder = Callable[[int], bytes]


def _raw_publish(flags: int, topic: bytes, version: int, *, pid: bool = True) -> bytes:
    body = mqtt_str(topic) + (u16(1) if pid else b"") + (b"\x00" if version == V5 else b"")
    return packet(PUBLISH, flags, body + b"payload")


def _connect_truncated(version: int) -> bytes:
    """A CONNECT whose client id string runs past the end of the packet."""
    full = connect("truncated", version=version)
    return packet(CONNECT, 0, full[2:-3])  # short packet: 2-byte fixed header


def _props(version: int) -> bytes:
    return encode_properties(None) if version == V5 else b""


# (id, bytes sent after a successful CONNECT, v5 DISCONNECT reason codes accepted)
AFTER_CONNECT: list[tuple[str, Builder, set[int]]] = [
    # Remaining Length uses at most 4 bytes (3.1.1 2.2.3 / 5.0 1.5.5)
    (
        "remaining_length_5_bytes",
        lambda v: b"\x30\xff\xff\xff\xff\x01" + b"\x00" * 16,
        {RC_MALFORMED},
    ),
    # QoS 3 is malformed [MQTT-3.3.1-4]
    ("publish_qos3", lambda v: _raw_publish(0x06, b"a/b", v), {RC_MALFORMED}),
    # no wildcards in a topic name [MQTT-3.3.2-2]; the spec names no single code
    (
        "publish_wildcard_plus",
        lambda v: publish("a/+/b", b"x", version=v),
        {RC_TOPIC_NAME_INVALID, RC_PROTOCOL_ERROR, RC_MALFORMED},
    ),
    (
        "publish_wildcard_hash",
        lambda v: publish("a/#", b"x", qos=1, pid=1, version=v),
        {RC_TOPIC_NAME_INVALID, RC_PROTOCOL_ERROR, RC_MALFORMED},
    ),
    # a topic name is at least one character [MQTT-4.7.3-1]; in 5.0 an empty one
    # without a Topic Alias is a Protocol Error (section 3.3.2.3.4)
    (
        "publish_empty_topic",
        lambda v: publish("", b"x", version=v),
        {RC_PROTOCOL_ERROR, RC_MALFORMED},
    ),
    # ill-formed UTF-8, U+0000 and surrogates are malformed [MQTT-1.5.4-1] [MQTT-1.5.4-2]
    ("topic_invalid_utf8", lambda v: publish(b"a/\xff\xfe", b"x", version=v), {RC_MALFORMED}),
    ("topic_surrogate", lambda v: publish(b"a/\xed\xa0\x80", b"x", version=v), {RC_MALFORMED}),
    ("topic_null_char", lambda v: publish(b"a/\x00b", b"x", version=v), {RC_MALFORMED}),
    # reserved fixed-header flags [MQTT-3.8.1-1] [MQTT-3.10.1-1] [MQTT-3.6.1-1]
    ("subscribe_flags_0", lambda v: subscribe(1, [("a/b", 0)], version=v, flags=0), {RC_MALFORMED}),
    (
        "unsubscribe_flags_0",
        lambda v: packet(UNSUBSCRIBE, 0, u16(1) + _props(v) + mqtt_str("a/b")),
        {RC_MALFORMED},
    ),
    ("pubrel_flags_0", lambda v: packet(PUBREL, 0, u16(1)), {RC_MALFORMED}),
    ("pingreq_flags_1", lambda v: b"\xc1\x00", {RC_MALFORMED}),
    # subscription QoS 3 [MQTT-3.8.3-4]; SUBSCRIBE without filters [MQTT-3.8.3-3]
    ("subscribe_qos3", lambda v: subscribe(1, [("a/b", 3)], version=v), {RC_MALFORMED}),
    (
        "subscribe_no_filters",
        lambda v: packet(SUBSCRIBE, 2, u16(1) + _props(v)),
        {RC_MALFORMED, RC_PROTOCOL_ERROR},
    ),
    (
        "unsubscribe_no_filters",
        lambda v: packet(UNSUBSCRIBE, 2, u16(1) + _props(v)),
        {RC_MALFORMED, RC_PROTOCOL_ERROR},
    ),
    # fields running past the Remaining Length
    ("publish_truncated", lambda v: b"\x30\x01\x00", {RC_MALFORMED}),
    ("topic_longer_than_packet", lambda v: b"\x30\x04\x00\x10ab", {RC_MALFORMED}),
    # QoS > 0 PUBLISH with packet id 0 [MQTT-2.3.1-1]
    (
        "publish_packet_id_0",
        lambda v: publish("a/b", b"x", qos=1, pid=0, version=v),
        {RC_MALFORMED, RC_PROTOCOL_ERROR},
    ),
    # a second CONNECT is a protocol error [MQTT-3.1.0-2]
    ("second_connect", lambda v: connect("again", version=v), {RC_PROTOCOL_ERROR}),
    # reserved packet type 0
    ("packet_type_0", lambda v: b"\x00\x00", {RC_MALFORMED, RC_PROTOCOL_ERROR}),
]


def _check_witness(mq: Clients, witness: RawClient, topic: str, version: int) -> None:
    """The already connected client still publishes and receives."""
    assert witness.is_open(), "the bad client took the witness connection down"
    mq.raw_connected(version).publish(topic, b"still serving", qos=1)
    assert witness.receive(1)[0].payload == b"still serving"


@pytest.fixture
def witness(mq: Clients) -> tuple[RawClient, str]:
    topic = mq.topic("witness")
    w = mq.raw_connected(V311)
    w.subscribe(topic, 1)
    return w, topic


@pytest.mark.parametrize(
    ("data", "v5_codes"), [(c[1], c[2]) for c in AFTER_CONNECT], ids=[c[0] for c in AFTER_CONNECT]
)
def test_bad_packet_closes_only_that_connection(
    mq: Clients,
    version: int,
    data: Builder,
    v5_codes: set[int],
    witness: tuple[RawClient, str],
) -> None:
    """The broker closes the offending connection (3.1.1 section 4.8), a v5 one after
    a DISCONNECT with the matching reason code ([MQTT-4.13.1-1], 5.0 section 4.13);
    everyone else is served as before.

    Against Mosquitto 2.0.11: it ignores PINGREQ's reserved flags (keeps the
    connection, [MQTT-2.2.2-2] says close) and, for v5, closes without the
    DISCONNECT that 5.0 section 4.13 says it SHOULD send for a 5-byte remaining
    length, a PUBREL with flags 0 and a second CONNECT; those cases fail there."""
    bad = mq.raw_connected(version)
    bad.send(data(version))
    packets = bad.wait_closed()
    if version == V5:
        assert packets and packets[-1].ptype == DISCONNECT, f"no DISCONNECT: {packets}"
        rc = parse_disconnect(packets[-1], V5).rc
        assert rc in v5_codes, f"DISCONNECT reason {rc:#x}, expected one of {v5_codes}"
    else:
        assert packets == [], f"3.1.1 broker answered a bad packet: {packets}"
    _check_witness(mq, *witness, version)


# bytes sent instead of / as the first packet
BEFORE_CONNECT: list[tuple[str, Builder]] = [
    ("publish_first", lambda v: publish("a/b", b"x", version=v)),
    ("subscribe_first", lambda v: subscribe(1, [("a/b", 0)], version=v)),
    ("pingreq_first", lambda v: pingreq()),
    ("garbage", lambda v: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("connect_will_qos3", lambda v: connect("wq3", version=v, will_topic="w", will_qos=3)),
    ("connect_reserved_flag", lambda v: connect("rf", version=v, reserved_flag=True)),
    ("connect_client_id_invalid_utf8", lambda v: connect(b"\xff\xfe", version=v)),
    ("connect_truncated", lambda v: _connect_truncated(v)),
]


@pytest.mark.parametrize("data", [c[1] for c in BEFORE_CONNECT], ids=[c[0] for c in BEFORE_CONNECT])
def test_bad_first_packet_closes(
    mq: Clients, version: int, data: Builder, witness: tuple[RawClient, str]
) -> None:
    """The first packet must be a valid CONNECT [MQTT-3.1.0-1] [MQTT-3.1.4-1]; otherwise
    the connection is closed, at most after a CONNACK refusing it."""
    bad = mq.raw(version)
    bad.send(data(version))
    packets = bad.wait_closed()
    for p in packets:
        assert p.ptype == CONNACK and p.body[1] != 0, f"bad first packet accepted: {packets}"
    _check_witness(mq, *witness, version)


def _too_large(version: int, size: int) -> bytes:
    return publish("big/topic", b"B" * size, qos=0, version=version)


def test_packet_over_max_packet_size(mq: Clients, limits_broker: Broker, version: int) -> None:
    """A packet larger than max_packet_size closes the connection, for v5 after
    DISCONNECT 0x95 Packet too large [MQTT-3.2.2-15]; others keep working."""
    limit = limits_broker.conf["max_packet_size"]
    topic = mq.topic("w")
    w = mq.raw_connected(V311, broker=limits_broker, keepalive=20)
    w.subscribe(topic, 1)
    bad = mq.raw_connected(version, broker=limits_broker, keepalive=20)
    bad.send(_too_large(version, limit + 100))
    packets = bad.wait_closed()
    _assert_too_large(packets, version)
    assert w.is_open()
    mq.raw_connected(version, broker=limits_broker, keepalive=20).publish(topic, b"ok", qos=1)
    assert w.receive(1)[0].payload == b"ok"


def test_declared_length_over_max_packet_size(
    mq: Clients, limits_broker: Broker, version: int
) -> None:
    """The broker rejects a packet by its declared Remaining Length, without waiting
    for (or buffering) the whole body."""
    bad = mq.raw_connected(version, broker=limits_broker, keepalive=20)
    bad.send(b"\x30" + varint(50_000_000) + b"\x00\x03a/b")
    packets = bad.wait_closed()
    _assert_too_large(packets, version)


def _assert_too_large(packets: list[Packet], version: int) -> None:
    if version == V5:
        assert packets and packets[-1].ptype == DISCONNECT, f"no DISCONNECT: {packets}"
        assert parse_disconnect(packets[-1], V5).rc == RC_PACKET_TOO_LARGE
    else:
        assert packets == []


def test_packet_at_max_packet_size_accepted(mq: Clients, limits_broker: Broker) -> None:
    """A packet of exactly max_packet_size bytes is fine."""
    limit = limits_broker.conf["max_packet_size"]
    topic = mq.topic("fit")
    sub = mq.raw_connected(V5, broker=limits_broker, keepalive=20)
    sub.subscribe(topic, 0)
    overhead = len(publish(topic, b"", qos=1, pid=1, version=V5))
    payload_len = limit - overhead
    # Remaining Length grows by a byte past 127 and 16383: fix the size exactly
    while len(publish(topic, b"x" * payload_len, qos=1, pid=1, version=V5)) > limit:
        payload_len -= 1
    pub = mq.raw_connected(V5, broker=limits_broker, keepalive=20)
    pub.publish(topic, b"x" * payload_len, qos=1)
    assert len(sub.expect_publish().payload) == payload_len


def test_many_bad_clients_then_broker_still_serves(mq: Clients, version: int) -> None:
    """A burst of bad connections leaves the broker healthy."""
    for i, (_, data, _) in enumerate(AFTER_CONNECT * 2):
        c = mq.raw(version)
        c.send(connect(mq.cid(f"b{i}"), version=version) + data(version))
    topic = mq.topic("after")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 1)
    mq.raw_connected(version).publish(topic, b"healthy", qos=1)
    assert sub.receive(1)[0].payload == b"healthy"


def test_v311_packet_split_across_reads(mq: Clients) -> None:
    """A valid packet arriving one byte at a time is assembled correctly."""
    topic = mq.topic("split")
    sub = mq.raw_connected(V311)
    sub.subscribe(topic, 1)
    pub = mq.raw_connected(V311)
    data = publish(topic, b"slowly", qos=1, pid=3)
    for b in data:
        pub.send(bytes([b]))
        time.sleep(0.002)
    assert pub.expect_ack(4).pid == 3
    assert sub.receive(1)[0].payload == b"slowly"
