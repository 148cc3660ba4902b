"""Protocol errors the broker used to let through (issue 11, "Leniencies"), over
raw sockets: each closes the connection as the spec says, and nothing of the
offending packet reaches anyone.

- a PUBLISH from a client with a Subscription Identifier [MQTT-3.3.4-6];
- Request Problem / Response Information other than 0 or 1 (5.0 §3.1.2.11.6-7);
- a Response Topic with wildcards [MQTT-3.3.2-14], in a PUBLISH or a will;
- a will topic with wildcards: a malformed CONNECT in 3.1.1 (closed without a
  CONNACK [MQTT-3.1.4-1]), CONNACK 0x90 Topic Name invalid in 5.0.
"""

from __future__ import annotations

import pytest
from conftest import Clients
from mqtt_helpers import (
    CONNACK,
    DISCONNECT,
    RC_PROTOCOL_ERROR,
    RC_TOPIC_NAME_INVALID,
    REQUEST_PROBLEM_INFO,
    REQUEST_RESPONSE_INFO,
    RESPONSE_TOPIC,
    SUBSCRIPTION_ID,
    V5,
    V31,
    V311,
    Packet,
    RawClient,
    connect,
    parse_connack,
    parse_disconnect,
    publish,
)


def _protocol_error(packets: list[Packet]) -> None:
    """DISCONNECT 0x82 Protocol Error, then the close (5.0 §4.13)."""
    assert packets and packets[-1].ptype == DISCONNECT, packets
    assert parse_disconnect(packets[-1], V5).rc == RC_PROTOCOL_ERROR, packets


def _refused_connect(packets: list[Packet]) -> None:
    """A CONNECT with a Protocol Error: closed, at most after a failing CONNACK."""
    for p in packets:
        assert p.ptype == CONNACK and parse_connack(p, V5).rc >= 0x80, packets


def _listener(mq: Clients, topic: str) -> RawClient:
    c = mq.raw_connected(V5)
    c.subscribe(topic, 1)
    return c


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_with_subscription_identifier_mqtt_3_3_4_6(mq: Clients, qos: int) -> None:
    """Only the server sends a Subscription Identifier in a PUBLISH [MQTT-3.3.4-6]."""
    topic = mq.topic("subid")
    sub = _listener(mq, topic)
    c = mq.raw_connected(V5)
    c.send(publish(topic, b"x", qos=qos, version=V5, props={SUBSCRIPTION_ID: [7]}))
    _protocol_error(c.wait_closed())
    sub.expect_nothing(0.3)


@pytest.mark.parametrize("prop", [REQUEST_PROBLEM_INFO, REQUEST_RESPONSE_INFO],
                         ids=["request_problem_information", "request_response_information"])
def test_connect_request_information_is_0_or_1(mq: Clients, prop: int) -> None:
    """5.0 §3.1.2.11.6-7: "a value other than 0 or 1" is a Protocol Error."""
    c = mq.raw(V5)
    c.send(connect(mq.cid(), version=V5, props={prop: 2}))
    _refused_connect(c.wait_closed())
    for value in (0, 1):
        assert mq.raw(V5).connect(mq.cid(), props={prop: value}).rc == 0


@pytest.mark.parametrize("response_topic", ["reply/+", "reply/#", "#", ""],
                         ids=["plus", "hash", "only_hash", "empty"])
def test_publish_response_topic_must_be_a_topic_name_mqtt_3_3_2_14(
        mq: Clients, response_topic: str) -> None:
    topic = mq.topic("rt")
    sub = _listener(mq, topic)
    c = mq.raw_connected(V5)
    c.send(publish(topic, b"x", qos=1, pid=3, version=V5,
                   props={RESPONSE_TOPIC: response_topic}))
    _protocol_error(c.wait_closed())
    sub.expect_nothing(0.3)
    # A proper Response Topic passes through unchanged [MQTT-3.3.2-15].
    mq.raw_connected(V5).publish(topic, b"ok", qos=1, props={RESPONSE_TOPIC: "reply/to"})
    got = sub.expect_publish()
    assert got.payload == b"ok" and got.props[RESPONSE_TOPIC] == "reply/to"


def test_will_response_topic_must_be_a_topic_name(mq: Clients) -> None:
    """Will Properties carry a Response Topic too: the same rule, in the CONNECT."""
    topic = mq.topic("will")
    sub = _listener(mq, topic)
    c = mq.raw(V5)
    c.send(connect(mq.cid(), version=V5, will_topic=topic, will_payload=b"w",
                   will_props={RESPONSE_TOPIC: "replies/#"}))
    _refused_connect(c.wait_closed())
    sub.expect_nothing(0.3)


@pytest.mark.parametrize("version", [V31, V311], ids=["v31", "v311"])
def test_v3_will_topic_with_wildcard_is_a_malformed_connect(mq: Clients, version: int) -> None:
    """3.1.1 [MQTT-3.1.4-1]: a CONNECT that doesn't conform to §3.1 is closed
    without a CONNACK; a will topic with a wildcard is no topic name. (It got
    CONNACK 0x05 Not authorized.)"""
    for will_topic in ("will/+", "will/#"):
        c = mq.raw(version)
        c.send(connect(mq.cid(), version=version, will_topic=will_topic, will_payload=b"w"))
        assert c.wait_closed() == []


def test_v5_will_topic_with_wildcard_gets_topic_name_invalid(mq: Clients) -> None:
    """5.0: CONNACK 0x90 Topic Name invalid (the code the CONNACK table gives a
    will topic the server refuses), then the close."""
    c = mq.raw(V5)
    c.send(connect(mq.cid(), version=V5, will_topic="will/#", will_payload=b"w"))
    packets = c.wait_closed()
    assert len(packets) == 1 and parse_connack(packets[0], V5).rc == RC_TOPIC_NAME_INVALID
