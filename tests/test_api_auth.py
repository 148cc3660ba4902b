"""REST API: MQTT credentials (add/edit/remove_auth and `bwfast passwd`)
enforced by every worker, tokens across an API restart, token expiry, and the
failed-login lockout. A real broker with [authentication] enabled, 2 workers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from mqtt_helpers import (
    CONNACK,
    V5,
    V311,
    ConnectionClosed,
    RawClient,
    connect,
    parse_connack,
    parse_disconnect,
)
from test_api_support import (
    ADMIN,
    ADMIN_PASSWORD,
    BASE,
    ApiBroker,
    eventually,
    fail,
    start_api_broker,
    wait_port,
)
from test_cluster_support import owner_pid

from bwfast.store import Store

pytestmark = pytest.mark.bwfast_only

WORKERS = 2
BAD_CREDENTIALS = {V311: 4, V5: 0x86}  # 3.1.1 return code 4 / v5 0x86 Bad User Name or Password
TOKEN_INVALID = fail("Invalid Access Token", detail="Invalid token.")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiBroker]:
    yield from start_api_broker(tmp_path_factory.mktemp("api_auth"), WORKERS,
                                **{"authentication.enabled": True})


def status(ok: bool, reason: str) -> dict[str, Any]:
    return {"status": {"bwapi-status-reason": reason,
                       "bwapi-status": "success" if ok else "fail"}}


def connack_per_worker(api: ApiBroker, version: int, user: str | None,
                       password: str | None) -> dict[int, int]:
    """CONNECT on every worker (sockets are opened until each worker got one):
    worker pid → CONNACK code."""
    codes: dict[int, int] = {}
    for _attempt in range(60):
        c = RawClient("127.0.0.1", api.port, version=version)
        try:
            pid = owner_pid(api.broker, c.sock)
            if pid in codes:
                continue
            ack = c.connect(f"auth-{uuid.uuid4().hex[:10]}", username=user,
                            password=None if password is None else password.encode())
            codes[pid] = ack.rc
        finally:
            c.close()
        if len(codes) == WORKERS:
            return codes
    raise AssertionError(f"connections landed on {len(codes)} of {WORKERS} workers only")


def assert_connects(api: ApiBroker, user: str, password: str, ok: bool) -> None:
    for version in (V311, V5):
        want = 0 if ok else BAD_CREDENTIALS[version]
        codes = connack_per_worker(api, version, user, password)
        assert set(codes.values()) == {want}, (version, codes)


def test_credentials_enforced_on_every_worker(api: ApiBroker) -> None:
    user = f"dev-{uuid.uuid4().hex[:6]}-ü"
    assert_connects(api, user, "pw-1", ok=False)
    r = api.post("add_auth", username=user, password="pw-1")
    assert (r.status_code, r.json()) == (
        200, status(True, f"Added Authentication Credentials. '{user}'"))
    assert_connects(api, user, "pw-1", ok=True)
    assert_connects(api, user, "wrong", ok=False)

    r = api.post("add_auth", username=user, password="other")
    assert (r.status_code, r.json()) == (409, status(False, "Username already exist"))
    assert_connects(api, user, "pw-1", ok=True)  # unchanged by the refused add

    r = api.post("edit_auth", username=user, new_password="pw-2")
    assert (r.status_code, r.json()) == (
        200, status(True, f"Updated Authentication Credentials. '{user}'"))
    assert_connects(api, user, "pw-1", ok=False)
    assert_connects(api, user, "pw-2", ok=True)

    r = api.post("remove_auth", username=user, password="pw-1")  # not the user's password
    assert (r.status_code, r.json()) == (404, status(False, "This username does not exist."))
    r = api.post("remove_auth", username=user, password="pw-2")
    assert (r.status_code, r.json()) == (
        200, status(True, f"Removed Authentication Credentials. '{user}'"))
    assert_connects(api, user, "pw-2", ok=False)


def test_credential_failures(api: ApiBroker) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    r = api.post("remove_auth", username=ghost)
    assert (r.status_code, r.json()) == (404, status(False, "This username does not exist."))
    r = api.post("edit_auth", username=ghost, new_password="x")
    assert (r.status_code, r.json()) == (
        404, status(False, f"Failed to update Authentication Credentials. '{ghost}'"))
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("add_auth", {"password": "p"}, "Missing parameter:username"),
        ("add_auth", {"username": ghost}, "Missing parameter:password"),
        ("add_auth", {"username": ghost, "password": ""}, "Missing parameter:password"),
        ("add_auth", {"username": 12, "password": "p"}, "Invalid parameter:username"),
        ("add_auth", {"username": "a\x00b", "password": "p"}, "Invalid parameter:username"),
        ("add_auth", {"username": "u" * 600, "password": "p"}, "Invalid parameter:username"),
        ("add_auth", {"username": ghost, "password": ["p"]}, "Invalid parameter:password"),
        ("edit_auth", {"username": ghost}, "Missing parameter:new_password"),
        ("edit_auth", {"new_password": "x"}, "Missing parameter:username"),
        ("remove_auth", {}, "Missing parameter:username"),
        ("remove_auth", {"username": {"a": 1}}, "Invalid parameter:username"),
    ]
    for path, fields, reason in cases:
        r = api.post(path, **fields)
        assert r.status_code == 400, (path, fields, r.text)
        body = r.json()
        assert (body["bwapi-status"], body["bwapi-status-reason"]) == ("fail", reason), (
            path, fields)
    # form fields work too, and `password` is accepted for edit_auth's new_password
    r = api.http.post(f"{BASE}/add_auth", headers=api.auth(),
                      data={"username": ghost, "password": "p1"})
    assert r.status_code == 200, r.text
    r = api.post("edit_auth", username=ghost, password="p2")
    assert r.status_code == 200, r.text
    assert_connects(api, ghost, "p2", ok=True)
    assert api.post("remove_auth", username=ghost).status_code == 200


def _live_connections(api: ApiBroker, user: str, password: str, n: int = 4,
                      will_topic: str | None = None) -> list[RawClient]:
    """At least n connections of `user`, v3.1.1 and v5 alternately, on every worker."""
    conns: list[RawClient] = []
    pids: set[int] = set()
    while len(conns) < n or len(pids) < WORKERS:
        assert len(conns) < 40, f"connections landed on {len(pids)} of {WORKERS} workers only"
        version = V5 if len(conns) % 2 else V311
        c = RawClient("127.0.0.1", api.port, version=version)
        conns.append(c)
        pids.add(owner_pid(api.broker, c.sock))
        ack = c.connect(f"live-{uuid.uuid4().hex[:10]}", username=user,
                        password=password.encode(), will_topic=will_topic,
                        will_payload=b"revoked-will")
        assert ack.rc == 0
    return conns


def _assert_revoked(conns: list[RawClient]) -> None:
    """Every connection closed by the broker: v5 after DISCONNECT 0x98
    (Administrative action), v3.1.1 without a packet."""
    for c in conns:
        got = c.wait_closed()
        if c.version == V5:
            assert [parse_disconnect(p, V5).rc for p in got] == [0x98], got
        else:
            assert got == [], got
        c.close()


@pytest.mark.parametrize("call", ["remove_auth", "edit_auth"])
def test_revoking_credentials_disconnects_live_connections(api: ApiBroker, call: str) -> None:
    user, other = f"rev-{uuid.uuid4().hex[:6]}", f"keep-{uuid.uuid4().hex[:6]}"
    for name in (user, other):
        assert api.post("add_auth", username=name, password="pw").status_code == 200
    will_topic = f"revoked/{user}/will"
    watcher = RawClient("127.0.0.1", api.port, version=V311)
    assert watcher.connect(f"w-{user}", username=other, password=b"pw").rc == 0
    assert watcher.subscribe(will_topic, 0).codes == [0]
    conns = _live_connections(api, user, "pw", will_topic=will_topic)
    if call == "remove_auth":
        r = api.post("remove_auth", username=user)
        assert (r.status_code, r.json()) == (
            200, status(True, f"Removed Authentication Credentials. '{user}'"))
    else:
        r = api.post("edit_auth", username=user, new_password="pw-new")
        assert (r.status_code, r.json()) == (
            200, status(True, f"Updated Authentication Credentials. '{user}'"))
    _assert_revoked(conns)
    # the other user stays connected; a revoked device publishes no will
    # (as Mosquitto's dynamic security kicks "without will")
    watcher.expect_nothing(0.5)
    assert watcher.is_open()
    watcher.close()
    assert_connects(api, user, "pw", ok=False)
    if call == "edit_auth":
        assert_connects(api, user, "pw-new", ok=True)
        assert api.post("remove_auth", username=user).status_code == 200
    assert api.post("remove_auth", username=other).status_code == 200


def test_revoking_credentials_while_connects_are_being_checked(api: ApiBroker) -> None:
    """CONNECTs whose password check (a costly hash, in a hashing thread) is still
    running when remove_auth commits must not get in with the removed credentials:
    once the call has answered, no connection of that user is left open."""
    user = f"race-{uuid.uuid4().hex[:6]}"
    # 20,000 PBKDF2 iterations: too costly for the loop, so checked in the threads
    r = _passwd(api, "add", user, "--password", "pw", "--iterations", "20000")
    assert r.returncode == 0, r.stderr
    socks = []
    for i in range(24):  # more than the checker threads: some wait for their turn
        c = RawClient("127.0.0.1", api.port, version=V5 if i % 2 else V311)
        c.send(connect(f"race-{i}-{user}", version=c.version, username=user, password=b"pw"))
        socks.append(c)
    assert api.post("remove_auth", username=user).status_code == 200
    admitted = 0
    for c in socks:
        try:
            p = c.recv_packet()
        except ConnectionClosed:
            continue
        assert p.ptype == CONNACK
        if parse_connack(p, c.version).rc == 0:
            admitted += 1  # checked before the removal: it must be closed now
            c.wait_closed(timeout=2.0)
        c.close()
    assert_connects(api, user, "pw", ok=False)
    print(f"{admitted} of {len(socks)} were admitted before the removal (and then closed)")


def _passwd(api: ApiBroker, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bwfast", "passwd", "--data-dir", str(api.data_dir), *args],
        input=stdin, capture_output=True, text=True, timeout=30, cwd=api.broker.root)


def test_passwd_cli_while_the_broker_runs(api: ApiBroker) -> None:
    user = f"cli-{uuid.uuid4().hex[:6]}"
    r = _passwd(api, "add", user, "--password", "first")
    assert r.returncode == 0, r.stderr
    assert "first" not in r.stdout + r.stderr
    assert_connects(api, user, "first", ok=True)
    assert _passwd(api, "add", user, "--password", "again").returncode == 1
    assert user in _passwd(api, "list").stdout.split()
    r = _passwd(api, "set", user, stdin="second\n")  # password from stdin, not argv
    assert r.returncode == 0, r.stderr
    assert_connects(api, user, "first", ok=False)
    assert_connects(api, user, "second", ok=True)
    # the API sees the CLI's users and the other way round
    assert api.post("add_auth", username=user, password="x").status_code == 409
    assert _passwd(api, "remove", user).returncode == 0
    assert_connects(api, user, "second", ok=False)
    assert _passwd(api, "remove", user).returncode == 1
    assert _passwd(api, "add", "", "--password", "x").returncode == 2
    assert _passwd(api, "add", "u" * 600, "--password", "x").returncode == 2
    assert _passwd(api, "frobnicate").returncode == 2


def test_passwd_import_of_a_mosquitto_password_file(api: ApiBroker, tmp_path) -> None:
    """Hashes made by Mosquitto's own mosquitto_passwd ($7$ PBKDF2-SHA512, and the
    $6$ SHA512 of Mosquitto 1.x) work as they are, on every worker."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is needed (apt-get install mosquitto)")
    tag = uuid.uuid4().hex[:6]
    pbkdf2, old, kept = f"mq7-{tag}", f"mq6-{tag}", f"kept-{tag}"
    pwfile = tmp_path / "password_file"
    for args in (["-c", "-b", str(pwfile), pbkdf2, "pw-7"],
                 ["-H", "sha512", "-b", str(pwfile), old, "pw-6"]):
        subprocess.run(["mosquitto_passwd", *args], check=True, capture_output=True, timeout=30)
    assert "$7$" in pwfile.read_text() and "$6$" in pwfile.read_text()
    assert api.post("add_auth", username=kept, password="mine").status_code == 200
    r = _passwd(api, "import", str(pwfile))
    assert r.returncode == 0, r.stderr
    assert "imported 2 users" in r.stdout and "1 $6$ hashes" in r.stderr
    assert_connects(api, pbkdf2, "pw-7", ok=True)
    assert_connects(api, pbkdf2, "pw-6", ok=False)
    assert _stored(api, old)["alg"] == "sha512"
    assert_connects(api, old, "pw-6", ok=True)
    assert _stored(api, old)["alg"] == "pbkdf2-sha512"  # the weak $6$ hash is gone
    assert_connects(api, old, "pw-7", ok=False)
    assert_connects(api, kept, "mine", ok=True)  # users not in the file are left alone

    # one bad line (a plain-text password) and nothing is written, not even the good ones
    bad = tmp_path / "bad_file"
    bad.write_text(f"new-{tag}:{pwfile.read_text().splitlines()[0].split(':', 1)[1]}\n"
                   f"{pbkdf2}:plain\n")
    r = _passwd(api, "import", str(bad))
    assert r.returncode == 2 and "line 2" in r.stderr and "plain-text" in r.stderr
    assert f"new-{tag}" not in _passwd(api, "list").stdout.split()
    assert_connects(api, pbkdf2, "pw-7", ok=True)
    assert _passwd(api, "import", str(tmp_path / "missing")).returncode == 2
    for user in (pbkdf2, old, kept):
        assert _passwd(api, "remove", user).returncode == 0


def test_passwd_iterations(api: ApiBroker) -> None:
    """A costlier hash (checked in the worker's hashing threads) connects as well."""
    user = f"iter-{uuid.uuid4().hex[:6]}"
    r = _passwd(api, "add", user, "--password", "pw", "--iterations", "20000")
    assert r.returncode == 0, r.stderr
    assert_connects(api, user, "pw", ok=True)
    assert_connects(api, user, "other", ok=False)
    assert _passwd(api, "set", user, "--password", "pw", "--iterations", "0").returncode == 2
    assert _passwd(api, "remove", user).returncode == 0


def test_scrypt_records_of_earlier_versions_still_connect(api: ApiBroker) -> None:
    """A record written by an earlier bwfast (scrypt, before PBKDF2-SHA512) is
    checked in the hashing threads, still lets its device in, and is then
    rewritten in the current format (so the next restart's storm is cheap)."""
    user = f"old-{uuid.uuid4().hex[:6]}"
    salt = os.urandom(16)
    record = {"alg": "scrypt", "n": 1 << 10, "r": 8, "p": 1, "salt": salt,
              "hash": hashlib.scrypt(b"legacy", salt=salt, n=1 << 10, r=8, p=1, dklen=32)}
    store = Store(str(api.data_dir))
    try:
        store.put("auth", user.encode(), record)
        store.commit()
    finally:
        store.close()
    assert_connects(api, user, "legacy", ok=True)
    # rewritten as PBKDF2-SHA512 by the first CONNECT that passed, same password
    assert _stored(api, user)["alg"] == "pbkdf2-sha512"
    assert_connects(api, user, "legacy", ok=True)
    assert_connects(api, user, "other", ok=False)
    assert _passwd(api, "remove", user).returncode == 0


def _stored(api: ApiBroker, user: str) -> dict[str, Any]:
    store = Store(str(api.data_dir))
    try:
        record = store.get("auth", user.encode())
    finally:
        store.close()
    assert record is not None
    return record


def test_tokens_survive_an_api_restart(api: ApiBroker) -> None:
    keep, revoked = api.login(), api.login()
    assert api.post("logout", revoked).status_code == 200
    user = f"persist-{uuid.uuid4().hex[:6]}"
    assert api.post("add_auth", username=user, password="pw").status_code == 200
    pids = api.api_pids()
    old = pids[-1]
    log_before = api.broker.log_path.read_text()
    started = time.monotonic()
    os.kill(old, signal.SIGTERM)  # only the api child; the supervisor restarts it
    eventually(lambda: len(api.api_pids()) > len(pids), timeout=10)
    stopped = time.monotonic() - started
    new_log = api.broker.log_path.read_text()[len(log_before):]
    assert "api exited with 0" in new_log, new_log
    assert stopped < 4.5  # stopped, reaped and restarted well within the 5 s of CONTRACT.md
    wait_port(api.api_port)
    api.http.close()
    api.http = httpx.Client(base_url=api.url, timeout=10.0)
    assert api.get("connected_devices", keep).status_code == 200
    r = api.get("connected_devices", revoked)
    assert (r.status_code, r.json()) == (401, TOKEN_INVALID)
    assert api.post("remove_auth", username=user).status_code == 200  # still there


def test_ten_failed_logins_lock_the_address_out(api: ApiBroker) -> None:
    """From 127.0.0.2 so that the other tests' address (127.0.0.1) stays usable."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=api.url, transport=transport, timeout=10.0) as other:
        for _ in range(10):
            r = other.post(f"{BASE}/login", json={"username": ADMIN, "password": "guess"})
            assert (r.status_code, r.json()) == (401, fail("Invalid Login"))
        good = {"username": ADMIN, "password": ADMIN_PASSWORD}
        r = other.post(f"{BASE}/login", json=good)
        assert (r.status_code, r.json()) == (429, fail("Too many failed logins"))
        assert 0 < int(r.headers["retry-after"]) <= 60
    r = api.http.post(f"{BASE}/login", json=good)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def short_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiBroker]:
    yield from start_api_broker(tmp_path_factory.mktemp("api_ttl"), 1,
                                **{"api.token_ttl": 2})


def test_expired_token_is_refused(short_ttl: ApiBroker) -> None:
    token = short_ttl.login()
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert exp - time.time() <= 2
    assert short_ttl.get("connected_devices", token).status_code == 200
    time.sleep(max(0.0, exp - time.time()) + 0.2)
    r = short_ttl.get("connected_devices", token)
    assert (r.status_code, r.json()) == (401, TOKEN_INVALID)
