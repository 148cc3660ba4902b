"""Keep alive and PINGREQ/PINGRESP (3.1.1 sections 3.1.2.10, 3.12, 3.13; 5.0 the same)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from conftest import Broker, Clients
from mqtt_helpers import (
    PINGRESP,
    RC_KEEP_ALIVE_TIMEOUT,
    SERVER_KEEP_ALIVE,
    V5,
    parse_disconnect,
    pingreq,
)


def test_pingreq_gets_pingresp(mq: Clients, version: int) -> None:
    """PINGREQ is answered with PINGRESP, exactly 0xD0 0x00 [MQTT-3.12.4-1]."""
    c = mq.raw_connected(version)
    c.send(pingreq())
    p = c.expect(PINGRESP)
    assert (p.flags, p.body) == (0, b"")


def test_silent_client_disconnected_after_one_and_a_half_keepalive(
    mq: Clients, version: int
) -> None:
    """With keepalive 1 s and no packets, the server closes the connection after
    1.5 s [MQTT-3.1.2-24] (5.0 [MQTT-3.1.2-22]) -- not before the keepalive itself.
    A v5 server may say why first: DISCONNECT 0x8D Keep Alive timeout.

    Mosquitto 2.0.11 takes ~5 s here, so this fails against it; the spec wins."""
    c = mq.raw_connected(version, keepalive=1)
    started = time.monotonic()
    packets = c.wait_closed(3.5)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed <= 2.6, f"closed after {elapsed:.2f}s for keepalive 1s"
    for p in packets:
        assert version == V5 and parse_disconnect(p, V5).rc == RC_KEEP_ALIVE_TIMEOUT, p


def test_activity_keeps_connection_alive(mq: Clients, version: int) -> None:
    """A client that pings within its keepalive stays connected; keepalive 0 turns the
    mechanism off [MQTT-3.1.2-24] (3.1.1 section 3.1.2.10)."""
    pinger = mq.raw_connected(version, keepalive=1)
    idle = mq.raw_connected(version, keepalive=0)
    deadline = time.monotonic() + 2.2
    while time.monotonic() < deadline:
        pinger.send(pingreq())
        assert pinger.expect(PINGRESP)
        time.sleep(0.4)
    assert pinger.is_open()
    assert idle.is_open()


@pytest.mark.bwfast_only  # Mosquitto refuses a max_keepalive below 10 s
def test_v5_server_keep_alive_is_enforced(mq: Clients, make_broker: Callable[..., Broker]) -> None:
    """With max_keepalive = 1 a v5 client asking for 60 s is told Server Keep Alive 1
    [MQTT-3.2.2-21] and is then held to it: silent for 1.5 s, it is disconnected."""
    b = make_broker(max_keepalive=1)
    c = mq.raw(V5, broker=b)
    ack = c.connect(mq.cid(), keepalive=60)
    assert ack.rc == 0 and ack.props.get(SERVER_KEEP_ALIVE) == 1
    started = time.monotonic()
    packets = c.wait_closed(3.5)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed <= 2.6, f"closed after {elapsed:.2f}s for Server Keep Alive 1s"
    for p in packets:
        assert parse_disconnect(p, V5).rc == RC_KEEP_ALIVE_TIMEOUT, p
