"""[cluster] in broker.conf: defaults, validation (one line naming the key), secrets."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bwfast.config import load_config, to_dict
from bwfast.errors import ConfigError


def conf(tmp_path: Path, body: str) -> str:
    path = tmp_path / "broker.conf"
    path.write_text("[cluster]\n" + body)
    return str(path)


def test_defaults_off_and_the_host_name(tmp_path: Path) -> None:
    cl = load_config(conf(tmp_path, "")).cluster
    assert not cl.enabled and not cl.durable_sessions
    assert cl.nats == "nats://127.0.0.1:4222" and cl.lease == 10
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    assert cl.node_name == (host[:64] or "node")


def test_urls_are_a_comma_separated_list(tmp_path: Path) -> None:
    cl = load_config(conf(tmp_path, "nats = nats://a:4222, tls://b:4222\nnode = n-1\n")).cluster
    assert cl.nats == "nats://a:4222,tls://b:4222" and cl.node_name == "n-1"


@pytest.mark.parametrize(("body", "key"), [
    ("nats = http://x:4222\n", "[cluster] nats"),
    ("nats =\n", "[cluster] nats"),
    ("node = a.b\n", "[cluster] node"),
    ("user = u\n", "[cluster] password"),
    ("credentials = /nonexistent/x.creds\n", "[cluster] credentials"),
    ("tls_certfile = /etc/hostname\n", "[cluster] tls_keyfile"),
    ("lease = 1\n", "[cluster] lease"),
    ("durable_sessions = maybe\n", "[cluster] durable_sessions"),
])
def test_bad_values_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(conf(tmp_path, body))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_password_is_masked(tmp_path: Path) -> None:
    cfg = load_config(conf(tmp_path, "user = bw\npassword = s3cret-nats\n"))
    assert cfg.cluster.password == "s3cret-nats"
    assert "s3cret-nats" not in str(to_dict(cfg))


def test_broker_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    path = conf(tmp_path, "enabled = true\nnats = ftp://x\n")
    r = subprocess.run([sys.executable, "-m", "bwfast", "--config", path, "--data-dir",
                        str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "[cluster] nats" in r.stderr
