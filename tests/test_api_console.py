"""REST API: the management calls behind the console (`client`, `clear_queue`,
`clients/`, `retained/`, `retained_message`, `remove_retained`, `stats`) and
Prometheus `/metrics`, against the real API process of a running broker
(4 workers, and 1), with raw MQTT clients.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mqtt_helpers import V5, V311, RawClient
from prometheus_client.parser import text_string_to_metric_families
from test_api_support import ApiBroker, eventually, start_api_broker

pytestmark = pytest.mark.bwfast_only

SESSION_EXPIRY = 0x11


@pytest.fixture(scope="module", params=[4, 1], ids=["workers4", "workers1"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[ApiBroker]:
    yield from start_api_broker(tmp_path_factory.mktemp("api_console"), request.param)


class Raw:
    def __init__(self, api: ApiBroker) -> None:
        self.api = api
        self.tag = uuid.uuid4().hex[:8]
        self.open: list[RawClient] = []

    def cid(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def topic(self, name: str) -> str:
        return f"console/{self.tag}/{name}"

    def connect(self, name: str, version: int = V311, **kw: Any) -> RawClient:
        c = RawClient("127.0.0.1", self.api.port, version=version)
        self.open.append(c)
        assert c.connect(self.cid(name), **kw).rc == 0
        return c

    def close(self) -> None:
        for c in self.open:
            c.close()


@pytest.fixture
def raw(api: ApiBroker) -> Iterator[Raw]:
    r = Raw(api)
    yield r
    r.close()


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["bwapi-status"] == "success", body
    return body


def reason(r: httpx.Response) -> tuple[int, str]:
    return r.status_code, r.json()["bwapi-status-reason"]


# ------------------------------------------------------------------ client detail


def test_client_detail_of_a_connected_v5_client(api: ApiBroker, raw: Raw) -> None:
    c = raw.connect("dev", V5, keepalive=42, will_topic=raw.topic("will"),
                    will_payload=b"bye", will_qos=1, props={SESSION_EXPIRY: 300})
    assert c.subscribe([(raw.topic("cmd/#"), 1), (raw.topic("cfg"), 2)]).codes == [1, 2]
    body = ok(api.get("client", clientid=raw.cid("dev")))
    d = body["client"]
    assert d["device_id"] == raw.cid("dev")
    assert d["connected"] is True and d["status"] == "active"
    assert d["protocol_version"] == "5.0"
    assert d["listener"] == "mqtt" and d["address"].startswith("127.0.0.1:")
    assert d["keepalive"] == 42
    assert d["persistent"] is True and d["session_expiry"] == 300
    assert {(s["topic"], s["QoS"]) for s in d["subscriptions"]} == {
        (raw.topic("cmd/#"), 1), (raw.topic("cfg"), 2)}
    assert (d["queued"], d["inflight"]) == (0, 0)
    assert d["will"]["topic"] == raw.topic("will") and d["will"]["message"] == "bye"
    assert d["will"]["QoS"] == 1
    assert isinstance(d["worker"], int)


def test_client_detail_of_a_v311_clean_client_and_unknown(api: ApiBroker, raw: Raw) -> None:
    raw.connect("clean", V311, keepalive=7)
    d = ok(api.get("client", clientid=raw.cid("clean")))["client"]
    assert (d["protocol_version"], d["keepalive"], d["persistent"], d["will"]) == (
        "3.1.1", 7, False, None)
    assert reason(api.get("client", clientid=raw.cid("nobody"))) == (
        404, f"Unknown client:{raw.cid('nobody')}")
    assert reason(api.get("client")) == (400, "Missing parameter:clientid")


def test_clear_queue_drops_the_offline_queue(api: ApiBroker, raw: Raw) -> None:
    sub = raw.connect("sleeper", V311, clean=False)
    assert sub.subscribe(raw.topic("q"), 1).codes == [1]
    sub.disconnect()
    sub.close()
    pub = raw.connect("pub")
    for k in range(3):
        pub.publish(raw.topic("q"), b"m%d" % k, qos=1, pid=k + 1)
    d = eventually(lambda: (x := ok(api.get("client", clientid=raw.cid("sleeper")))["client"])
                   ["queued"] == 3 and x)
    assert d["connected"] is False and d["persistent"] is True
    body = ok(api.post("clear_queue", clientid=raw.cid("sleeper")))
    assert body["cleared"] == 3
    assert ok(api.get("client", clientid=raw.cid("sleeper")))["client"]["queued"] == 0
    back = raw.connect("sleeper", V311, clean=False)
    back.expect_nothing(0.5)
    assert reason(api.post("clear_queue", clientid=raw.cid("nobody"))) == (
        404, f"No session for client:{raw.cid('nobody')}")


# ------------------------------------------------------------------ console device list


def test_clients_filter_search_sort_page(api: ApiBroker, raw: Raw) -> None:
    raw.connect("b-on", username="zed")
    gone = raw.connect("a-off", username="amy")
    gone.disconnect()
    gone.close()

    def listed(**q: Any) -> list[str]:
        rows = ok(api.get("clients", search=raw.tag, **q))["data"]
        return [r["device_id"] for r in rows]

    eventually(lambda: listed(status="inactive") == [raw.cid("a-off")])
    assert listed(status="active") == [raw.cid("b-on")]
    assert listed(sort="id") == [raw.cid("a-off"), raw.cid("b-on")]
    assert listed(sort="id", order="desc") == [raw.cid("b-on"), raw.cid("a-off")]
    body = ok(api.get("clients", search=raw.tag, sort="id", limit=1, page=2))
    assert [r["device_id"] for r in body["data"]] == [raw.cid("b-on")]
    assert (body["total"], body["page"], body["current_page"]) == (2, 2, 2)
    by_user = ok(api.get("clients", search="ZED"))["data"]
    assert raw.cid("b-on") in [r["device_id"] for r in by_user]
    assert [r["username"] for r in by_user if r["device_id"] == raw.cid("b-on")] == ["zed"]
    assert reason(api.get("clients", status="gone")) == (400, "Invalid parameter:status")
    assert reason(api.get("clients", sort="size")) == (400, "Invalid parameter:sort")


# ------------------------------------------------------------------ retained


def test_retained_list_page_view_and_remove(api: ApiBroker, raw: Raw) -> None:
    pub = raw.connect("ret")
    for name, payload in (("a", b"one"), ("b", b"\xff\x00"), ("c", b"x" * 2000)):
        pub.publish(raw.topic(f"r/{name}"), payload, qos=1, retain=True)
    prefix = raw.topic("r/")
    body = eventually(lambda: (x := ok(api.get("retained", prefix=prefix))).get("retained")
                      and len(x["retained"]) == 3 and x)
    rows = body["retained"]
    assert [r["topic"] for r in rows] == [prefix + "a", prefix + "b", prefix + "c"]
    assert rows[0]["message"] == "one" and rows[0]["QoS"] == 1
    assert rows[1] == {**rows[1], "message": "/wA=", "encoding": "base64"}
    assert rows[2]["truncated"] is True and rows[2]["size"] == 2000
    first = ok(api.get("retained", prefix=prefix, limit=2))
    assert len(first["retained"]) == 2 and first["more"] is True
    rest = ok(api.get("retained", prefix=prefix, limit=2, after=prefix + "b"))
    assert [r["topic"] for r in rest["retained"]] == [prefix + "c"] and rest["more"] is False
    full = ok(api.get("retained_message", topic=prefix + "c"))["retained"]
    assert full["message"] == "x" * 2000 and "truncated" not in full

    watcher = raw.connect("watch")
    assert watcher.subscribe(prefix + "a", 0).codes == [0]
    assert watcher.expect_publish().payload == b"one"
    ok(api.post("remove_retained", topic=prefix + "a"))
    eventually(lambda: [r["topic"] for r in ok(api.get("retained", prefix=prefix))["retained"]]
               == [prefix + "b", prefix + "c"])
    late = raw.connect("late")
    late.subscribe(prefix + "a", 0)
    late.expect_nothing(0.3)
    assert reason(api.post("remove_retained", topic=prefix + "a")) == (
        404, f"No retained message:{prefix}a")
    assert reason(api.post("remove_retained", topic="a/+")) == (400, "Invalid parameter:topic")
    assert api.get("retained", prefix=raw.topic("none/")).json() == {
        "bwapi-status": "success", "bwapi-status-reason": "no_data_found"}


# ------------------------------------------------------------------ stats and /metrics


def _metrics(api: ApiBroker, **headers: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    r = api.http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_stats_json(api: ApiBroker, raw: Raw) -> None:
    before = ok(api.get("stats"))["stats"]
    raw.connect("s1").publish(raw.topic("s"), b"12345", qos=1)
    after = eventually(lambda: (x := ok(api.get("stats", series=1))["stats"])
                       ["messages_in"] > before["messages_in"] and x)
    assert after["connected"] >= 1 and after["listeners"].get("mqtt", 0) >= 1
    assert sum(w["connected"] for w in after["workers"]) == after["connected"]
    assert after["messages_in_qos1"] == before["messages_in_qos1"] + 1
    assert after["bytes_in"] > before["bytes_in"]
    for key in ("messages_out", "bytes_out", "retained", "subscriptions", "queued",
                "dropped", "uptime", "version"):
        assert key in after
    series = after["series"]
    assert len(series["t"]) == len(series["messages_in"]) >= 1


def test_metrics_count_what_was_sent(api: ApiBroker, raw: Raw) -> None:
    before = _metrics(api)
    sub = raw.connect("m-sub")
    assert sub.subscribe([(raw.topic("m"), 2)]).codes == [2]
    pub = raw.connect("m-pub")
    for k in range(5):
        pub.publish(raw.topic("m"), b"abcd", qos=1, pid=k + 1)
    for k in range(3):
        pub.publish(raw.topic("m"), b"abcd", qos=2, pid=k + 10)
    assert sorted(sub.expect_publish().qos for _ in range(8)) == [1] * 5 + [2] * 3
    api.get("stats")
    assert api.get("client", clientid=raw.cid("nobody")).status_code == 404
    after = _metrics(api)

    def delta(name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        return after[name].get(key, 0) - before.get(name, {}).get(key, 0)

    assert delta("bwfast_messages_received_total", qos="1") == 5
    assert delta("bwfast_messages_received_total", qos="2") == 3
    assert delta("bwfast_payload_bytes_received_total", qos="1") == 20
    # the subscriber got each at the QoS it was published with (its packets: 2 + 2 + topic
    # + 2 (packet id) + 4 bytes of payload)
    packet = 2 + 2 + len(raw.topic("m")) + 2 + 4
    assert delta("bwfast_messages_sent_total", qos="1") == 5
    assert delta("bwfast_messages_sent_total", qos="2") == 3
    assert delta("bwfast_publish_bytes_sent_total", qos="1") == 5 * packet
    assert delta("bwfast_publish_bytes_sent_total", qos="2") == 3 * packet
    assert delta("bwfast_connects_total") >= 1
    assert after["bwfast_connections"][(("listener", "mqtt"),)] >= 1
    assert delta("bwfast_rest_requests_total", endpoint="/bwiot/api/v1/stats",
                 method="GET", status="200") == 1
    assert delta("bwfast_rest_requests_total", endpoint="/bwiot/api/v1/client",
                 method="GET", status="404") == 1
    # the device registry rows of these clients are committed within 0.5 s
    eventually(lambda: _metrics(api)["bwfast_lmdb_commit_seconds_count"][()] > 0)
    assert after["bwfast_lmdb_commit_seconds_bucket"][(("le", "+Inf"),)] == after[
        "bwfast_lmdb_commit_seconds_count"][()]
    assert after["bwfast_lmdb_bytes"][()] > 0
    procs = {dict(k)["process"] for k in after["bwfast_process_cpu_seconds_total"]}
    assert {"api", "supervisor", "worker-0"} <= procs
    assert all(v > 0 for v in after["bwfast_process_resident_memory_bytes"].values())
    for name in ("bwfast_retained_messages", "bwfast_subscriptions", "bwfast_queued_messages",
                 "bwfast_inflight_messages", "bwfast_messages_dropped_total",
                 "bwfast_messages_forwarded_total", "bwfast_connect_refusals_total",
                 "bwfast_bytes_received_total", "bwfast_bytes_sent_total"):
        assert name in after, name


def test_metrics_refusals_counted(tmp_path_factory: pytest.TempPathFactory) -> None:
    """With authentication on, a refused CONNECT is counted; metrics_auth = true
    makes the scrape need the token."""
    for api in start_api_broker(tmp_path_factory.mktemp("metrics_auth"), 1,
                                **{"authentication.enabled": True, "api.metrics_auth": True}):
        assert api.http.get("/metrics").status_code == 401
        bad = RawClient("127.0.0.1", api.port, version=V311)
        try:
            assert bad.connect("intruder", username="x", password=b"y").rc != 0
        finally:
            bad.close()
        got = _metrics(api, Authorization=f"Bearer {api.token}")
        assert got["bwfast_connect_refusals_total"][()] == 1


# ------------------------------------------------------------------ console files and the live stream


def test_console_page_and_only_its_files_are_served(api: ApiBroker) -> None:
    r = api.http.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/static/console.js" in r.text
    for old in ("/bwiot", "/bwiot/"):
        moved = api.http.get(old)
        assert (moved.status_code, moved.headers["location"]) == (302, "/")
    for name, kind in (("console.js", "javascript"), ("console.css", "text/css"),
                       ("vendor/uPlot.iife.min.js", "javascript"),
                       ("vendor/uPlot.LICENSE", "text/plain")):
        got = api.http.get(f"/static/{name}")
        assert got.status_code == 200 and kind in got.headers["content-type"], name
    assert "MIT License" in api.http.get("/static/vendor/uPlot.LICENSE").text
    for bad in ("../app.py", "..%2Fapp.py", "index.html.bak", "vendor/../../live.py"):
        got = api.http.get(f"/static/{bad}")
        assert got.status_code == 404, bad
        assert got.json()["bwapi-status"] == "fail"


def test_live_streams_matching_messages_as_events(api: ApiBroker, raw: Raw) -> None:
    import base64
    import json

    assert api.http.get("/bwiot/api/v1/live", params={"filter": "a/#"}).status_code == 401
    assert reason(api.get("live", filter="a/#/b")) == (400, "Invalid parameter:filter")
    pub = raw.connect("live-pub")
    pub.publish(raw.topic("live/kept"), b"old", qos=1, retain=True)
    events: list[dict[str, Any]] = []
    with api.http.stream("GET", "/bwiot/api/v1/live", params={"filter": raw.topic("live/#")},
                         headers=api.auth()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1].get("subscribed"):
                    pub.publish(raw.topic("live/t"), b"\x00\xffdata", qos=2, pid=7)
            if len(events) == 3:
                break
    assert events[0] == {"subscribed": raw.topic("live/#")}
    kept, new = events[1], events[2]
    assert (kept["topic"], kept["retain"], base64.b64decode(kept["payload"])) == (
        raw.topic("live/kept"), True, b"old")
    assert (new["topic"], new["qos"], new["retain"], base64.b64decode(new["payload"])) == (
        raw.topic("live/t"), 2, False, b"\x00\xffdata")


def test_console_user_is_replaced_at_each_start_and_removed_at_stop(tmp_path: Any) -> None:
    """The Live view's own MQTT user (api/live.py): one at a time, a killed API's
    left-over is removed by the next start, a device's credentials are untouched."""
    from api.live import is_internal, provision, unprovision
    from bwfast.acl import stored_rules
    from bwfast.auth import hash_password, verify_password
    from bwfast.config import load_config
    from bwfast.store import Store

    conf = tmp_path / "broker.conf"
    conf.write_text("[authentication]\nenabled = true\n[acl]\nenabled = true\n")
    cfg = load_config(str(conf), {"data_dir": str(tmp_path / "data")})
    store = Store(cfg.broker.data_dir)
    try:
        store.put("auth", b"device-1", hash_password("pw"))
        store.commit()
        first = provision(cfg, store)  # then "killed": no unprovision
        second = provision(cfg, store)
        users = {k.decode(): rec for k, rec in store.items("auth")}
        assert set(users) == {"device-1", second.username}
        assert first.username != second.username
        assert is_internal(users[second.username]) and not is_internal(users["device-1"])
        assert verify_password(users[second.username], second.password)
        assert [(r.who, r.topic, r.access) for r in stored_rules(store)] == [
            (second.username, "#", "read")]
        unprovision(store, second)
        assert [k for k, _ in store.items("auth")] == [b"device-1"]
        assert stored_rules(store) == []
    finally:
        store.close()
