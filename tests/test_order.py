"""Message order per subscriber, topic and QoS across reconnects, offline queues and
session moves between workers (issue 12).

The rule checked ([MQTT-4.6.0-5], [MQTT-4.6.0-6]): per subscriber, per topic and
QoS level, messages from one publisher arrive in the order that publisher sent
them — whatever happens to the subscriber's connection meanwhile.
"""

from __future__ import annotations

import time

import pytest
from conftest import Clients
from mqtt_helpers import (
    DISCONNECT,
    PUBLISH,
    PUBREL,
    V5,
    V311,
    ConnectionClosed,
    Publish,
    disconnect,
    parse_publish,
    persistent,
    puback,
    pubcomp,
    pubrec,
)
from test_cluster_support import connect_early
from test_fast_lane import (
    Streamer,
    away,
    land,
    near,
    on_topic,
    place,
    read_until,
    runs,
    seq_at_least,
    seqs_of,
    streamers,
)

LONG = 30.0


def _collect(c, until: set[bytes], timeout: float = LONG) -> list[Publish]:  # noqa: ANN001
    """Receive and acknowledge PUBLISHes until every payload in `until` came."""
    got: list[Publish] = []
    deadline = time.monotonic() + timeout
    missing = set(until)
    while missing:
        try:
            p = c.recv_packet(max(0.01, deadline - time.monotonic()))
        except (TimeoutError, ConnectionClosed):
            raise AssertionError(f"still missing {sorted(missing)}; got "
                                 f"{[m.payload for m in got]}") from None
        if p.ptype == PUBREL:
            c.send(pubcomp(int.from_bytes(p.body[:2], "big"), version=c.version))
            continue
        assert p.ptype == PUBLISH, f"expected PUBLISH, got {p!r}"
        m = parse_publish(p, c.version)
        if m.qos == 1 and m.pid is not None:
            c.send(puback(m.pid, version=c.version))
        elif m.qos == 2 and m.pid is not None:
            c.send(pubrec(m.pid, version=c.version))
        got.append(m)
        missing.discard(m.payload)
    return got


@pytest.mark.parametrize("back", ["same", "other"])
def test_qos0_queued_offline_is_not_overtaken_after_reconnect(
        mq: Clients, version: int, back: str) -> None:
    """A persistent subscriber (QoS 1 subscription) is offline while 25 QoS 1
    messages and then QoS 0 `q0-A` are published; it reconnects and sends no
    PUBACK, so `q0-A` waits in its queue behind the full QoS 1 window (Receive
    Maximum 20). QoS 0 `q0-B` published now must not overtake `q0-A`: same
    publisher, topic and QoS [MQTT-4.6.0-6]. Once the subscriber acknowledges,
    everything comes, q0-A before q0-B. With 4 workers the subscriber comes back
    on its old worker or on another (its queued QoS 0 message moves with it)."""
    topic = mq.topic("det")
    cid = mq.cid("det")
    kw = persistent(version)
    sub, spid = land(mq, version, client_id=cid, **kw)
    sub.subscribe(topic, 1)
    sub.disconnect()
    time.sleep(0.2)  # the broker has seen it go
    pub = mq.raw_connected(V311)
    for i in range(25):
        pub.publish(topic, b"q1-%d" % i, qos=1, pid=i + 1)
    pub.publish(topic, b"q0-A")
    again, _ = place(mq, version, near(spid) if back == "same" else away(spid))
    ack, early = connect_early(again, cid, **kw)
    assert ack.rc == 0 and ack.session_present and not early, (ack, early)
    window = [again.expect_publish(LONG) for _ in range(20)]
    assert [m.payload for m in window] == [b"q1-%d" % i for i in range(20)]
    pub.publish(topic, b"q0-B")
    time.sleep(0.3)  # q0-B has been routed (and, before the fix, sent)
    for m in window:
        assert m.pid is not None
        again.send(puback(m.pid, version=version))
    got = _collect(again, {b"q0-A", b"q0-B"})
    payloads = [m.payload for m in got]
    assert payloads.index(b"q0-A") < payloads.index(b"q0-B"), (
        f"q0-B overtook q0-A queued before it: {payloads}")
    assert payloads == [b"q1-%d" % i for i in range(20, 25)] + [b"q0-A", b"q0-B"], payloads



# ---------------------------------------------------------------- session moves

MOVES = 10


@pytest.mark.parametrize("how", ["disconnect", "abort", "takeover"])
def test_session_moves_between_workers_keep_the_order(
        mq: Clients, version: int, streamers: list[Streamer], how: str) -> None:
    """A publisher streams QoS 0 on one topic while a persistent subscriber leaves
    (DISCONNECT, a dropped socket, or a takeover by its next connection
    [MQTT-3.1.4-3]) and comes back, 10 times, each time on another worker than the
    last (its session moves there while messages keep coming, through the old
    holder and directly). Every connection gets its messages strictly increasing
    [MQTT-4.6.0-6], and no message twice across connections (QoS 0: at most once)."""
    topic = mq.topic("mv")
    cid = mq.cid("mv")
    kw = persistent(version)
    pub, _ = land(mq, V311)
    c, pid = land(mq, version, client_id=cid, **kw)
    c.subscribe(topic, 0)
    st = Streamer(pub, topic, batch=5)
    streamers.append(st)
    per_conn: list[list[int]] = []
    marks = [0]  # per connection: the first message sent after its CONNACK
    for i in range(MOVES):
        got = read_until(c, seq_at_least(topic, st.mark() + 10), what=f"connection {i}")
        nxt, npid = place(mq, version, away(pid))
        if how == "disconnect":
            c.send(disconnect(version=version))
            got += [parse_publish(p, version) for p in c.wait_closed(LONG)]
        elif how == "abort":
            c.abort()
        ack, early = connect_early(nxt, cid, **kw)
        assert ack.rc == 0 and ack.session_present, ack
        assert not early, f"PUBLISH before CONNACK: {[m.payload for m in early]}"
        marks.append(st.mark())
        if how == "takeover":
            rest = c.wait_closed(LONG)
            if version == V5 and rest and rest[-1].ptype == DISCONNECT:
                rest = rest[:-1]
            got += [parse_publish(p, version) for p in rest]
        per_conn.append(seqs_of(got, topic))
        c, pid = nxt, npid
    total = st.stop(topic)  # the end marker on the same topic: in order after the rest
    per_conn.append(seqs_of(read_until(c, on_topic(topic, b"end"), what="the end marker"), topic))
    for i, seqs in enumerate(per_conn):
        assert seqs == sorted(set(seqs)), f"connection {i}: out of order: {runs(seqs)}"
    flat = [s for seqs in per_conn for s in seqs]
    assert flat == sorted(set(flat)), (
        "a message reached two connections or came back: "
        + "; ".join(runs(seqs) for seqs in per_conn))
    for i, seqs in enumerate(per_conn):
        # What was sent to a connection after its CONNACK and before it left reached it
        # (an aborted one may lose its last ones: they went into the dropped socket).
        last = total - 1 if i == len(per_conn) - 1 else seqs[-1]
        missing = sorted(set(range(marks[i], last + 1)) - set(seqs))
        assert not missing, f"connection {i} misses {runs(missing)}: got {runs(seqs)}"


__all__ = ["streamers"]
