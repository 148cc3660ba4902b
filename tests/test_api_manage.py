"""REST API: management calls of CONTRACT.md "Access control" (`kick`,
`add_acl` / `remove_acl` / `acls/`) and the strictness of every call
(`Invalid parameter:<name>` for a bad value, GET parameters from a body),
against the real API process of a running broker (4 workers, and 1).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_helpers import V5, V311, RawClient, parse_disconnect
from test_api_support import BASE, ApiBroker, eventually, fail, start_api_broker
from test_cluster_support import owner_pid

from api.app import create_app
from api.openapi import document
from api.workers import Workers
from bwfast.config import load_config
from bwfast.store import Store

pytestmark = pytest.mark.bwfast_only

ADMINISTRATIVE_ACTION = 0x98
NO_DATA = {"bwapi-status": "success", "bwapi-status-reason": "no_data_found"}


@pytest.fixture(scope="module", params=[4, 1], ids=["workers4", "workers1"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[ApiBroker]:
    # The ACL is on as a deny list, so that rules added here can be seen taking effect.
    yield from start_api_broker(tmp_path_factory.mktemp("api_manage"), request.param,
                                **{"acl.enabled": True, "acl.default": "allow"})


class Raw:
    """Raw clients with ids and topics unique to one test, closed at the end."""

    def __init__(self, api: ApiBroker) -> None:
        self.api = api
        self.tag = uuid.uuid4().hex[:8]
        self.open: list[RawClient] = []

    def cid(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def topic(self, name: str) -> str:
        return f"manage/{self.tag}/{name}"

    def socket(self, version: int) -> RawClient:
        c = RawClient("127.0.0.1", self.api.port, version=version)
        self.open.append(c)
        return c

    def connect(self, name: str, version: int, **kw: Any) -> RawClient:
        c = self.socket(version)
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


def reason(r: Any) -> tuple[int, str]:
    return r.status_code, r.json()["bwapi-status-reason"]


# ------------------------------------------------------------------ kick


def test_kick_v5_gets_disconnect_0x98_and_its_will_is_published(
        api: ApiBroker, raw: Raw) -> None:
    watcher = raw.connect("watcher", V311)
    will_topic = raw.topic("will")
    assert watcher.subscribe(will_topic, 1).codes == [1]
    victim = raw.connect("v5", V5, will_topic=will_topic, will_payload=b"gone", will_qos=1)
    r = api.post("kick", clientid=raw.cid("v5"))
    assert (r.status_code, r.json()) == (200, {
        "bwapi-status-reason": f"Client disconnected:{raw.cid('v5')}",
        "bwapi-status": "success"})
    got = victim.wait_closed()
    assert len(got) == 1, got
    assert parse_disconnect(got[0], V5).rc == ADMINISTRATIVE_ACTION
    # Not a graceful DISCONNECT from the client: the will goes out (as EMQX does)
    msg = watcher.expect_publish()
    assert (msg.topic, msg.payload) == (will_topic, b"gone")
    # gone everywhere: a second kick finds nobody
    assert reason(api.post("kick", clientid=raw.cid("v5"))) == (
        404, f"Client not connected:{raw.cid('v5')}")


def test_kick_v311_is_closed_without_a_packet(api: ApiBroker, raw: Raw) -> None:
    victim = raw.connect("v3", V311)
    other = raw.connect("other", V311)
    assert api.post("kick", clientid=raw.cid("v3")).status_code == 200
    assert victim.wait_closed() == []  # v3.1.1 has no server DISCONNECT
    assert other.is_open()
    # the client may come back
    assert raw.connect("v3", V311).is_open()


def test_kick_finds_the_client_on_every_worker(api: ApiBroker, raw: Raw) -> None:
    """Clients spread over all the workers; each kick reaches the one that holds it."""
    workers = api.broker.workers
    by_worker: dict[int, tuple[str, RawClient, int]] = {}
    for i in range(80):
        version = V5 if i % 2 else V311
        c = raw.socket(version)
        pid = owner_pid(api.broker, c.sock)
        if pid in by_worker:
            c.close()
            continue
        cid = raw.cid(f"w{i}")
        assert c.connect(cid).rc == 0
        by_worker[pid] = (cid, c, version)
        if len(by_worker) == workers:
            break
    assert len(by_worker) == workers, f"clients landed on {len(by_worker)} of {workers} workers"
    for cid, client, version in by_worker.values():
        assert api.post("kick", clientid=cid).status_code == 200, cid
        got = client.wait_closed()
        if version == V5:
            assert [parse_disconnect(p, V5).rc for p in got] == [ADMINISTRATIVE_ACTION]
        else:
            assert got == []


def test_kick_unknown_offline_and_bad_input(api: ApiBroker, raw: Raw) -> None:
    gone = raw.connect("gone", V311)
    gone.send(bytes([0xE0, 0]))  # DISCONNECT
    gone.wait_closed()
    for cid in (raw.cid("gone"), raw.cid("never")):
        r = api.post("kick", clientid=cid)
        assert (r.status_code, r.json()) == (404, fail(f"Client not connected:{cid}"))
    assert reason(api.post("kick")) == (400, "Missing parameter:clientid")
    assert reason(api.post("kick", clientid="")) == (400, "Missing parameter:clientid")
    assert reason(api.post("kick", clientid=7)) == (400, "Invalid parameter:clientid")
    r = api.http.post(f"{BASE}/kick", json={"clientid": "x"})
    assert r.status_code == 401


# ------------------------------------------------------------------ ACL rules


def acl_rows(api: ApiBroker, **query: str) -> list[dict[str, str]]:
    body = api.get("acls/", **query).json()
    assert body["bwapi-status"] == "success", body
    return list(body.get("acls", []))


def test_acl_rules_added_listed_replaced_and_removed(api: ApiBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    user, cid = f"u-{tag}", f"c-{tag}"
    r = api.post("add_acl", username=user, topic=f"{tag}/#", access="read")
    assert r.status_code == 200, r.text
    assert r.json()["bwapi-status"] == "success"
    assert r.json()["bwapi-status-reason"] == f"Added ACL rule. username '{user}' read '{tag}/#'"
    assert api.post("add_acl", clientid=cid, topic=f"{tag}/c", access="write").status_code == 200
    r = api.post("add_acl", pattern=True, topic=f"{tag}/%u/%c", access="readwrite")
    assert r.status_code == 200, r.text
    # form fields work too
    r = api.http.post(f"{BASE}/add_acl", headers=api.auth(), data={
        "username": user, "topic": f"{tag}/secret", "access": "deny"})
    assert r.status_code == 200, r.text

    mine = [row for row in acl_rows(api) if row["topic"].startswith(tag)]
    assert sorted(mine, key=lambda row: row["topic"]) == [
        {"kind": "username", "who": user, "topic": f"{tag}/#", "access": "read"},
        {"kind": "pattern", "who": "", "topic": f"{tag}/%u/%c", "access": "readwrite"},
        {"kind": "clientid", "who": cid, "topic": f"{tag}/c", "access": "write"},
        {"kind": "username", "who": user, "topic": f"{tag}/secret", "access": "deny"},
    ]
    assert {row["topic"] for row in acl_rows(api, username=user)} == {f"{tag}/#", f"{tag}/secret"}
    assert acl_rows(api, clientid=cid) == [
        {"kind": "clientid", "who": cid, "topic": f"{tag}/c", "access": "write"}]
    # a GET with the filter in a JSON body, as the spec's examples send parameters
    r = api.http.request("GET", f"{BASE}/acls/", json={"clientid": cid}, headers=api.auth())
    assert r.json()["acls"] == [
        {"kind": "clientid", "who": cid, "topic": f"{tag}/c", "access": "write"}]
    assert api.get("acls/", username=f"nobody-{tag}").json() == NO_DATA

    # the same who and topic again: its access changes, no second row
    assert api.post("add_acl", username=user, topic=f"{tag}/#", access="deny").status_code == 200
    assert {(row["topic"], row["access"]) for row in acl_rows(api, username=user)} == {
        (f"{tag}/#", "deny"), (f"{tag}/secret", "deny")}

    # remove: access, when given, must match; an unknown rule is 404
    r = api.post("remove_acl", username=user, topic=f"{tag}/#", access="read")
    assert (r.status_code, r.json()) == (404, fail("No such ACL rule"))
    r = api.post("remove_acl", username=user, topic=f"{tag}/#", access="deny")
    assert r.status_code == 200, r.text
    assert r.json()["bwapi-status-reason"] == f"Removed ACL rule. username '{user}' '{tag}/#'"
    assert api.post("remove_acl", clientid=cid, topic=f"{tag}/c").status_code == 200
    assert api.post("remove_acl", pattern="true", topic=f"{tag}/%u/%c").status_code == 200
    assert api.post("remove_acl", username=user, topic=f"{tag}/secret").status_code == 200
    assert reason(api.post("remove_acl", username=user, topic=f"{tag}/secret")) == (
        404, "No such ACL rule")
    assert not [row for row in acl_rows(api) if row["topic"].startswith(tag)]


def test_acl_change_applies_at_once_to_a_live_subscription_on_another_worker(
        api: ApiBroker, raw: Raw) -> None:
    """add_acl reaches every worker (acl_reload): the subscriber, already
    subscribed to a wildcard filter, stops getting the denied topic without
    reconnecting, and gets it again once the rule is removed."""
    sub_sock = raw.socket(V5)
    sub_pid = owner_pid(api.broker, sub_sock.sock)
    assert sub_sock.connect(raw.cid("sub")).rc == 0
    base = raw.topic("room")
    assert sub_sock.subscribe(f"{base}/#", 0).codes == [0]
    pub = None
    for i in range(40):  # a publisher on another worker, when there is one
        c = raw.socket(V311)
        if api.broker.workers == 1 or owner_pid(api.broker, c.sock) != sub_pid:
            assert c.connect(raw.cid(f"pub{i}")).rc == 0
            pub = c
            break
        c.close()
    assert pub is not None

    def delivered(topic: str) -> bool:
        pub.publish(topic, b"x", qos=1)
        try:
            got = sub_sock.recv_packet(0.5)
        except TimeoutError:
            return False
        return got.ptype == 3

    assert delivered(f"{base}/secret")
    r = api.post("add_acl", clientid=raw.cid("sub"), topic=f"{base}/secret", access="deny")
    assert r.status_code == 200, r.text
    assert "detail" not in r.json(), r.json()  # every worker confirmed the reload
    assert not delivered(f"{base}/secret")
    assert delivered(f"{base}/open")
    assert api.post("remove_acl", clientid=raw.cid("sub"), topic=f"{base}/secret").status_code == 200
    assert delivered(f"{base}/secret")


@pytest.mark.parametrize("fields, expected", [
    ({"topic": "a", "access": "read"}, "Missing parameter:username|clientid|pattern"),
    ({"username": "u", "access": "read"}, "Missing parameter:topic"),
    ({"username": "u", "topic": "a"}, "Missing parameter:access"),
    ({"username": "", "topic": "a", "access": "read"}, "Missing parameter:username"),
    ({"username": "u", "clientid": "c", "topic": "a", "access": "read"},
     "Invalid parameter:clientid"),
    ({"pattern": False, "topic": "a", "access": "read"}, "Invalid parameter:pattern"),
    ({"pattern": "sometimes", "topic": "a", "access": "read"}, "Invalid parameter:pattern"),
    ({"username": 5, "topic": "a", "access": "read"}, "Invalid parameter:username"),
    ({"clientid": "a\x00b", "topic": "a", "access": "read"}, "Invalid parameter:clientid"),
    ({"username": "u", "topic": "a/#/b", "access": "read"}, "Invalid parameter:topic"),
    ({"username": "u", "topic": "a+", "access": "read"}, "Invalid parameter:topic"),
    ({"username": "u", "topic": ["a"], "access": "read"}, "Invalid parameter:topic"),
    ({"username": "u", "topic": "a", "access": "all"}, "Invalid parameter:access"),
    ({"username": "u", "topic": "a", "access": 1}, "Invalid parameter:access"),
])
def test_add_acl_bad_input(api: ApiBroker, fields: dict[str, Any], expected: str) -> None:
    r = api.post("add_acl", **fields)
    assert reason(r) == (400, expected), r.text
    assert r.json()["bwapi-status"] == "fail"


def test_acl_calls_need_a_token(api: ApiBroker) -> None:
    for path in ("add_acl", "remove_acl", "kick"):
        assert api.http.post(f"{BASE}/{path}", json={}).status_code == 401, path
    assert api.http.get(f"{BASE}/acls/").status_code == 401


# ------------------------------------------------------------------ strictness


@pytest.mark.parametrize("path, fields, expected", [
    ("send_all", {"topic": "a", "message": "m", "QoS": 5}, "Invalid parameter:QoS"),
    ("send_all", {"topic": "a", "message": "m", "qos": "1.5"}, "Invalid parameter:qos"),
    ("send_all", {"topic": "a/+", "message": "m"}, "Invalid parameter:topic"),
    ("send_all", {"topic": "a", "message": "m", "retain": "maybe"}, "Invalid parameter:retain"),
    ("send_all", {"topic": "a", "message": "m", "retain": 3}, "Invalid parameter:retain"),
    ("send_all", {"topic": "a", "message": 5}, "Invalid parameter:message"),
    ("send_all", {"message": "m", "QoS": 5}, "Missing parameter:topic"),
    ("send_client", {"clientid": "c", "topic": "a/#", "message": "m"},
     "Invalid parameter:topic"),
    ("send_client", {"clientid": "c", "topic": "a", "message": "m", "QoS": 5},
     "Invalid parameter:QoS"),
    ("send_client", {"topic": "a", "message": "m"}, "Missing parameter:clientid"),
])
def test_bad_values_are_invalid_and_absent_ones_missing(
        api: ApiBroker, path: str, fields: dict[str, Any], expected: str) -> None:
    r = api.post(path, **fields)
    assert reason(r) == (400, expected), r.text
    if expected.startswith("Invalid"):
        assert r.json()["detail"]  # what a good value is


def test_get_takes_parameters_from_a_json_or_form_body(api: ApiBroker, raw: Raw) -> None:
    dev = raw.connect("dev", V311)
    topic = raw.topic("ev")
    dev.publish(topic, b"hello", qos=1)
    cid = raw.cid("dev")
    url = f"{BASE}/last_events_by_device/"

    def events(**kw: Any) -> Any:
        r = api.http.request("GET", url, headers=api.auth(), **kw)
        assert r.status_code == 200, r.text
        return r.json().get("events")

    rows = eventually(lambda: events(json={"device_id": cid}))
    assert [(e["topic"], e["message"]) for e in rows] == [(topic, "hello")]
    assert events(data={"device_id": cid}) == rows
    assert events(params={"device_id": cid}) == rows
    # without one anywhere it is missing; a bad value in the body is invalid
    r = api.http.request("GET", url, headers=api.auth(), json={"limit": 2})
    assert reason(r) == (400, "Missing parameter:device_id")
    r = api.http.request("GET", url, headers=api.auth(), json={"device_id": cid, "limit": "x"})
    assert reason(r) == (400, "Invalid parameter:limit")
    r = api.http.request("GET", f"{BASE}/devices/", headers=api.auth(), json={"page": 0})
    assert reason(r) == (400, "Invalid parameter:page")
    # every GET reads (consumes) its body: Sanic has nothing to complain about
    for path in ("devices/", "connected_devices", "subscriptions/", "wills/", "acls/",
                 "openapi.json"):
        r = api.http.request("GET", f"{BASE}/{path}", headers=api.auth(), json={"x": 1})
        assert r.status_code == 200, (path, r.text)
    r = api.http.request("GET", "/graph/client_count", headers=api.auth(), json={"x": 1})
    assert r.status_code == 200
    assert "body not consumed" not in api.broker.log_path.read_text()


def test_openapi_describes_the_management_calls(api: ApiBroker) -> None:
    doc = api.http.get(f"{BASE}/openapi.json").json()
    paths = {p.rstrip("/"): item for p, item in doc["paths"].items()}
    for name, method in (("add_acl", "post"), ("remove_acl", "post"), ("acls", "get"),
                         ("kick", "post")):
        op = paths[f"{BASE}/{name}"][method]
        assert "200" in op["responses"] and "400" in op["responses"], name
    body = paths[f"{BASE}/add_acl"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["properties"]) == {"username", "clientid", "pattern", "topic",
                                                 "access"}


def test_every_route_of_the_app_is_in_the_openapi_document(tmp_path: Path) -> None:
    """The app itself (not a running one) against api/openapi.py: path and method."""
    conf = tmp_path / "broker.conf"
    conf.write_text("")
    cfg = load_config(str(conf), {"data_dir": str(tmp_path / "data")})
    store = Store(cfg.broker.data_dir)
    try:
        app = create_app(cfg, store, Workers(cfg.broker.data_dir, 1))
        app.router.finalize()
        # Sanic's <name:type> is OpenAPI's {name}
        routes = {("/" + re.sub(r"<(\w+)(:[^>]*)?>", r"{\1}", r.path), m.lower())
                  for r in app.router.routes for m in r.methods}
    finally:
        store.close()
    paths = document()["paths"]
    described = {(p.rstrip("/") or "/", m) for p, item in paths.items() for m in item}
    assert routes == described
