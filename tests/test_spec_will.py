"""Will messages (3.1.1 section 3.1.2.5; 5.0 sections 3.1.2.5, 3.1.3.2 and 3.14)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Clients
from mqtt_helpers import (
    CONTENT_TYPE,
    RC_DISCONNECT_WITH_WILL,
    SESSION_EXPIRY,
    USER_PROPERTY,
    V5,
    V311,
    RawClient,
)


def _will_client(
    mq: Clients,
    version: int,
    topic: str,
    payload: bytes,
    *,
    cid: str | None = None,
    qos: int = 1,
    retain: bool = False,
    keepalive: int = 30,
    will_props: dict[int, object] | None = None,
    props: dict[int, object] | None = None,
    clean: bool = True,
) -> RawClient:
    c = mq.raw(version)
    ack = c.connect(
        cid or mq.cid(),
        will_topic=topic,
        will_payload=payload,
        will_qos=qos,
        will_retain=retain,
        keepalive=keepalive,
        will_props=will_props,
        props=props,
        clean=clean,
    )
    assert ack.rc == 0
    return c


@pytest.mark.parametrize("how", ["close", "reset"])
def test_will_on_abnormal_close(mq: Clients, version: int, how: str) -> None:
    """A connection closed without DISCONNECT publishes the will [MQTT-3.1.2-8]."""
    topic = mq.topic("will")
    sub = mq.paho(version)
    sub.subscribe(topic, 1)
    c = _will_client(mq, version, topic, b"gone", qos=1)
    c.abort() if how == "reset" else c.close()
    msg = sub.get(3)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b"gone", 1, False)


def test_will_on_keepalive_timeout(mq: Clients, version: int) -> None:
    """A client silent for 1.5 x keepalive is disconnected and its will published
    [MQTT-3.1.2-24]; keepalive 1 s -> will after about 1.5 s, not before 1 s.

    Mosquitto 2.0.11 checks keepalives only every few seconds (it drops a keepalive-1
    client after ~5 s), so this fails against it; the spec wins."""
    topic = mq.topic("will")
    sub = mq.paho(version)
    sub.subscribe(topic, 1)
    c = _will_client(mq, version, topic, b"timed out", keepalive=1)
    started = time.monotonic()
    msg = sub.get(3.5)
    elapsed = time.monotonic() - started
    assert msg.payload == b"timed out"
    assert 1.0 <= elapsed <= 2.6, f"will after {elapsed:.2f}s for keepalive 1s"
    c.wait_closed(1)


def test_no_will_after_disconnect(mq: Clients, version: int) -> None:
    """After a normal DISCONNECT the will is discarded, not published [MQTT-3.1.2-10]
    [MQTT-3.14.4-3]. A second client's will, lost abnormally afterwards, bounds the wait."""
    topic, probe = mq.topic("will", "a"), mq.topic("will", "b")
    sub = mq.paho(version)
    sub.subscribe(mq.topic("will", "#"), 1)
    a = _will_client(mq, version, topic, b"must not appear")
    a.disconnect(rc=0 if version == V5 else None)
    b = _will_client(mq, version, probe, b"probe")
    b.close()
    got = sub.get_until(probe, 3)
    assert [m.topic for m in got] == [probe]
    assert sub.drain(0.3) == []


def test_v5_disconnect_with_will_message(mq: Clients) -> None:
    """DISCONNECT with reason 0x04 (Disconnect with Will Message) publishes the will
    (5.0 section 3.14.2.1)."""
    topic = mq.topic("will")
    sub = mq.paho(V5)
    sub.subscribe(topic, 1)
    c = _will_client(mq, V5, topic, b"asked for it")
    c.disconnect(rc=RC_DISCONNECT_WITH_WILL)
    assert sub.get(3).payload == b"asked for it"


def test_will_retain(mq: Clients, version: int) -> None:
    """A will with Will Retain 1 is published as a retained message [MQTT-3.1.2-17]:
    a later subscriber receives it with RETAIN=1."""
    topic = mq.topic("will")
    live = mq.paho(version)
    live.subscribe(topic, 1)
    c = _will_client(mq, version, topic, b"last words", retain=True)
    c.close()
    assert live.get(3).payload == b"last words"
    later = mq.raw_connected(version)
    later.subscribe(topic, 1)
    msg = later.receive(1)[0]
    assert (msg.payload, msg.retain) == (b"last words", True)


def test_will_qos2(mq: Clients, version: int) -> None:
    """The will is published with its Will QoS [MQTT-3.1.2-14]."""
    topic = mq.topic("will")
    sub = mq.raw_connected(version)
    sub.subscribe(topic, 2)
    c = _will_client(mq, version, topic, b"q2", qos=2)
    c.abort()
    msg = sub.receive(1, 3)[0]
    assert (msg.payload, msg.qos) == (b"q2", 2)


def test_v5_will_properties_forwarded(mq: Clients) -> None:
    """Will properties (content type, user properties) go out with the will message
    (5.0 section 3.1.3.2)."""
    topic = mq.topic("will")
    sub = mq.raw_connected(V5)
    sub.subscribe(topic, 1)
    c = _will_client(
        mq,
        V5,
        topic,
        b"{}",
        will_props={CONTENT_TYPE: "application/json", USER_PROPERTY: [("k", "v"), ("k", "w")]},
    )
    c.abort()
    msg = sub.receive(1, 3)[0]
    assert msg.props.get(CONTENT_TYPE) == "application/json"
    assert msg.props.get(USER_PROPERTY) == [("k", "v"), ("k", "w")]


# ---- v5 Will Delay Interval (5.0 section 3.1.3.2.2)
WILL_DELAY = 0x18


def test_v5_will_delay(mq: Clients) -> None:
    """The will is held for the Will Delay Interval [MQTT-3.1.3-9]: delay 2 s -> not
    before ~2 s, and soon after."""
    topic = mq.topic("will")
    sub = mq.paho(V5)
    sub.subscribe(topic, 1)
    c = _will_client(
        mq, V5, topic, b"delayed", will_props={WILL_DELAY: 2}, props={SESSION_EXPIRY: 30}
    )
    c.abort()
    started = time.monotonic()
    msg = sub.get(5)
    elapsed = time.monotonic() - started
    assert msg.payload == b"delayed"
    assert 1.7 <= elapsed <= 4.0, f"will after {elapsed:.2f}s for a 2s delay"


def test_v5_will_delay_cancelled_by_reconnect(mq: Clients) -> None:
    """Reconnecting to the session before the Will Delay passes means the will is
    not sent [MQTT-3.1.3-9]. A second client with the same delay, not reconnecting,
    bounds the wait."""
    topic, probe = mq.topic("will", "a"), mq.topic("will", "b")
    sub = mq.paho(V5)
    sub.subscribe(mq.topic("will", "#"), 1)
    cid = mq.cid("a")
    kw: dict[str, Any] = {"will_props": {WILL_DELAY: 2}, "props": {SESSION_EXPIRY: 30}}
    a = _will_client(mq, V5, topic, b"must not appear", cid=cid, clean=False, **kw)
    b = _will_client(mq, V5, probe, b"probe", **kw)
    a.abort()
    b.abort()
    time.sleep(0.3)
    back = mq.raw(V5)
    ack = back.connect(cid, clean=False, props={SESSION_EXPIRY: 30})
    assert ack.rc == 0 and ack.session_present is True
    got = sub.get_until(probe, 5)
    assert [m.topic for m in got] == [probe]
    assert sub.drain(0.5) == []


def test_v5_will_sent_when_session_ends_before_delay(mq: Clients) -> None:
    """The will goes out when the Will Delay passes or the session ends, whichever
    is first [MQTT-3.1.2-8] (5.0 section 3.1.3.2.2): session expiry 0 -> at once
    despite delay 30. Mosquitto 2.0.11 waits for the delay, so this fails against it."""
    topic = mq.topic("will")
    sub = mq.paho(V5)
    sub.subscribe(topic, 1)
    c = _will_client(
        mq, V5, topic, b"session over", will_props={WILL_DELAY: 30}, props={SESSION_EXPIRY: 0}
    )
    started = time.monotonic()
    c.abort()
    assert sub.get(3).payload == b"session over"
    assert time.monotonic() - started < 2.0


def test_v311_disconnect_closes_quietly(mq: Clients) -> None:
    """On a 3.1.1 DISCONNECT (0xE0 0x00) the server sends nothing back and closes the
    connection if the client has not (3.1.1 section 3.14.4)."""
    c = _will_client(mq, V311, mq.topic("will"), b"x")
    c.send(b"\xe0\x00")
    assert c.wait_closed(3) == []
