"""Names longer than LMDB can key: refused client ids, long retained topics kept.

LMDB keys stop at 511 bytes while MQTT allows 65535-byte topics and client ids.
bwfast refuses client ids it cannot key ([MQTT-3.1.3-5] lets a server limit
them) and stores long topics under a digest, with the topic in the record.
"""
from __future__ import annotations

import pytest
from conftest import Clients
from mqtt_helpers import V5, V311

pytestmark = pytest.mark.bwfast_only


def test_client_id_too_long_to_key_is_refused(mq: Clients, version: int) -> None:
    c = mq.raw(version)
    ack = c.connect("d" * 600)
    assert ack.rc == (0x85 if version == V5 else 2)
    c.wait_closed()
    ok = mq.raw(version)
    assert ok.connect("d" * 400).rc == 0, "a long but keyable client id is accepted"


def test_long_retained_topic_is_kept_and_replaced(mq: Clients) -> None:
    topic = mq.topic("long", "x" * 900)
    pub = mq.raw_connected(V311)
    pub.publish(topic, b"first", qos=1, retain=True)
    pub.publish(topic, b"second", qos=1, retain=True)
    sub = mq.raw_connected(V311)
    sub.subscribe(topic, 1)
    got = sub.receive(1)
    assert [(m.topic, m.payload, m.retain) for m in got] == [(topic, b"second", True)]
    pub.publish(topic, b"", qos=1, retain=True)
    done = mq.topic("done")
    late = mq.raw_connected(V311)
    late.subscribe([(topic, 1), (done, 0)])
    pub.publish(done, b"end")
    got = late.collect_until(done)
    assert [m.topic for m in got] == [done], "the cleared retained message is gone"
