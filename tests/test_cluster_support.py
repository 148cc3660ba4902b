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
from collections.abc import Callable, Iterable
from typing import Any

from conftest import Broker, Clients
from mqtt_helpers import (
    PUBACK,
    PUBCOMP,
    PUBREC,
    PahoClient,
    RawClient,
    parse_ack,
    publish,
    pubrel,
)

WORKERS = 4
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
            raise AssertionError(f"no worker holds the connection from port {client_port} "
                                 f"(inode {inode}) within {timeout}s")
        time.sleep(0.01)


def paho_owner(broker: Broker, client: PahoClient) -> int:
    sock = client.client.socket()
    assert sock is not None, "paho client has no socket"
    return owner_pid(broker, sock)  # type: ignore[arg-type]


def open_on(mq: Clients, broker: Broker, version: int, want: Callable[[int], bool],
            what: str, tries: int = 60) -> tuple[RawClient, int]:
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


def publish_stream(c: RawClient, msgs: list[tuple[str, bytes]], qos: int, *,
                   window: int = 16, timeout: float = 30.0) -> None:
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


def assert_quiet(clients: Iterable[RawClient], seconds: float = 0.4) -> None:
    """After `seconds`, none of the clients has received anything more."""
    time.sleep(seconds)
    for c in clients:
        c.expect_nothing(0.01)


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

    def wait(self, what: str, pred: Callable[[int, dict[int, int]], bool],
             timeout: float = 6.0) -> tuple[int, dict[int, int]]:
        """The first complete round (from now on) for which pred(total, rows) holds."""
        start = len(self.rounds)
        deadline = time.monotonic() + timeout
        while True:
            self._feed(0.1)
            for total, rows in self.rounds[start:]:
                if pred(total, rows):
                    return total, rows
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not seen within {timeout}s; rounds: "
                                     f"{self.rounds[start:]}")
