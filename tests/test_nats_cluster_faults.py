"""Nodes joined through NATS when things break: NATS missing at start, a node
SIGKILLed under traffic, the NATS server restarted under traffic, and a
3-server NATS cluster losing a server. What each loses is what README.md
("Cluster: what a failure costs") says.
"""
from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import paho.mqtt.client as mqtt
import pytest
from conftest import Broker, free_port
from mqtt_helpers import V311, PahoClient
from nats_support import LEASE, NatsServer, cluster_of, node, wait_for
from tls_helpers import make_pki

_ids = itertools.count()


@pytest.fixture
def made(request: pytest.FixtureRequest) -> Iterator[list[Any]]:
    """Everything a test starts, stopped afterwards (logs shown on failure)."""
    things: list[Any] = []
    yield things
    rep = getattr(request.node, "rep_call", None)
    for t in reversed(things):
        if isinstance(t, PahoClient):
            t.close()
        elif isinstance(t, Broker):
            if rep is not None and rep.failed:
                print(f"\n--- {t.root}:\n{t.log_tail(40)}")
            t.kill9() if not t.alive() else t.stop()
        elif isinstance(t, NatsServer):
            t.stop()


def client(made: list[Any], b: Broker, cid: str | None = None, clean: bool = True) -> PahoClient:
    c = PahoClient(b.host, b.port, cid or f"nf-{next(_ids)}", clean=clean, protocol=V311)
    made.append(c)
    _, rc, _ = c.connect()
    assert rc == 0
    return c


def joined(b: Broker) -> bool:
    return "joined through NATS" in b.log_path.read_text()


def crosses(pub: PahoClient, sub: PahoClient, t: str) -> bool:
    """A probe published on one node reaches the subscriber on another (False while
    the publisher's ack or the probe is still outstanding: a node's workers may
    still be reconnecting to another NATS server, and the ack waits for the
    other node)."""
    try:
        pub.publish(t, b"probe", 1)
        sub.get(timeout=0.5)
    except AssertionError:
        return False
    while not sub.messages.empty():
        sub.messages.get()
    return True


def test_node_without_nats_serves_its_clients_and_joins_later(
        tmp_path: Path, workers: int, made: list[Any]) -> None:
    ns = NatsServer(tmp_path)  # not started yet
    made.append(ns)
    a = node(tmp_path, "a", ns.url, workers).start()
    b = node(tmp_path, "b", ns.url, workers).start()
    made += [a, b]
    for n in (a, b):
        lines = [ln for ln in n.log_path.read_text().splitlines() if "cannot reach NATS" in ln]
        assert len(lines) == 1, lines  # said once, in one line
    sub = client(made, a)
    sub.subscribe("nf/local", 1)
    client(made, a).publish("nf/local", b"here", 1)  # a serves its own clients meanwhile
    assert sub.get().payload == b"here"
    ns.start()
    wait_for(lambda: joined(a) and joined(b), what="both nodes joined")
    far = client(made, b)
    far.subscribe("nf/far", 1)
    wait_for(lambda: crosses(client(made, a), far, "nf/far"), what="a route from b to a")


def test_node_killed_under_traffic(tmp_path: Path, workers: int, made: list[Any]) -> None:
    """SIGKILL node c while a publishes QoS 1 to subscribers on b and c: b gets
    every message in order, the publisher's acks keep coming (c's routes drop
    after the lease), and c's clients connect to b."""
    ns = NatsServer(tmp_path).start()
    made.append(ns)
    a, b, c = (node(tmp_path, n, ns.url, workers) for n in "abc")
    for n in (a, b, c):
        made.append(n.start())
    wait_for(lambda: all(joined(n) for n in (a, b, c)), what="joined")
    t = "nf/kill"
    sub_b = client(made, b)
    sub_b.subscribe(t, 1)
    sub_c = client(made, c, cid="on-c", clean=False)
    sub_c.subscribe(t, 1)
    pub = client(made, a)
    n = 150
    for i in range(n):
        if i == 50:
            c.kill9()
        pub.publish(t, str(i).encode(), 1, timeout=LEASE + 10)
    assert [m.payload for m in sub_b.get_n(n)] == [str(i).encode() for i in range(n)]
    wait_for(lambda: "node c worker 0 silent" in a.log_path.read_text(), what="c's lease")
    again = PahoClient(b.host, b.port, "on-c", clean=False)
    made.append(again)
    present, rc, _ = again.connect()  # c is gone with its session (durable_sessions off)
    assert rc == 0 and not present


class Publisher:
    """A paho client that reconnects by itself and resends what was not acknowledged."""

    def __init__(self, b: Broker, cid: str) -> None:
        self.acked: set[int] = set()
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                                  clean_session=False)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_publish = self._on_publish
        self.mids: dict[int, int] = {}
        self.client.connect(b.host, b.port, keepalive=20)
        self.client.loop_start()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self.lock:
            if mid in self.mids:
                self.acked.add(self.mids[mid])

    def publish(self, topic: str, i: int) -> None:
        info = self.client.publish(topic, str(i).encode(), 1)
        with self.lock:
            self.mids[info.mid] = i
            if info.is_published():
                self.acked.add(i)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_nats_restart_under_traffic_loses_no_acknowledged_message(
        tmp_path: Path, workers: int, made: list[Any]) -> None:
    """The NATS server stops and comes back while a publishes QoS 1 to a subscriber on
    b: every message a acknowledged reaches b (QoS 1: duplicates allowed); an
    unconfirmed one is not acknowledged, its publisher is disconnected and resends."""
    ns = NatsServer(tmp_path).start()
    made.append(ns)
    a, b = (node(tmp_path, n, ns.url, workers) for n in "ab")
    for n in (a, b):
        made.append(n.start())
    wait_for(lambda: joined(a) and joined(b), what="joined")
    t = "nf/restart"
    sub = client(made, b, cid="restart-sub", clean=False)
    sub.subscribe(t, 1)
    pub = Publisher(a, "restart-pub")
    try:
        n = 120
        for i in range(n):
            if i == 40:
                ns.stop()
            if i == 60:
                ns.start()
            pub.publish(t, i)
            time.sleep(0.02)
        wait_for(lambda: len(pub.acked) == n, timeout=30, what="every message acknowledged")
    finally:
        pub.close()
    got: set[int] = set()
    deadline = time.monotonic() + 10
    while not set(range(n)) <= got and time.monotonic() < deadline:
        try:
            got.add(int(sub.get(timeout=0.5).payload))
        except AssertionError:
            pass
    assert set(range(n)) - got == set()


def test_three_server_nats_cluster_survives_a_server(
        tmp_path: Path, workers: int, made: list[Any]) -> None:
    """Nodes on a 3-server NATS cluster: retained messages live in an R3 bucket, so
    they and cross-node routing outlive the loss of one NATS server."""
    servers = cluster_of(tmp_path, 3)
    made += servers
    urls = [s.url for s in servers]
    nodes = [node(tmp_path, name, ",".join(urls[i:] + urls[:i]), workers)
             for i, name in enumerate("abc")]
    for n in nodes:
        made.append(n.start())
    a, b, c = nodes
    wait_for(lambda: all(joined(n) for n in nodes), timeout=30, what="joined")
    sub = client(made, c)
    sub.subscribe("nf/r3", 1)
    wait_for(lambda: crosses(client(made, a), sub, "nf/r3"), what="a to c")
    wait_for(lambda: _publish_retained(made, a), timeout=20, what="retained stored")
    assert asyncio.run(_replicas(urls[1], "KV_bwfast_retained")) == 3
    servers[0].stop()
    wait_for(lambda: crosses(client(made, b), sub, "nf/r3"), timeout=20, what="b to c")
    for n in nodes:
        wait_for(lambda n=n: _has_retained(made, n), timeout=20, what="retained everywhere")
    # A new node, with an empty data dir, gets the retained message from the bucket.
    d = node(tmp_path, "d", ",".join(urls[1:]), workers)
    made.append(d.start())
    wait_for(lambda: _has_retained(made, d), timeout=20, what="retained on a new node")


async def _replicas(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.config.num_replicas or 1)
    finally:
        await nc.close()


def _publish_retained(made: list[Any], b: Broker) -> bool:
    client(made, b).publish("nf/r3/kept", b"r3", 1, retain=True)
    return True


def _has_retained(made: list[Any], b: Broker) -> bool:
    c = client(made, b)
    c.subscribe("nf/r3/kept", 1)
    try:
        return c.get(timeout=0.5).payload == b"r3"
    except AssertionError:
        return False


def test_credentials_and_acl_rules_made_on_one_node_apply_on_every_node(
        tmp_path: Path, workers: int, made: list[Any]) -> None:
    """add_auth / add_acl / remove_auth through the REST API of node a: node b
    (authentication and ACL on, default deny) accepts, authorizes and then
    refuses that user."""
    ns = NatsServer(tmp_path).start()
    made.append(ns)
    api_port = free_port()
    secure = {"authentication.enabled": True, "acl.enabled": True}
    a = node(tmp_path, "a", ns.url, workers, **secure, **{
        "api.enabled": True, "api.port": api_port, "api.password": "sync-admin"})
    b = node(tmp_path, "b", ns.url, workers, **secure)
    made += [a.start(), b.start()]
    wait_for(lambda: joined(a) and joined(b), what="joined")
    http = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    wait_for(lambda: _api_up(http), what="REST API")
    token = http.post("/bwiot/api/v1/login",
                      json={"username": "admin", "password": "sync-admin"}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}

    def post(path: str, **fields: Any) -> None:
        r = http.post(f"/bwiot/api/v1/{path}", headers=auth, json=fields)
        assert r.status_code == 200, r.text

    post("add_auth", username="dev1", password="pw-1")
    wait_for(lambda: _connects(made, b, "dev1", "pw-1") == 0, what="dev1 accepted on b")
    post("add_acl", username="dev1", topic="sync/#", access="readwrite")

    def authorized_on_b() -> bool:
        c = _user_client(made, b, "dev1", "pw-1")
        c.connect()
        c.subscribe("sync/x", 1)
        c.publish("sync/x", b"mine", 1)
        try:
            return c.get(timeout=0.5).payload == b"mine"
        except AssertionError:
            return False
        finally:
            c.close()

    wait_for(authorized_on_b, what="dev1's ACL rule applied on b")
    post("remove_auth", username="dev1")
    wait_for(lambda: _connects(made, b, "dev1", "pw-1") != 0, what="dev1 refused on b")
    http.close()


def _api_up(http: httpx.Client) -> bool:
    try:
        http.get("/bwiot/api/v1/")
        return True
    except httpx.HTTPError:
        return False


def _user_client(made: list[Any], b: Broker, user: str, password: str) -> PahoClient:
    c = PahoClient(b.host, b.port, f"nf-{next(_ids)}", protocol=V311)
    made.append(c)
    c.client.username_pw_set(user, password)
    return c


def _connects(made: list[Any], b: Broker, user: str, password: str) -> int:
    """The CONNACK return code for these credentials on node b."""
    c = _user_client(made, b, user, password)
    try:
        _, rc, _ = c.connect()
    except AssertionError:
        return -1
    finally:
        c.close()
    return int(rc)


def test_durable_sessions_resume_on_another_node_when_theirs_is_gone(
        tmp_path: Path, workers: int, made: list[Any]) -> None:
    """[cluster] durable_sessions = true: a persistent session on node c with queued
    QoS 1 messages is resumed on node b after c is SIGKILLed (session present,
    the queue delivered); with it off the same client gets a new session (see
    test_node_killed_under_traffic)."""
    ns = NatsServer(tmp_path).start()
    made.append(ns)
    a, b, c = (node(tmp_path, n, ns.url, workers, **{"cluster.durable_sessions": True})
               for n in "abc")
    for n in (a, b, c):
        made.append(n.start())
    wait_for(lambda: all(joined(n) for n in (a, b, c)), what="joined")
    t = "nf/durable"
    first = client(made, c, cid="durable-1", clean=False)
    first.subscribe(t, 1)
    first.close()
    pub = client(made, a)
    for i in range(5):
        pub.publish(t, f"d{i}".encode(), 1)
    time.sleep(1.5)  # the snapshot is written within 0.5 s of a change
    c.kill9()
    again = PahoClient(b.host, b.port, "durable-1", clean=False)
    made.append(again)
    present, rc, _ = again.connect()
    assert rc == 0 and present
    assert [m.payload for m in again.get_n(5)] == [f"d{i}".encode() for i in range(5)]
    pub.publish(t, b"after", 1)  # the subscription lives on node b now
    assert again.get().payload == b"after"


def test_nats_credentials(tmp_path: Path, workers: int, made: list[Any]) -> None:
    """[cluster] user/password: right ones join; wrong ones are a NATS that can't be
    reached (one line, the password never in it), the node serves its own clients."""
    ns = NatsServer(tmp_path, extra=["--user", "bw", "--pass", "nats-pw-1"]).start()
    made.append(ns)
    good = node(tmp_path, "good", ns.url, workers,
                **{"cluster.user": "bw", "cluster.password": "nats-pw-1"})
    bad = node(tmp_path, "bad", ns.url, workers,
               **{"cluster.user": "bw", "cluster.password": "wrong-pw-2"})
    made += [good.start(), bad.start()]
    wait_for(lambda: joined(good), what="the node with the right password joined")
    text = bad.log_path.read_text()
    assert not joined(bad)
    assert len([ln for ln in text.splitlines() if "cannot reach NATS" in ln]) == 1
    assert "wrong-pw-2" not in text and "nats-pw-1" not in good.log_path.read_text()
    c = client(made, bad)
    c.subscribe("nf/alone", 1)
    client(made, bad).publish("nf/alone", b"still here", 1)
    assert c.get().payload == b"still here"


def test_nats_over_mutual_tls(tmp_path: Path, workers: int, made: list[Any]) -> None:
    """[cluster] tls_cafile / tls_certfile / tls_keyfile: a node with a client
    certificate joins a NATS that requires one; a node without is refused (one line)."""
    pki = make_pki(tmp_path / "pki")
    ns = NatsServer(tmp_path, extra=["--tlscert", str(pki.server.cert), "--tlskey",
                                     str(pki.server.key), "--tlscacert", str(pki.ca),
                                     "--tlsverify"])
    made.append(ns.start())
    url = f"tls://127.0.0.1:{ns.port}"
    good = node(tmp_path, "good", url, workers, **{
        "cluster.tls_cafile": pki.ca, "cluster.tls_certfile": pki.client.cert,
        "cluster.tls_keyfile": pki.client.key})
    bare = node(tmp_path, "bare", url, workers, **{"cluster.tls_cafile": pki.ca})
    made += [good.start(), bare.start()]
    wait_for(lambda: joined(good), what="the node with a client certificate joined")
    assert not joined(bare)

    def refusals() -> list[str]:
        return [ln for ln in bare.log_path.read_text().splitlines() if "cannot reach NATS" in ln]
    # The bare node's worker 0 says so once it has given up on its first try, which
    # may be after the good node joined.
    wait_for(refusals, what="the bare node's 'cannot reach NATS' line")
    time.sleep(1.0)
    lines = refusals()
    assert len(lines) == 1
