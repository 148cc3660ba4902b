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
    PUBLISH,
    PUBREL,
    V311,
    ConnectionClosed,
    Publish,
    parse_publish,
    persistent,
    puback,
    pubcomp,
    pubrec,
)
from test_cluster_support import connect_early
from test_fast_lane import away, land, near, place

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

