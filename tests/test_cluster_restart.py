"""kill -9 of the whole 4-worker broker and a restart, again and again (issue 12).

Whatever worker the restarted broker hands the subscriber's reconnect to, and
however early it comes (as soon as the port accepts), a persistent session gets
every QoS 1 message acknowledged before the kill, and a QoS 2 message whose
PUBREC the subscriber sent is never delivered again as new.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    PUBLISH,
    PUBREL,
    V5,
    V311,
    ConnectionClosed,
    parse_ack,
    parse_publish,
    persistent,
    puback,
    pubcomp,
)
from test_cluster_support import (
    WORKERS,
    connect_early,
    not_on,
    on,
    open_on,
    owner_pid,
    publish_stream,
    wait_serving,
)

pytestmark = pytest.mark.bwfast_only  # kills bwfast's process group

# A longer soak: BWFAST_RESTART_ROUNDS=16 BWFAST_RESTART_MESSAGES=2000 BWFAST_RESTART_BUDGET=600
ROUNDS = int(os.environ.get("BWFAST_RESTART_ROUNDS", "12"))
MESSAGES = int(os.environ.get("BWFAST_RESTART_MESSAGES", "300"))
BUDGET = float(os.environ.get("BWFAST_RESTART_BUDGET", "50"))  # seconds of rounds at most


@pytest.fixture
def workers() -> int:
    return WORKERS


def _receive_all(broker: Broker, cid: str, version: int, want: set[bytes],
                 timeout: float) -> list[bytes]:
    """Reconnect as soon as the port accepts and collect (acknowledging) until every
    wanted payload came or `timeout` passed."""
    from mqtt_helpers import RawClient

    c = RawClient(broker.host, broker.port, version=version)
    try:
        ack, early = connect_early(c, cid, **persistent(version))
        assert ack.rc == 0 and ack.session_present, ack
        got = [m.payload for m in early]
        deadline = time.monotonic() + timeout
        while not want <= set(got) and time.monotonic() < deadline:
            try:
                p = c.recv_packet(max(0.01, deadline - time.monotonic()))
            except (TimeoutError, ConnectionClosed):
                break
            if p.ptype == PUBREL:
                c.send(pubcomp(parse_ack(p, version).pid, version=version))
                continue
            assert p.ptype == PUBLISH, p
            m = parse_publish(p, version)
            got.append(m.payload)
            if m.qos == 1 and m.pid is not None:
                c.send(puback(m.pid, version=version))
        return got
    finally:
        c.close()


def test_kill9_restart_rounds_deliver_everything_acknowledged(
        make_broker: Callable[..., Broker], request: pytest.FixtureRequest) -> None:
    """Each round: a persistent subscriber (v3.1.1 and v5 in turn) is offline, 300
    QoS 1 messages are published and acknowledged, the process group gets SIGKILL,
    the broker restarts, and the subscriber reconnects the moment the port accepts:
    it gets all 300 within 15 s, in order. Many rounds, so that the reconnect lands
    on each worker, early and late in their start-up."""
    b = make_broker(sync=True, max_queued_messages=10_000)
    mq = Clients(b, request.node.nodeid)
    request.addfinalizer(mq.close_all)
    started = time.monotonic()
    failures: list[str] = []
    for r in range(ROUNDS):
        if time.monotonic() - started > BUDGET:
            break
        version = V5 if r % 2 else V311
        topic, cid = mq.topic(f"r{r}"), mq.cid(f"r{r}")
        sub = mq.raw_connected(version, cid, **persistent(version))
        sub.subscribe(topic, 1)
        sub.disconnect()
        pub = mq.raw_connected(V311)
        msgs = [(topic, b"%d" % i) for i in range(MESSAGES)]
        publish_stream(pub, msgs, 1)
        b.kill9()
        b.start()
        got = _receive_all(b, cid, version, {p for _, p in msgs}, 15.0)
        seqs = [int(p) for p in got]
        if set(seqs) != set(range(MESSAGES)) or seqs != sorted(set(seqs)):
            failures.append(f"round {r}: got {len(set(seqs))} of {MESSAGES} "
                            f"(first {seqs[:5]}, in order: {seqs == sorted(seqs)})")
    assert not failures, "; ".join(failures) + f"\n{b.log_tail(40)}"





def _worker0_pid(b: Broker) -> int:
    """Worker 0's pid, from the supervisor's log of the last start."""
    text = b.log_path.read_text(errors="replace")
    return int(re.findall(r"started worker-0 \(pid (\d+)\)", text)[-1])


def test_clean_start_with_expiry_keeps_the_owner_across_kill9(
        make_broker: Callable[..., Broker], request: pytest.FixtureRequest) -> None:
    """A v5 client connects twice with Clean Start and a Session Expiry Interval on
    the same worker (the second CONNECT ends the first session and starts a new
    persistent one there), subscribes, leaves; 50 QoS 1 messages are acknowledged;
    kill -9 and restart. Reconnecting first on a worker other than worker 0 finds
    the session and gets the 50 [MQTT-3.1.2-5]: the new session's worker is still
    written down as its holder (it was dropped with the old session, so after the
    restart worker 0 loaded the session and the reconnect's worker made an empty one)."""
    b = make_broker(sync=True)
    wait_serving(b)
    mq = Clients(b, request.node.nodeid)
    request.addfinalizer(mq.close_all)
    topic, cid = mq.topic("cs"), mq.cid("cs")
    kw = {"clean": True, "props": persistent(V5)["props"]}
    first = mq.raw(V5)
    pid = owner_pid(b, first.sock)
    assert first.connect(cid, **kw).rc == 0
    first.subscribe(topic, 1)
    first.disconnect()
    second, _ = open_on(mq, b, V5, on(pid), "the first connection's worker")
    ack = second.connect(cid, **kw)
    assert ack.rc == 0 and not ack.session_present
    second.subscribe(topic, 1)
    second.disconnect()
    pub = mq.raw_connected(V311)
    msgs = [(topic, b"%d" % i) for i in range(50)]
    publish_stream(pub, msgs, 1)
    b.kill9()
    b.start()
    wait_serving(b)
    again, _ = open_on(mq, b, V5, not_on(_worker0_pid(b)), "a worker other than worker 0")
    ack, early = connect_early(again, cid, **persistent(V5))
    assert ack.rc == 0 and ack.session_present, "the session is lost"
    got = [m.payload for m in early] + [m.payload for m in again.receive(50 - len(early))]
    assert got == [p for _, p in msgs]
