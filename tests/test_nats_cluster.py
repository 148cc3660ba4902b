"""Three bwfast nodes joined through a real nats-server act as one broker (issue 15).

Nodes a, b and c each have their own data dir, ports and LMDB; they share
nothing but the NATS server (JetStream on, its own store dir).
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Broker, free_port
from mqtt_helpers import V5, V311, PahoClient
from nats_support import NatsServer, node, wait_for

_ids = itertools.count()
API_PASSWORD = "nats-test-admin"


class Nodes:
    def __init__(self, root: Path, workers: int) -> None:
        self.nats = NatsServer(root).start()
        self.api_port = free_port()
        api = {"api.enabled": True, "api.port": self.api_port, "api.password": API_PASSWORD}
        self.a, self.b, self.c = (node(root, n, self.nats.url, workers, **(api if n == "a" else {}))
                                  for n in "abc")
        self.all = [self.a, self.b, self.c]
        for b in self.all:
            b.start()
        self.clients: list[PahoClient] = []

    def client(self, broker: Broker, *, cid: str | None = None, clean: bool = True,
               protocol: int = V311, connect: bool = True) -> PahoClient:
        c = PahoClient(broker.host, broker.port, cid or f"nc-{next(_ids)}", clean=clean,
                       protocol=protocol)
        self.clients.append(c)
        if connect:
            _, rc, _ = c.connect()
            assert rc == 0
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            c.close()
        self.clients.clear()

    def stop(self) -> None:
        self.close_clients()
        for b in self.all:
            b.kill9() if not b.alive() else b.stop()
        self.nats.stop()


@pytest.fixture(scope="module")
def nodes(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    n = Nodes(tmp_path_factory.mktemp("nats"), workers)
    wait_for(lambda: _joined(n), what="three nodes joined")
    yield n
    n.stop()


@pytest.fixture
def cl(nodes: Nodes, request: pytest.FixtureRequest) -> Iterator[Nodes]:
    yield nodes
    nodes.close_clients()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for b in nodes.all:
            print(f"\n--- {b.root}:\n{b.log_tail(40)}")


def _joined(n: Nodes) -> bool:
    return all("joined through NATS" in b.log_path.read_text() for b in n.all)


def topic(tag: str) -> str:
    return f"nc/{tag}/{next(_ids)}"


@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_publish_reaches_subscribers_on_every_node_in_order(cl: Nodes, version: int) -> None:
    """QoS 0/1/2 from node a reach subscribers on b and c, in the order sent (one
    publisher, one topic); SUBACK already has the route on every node."""
    t = topic("order")
    subs = [cl.client(b, protocol=version) for b in (cl.b, cl.c)]
    for s in subs:
        s.subscribe(t, 2)
    pub = cl.client(cl.a, protocol=version)
    sent = [(f"m{i}".encode(), i % 3) for i in range(30)]
    for payload, qos in sent:
        pub.publish(t, payload, qos)
    for s in subs:
        got = [(m.payload, m.qos) for m in s.get_n(len(sent))]
        # paho hands a QoS 2 message to the application at PUBREL, so a QoS 0/1 one
        # sent after it on the wire may come first: the order is checked per QoS.
        for qos in (0, 1, 2):
            assert [g for g in got if g[1] == qos] == [x for x in sent if x[1] == qos]


def test_publish_crosses_once_per_node_not_per_subscriber(cl: Nodes) -> None:
    """Five subscribers on node b: each message travels through NATS once."""
    t = topic("once")
    subs = [cl.client(cl.b) for _ in range(5)]
    for s in subs:
        s.subscribe(t, 1)
    pub = cl.client(cl.a)
    payload = b"x" * 4000
    n = 20
    before = cl.nats.varz()["in_bytes"]
    for _ in range(n):
        pub.publish(t, payload, 1)
    for s in subs:
        assert len(s.get_n(n)) == n
    crossed = cl.nats.varz()["in_bytes"] - before
    assert n * len(payload) <= crossed < 2 * n * len(payload), crossed


def test_shared_subscription_balances_over_members_on_every_node(cl: Nodes) -> None:
    """$share/g/t with members on a, b and c: each message to exactly one member,
    and every member (whatever its node) gets some."""
    t = topic("shared")
    members = [cl.client(b) for b in (cl.a, cl.b, cl.b, cl.c)]
    for m in members:
        m.subscribe(f"$share/g/{t}", 1)
    pub = cl.client(cl.a)
    n = 60
    for i in range(n):
        pub.publish(t, str(i).encode(), 1)
    got: list[bytes] = []
    counts = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = [m.messages.qsize() for m in members]
        if sum(counts) >= n:
            break
    for m in members:
        while not m.messages.empty():
            got.append(m.messages.get().payload)
    assert sorted(got) == sorted(str(i).encode() for i in range(n))
    assert all(c > 0 for c in counts), counts


def test_unsubscribe_on_one_node_stops_crossing(cl: Nodes) -> None:
    t = topic("unsub")
    sub = cl.client(cl.b)
    sub.subscribe(t, 1)
    pub = cl.client(cl.a)
    pub.publish(t, b"1", 1)
    assert sub.get().payload == b"1"
    sub.unsubscribe(t)
    big = b"y" * 20000

    def stays_home() -> bool:  # route removals reach other nodes a moment after UNSUBACK
        before = cl.nats.varz()["in_bytes"]
        pub.publish(t, big, 1)
        return bool(cl.nats.varz()["in_bytes"] - before < len(big))

    wait_for(stays_home, timeout=5, what="the route removed on node a")
    before = cl.nats.varz()["in_bytes"]
    for _ in range(5):
        pub.publish(t, big, 1)
    assert cl.nats.varz()["in_bytes"] - before < len(big)  # nobody on b or c matches now


def test_will_published_on_another_node(cl: Nodes) -> None:
    t = topic("will")
    sub = cl.client(cl.c)
    sub.subscribe(t, 1)
    dying = cl.client(cl.a, connect=False)
    dying.will(t, b"gone", 1)
    dying.connect()
    dying.client.socket().close()  # no DISCONNECT: the will goes out
    assert sub.get().payload == b"gone"


def _retained_on(cl: Nodes, broker: Broker, t: str, want: bytes | None) -> bool:
    """A new subscriber on ``broker`` gets ``want`` as the retained message of t (None: none)."""
    c = cl.client(broker)
    c.subscribe(t, 1)
    try:
        got = c.get(timeout=0.5).payload
    except AssertionError:
        got = None
    c.close()
    return got == want


def test_retained_message_is_visible_from_every_node(cl: Nodes) -> None:
    t = topic("retained")
    cl.client(cl.a).publish(t, b"kept", 1, retain=True)
    for b in (cl.a, cl.b, cl.c):
        wait_for(lambda b=b: _retained_on(cl, b, t, b"kept"), what=f"retained on {b.root.name}")
    cl.client(cl.b).publish(t, b"", 1, retain=True)  # cleared on another node [MQTT-3.3.1-6]
    for b in (cl.a, cl.b, cl.c):
        wait_for(lambda b=b: _retained_on(cl, b, t, None), what=f"cleared on {b.root.name}")


def test_client_id_is_unique_across_nodes(cl: Nodes) -> None:
    """CONNECT on node b with a client id connected on node a closes the one on a
    [MQTT-3.1.4-3]."""
    cid = f"uniq-{next(_ids)}"
    first = cl.client(cl.a, cid=cid)
    second = cl.client(cl.b, cid=cid)
    assert first.disconnected.wait(5), "the connection on node a stayed open"
    assert second.connected.is_set() and not second.disconnected.is_set()


def test_persistent_session_moves_to_another_node(cl: Nodes) -> None:
    """A persistent session held on node a, with queued QoS 1 messages, is taken over
    by a CONNECT on node c: session present, the queued messages delivered in order."""
    cid = f"move-{next(_ids)}"
    t = topic("move")
    first = cl.client(cl.a, cid=cid, clean=False)
    first.subscribe(t, 1)
    first.close()
    pub = cl.client(cl.b)
    for i in range(5):
        pub.publish(t, f"q{i}".encode(), 1)
    again = cl.client(cl.c, cid=cid, clean=False, connect=False)
    present, rc, _ = again.connect()
    assert rc == 0 and present
    assert [m.payload for m in again.get_n(5)] == [f"q{i}".encode() for i in range(5)]
    pub.publish(t, b"after", 1)  # its subscription lives on node c now
    assert again.get().payload == b"after"


def _sys_value(c: PahoClient, topic_name: str) -> str:
    """The latest value of a $SYS topic (retained, republished every second)."""
    c.subscribe(topic_name, 0)
    value = c.get(timeout=3).payload.decode()
    c.unsubscribe(topic_name)
    while not c.messages.empty():
        c.messages.get()
    return value


def test_sys_has_each_nodes_figures_and_cluster_totals(cl: Nodes) -> None:
    """$SYS on any node: every node's figures under its name, plus their sums."""
    on_b = [cl.client(cl.b) for _ in range(3)]
    watcher = cl.client(cl.a)
    wait_for(lambda: _sys_value(watcher, "$SYS/broker/cluster/nodes") == "3", what="3 nodes")
    wait_for(lambda: int(_sys_value(watcher, "$SYS/broker/nodes/b/clients/connected")) >= 3,
             what="b's clients seen on a")

    def totals_add_up() -> bool:
        per_node = [int(_sys_value(watcher, f"$SYS/broker/nodes/{n}/clients/connected"))
                    for n in "abc"]
        return sum(per_node) == int(_sys_value(watcher, "$SYS/broker/cluster/clients/connected"))

    wait_for(totals_add_up, what="cluster total = sum of the nodes")
    assert on_b


def test_rest_on_one_node_sees_and_reaches_clients_of_every_node(cl: Nodes) -> None:
    """client_count counts every node's clients; send_client reaches a device
    connected to another node; send_all is an ordinary publish, routed everywhere."""
    http = httpx.Client(base_url=f"http://127.0.0.1:{cl.api_port}", timeout=10)
    wait_for(lambda: _api_up(http), what="the REST API of node a")
    token = http.post("/bwiot/api/v1/login",
                      json={"username": "admin", "password": API_PASSWORD}).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}

    def count() -> int:
        r = http.get("/graph/client_count", headers=auth)
        assert r.status_code == 200, r.text
        return int(r.json()["count"])

    base = count()
    far = cl.client(cl.c, cid=f"rest-{next(_ids)}")
    cl.client(cl.b)
    wait_for(lambda: count() == base + 2, what="clients of b and c counted on a")
    r = http.post("/bwiot/api/v1/send_client", headers=auth,
                  json={"clientid": far.client._client_id.decode(), "topic": "rest/direct",
                        "message": "hello", "qos": 1})
    assert r.status_code == 200, r.text
    got = far.get()
    assert (got.topic, got.payload) == ("rest/direct", b"hello")
    r = http.post("/bwiot/api/v1/send_client", headers=auth,
                  json={"clientid": "nobody-anywhere", "topic": "rest/direct", "message": "x"})
    assert r.status_code == 404
    t = topic("sendall")
    far.subscribe(t, 1)
    r = http.post("/bwiot/api/v1/send_all", headers=auth,
                  json={"topic": t, "message": "to all", "qos": 1})
    assert r.status_code == 200, r.text
    assert far.get().payload == b"to all"
    far_id = far.client._client_id.decode()
    willing = cl.client(cl.b, cid=f"rest-will-{next(_ids)}", connect=False)
    willing.will("rest/will", b"bye", 1)
    willing.connect()

    def listed(path: str, **params: object) -> str:
        r = http.get(f"/bwiot/api/v1/{path}", headers=auth, params=params)
        return r.text if r.status_code == 200 else ""

    wait_for(lambda: far_id in listed("devices", limit=1000), what="c's device listed on a")
    wait_for(lambda: far_id in listed("connected_devices"), what="c's device connected")
    wait_for(lambda: t in listed("subscriptions"), what="c's subscription listed on a")
    wait_for(lambda: t in listed("subscriptions", device_id=far_id), what="by device id")
    wait_for(lambda: "rest/will" in listed("wills"), what="b's will listed on a")
    http.close()


def _api_up(http: httpx.Client) -> bool:
    try:
        http.get("/bwiot/api/v1/")
        return True
    except httpx.HTTPError:
        return False


def test_persistent_session_moves_between_nodes_under_traffic(cl: Nodes) -> None:
    """A persistent QoS 1 subscriber moves a -> c -> b -> a (takeovers) while node b's
    publisher streams QoS 1 to it: every message the publisher got a PUBACK for
    reaches the subscriber at least once (the old node forwards what still comes
    to it until the new node's route is everywhere)."""
    cid = f"mover-{next(_ids)}"
    t = topic("mover")
    subs = [cl.client(cl.a, cid=cid, clean=False)]
    subs[0].subscribe(t, 1)
    pub = cl.client(cl.b)
    acked: list[int] = []
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.is_set():
            pub.publish(t, str(i).encode(), 1)
            acked.append(i)
            i += 1

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        for target in (cl.c, cl.b, cl.a):
            time.sleep(0.7)
            nxt = cl.client(target, cid=cid, clean=False, connect=False)
            present, rc, _ = nxt.connect()
            assert rc == 0 and present
            subs.append(nxt)
        time.sleep(0.7)
    finally:
        stop.set()
        thread.join(15)
    got: set[int] = set()
    deadline = time.monotonic() + 10
    while not set(acked) <= got and time.monotonic() < deadline:
        for s in subs:
            while not s.messages.empty():
                got.add(int(s.messages.get().payload))
        time.sleep(0.1)
    assert len(acked) > 50, "too little traffic"
    assert sorted(set(acked) - got) == []
