"""Helpers of the REST API suite (test_api_*.py), plus unit tests of its
pure pieces (login throttle, payload encoding, token header parsing).

The API suite runs the real broker (`python -m bwfast`, via conftest's Broker)
with `[api] enabled`, talks HTTP to it with httpx and MQTT with paho or the
raw client; nothing is mocked.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Broker, free_port

from api.errors import InvalidToken, NoCredentials
from api.ratelimit import LoginThrottle
from api.tokens import bearer
from api.views import payload_fields

ADMIN = "admin"
ADMIN_PASSWORD = "s3cret-admin"
BASE = "/bwiot/api/v1"
READY_TIMEOUT = 10.0
_API_STARTED = re.compile(r"started api \(pid (\d+)\)")


class ApiBroker:
    """A running broker with its REST API, and an HTTP client for it."""

    def __init__(self, root: Path, workers: int, **conf: Any) -> None:
        self.api_port = free_port()
        settings = {
            "api.enabled": True,
            "api.host": "127.0.0.1",
            "api.port": self.api_port,
            "api.username": ADMIN,
            "api.password": ADMIN_PASSWORD,
            **conf,
        }
        self.broker = Broker(root, settings, workers)
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.http = httpx.Client(base_url=self.url, timeout=10.0)
        self._token: str | None = None

    # -- lifecycle
    def start(self) -> ApiBroker:
        self.broker.start()
        wait_port(self.api_port)
        return self

    def stop(self) -> None:
        self.http.close()
        self.broker.stop()

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def data_dir(self) -> Path:
        return self.broker.data_dir

    def api_pids(self) -> list[int]:
        """Every pid the supervisor has logged for the api process, oldest first."""
        return [int(m) for m in _API_STARTED.findall(self.broker.log_path.read_text())]

    # -- HTTP
    def login(self, **fields: Any) -> str:
        r = self.http.post(f"{BASE}/login",
                           json=fields or {"username": ADMIN, "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        token = r.json()["access_token"]
        assert isinstance(token, str)
        return token

    @property
    def token(self) -> str:
        if self._token is None:
            self._token = self.login()
        return self._token

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}

    def get(self, path: str, token: str | None = None, **params: Any) -> httpx.Response:
        return self.http.get(_path(path), params=params, headers=self.auth(token))

    def post(self, path: str, token: str | None = None, **fields: Any) -> httpx.Response:
        return self.http.post(_path(path), json=fields, headers=self.auth(token))


def _path(path: str) -> str:
    return path if path.startswith("/graph") else f"{BASE}/{path}"


def wait_port(port: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing accepting on port {port} within {timeout}s")


def eventually(check: Callable[[], Any], timeout: float = 3.0, interval: float = 0.1) -> Any:
    """Poll `check` until it returns something truthy (the workers flush to
    LMDB every 0.5 s; the API must see it within about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)


def fail(reason: str, **extra: Any) -> dict[str, Any]:
    return {"bwapi-status": "fail", "bwapi-status-reason": reason, **extra}


def start_api_broker(tmp: Path, workers: int, **conf: Any) -> Iterator[ApiBroker]:
    b = ApiBroker(tmp, workers, **conf).start()
    try:
        yield b
    finally:
        b.stop()


# -------------------------------------------------------------------- unit tests


def test_throttle_locks_out_after_ten_failures_for_the_rest_of_the_window() -> None:
    t = LoginThrottle(max_failures=10, window=0.3)
    for _ in range(9):
        t.failed("a")
    assert t.blocked_for("a") == 0
    t.failed("a")
    assert 0 < t.blocked_for("a") <= 0.3
    assert t.blocked_for("b") == 0
    time.sleep(0.35)
    assert t.blocked_for("a") == 0


def test_payload_fields_text_or_base64() -> None:
    assert payload_fields(b"caf\xc3\xa9") == {"message": "café"}
    assert payload_fields(b"\xff\x00") == {"message": "/wA=", "encoding": "base64"}
    assert payload_fields(b"") == {"message": ""}


@pytest.mark.parametrize("header", [None, "", "  ", "Bearer"])
def test_bearer_without_a_token(header: str | None) -> None:
    with pytest.raises(NoCredentials):
        bearer(header)


def test_bearer_prefix_optional() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer abc") == "abc"
    assert bearer("abc") == "abc"
    with pytest.raises(InvalidToken):
        bearer("Bearer a b")
