"""Helpers of the multi-worker suite (test_cluster_*.py); this file holds no tests.

Where a connection landed is read from the operating system: the broker side
of a TCP connection is a socket inode in /proc/net/tcp, and exactly one worker
process (a child of the supervisor) has that inode among its file descriptors.
That lets a test open sockets until one lands on the worker it wants, and
cross-check the `$SYS/broker/workers/{k}/clients/connected` figures.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from conftest import Broker, Clients
from mqtt_helpers import (
    CONNACK,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    V5,
    V311,
    Connack,
    ConnectionClosed,
    PahoClient,
    Publish,
    RawClient,
    connect,
    parse_ack,
    parse_connack,
    parse_publish,
    persistent,
    puback,
    publish,
    pubrel,
)

WORKERS = 4
WINDOW = 8  # QoS 1 publishes in flight per streaming publisher
PACE = 0.004  # seconds between its publishes: ~250 msg/s
SYS_CONNECTED = "$SYS/broker/clients/connected"
SYS_WORKER_CONNECTED = "$SYS/broker/workers/+/clients/connected"
_WORKER_ROW = re.compile(r"^\$SYS/broker/workers/(\d+)/clients/connected$")


# ---------------------------------------------------------------- processes


def worker_pids(broker: Broker) -> set[int]:
    """Pids of the supervisor's children (the worker processes)."""
    assert broker.proc is not None
    sup = broker.proc.pid
    pids: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{sup}/task")
    except FileNotFoundError:
        return pids
    for tid in tasks:
        try:
            with open(f"/proc/{sup}/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def wait_workers(broker: Broker, n: int = WORKERS, timeout: float = 5.0) -> set[int]:
    """The worker pids once there are n of them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(broker)
        if len(pids) == n or time.monotonic() > deadline:
            assert len(pids) == n, f"expected {n} workers under the supervisor, found {pids}"
            return pids
        time.sleep(0.02)


def _server_inode(broker_port: int, client_port: int) -> int | None:
    """Inode of the broker-side socket of the connection from client_port."""
    want_local = f"0100007F:{broker_port:04X}"
    want_remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[1] == want_local and cols[2] == want_remote:
                inode = int(cols[9])
                if inode:
                    return inode
    return None


def _pid_holding(inode: int, pids: Iterable[int]) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, PermissionError):
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def owner_pid(broker: Broker, sock: socket.socket, timeout: float = 3.0) -> int:
    """The worker process that accepted this client socket's connection."""
    client_port = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while True:
        inode = _server_inode(broker.port, client_port)
        if inode is not None:
            pid = _pid_holding(inode, worker_pids(broker))
            if pid is not None:
                return pid
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no worker holds the connection from port {client_port} "
                f"(inode {inode}) within {timeout}s"
            )
        time.sleep(0.01)


def paho_owner(broker: Broker, client: PahoClient) -> int:
    sock = client.client.socket()
    assert sock is not None, "paho client has no socket"
    return owner_pid(broker, sock)  # type: ignore[arg-type]


def on(pid: int) -> Callable[[int], bool]:
    """open_on's wish: the worker with this pid."""
    return lambda p: p == pid


def not_on(pid: int) -> Callable[[int], bool]:
    """open_on's wish: any worker but the one with this pid."""
    return lambda p: p != pid


def open_on(
    mq: Clients,
    broker: Broker,
    version: int,
    want: Callable[[int], bool],
    what: str,
    tries: int = 60,
) -> tuple[RawClient, int]:
    """A raw socket (no CONNECT yet) whose connection a worker satisfying `want` accepted;
    sockets that land elsewhere are closed unused."""
    seen: list[int] = []
    for _ in range(tries):
        c = mq.raw(version, broker=broker)
        pid = owner_pid(broker, c.sock)
        if want(pid):
            return c, pid
        seen.append(pid)
        c.close()
    raise AssertionError(f"no connection landed on {what} in {tries} tries (landed on {seen})")


def wait_serving(broker: Broker, timeout: float = 8.0) -> set[int]:
    """Wait until every worker accepts connections (each binds the port only once it
    is linked to its peers); return the worker pids."""
    pids = wait_workers(broker)
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while seen != pids:
        assert time.monotonic() < deadline, f"only workers {seen} of {pids} accept connections"
        c = RawClient(broker.host, broker.port)
        try:
            seen.add(owner_pid(broker, c.sock))
        finally:
            c.close()
    return pids


def spread(
    mq: Clients,
    broker: Broker,
    n: int,
    *,
    cover: int = WORKERS,
    version_of: Callable[[int], int] = lambda i: V5 if i % 2 else V311,
    limit: int = 40,
) -> list[tuple[RawClient, int]]:
    """At least n connected clients, on at least `cover` different workers."""
    out: list[tuple[RawClient, int]] = []
    while len(out) < n or len({p for _, p in out}) < cover:
        assert len(out) < limit, f"{limit} clients landed on only {Counter(p for _, p in out)}"
        c = mq.raw_connected(version_of(len(out)), broker=broker)
        out.append((c, owner_pid(broker, c.sock)))
    return out


def connect_on(
    mq: Clients, broker: Broker, version: int, want: Callable[[int], bool], what: str
) -> tuple[RawClient, int]:
    c, pid = open_on(mq, broker, version, want, what)
    ack = c.connect(mq.cid())
    assert ack.rc == 0, f"CONNECT refused: {ack}"
    return c, pid


def seq_of(msg: Publish) -> tuple[int, int]:
    a, b = msg.payload.decode().split(":")
    return int(a), int(b)


# ---------------------------------------------------------------- traffic


def run_parallel(jobs: list[Callable[[], Any]], timeout: float) -> list[Any]:
    """Run jobs in threads; return their results, re-raising the first failure.
    Every thread is bounded by `timeout` (a hung job fails the test)."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []

    def wrap(i: int, job: Callable[[], Any]) -> None:
        try:
            results[i] = job()
        except BaseException as e:  # noqa: BLE001 - reported to the test below
            errors.append(e)

    threads = [threading.Thread(target=wrap, args=(i, j), daemon=True) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    if errors:
        raise errors[0]
    hung = sum(t.is_alive() for t in threads)
    assert not hung, f"{hung} of {len(jobs)} client threads still running after {timeout}s"
    return results


def publish_stream(
    c: RawClient,
    msgs: list[tuple[str, bytes]],
    qos: int,
    *,
    window: int = 16,
    timeout: float = 30.0,
) -> None:
    """Publish msgs in order with up to `window` QoS 1/2 handshakes open at a time
    (below the broker's Receive Maximum of 20); returns once every one completed."""
    version = c.version
    if qos == 0:
        c.send(b"".join(publish(t, p, version=version) for t, p in msgs))
        c.sync()
        return
    open_: dict[int, int] = {}  # packet id -> PUBACK/PUBREC/PUBCOMP awaited
    i = 0
    deadline = time.monotonic() + timeout
    while i < len(msgs) or open_:
        batch = []
        while i < len(msgs) and len(open_) < window:
            pid = i % 65000 + 1
            assert pid not in open_
            topic, payload = msgs[i]
            batch.append(publish(topic, payload, qos=qos, pid=pid, version=version))
            open_[pid] = PUBACK if qos == 1 else PUBREC
            i += 1
        if batch:
            c.send(b"".join(batch))
        p = c.recv_packet(max(0.01, deadline - time.monotonic()))
        assert p.ptype in (PUBACK, PUBREC, PUBCOMP), f"unexpected {p!r} while publishing"
        ack = parse_ack(p, version)
        assert open_.get(ack.pid) == p.ptype, f"{p.name} for packet id {ack.pid}, open: {open_}"
        assert ack.rc == 0, f"{p.name} {ack.pid} with reason {ack.rc:#x}"
        if p.ptype == PUBREC:
            c.send(pubrel(ack.pid, version=version))
            open_[ack.pid] = PUBCOMP
        else:
            del open_[ack.pid]


def pump(c: RawClient, seconds: float, into: list[bytes]) -> None:
    """Receive PUBLISHes for `seconds`, acknowledging each (QoS 1), payloads into `into`."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            p = c.recv_packet(min(left, 0.05))
        except TimeoutError:
            continue
        msg = parse_publish(p, c.version)
        into.append(msg.payload)
        if msg.qos == 1 and msg.pid is not None:
            c.send(puback(msg.pid, version=c.version))


def assert_quiet(clients: Iterable[RawClient], seconds: float = 0.4) -> None:
    """After `seconds`, none of the clients has received anything more."""
    time.sleep(seconds)
    for c in clients:
        c.expect_nothing(0.01)


def seq_of_b(payload: bytes) -> tuple[int, int]:
    a, n = payload.decode().split(":")
    return int(a), int(n)


def connect_early(c: RawClient, cid: str, **kw: Any) -> tuple[Connack, list[Publish]]:
    """CONNECT, and read up to the CONNACK. PUBLISHes the broker sends before it (which
    [MQTT-3.2.0-1] forbids) are returned, so that the caller can both count them as
    received and report the violation, instead of failing half-way through a scenario."""
    kw.setdefault("version", c.version)
    c.send(connect(cid, **kw))
    early: list[Publish] = []
    while True:
        try:
            p = c.recv_packet()
        except ConnectionClosed:
            raise AssertionError("connection closed while waiting for CONNACK") from None
        except TimeoutError:
            raise AssertionError("no CONNACK") from None
        if p.ptype == CONNACK:
            return parse_connack(p, c.version), early
        assert p.ptype == PUBLISH, f"expected CONNACK, got {p!r}"
        early.append(parse_publish(p, c.version))


def reconnect(
    broker: Broker, version: int, cid: str, timeout: float = 10.0
) -> tuple[RawClient, bool, list[Publish]]:
    """Connect again with the persistent session of cid, retrying while the broker
    is recovering; return the client, session present and any PUBLISHes that came
    before the CONNACK (see connect_early)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            c = RawClient(broker.host, broker.port, version=version)
        except OSError as e:
            last = e
            time.sleep(0.05)
            continue
        try:
            ack, early = connect_early(c, cid, **persistent(version))
            if ack.rc == 0:
                return c, ack.session_present, early
            last = ack
        except (AssertionError, OSError, ConnectionClosed, TimeoutError) as e:
            last = e
        c.close()
        time.sleep(0.05)
    raise AssertionError(f"{cid} could not reconnect within {timeout}s: {last!r}")


class Publisher:
    """Publishes QoS 1 messages `tag:n` without pause on its own thread; when the
    connection breaks it reconnects with its persistent session and sends every
    unacknowledged message again with DUP=1, as paho does [MQTT-4.4.0-1]."""

    def __init__(self, broker: Broker, c: RawClient, cid: str, tag: int, topic: str) -> None:
        self.broker, self.c, self.cid, self.tag, self.topic = broker, c, cid, tag, topic
        self.acked: set[bytes] = set()
        self.reasons: dict[bytes, int] = {}  # v5 PUBACK reason codes other than 0
        self.sent = 0
        self.reconnects: list[bool] = []  # session present of each reconnect
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
        unacked: dict[int, bytes] = {}  # packet id -> payload, in send order
        n = 0
        next_send = time.monotonic()
        while not self._stop.is_set() or unacked:
            try:
                if (
                    not self._stop.is_set()
                    and len(unacked) < WINDOW
                    and time.monotonic() >= next_send
                ):
                    payload = f"{self.tag}:{n}".encode()
                    pid = n % 65000 + 1
                    unacked[pid] = payload
                    c.sock.sendall(publish(self.topic, payload, qos=1, pid=pid, version=v))
                    n += 1
                    self.sent = n
                    next_send = time.monotonic() + PACE
                    continue
                p = c.recv_packet(PACE)
                assert p.ptype == PUBACK, f"publisher {self.tag}: unexpected {p!r}"
                ack = parse_ack(p, v)
                assert ack.rc < 0x80, f"publisher {self.tag}: PUBACK {ack}"
                payload_acked = unacked.pop(ack.pid, None)
                assert payload_acked is not None, (
                    f"publisher {self.tag}: PUBACK for unknown {ack.pid}"
                )
                self.acked.add(payload_acked)
                if ack.rc:
                    self.reasons[payload_acked] = ack.rc
            except TimeoutError:
                continue
            except (ConnectionClosed, OSError):
                c.close()
                c, present, _ = reconnect(self.broker, v, self.cid)
                self.c = c
                self.reconnects.append(present)
                c.sock.sendall(
                    b"".join(
                        publish(self.topic, payload, qos=1, pid=pid, dup=True, version=v)
                        for pid, payload in unacked.items()
                    )
                )

    def stop(self, timeout: float = 15.0) -> None:
        """Stop publishing and wait for the outstanding acknowledgements."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"publisher {self.tag} did not finish"
        if self.error is not None:
            raise AssertionError(f"publisher {self.tag} failed: {self.error!r}")


# ---------------------------------------------------------------- $SYS


class SysRounds:
    """Reads `$SYS/broker/clients/connected` and the per-worker rows worker 0 publishes
    right after it, grouped into publication rounds: (total, {worker: connected})."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.client = PahoClient(broker.host, broker.port, client_id)
        self.client.connect()
        assert self.client.subscribe(SYS_CONNECTED, 0) == [0]
        assert self.client.subscribe(SYS_WORKER_CONNECTED, 0) == [0]
        self.current: tuple[int, dict[int, int]] | None = None
        self.rounds: list[tuple[int, dict[int, int]]] = []

    def close(self) -> None:
        self.client.close()

    def _feed(self, seconds: float) -> None:
        for m in self.client.drain(seconds):
            if m.retain:  # the retained copies sent on SUBSCRIBE are not one round
                continue
            if m.topic == SYS_CONNECTED:
                self.current = (int(m.payload), {})
                continue
            row = _WORKER_ROW.match(m.topic)
            assert row, f"unexpected $SYS topic {m.topic}"
            if self.current is None:
                continue
            k = int(row.group(1))
            assert k not in self.current[1], f"worker {k} twice in one round"
            self.current[1][k] = int(m.payload)
            if len(self.current[1]) == WORKERS:
                self.rounds.append(self.current)
                self.current = None

    def wait(
        self, what: str, pred: Callable[[int, dict[int, int]], bool], timeout: float = 6.0
    ) -> tuple[int, dict[int, int]]:
        """The first complete round (from now on) for which pred(total, rows) holds."""
        start = len(self.rounds)
        deadline = time.monotonic() + timeout
        while True:
            self._feed(0.1)
            for total, rows in self.rounds[start:]:
                if pred(total, rows):
                    return total, rows
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not seen within {timeout}s; rounds: {self.rounds[start:]}"
                )
