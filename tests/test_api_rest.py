"""REST API end to end: every endpoint of spec/rest-api.txt against the real
API process of a running broker (2 workers, and 1), with paho devices.

Shapes follow CONTRACT.md: `bwapi-status` / `bwapi-status-reason`, 400 for a
missing parameter (`Missing parameter:<name>`) or a bad one (`Invalid parameter:<name>`), 401 for no or a bad
token, 404 for an unknown client, 413 for a body over 1 MB.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from mqtt_helpers import V5, V311, PahoClient
from test_api_support import (
    ADMIN,
    ADMIN_PASSWORD,
    BASE,
    ApiBroker,
    eventually,
    fail,
    start_api_broker,
)

pytestmark = pytest.mark.bwfast_only

AUTH_MISSING = fail("Authorization Credentials not provided",
                    detail="Authentication credentials were not provided.")
TOKEN_INVALID = fail("Invalid Access Token", detail="Invalid token.")
NOT_DELIVERED = fail("Message could not be delivered")
NO_DATA = {"bwapi-status": "success", "bwapi-status-reason": "no_data_found"}


@pytest.fixture(scope="module", params=[2, 1], ids=["workers2", "workers1"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[ApiBroker]:
    yield from start_api_broker(tmp_path_factory.mktemp("api"), request.param)


class Devices:
    """paho devices with ids unique to the test, closed at the end."""

    def __init__(self, api: ApiBroker) -> None:
        self.api = api
        self.tag = uuid.uuid4().hex[:8]
        self.open: list[PahoClient] = []

    def cid(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def topic(self, name: str) -> str:
        return f"api/{self.tag}/{name}"

    def connect(self, name: str, protocol: int = V311, will: tuple[str, bytes, int, bool] | None
                = None, cid: str | None = None) -> PahoClient:
        c = PahoClient("127.0.0.1", self.api.port, cid or self.cid(name), protocol=protocol)
        if will is not None:
            c.will(*will)
        self.open.append(c)
        _, rc, _ = c.connect()
        assert rc == 0
        return c

    def close(self) -> None:
        for c in self.open:
            c.close()


@pytest.fixture
def devices(api: ApiBroker) -> Iterator[Devices]:
    d = Devices(api)
    yield d
    d.close()


def device_rows(api: ApiBroker) -> dict[str, dict[str, Any]]:
    r = api.get("devices/", limit=1000)
    assert r.status_code == 200, r.text
    return {row["device_id"]: row for row in r.json()["data"]}


# ------------------------------------------------------------------ login and tokens


def test_login_success_json_form_and_query(api: ApiBroker) -> None:
    creds = {"username": ADMIN, "password": ADMIN_PASSWORD}
    for kwargs in ({"json": creds}, {"data": creds}, {"params": creds},
                   {"content": '{"username": "admin", "password": "s3cret-admin"}'}):
        r = api.http.post(f"{BASE}/login", **kwargs)  # type: ignore[arg-type]
        assert r.status_code == 200, (kwargs, r.text)
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert body["bwapi-status"] == "success"
        assert body["bwapi-status-reason"] == "Logged in"
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert claims["sub"] == ADMIN and claims["jti"] and claims["exp"] > time.time() + 3000


def test_login_failures(api: ApiBroker) -> None:
    r = api.http.post(f"{BASE}/login", json={"username": ADMIN})
    assert (r.status_code, r.json()) == (400, fail("Missing parameter:password"))
    r = api.http.post(f"{BASE}/login", json={"password": "x"})
    assert (r.status_code, r.json()) == (400, fail("Missing parameter:username"))
    r = api.http.post(f"{BASE}/login", json={"username": ADMIN, "password": 5})
    assert r.status_code == 400 and r.json()["bwapi-status-reason"] == "Invalid parameter:password"
    r = api.http.post(f"{BASE}/login", json={"username": ADMIN, "password": "wrong"})
    assert (r.status_code, r.json()) == (401, fail("Invalid Login"))


def test_token_cases(api: ApiBroker) -> None:
    url = "/graph/client_count"
    token = api.login()
    assert api.http.get(url).json() == AUTH_MISSING
    assert api.http.get(url).status_code == 401
    assert api.http.get(url, headers={"Authorization": ""}).json() == AUTH_MISSING
    for header in (token, f"Bearer {token}", f"bearer {token}", f"Bearer   {token}"):
        r = api.http.get(url, headers={"Authorization": header})
        assert r.status_code == 200, (header, r.text)
        assert r.json()["bwapi-status"] == "success"
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = {
        "other key": jwt.encode(claims, b"k" * 64, algorithm="HS256"),
        "alg none": jwt.encode(claims, None, algorithm="none"),  # type: ignore[arg-type]
        "HS512": jwt.encode(claims, b"k" * 64, algorithm="HS512"),
        "malformed": "not.a.jwt",
        "garbage": "%%%",
        "tampered": token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB"),
        "two words": f"Bearer {token} extra",
    }
    for name, bad in forged.items():
        header = bad if name == "two words" else f"Bearer {bad}"
        r = api.http.get(url, headers={"Authorization": header})
        assert (r.status_code, r.json()) == (401, TOKEN_INVALID), name


def test_logout_revokes_at_once(api: ApiBroker) -> None:
    token, other = api.login(), api.login()
    assert api.post("logout", token).status_code == 200
    r = api.get("connected_devices", token)
    assert (r.status_code, r.json()) == (401, TOKEN_INVALID)
    assert api.post("logout", token).status_code == 401
    assert api.get("connected_devices", other).status_code == 200


def test_logout_answer(api: ApiBroker) -> None:
    r = api.post("logout", api.login())
    assert (r.status_code, r.json()) == (200, {"bwapi-status-reason": "Logged Out",
                                               "bwapi-status": "success"})
    r = api.http.post(f"{BASE}/logout")
    assert (r.status_code, r.json()) == (401, AUTH_MISSING)


@pytest.mark.parametrize("path", [
    "send_client", "send_all", "add_auth", "edit_auth", "remove_auth", "logout"])
def test_every_post_needs_a_token(api: ApiBroker, path: str) -> None:
    r = api.http.post(f"{BASE}/{path}", json={})
    assert (r.status_code, r.json()) == (401, AUTH_MISSING)
    r = api.http.post(f"{BASE}/{path}", json={}, headers={"Authorization": "Bearer x.y.z"})
    assert (r.status_code, r.json()) == (401, TOKEN_INVALID)


@pytest.mark.parametrize("path", [
    "devices/", "connected_devices", "subscriptions/", "last_events_by_device/",
    "last_commands_to_device/", "wills/", "/graph/client_count"])
def test_every_get_needs_a_token(api: ApiBroker, path: str) -> None:
    url = path if path.startswith("/") else f"{BASE}/{path}"
    r = api.http.get(url)
    assert (r.status_code, r.json()) == (401, AUTH_MISSING)
    r = api.http.get(url, headers={"Authorization": "nope"})
    assert (r.status_code, r.json()) == (401, TOKEN_INVALID)


# ------------------------------------------------------------------ send_client / send_all


def test_send_client_reaches_an_unsubscribed_client(api: ApiBroker, devices: Devices) -> None:
    dev = devices.connect("dev", V5)
    topic = devices.topic("cmd")
    r = api.post("send_client", clientid=dev.client._client_id.decode(), topic=topic,
                 message="on", QoS=1, retain=1)
    assert (r.status_code, r.json()) == (200, {
        "bwapi-status-reason": f"Message sent to client:{devices.cid('dev')}",
        "bwapi-status": "success"})
    got = dev.get()
    assert (got.topic, got.payload, got.qos, got.retain) == (topic, b"on", 1, True)
    # lowercase qos, form fields, retain false
    r = api.http.post(f"{BASE}/send_client", headers=api.auth(), data={
        "clientid": devices.cid("dev"), "topic": topic, "message": "off", "qos": "2",
        "retain": "false"})
    assert r.status_code == 200, r.text
    got = dev.get()
    assert (got.payload, got.qos, got.retain) == (b"off", 2, False)
    # the commands listing shows what the device was sent, newest first
    def commands() -> Any:
        body = api.get("last_commands_to_device/", device_id=devices.cid("dev"), limit=10).json()
        rows = body.get("commands", [])
        return len(rows) >= 2 and rows
    rows = eventually(commands)
    assert [(c["topic"], c["message"]) for c in rows[:2]] == [(topic, "off"), (topic, "on")]
    assert all(isinstance(c["time"], int) and c["time"] > 1e12 for c in rows)


def test_send_client_offline_or_unknown_is_404(api: ApiBroker, devices: Devices) -> None:
    dev = devices.connect("gone")
    dev.disconnect()
    eventually(lambda: device_rows(api).get(devices.cid("gone"), {}).get("status") == "inactive")
    for cid in (devices.cid("gone"), devices.cid("never")):
        r = api.post("send_client", clientid=cid, topic="a/b", message="x")
        assert (r.status_code, r.json()) == (404, NOT_DELIVERED)


@pytest.mark.parametrize("fields, name, kind", [
    ({"topic": "a", "message": "m"}, "clientid", "Missing"),
    ({"clientid": "c", "message": "m"}, "topic", "Missing"),
    ({"clientid": "c", "topic": "a"}, "message", "Missing"),
    ({"clientid": 5, "topic": "a", "message": "m"}, "clientid", "Invalid"),
    ({"clientid": "", "topic": "a", "message": "m"}, "clientid", "Missing"),
    ({"clientid": "c", "topic": "a/+", "message": "m"}, "topic", "Invalid"),
    ({"clientid": "c", "topic": "a/#", "message": "m"}, "topic", "Invalid"),
    ({"clientid": "c", "topic": "", "message": "m"}, "topic", "Missing"),
    ({"clientid": "c", "topic": ["a"], "message": "m"}, "topic", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": 12}, "message", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": None}, "message", "Missing"),
    ({"clientid": "c", "topic": "a", "message": "m", "QoS": 3}, "QoS", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": "m", "QoS": "high"}, "QoS", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": "m", "qos": -1}, "qos", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": "m", "QoS": True}, "QoS", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": "m", "retain": 2}, "retain", "Invalid"),
    ({"clientid": "c", "topic": "a", "message": "m", "retain": "maybe"}, "retain", "Invalid"),
])
def test_send_client_bad_parameters(api: ApiBroker, fields: dict[str, Any], name: str,
                                    kind: str) -> None:
    """Absent or empty: `Missing parameter`; wrong type or out of range:
    `Invalid parameter` (CONTRACT.md)."""
    r = api.post("send_client", **fields)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["bwapi-status"] == "fail"
    assert body["bwapi-status-reason"] == f"{kind} parameter:{name}"


def test_send_all_publishes_and_retains(api: ApiBroker, devices: Devices) -> None:
    topic = devices.topic("all")
    sub = devices.connect("sub")
    assert sub.subscribe(topic, 1) == [1]
    r = api.post("send_all", topic=topic, message={"on": True}, QoS=1, retain=True)
    assert (r.status_code, r.json()) == (200, {
        "bwapi-status-reason": f"Message sent to subscribers of topic:{topic}",
        "bwapi-status": "success"})
    got = sub.get()
    assert (got.topic, got.payload, got.qos) == (topic, b'{"on":true}', 1)
    # A subscriber that comes later gets it as a retained message. Workers
    # share retained changes asynchronously (the control reply does not wait
    # for the peers), so a subscriber landing on another worker may need a
    # moment: each attempt is a fresh client.
    n = iter(range(100))

    def retained_seen() -> list[Any]:
        c = devices.connect(f"later{next(n)}")
        c.subscribe(topic, 0)
        got = c.drain(0.3)
        c.close()
        return got

    got = eventually(retained_seen)
    assert [(m.payload, m.retain) for m in got] == [(b'{"on":true}', True)]
    # an empty retained message clears it, as any publish would
    assert api.post("send_all", topic=topic, message="", retain=1).status_code == 200
    eventually(lambda: retained_seen() == [])


def test_send_all_bad_input(api: ApiBroker) -> None:
    r = api.post("send_all", topic="x/#", message="m")
    assert (r.status_code, r.json()["bwapi-status-reason"]) == (400, "Invalid parameter:topic")
    r = api.post("send_all", topic="x")
    assert (r.status_code, r.json()["bwapi-status-reason"]) == (400, "Missing parameter:message")
    r = api.post("send_all", topic="x", message="m", QoS=7)
    assert (r.status_code, r.json()["bwapi-status-reason"]) == (400, "Invalid parameter:QoS")


# ------------------------------------------------------------------ listings


def test_listings_follow_connects_publishes_and_disconnects(
        api: ApiBroker, devices: Devices) -> None:
    a = devices.connect("a", V311)
    b = devices.connect("b", V5)
    ida, idb = devices.cid("a"), devices.cid("b")
    assert a.subscribe(devices.topic("s1"), 1) == [1]
    assert a.subscribe(devices.topic("s2"), 2) == [2]
    for i in range(12):
        a.publish(devices.topic("ev"), f"message{i}", qos=1)
    a.publish(devices.topic("bin"), b"\xff\xfe\x00", qos=1)

    rows = eventually(lambda: (r := device_rows(api)).keys() >= {ida, idb} and r)
    for cid in (ida, idb):
        assert rows[cid]["status"] == "active"
        assert rows[cid]["device_name"] == cid
        assert abs(rows[cid]["device_connected_time"] - time.time() * 1000) < 60_000
    connected = api.get("connected_devices").json()
    assert connected["bwapi-status"] == "success"
    assert {ida, idb} <= set(connected["devices"].values())
    assert sorted(connected["devices"]) == sorted(str(n) for n in range(1, len(connected["devices"]) + 1))

    def subs() -> Any:
        body = api.get("subscriptions/", device_id=ida).json()
        return body.get("subscriptions") and len(body["subscriptions"]) == 2 and body
    body = eventually(subs)
    assert body == {"bwapi-status": "success", "subscriptions": [
        {"topic": devices.topic("s1"), "device_name": ida, "QoS": 1, "device_id": ida},
        {"topic": devices.topic("s2"), "device_name": ida, "QoS": 2, "device_id": ida}]}
    everyone = api.get("subscriptions").json()["subscriptions"]
    assert {"topic": devices.topic("s1"), "device_name": ida, "QoS": 1,
            "device_id": ida} in everyone
    assert api.get("subscriptions/", device_id=idb).json() == NO_DATA

    def events(limit: int) -> Any:
        body = api.get("last_events_by_device/", device_id=ida, limit=limit).json()
        return body.get("events") and body["events"][0]["topic"] == devices.topic("bin") and body
    body = eventually(lambda: events(1))
    assert len(body["events"]) == 1
    newest = body["events"][0]
    assert newest["encoding"] == "base64"
    assert base64.b64decode(newest["message"]) == b"\xff\xfe\x00"
    five = events(5)["events"]
    assert [e["message"] for e in five[1:]] == ["message11", "message10", "message9", "message8"]
    assert all(set(e) == {"message", "time", "topic"} for e in five[1:])
    assert [e["time"] for e in five] == sorted((e["time"] for e in five), reverse=True)
    assert len(events(1000)["events"]) == 10  # at most 10 are kept
    assert api.get("last_events_by_device/", device_id=idb).json() == NO_DATA
    assert api.get("last_commands_to_device/", device_id=ida).json() == NO_DATA

    b.disconnect()
    eventually(lambda: device_rows(api).get(idb, {}).get("status") == "inactive")
    assert idb not in api.get("connected_devices").json()["devices"].values()
    assert device_rows(api)[ida]["status"] == "active"


def test_wills_listed_while_held(api: ApiBroker, devices: Devices) -> None:
    wt = devices.topic("will")
    devices.connect("w1", V311, will=(wt, b"gone-1", 1, True))
    w2 = devices.connect("w2", V5, will=(wt, b"\x80bin", 0, False))
    id1, id2 = devices.cid("w1"), devices.cid("w2")

    def listed() -> Any:
        rows = api.get("wills/").json().get("will", [])
        mine = {r["device_id"]: r for r in rows if r["device_id"] in (id1, id2)}
        return len(mine) == 2 and mine
    mine = eventually(listed)
    assert mine[id1] == {"message": "gone-1", "device_name": id1, "retain": 1,
                         "device_id": id1, "topic": wt, "QoS": 1}
    assert mine[id2]["encoding"] == "base64" and mine[id2]["retain"] == 0
    one = api.get("wills", device_id=id1).json()
    assert one == {"bwapi-status": "success", "will": [mine[id1]]}
    w2.disconnect()  # a normal DISCONNECT discards the will
    eventually(lambda: api.get("wills/", device_id=id2).json() == NO_DATA)
    assert api.get("wills/", device_id=devices.cid("nobody")).json() == NO_DATA


def test_devices_paging(api: ApiBroker, devices: Devices) -> None:
    for n in range(5):  # page 2 of 2 is full whatever other tests left behind
        devices.connect(f"p{n}")
    # the registry row is committed in the loop iteration after CONNACK
    eventually(lambda: {devices.cid(f"p{n}") for n in range(5)} <= set(device_rows(api)))
    total = api.get("devices/", limit=1000).json()["total"]
    r = api.get("devices/", limit=2, page=2)
    body = r.json()
    assert r.status_code == 200
    assert set(body) == {"data", "page", "current_page", "total", "bwapi-status"}
    assert body["page"] == -(-total // 2) and body["current_page"] == 2
    assert body["total"] == total and len(body["data"]) == 2
    for row in body["data"]:
        # the spec's four keys, plus the listener the device came in on (issue 5)
        assert set(row) == {"device_name", "device_connected_time", "status", "device_id",
                            "listener"}
        assert row["listener"] == "mqtt"
    first = api.get("devices/").json()
    assert first["current_page"] == 1 and len(first["data"]) == min(10, total)
    times = [row["device_connected_time"] for row in first["data"]]
    assert times == sorted(times, reverse=True)  # most recent first, as the spec lists them
    assert api.get("devices", limit=5000).json()["data"] == api.get(
        "devices", limit=1000).json()["data"]  # limit is capped at 1000
    r = api.get("devices/", page=total + 1, limit=1)
    assert (r.status_code, r.json()) == (404, fail("No Device / Invalid Page"))
    for bad in ({"page": 0}, {"page": "x"}, {"limit": 0}, {"limit": "-3"}, {"page": "1.5"}):
        r = api.get("devices/", **bad)
        name = next(iter(bad))
        assert (r.status_code, r.json()["bwapi-status-reason"]) == (400, f"Invalid parameter:{name}")


def test_history_needs_a_device_id(api: ApiBroker) -> None:
    for path in ("last_events_by_device/", "last_commands_to_device/"):
        r = api.get(path)
        assert (r.status_code, r.json()) == (400, fail("Missing parameter:device_id"))
        r = api.get(path, device_id="x", limit="ten")
        assert (r.status_code, r.json()["bwapi-status-reason"]) == (400, "Invalid parameter:limit")


def test_client_count(api: ApiBroker, devices: Devices) -> None:
    def count() -> int:
        r = api.get("/graph/client_count")
        assert r.status_code == 200
        body = r.json()
        assert set(body) == {"bwapi-status", "count"} and body["bwapi-status"] == "success"
        return int(body["count"])
    def settled() -> tuple[int] | None:
        """The count once earlier tests' disconnects have landed."""
        first = count()
        time.sleep(0.2)
        return (first,) if count() == first else None
    (before,) = eventually(settled)
    c1, c2 = devices.connect("c1"), devices.connect("c2")
    assert count() == before + 2
    c1.disconnect()
    eventually(lambda: count() == before + 1)
    c2.disconnect()


def test_odd_ids(api: ApiBroker, devices: Devices) -> None:
    """Ids with spaces, reserved URL characters and non-ASCII round-trip."""
    cid = "dév ü/+&=?%#;é😀"
    dev = devices.connect("odd", cid=cid)
    dev.publish(devices.topic("odd"), "hi", qos=1)
    eventually(lambda: cid in device_rows(api))
    r = api.post("send_client", clientid=cid, topic=devices.topic("to-odd"), message="yo")
    assert r.status_code == 200, r.text
    assert r.json()["bwapi-status-reason"] == f"Message sent to client:{cid}"
    assert dev.get().payload == b"yo"
    body = eventually(lambda: api.get("last_events_by_device", device_id=cid).json().get("events"))
    assert body[0]["message"] == "hi"
    for odd in ("\x00", "a\x00b", "💥" * 10, "%ZZ", "../../etc/passwd", "x" * 600, "é" * 300):
        r = api.get("last_events_by_device", device_id=odd)
        assert (r.status_code, r.json()) == (200, NO_DATA)
        r = api.post("send_client", clientid=odd, topic="a", message="m")
        assert (r.status_code, r.json()) == (404, NOT_DELIVERED)
    r = api.get("last_events_by_device", device_id="é" * 5000)  # a 30 kB request line
    assert r.status_code in (413, 414) and r.json()["bwapi-status"] == "fail"
    r = api.http.get(f"{BASE}/last_events_by_device?device_id=%ff%fe", headers=api.auth())
    assert r.status_code in (200, 400) and r.json()["bwapi-status"] in ("success", "fail")


# ------------------------------------------------------------------ bad input


def test_bad_bodies(api: ApiBroker) -> None:
    url = f"{BASE}/send_all"
    headers = {**api.auth(), "Content-Type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    for body in (b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe", b"null", deep):
        r = api.http.post(url, content=body, headers=headers)
        assert r.status_code == 400, body
        assert r.json()["bwapi-status-reason"] == "Missing parameter:topic"
        assert "body" in r.json()["detail"]
    r = api.http.post(url, content=b"x" * (2 << 20), headers=headers)
    assert r.status_code == 413
    assert r.json()["bwapi-status"] == "fail"
    # a lone surrogate, escaped in JSON: Python reads it, UTF-8 can't carry it
    for field, raw in (("topic", '{"topic": "x\\ud800", "message": "m"}'),
                       ("message", '{"topic": "a", "message": "x\\ud800"}'),
                       ("message", '{"topic": "a", "message": {"k": ["x\\ud800"]}}')):
        r = api.http.post(url, content=raw.encode(), headers=headers)
        assert (r.status_code, r.json()["bwapi-status-reason"]) == (400, f"Invalid parameter:{field}")


def test_unknown_paths_methods_and_slashes(api: ApiBroker) -> None:
    r = api.http.get(f"{BASE}/nothing-here", headers=api.auth())
    assert r.status_code == 404 and r.json()["bwapi-status"] == "fail"
    r = api.http.get(f"{BASE}/login")
    assert r.status_code == 405 and r.json()["bwapi-status"] == "fail"
    for path in ("devices", "devices/", "connected_devices/", "subscriptions", "wills",
                 "/graph/client_count/"):
        assert api.get(path).status_code in (200, 404), path
        assert api.get(path).json()["bwapi-status"] in ("success", "fail")
    r = api.http.post(f"{BASE}/login/", json={"username": ADMIN, "password": ADMIN_PASSWORD})
    assert r.status_code == 200


def test_acl_rules_on_a_broker_without_acl_say_they_are_not_enforced(api: ApiBroker) -> None:
    topic = f"unenforced/{uuid.uuid4().hex[:8]}"
    for call in ("add_acl", "remove_acl"):
        r = api.post(call, username="u", topic=topic, access="deny")
        assert r.status_code == 200, r.text
        assert "not enforced" in r.json()["detail"]


def test_openapi_document(api: ApiBroker) -> None:
    r = api.http.get(f"{BASE}/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    paths = {p.rstrip("/") for p in doc["paths"]}
    for name in ("login", "logout", "send_client", "send_all", "add_auth", "edit_auth",
                 "remove_auth", "devices", "connected_devices", "subscriptions",
                 "last_events_by_device", "last_commands_to_device", "wills"):
        assert f"{BASE}/{name}" in paths, name
    assert "/graph/client_count" in paths
    for path, item in doc["paths"].items():
        for op in item.values():
            assert "200" in op["responses"], path
