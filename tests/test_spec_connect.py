"""CONNECT / CONNACK (MQTT 3.1.1 section 3.1-3.2, MQTT 5.0 section 3.1-3.2)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    ASSIGNED_CLIENT_ID,
    CONNACK,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    MAXIMUM_QOS,
    RC_UNSUPPORTED_PROTOCOL,
    RECEIVE_MAXIMUM,
    RETAIN_AVAILABLE,
    SERVER_KEEP_ALIVE,
    SESSION_EXPIRY,
    TOPIC_ALIAS_MAXIMUM,
    V5,
    V31,
    V311,
    connect,
    parse_connack,
    parse_disconnect,
    publish,
    pubrel,
)


def test_connect_accepted(mq: Clients, version: int) -> None:
    """A well-formed CONNECT gets CONNACK 0 and no session for clean start [MQTT-3.2.2-1]."""
    c = mq.raw(version)
    ack = c.connect(mq.cid(), clean=True)
    assert ack.rc == 0
    assert ack.session_present is False
    assert c.is_open()


def test_session_present_v311(mq: Clients) -> None:
    """Session Present is 0 for a new or clean session, 1 when a stored one resumes
    [MQTT-3.2.2-1] [MQTT-3.2.2-2] [MQTT-3.2.2-3]."""
    cid = mq.cid("p")
    c = mq.raw(V311)
    assert c.connect(cid, clean=False).session_present is False
    c.disconnect()
    c = mq.raw(V311)
    assert c.connect(cid, clean=False).session_present is True
    c.disconnect()
    c = mq.raw(V311)
    assert c.connect(cid, clean=True).session_present is False
    c.disconnect()
    # clean=1 discarded the session, so a persistent connect starts afresh
    c = mq.raw(V311)
    assert c.connect(cid, clean=False).session_present is False
    c.disconnect()
    c = mq.raw(V311)
    assert c.connect(cid, clean=True).session_present is False
    c.disconnect()


def test_session_present_v5(mq: Clients) -> None:
    """v5: Clean Start 0 resumes a session kept by Session Expiry > 0; expiry 0 ends it
    at disconnect [MQTT-3.1.2-23] [MQTT-3.2.2-2]."""
    cid = mq.cid("p")
    c = mq.raw(V5)
    assert c.connect(cid, clean=False, props={SESSION_EXPIRY: 60}).session_present is False
    c.disconnect()
    c = mq.raw(V5)
    assert c.connect(cid, clean=False, props={SESSION_EXPIRY: 0}).session_present is True
    c.disconnect()  # expiry 0 now: the session ends with this connection
    c = mq.raw(V5)
    assert c.connect(cid, clean=False, props={SESSION_EXPIRY: 60}).session_present is False
    c.disconnect()
    c = mq.raw(V5)
    assert c.connect(cid, clean=True, props={SESSION_EXPIRY: 60}).session_present is False
    c.disconnect()


def test_zero_length_client_id_clean_v311(mq: Clients) -> None:
    """3.1.1: an empty client id with CleanSession=1 is accepted [MQTT-3.1.3-6]."""
    c = mq.raw(V311)
    ack = c.connect("", clean=True)
    assert ack.rc == 0 and ack.session_present is False
    assert c.is_open()


def test_zero_length_client_id_persistent_v311_rejected(mq: Clients) -> None:
    """3.1.1: an empty client id with CleanSession=0 gets CONNACK 0x02 and the
    connection is closed [MQTT-3.1.3-8]."""
    c = mq.raw(V311)
    c.send(connect("", clean=False))
    packets = c.wait_closed()
    assert packets, "expected a CONNACK before close"
    ack = parse_connack(packets[0], V311)
    assert ack.rc == 0x02
    assert ack.session_present is False


def test_zero_length_client_id_v5_assigned(mq: Clients) -> None:
    """v5: an empty client id is accepted and the CONNACK carries an Assigned Client
    Identifier [MQTT-3.1.3-7] [MQTT-3.2.2-16]."""
    c = mq.raw(V5)
    ack = c.connect("", clean=True)
    assert ack.rc == 0
    assigned = ack.props.get(ASSIGNED_CLIENT_ID)
    assert isinstance(assigned, str) and assigned, f"no Assigned Client Identifier: {ack.props}"
    other = mq.raw(V5)
    ack2 = other.connect("", clean=True)
    assert ack2.props.get(ASSIGNED_CLIENT_ID) not in (None, assigned), "assigned ids must be unique"
    assert c.is_open() and other.is_open()


@pytest.mark.parametrize("level", [2, 6, 7])
def test_unsupported_protocol_level(mq: Clients, level: int) -> None:
    """An unknown protocol level gets CONNACK 0x01 (3.1.1) or 0x84 (5.0) and then the
    connection is closed [MQTT-3.1.2-2]."""
    c = mq.raw(V311)
    c.send(connect(mq.cid(), version=level, protocol_name=b"MQTT"))
    packets = c.wait_closed()
    assert packets and packets[0].ptype == CONNACK, f"expected CONNACK before close: {packets}"
    assert packets[0].body[1] in (0x01, RC_UNSUPPORTED_PROTOCOL), packets[0]
    assert len(packets) == 1


def test_wrong_protocol_name_closes(mq: Clients) -> None:
    """A protocol name other than "MQTT" (or "MQIsdp" for 3.1) may be refused with
    0x01/0x84 but the connection must not be accepted [MQTT-3.1.2-1]."""
    c = mq.raw(V311)
    c.send(connect(mq.cid(), version=V311, protocol_name=b"MQTX"))
    packets = c.wait_closed()
    for p in packets:
        assert p.ptype == CONNACK and p.body[1] != 0, f"accepted a bad protocol name: {p}"


def test_connect_reserved_flag_closes(mq: Clients, version: int) -> None:
    """The reserved CONNECT flag must be 0, otherwise the server disconnects [MQTT-3.1.2-3]."""
    c = mq.raw(version)
    c.send(connect(mq.cid(), version=version, reserved_flag=True))
    packets = c.wait_closed()
    for p in packets:
        assert p.ptype == CONNACK and p.body[1] != 0, f"accepted a reserved flag: {p}"


def test_mqtt31_client_works(mq: Clients) -> None:
    """MQTT 3.1 ("MQIsdp", level 3) clients connect, subscribe and receive."""
    sub = mq.paho(V31)
    topic = mq.topic("v31")
    assert sub.subscribe(topic, 1) == [1]
    pub = mq.paho(V31)
    pub.publish(topic, b"old protocol", qos=1)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"old protocol", 1)


def test_mqtt31_raw_connack(mq: Clients) -> None:
    """A raw 3.1 CONNECT gets the two-byte CONNACK with return code 0."""
    c = mq.raw(V31)
    c.send(connect(mq.cid(), version=V31))
    p = c.expect(CONNACK)
    assert p.body == b"\x00\x00"


def test_connack_v311_is_two_bytes(mq: Clients) -> None:
    """3.1.1 CONNACK is exactly 0x20 0x02 flags rc."""
    c = mq.raw(V311)
    c.send(connect(mq.cid()))
    p = c.expect(CONNACK)
    assert (p.flags, p.body) == (0, b"\x00\x00")


def test_connack_v5_properties_default(mq: Clients, broker: Broker) -> None:
    """v5 CONNACK properties describe the server: Topic Alias Maximum as configured,
    Retain Available absent or 1, Receive Maximum absent or > 0, Maximum QoS absent
    or 2 (the broker supports QoS 2) [MQTT-3.2.2-9] [MQTT-3.2.2-10]."""
    c = mq.raw(V5)
    ack = c.connect(mq.cid())
    assert ack.rc == 0
    assert ack.props.get(TOPIC_ALIAS_MAXIMUM) == broker.conf["topic_alias_maximum"]
    assert ack.props.get(RETAIN_AVAILABLE, 1) == 1
    assert ack.props.get(RECEIVE_MAXIMUM, 65535) > 0
    assert ack.props.get(MAXIMUM_QOS, 2) == 2
    assert MAXIMUM_PACKET_SIZE not in ack.props or ack.props[MAXIMUM_PACKET_SIZE] >= 2048
    assert SERVER_KEEP_ALIVE not in ack.props or ack.props[SERVER_KEEP_ALIVE] == 60


def test_connack_v5_properties_limits(mq: Clients, limits_broker: Broker) -> None:
    """With max_packet_size and topic_alias_maximum configured, CONNACK says so
    (5.0 sections 3.2.2.3.6 Maximum Packet Size, 3.2.2.3.8 Topic Alias Maximum)."""
    c = mq.raw(V5, broker=limits_broker)
    ack = c.connect(mq.cid(), keepalive=10)
    assert ack.rc == 0
    assert ack.props.get(TOPIC_ALIAS_MAXIMUM) == limits_broker.conf["topic_alias_maximum"]
    assert ack.props.get(MAXIMUM_PACKET_SIZE) == limits_broker.conf["max_packet_size"]
    # the client asked for less than max_keepalive: no override, or the same value
    assert ack.props.get(SERVER_KEEP_ALIVE, 10) == 10


def test_connack_v5_server_keep_alive(mq: Clients, limits_broker: Broker) -> None:
    """A v5 client asking for more than max_keepalive is told the Server Keep Alive
    and must use it [MQTT-3.2.2-21]."""
    c = mq.raw(V5, broker=limits_broker)
    ack = c.connect(mq.cid(), keepalive=100)
    assert ack.rc == 0
    assert ack.props.get(SERVER_KEEP_ALIVE) == limits_broker.conf["max_keepalive"]


def test_connack_v5_retain_unavailable(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """retain_available = false is announced as Retain Available 0 (5.0 section
    3.2.2.3.5); a retained PUBLISH then gets DISCONNECT 0x9A Retain not supported
    [MQTT-3.2.2-14]."""
    b = make_broker(retain_available=False)
    c = mq.raw(V5, broker=b)
    ack = c.connect(mq.cid())
    assert ack.props.get(RETAIN_AVAILABLE) == 0
    c.send(publish(mq.topic("r"), b"x", qos=1, retain=True, pid=1, version=V5))
    packets = c.wait_closed()
    assert packets and packets[-1].ptype == DISCONNECT, packets
    assert parse_disconnect(packets[-1], V5).rc == 0x9A


def test_username_password_accepted_without_auth(mq: Clients, version: int) -> None:
    """With authentication off, a CONNECT carrying a username and password is accepted."""
    c = mq.raw(version)
    ack = c.connect(mq.cid(), username="someone", password=b"secret")
    assert ack.rc == 0
    assert c.is_open()


def test_receive_maximum_is_honoured_inbound(mq: Clients) -> None:
    """The server accepts as many unfinished incoming QoS 2 messages as its Receive
    Maximum allows: each gets a PUBREC [MQTT-3.3.4-9]."""
    c = mq.raw(V5)
    ack = c.connect(mq.cid())
    limit = min(ack.props.get(RECEIVE_MAXIMUM, 65535), 10)
    topic = mq.topic("rm")
    for pid in range(1, limit + 1):
        c.send(publish(topic, b"x", qos=2, pid=pid, version=V5))
    seen = sorted(c.expect_ack(5).pid for _ in range(limit))
    assert seen == list(range(1, limit + 1))
    for pid in range(1, limit + 1):
        c.send(pubrel(pid, version=V5))
    assert sorted(c.expect_ack(7).pid for _ in range(limit)) == list(range(1, limit + 1))


def test_zero_length_client_id_disallowed(make_broker: Callable[..., Broker], mq: Clients) -> None:
    """allow_zero_length_clientid = false: an empty id is refused, with 0x02 in 3.1.1
    [MQTT-3.1.3-9] and a failure reason code in 5.0 [MQTT-3.1.3-8]."""
    b = make_broker(allow_zero_length_clientid=False)
    c = mq.raw(V311, broker=b)
    c.send(connect("", clean=True))
    packets = c.wait_closed()
    assert packets and parse_connack(packets[0], V311).rc == 0x02
    c5 = mq.raw(V5, broker=b)
    c5.send(connect("", clean=True, version=V5))
    packets = c5.wait_closed()
    # v5 suggests 0x85 Client Identifier not valid but any failure code is allowed
    # [MQTT-3.1.3-8]; Mosquitto sends 0x80.
    assert packets and parse_connack(packets[0], V5).rc >= 0x80
