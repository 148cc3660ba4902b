"""A broker safe to expose (issue 11): data at rest, one broker per data_dir,
bounded memory before CONNECT, max_connections, safe defaults, and running
from a source checkout.

Real brokers (`python -m bwfast`), raw sockets, /proc for modes, memory and
listening addresses; nothing mocked.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, Clients, free_port
from mqtt_helpers import (
    CONNACK,
    V5,
    V311,
    RawClient,
    connect,
    parse_connack,
    varint,
)
from test_api_support import ApiBroker, eventually, wait_port

pytestmark = pytest.mark.bwfast_only

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
MB = 1 << 20


# ------------------------------------------------------------------ helpers

def worker_pids(b: Broker) -> list[int]:
    """The supervisor's children (the workers; these brokers run no API process)."""
    assert b.proc is not None
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == b.proc.pid:
            pids.append(int(entry))
    assert pids, "no worker processes found"
    return pids


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def total_rss_mb(b: Broker) -> float:
    return sum(rss_kb(p) for p in worker_pids(b)) / 1024


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def closed_within(c: RawClient, seconds: float) -> list[Any]:
    """The packets sent before the broker closed the connection, which it must do
    within `seconds` (far less than its 10 s wait for a CONNECT)."""
    return c.wait_closed(timeout=seconds)


# ------------------------------------------------------------------ data at rest

def _assert_private(data_dir: Path) -> None:
    # A 4-worker broker accepts MQTT as soon as one worker listens; worker 0 may
    # still be making its control socket.
    deadline = time.monotonic() + 10
    while not (data_dir / "run" / "worker-0.ctl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mode(data_dir) == 0o700, oct(mode(data_dir))
    names = set()
    for root, dirs, files in os.walk(data_dir):
        for d in dirs:
            assert mode(Path(root, d)) == 0o700, (d, oct(mode(Path(root, d))))
        for f in files:
            names.add(f)
            assert mode(Path(root, f)) == 0o600, (f, oct(mode(Path(root, f))))
    assert {"data.mdb", "lock.mdb", "bwfast.lock", "worker-0.ctl"} <= names, names
    run = data_dir / "run"
    assert mode(run) == 0o700
    sockets = [p for p in run.iterdir() if stat.S_ISSOCK(os.lstat(p).st_mode)]
    assert sockets and all(mode(s) == 0o600 for s in sockets), [(s, oct(mode(s))) for s in sockets]


def test_data_dir_is_private_whatever_the_umask(tmp_path: Path, workers: int) -> None:
    """A data_dir bwfast creates is 0700 and everything in it 0600 (sockets, LMDB,
    lock file), even when started with umask 000."""
    b = Broker(tmp_path / "b", {}, workers)
    b.data_dir.rmdir()  # let the broker create it
    old = os.umask(0)
    try:
        b.start()
    finally:
        os.umask(old)
    try:
        _assert_private(b.data_dir)
        assert "was readable by other users" not in b.log_path.read_text()
    finally:
        b.stop()


def test_loose_data_dir_is_tightened_with_one_log_line(tmp_path: Path, workers: int) -> None:
    """An existing data_dir with group/other access (and files an older bwfast made
    0644) is tightened at start, with one log line."""
    b = Broker(tmp_path / "b", {}, workers)
    b.start()
    b.stop()
    os.chmod(b.data_dir, 0o755)
    for name in ("data.mdb", "lock.mdb"):
        os.chmod(b.data_dir / name, 0o644)
    (b.data_dir / "notes.txt").write_text("x")
    os.chmod(b.data_dir / "notes.txt", 0o666)
    log_before = b.log_path.read_text()
    b.start()
    try:
        _assert_private(b.data_dir)
        new_log = b.log_path.read_text()[len(log_before):]
        assert new_log.count("was readable by other users") == 1, new_log
    finally:
        b.stop()


def test_passwd_names_its_data_dir_and_keeps_it_private(tmp_path: Path) -> None:
    """`bwfast passwd` without --data-dir wrote to ./bwfast-data silently; it says
    where it wrote, and a data_dir it creates is as private as the broker's (umask 0)."""
    def passwd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bwfast", "passwd", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: os.umask(0) and None)
    done = passwd("add", "dev-7", "--password", "pw")
    assert done.returncode == 0, done.stderr
    default = tmp_path / "bwfast-data"
    assert done.stdout == f"added 'dev-7' in {default}\n"
    assert mode(default) == 0o700
    assert {p.name: mode(p) for p in default.iterdir()} == {"data.mdb": 0o600,
                                                          "lock.mdb": 0o600}
    other = tmp_path / "elsewhere"
    done = passwd("--data-dir", str(other), "set", "dev-7", "--password", "pw")
    assert done.stdout == f"added 'dev-7' in {other}\n", done.stderr
    done = passwd("--data-dir", str(other), "remove", "dev-7")
    assert done.stdout == f"removed 'dev-7' from {other}\n", done.stderr


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _cat_as_nobody(*paths: Path) -> subprocess.CompletedProcess[bytes]:
    """Read files as uid nobody, as a read-only LMDB open would (it maps data.mdb
    and opens lock.mdb). `cat`: the venv's python may sit under /root (0700)."""
    return subprocess.run(["cat", *map(str, paths)], preexec_fn=_as_nobody,
                          capture_output=True, timeout=30)


def test_another_local_user_cannot_read_the_jwt_secret(tmp_path: Path) -> None:
    """Issue 11: a local user opened LMDB read-only, took meta/jwt_secret and forged
    an admin token. Now the data is unreadable to another uid (run as nobody)."""
    if os.geteuid() != 0:
        pytest.skip("cannot drop privileges to another uid (tests not run as root): "
                    "the other-user read of data_dir was NOT checked")
    # A root every user may traverse, so only data_dir's own modes protect it.
    root = Path(tempfile.mkdtemp(prefix="bwfast-sec-", dir="/tmp"))
    os.chmod(root, 0o755)
    api = ApiBroker(root / "b", 1)
    api.broker.root.chmod(0o755)
    try:
        api.start()
        api.login()  # the API made its secret
        import lmdb  # the test itself is root: read the secret to look for it
        import msgpack

        env = lmdb.open(str(api.data_dir), readonly=True, lock=False, max_dbs=32)
        with env.begin() as txn:
            raw = txn.get(b"jwt_secret", db=env.open_db(b"meta", txn=txn, create=False))
        env.close()
        assert raw, "no jwt_secret in meta"
        secret = msgpack.unpackb(raw)
        secret = secret if isinstance(secret, bytes) else str(secret).encode()
        # Control: as nobody, a world-readable copy (the modes bwfast used to leave)
        # gives the secret away: the attack of the issue.
        loose = root / "loose"
        loose.mkdir()
        for name in ("data.mdb", "lock.mdb"):
            shutil.copy(api.data_dir / name, loose / name)
            os.chmod(loose / name, 0o644)
        os.chmod(loose, 0o755)
        done = _cat_as_nobody(loose / "data.mdb", loose / "lock.mdb")
        assert done.returncode == 0 and secret in done.stdout, done.stderr
        # The real data_dir: refused, the LMDB files and the control socket alike.
        for path in (api.data_dir / "data.mdb", api.data_dir / "lock.mdb",
                     api.data_dir / "run" / "worker-0.ctl"):
            done = _cat_as_nobody(path)
            assert done.returncode != 0 and b"Permission denied" in done.stderr, (path, done)
            assert secret not in done.stdout
        print(f"as uid {NOBODY}: {done.stderr.decode().strip()}")
    finally:
        api.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ one broker per data_dir

@pytest.fixture
def api_broker(tmp_path: Path, workers: int) -> Iterator[ApiBroker]:
    b = ApiBroker(tmp_path / "first", workers).start()
    yield b
    b.stop()


def test_second_broker_on_the_same_data_dir_exits_at_once(
        api_broker: ApiBroker, tmp_path: Path, mq: Clients) -> None:
    """A second bwfast on a data_dir in use exits non-zero at once with one line
    naming the first one's pid; the first one's MQTT and REST carry on."""
    first = api_broker.broker
    assert first.proc is not None
    second = [sys.executable, "-m", "bwfast", "--config", str(first.conf_path),
              "--data-dir", str(first.data_dir), "--port", str(free_port()),
              "--api-port", str(free_port())]
    started = time.monotonic()
    done = subprocess.run(second, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 5
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [f"bwfast: [broker] data_dir {first.data_dir} is in use by a running "
                     f"bwfast (pid {first.proc.pid})"], done.stderr
    assert "started worker" not in done.stderr
    # The first broker still serves MQTT ...
    topic = mq.topic("still")
    sub = mq.raw_connected(V5, broker=first)
    sub.subscribe(topic, 1)
    pub = mq.raw_connected(V311, broker=first)
    pub.publish(topic, b"up", qos=1)
    assert sub.expect_publish().payload == b"up"
    # ... and REST calls that reach the workers over their control sockets.
    r = api_broker.get("/graph/client_count")
    assert r.status_code == 200 and r.json()["bwapi-status"] == "success", r.text
    r = api_broker.post("send_all", topic=topic, message="rest", QoS=1)
    assert r.status_code == 200, r.text
    assert sub.expect_publish().payload == b"rest"


def test_stale_run_files_are_removed_at_start(tmp_path: Path, workers: int) -> None:
    """What a killed broker left in run/ is cleaned before the new one starts."""
    b = Broker(tmp_path / "b", {}, workers)
    run = b.data_dir / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(run / "worker-9.sock"))
    stale.close()
    (run / "leftover.ctl").write_text("")
    b.start()
    try:
        names = sorted(p.name for p in run.iterdir())
        assert "worker-9.sock" not in names and "leftover.ctl" not in names, names
        assert "worker-0.ctl" in names
    finally:
        b.stop()


# ------------------------------------------------------------------ before CONNECT

@pytest.mark.parametrize("first", [b"\x30", b"\x30\x7f" + b"x" * 10, b"\x82\x05\x00"],
                         ids=["publish_byte", "publish_partial", "subscribe_partial"])
def test_first_byte_not_connect_closes_at_once(mq: Clients, first: bytes) -> None:
    """[MQTT-3.1.0-1]: the first byte decides; the broker doesn't wait for the rest
    of a packet that can't be a CONNECT (it used to, until the 10 s timeout)."""
    c = mq.raw(V311)
    c.send(first)
    assert closed_within(c, 3.0) == []


def test_connect_claiming_more_than_max_connect_size_closes_at_once(mq: Clients) -> None:
    """A CONNECT fixed header claiming more than max_connect_size (64 KB) is refused
    before any of it is buffered."""
    c = mq.raw(V311)
    c.send(b"\x10" + varint(65536 + 1))
    assert closed_within(c, 3.0) == []
    ok = mq.raw(V5)  # a CONNECT within the limit, with 60 KB of authentication data
    ok.send(connect(mq.cid(), version=V5, props={0x15: "x-none", 0x16: b"a" * 60000}))
    ack = parse_connack(ok.expect(CONNACK), V5)
    assert ack.rc == 0x8C  # Bad authentication method: read whole, then refused


def _stream(sock: socket.socket, total: int, sent: list[int]) -> None:
    chunk = b"\xa5" * MB
    sock.settimeout(5)
    try:
        while sent[0] < total:
            sock.sendall(chunk)
            sent[0] += len(chunk)
    except OSError:
        pass


def test_pre_connect_memory_stays_bounded(make_broker: Callable[..., Broker]) -> None:
    """Issue 11: two sockets claiming a 200 MB CONNECT and streaming took a worker
    from 32 to 440 MB. Now the claim closes them and the workers' RSS stays put."""
    b = make_broker()
    before = total_rss_mb(b)
    socks, sent, threads = [], [], []
    for _ in range(2):
        s = socket.create_connection((b.host, b.port))
        s.sendall(b"\x10" + varint(200 * 1000 * 1000))
        counter = [0]
        t = threading.Thread(target=_stream, args=(s, 96 * MB, counter))
        t.start()
        socks.append(s)
        sent.append(counter)
        threads.append(t)
    for t in threads:
        t.join(30)
    time.sleep(0.3)
    after = total_rss_mb(b)
    for s in socks:
        s.close()
    assert after - before < 16, (
        f"workers' RSS {before:.0f} -> {after:.0f} MB after {sum(c[0] for c in sent) // MB} MB "
        "streamed by two unauthenticated sockets")
    assert all(c[0] < 96 * MB for c in sent), "the broker kept reading a refused CONNECT"


def _ws_open(port: int) -> socket.socket:
    """A raw WebSocket upgrade to /mqtt; returns the socket once 101 came back."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def _closed_soon(s: socket.socket, seconds: float = 3.0) -> bytes:
    """Read until EOF (or reset), which must come within `seconds`; return what came."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {seconds}s (got {got!r})") from None
    return got


def test_websocket_before_connect_is_bounded_too(make_broker: Callable[..., Broker]) -> None:
    """Over WebSocket: a frame claiming 200 MB before CONNECT is refused from its
    header (close 1009), and a first MQTT byte other than CONNECT closes at once."""
    ws_port = free_port()
    b = make_broker(**{"websocket.enabled": True, "websocket.port": ws_port})
    wait_port(ws_port)
    s = _ws_open(ws_port)
    s.sendall(bytes([0x82, 0xFF]) + (200 * 1000 * 1000).to_bytes(8, "big") + b"mask")
    got = _closed_soon(s)
    assert got[:1] == b"\x88" and got[2:4] == (1009).to_bytes(2, "big"), got
    s.close()
    s = _ws_open(ws_port)
    s.sendall(bytes([0x82, 0x82]) + b"\x00\x00\x00\x00" + b"\x30\x7f")  # PUBLISH first
    _closed_soon(s)
    s.close()
    assert total_rss_mb(b) < 200


def _holder(b: Broker, client: socket.socket) -> int | None:
    """The worker pid that accepted `client`'s connection (None: not accepted yet)."""
    cport = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if (int(f[1].split(":")[1], 16) == b.port and int(f[2].split(":")[1], 16) == cport):
            inode = f[9]
    if inode is None:
        return None
    for pid in worker_pids(b):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def test_bytes_behind_a_pending_connect_are_bounded(tmp_path: Path) -> None:
    """What a client sends behind its CONNECT while the CONNECT is pending (here:
    another worker, stopped, is asked to let go of the client id) is not read
    beyond max_connect_size: the rest waits in the kernel (issue 11: nothing an
    unauthenticated socket sends may make the broker hold more than that).

    Two workers are needed for a pending takeover, whatever BWFAST_TEST_WORKERS."""
    b = Broker(tmp_path / "b", {}, 2).start()
    stopped = None
    try:
        first = RawClient(b.host, b.port, version=V311)
        assert first.connect("held-cid").rc == 0
        stopped = _holder(b, first.sock)
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        # A second connection for the same client id, on the other (running) worker.
        for _ in range(40):
            s = socket.create_connection((b.host, b.port))
            time.sleep(0.05)
            holder = _holder(b, s)
            if holder is not None and holder != stopped:
                break
            s.close()
        else:
            raise AssertionError("no connection reached the running worker")
        base = rss_kb(holder) / 1024
        # CONNECT, then a PUBLISH claiming 200 MB (fine for a connected client), streamed.
        s.sendall(connect("held-cid", version=V311) + b"\x30" + varint(200 * 1000 * 1000))
        s.setblocking(False)
        sent = 0
        chunk = b"\xa5" * 65536
        deadline = time.monotonic() + 0.8  # the takeover waits 2 s for the stopped worker
        while time.monotonic() < deadline and sent < 96 * MB:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.005)
        grown = rss_kb(holder) / 1024 - base
        try:
            early = s.recv(16)
        except BlockingIOError:
            early = b""
        assert early == b"", "the CONNECT was answered before the measurement: too slow"
        assert sent < 32 * MB, f"the broker read {sent // MB} MB behind a pending CONNECT"
        assert grown < 16, f"worker RSS grew {grown:.0f} MB behind a pending CONNECT"
        s.close()
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        b.stop()


# ------------------------------------------------------------------ max_connections

def test_max_connections_counts_every_worker(make_broker: Callable[..., Broker],
                                             mq: Clients, workers: int) -> None:
    """[broker] max_connections = 3 over all workers: the 4th client is refused
    (v5 CONNACK 0x97 Quota exceeded, 3.1.1 closed), refusals are counted in $SYS,
    and a slot freed by a disconnect can be taken again."""
    b = make_broker(max_connections=3)
    watcher = mq.raw_connected(V311, broker=b)
    watcher.subscribe("$SYS/broker/clients/refused", 0)
    # Enough clients that, with 4 workers, they land on several of them.
    held = [mq.raw_connected(V5, broker=b), mq.raw_connected(V311, broker=b)]
    for _ in range(6):
        c = mq.raw(V5, broker=b)
        c.send(connect(mq.cid(), version=V5))
        packets = closed_within(c, 5.0)
        assert len(packets) == 1 and parse_connack(packets[0], V5).rc == 0x97, packets
        c = mq.raw(V311, broker=b)
        c.send(connect(mq.cid(), version=V311))
        assert closed_within(c, 5.0) == []

    deadline = time.monotonic() + 5
    payload = b""
    while payload != b"12":  # the sum over workers, published every second
        assert time.monotonic() < deadline, f"$SYS/broker/clients/refused = {payload!r}"
        payload = watcher.expect_publish().payload
    held.pop().close()

    def slot_free() -> bool:
        c = mq.raw(V311, broker=b)
        c.send(connect(mq.cid(), version=V311))
        try:
            return bool(parse_connack(c.expect(CONNACK, 2.0), V311).rc == 0)
        except AssertionError:
            return False
    eventually(slot_free, timeout=5.0, interval=0.2)


# ------------------------------------------------------------------ safe defaults

def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on `port` (/proc/net/tcp)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":
                found.add(addr)
    return found


def _run_bwfast(cwd: Path, args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bwfast", *args], cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_port(port)
    except AssertionError:
        proc.kill()
        raise AssertionError(log.read_text()) from None
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(5)


def test_without_config_mqtt_listens_on_loopback_only(tmp_path: Path) -> None:
    """No --config, no ./broker.conf: MQTT on 127.0.0.1 only, and the log says how
    to open it; no exposure warning."""
    port = free_port()
    log = tmp_path / "bwfast.log"
    proc = _run_bwfast(tmp_path, ["--port", str(port), "--api-port", str(free_port()),
                                  "--workers", "1", "--data-dir", str(tmp_path / "d")],
                       port, log)
    try:
        assert _listen_addresses(port) == {"0100007F"}, _listen_addresses(port)
    finally:
        _stop(proc)
    text = log.read_text()
    assert text.count("MQTT listens on 127.0.0.1 only; to accept other hosts, set "
                      "[broker] host = 0.0.0.0 in a broker.conf") == 1, text
    assert "any host that reaches the port" not in text


def test_exposed_without_authentication_warns_once(tmp_path: Path, workers: int) -> None:
    """MQTT on a non-loopback address with authentication off: one warning at start."""
    port = free_port()
    conf = tmp_path / "broker.conf"
    conf.write_text(f"[broker]\nhost = 0.0.0.0\nworkers = {workers}\n[api]\nenabled = false\n")
    log = tmp_path / "bwfast.log"
    proc = _run_bwfast(tmp_path, ["--port", str(port), "--data-dir", str(tmp_path / "d")],
                       port, log)
    try:
        assert _listen_addresses(port) == {"00000000"}
    finally:
        _stop(proc)
    text = log.read_text()
    assert text.count("WARNING bwfast.config: MQTT listens on 0.0.0.0 with [authentication] "
                      "enabled = false") == 1, text


# ------------------------------------------------------------------ from a source checkout

def test_python_m_bwfast_runs_in_the_repository_root(tmp_path: Path) -> None:
    """README: `python -m bwfast --config broker.conf` in the repository root. After a
    non-editable `pip install .` the checkout's bwfast/ (no compiled modules) shadowed
    the installed package: ModuleNotFoundError bwfast.packet."""
    port = free_port()
    conf = tmp_path / "broker.conf"
    conf.write_text("[broker]\nhost = 127.0.0.1\nworkers = 1\n[api]\nenabled = false\n")
    proc = _run_bwfast(REPO, ["--config", str(conf), "--port", str(port),
                              "--data-dir", str(tmp_path / "d")], port, tmp_path / "log")
    try:
        c = RawClient("127.0.0.1", port, version=V5)
        assert c.connect("from-checkout").rc == 0
        c.close()
    finally:
        _stop(proc)


# Without the editable install's import hook, as after `pip install .`: the
# installed package (a copy of the built one) on sys.path, a checkout without
# compiled modules in the working directory, which Python searches first.
NON_EDITABLE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
import bwfast.stats, bwfast.worker
print(bwfast.stats.compiled_modules())
print(bwfast.worker.__file__)
"""


def test_a_checkout_without_compiled_modules_uses_the_installed_build(tmp_path: Path) -> None:
    import bwfast

    built = Path(bwfast.__file__).parent
    installed = tmp_path / "site"
    shutil.copytree(built, installed / "bwfast",
                    ignore=shutil.ignore_patterns("__pycache__"))
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "bwfast", checkout / "bwfast",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    env = {**os.environ, "PYTHONPATH": str(installed)}
    done = subprocess.run([sys.executable, "-c", NON_EDITABLE], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    modules, worker = done.stdout.split("\n")[:2]
    assert modules == "packet topics fastpath"
    # One build: the checkout's Python never runs against another build's .so.
    assert worker.startswith(str(installed)), worker
