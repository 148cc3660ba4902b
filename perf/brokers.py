"""Start and stop the brokers under test (and the ceiling sinks) on loopback ports."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from perf import procstat

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
QUEUE = 200_000  # offline / online queue limit: above the backlog scenario's 100,000


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _die_with_parent() -> None:
    """SIGTERM the broker if the harness dies without stopping it (PR_SET_PDEATHSIG).

    Mosquitto clears this when it drops root privileges; stop() covers it otherwise.
    """
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class Broker:
    """A broker process we started, in its own session so we can stop its whole group."""

    name: str
    port: int
    workdir: Path
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0, settle: float = 0.0) -> str | None:
        """Start and wait until the port accepts connections; None, or why it did not start."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.workdir, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, **self.env},
                                         preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with status {self.proc.returncode}: {self.tail()}"
            if accepts(self.port):
                time.sleep(settle)  # other worker processes may still be binding
                return None
            time.sleep(0.1)
        self.stop()
        return f"port {self.port} not accepting after {timeout:.0f} s: {self.tail()}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        return procstat.tree(self.proc.pid) if self.alive() and self.proc else []

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:]) or "(no output)"

    def stop(self) -> None:
        """SIGTERM the broker's process group, SIGKILL it after 5 s."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        try:  # stray workers left in the group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def bwfast(workdir: Path, workers: int) -> Broker:
    """bwfast from this checkout, REST API off, queues big enough for the backlog scenario."""
    port = free_port()
    data = workdir / "bwfast-data"
    conf = workdir / "bwfast.conf"
    conf.write_text(
        "[broker]\n"
        f"host = {HOST}\n"
        f"port = {port}\n"
        f"workers = {workers}\n"
        f"data_dir = {data}\n"
        "max_inflight = 20\n"
        f"max_queued_messages = {QUEUE}\n"
        "\n[api]\nenabled = false\n")
    argv = [sys.executable, "-m", "bwfast", "--config", str(conf), "--port", str(port),
            "--workers", str(workers), "--data-dir", str(data)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return Broker("bwfast", port, workdir, argv, {"PYTHONPATH": path})


def mosquitto(workdir: Path) -> Broker | None:
    """Mosquitto as close to bwfast's settings as its config allows; None if not installed."""
    exe = shutil.which("mosquitto")
    if exe is None:
        return None
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {HOST}\n"
        "allow_anonymous true\n"
        "persistence false\n"
        f"max_queued_messages {QUEUE}\n"
        "max_inflight_messages 20\n"
        "set_tcp_nodelay true\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\n")
    return Broker("mosquitto", port, workdir, [exe, "-c", str(conf)])


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto")
    if exe is None:
        return ""
    out = subprocess.run([exe, "-h"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else ""


class SinkServer:
    """The null sink / forwarder of perf.sink in its own process."""

    def __init__(self, mode: str) -> None:
        from perf import sink

        ctx = mp.get_context("spawn")
        self.port = free_port()
        ready = ctx.Event()
        self.proc = ctx.Process(target=sink.sink_main, args=(mode, self.port, ready),
                                daemon=True, name=f"perf-sink-{mode}")
        self.proc.start()
        if not ready.wait(30):
            self.stop()
            raise RuntimeError(f"{mode} sink did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(5)

    def __enter__(self) -> SinkServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
