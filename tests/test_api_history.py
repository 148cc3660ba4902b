"""The REST history is complete (issue 12): what a short-lived device published or
was sent is listed after it is gone, and `subscriptions/` lists only
subscriptions that exist, across a restart (SIGTERM) and a crash (kill -9).

Real broker with its API (1 and 4 workers), Mosquitto's clients and paho
devices, httpx; nothing mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from mqtt_helpers import V5, V311, PahoClient
from test_api_support import ApiBroker, eventually, start_api_broker
from test_cluster_support import paho_owner, worker_pids

pytestmark = pytest.mark.bwfast_only

NO_DATA = {"bwapi-status": "success", "bwapi-status-reason": "no_data_found"}


@pytest.fixture(scope="module")
def api(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiBroker]:
    yield from start_api_broker(tmp_path_factory.mktemp("history"), workers)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


def rows_of(api: ApiBroker, path: str, key: str, device_id: str, limit: int = 10) -> Any:
    body = api.get(path, device_id=device_id, limit=limit).json()
    return body.get(key) or []


def events(api: ApiBroker, cid: str) -> list[tuple[str, str]]:
    return [(e["topic"], e["message"])
            for e in rows_of(api, "last_events_by_device/", "events", cid)]


def events_when(api: ApiBroker, cid: str, n: int) -> list[tuple[str, str]]:
    """The events once there are n of them (the flush may split a burst)."""
    rows = events(api, cid)
    return rows if len(rows) >= n else []


def commands(api: ApiBroker, cid: str) -> list[tuple[str, str]]:
    return [(e["topic"], e["message"])
            for e in rows_of(api, "last_commands_to_device/", "commands", cid)]


def device(api: ApiBroker, cid: str) -> dict[str, Any] | None:
    r = api.get("devices/", limit=1000)
    assert r.status_code == 200, r.text
    return next((d for d in r.json()["data"] if d["device_id"] == cid), None)


def inactive(api: ApiBroker, cid: str) -> bool:
    return (device(api, cid) or {}).get("status") == "inactive"


def connected_ids(api: ApiBroker) -> set[str]:
    return set(api.get("connected_devices").json().get("devices", {}).values())


def mosquitto(api: ApiBroker, tool: str, *args: str, timeout: float = 10.0
              ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(api.port), *args],
                          capture_output=True, timeout=timeout, check=True)


# ------------------------------------------------------------------ short-lived devices


def test_mosquitto_pub_event_is_listed_after_it_left(api: ApiBroker, tag: str) -> None:
    """mosquitto_pub connects, publishes and disconnects well inside one history
    flush: its event, its device row and its connect time are all kept."""
    started = time.time() * 1000
    for i, qos in enumerate(("0", "1", "2")):
        mosquitto(api, "mosquitto_pub", "-i", f"{tag}-pub{i}", "-t", f"ev/{tag}/{i}",
                  "-m", f"x{i}", "-q", qos)
    for i in range(3):
        cid = f"{tag}-pub{i}"
        assert eventually(partial(events, api, cid)) == [(f"ev/{tag}/{i}", f"x{i}")]
        row = eventually(partial(device, api, cid))
        assert row["status"] == "inactive"
        assert started - 1000 <= row["device_connected_time"] <= time.time() * 1000
        assert cid not in connected_ids(api)


@pytest.mark.parametrize("protocol", [V311, V5], ids=["v311", "v5"])
def test_paho_devices_that_leave_at_once_keep_their_events(
        api: ApiBroker, tag: str, protocol: int) -> None:
    """Publish (QoS 0 through the fast lane, QoS 1) and disconnect at once, ten times."""
    ids = [f"{tag}-p{i}" for i in range(10)]
    for i, cid in enumerate(ids):
        c = PahoClient("127.0.0.1", api.port, cid, protocol=protocol)
        assert c.connect()[1] == 0
        c.publish(f"ev/{tag}/q0", f"zero{i}", qos=0)
        c.publish(f"ev/{tag}/q1", f"one{i}", qos=1)
        c.disconnect()
    for i, cid in enumerate(ids):
        got = eventually(partial(events_when, api, cid, 2))
        assert got == [(f"ev/{tag}/q1", f"one{i}"), (f"ev/{tag}/q0", f"zero{i}")]
        assert eventually(partial(inactive, api, cid))


@pytest.mark.parametrize("how", ["send_client", "send_all"])
def test_commands_to_a_subscriber_that_leaves_at_once_are_listed(
        api: ApiBroker, tag: str, how: str) -> None:
    """`mosquitto_sub -C 1` leaves as soon as it has one message: what it was sent
    (send_client, and send_all as an ordinary publish) stays listed."""
    cid, topic = f"{tag}-{how}", f"cmd/{tag}/{how}"
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(api.port), "-i", cid,
         "-t", topic, "-C", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sent() -> bool:
        # send_all: the route may still be on its way to the other workers, so
        # send until mosquitto_sub has it (QoS 0 to nobody is no error).
        assert api.post("send_all", topic=topic, message="go").status_code == 200
        try:
            sub.wait(0.3)
        except subprocess.TimeoutExpired:
            return False
        return True

    try:
        eventually(lambda: cid in connected_ids(api), timeout=5)
        if how == "send_client":
            r = api.post("send_client", clientid=cid, topic=topic, message="go")
            assert r.status_code == 200, r.text
        else:
            eventually(sent, timeout=5)
        out, _ = sub.communicate(timeout=5)
        assert out.strip() == b"go"
    finally:
        sub.kill()
        sub.wait()
    assert eventually(partial(commands, api, cid))[0] == (topic, "go")
    assert eventually(partial(inactive, api, cid))


# ------------------------------------------------------------------ subscriptions across restarts


def subs(api: ApiBroker, cid: str) -> list[tuple[str, int]]:
    body = api.get("subscriptions/", device_id=cid).json()
    return [(s["topic"], s["QoS"]) for s in body.get("subscriptions", [])]


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_subscriptions_of_clean_sessions_end_with_the_broker(
        workers: int, tmp_path: Path, how: str) -> None:
    """A clean session connected at shutdown (or at a crash) is gone when the broker
    is back: the API stops listing its filters; a persistent session's stay."""
    gen = start_api_broker(tmp_path, workers)
    api = next(gen)
    try:
        clients = []
        for cid, clean, protocol in (("clean4", True, V311), ("clean5", True, V5),
                                     ("keep4", False, V311)):
            c = PahoClient("127.0.0.1", api.port, cid, protocol=protocol, clean=clean)
            assert c.connect()[1] == 0
            assert c.subscribe(f"s/{cid}", 1) == [1]
            clients.append(c)
        for cid in ("clean4", "clean5", "keep4"):
            assert eventually(partial(subs, api, cid)) == [(f"s/{cid}", 1)]
        if how == "sigterm":
            rc, _ = api.broker.terminate()
            assert rc == 0
        else:  # the rows are in LMDB (listed above) when the broker dies
            api.broker.kill9()
        for c in clients:
            c.close()
        api.start()
        assert eventually(lambda: subs(api, "keep4")) == [("s/keep4", 1)]
        eventually(lambda: not subs(api, "clean4") and not subs(api, "clean5"))
        everyone = api.get("subscriptions").json().get("subscriptions", [])
        assert {s["device_id"] for s in everyone} == {"keep4"}
        # what the clients see agrees: no session for the clean ones, the filter for keep4
        c = PahoClient("127.0.0.1", api.port, "clean4", clean=False)
        assert c.connect()[:2] == (False, 0)
        c.close()
        k = PahoClient("127.0.0.1", api.port, "keep4", clean=False)
        assert k.connect()[:2] == (True, 0)
        k.close()
    finally:
        gen.close()


def test_a_crashed_workers_clean_sessions_leave_the_listing(tmp_path: Path) -> None:
    """kill -9 of one worker of four: once the supervisor has it back, the clean
    sessions it held are not listed any more; those of the other workers are."""
    gen = start_api_broker(tmp_path, 4)
    api = next(gen)
    try:
        clients = []
        for i in range(8):
            c = PahoClient("127.0.0.1", api.port, f"c{i}")
            assert c.connect()[1] == 0
            assert c.subscribe(f"s/c{i}", 0) == [0]
            clients.append(c)
        owner = {f"c{i}": paho_owner(api.broker, c) for i, c in enumerate(clients)}
        victim = owner["c0"]
        gone = {cid for cid, pid in owner.items() if pid == victim}
        kept = set(owner) - gone
        assert kept, f"all eight clients landed on one worker: {owner}"
        for cid in owner:
            assert eventually(partial(subs, api, cid)) == [(f"s/{cid}", 0)]
        before = worker_pids(api.broker)
        os.kill(victim, signal.SIGKILL)
        eventually(lambda: len(worker_pids(api.broker) - before) == 1, timeout=10)
        eventually(lambda: not any(subs(api, cid) for cid in gone), timeout=5)
        time.sleep(1.0)  # two flushes of every worker: nothing else went
        for cid in kept:
            assert subs(api, cid) == [(f"s/{cid}", 0)], cid
        for c in clients:
            c.close()
    finally:
        gen.close()
