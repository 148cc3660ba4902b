"""$SYS/broker/... statistics, published every sys_interval (1 s here) on a private
broker so the client counts are exact."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import BROKER_KIND, Broker, Clients
from mqtt_helpers import V311, PahoClient

TOPICS = [
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/uptime",
    "$SYS/broker/version",
]


class SysWatcher:
    """Keeps the latest value and a publication count of each $SYS topic."""

    def __init__(self, client: PahoClient) -> None:
        self.client = client
        self.latest: dict[str, str] = {}
        self.count: dict[str, int] = {}

    def pump(self, seconds: float = 0.05) -> None:
        for m in self.client.drain(seconds):
            self.latest[m.topic] = m.payload.decode()
            self.count[m.topic] = self.count.get(m.topic, 0) + 1

    def number(self, topic: str) -> int:
        match = re.match(r"\s*(\d+)", self.latest[topic])
        assert match, f"{topic} is not a number: {self.latest[topic]!r}"
        return int(match.group(1))

    def wait(self, what: str, predicate: Callable[[], bool], timeout: float = 4.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            try:
                if predicate():
                    return
            except KeyError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not seen within {timeout}s; latest: {self.latest}")


@pytest.fixture(scope="module")
def sys_broker(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A private broker: nobody else's clients disturb the counts."""
    b = Broker(tmp_path_factory.mktemp("sys"), {}, workers).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def watcher(sys_broker: Broker) -> Iterator[SysWatcher]:
    c = PahoClient(sys_broker.host, sys_broker.port, "sys-watcher")
    c.connect()
    c.subscribe("$SYS/broker/#", 0)
    w = SysWatcher(c)
    w.wait("every $SYS topic", lambda: all(t in w.latest for t in TOPICS))
    yield w
    c.close()


def test_sys_topics_published(watcher: SysWatcher) -> None:
    """All the statistics topics exist and the numeric ones are numbers."""
    for t in TOPICS[:-1]:
        assert watcher.number(t) >= 0
    assert watcher.latest["$SYS/broker/version"].strip()


def test_sys_clients_connected_follows_connections(
    mq: Clients, sys_broker: Broker, watcher: SysWatcher
) -> None:
    """clients/connected rises by the clients that connect and falls when they leave."""
    topic = "$SYS/broker/clients/connected"
    watcher.wait("the watcher itself counted", lambda: watcher.number(topic) >= 1)
    base = watcher.number(topic)
    extra = [mq.raw_connected(V311, broker=sys_broker) for _ in range(3)]
    watcher.wait(f"connected >= {base + 3}", lambda: watcher.number(topic) >= base + 3)
    assert watcher.number(topic) == base + 3
    for c in extra:
        c.disconnect()
    watcher.wait(f"connected back to {base}", lambda: watcher.number(topic) == base)


def test_sys_message_and_byte_counters(
    mq: Clients, sys_broker: Broker, watcher: SysWatcher
) -> None:
    """messages/bytes received and sent grow by at least what the clients exchanged."""
    names = ["messages/received", "messages/sent", "bytes/received", "bytes/sent"]
    before = {n: watcher.number(f"$SYS/broker/{n}") for n in names}
    topic = mq.topic("count")
    sub = mq.raw_connected(V311, broker=sys_broker)
    sub.subscribe(topic, 1)
    pub = mq.raw_connected(V311, broker=sys_broker)
    payload = b"p" * 200
    for i in range(10):
        pub.publish(topic, payload, qos=1, pid=i + 1)
    assert len(sub.receive(10)) == 10
    wanted = {
        "messages/received": 10,
        "messages/sent": 10,
        "bytes/received": 2000,
        "bytes/sent": 2000,
    }
    for name, delta in wanted.items():
        target = before[name] + delta
        topic = f"$SYS/broker/{name}"
        watcher.wait(f"{name} +{delta}", lambda t=topic, v=target: watcher.number(t) >= v)  # type: ignore[misc]


def test_sys_published_periodically(watcher: SysWatcher) -> None:
    """With sys_interval = 1 the uptime is re-published every second or so and grows."""
    first_uptime = watcher.number("$SYS/broker/uptime")
    before = watcher.count.get("$SYS/broker/uptime", 0)
    watcher.wait(
        "two more uptime publications",
        lambda: watcher.count["$SYS/broker/uptime"] >= before + 2,
        timeout=5,
    )
    assert watcher.number("$SYS/broker/uptime") > first_uptime


@pytest.mark.bwfast_only
def test_sys_version_names_bwfast(watcher: SysWatcher) -> None:
    """$SYS/broker/version says which broker and version this is."""
    import bwfast

    version = watcher.latest["$SYS/broker/version"]
    assert "bwfast" in version.lower() and bwfast.__version__ in version, (version, BROKER_KIND)


@pytest.mark.bwfast_only
def test_sys_clients_per_listener_and_per_worker(
    mq: Clients, sys_broker: Broker, watcher: SysWatcher
) -> None:
    """Which listener and which worker clients came in on: per-listener and
    per-worker counts, each summing to clients/connected."""
    total = "$SYS/broker/clients/connected"
    listener = "$SYS/broker/listeners/mqtt/clients/connected"
    extra = [mq.raw_connected(V311, broker=sys_broker) for _ in range(4)]

    def consistent() -> bool:
        per_worker = [watcher.number(t) for t in watcher.latest
                      if t.startswith("$SYS/broker/workers/")]
        n = watcher.number(total)
        return n >= 5 and watcher.number(listener) == n and sum(per_worker) == n

    watcher.wait("per-listener and per-worker counts that sum up", consistent)
    for c in extra:
        c.disconnect()


@pytest.mark.bwfast_only
def test_running_broker_uses_the_compiled_hot_path(watcher: SysWatcher) -> None:
    """The broker says which modules it runs compiled; the codec, the topic trie
    and the fast lane must be (a slow pure-Python fallback must never pass as fast)."""
    watcher.wait("$SYS/broker/compiled", lambda: "$SYS/broker/compiled" in watcher.latest)
    assert sorted(watcher.latest["$SYS/broker/compiled"].split()) == ["fastpath", "packet", "topics"]
