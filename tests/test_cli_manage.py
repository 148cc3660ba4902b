"""`bwfast acl add|remove|list|reload` and `bwfast kick`, run as subprocesses
against a running broker (1 and 4 workers) and against a data directory with
no broker; and `bwfast passwd` / `bwfast acl` saying which data_dir they use.

The broker runs with the ACL on as a deny list (`default = allow`) and an
acl_file, so every rule the CLI adds or reloads can be seen taking effect.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Broker
from mqtt_helpers import PUBLISH, V5, V311, RawClient, parse_disconnect

pytestmark = pytest.mark.bwfast_only

ADMINISTRATIVE_ACTION = 0x98
EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 1, 2, 3


@pytest.fixture(scope="module")
def acl_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("acl_file") / "acl"
    path.write_text("# anonymous clients\ntopic deny file/denied/#\n")
    return path


@pytest.fixture(scope="module")
def running(workers: int, acl_file: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("cli_manage"), {
        "acl.enabled": True, "acl.default": "allow", "acl.file": str(acl_file)}, workers)
    b.start()
    yield b
    b.stop()


def bwfast(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bwfast", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, stdin=subprocess.DEVNULL)


def on(b: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    """A subcommand pointed at the broker's data directory, run where its
    broker.conf is (as an operator would)."""
    sub, rest = args[0], args[1:]
    return bwfast(sub, "--data-dir", str(b.data_dir), *rest, cwd=b.root)


class Clients:
    def __init__(self, b: Broker) -> None:
        self.b = b
        self.tag = uuid.uuid4().hex[:8]
        self.open: list[RawClient] = []

    def connect(self, name: str, version: int = V311) -> RawClient:
        c = RawClient(self.b.host, self.b.port, version=version)
        self.open.append(c)
        assert c.connect(self.cid(name)).rc == 0
        return c

    def cid(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def close(self) -> None:
        for c in self.open:
            c.close()


@pytest.fixture
def clients(running: Broker) -> Iterator[Clients]:
    c = Clients(running)
    yield c
    c.close()


def delivered(pub: RawClient, sub: RawClient, topic: str) -> bool:
    pub.publish(topic, b"x", qos=1)
    try:
        return sub.recv_packet(0.5).ptype == PUBLISH
    except TimeoutError:
        return False


def test_acl_add_list_remove_apply_to_the_running_broker(
        running: Broker, clients: Clients) -> None:
    sub = clients.connect("sub", V5)
    pub = clients.connect("pub")
    base = f"cli/{clients.tag}"
    assert sub.subscribe(f"{base}/#", 0).codes == [0]
    assert delivered(pub, sub, f"{base}/secret")

    r = on(running, "acl", "add", "--clientid", clients.cid("sub"), f"{base}/secret", "deny")
    assert r.returncode == 0, r.stderr
    assert str(running.data_dir) in r.stdout
    assert f"{running.workers} running worker(s) reloaded" in r.stdout
    assert not delivered(pub, sub, f"{base}/secret")  # at once, no reconnect
    assert delivered(pub, sub, f"{base}/open")

    r = on(running, "acl", "list", "--clientid", clients.cid("sub"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"clientid\t{clients.cid('sub')}\tdeny\t{base}/secret"]
    assert str(running.data_dir) in r.stderr
    assert on(running, "acl", "add", "--pattern", f"{base}/%c/x", "read").returncode == 0
    assert f"pattern\t\tread\t{base}/%c/x" in on(running, "acl", "list").stdout.splitlines()

    r = on(running, "acl", "remove", "--clientid", clients.cid("sub"), f"{base}/secret", "read")
    assert r.returncode == EXIT_FAILED  # access given: it must match
    r = on(running, "acl", "remove", "--clientid", clients.cid("sub"), f"{base}/secret")
    assert r.returncode == 0, r.stderr
    assert delivered(pub, sub, f"{base}/secret")
    r = on(running, "acl", "remove", "--clientid", clients.cid("sub"), f"{base}/secret")
    assert r.returncode == EXIT_FAILED and "no such rule" in r.stderr
    assert on(running, "acl", "remove", "--pattern", f"{base}/%c/x").returncode == 0
    assert on(running, "acl", "list", "--clientid", clients.cid("sub")).stdout == ""


def test_acl_reload_rereads_the_acl_file(running: Broker, clients: Clients,
                                         acl_file: Path) -> None:
    sub = clients.connect("sub")
    pub = clients.connect("pub")
    assert sub.subscribe("file/#", 0).codes == [0]
    assert not delivered(pub, sub, "file/denied/a")
    assert delivered(pub, sub, f"file/{clients.tag}")
    original = acl_file.read_text()
    acl_file.write_text(original + f"topic deny file/{clients.tag}\n")
    try:
        r = on(running, "acl", "reload")
        assert r.returncode == 0, r.stderr
        assert f"{running.workers} of {running.workers} worker(s)" in r.stdout
        assert not delivered(pub, sub, f"file/{clients.tag}")
    finally:
        acl_file.write_text(original)
        assert on(running, "acl", "reload").returncode == 0
    assert delivered(pub, sub, f"file/{clients.tag}")


def test_kick(running: Broker, clients: Clients) -> None:
    v5 = clients.connect("v5", V5)
    v3 = clients.connect("v3", V311)
    r = on(running, "kick", clients.cid("v5"))
    assert r.returncode == 0, r.stderr
    assert clients.cid("v5") in r.stdout and str(running.data_dir) in r.stdout
    assert [parse_disconnect(p, V5).rc for p in v5.wait_closed()] == [ADMINISTRATIVE_ACTION]
    assert on(running, "kick", clients.cid("v3")).returncode == 0
    assert v3.wait_closed() == []
    r = on(running, "kick", clients.cid("v3"))
    assert r.returncode == EXIT_FAILED and "not connected" in r.stderr


def test_passwd_remove_and_set_close_the_users_live_connections(
        running: Broker, clients: Clients) -> None:
    """As remove_auth / edit_auth do (this broker has authentication off, so any
    password connects; the username is what the connection is known by)."""
    user = f"dev-{clients.tag}"
    assert on(running, "passwd", "add", user, "--password", "one").returncode == 0
    conns = []
    for i, version in enumerate((V311, V5)):
        c = RawClient(running.host, running.port, version=version)
        clients.open.append(c)
        assert c.connect(clients.cid(f"c{i}"), username=user, password=b"one").rc == 0
        conns.append(c)
    bystander = clients.connect("bystander")
    r = on(running, "passwd", "set", user, "--password", "two")
    assert r.returncode == 0, r.stderr
    assert "disconnected 2 live connection(s)" in r.stdout
    assert conns[0].wait_closed() == []
    assert [parse_disconnect(p, V5).rc for p in conns[1].wait_closed()] == [ADMINISTRATIVE_ACTION]
    c = RawClient(running.host, running.port, version=V311)
    clients.open.append(c)
    assert c.connect(clients.cid("again"), username=user, password=b"two").rc == 0
    r = on(running, "passwd", "remove", user)
    assert r.returncode == 0, r.stderr
    assert c.wait_closed() == []
    assert bystander.is_open()


@pytest.mark.parametrize("args", [
    ("acl", "add", "--username", "u", "a/#/b", "read"),
    ("acl", "add", "--username", "u", "a", "everything"),
    ("acl", "add", "a", "read"),
    ("acl", "add", "--username", "u", "--clientid", "c", "a", "read"),
    ("acl", "add", "--username", "", "a", "read"),
    ("acl", "frobnicate"),
    ("kick",),
])
def test_bad_usage(running: Broker, args: tuple[str, ...]) -> None:
    r = on(running, *args)
    assert r.returncode == EXIT_USAGE, (r.stdout, r.stderr)
    assert r.stderr


def test_without_a_running_broker(tmp_path: Path) -> None:
    """LMDB rules can be managed offline; reload and kick need a broker."""
    data = tmp_path / "data"
    r = bwfast("acl", "--data-dir", str(data), "add", "--username", "bob", "bob/#", "readwrite",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"no broker running on {data}" in r.stdout
    assert "not enforced" in r.stderr  # no config: [acl] is off
    r = bwfast("acl", "--data-dir", str(data), "list", "--username", "bob", cwd=tmp_path)
    assert r.stdout.splitlines() == ["username\tbob\treadwrite\tbob/#"]
    for args in (("acl", "--data-dir", str(data), "reload"),
                 ("kick", "--data-dir", str(data), "someone")):
        r = bwfast(*args, cwd=tmp_path)
        assert r.returncode == EXIT_NOT_RUNNING, r.stderr
        assert r.stderr.strip().endswith(f"no broker running on {data}")
    # a stale control socket file left by a broker that is gone changes nothing
    (data / "run").mkdir(exist_ok=True)
    (data / "run" / "worker-0.ctl").write_text("")
    r = bwfast("kick", "--data-dir", str(data), "someone", cwd=tmp_path)
    assert r.returncode == EXIT_NOT_RUNNING
    r = bwfast("acl", "--data-dir", str(data), "remove", "--username", "bob", "bob/#",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_data_dir_comes_from_the_config_and_is_printed(tmp_path: Path) -> None:
    """Without --data-dir: [broker] data_dir of --config or ./broker.conf, as the
    broker finds it, and the command says which directory it wrote to."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "broker.conf").write_text("[broker]\ndata_dir = ./from-cwd-conf\n")
    other = tmp_path / "other.conf"
    other.write_text(f"[broker]\ndata_dir = {tmp_path / 'from-config'}\n")

    r = bwfast("passwd", "add", "dev1", "--password", "pw", cwd=here)
    assert r.returncode == 0, r.stderr
    assert str(here / "from-cwd-conf") in r.stdout
    r = bwfast("passwd", "list", cwd=here)
    assert r.stdout.split() == ["dev1"] and str(here / "from-cwd-conf") in r.stderr
    r = bwfast("acl", "add", "--username", "dev1", "dev1/#", "read", cwd=here)
    assert r.returncode == 0, r.stderr
    assert str(here / "from-cwd-conf") in r.stdout

    r = bwfast("passwd", "--config", str(other), "add", "dev2", "--password", "pw", cwd=here)
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "from-config") in r.stdout
    r = bwfast("acl", "--config", str(other), "list", cwd=here)
    assert r.stdout == "" and str(tmp_path / "from-config") in r.stderr
    r = bwfast("passwd", "--config", str(other), "list", cwd=tmp_path)
    assert r.stdout.split() == ["dev2"]
    assert not (here / "bwfast-data").exists()
