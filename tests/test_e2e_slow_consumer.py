"""A client that stops reading must not eat the broker's memory or stall others.

QoS 0 messages to a client whose transport holds more than WRITE_HIGH bytes
are dropped and counted (`$SYS/broker/publish/messages/dropped`); everyone else
keeps getting everything.
"""
from __future__ import annotations

import socket
import time

import pytest
from conftest import Broker, Clients
from mqtt_helpers import V311, PahoClient

pytestmark = pytest.mark.bwfast_only

PAYLOAD = b"x" * 16384
COUNT = 1500  # 24 MB: three times the 8 MB a slow client may have buffered


def _dropped(b: Broker) -> int:
    watcher = PahoClient(b.host, b.port, "dropped-watcher")
    watcher.connect()
    watcher.subscribe("$SYS/broker/publish/messages/dropped", 0)
    deadline = time.monotonic() + 5
    value = None
    while value is None and time.monotonic() < deadline:
        for m in watcher.drain(0.2):
            value = int(m.payload)
    watcher.close()
    assert value is not None, "no $SYS dropped figure"
    return value


def test_slow_reader_gets_qos0_dropped_others_get_everything(mq: Clients, make_broker) -> None:
    b = make_broker(sys_interval=1)
    topic = mq.topic("flood")
    slow = mq.raw(V311, broker=b)
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(mq.cid("slow"))
    slow.subscribe(topic, 0)            # ... and then never reads again
    fast = mq.raw_connected(V311, broker=b)
    fast.subscribe(topic, 0)
    pub = mq.raw_connected(V311, broker=b)
    packet = (bytes([0x30]) + _varint(2 + len(topic) + len(PAYLOAD))
              + len(topic).to_bytes(2, "big") + topic.encode() + PAYLOAD)
    chunk = 100  # 1.6 MB at a time: the reading client never falls 8 MB behind
    for _ in range(COUNT // chunk):
        pub.send(packet * chunk)
        got = fast.receive(chunk, timeout=30)
        assert len(got) == chunk and all(m.payload == PAYLOAD for m in got)
    deadline = time.monotonic() + 6
    while _dropped(b) == 0:
        assert time.monotonic() < deadline, "nothing counted as dropped for the slow reader"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
