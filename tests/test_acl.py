"""Access control enforced by a real broker (CONTRACT.md, "Access control").

A broker whose Mosquitto-syntax acl_file (ACL_TEXT) grants per user, per client
id and by pattern is driven with raw MQTT 3.1.1 and 5.0 clients, on 1 and 4
workers. With 4 workers the publisher is placed on another worker than the
subscriber (tests/test_cluster_support.py), so forwarded messages, raw fast-lane
packets among them, are checked on the receiving worker.

Every enforcement point: SUBSCRIBE (SUBACK 0x80 / 0x87), PUBLISH (v5 PUBACK /
PUBREC 0x87, else dropped), each delivery through a wide filter (`#`, `+`,
shared groups, retained on subscribe, wills, `$SYS`, offline queues), run-time
rules in LMDB applied by the ``acl_reload`` control command to live
subscriptions, SIGHUP, a bad acl_file, and the issue's attack with
authentication on.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import SHARED_BROKERS, Broker, Clients
from mqtt_helpers import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    V5,
    V311,
    Publish,
    RawClient,
    parse_ack,
    parse_publish,
    persistent,
    puback,
    pubcomp,
    publish,
    pubrec,
    pubrel,
)
from test_cluster_support import not_on, open_on, owner_pid

pytestmark = pytest.mark.bwfast_only  # [acl] is bwfast's configuration

ACL_TEXT = """\
# Mosquitto acl_file syntax. Before any `user` line: anonymous clients.
topic read public/#
topic anon/#
topic deny anon/secret/#

user dev1
topic readwrite shared/#
topic deny shared/private/#
topic read retained/#

user dev2
topic readwrite shared/#
topic readwrite retained/#
topic write wills/#

user monitor
topic read #
topic read $SYS/broker/clients/#
topic read $SYS/broker/messages/#
topic deny devices/#

# Everyone: %u is the username, %c the client id.
pattern readwrite devices/%u/#
pattern write inbox/%c
pattern read outbox/%c/#
"""
DENIED_SYS = "$SYS/broker/messages/denied"


def refused(version: int) -> int:
    """SUBACK code of a filter the client may not read: 0x80 (3.1.1), 0x87 (5.0)."""
    return 0x87 if version == V5 else 0x80


@pytest.fixture(scope="module")
def acl_broker(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    root = tmp_path_factory.mktemp("acl")
    path = root / "acl_file"
    path.write_text(ACL_TEXT)
    b = Broker(root / "broker", {"acl.enabled": True, "acl.file": str(path)}, workers).start()
    SHARED_BROKERS.append(b)
    yield b
    SHARED_BROKERS.remove(b)
    b.stop()


@pytest.fixture
def ac(acl_broker: Broker, request: pytest.FixtureRequest) -> Iterator[Clients]:
    clients = Clients(acl_broker, request.node.nodeid)
    yield clients
    clients.close_all()


def user(ac: Clients, version: int, username: str | None, *, cid: str | None = None,
         away_from: int = 0, broker: Broker | None = None, **kw: Any) -> tuple[RawClient, int]:
    """A client connected as ``username`` (None: anonymous); with ``away_from`` (a
    worker pid) on another worker when there are several. Returns (client, worker pid)."""
    b = broker or ac.broker
    if away_from and b.workers > 1:
        c, pid = open_on(ac, b, version, not_on(away_from), "another worker")
    else:
        c = ac.raw(version, broker=b)
        pid = owner_pid(b, c.sock)
    ack = c.connect(ac.cid() if cid is None else cid, username=username, **kw)
    assert ack.rc == 0, f"CONNECT refused: {ack}"
    return c, pid


def topics_until(c: RawClient, sentinel: str, timeout: float = 5.0) -> list[str]:
    return [m.topic for m in c.collect_until(sentinel, timeout)]


def drain(c: RawClient, seconds: float) -> list[Publish]:
    """Every PUBLISH that arrives within ``seconds`` (acknowledged as it comes)."""
    out: list[Publish] = []
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return out
        try:
            p = c.recv_packet(left)
        except TimeoutError:
            return out
        if p.ptype == PUBREL:
            c.send(pubcomp(parse_ack(p, c.version).pid, version=c.version))
            continue
        if p.ptype != PUBLISH:
            continue
        msg = parse_publish(p, c.version)
        if msg.pid is not None:
            c.send((puback if msg.qos == 1 else pubrec)(msg.pid, version=c.version))
        out.append(msg)


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            if result:
                return result
            assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


# ---------------------------------------------------------------- run-time rules (LMDB)


def write_rule(broker: Broker, kind: str, who: str, topic: str, access: str,
               remove: bool = False) -> None:
    """What `add_acl` / `remove_acl` write, in the broker's own row format."""
    from bwfast.acl import DB, check_rule, rule_key, rule_value
    from bwfast.store import Store

    rule = check_rule(kind, who, topic, access)
    store = Store(str(broker.data_dir))
    try:
        if remove:
            store.delete(DB, rule_key(rule))
        else:
            store.put(DB, rule_key(rule), rule_value(rule))
    finally:
        store.close()


def control(broker: Broker, command: str, args: dict[str, Any] | None = None) -> list[dict]:
    """Send one control command to every worker's socket; their replies in order."""
    replies = []
    for i in range(broker.workers):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            path = str(broker.data_dir / "run" / f"worker-{i}.ctl")
            # A broker accepts MQTT once one worker listens; the others may still
            # be starting (their control sockets come with their listeners).
            eventually(lambda: s.connect_ex(path) == 0)  # noqa: B023 - used at once
            s.sendall(msgpack.packb(["api", 7, command, args or {}], use_bin_type=True))
            unpacker = msgpack.Unpacker(raw=False)
            while True:
                data = s.recv(65536)
                assert data, f"worker {i} closed its control socket"
                unpacker.feed(data)
                frames = list(unpacker)
                if frames:
                    assert frames[0][:2] == ["reply", 7]
                    replies.append(frames[0][2])
                    break
    return replies


def reload_everywhere(broker: Broker) -> None:
    replies = control(broker, "acl_reload")
    assert all(r["ok"] and r["generation"] > 1 for r in replies), replies


# ---------------------------------------------------------------- SUBSCRIBE


def test_subscribe_to_a_filter_that_can_read_nothing_is_refused(ac: Clients, version: int) -> None:
    c, _ = user(ac, version, None)
    ack = c.subscribe([("public/#", 1), ("secret/#", 1), ("anon/#", 0), ("anon/secret/+", 0),
                       ("$SYS/#", 0), ("$share/g/secret/x", 0), ("#", 2), ("devices/+/x", 0)])
    no = refused(version)
    # `#` and `devices/+/x`: grants can match some of their topics (public/..., anon/...
    # and nothing for an anonymous client under devices/: %u never applies to it).
    assert ack.codes == [1, no, 0, no, no, no, 2, no]
    assert c.is_open()


def test_dev1_may_not_subscribe_to_sys_or_to_anothers_devices(ac: Clients, version: int) -> None:
    c, _ = user(ac, version, "dev1")
    ack = c.subscribe([("$SYS/#", 0), ("devices/dev2/#", 0), ("shared/private/#", 0),
                       ("#", 1), ("+/+/+", 0), ("devices/+/secret", 0), ("devices/dev1/#", 0)])
    no = refused(version)
    assert ack.codes == [no, no, no, 1, 0, 0, 0]


# ---------------------------------------------------------------- delivery through wide filters


def test_wide_filters_never_deliver_a_denied_topic(ac: Clients, version: int) -> None:
    """The issue's attack without passwords: dev1 on `#`, `+/+/+`, `devices/+/secret`
    never reads devices/dev2/... (QoS 0 through the fast lane, and QoS 1/2)."""
    uid = ac.uid
    sub, sub_pid = user(ac, version, "dev1")
    assert sub.subscribe([("#", 2), ("+/+/+", 2), ("devices/+/secret", 2)]).codes == [2, 2, 2]
    own, _ = user(ac, V311, "dev2")
    assert own.subscribe(f"devices/dev2/{uid}/#", 0).codes == [0]
    pub, _ = user(ac, version, "dev2", away_from=sub_pid)
    denied = [f"devices/dev2/{uid}/secret", f"shared/private/{uid}"]
    allowed = f"shared/{uid}/ok"
    burst = b"".join(publish(t, b"x", version=version) for t in [*denied, allowed] * 5)
    for _ in range(3):  # plans are made on the first, reused after
        pub.send(burst)
    for qos in (1, 2):
        for t in denied:
            pub.publish(t, b"q", qos=qos)
    pub.publish(f"shared/{uid}/end", b"", qos=1)
    got = topics_until(sub, f"shared/{uid}/end")
    # `#` and `+/+/+` overlap: one copy per client [MQTT-3.3.4-2]
    assert [t for t in got if uid in t] == [allowed] * 15 + [f"shared/{uid}/end"]
    assert not [t for t in got if t.startswith("devices/") and not t.startswith("devices/dev1/")]
    # dev2 itself got what it published to its own devices/ topics
    assert len(own.receive(15 + 2, timeout=5)) == 17


def test_publish_to_a_topic_the_client_may_not_write(ac: Clients, version: int) -> None:
    uid = ac.uid
    sub, sub_pid = user(ac, version, "dev2")
    assert sub.subscribe([(f"devices/dev2/{uid}/#", 2), (f"shared/{uid}/#", 2)]).codes == [2, 2]
    pub, _ = user(ac, version, "dev1", away_from=sub_pid)
    target = f"devices/dev2/{uid}/cmd"
    # QoS 0, in one write with allowed ones (the fast lane falls back for the denied)
    burst = b"".join(publish(t, str(i).encode(), version=version)
                     for i, t in enumerate([target, f"shared/{uid}/a"] * 4))
    pub.send(burst)
    pub.send(burst)
    # QoS 1: v5 hears 0x87, 3.1.1 gets a plain PUBACK; neither is routed
    pub.send(publish(target, b"q1", qos=1, pid=11, version=version))
    ack = pub.expect_ack(PUBACK)
    assert ack.pid == 11 and ack.rc == (0x87 if version == V5 else 0)
    # QoS 2: v5 PUBREC 0x87 ends the exchange; 3.1.1 completes it as usual
    pub.send(publish(target, b"q2", qos=2, pid=12, version=version))
    rec = pub.expect_ack(PUBREC)
    assert rec.pid == 12 and rec.rc == (0x87 if version == V5 else 0)
    if version == V311:
        pub.send(pubrel(12, version=version))
        assert pub.expect_ack(PUBCOMP).pid == 12
    # retained: not stored either
    pub.send(publish(target, b"kept?", qos=1, pid=13, retain=True, version=version))
    assert pub.expect_ack(PUBACK).pid == 13
    assert pub.is_open()
    pub.publish(f"shared/{uid}/end", b"", qos=1)
    got = sub.collect_until(f"shared/{uid}/end")
    assert [(m.topic, m.payload) for m in got] == (
        [(f"shared/{uid}/a", str(i).encode()) for i in (1, 3, 5, 7)] * 2
        + [(f"shared/{uid}/end", b"")])
    late, _ = user(ac, version, "dev2")
    assert late.subscribe(f"devices/dev2/{uid}/#", 1).codes == [1]
    late.expect_nothing(0.5)


def test_denied_publishes_are_counted_in_sys(ac: Clients) -> None:
    mon, _ = user(ac, V311, "monitor")
    assert mon.subscribe(DENIED_SYS, 0).codes == [0]
    before = int(mon.expect_publish(timeout=3).payload)
    pub, _ = user(ac, V311, "dev1")
    for _ in range(3):
        pub.publish(f"devices/dev2/{ac.uid}", b"x")
    pub.publish(f"devices/dev2/{ac.uid}", b"x", qos=1)

    def counted() -> bool:
        return int(mon.expect_publish(timeout=3).payload) >= before + 4

    eventually(counted, timeout=6)


def test_sys_topics_are_checked_per_topic(ac: Clients, version: int) -> None:
    """monitor may read $SYS/broker/clients/# and $SYS/broker/messages/# only."""
    mon, _ = user(ac, version, "monitor")
    assert mon.subscribe([("$SYS/#", 0), ("$SYS/broker/uptime", 0)]).codes == [0, refused(version)]
    got = {m.topic for m in drain(mon, 2.5)}
    assert "$SYS/broker/clients/connected" in got and DENIED_SYS in got
    assert all(t.startswith(("$SYS/broker/clients/", "$SYS/broker/messages/")) for t in got), got


def test_retained_messages_are_checked_on_the_way_out(ac: Clients, version: int) -> None:
    uid = ac.uid
    pub, _ = user(ac, V311, "dev2")
    kept = {f"retained/{uid}/a": b"ok", f"devices/dev2/{uid}/state": b"secret",
            f"shared/private/{uid}": b"private"}
    for t, payload in kept.items():
        pub.publish(t, payload, qos=1, retain=True)
    try:
        sub, _ = user(ac, version, "dev1", away_from=owner_pid(ac.broker, pub.sock))
        assert sub.subscribe([("#", 1), ("+/+/+", 1), (f"shared/+/{uid}", 1)]).codes == [1, 1, 1]
        got = [m for m in drain(sub, 1.5) if uid in m.topic]
        assert {m.topic for m in got} == {f"retained/{uid}/a"}
        assert all(m.retain for m in got)
        mon, _ = user(ac, version, "monitor")
        assert mon.subscribe("#", 1).codes == [1]
        got = {m.topic for m in drain(mon, 1.5) if uid in m.topic}
        assert got == {f"retained/{uid}/a", f"shared/private/{uid}"}
    finally:
        for t in kept:
            pub.publish(t, b"", qos=1, retain=True)


def test_wills_are_checked_when_published(ac: Clients, version: int) -> None:
    """dev1 may not write wills/ nor devices/dev2/: its wills go nowhere, retained
    or not; dev2's will (it may write wills/) is delivered and kept."""
    uid = ac.uid
    mon, mon_pid = user(ac, version, "monitor")
    assert mon.subscribe(f"wills/{uid}/#", 1).codes == [1]
    dev2_sub, _ = user(ac, version, "dev2")
    assert dev2_sub.subscribe(f"devices/dev2/{uid}/#", 1).codes == [1]
    bad, _ = user(ac, version, "dev1", away_from=mon_pid, will_topic=f"wills/{uid}/dev1",
                  will_payload=b"gone", will_qos=1, will_retain=True)
    bad2, _ = user(ac, version, "dev1", will_topic=f"devices/dev2/{uid}/cmd",
                   will_payload=b"reboot", will_qos=1)
    good, _ = user(ac, version, "dev2", away_from=mon_pid, will_topic=f"wills/{uid}/dev2",
                   will_payload=b"gone", will_qos=1, will_retain=True)
    try:
        for c in (bad, bad2, good):
            c.abort()
        got = [(m.topic, m.payload) for m in mon.receive(1, timeout=5)]
        assert got == [(f"wills/{uid}/dev2", b"gone")]
        mon.expect_nothing(0.5)
        dev2_sub.expect_nothing(0.3)
        late, _ = user(ac, version, "monitor")
        assert late.subscribe(f"wills/{uid}/#", 1).codes == [1]
        assert [m.topic for m in late.receive(1)] == [f"wills/{uid}/dev2"]
        late.expect_nothing(0.3)
    finally:
        clean, _ = user(ac, V311, "dev2")
        clean.publish(f"wills/{uid}/dev2", b"", qos=1, retain=True)


def test_shared_group_members_that_may_not_read_are_passed_over(
        ac: Clients, version: int, workers: int) -> None:
    uid = ac.uid
    group = f"$share/g{uid}/shared/+/{uid}"
    m1, pid1 = user(ac, version, "dev1")
    m2, _ = user(ac, version, "dev2")
    assert m1.subscribe(group, 0).codes == [0]
    assert m2.subscribe(group, 0).codes == [0]
    pub, _ = user(ac, version, "dev2", away_from=pid1)
    for i in range(6):
        pub.publish(f"shared/private/{uid}", str(i).encode())
        pub.publish(f"shared/open/{uid}", str(i).encode())
    pub.publish(f"shared/open/{uid}", b"end", qos=1)
    got1 = [(m.topic, m.payload) for m in drain(m1, 1.0)]
    got2 = [(m.topic, m.payload) for m in drain(m2, 0.5)]
    assert not [t for t, _ in got1 if "private" in t], got1
    assert len(set(got1 + got2)) == len(got1 + got2)  # each message once
    if workers == 1:
        assert len(got1) + len(got2) == 13
        assert sorted(p for t, p in got2 if "private" in t) == [str(i).encode() for i in range(6)]


def test_anonymous_and_client_id_rules(ac: Clients, version: int) -> None:
    uid = ac.uid
    me = ac.cid("me")
    sub, sub_pid = user(ac, version, None, cid=me)
    assert sub.subscribe([(f"outbox/{me}/#", 1), ("outbox/someone/#", 1), (f"anon/{uid}/#", 1),
                          ("anon/secret/#", 1)]).codes == [1, refused(version), 1, refused(version)]
    other, _ = user(ac, version, None, away_from=sub_pid)
    other.publish(f"anon/{uid}/hello", b"1", qos=1)              # anonymous readwrite anon/#
    other.publish(f"anon/secret/{uid}", b"2")                    # denied: dropped
    other.publish(f"public/{uid}", b"3")                         # anonymous may only read public/
    sender, _ = user(ac, version, "dev1", cid=f"{me}s", away_from=sub_pid)
    sender.publish(f"outbox/{me}/x", b"4")        # write: nobody grants it to dev1
    sender.publish(f"inbox/{me}s", b"5")          # pattern write inbox/%c: allowed, nobody reads
    dev2, _ = user(ac, version, "dev2")
    dev2.send(publish(f"anon/{uid}/end", b"6", qos=1, pid=3, version=version))
    assert dev2.expect_ack(PUBACK).rc == (0x87 if version == V5 else 0)  # dev2 may not write anon/
    other.publish(f"anon/{uid}/end", b"7", qos=1)
    got = [(m.topic, m.payload) for m in sub.collect_until(f"anon/{uid}/end")]
    assert got == [(f"anon/{uid}/hello", b"1"), (f"anon/{uid}/end", b"7")]


def test_a_wildcard_username_or_client_id_gains_nothing_from_patterns(
        ac: Clients, version: int) -> None:
    """Username "+" would make `devices/%u/#` every device's topics, client id "+"
    `outbox/%c/#` everyone's outbox: such patterns are left out (as Mosquitto does)."""
    uid = ac.uid
    sneaky, pid = user(ac, version, "+")
    no = refused(version)
    assert sneaky.subscribe([("devices/+/#", 1), ("#", 1)]).codes == [no, 1]
    sneaky2, _ = user(ac, version, "dev1", cid="+")
    assert sneaky2.subscribe([("outbox/+/#", 1), ("#", 1)]).codes == [no, 1]
    dev2, _ = user(ac, version, "dev2", away_from=pid)
    dev2.publish(f"devices/dev2/{uid}/secret", b"s", qos=1)
    dev2.publish(f"outbox/{uid}/x", b"o")  # nobody may write outboxes: dropped
    dev2.publish(f"shared/{uid}/end", b"", qos=1)  # dev1 (sneaky2) reads shared/
    assert [t for t in topics_until(sneaky2, f"shared/{uid}/end") if uid in t] == [
        f"shared/{uid}/end"]
    assert not [m for m in drain(sneaky, 0.3) if uid in m.topic]


# ---------------------------------------------------------------- run-time rules, live


def test_a_rule_change_applies_to_live_subscriptions_on_every_worker(
        ac: Clients, version: int) -> None:
    """A rule written to LMDB (as add_acl / remove_acl do) and acl_reload sent to
    every worker's control socket: a subscriber already subscribed, on another
    worker than the publisher, stops (then starts again) receiving, with no
    reconnect; a grant opens a topic to a live `#` subscriber."""
    uid = ac.uid
    broker = ac.broker
    me = ac.cid("live")
    sub, sub_pid = user(ac, version, "dev1", cid=me)
    assert sub.subscribe([(f"shared/{uid}/#", 1), ("#", 0)]).codes == [1, 0]
    pub, _ = user(ac, version, "dev2", away_from=sub_pid)

    def round_trip(tag: str) -> list[tuple[str, bytes]]:
        for qos in (0, 0, 1):
            pub.publish(f"shared/{uid}/data", f"{tag}{qos}".encode(), qos=qos)
        pub.publish(f"devices/dev2/{uid}/granted", tag.encode())
        pub.publish(f"retained/{uid}/end", tag.encode(), qos=1)  # dev1 reads retained/#
        return [(m.topic, m.payload) for m in sub.collect_until(f"retained/{uid}/end")
                if uid in m.topic]

    data = [(f"shared/{uid}/data", p) for p in (b"a0", b"a0", b"a1")]
    assert round_trip("a") == [*data, (f"retained/{uid}/end", b"a")]
    write_rule(broker, "clientid", me, f"shared/{uid}/#", "deny")
    write_rule(broker, "clientid", me, f"devices/dev2/{uid}/granted", "read")
    reload_everywhere(broker)
    assert round_trip("b") == [(f"devices/dev2/{uid}/granted", b"b"),
                               (f"retained/{uid}/end", b"b")]
    write_rule(broker, "clientid", me, f"shared/{uid}/#", "deny", remove=True)
    write_rule(broker, "clientid", me, f"devices/dev2/{uid}/granted", "read", remove=True)
    reload_everywhere(broker)
    data = [(f"shared/{uid}/data", p) for p in (b"c0", b"c0", b"c1")]
    assert round_trip("c") == [*data, (f"retained/{uid}/end", b"c")]


def test_a_rule_change_reaches_a_publishers_fast_lane(ac: Clients, version: int) -> None:
    """A topic the lane already knows writable for this connection stops being
    taken once a deny rule is loaded (the decision cache follows the generation)."""
    uid = ac.uid
    broker = ac.broker
    sub, sub_pid = user(ac, version, "dev2")
    assert sub.subscribe(f"shared/{uid}/#", 0).codes == [0]
    me = ac.cid("pub")
    pub, _ = user(ac, version, "dev1", cid=me, away_from=sub_pid)
    burst = b"".join(publish(f"shared/{uid}/x", b"%d" % i, version=version) for i in range(5))

    def send_and_collect(tag: bytes) -> list[bytes]:
        pub.send(burst)
        pub.send(burst)
        pub.publish(f"shared/{uid}/end", tag, qos=1)
        return [m.payload for m in sub.collect_until(f"shared/{uid}/end")]

    assert send_and_collect(b"1") == [b"%d" % i for i in range(5)] * 2 + [b"1"]
    write_rule(broker, "clientid", me, f"shared/{uid}/x", "deny")
    try:
        reload_everywhere(broker)
        assert send_and_collect(b"2") == [b"2"]
    finally:
        write_rule(broker, "clientid", me, f"shared/{uid}/x", "deny", remove=True)
        reload_everywhere(broker)
    assert send_and_collect(b"3") == [b"%d" % i for i in range(5)] * 2 + [b"3"]


def test_an_offline_sessions_queue_is_checked_when_it_is_delivered(
        ac: Clients, version: int) -> None:
    uid = ac.uid
    broker = ac.broker
    me = ac.cid("q")
    sub, _ = user(ac, version, "dev1", cid=me, **persistent(version))
    assert sub.subscribe(f"shared/{uid}/#", 1).codes == [1]
    sub.disconnect()
    pub, _ = user(ac, version, "dev2")
    for t in ("a", "b", "c"):
        pub.publish(f"shared/{uid}/{t}", t.encode(), qos=1)
    write_rule(broker, "clientid", me, f"shared/{uid}/b", "deny")
    try:
        reload_everywhere(broker)
        back, _ = user(ac, version, "dev1", cid=me, **persistent(version))
        assert [m.topic for m in back.receive(2)] == [f"shared/{uid}/a", f"shared/{uid}/c"]
        back.expect_nothing(0.5)
    finally:
        write_rule(broker, "clientid", me, f"shared/{uid}/b", "deny", remove=True)
        reload_everywhere(broker)


# ---------------------------------------------------------------- the acl_file: SIGHUP, errors


def _acl_conf(path: Path, **extra: Any) -> dict[str, Any]:
    return {"acl.enabled": True, "acl.file": str(path), **extra}


def test_sighup_rereads_the_acl_file_and_a_bad_one_keeps_the_old_rules(
        make_broker: Callable[..., Broker], tmp_path: Path, version: int) -> None:
    path = tmp_path / "acl_file"
    path.write_text("topic read public/#\n")
    broker = make_broker(**_acl_conf(path))
    clients = Clients(broker, f"hup{version}")
    try:
        c, _ = user(clients, version, None, broker=broker)
        assert c.subscribe("news/#", 0).codes == [refused(version)]
        path.write_text("topic read public/#\ntopic read news/#\n")
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGHUP)

        def granted() -> bool:
            return c.subscribe("news/#", 0).codes == [0]

        eventually(granted)
        path.write_text("topic read public/#\nthis is not a rule\n")
        os.kill(broker.proc.pid, signal.SIGHUP)
        eventually(lambda: broker.log_tail().count("acl_file not reloaded") == broker.workers)
        assert "line 2" in broker.log_tail()
        assert broker.alive()
        assert c.subscribe("news/#", 0).codes == [0]  # the old rules are kept
        assert c.subscribe("other/#", 0).codes == [refused(version)]
        replies = control(broker, "acl_reload")
        assert all(not r["ok"] and "line 2" in r["error"] for r in replies), replies
        assert c.is_open()
    finally:
        clients.close_all()


def test_a_bad_acl_file_stops_the_broker_at_start(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "acl_file"
    path.write_text("user dev1\ntopic read a/#/b\n")
    b = Broker(tmp_path / "broker", _acl_conf(path), workers)
    try:
        with pytest.raises(RuntimeError, match="exited with 1"):
            b.start()
        lines = [ln for ln in b.log_tail().splitlines() if ln.startswith("bwfast:")]
        assert lines == [f"bwfast: [acl] file: {path} line 2: 'a/#/b' is not a valid topic filter"]
    finally:
        b.kill9()


# ---------------------------------------------------------------- with authentication


def passwd(broker: Broker, username: str, password: str) -> None:
    subprocess.run([sys.executable, "-m", "bwfast", "passwd", "--data-dir", str(broker.data_dir),
                    "set", username, "--password", password], check=True, capture_output=True)


def test_the_issues_attack_with_authentication(
        make_broker: Callable[..., Broker], tmp_path: Path, version: int) -> None:
    """dev1 subscribes `#` and `$SYS/#` and must not read devices/dev2/secret that
    dev2 publishes, nor command dev2 (`pattern readwrite devices/%u/#`)."""
    path = tmp_path / "acl_file"
    path.write_text("pattern readwrite devices/%u/#\n")
    broker = make_broker(**_acl_conf(path, **{"authentication.enabled": True}))
    passwd(broker, "dev1", "pw-one")
    passwd(broker, "dev2", "pw-two")
    clients = Clients(broker, f"attack{version}")
    try:
        dev1, pid1 = user(clients, version, "dev1", broker=broker, password=b"pw-one")
        ack = dev1.subscribe([("#", 1), ("$SYS/#", 1), ("devices/dev2/#", 1)])
        assert ack.codes == [1, refused(version), refused(version)]
        dev2, _ = user(clients, version, "dev2", broker=broker, password=b"pw-two",
                       away_from=pid1)
        assert dev2.subscribe("devices/dev2/#", 1).codes == [1]
        dev2.publish("devices/dev2/secret", b"s0")
        dev2.publish("devices/dev2/secret", b"s1", qos=1, retain=True)
        dev2.send(publish("devices/dev1/cmd", b"nope", qos=1, pid=5, version=version))
        ack2 = dev2.expect_holding(PUBACK)
        assert ack2.rc == (0x87 if version == V5 else 0)
        dev1.send(publish("devices/dev2/cmd", b"reboot", qos=1, pid=6, version=version))
        assert dev1.expect_ack(PUBACK).rc == (0x87 if version == V5 else 0)
        dev1.publish("devices/dev1/state", b"mine", qos=1)
        got = [(m.topic, m.payload) for m in dev1.collect_until("devices/dev1/state")]
        assert got == [("devices/dev1/state", b"mine")]
        assert [m.payload for m in dev2.receive(2)] == [b"s0", b"s1"]
        dev2.expect_nothing(0.3)
        again, _ = user(clients, version, "dev1", broker=broker, password=b"pw-one")
        assert again.subscribe("#", 1).codes == [1]
        again.expect_nothing(0.5)  # the retained secret stays dev2's
    finally:
        clients.close_all()


def test_a_persistent_session_keeps_its_username_across_a_restart(
        make_broker: Callable[..., Broker], tmp_path: Path, version: int) -> None:
    """Messages that come while dev1 is away, after a broker restart, are checked
    against dev1's rules when they come: denied ones never take a place in its
    queue (max_queued_messages = 2), the allowed one is kept."""
    path = tmp_path / "acl_file"
    path.write_text("user dev1\ntopic read shared/#\nuser dev2\ntopic write #\n")
    broker = make_broker(**_acl_conf(path, max_queued_messages=2))
    clients = Clients(broker, f"restart{version}")
    try:
        sub, _ = user(clients, version, "dev1", cid="keeper", broker=broker,
                      **persistent(version))
        assert sub.subscribe("#", 1).codes == [1]
        sub.disconnect()
        broker.terminate()
        broker.start()
        pub, _ = user(clients, version, "dev2", broker=broker)
        for _ in range(3):
            pub.publish("devices/dev2/secret", b"no", qos=1)
        pub.publish("shared/x", b"yes", qos=1)
        back = clients.raw(version, broker=broker)
        ack = back.connect("keeper", username="dev1", **persistent(version))
        assert ack.session_present
        assert [(m.topic, m.payload) for m in back.receive(1)] == [("shared/x", b"yes")]
        back.expect_nothing(0.5)
    finally:
        clients.close_all()


def test_acl_reload_with_the_acl_off_is_harmless(
        make_broker: Callable[..., Broker], version: int) -> None:
    broker = make_broker()
    assert control(broker, "acl_reload") == [{"ok": True, "generation": 0}] * broker.workers
    clients = Clients(broker, f"off{version}")
    try:
        c, _ = user(clients, version, "dev1", broker=broker)
        assert c.subscribe([("#", 0), ("$SYS/#", 0)]).codes == [0, 0]
    finally:
        clients.close_all()



# ---------------------------------------------------------------- every listener


def test_every_listener_enforces_the_same_rules(tmp_path: Path, workers: int) -> None:
    """TLS and WSS with the certificate's CN as the username (device-7), WS and
    plain MQTT anonymous: one set of rules on every listener."""
    from test_tls_ws import Listeners, paho
    from tls_helpers import make_pki

    pki = make_pki(tmp_path / "pki")
    path = tmp_path / "acl_file"
    path.write_text("topic read public/#\npattern readwrite devices/%u/#\n")
    broker = Listeners(tmp_path / "broker", pki, workers, identity=True)
    broker.conf |= _acl_conf(path)
    broker.write_conf()
    broker.start()
    made: list[Any] = []
    try:
        tls = paho(broker, "tls", pki, cert=pki.client)
        wss = paho(broker, "wss", pki, cert=pki.client, protocol=V5)
        ws = paho(broker, "ws", pki)
        plain = paho(broker, "mqtt", pki, protocol=V5)
        made += [tls, wss, ws, plain]
        assert tls.subscribe("devices/other/#", 1) == [0x80]
        assert wss.subscribe("devices/device-7/#", 1) == [1]
        assert ws.subscribe("#", 1) == [1]  # anonymous: public/# only, checked per message
        assert plain.subscribe("devices/+/state", 1) == [0x87]
        ws.publish("devices/device-7/cmd", b"from ws", 1)  # anonymous may not write: dropped
        plain.publish("public/news", b"anonymous may not write public/", 0)
        tls.publish("devices/device-7/state", b"from tls", 1)
        tls.publish("public/news", b"nor may device-7", 1)
        got = wss.get_n(1)
        assert [(m.topic, m.payload) for m in got] == [("devices/device-7/state", b"from tls")]
        assert wss.drain(0.5) == [] and ws.drain(0.3) == []
    finally:
        for c in made:
            c.close()
        broker.stop()


def test_sighup_reloads_the_workers_and_leaves_the_api_alone(
        tmp_path: Path, workers: int) -> None:
    """The supervisor forwards SIGHUP to the workers; the REST API process ignores
    it, even sent to the whole process group: it keeps running (same pid, still
    answering), and no worker restarts."""
    from test_api_support import ApiBroker
    from test_cluster_support import worker_pids

    path = tmp_path / "acl_file"
    path.write_text("topic read public/#\n")
    api = ApiBroker(tmp_path / "broker", workers, **_acl_conf(path)).start()
    clients = Clients(api.broker, f"hupapi{workers}")
    try:
        before = worker_pids(api.broker)
        assert len(api.api_pids()) == 1
        c, _ = user(clients, V311, None, broker=api.broker)
        assert c.subscribe("news/#", 0).codes == [0x80]
        path.write_text("topic read news/#\n")
        assert api.broker.proc is not None
        os.kill(api.broker.proc.pid, signal.SIGHUP)
        eventually(lambda: c.subscribe("news/#", 0).codes == [0])
        assert c.subscribe("public/#", 0).codes == [0x80]
        # A hangup of the whole process group (a closed terminal) reaches the API too
        os.killpg(api.broker.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert worker_pids(api.broker) == before
        assert len(api.api_pids()) == 1 and api.login()
        assert "exited" not in api.broker.log_tail()
    finally:
        clients.close_all()
        api.stop()
