"""QoS 2 exactly once and QoS 1/2 nothing lost across kill -9 (issue 12).

Once a subscriber has sent PUBREC for a message it never receives that message
again as a new one: the broker may resend it only with the same packet id while
the subscriber still waits for its PUBREL ([MQTT-4.3.3-9..-11], Method B). A
message the publisher's PUBREC acknowledged reaches the persistent subscriber.
Checked with a kill -9 of the whole broker (supervisor and workers) and, with
4 workers, of the subscriber's worker while a publisher on another one streams.
"""

from __future__ import annotations

import os
import signal
import threading
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
    RawClient,
    parse_ack,
    parse_publish,
    persistent,
    pubcomp,
    pubrec,
)
from test_cluster_support import (
    WORKERS,
    not_on,
    open_on,
    owner_pid,
    publish_stream,
    reconnect,
    worker_pids,
)

pytestmark = pytest.mark.bwfast_only  # kills bwfast's processes

MESSAGES = 1500


@pytest.fixture(params=[1, WORKERS], ids=lambda w: f"workers{w}")
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


class Receiver:
    """A QoS 2 subscriber with its own session state, on a thread: PUBREC for each
    new PUBLISH, PUBCOMP for each PUBREL; a PUBLISH whose packet id still waits for
    its PUBREL is a resend, not a new message. Reconnects (persistent session) when
    the connection breaks."""

    def __init__(self, broker: Broker, c: RawClient, cid: str) -> None:
        self.broker, self.c, self.cid = broker, c, cid
        self.version = c.version
        self.waiting: dict[int, bytes] = {}  # packet id -> payload: PUBREC sent, no PUBREL yet
        self.new: list[bytes] = []            # every PUBLISH taken as a new message
        self.recd: set[bytes] = set()         # payloads we sent PUBREC for
        self.twice: list[bytes] = []          # PUBREC'd once, then came again as new
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guard, daemon=True)
        self._thread.start()

    def _guard(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def _run(self) -> None:
        v = self.version
        while not self._stop.is_set():
            try:
                p = self.c.recv_packet(0.05)
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.c.close()
                self.c, _, early = reconnect(self.broker, v, self.cid, timeout=20)
                assert not early, "PUBLISH before CONNACK"
                continue
            if p.ptype == PUBREL:
                pid = parse_ack(p, v).pid
                self.waiting.pop(pid, None)
                self.c.send(pubcomp(pid, version=v))
                continue
            assert p.ptype == PUBLISH, f"unexpected {p!r}"
            m = parse_publish(p, v)
            assert m.qos == 2 and m.pid is not None, m
            if m.pid in self.waiting:
                assert self.waiting[m.pid] == m.payload, (
                    f"packet id {m.pid} reused for {m.payload!r} before its PUBREL")
            else:
                if m.payload in self.recd:
                    self.twice.append(m.payload)
                self.recd.add(m.payload)
                self.new.append(m.payload)
                self.waiting[m.pid] = m.payload
            self.c.send(pubrec(m.pid, version=v))

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.recd) < n and time.monotonic() < deadline and self.error is None:
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(25)
        assert not self._thread.is_alive(), "receiver hung"
        if self.error is not None:
            raise AssertionError(f"receiver failed: {self.error!r}")
        self.c.close()


def _check(rx: Receiver, want: set[bytes]) -> None:
    assert not rx.twice, (f"{len(rx.twice)} messages delivered again as new after PUBREC, "
                          f"e.g. {sorted(rx.twice)[:5]}")
    missing = sorted(want - rx.recd, key=lambda p: int(p))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:8]}"


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_qos2_once_and_nothing_lost_across_broker_kill9(
        make_broker: Callable[..., Broker], request: pytest.FixtureRequest, version: int) -> None:
    """1,500 QoS 2 messages wait in an offline persistent session; the subscriber
    connects and takes them; three times while they stream to it the whole broker
    gets SIGKILL and restarts, and the subscriber comes back. Each message arrives,
    and none again as new once PUBREC was sent for it."""
    b = make_broker(sync=True, max_queued_messages=10_000)
    mq = Clients(b, request.node.nodeid)
    request.addfinalizer(mq.close_all)
    topic, cid = mq.topic("q2"), mq.cid("q2")
    sub = mq.raw_connected(version, cid, **persistent(version))
    sub.subscribe(topic, 2)
    sub.disconnect()
    pub = mq.raw_connected(V311)
    msgs = [(topic, b"%d" % i) for i in range(MESSAGES)]
    publish_stream(pub, msgs, 2)
    pub.disconnect()
    c = mq.raw(version)
    assert c.connect(cid, **persistent(version)).session_present
    rx = Receiver(b, c, cid)
    try:
        for k in range(3):
            rx.wait_for((k + 1) * MESSAGES // 5, 30)
            b.kill9()
            b.start()
        rx.wait_for(MESSAGES, 60)
        time.sleep(0.5)  # any late repeat
    finally:
        rx.stop()
    _check(rx, {p for _, p in msgs})


@pytest.mark.parametrize("workers", [WORKERS], ids=[f"workers{WORKERS}"])  # a worker of several
@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_qos2_once_and_nothing_lost_across_worker_kill9(
        make_broker: Callable[..., Broker], request: pytest.FixtureRequest, workers: int,
        version: int) -> None:
    """A publisher on one worker streams QoS 2 to a persistent subscriber held by
    another; that worker gets SIGKILL mid-stream, then the subscriber's new one unless
    it is the publisher's (the supervisor restarts it,
    its sessions are served from LMDB meanwhile, the subscriber reconnects wherever
    it lands). Every message the publisher's PUBREC acknowledged arrives, none
    again as new once the subscriber sent PUBREC."""
    b = make_broker(sync=True, max_queued_messages=10_000)
    mq = Clients(b, request.node.nodeid)
    request.addfinalizer(mq.close_all)
    topic, cid = mq.topic("w2"), mq.cid("w2")
    c = mq.raw(version)
    spid = owner_pid(b, c.sock)
    assert c.connect(cid, **persistent(version)).rc == 0
    c.subscribe(topic, 2)
    pub, ppid = open_on(mq, b, V311, not_on(spid), "a worker other than the subscriber's")
    assert pub.connect(mq.cid("w2p")).rc == 0
    rx = Receiver(b, c, cid)
    msgs = [(topic, b"%d" % i) for i in range(MESSAGES)]
    done = threading.Event()
    failure: list[BaseException] = []

    def stream() -> None:
        try:
            publish_stream(pub, msgs, 2, timeout=90)
        except BaseException as e:  # noqa: BLE001 - reported below
            failure.append(e)
        finally:
            done.set()

    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        for k in range(2):
            rx.wait_for((k + 1) * MESSAGES // 4, 30)
            victim = spid if k == 0 else _holder(b, rx)
            if victim != ppid and victim in worker_pids(b):  # the publisher's stays up
                os.kill(victim, signal.SIGKILL)
            time.sleep(0.3)
        assert done.wait(90), "publisher did not finish"
        assert not failure, f"publisher failed: {failure[0]!r}"
        rx.wait_for(MESSAGES, 60)
        time.sleep(0.5)
    finally:
        rx.stop()
    # publish_stream returned: every message got its PUBREC (acknowledged).
    _check(rx, {p for _, p in msgs})


def _holder(b: Broker, rx: Receiver) -> int:
    try:
        return owner_pid(b, rx.c.sock, timeout=1.0)
    except (AssertionError, OSError):
        return -1
