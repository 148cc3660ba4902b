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
    api_port: int = 0                 # bwfast's REST API, when on (the apibusy case)

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


ACL_RULES = 1000  # rules in the acl_file of the "bwfast-acl" broker


def acl_file(path: Path, rules: int = ACL_RULES) -> None:
    """An acl_file of ``rules`` lines that the harness's anonymous clients all walk
    (deny lines, grants on other trees, %c patterns) before the last line grants
    what they use: the ACL's cost with a realistic rule count, nothing refused."""
    n = max(rules - 1, 3) // 3
    lines = [f"topic deny secret/{i}/#" for i in range(n)]
    lines += [f"topic read feeds/{i}/+" for i in range(n)]
    lines += [f"pattern readwrite devices/%c/{i}" for i in range(max(rules - 1 - 2 * n, 1))]
    lines.append("topic readwrite b/#")
    path.write_text("\n".join(lines) + "\n")


API_LOGIN = ("admin", "perf-admin-pw")  # the apibusy case's REST login


def device_users(n: int) -> list[str]:
    """The authstorm's device usernames (their passwords: perf.gen.password)."""
    return [f"dev{i:05d}" for i in range(n)]


def credentials(path: Path, users: int) -> str:
    """A Mosquitto password_file of ``users`` devices, hashed by Mosquitto's own
    ``mosquitto_passwd -U`` ($7$ PBKDF2-SHA512, its default 101 iterations); both
    brokers get these same hashes. Returns who hashed it (for the notes)."""
    from perf.gen import password

    path.write_text("".join(f"{u}:{password(u)}\n" for u in device_users(users)))
    exe = shutil.which("mosquitto_passwd")
    if exe is not None:
        subprocess.run([exe, "-U", str(path)], check=True, capture_output=True, timeout=600)
        return "mosquitto_passwd -U"
    # No Mosquitto: the same $7$ format, made by bwfast's own hash (same default cost).
    sys.path.insert(0, str(REPO))
    from bwfast.auth import hash_password, to_mosquitto

    path.write_text("".join(f"{u}:{to_mosquitto(hash_password(password(u)))}\n"
                            for u in device_users(users)))
    return "bwfast.auth (mosquitto_passwd not found)"


def bwfast(workdir: Path, workers: int, acl_rules: int = 0, name: str = "bwfast",
           password_file: Path | None = None, api: bool = False) -> Broker:
    """bwfast from this checkout, REST API off, queues big enough for the backlog scenario;
    with ``acl_rules``, access control on with an acl_file of that many rules; with
    ``password_file``, authentication on and those users imported (`bwfast passwd
    import`); with ``api``, the REST API on a free port."""
    port = free_port()
    data = workdir / "bwfast-data"
    conf = workdir / "bwfast.conf"
    extra = ""
    if acl_rules:
        acl_file(workdir / "acl_file", acl_rules)
        extra += f"\n[acl]\nenabled = true\nfile = {workdir / 'acl_file'}\n"
    if password_file is not None:
        extra += "\n[authentication]\nenabled = true\n"
    api_port = free_port() if api else 0
    extra += (f"\n[api]\nenabled = true\nhost = {HOST}\nport = {api_port}\n"
              f"username = {API_LOGIN[0]}\npassword = {API_LOGIN[1]}\n" if api
              else "\n[api]\nenabled = false\n")
    conf.write_text(
        "[broker]\n"
        f"host = {HOST}\n"
        f"port = {port}\n"
        f"workers = {workers}\n"
        f"data_dir = {data}\n"
        "max_inflight = 20\n"
        f"max_queued_messages = {QUEUE}\n" + extra)
    argv = [sys.executable, "-m", "bwfast", "--config", str(conf), "--port", str(port),
            "--workers", str(workers), "--data-dir", str(data)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path}
    if password_file is not None:
        subprocess.run([sys.executable, "-m", "bwfast", "passwd", "--config", str(conf),
                        "import", str(password_file)], check=True, capture_output=True,
                       timeout=600, env={**os.environ, **env}, cwd=workdir)
    return Broker(name, port, workdir, argv, env, api_port=api_port)


def mosquitto(workdir: Path, password_file: Path | None = None) -> Broker | None:
    """Mosquitto as close to bwfast's settings as its config allows; None if not installed.
    With ``password_file``, anonymous clients are refused and those users log in."""
    exe = shutil.which("mosquitto")
    if exe is None:
        return None
    port = free_port()
    conf = workdir / "mosquitto.conf"
    # (`user root`: as root, Mosquitto reads the password_file after switching to its
    # own user, which may not reach a private temporary directory; nothing else changes)
    auth = (f"allow_anonymous false\npassword_file {password_file}\nuser root\n"
            if password_file else "allow_anonymous true\n")
    conf.write_text(
        f"listener {port} {HOST}\n"
        + auth +
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
