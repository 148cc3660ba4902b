"""Worker crashes and shutdown of a 4-worker broker (issue 3, "Supervisor").

kill -9 of a worker under QoS 1 traffic: no message acknowledged to a publisher is
lost for a persistent subscriber, clients of the dead worker resume their
sessions elsewhere, the supervisor restarts the worker within a second and the
new worker serves. SIGTERM stops all workers cleanly and a restart restores
retained messages and persistent sessions.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

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
    puback,
    pubcomp,
)
from test_cluster_support import (
    WORKERS,
    Publisher,
    assert_quiet,
    connect_on,
    not_on,
    on,
    open_on,
    owner_pid,
    publish_stream,
    reconnect,
    seq_of,
    seq_of_b,
    spread,
    wait_serving,
    worker_pids,
)

pytestmark = pytest.mark.bwfast_only  # kills and counts bwfast's worker processes

RESTART_WITHIN = 1.0  # seconds for a new worker pid to appear after kill -9


@pytest.fixture
def workers() -> int:
    """make_broker's worker count in this module, whatever BWFAST_TEST_WORKERS says."""
    return WORKERS


@pytest.fixture
def crash_broker(
    make_broker: Callable[..., Broker], request: pytest.FixtureRequest
) -> Iterator[tuple[Broker, Clients]]:
    # A queue big enough that no message is dropped while the subscriber is away
    # (a full queue may drop by design; that is not what this test is about).
    b = make_broker(max_queued_messages=100_000)
    wait_serving(b)
    clients = Clients(b, request.node.nodeid)
    yield b, clients
    clients.close_all()


class Subscriber:
    """Receives and acknowledges on its own thread; reconnects with its persistent
    session (without subscribing again) when the connection breaks."""

    def __init__(self, broker: Broker, c: RawClient, cid: str) -> None:
        self.broker, self.c, self.cid = broker, c, cid
        self.got: list[bytes] = []
        self.reconnects: list[bool] = []
        self.before_connack = 0  # PUBLISHes sent ahead of a CONNACK
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
        c, v = self.c, self.c.version
        while not self._stop.is_set():
            try:
                p = c.recv_packet(0.05)
            except TimeoutError:
                continue
            except ConnectionClosed:
                c.close()
                c, present, early = reconnect(self.broker, v, self.cid)
                self.c = c
                self.reconnects.append(present)
                if early:
                    self.before_connack += len(early)
                for msg in early:
                    self.got.append(msg.payload)
                    if msg.pid is not None:
                        c.send(puback(msg.pid, version=v))
                continue
            if p.ptype == PUBREL:
                c.send(pubcomp(parse_ack(p, v).pid, version=v))
                continue
            assert p.ptype == PUBLISH, f"subscriber: unexpected {p!r}"
            msg = parse_publish(p, v)
            self.got.append(msg.payload)
            if msg.pid is not None:
                c.send(puback(msg.pid, version=v))

    def wait_for(self, wanted: set[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.got) and time.monotonic() < deadline and self.error is None:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(12)
        assert not self._thread.is_alive(), "subscriber thread hung"
        if self.error is not None:
            raise AssertionError(f"subscriber failed: {self.error!r}")


def kill9_and_wait_restart(broker: Broker, victim: int) -> tuple[int, float]:
    """kill -9 one worker; return the pid of its replacement and how long it took."""
    assert broker.proc is not None
    before = worker_pids(broker)
    assert victim in before
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while True:
        now = worker_pids(broker)
        new = now - before
        if new and victim not in now and len(now) == WORKERS:
            return new.pop(), time.monotonic() - killed
        assert time.monotonic() - killed < 5, f"no replacement of worker {victim}: {now}"
        time.sleep(0.01)


def test_cluster_kill9_worker_under_traffic(crash_broker: tuple[Broker, Clients]) -> None:
    """kill -9 the worker of a persistent QoS 1 subscriber, then the worker of a
    publisher, while three publishers (one on the subscriber's worker) keep sending:
    the supervisor survives and replaces each worker within a second; the clients of
    the dead worker resume their sessions (session present) elsewhere; every message
    a publisher got a PUBACK for reaches the subscriber (at least once); the new
    workers serve new clients."""
    b, mq = crash_broker
    assert b.proc is not None
    sup = b.proc.pid
    topic = mq.topic("crash")
    sub_cid = mq.cid("sub")
    sub_c = mq.raw(V311)
    ack = sub_c.connect(sub_cid, **persistent(V311))
    assert ack.rc == 0 and not ack.session_present
    assert sub_c.subscribe(topic, 1).codes == [1]
    sub_pid = owner_pid(b, sub_c.sock)
    # publisher 0 on another worker, 1 on the subscriber's, 2 wherever
    places = [not_on(sub_pid), on(sub_pid), lambda p: True]
    pubs: list[Publisher] = []
    pub_pids: list[int] = []
    for tag, want in enumerate(places):
        version = V5 if tag % 2 else V311
        cid = mq.cid(f"pub{tag}")
        c, pid = open_on(mq, b, version, want, f"place {tag}")
        a = c.connect(cid, **persistent(version))
        assert a.rc == 0
        pubs.append(Publisher(b, c, cid, tag, topic))
        pub_pids.append(pid)
    sub = Subscriber(b, sub_c, sub_cid)
    restarts: list[float] = []
    try:
        time.sleep(0.7)
        new_pid, took = kill9_and_wait_restart(b, sub_pid)  # the subscriber's worker
        restarts.append(took)
        time.sleep(1.2)
        second = pub_pids[0]  # publisher 0's worker: it never was the subscriber's at start
        assert second != sub_pid
        new_pid2, took = kill9_and_wait_restart(b, second)
        restarts.append(took)
        time.sleep(1.2)
    finally:
        for p in pubs:
            p.stop()
        acked = set().union(*(p.acked for p in pubs))
        sub.wait_for(acked, timeout=5)
        sub.stop()
    # Every failure is reported, not just the first: they tend to come together.
    problems: list[str] = []
    if b.proc.poll() is not None or b.proc.pid != sup:
        problems.append("the supervisor did not survive")
    if not all(t <= RESTART_WITHIN for t in restarts):
        problems.append(f"worker restarts took {restarts} s (limit {RESTART_WITHIN})")
    if sub.before_connack:
        problems.append(
            f"{sub.before_connack} PUBLISHes sent to the reconnecting subscriber "
            "before its CONNACK [MQTT-3.2.0-1]"
        )
    if not sub.reconnects or not all(sub.reconnects):
        problems.append(f"subscriber reconnects, session present of each: {sub.reconnects}")
    for p in pubs:
        if not all(p.reconnects) or (p.tag in (0, 1) and not p.reconnects):
            problems.append(
                f"publisher {p.tag} (started on {pub_pids[p.tag]}) reconnects, "
                f"session present of each: {p.reconnects}"
            )
    if not all(len(p.acked) > 100 for p in pubs):
        problems.append(f"too little traffic: acked {[len(p.acked) for p in pubs]}")
    got = set(sub.got)
    lost = sorted(acked - got, key=seq_of_b)
    if lost:
        problems.append(
            f"{len(lost)} of {len(acked)} messages acknowledged with PUBACK never "
            f"reached the persistent subscriber: {lost[:16]}"
        )
    if not got <= {f"{p.tag}:{n}".encode() for p in pubs for n in range(p.sent)}:
        problems.append("the subscriber got messages nobody published")
    try:
        check_restarted_workers_serve(b, mq, [new_pid, new_pid2])
    except AssertionError as e:
        problems.append(f"after the restarts: {e}")
    assert not problems, f"killed {sub_pid} (subscriber's worker) then {second}:\n" + "\n".join(
        problems
    )


def check_restarted_workers_serve(b: Broker, mq: Clients, new_pids: list[int]) -> None:
    """8+ new clients, on every worker, all connect; a message published on each
    restarted worker reaches all of them."""
    assert worker_pids(b) >= set(new_pids), f"{new_pids} gone again: {worker_pids(b)}"
    fresh = spread(mq, b, 8)
    assert set(new_pids) <= {pid for _, pid in fresh}
    probe = mq.topic("probe")
    for c, _ in fresh:
        assert c.subscribe(probe, 1).codes == [1]
    for j, pid in enumerate(new_pids):
        pc, _ = connect_on(mq, b, V5, on(pid), f"restarted worker {pid}")
        publish_stream(pc, [(probe, f"{j}:0".encode())], 1)
        for c, where in fresh:
            m = c.receive(1)[0]
            assert seq_of(m) == (j, 0), f"subscriber on {where}: {m}"
    assert_quiet([c for c, _ in fresh], 0.2)


def test_cluster_sigterm_then_restart_restores_state(crash_broker: tuple[Broker, Clients]) -> None:
    """SIGTERM to the supervisor of 4 workers: exit 0 within 5 s (CONTRACT.md). A
    restart on the same data dir restores the retained messages set through every
    worker and the persistent sessions held by every worker (session present,
    subscriptions, queued QoS 1/2 messages in order)."""
    b, mq = crash_broker
    pubs = spread(mq, b, 4)  # a publisher on every worker
    retained = {mq.topic("ret", str(i)): f"kept {i}".encode() for i in range(len(pubs))}
    for (c, _), (t, payload) in zip(pubs, retained.items(), strict=True):
        c.publish(t, payload, qos=1, retain=True)
    sessions: list[tuple[str, int, str]] = []  # (client id, version, topic)
    holders: set[int] = set()
    i = 0
    while len(sessions) < 4 or len(holders) < WORKERS:
        assert i < 40, f"persistent sessions only on {holders}"
        version = V5 if i % 2 else V311
        cid, topic = mq.cid(f"s{i}"), mq.topic("sess", str(i))
        c = mq.raw(version)
        a = c.connect(cid, **persistent(version))
        assert a.rc == 0 and not a.session_present
        assert c.subscribe(topic, 2).codes == [2]
        holders.add(owner_pid(b, c.sock))
        if i % 3:  # most go offline; the others are still connected at SIGTERM
            c.disconnect()
        sessions.append((cid, version, topic))
        i += 1
    sender = pubs[0][0]
    for _, _, topic in sessions:
        publish_stream(sender, [(topic, f"0:{k}".encode()) for k in range(6)], 1)
        publish_stream(sender, [(topic, f"0:{k}".encode()) for k in range(6, 10)], 2)
    rc, elapsed = b.terminate(timeout=5.0)
    assert rc == 0 and elapsed < 5.0, f"exit code {rc} after {elapsed:.2f}s:\n{b.log_tail()}"
    mq.close_all()

    b.start()
    wait_serving(b)
    watcher = mq.raw_connected(V5)
    assert watcher.subscribe(mq.topic("ret", "+"), 1).codes == [1]
    got = {m.topic: m for m in watcher.receive(len(retained))}
    assert {t: m.payload for t, m in got.items()} == retained
    assert all(m.retain for m in got.values())
    sender = mq.raw_connected(V311)
    for cid, version, topic in sessions:
        c = mq.raw(version)
        a = c.connect(cid, **persistent(version))
        assert a.rc == 0 and a.session_present, f"session {cid} lost by the restart"
        queued = c.receive(10)
        assert [seq_of(m) for m in queued] == [(0, k) for k in range(10)], f"session {cid}"
        assert [m.qos for m in queued] == [1] * 6 + [2] * 4
        sender.publish(topic, b"1:0", qos=1)
        assert seq_of(c.receive(1)[0]) == (1, 0), f"subscription of {cid} lost by the restart"
        assert_quiet([c], 0.1)
