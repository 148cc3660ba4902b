"""v5 Topic Aliases from the server to a client (MQTT 5.0 §3.3.2.3.4).

CONTRACT.md: topic_alias_maximum applies "both directions". The broker may
use aliases up to the client's Topic Alias Maximum [MQTT-3.3.2-11]: the first
PUBLISH of a topic carries the topic and the alias, later ones an empty topic
and the alias; a client that announces no maximum never gets one.
"""
from __future__ import annotations

from conftest import Clients
from mqtt_helpers import TOPIC_ALIAS, TOPIC_ALIAS_MAXIMUM, V5


def test_server_assigns_aliases_up_to_the_clients_maximum(mq: Clients) -> None:
    a, b, c = mq.topic("a"), mq.topic("b"), mq.topic("c")
    sub = mq.raw(V5)
    assert sub.connect(mq.cid("s"), props={TOPIC_ALIAS_MAXIMUM: 2}).rc == 0
    sub.subscribe(mq.topic("#"), 1)
    pub = mq.raw_connected(V5)
    for i, topic in enumerate([a, a, b, b, c, c, a]):
        pub.publish(topic, str(i).encode(), qos=1, pid=i + 1)
    got = sub.receive(7)
    seen = [(m.topic, m.props.get(TOPIC_ALIAS), m.payload) for m in got]
    assert seen == [
        (a, 1, b"0"), ("", 1, b"1"),   # first use: topic + alias; then the alias alone
        (b, 2, b"2"), ("", 2, b"3"),
        (c, None, b"4"), (c, None, b"5"),  # both aliases in use: the topic in full
        ("", 1, b"6"),
    ]


def test_no_alias_without_a_client_maximum(mq: Clients) -> None:
    topic = mq.topic("x")
    sub = mq.raw_connected(V5)
    sub.subscribe(topic, 0)
    pub = mq.raw_connected(V5)
    for _ in range(2):
        pub.publish(topic, b"p", qos=1)
    assert [(m.topic, TOPIC_ALIAS in m.props) for m in sub.receive(2)] == [(topic, False)] * 2


def test_aliases_start_afresh_on_a_new_connection(mq: Clients) -> None:
    topic = mq.topic("r")
    cid = mq.cid("r")
    for _ in range(2):
        sub = mq.raw(V5)
        assert sub.connect(cid, props={TOPIC_ALIAS_MAXIMUM: 5}).rc == 0
        sub.subscribe(topic, 0)
        mq.raw_connected(V5).publish(topic, b"p", qos=1)
        m = sub.receive(1)[0]
        assert (m.topic, m.props.get(TOPIC_ALIAS)) == (topic, 1)  # [MQTT-3.3.2-7]
        sub.disconnect()
