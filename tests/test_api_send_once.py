"""`send_all` and `send_client` publish exactly once per answered call, and a
stalled worker (SIGSTOP) holds up no call another worker can serve (issue 12).

A real 4-worker broker with its API; paho subscribers count what arrives;
one worker is stopped with SIGSTOP and resumed with SIGCONT while the API is
called. A call answered 200 must arrive exactly once at every subscriber; a
call answered "Message could not be delivered" must never arrive, not even
after the stalled worker resumes.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from mqtt_helpers import V5, V311, PahoClient, RawClient
from test_api_support import ApiBroker, eventually, start_api_broker
from test_cluster_support import owner_pid, paho_owner, worker_pids

from api.workers import topic_worker

pytestmark = pytest.mark.bwfast_only

WORKERS = 4
STALL = 4.0       # seconds the worker stays stopped (as in the issue; the API waits 2 s at most)
SLOW_CALL = 1.5   # a call that waits this long was held up (the old retry waited 2 s)
_WORKER_STARTED = re.compile(r"started worker-(\d+) \(pid (\d+)\)")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiBroker]:
    yield from start_api_broker(tmp_path_factory.mktemp("send_once"), WORKERS)


class Subscribers:
    """paho clients, each on whichever worker it landed, subscribed to one topic."""

    def __init__(self, api: ApiBroker, n: int) -> None:
        self.api = api
        self.topic = ""
        self.clients: list[PahoClient] = []
        tag = uuid.uuid4().hex[:8]
        i = 0
        # n of them, on two workers at least (the kernel picks: add one until so)
        while i < n or len(self.owners()) < 2:
            assert i < n + 20, "every client landed on the same worker"
            c = PahoClient("127.0.0.1", api.port, f"{tag}-sub{i}", protocol=V5 if i % 2 else V311)
            self.clients.append(c)
            assert c.connect()[1] == 0
            i += 1

    def subscribe(self, topic: str) -> Subscribers:
        self.topic = topic
        for c in self.clients:
            assert c.subscribe(topic, 0) == [0]
        return self

    def owners(self) -> dict[int, list[PahoClient]]:
        out: dict[int, list[PahoClient]] = {}
        for c in self.clients:
            out.setdefault(paho_owner(self.api.broker, c), []).append(c)
        return out

    def settle(self) -> None:
        """Send probes until every subscriber has one (routes reach every worker)."""
        def everyone_has_one() -> bool:
            assert self.api.post("send_all", topic=self.topic, message="probe").status_code == 200
            time.sleep(0.1)
            return all(not c.messages.empty() for c in self.clients)
        eventually(everyone_has_one, timeout=5)
        time.sleep(0.3)
        for c in self.clients:
            c.drain(0.05)

    def received(self, seconds: float) -> list[list[bytes]]:
        return [[m.payload for m in c.drain(seconds)] for c in self.clients]

    def close(self) -> None:
        for c in self.clients:
            c.close()


def workers_of(api: ApiBroker) -> set[int]:
    """The worker processes' pids (the supervisor's children but the API), once
    every one of them accepts connections (a worker binds the port only when it
    is linked to its peers)."""
    def found() -> set[int]:
        pids = worker_pids(api.broker) - set(api.api_pids())
        return pids if len(pids) == WORKERS else set()
    pids = eventually(found, timeout=5)
    seen: set[int] = set()
    deadline = time.monotonic() + 8
    while seen != pids:
        assert time.monotonic() < deadline, f"only workers {seen} of {pids} accept connections"
        c = RawClient(api.broker.host, api.port)
        try:
            seen.add(owner_pid(api.broker, c.sock))
        finally:
            c.close()
    return pids


def stalled(pid: int) -> threading.Timer:
    """SIGSTOP pid now; SIGCONT it after STALL seconds (the returned timer)."""
    os.kill(pid, signal.SIGSTOP)
    t = threading.Timer(STALL, os.kill, (pid, signal.SIGCONT))
    t.start()
    return t


def worker_index(api: ApiBroker, pid: int) -> int:
    """The worker number of a worker pid, from the supervisor's log."""
    found = [int(k) for k, p in _WORKER_STARTED.findall(api.broker.log_path.read_text())
             if int(p) == pid]
    assert found, f"pid {pid} is no worker the supervisor started"
    return found[-1]


def topic_served_by(k: int) -> str:
    """A fresh topic whose send_all calls worker k publishes (api/workers.py)."""
    tag = uuid.uuid4().hex[:8]
    return next(t for j in range(1000) if topic_worker(t := f"once/{tag}/{j}", WORKERS) == k)


@pytest.mark.parametrize("stopped", ["publishing", "subscribed"])
def test_send_all_once_per_call_while_a_worker_is_stopped(api: ApiBroker, stopped: str) -> None:
    """Stop the worker that publishes the topic's send_all calls (`publishing`:
    the calls must move to another worker, exactly once each), or another worker
    that holds subscribers (`subscribed`: nobody may wait for it; its subscribers
    get everything, in order, once it resumes). Both hold a subscriber."""
    pids = workers_of(api)
    subs = Subscribers(api, 6)
    try:
        # The topic is picked once we know where the six landed: the stopped
        # worker holds a subscriber; the publishing one is it, or another one.
        owners = subs.owners()
        victim, publisher = list(owners)[:2]
        if stopped == "publishing":
            publisher = victim
        assert victim in pids
        subs.subscribe(topic_served_by(worker_index(api, publisher))).settle()
        answers: dict[bytes, tuple[int, float]] = {}
        sent: list[bytes] = []
        timer = stalled(victim)
        try:
            n = 0
            end = time.monotonic() + STALL - 0.3
            while time.monotonic() < end:
                payload = f"m{n}".encode()
                t0 = time.monotonic()
                r = api.post("send_all", topic=subs.topic, message=payload.decode())
                answers[payload] = (r.status_code, time.monotonic() - t0)
                assert r.status_code in (200, 404), r.text
                sent.append(payload)
                n += 1
        finally:
            timer.join()
            os.kill(victim, signal.SIGCONT)
        got = subs.received(3.0)
        ok = {p for p, (status, _) in answers.items() if status == 200}
        for i, payloads in enumerate(got):
            counts = Counter(payloads)
            twice = sorted(p for p, k in counts.items() if k > 1)
            assert not twice, f"subscriber {i} got {len(twice)} messages more than once: {twice[:5]}"
            missing = sorted(ok - set(counts))
            assert not missing, f"subscriber {i} never got answered calls {missing[:5]}"
            ghosts = sorted(set(counts) - ok)
            assert not ghosts, f"subscriber {i} got calls answered as failures: {ghosts[:5]}"
            if stopped == "subscribed":  # one publishing worker, one link: call order kept
                assert payloads == [p for p in sent if p in ok], f"subscriber {i} out of order"
        slow = sorted(round(s, 2) for status, s in answers.values() if s >= SLOW_CALL)
        assert len(ok) == len(answers), f"{len(answers) - len(ok)} of {len(answers)} calls failed"
        assert not slow, f"calls held up by the stopped worker: {slow} (of {len(answers)})"
    finally:
        subs.close()


def test_send_client_while_the_worker_holding_it_is_stopped(api: ApiBroker) -> None:
    """The target's worker is stopped: the call waits for it at most the API's
    timeout, then fails, and the message never arrives (not even once the worker
    resumes); a client on another worker is served at once meanwhile."""
    pids = workers_of(api)
    subs = Subscribers(api, 6)
    try:
        owners = subs.owners()
        victim, held = next((p, cs) for p, cs in owners.items() if len(owners) > 1)
        assert victim in pids
        other = next(c for p, cs in owners.items() if p != victim for c in cs)
        target = held[0]
        timer = stalled(victim)
        try:
            t0 = time.monotonic()
            r = api.post("send_client", clientid=target.client._client_id.decode(),
                         topic="to/target", message="late")
            waited = time.monotonic() - t0
            assert (r.status_code, r.json()["bwapi-status-reason"]) == (
                404, "Message could not be delivered")
            assert waited < STALL - 0.5
            t0 = time.monotonic()
            r = api.post("send_client", clientid=other.client._client_id.decode(),
                         topic="to/other", message="now")
            assert r.status_code == 200, r.text
            assert time.monotonic() - t0 < SLOW_CALL
            assert other.get().payload == b"now"
        finally:
            timer.join()
            os.kill(victim, signal.SIGCONT)
        # Resumed: the refused call stays refused; the target is served again.
        assert [m.payload for m in target.drain(1.0)] == []
        r = api.post("send_client", clientid=target.client._client_id.decode(),
                     topic="to/target", message="again")
        assert r.status_code == 200, r.text
        assert target.get().payload == b"again"
        assert [m.payload for m in target.drain(0.5)] == []
    finally:
        subs.close()


def test_send_client_exactly_once_when_calls_race(api: ApiBroker) -> None:
    """Many concurrent send_client calls to clients on every worker: each arrives once."""
    workers_of(api)
    subs = Subscribers(api, 8)
    try:
        results: list[tuple[int, int, int]] = []

        def call(k: int) -> None:
            c = subs.clients[k % len(subs.clients)]
            r = api.http.post("/bwiot/api/v1/send_client", headers=api.auth(), json={
                "clientid": c.client._client_id.decode(), "topic": "race", "message": f"r{k}"})
            results.append((k, r.status_code, k % len(subs.clients)))

        threads = [threading.Thread(target=call, args=(k,)) for k in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(status == 200 for _, status, _ in results), results
        for i, payloads in enumerate(subs.received(1.0)):
            want = {f"r{k}".encode() for k, _, j in results if j == i}
            assert Counter(payloads) == Counter(want), f"subscriber {i}: {payloads}"
    finally:
        subs.close()
