"""Interop with Mosquitto's command-line clients (Debian package mosquitto-clients)."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest
from conftest import Broker, Clients
from mqtt_helpers import V5, V311

PROTOCOLS = {V311: "mqttv311", V5: "5"}
# mosquitto_sub block-buffers a pipe; line buffering shows its SUBACK at once
LINE_BUFFERED = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []


def _require_clients() -> None:
    missing = [c for c in ("mosquitto_sub", "mosquitto_pub") if shutil.which(c) is None]
    assert not missing, f"install mosquitto-clients: {missing} not found"


class Sub:
    """mosquitto_sub -C 1 in the background; ready once its SUBACK is printed (-d)."""

    def __init__(self, broker: Broker, topic: str, version: int, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                *LINE_BUFFERED,
                "mosquitto_sub",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-t",
                topic,
                "-q",
                "1",
                "-C",
                "1",
                "-V",
                PROTOCOLS[version],
                "-d",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.subscribed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "received SUBACK" in line:
                self.subscribed.set()

    def finish(self, timeout: float = 5.0) -> list[str]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"mosquitto_sub did not get a message: {self.lines}") from None
        self.reader.join(2)
        assert self.proc.returncode == 0, self.lines
        return self.lines


def _pub(broker: Broker, topic: str, version: int, *args: str) -> None:
    done = subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            topic,
            "-V",
            PROTOCOLS[version],
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mosquitto_pub_to_mosquitto_sub(mq: Clients, broker: Broker, version: int) -> None:
    """mosquitto_sub -C 1 receives what mosquitto_pub publishes (QoS 1)."""
    _require_clients()
    topic = mq.topic("cli")
    sub = Sub(broker, topic, version)
    assert sub.subscribed.wait(5), f"mosquitto_sub never subscribed: {sub.lines}"
    _pub(broker, topic, version, "-q", "1", "-m", "hello from mosquitto_pub")
    lines = sub.finish()
    assert "hello from mosquitto_pub" in lines


def test_mosquitto_clients_with_paho(mq: Clients, broker: Broker, version: int) -> None:
    """A paho subscriber gets mosquitto_pub's message with its QoS and (v5) user property."""
    _require_clients()
    topic = mq.topic("cli2")
    sub = mq.paho(version)
    sub.subscribe(topic, 2)
    extra = ["-D", "publish", "user-property", "origin", "cli"] if version == V5 else []
    _pub(broker, topic, version, "-q", "2", "-m", "qos two", *extra)
    msg = sub.get()
    assert (msg.payload, msg.qos) == (b"qos two", 2)
    if version == V5:
        assert msg.props.UserProperty == [("origin", "cli")]


def test_mosquitto_sub_gets_retained(mq: Clients, broker: Broker, version: int) -> None:
    """A retained message from mosquitto_pub -r reaches a later mosquitto_sub, flagged
    retained (-F %r prints 1)."""
    _require_clients()
    topic = mq.topic("cli-r")
    _pub(broker, topic, version, "-q", "1", "-r", "-m", "kept")
    sub = Sub(broker, topic, version, "-F", "RX %r %t %p")
    lines = sub.finish()
    assert f"RX 1 {topic} kept" in lines
    _pub(broker, topic, version, "-r", "-n")  # clear it


def test_paho_publish_to_mosquitto_sub(mq: Clients, broker: Broker) -> None:
    """mosquitto_sub (v5) receives a paho publish with a wildcard subscription."""
    _require_clients()
    base = mq.topic("cli3")
    sub = Sub(broker, base + "/#", V5, "-F", "RX %t %p")
    assert sub.subscribed.wait(5), sub.lines
    pub = mq.paho(V311)
    pub.publish(base + "/deep/leaf", b"from paho", qos=1)
    assert f"RX {base}/deep/leaf from paho" in sub.finish()


@pytest.mark.parametrize("version_", [V311, V5], ids=["v311", "v5"])
def test_mosquitto_sub_counts(mq: Clients, broker: Broker, version_: int) -> None:
    """mosquitto_sub -C 5 exits after exactly five messages, in order."""
    _require_clients()
    topic = mq.topic("cli-n")
    proc = subprocess.Popen(
        [
            *LINE_BUFFERED,
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            "5",
            "-V",
            PROTOCOLS[version_],
            "-d",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "received SUBACK" in line:
                ready.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert ready.wait(5), lines
    pub = mq.paho(version_)
    for i in range(5):
        pub.publish(topic, f"msg-{i}", qos=1)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"mosquitto_sub did not get 5 messages: {lines}") from None
    t.join(2)
    assert [ln for ln in lines if ln.startswith("msg-")] == [f"msg-{i}" for i in range(5)]
