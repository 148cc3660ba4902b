"""QoS 0/1/2 flows in both directions, packet ids, downgrade, DUP redelivery and the
in-flight window (3.1.1 sections 3.3-3.7 and 4.3-4.4; 5.0 sections 3.3-3.7, 4.3-4.4, 4.9)."""

from __future__ import annotations

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RECEIVE_MAXIMUM,
    V5,
    V311,
    Packet,
    mqtt_str,
    parse_ack,
    parse_publish,
    persistent,
    puback,
    pubcomp,
    publish,
    pubrec,
    pubrel,
)


def test_qos0_exact_bytes(mq: Clients, version: int) -> None:
    """A QoS 0 message is forwarded with no packet id and no DUP/RETAIN flags
    [MQTT-3.3.1-2] [MQTT-2.3.1-5]: fixed header 0x30, topic, (v5: property length), payload."""
    topic = mq.topic("q0")
    sub = mq.raw_connected(version)
    assert sub.subscribe(topic, 0).codes == [0]
    pub = mq.raw_connected(version)
    pub.publish(topic, b"zero", qos=0)
    p = sub.expect(PUBLISH)
    assert p.flags == 0
    assert p.body == mqtt_str(topic) + (b"\x00" if version == V5 else b"") + b"zero"


def test_qos1_publisher_gets_puback(mq: Clients, version: int) -> None:
    """The receiver of a QoS 1 PUBLISH answers PUBACK with the same packet id
    [MQTT-4.3.2-2]; the message reaches the subscriber."""
    topic = mq.topic("q1")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 1)
    pub = mq.raw_connected(version)
    pub.send(publish(topic, b"one", qos=1, pid=0x1234, version=version))
    p = pub.expect(PUBACK)
    if version == V311:
        assert p.body == b"\x12\x34"
    else:  # reason code 0 may be omitted (5.0 section 3.4.2.1)
        assert p.body in (b"\x12\x34", b"\x12\x34\x00", b"\x12\x34\x00\x00")
    msg = sub.expect_publish()
    assert (msg.topic, msg.payload, msg.qos, msg.dup) == (topic, b"one", 1, False)


def test_qos2_publisher_flow_and_exactly_once(mq: Clients, version: int) -> None:
    """QoS 2 inbound: PUBLISH -> PUBREC, PUBREL -> PUBCOMP with the same packet id
    [MQTT-4.3.3-2]; a DUP re-send before PUBREL is acknowledged again but the
    message is delivered exactly once (3.1.1 section 4.3.3)."""
    topic = mq.topic("q2")
    done = mq.topic("done")
    sub = mq.raw_connected(version)
    sub.subscribe([(topic, 2), (done, 0)])
    pub = mq.raw_connected(version)
    pub.send(publish(topic, b"two", qos=2, pid=77, version=version))
    rec = pub.expect_ack(PUBREC)
    assert rec.pid == 77 and rec.rc == 0
    pub.send(publish(topic, b"two", qos=2, pid=77, dup=True, version=version))
    rec = pub.expect_ack(PUBREC)
    assert rec.pid == 77 and rec.rc == 0
    pub.send(pubrel(77, version=version))
    comp = pub.expect_ack(PUBCOMP)
    assert comp.pid == 77 and comp.rc == 0
    pub.publish(done, b"end")
    got = sub.collect_until(done)
    assert [(m.topic, m.payload, m.qos) for m in got] == [(topic, b"two", 2), (done, b"end", 0)]


def test_qos1_subscriber_flow(mq: Clients, version: int) -> None:
    """QoS 1 outbound: PUBLISH with QoS 1, DUP 0 and a non-zero packet id; the
    subscriber's PUBACK completes it and nothing is re-sent [MQTT-4.3.2-1]."""
    topic = mq.topic("s1")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 1)
    pub = mq.paho(version)
    pub.publish(topic, b"a", qos=1)
    msg = sub.expect_publish()
    assert (msg.qos, msg.dup, msg.retain, msg.payload) == (1, False, False, b"a")
    assert msg.pid
    sub.send(puback(msg.pid, version=version))
    pub.publish(topic, b"b", qos=1)
    msg2 = sub.expect_publish()
    assert msg2.payload == b"b" and msg2.dup is False


def test_qos2_subscriber_flow(mq: Clients, version: int) -> None:
    """QoS 2 outbound: PUBLISH(QoS 2) -> our PUBREC -> server PUBREL (flags 0010,
    same id) -> our PUBCOMP [MQTT-4.3.3-1] [MQTT-3.6.1-1]."""
    topic = mq.topic("s2")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 2)
    pub = mq.paho(version)
    pub.publish(topic, b"x", qos=2)
    msg = sub.expect_publish()
    assert (msg.qos, msg.dup, msg.payload) == (2, False, b"x")
    assert msg.pid
    sub.send(pubrec(msg.pid, version=version))
    p = sub.expect(PUBREL)
    assert p.flags == 0x02
    assert p.body[:2] == msg.pid.to_bytes(2, "big")
    sub.send(pubcomp(msg.pid, version=version))
    pub.publish(topic, b"y", qos=2)
    assert sub.receive(1)[0].payload == b"y"
    assert sub.is_open()


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_qos_downgrade(mq: Clients, version: int, sub_qos: int, pub_qos: int) -> None:
    """Delivered QoS is the minimum of the published QoS and the granted QoS
    [MQTT-3.8.4-6] (3.1.1) / 5.0 section 3.8.4."""
    topic = mq.topic("dg")
    sub = mq.raw_connected(version)
    assert sub.subscribe(topic, sub_qos).codes == [sub_qos]
    pub = mq.raw_connected(version)
    pub.publish(topic, b"m", qos=pub_qos, pid=9)
    msg = sub.receive(1)[0]
    assert msg.qos == min(sub_qos, pub_qos)
    assert (msg.pid is None) == (msg.qos == 0)


def test_outgoing_packet_ids_distinct(mq: Clients, version: int) -> None:
    """Unacknowledged outgoing QoS 1 messages use distinct non-zero packet ids
    [MQTT-2.3.1-2]."""
    topic = mq.topic("ids")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 1)
    pub = mq.paho(version)
    for i in range(5):
        pub.publish(topic, str(i).encode(), qos=1)
    msgs = sub.receive(5, ack=False)
    assert [m.payload for m in msgs] == [b"0", b"1", b"2", b"3", b"4"]
    pids = [m.pid for m in msgs]
    assert len(set(pids)) == 5 and all(pids)


def test_qos1_order_preserved(mq: Clients, version: int) -> None:
    """Messages from one publisher on one topic arrive in publish order (4.6)."""
    topic = mq.topic("order")
    sub = mq.paho(version)
    sub.subscribe(topic, 1)
    pub = mq.paho(version)
    for i in range(50):
        pub.client.publish(topic, str(i), 1)
    pub.publish(topic, b"50", qos=1)
    got = [int(m.payload) for m in sub.get_n(51)]
    assert got == list(range(51))


@pytest.mark.parametrize("qos", [1, 2])
def test_dup_redelivery_on_reconnect(mq: Clients, version: int, qos: int) -> None:
    """An unacknowledged QoS 1/2 PUBLISH is re-sent on reconnect of a persistent
    session with DUP=1 and the original packet id [MQTT-4.4.0-1] [MQTT-3.3.1-1]."""
    topic = mq.topic("dup")
    cid = mq.cid("s")
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    sub.subscribe(topic, qos)
    pub = mq.paho(version)
    pub.publish(topic, b"redeliver me", qos=qos)
    first = sub.expect_publish()
    assert first.dup is False and first.qos == qos
    sub.close()  # no PUBACK / PUBREC
    sub = mq.raw(version)
    assert sub.connect(cid, **persistent(version)).session_present is True
    again = sub.expect_publish()
    assert (again.payload, again.qos, again.pid, again.dup) == (
        b"redeliver me",
        qos,
        first.pid,
        True,
    )
    sub.ack(again)
    pub.publish(topic, b"next", qos=qos)
    nxt = sub.receive(1)[0]
    assert nxt.payload == b"next" and nxt.dup is False


def test_pubrel_resent_on_reconnect(mq: Clients, version: int) -> None:
    """If PUBCOMP was not received, the server re-sends the PUBREL (not the PUBLISH)
    with the same packet id on reconnect [MQTT-4.4.0-1]."""
    topic = mq.topic("rel")
    cid = mq.cid("s")
    sub = mq.raw(version)
    sub.connect(cid, **persistent(version))
    sub.subscribe(topic, 2)
    pub = mq.paho(version)
    pub.publish(topic, b"q2", qos=2)
    msg = sub.expect_publish()
    assert msg.pid is not None
    sub.send(pubrec(msg.pid, version=version))
    assert sub.expect_ack(PUBREL).pid == msg.pid
    sub.close()  # no PUBCOMP
    sub = mq.raw(version)
    assert sub.connect(cid, **persistent(version)).session_present is True
    rel = sub.expect(PUBREL)
    assert rel.flags == 0x02 and rel.body[:2] == msg.pid.to_bytes(2, "big")
    sub.send(pubcomp(msg.pid, version=version))
    sub.expect_nothing(0.3)


@pytest.mark.parametrize("version_", [V311, V5], ids=["v311", "v5"])
def test_max_inflight_window(mq: Clients, limits_broker: Broker, version_: int) -> None:
    """With max_inflight = 3 at most 3 QoS 1 messages are unacknowledged at once;
    the rest follow one per PUBACK, in order (3.1.1 section 4.4 / 5.0 section 4.9)."""
    window = limits_broker.conf["max_inflight"]
    topic = mq.topic("win")
    sub = mq.raw_connected(version_, broker=limits_broker, keepalive=20)
    sub.subscribe(topic, 1)
    pub = mq.paho(version_, broker=limits_broker)
    total = window + 4
    for i in range(total):
        pub.publish(topic, str(i).encode(), qos=1)
    outstanding = sub.receive(window, ack=False)
    sub.expect_nothing(0.5)
    got = list(outstanding)
    while len(got) < total:
        oldest = outstanding.pop(0)
        assert oldest.pid is not None
        sub.send(puback(oldest.pid, version=version_))
        nxt = sub.expect_publish()
        outstanding.append(nxt)
        got.append(nxt)
        assert len(outstanding) <= window
    assert [int(m.payload) for m in got] == list(range(total))
    for m in outstanding:
        assert m.pid is not None
        sub.send(puback(m.pid, version=version_))
    sub.expect_nothing(0.2)


def test_client_receive_maximum(mq: Clients) -> None:
    """The server sends no more unacknowledged QoS 1 PUBLISHes than the client's
    Receive Maximum [MQTT-3.3.4-7]; the rest follow as acks arrive, in order."""
    topic = mq.topic("rm")
    sub = mq.raw_connected(V5, props={RECEIVE_MAXIMUM: 2})
    sub.subscribe(topic, 1)
    pub = mq.paho(V5)
    for i in range(6):
        pub.publish(topic, str(i).encode(), qos=1)
    pending = sub.receive(2, ack=False)
    sub.expect_nothing(0.5)
    got = list(pending)
    while len(got) < 6:
        sub.ack(pending.pop(0))
        nxt = sub.expect_publish()
        pending.append(nxt)
        got.append(nxt)
    assert [int(m.payload) for m in got] == list(range(6))


def test_receive_maximum_qos2_slot_held_until_pubcomp(mq: Clients) -> None:
    """A QoS 2 message holds its Receive Maximum slot until PUBCOMP: the send quota
    grows on PUBACK or PUBCOMP, not on a successful PUBREC (5.0 section 4.9,
    [MQTT-4.9.0-2]). Mixed QoS 1/2 traffic with Receive Maximum 2 must never have
    more than 2 PUBLISHes unacknowledged (PUBACK / PUBCOMP).

    Mosquitto 2.0.11 frees a QoS 2 slot at PUBREC and then sends one PUBLISH too
    many, so this test fails against it; the spec wins."""
    limit, total = 2, 8
    topic = mq.topic("rm2")
    sub = mq.raw_connected(V5, props={RECEIVE_MAXIMUM: limit})
    sub.subscribe(topic, 2)
    pub = mq.paho(V5)
    for i in range(total):
        pub.publish(topic, str(i).encode(), qos=2 if i % 2 == 0 else 1)
    outstanding: list[int] = []  # packet ids sent to us and not yet PUBACKed/PUBCOMPed
    got: list[bytes] = []

    def on_publish(p: Packet) -> None:
        msg = parse_publish(p, V5)
        assert len(outstanding) < limit, f"PUBLISH {msg.payload!r} exceeds Receive Maximum"
        assert msg.pid is not None
        outstanding.append(msg.pid)
        got.append(msg.payload)
        qos_of[msg.pid] = msg.qos

    qos_of: dict[int, int] = {}
    while len(got) < total or outstanding:
        while len(outstanding) < limit and len(got) < total:
            on_publish(sub.expect(PUBLISH))
        pid = outstanding[0]
        if qos_of[pid] == 1:
            sub.send(puback(pid, version=V5))
        else:
            sub.send(pubrec(pid, version=V5))
            while True:  # the PUBREL; any PUBLISH before it is checked against the quota
                p = sub.recv_packet()
                if p.ptype == PUBREL:
                    assert parse_ack(p, V5).pid == pid
                    break
                on_publish(p)
            sub.send(pubcomp(pid, version=V5))
        outstanding.pop(0)
    assert [int(x) for x in got] == list(range(total))
