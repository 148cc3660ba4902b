"""The broker as a process: compiled hot path, clean shutdown on SIGTERM, restart
after a crash, refusal of a bad configuration."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Broker, Clients
from mqtt_helpers import V5, V311, persistent


@pytest.mark.bwfast_only
def test_compiled_modules_are_used(tmp_path: Path) -> None:
    """bwfast imports the Cython-compiled codec and topic trie, not a Python fallback
    (DESIGN.md: a silent slow fallback must not pass as fast)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import bwfast.packet, bwfast.topics; print(bwfast.packet.__file__, bwfast.topics.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    paths = done.stdout.split()
    assert len(paths) == 2 and all(p.endswith(".so") for p in paths), done.stdout


@pytest.mark.bwfast_only
def test_sigterm_exits_zero_within_5s(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """SIGTERM: stop accepting, flush state, close clients, exit 0 within 5 s
    (CONTRACT.md), with clients connected and a persistent session holding messages."""
    b = make_broker()
    topic = mq.topic("t")
    sub = mq.raw(V5, broker=b)
    sub.connect(mq.cid("s"), **persistent(V5))
    sub.subscribe(topic, 1)
    sub.disconnect()
    pub = mq.raw_connected(V311, broker=b)
    for i in range(20):
        pub.publish(topic, str(i).encode(), qos=1, pid=i + 1)
    idle = mq.paho(V311, broker=b)
    rc, elapsed = b.terminate(timeout=5.0)
    assert rc == 0, f"exit code {rc} after {elapsed:.2f}s:\n{b.log_tail()}"
    assert elapsed < 5.0
    pub.wait_closed(1)
    assert idle.disconnected.wait(2)


def test_restart_after_kill9(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """After kill -9 of the whole broker, a restart on the same data dir serves again."""
    b = make_broker()
    c = mq.raw_connected(V311, broker=b)
    b.kill9()
    c.wait_closed(3)
    b.start()
    topic = mq.topic("back")
    sub = mq.raw_connected(V5, broker=b)
    sub.subscribe(topic, 1)
    mq.raw_connected(V311, broker=b).publish(topic, b"back", qos=1)
    assert sub.receive(1)[0].payload == b"back"


@pytest.mark.bwfast_only
@pytest.mark.parametrize(
    "conf",
    [
        "[broker]\nno_such_key = 1\n",
        "[broker]\nmax_inflight = lots\n",
    ],
)
def test_bad_config_fails_fast(tmp_path: Path, conf: str) -> None:
    """A bad config exits non-zero at once with one line naming the problem (CONTRACT.md)."""
    path = tmp_path / "broker.conf"
    path.write_text(conf + "[api]\nenabled = false\n")
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bwfast",
            "--config",
            str(path),
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=15,
    )
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    output = (done.stderr + done.stdout).lower()
    key = conf.split("\n")[1].split("=")[0].strip()
    assert key in output, output
