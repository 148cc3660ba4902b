"""Fixtures that run the broker as a real process on a free port.

The broker under test is bwfast (`python -m bwfast`), or Mosquitto when
BWFAST_TEST_BROKER=mosquitto, so the suite's expectations can be checked
against a respected implementation. Tests that only make sense for bwfast are
marked `bwfast_only` and deselected in Mosquitto mode.

Every broker-backed test runs against a 1-worker and a 4-worker broker (the
cross-worker paths); BWFAST_TEST_WORKERS=1 (or any list) narrows that.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_helpers import V5, V311, PahoClient, RawClient

# The checkout's own tools (perf/) are importable, but last on the path: bwfast
# itself must come from what `pip install .` installed, compiled extensions and all.
sys.path.append(str(Path(__file__).resolve().parent.parent))

BROKER_KIND = os.environ.get("BWFAST_TEST_BROKER", "bwfast").strip().lower() or "bwfast"
MOSQUITTO = BROKER_KIND == "mosquitto"
WORKER_COUNTS = [int(w) for w in os.environ.get("BWFAST_TEST_WORKERS", "1,4").split(",") if w.strip()]

# Configuration every broker of the suite gets; tests add overrides.
BASE_CONF: dict[str, Any] = {
    "sys_interval": 1,
    "sync": True,
    "max_inflight": 20,
    "max_queued_messages": 1000,
    "topic_alias_maximum": 10,
}
# A second shared broker with small limits, for the tests of those limits.
LIMITS_CONF: dict[str, Any] = {
    "max_inflight": 3,
    "max_queued_messages": 5,
    "max_packet_size": 2048,
    "topic_alias_maximum": 4,
    "max_keepalive": 30,
}

# bwfast broker.conf section of each flat override key (CONTRACT.md); the rest is [broker].
_SECTIONS = {"sync": "persistence"}

# bwfast key -> mosquitto.conf key, for the overrides that have an equivalent.
_MOSQUITTO_KEYS = {
    "sys_interval": "sys_interval",
    "max_inflight": "max_inflight_messages",
    "max_queued_messages": "max_queued_messages",
    "max_packet_size": "max_packet_size",
    "max_keepalive": "max_keepalive",
    "topic_alias_maximum": "max_topic_alias",
    "allow_zero_length_clientid": "allow_zero_length_clientid",
    "retain_available": "retain_available",
}

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "bwfast_only: checks bwfast itself (config, $SYS names, compiled modules); "
        "deselected when BWFAST_TEST_BROKER=mosquitto",
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"broker under test: {BROKER_KIND}, workers: {WORKER_COUNTS}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (not skip) bwfast-only tests when the broker is Mosquitto."""
    if not MOSQUITTO:
        return
    kept = [i for i in items if i.get_closest_marker("bwfast_only") is None]
    dropped = [i for i in items if i.get_closest_marker("bwfast_only") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item so fixtures can see a failure."""
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ini_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Broker:
    """One broker process: bwfast or Mosquitto, in its own process group."""

    host = "127.0.0.1"

    def __init__(self, root: Path, conf: dict[str, Any], workers: int = 1) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = {**BASE_CONF, **conf}
        self.workers = workers
        self.data_dir = root / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.log_path = root / "broker.log"
        self.conf_path = root / ("mosquitto.conf" if MOSQUITTO else "broker.conf")
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_conf()

    # -- configuration
    def write_conf(self) -> None:
        text = self._mosquitto_conf() if MOSQUITTO else self._bwfast_conf()
        self.conf_path.write_text(text)

    def _bwfast_conf(self) -> str:
        sections: dict[str, dict[str, str]] = {
            "broker": {"host": self.host, "workers": str(self.workers)},
            "api": {"enabled": "false"},
            "persistence": {},
        }
        for key, value in self.conf.items():
            section, _, name = key.rpartition(".")
            section = section or _SECTIONS.get(key, "broker")
            sections.setdefault(section, {})[name] = _ini_value(value)
        lines = []
        for section, values in sections.items():
            lines.append(f"[{section}]")
            lines += [f"{k} = {v}" for k, v in values.items()]
            lines.append("")
        return "\n".join(lines)

    def _mosquitto_conf(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "log_dest stderr",
            "log_type all",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:  # else mosquitto drops to a user that can't write data_dir
            lines.append("user root")
        for key, value in self.conf.items():
            mapped = _MOSQUITTO_KEYS.get(key)
            if mapped:
                lines.append(f"{mapped} {_ini_value(value)}")
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        if MOSQUITTO:
            return ["mosquitto", "-c", str(self.conf_path)]
        return [
            sys.executable,
            "-m",
            "bwfast",
            "--config",
            str(self.conf_path),
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]

    # -- lifecycle
    def start(self) -> Broker:
        """Start (or restart, on the same port and data dir) and wait until it accepts."""
        assert not self.alive(), "broker already running"
        log = open(self.log_path, "ab")
        log.write(f"\n=== start {time.strftime('%H:%M:%S')} {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill9()
        raise RuntimeError(
            f"broker not accepting on {self.port} within {READY_TIMEOUT}s:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float = STOP_TIMEOUT) -> tuple[int | None, float]:
        """SIGTERM; returns (exit code or None if it had to be killed, seconds taken)."""
        assert self.proc is not None
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - started
        self._reap_group()
        return rc, elapsed

    def stop(self) -> None:
        if self.proc is not None:
            self.terminate()

    def kill9(self) -> None:
        """SIGKILL every process of the broker: the supervisor and its children."""
        if self.proc is None:
            return
        self._reap_group()

    def _reap_group(self) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        # wait for the group's children so the port and the data dir are free
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


SHARED_BROKERS: list[Broker] = []


@pytest.fixture(scope="session", params=WORKER_COUNTS, ids=lambda w: f"workers{w}")
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def _shared(
    tmp_path_factory: pytest.TempPathFactory, name: str, conf: dict[str, Any], workers: int
) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp(name), conf, workers).start()
    SHARED_BROKERS.append(b)
    yield b
    SHARED_BROKERS.remove(b)
    b.stop()


@pytest.fixture(scope="session")
def broker(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The default broker, shared by most tests (unique ids/topics keep them apart)."""
    yield from _shared(tmp_path_factory, "broker", {}, workers)


@pytest.fixture(scope="session")
def limits_broker(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A shared broker configured with LIMITS_CONF."""
    yield from _shared(tmp_path_factory, "limits", LIMITS_CONF, workers)


@pytest.fixture
def make_broker(
    workers: int, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Broker]]:
    """Factory for a private, started broker with config overrides."""
    made: list[Broker] = []

    def make(**overrides: Any) -> Broker:
        b = Broker(tmp_path / f"broker{len(made)}", overrides, workers)
        made.append(b)
        return b.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for b in made:
        if rep is not None and rep.failed:
            print(f"\n--- log tail of private broker {b.root}:\n{b.log_tail()}")
        b.kill9() if not b.alive() else b.stop()


@pytest.fixture(autouse=True)
def _watch_shared_brokers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Show broker logs on failure; a shared broker that died fails the test and restarts."""
    yield
    rep = getattr(request.node, "rep_call", None)
    dead = [b for b in SHARED_BROKERS if not b.alive()]
    if (rep is not None and rep.failed) or dead:
        for b in SHARED_BROKERS:
            print(f"\n--- log tail of shared broker {b.root}:\n{b.log_tail()}")
    for b in dead:
        b.kill9()
        b.start()
    if dead:
        pytest.fail(
            f"shared broker died during the test (exit {[b.proc and b.proc.returncode for b in dead]})"
        )


@pytest.fixture(params=[V311, V5], ids=["v311", "v5"])
def version(request: pytest.FixtureRequest) -> int:
    """Protocol level: 4 (MQTT 3.1.1) or 5 (MQTT 5.0)."""
    return int(request.param)


class Clients:
    """Creates raw and paho clients for one test, with unique ids and topics,
    and closes them all when the test ends."""

    def __init__(self, broker: Broker, nodeid: str) -> None:
        self.broker = broker
        self.uid = hashlib.sha1(nodeid.encode()).hexdigest()[:10]
        self.slug = re.sub(r"[^A-Za-z0-9]+", "_", nodeid.rpartition("::")[2])[:40]
        self._n = itertools.count(1)
        self._open: list[RawClient | PahoClient] = []

    def cid(self, tag: str = "") -> str:
        """A client id unique to this test (at most 23 chars [MQTT-3.1.3-5])."""
        return f"{self.uid}{tag or next(self._n)}"[:23]

    def topic(self, *parts: str) -> str:
        """A topic under this test's own prefix."""
        return "/".join(("t", self.uid, *parts))

    def raw(self, version: int = V311, *, broker: Broker | None = None) -> RawClient:
        b = broker or self.broker
        c = RawClient(b.host, b.port, version=version)
        self._open.append(c)
        return c

    def raw_connected(
        self,
        version: int = V311,
        client_id: str | None = None,
        *,
        broker: Broker | None = None,
        **kw: Any,
    ) -> RawClient:
        """A raw client whose CONNECT was accepted."""
        c = self.raw(version, broker=broker)
        ack = c.connect(self.cid() if client_id is None else client_id, **kw)
        assert ack.rc == 0, f"CONNECT refused: {ack}"
        return c

    def paho(
        self,
        protocol: int = V311,
        client_id: str | None = None,
        *,
        broker: Broker | None = None,
        clean: bool = True,
        connect: bool = True,
        keepalive: int = 20,
        session_expiry: int | None = None,
    ) -> PahoClient:
        b = broker or self.broker
        c = PahoClient(
            b.host,
            b.port,
            self.cid() if client_id is None else client_id,
            protocol=protocol,
            clean=clean,
            keepalive=keepalive,
        )
        self._open.append(c)
        if connect:
            sp, rc, _ = c.connect(session_expiry=session_expiry)
            assert rc == 0, f"paho CONNECT refused with {rc:#x}"
        return c

    def close_all(self) -> None:
        for c in self._open:
            c.close()
        self._open.clear()


@pytest.fixture
def mq(broker: Broker, request: pytest.FixtureRequest) -> Iterator[Clients]:
    """Client factory bound to the default broker (pass broker= for another one)."""
    clients = Clients(broker, request.node.nodeid)
    yield clients
    clients.close_all()
