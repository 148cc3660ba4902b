"""The fast lane (bwfast.fastpath): QoS 0 PUBLISHes carried from the received bytes
to the subscribers' output buffers through cached per-topic plans.

From a client's side the lane must not be seen: every test here states what the
general path (bwfast/handlers/) does, or what MQTT asks of any broker, and drives
traffic through the places where the lane takes packets or hands them over:

- bursts of many packets in one read, to subscribers of every protocol version,
  on the publisher's worker and on others (the lane's raw forwarding);
- packets the lane cannot take (QoS 1/2, retained, v5 properties, topic aliases,
  malformed ones) in the same write as packets it can, where the order of a
  connection's packets must be kept;
- the events that drop the plans (SUBSCRIBE, UNSUBSCRIBE, a new connection for a
  client id, a takeover, a subscription identifier, no-local, a shared group, a
  subscriber's Maximum Packet Size or Topic Alias Maximum) while a publisher streams;
- packets cut anywhere, the REST history of what the lane carried, `$` topics;
- a persistent subscriber that was offline while messages came.

With 4 workers the clients are placed (see test_cluster_support.py) so that each
test has subscribers on the publisher's worker and on others.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import MOSQUITTO, Broker, Clients
from mqtt_helpers import (
    CONNACK,
    DISCONNECT,
    MAXIMUM_PACKET_SIZE,
    PINGRESP,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    RC_MALFORMED,
    RC_PACKET_TOO_LARGE,
    RC_PROTOCOL_ERROR,
    RC_SESSION_TAKEN_OVER,
    RC_TOPIC_NAME_INVALID,
    SUBSCRIPTION_ID,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    UNSUBACK,
    USER_PROPERTY,
    V5,
    V31,
    V311,
    ConnectionClosed,
    Packet,
    Publish,
    RawClient,
    connect,
    disconnect,
    encode_properties,
    mqtt_str,
    packet,
    parse_ack,
    parse_connack,
    parse_disconnect,
    parse_publish,
    parse_suback,
    persistent,
    pingreq,
    puback,
    publish,
    pubrel,
    sub_options,
    u16,
    unsubscribe,
    varint,
)
from test_api_support import ApiBroker, eventually, start_api_broker
from test_cluster_support import connect_early, not_on, on, open_on, owner_pid

LONG = 30.0  # a deadline for what normally takes well under a second (loaded 2-core CI)

Want = Callable[[int], bool] | None


# ---------------------------------------------------------------- placement


def multi(broker: Broker) -> bool:
    """Does placing clients on workers mean anything for this broker?"""
    return not MOSQUITTO and broker.workers > 1


def place(mq: Clients, version: int, want: Want = None, broker: Broker | None = None
          ) -> tuple[RawClient, int]:
    """A raw socket (no CONNECT yet) and the pid of the worker holding it (0 when
    there is one worker); with `want`, on a worker it accepts."""
    b = broker or mq.broker
    if not multi(b):
        return mq.raw(version, broker=b), 0
    if want is None:
        c = mq.raw(version, broker=b)
        return c, owner_pid(b, c.sock)
    return open_on(mq, b, version, want, "the wanted worker")


def land(mq: Clients, version: int, want: Want = None, *, client_id: str | None = None,
         broker: Broker | None = None, **kw: Any) -> tuple[RawClient, int]:
    """A connected raw client, placed as `place` does."""
    c, pid = place(mq, version, want, broker)
    ack = c.connect(mq.cid() if client_id is None else client_id, **kw)
    assert ack.rc == 0, f"CONNECT refused: {ack}"
    return c, pid


def away(pid: int) -> Want:
    """A worker other than pid's (meaningful only with several workers)."""
    return not_on(pid) if pid else None


def near(pid: int) -> Want:
    return on(pid) if pid else None


# ---------------------------------------------------------------- bytes


def split_packets(data: bytes) -> list[bytes]:
    """The packets of a byte stream (a truncated tail is returned as it is)."""
    out: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        i, rl, mult = pos + 1, 0, 1
        while True:
            if i >= n:
                out.append(data[pos:])
                return out
            b = data[i]
            i += 1
            rl += (b & 127) * mult
            mult *= 128
            if not b & 128:
                break
        out.append(data[pos : i + rl])
        pos = i + rl
    return out


def read_exactly(c: RawClient, n: int, timeout: float = LONG) -> bytes:
    """The next n bytes the broker sends to c, or fewer if they don't come in time."""
    assert not c.pending, f"packets already parsed: {c.pending}"
    buf = bytearray(c.buf)
    c.buf.clear()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        c.sock.settimeout(left)
        try:
            chunk = c.sock.recv(1 << 20)
        except OSError:  # timeout or reset
            break
        if not chunk:
            break
        buf += chunk
    c.buf += buf[n:]
    return bytes(buf[:n])


def assert_stream(got: bytes, want: bytes, who: str) -> None:
    """Byte-exact comparison, reported as the first packet that differs."""
    if got == want:
        return
    gp, wp = split_packets(got), split_packets(want)
    for i, (g, w) in enumerate(zip(gp, wp, strict=False)):
        if g != w:
            raise AssertionError(
                f"{who}: packet {i} of {len(wp)} differs ({len(gp)} received):\n"
                f"  got      {g[:90]!r}{'...' if len(g) > 90 else ''} ({len(g)} bytes)\n"
                f"  expected {w[:90]!r}{'...' if len(w) > 90 else ''} ({len(w)} bytes)"
            )
    raise AssertionError(
        f"{who}: got {len(gp)} packets ({len(got)} bytes), expected {len(wp)} "
        f"({len(want)} bytes); last received: {gp[-1][:60]!r}" if gp else f"{who}: got nothing"
    )


def assert_nothing_more(c: RawClient, who: str) -> None:
    """The next packet after a PINGREQ is its PINGRESP: no extra PUBLISH was queued."""
    c.send(pingreq())
    try:
        p = c.recv_packet(LONG)
    except (TimeoutError, ConnectionClosed) as e:
        raise AssertionError(f"{who}: no PINGRESP ({e!r})") from None
    assert p.ptype == PINGRESP, f"{who}: got {p!r} after the expected stream"


# ---------------------------------------------------------------- messages


def runs(seqs: list[int]) -> str:
    """[0, 1, 2, 5, 6, 4] -> '0-2 5-6 4 (6)': enough to see a gap, a repeat or a swap."""
    if not seqs:
        return "(none)"
    parts: list[str] = []
    start = prev = seqs[0]
    for s in seqs[1:]:
        if s != prev + 1:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = s
        prev = s
    parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    text = " ".join(parts)
    if len(text) > 400:
        text = text[:200] + " ... " + text[-200:]
    return f"{text} ({len(seqs)})"


def drain(c: RawClient, gap: float = 0.01) -> list[Packet]:
    """The packets that arrive until none comes for `gap` seconds."""
    out: list[Packet] = []
    while True:
        try:
            out.append(c.recv_packet(gap))
        except TimeoutError:
            return out


def seqs_of(msgs: list[Publish], topic: str) -> list[int]:
    """Stream sequence numbers of the messages on topic (payload b'<n>')."""
    return [int(m.payload) for m in msgs if m.topic == topic and m.payload.isdigit()]


def read_until(c: RawClient, done: Callable[[Publish], bool], timeout: float = LONG,
               what: str = "") -> list[Publish]:
    """PUBLISHes (QoS 1 ones acknowledged) up to and including the first one `done` accepts."""
    out: list[Publish] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            p = c.recv_packet(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            raise AssertionError(
                f"{what or 'the awaited message'} not received within {timeout}s; got "
                f"{[(m.topic[-8:], m.payload[:12]) for m in out[-5:]]} "
                f"(stream {runs([int(m.payload) for m in out if m.payload.isdigit()])})"
            ) from None
        except ConnectionClosed:
            raise AssertionError(f"connection closed after {len(out)} messages") from None
        assert p.ptype == PUBLISH, f"expected PUBLISH, got {p!r}"
        m = parse_publish(p, c.version)
        if m.qos == 1 and m.pid is not None:
            c.send(puback(m.pid, version=c.version))
        out.append(m)
        if done(m):
            return out


def seq_at_least(topic: str, n: int) -> Callable[[Publish], bool]:
    return lambda m: m.topic == topic and m.payload.isdigit() and int(m.payload) >= n


def on_topic(topic: str, payload: bytes | None = None) -> Callable[[Publish], bool]:
    return lambda m: m.topic == topic and (payload is None or m.payload == payload)


def unsubscribe_holding(c: RawClient, filters: list[str], pid: int) -> None:
    """UNSUBSCRIBE; PUBLISHes that come before the UNSUBACK are kept for later reads."""
    c.send(unsubscribe(pid, filters, version=c.version))
    held: list[Packet] = []
    deadline = time.monotonic() + LONG
    while True:
        p = c.recv_packet(max(0.01, deadline - time.monotonic()))
        if p.ptype == UNSUBACK:
            break
        assert p.ptype == PUBLISH, f"expected UNSUBACK, got {p!r}"
        held.append(p)
    c.pending = held + c.pending
    ack = parse_suback(p, c.version)
    assert ack.pid == pid
    if c.version == V5:
        assert ack.codes == [0] * len(filters), ack


class Streamer:
    """Publishes QoS 0 messages with payloads b'0', b'1', ... on its own thread, in
    batches of `batch` (one sendall each) every `pause` seconds, until stopped."""

    def __init__(self, c: RawClient, topic: str, batch: int = 10, pause: float = 0.002) -> None:
        self.c, self.topic, self.batch, self.pause = c, topic, batch, pause
        self.next = 0
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        v = self.c.version
        try:
            while not self._stop.is_set():
                with self.lock:
                    n = self.next
                    data = b"".join(publish(self.topic, b"%d" % i, version=v)
                                    for i in range(n, n + self.batch))
                    self.c.sock.sendall(data)
                    self.next = n + self.batch
                time.sleep(self.pause)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def mark(self) -> int:
        """The first sequence number sent from now on: no batch is half sent when this
        returns, so every message from it on leaves after what the caller saw."""
        with self.lock:
            return self.next

    def stop(self, end_topic: str) -> int:
        """Stop, then publish b'end' on end_topic; return how many were streamed."""
        self._stop.set()
        self._thread.join(LONG)
        assert not self._thread.is_alive(), "streamer hung"
        if self.error is not None:
            raise AssertionError(f"streamer failed: {self.error!r}")
        self.c.send(publish(end_topic, b"end", version=self.c.version))
        return self.next


@pytest.fixture
def streamers() -> Iterator[list[Streamer]]:
    """Streamers of the test, stopped at the end whatever happened."""
    made: list[Streamer] = []
    yield made
    for s in made:
        s._stop.set()


# ---------------------------------------------------------------- 1. bursts

BURST = 50_000


def _burst_payload(i: int) -> bytes:
    """Varied sizes: Remaining Lengths on both sides of 127 (1 or 2 length bytes),
    now and then an empty payload."""
    if i % 997 == 0:
        return b""
    return b"%06d:" % i + bytes([65 + i % 26]) * ((i * 37) % 131)


def test_burst_reaches_every_subscriber_complete_in_order(mq: Clients, version: int) -> None:
    """50,000 QoS 0 PUBLISHes in one write (many reads for the broker) reach five
    subscribers (MQTT 3.1, 3.1.1 and 5.0; on the publisher's worker and on others)
    complete, in order and byte for byte what a QoS 0 PUBLISH without properties is
    in the subscriber's version [MQTT-4.6.0-6]. Most go to topic a, every 100th to
    b/x, every 1000th to c; a client with overlapping subscriptions (a and t/.../#)
    gets one copy of each [MQTT-3.3.4-2]; the stream ends where it should."""
    a, bx, c = mq.topic("a"), mq.topic("b", "x"), mq.topic("c")
    topics = [bx if i % 100 == 50 else c if i % 1000 == 999 else a for i in range(BURST)]
    payloads = [_burst_payload(i) for i in range(BURST)]
    pub, ppid = land(mq, version)
    # (version, worker wish, subscriptions, topics it gets)
    plan: list[tuple[int, Want, list[tuple[str, int]], set[str]]] = [
        (V311, near(ppid), [(a, 0), (mq.topic("#"), 0)], {a, bx, c}),
        (V5, near(ppid), [(a, 1)], {a}),
        (V311, away(ppid), [(a, 2), (bx, 0)], {a, bx}),
        (V5, away(ppid), [(a, 0), (mq.topic("+", "x"), 1)], {a, bx}),
        (V31, away(ppid), [(a, 1)], {a}),
    ]
    subs: list[tuple[RawClient, bytes]] = []
    for v, want, filters, gets in plan:
        s, _ = land(mq, v, want)
        assert s.subscribe(filters).codes == [q for _, q in filters]
        expected = b"".join(publish(t, p, version=v)
                            for t, p in zip(topics, payloads, strict=True) if t in gets)
        subs.append((s, expected))
    data = b"".join(publish(t, p, version=version) for t, p in zip(topics, payloads, strict=True))
    with ThreadPoolExecutor(len(subs)) as ex:
        futures = [ex.submit(read_exactly, s, len(want)) for s, want in subs]
        pub.send(data)
        got = [f.result() for f in futures]
    for i, ((s, want), g) in enumerate(zip(subs, got, strict=True)):
        assert_stream(g, want, f"subscriber {i} (MQTT {s.version})")
    for i, (s, _) in enumerate(subs):
        assert_nothing_more(s, f"subscriber {i}")
    assert pub.is_open()


def _sized(topic: str, version: int, rl: int) -> bytes:
    """A payload that makes the PUBLISH's Remaining Length exactly rl in `version`."""
    overhead = 2 + len(topic.encode()) + (1 if version == V5 else 0)
    return bytes([48 + rl % 10]) * (rl - overhead)


def test_remaining_length_boundaries_between_versions(mq: Clients, version: int) -> None:
    """The lane rewrites a packet for the other version (a v5 PUBLISH has one more
    byte, its empty property length): Remaining Lengths at the edges of 1, 2, 3 and
    4 length bytes (127/128, 16383/16384, 2097151/2097152) come out right both ways."""
    topic = mq.topic("rl")
    sizes = [0, 126, 127, 128, 129, 16382, 16383, 16384, 16385, 2097151, 2097152]
    payloads = [_sized(topic, version, rl) if rl else b"" for rl in sizes]
    pub, ppid = land(mq, version)
    subs = []
    for v, want in ((V311, near(ppid)), (V5, near(ppid)), (V311, away(ppid)), (V5, away(ppid))):
        s, _ = land(mq, v, want)
        s.subscribe(topic, 0)
        subs.append((s, b"".join(publish(topic, p, version=v) for p in payloads)))
    with ThreadPoolExecutor(len(subs)) as ex:
        futures = [ex.submit(read_exactly, s, len(want)) for s, want in subs]
        pub.send(b"".join(publish(topic, p, version=version) for p in payloads))
        got = [f.result() for f in futures]
    for i, ((s, want), g) in enumerate(zip(subs, got, strict=True)):
        assert_stream(g, want, f"subscriber {i} (MQTT {s.version})")
        assert_nothing_more(s, f"subscriber {i}")


# ---------------------------------------------------------------- 2. mixed writes


Expected = tuple[str, bytes, int, Any]  # topic, payload, QoS, v5 user properties


def _mixed_steps(topic: str, other: str, nosub: str, version: int, r: int
                 ) -> list[tuple[bytes, Expected | None, bool]]:
    """Packets mixing what the lane takes and what it must leave to the general path:
    (bytes, what a QoS 1 subscriber of topic and other gets, taken by the lane?)."""
    v5 = version == V5
    q1, q2 = 2 * r + 1, 2 * r + 2
    user = [("k", f"v{r}")]
    steps: list[tuple[bytes, Expected | None, bool]] = []
    n = iter(range(100))

    def plain(t: str = topic) -> None:
        p = b"r%d-%d" % (r, next(n))
        steps.append((publish(t, p, version=version), (t, p, 0, None) if t != nosub else None,
                      True))

    def slow(qos: int = 0, pid: int | None = None, got_qos: int = 0, retain: bool = False,
             props: Any = None, alias_only: bool = False, size: int = 0) -> None:
        p = b"r%d-%d" % (r, next(n)) + b"." * size
        data = publish(b"" if alias_only else topic, p, qos=qos, pid=pid, retain=retain,
                       props=props, version=version)
        user_props = props.get(USER_PROPERTY) if props else None
        steps.append((data, (topic, p, got_qos, user_props), False))

    plain()
    plain()
    slow(qos=1, pid=q1, got_qos=1)
    plain()
    slow(retain=True)
    plain()
    if v5:
        slow(props={USER_PROPERTY: user})
    plain()
    slow(qos=2, pid=q2, got_qos=1)
    plain()
    if v5:  # a topic alias set, then used alone (an empty topic)
        slow(props={TOPIC_ALIAS: 3})
        slow(props={TOPIC_ALIAS: 3}, alias_only=True)
    plain()
    steps.append((pingreq(), None, False))
    plain()
    plain(other)
    plain(nosub)
    plain()
    if v5:  # a v5 PUBLISH whose property length is there but not 0
        slow(props={USER_PROPERTY: user})
    plain()
    slow(size=70_000)  # complete in the write, but likely not in one read
    plain()
    return steps


def receive_n(c: RawClient, n: int, what: str = "") -> list[Publish]:
    """The next n PUBLISHes (QoS 1 ones acknowledged), with a short report if they don't come."""
    if n == 0:
        return []
    count = iter(range(1, n + 1))
    return read_until(c, lambda m: next(count) == n, what=what or f"{n} messages")


def _check_received(s: RawClient, expected: list[Expected], what: str) -> None:
    got = receive_n(s, len(expected), what)
    v5 = s.version == V5
    seen = [(m.topic, m.payload, m.qos, m.props.get(USER_PROPERTY) if v5 else None) for m in got]
    want = [(t, p, q, u if v5 else None) for t, p, q, u in expected]
    if seen != want:
        i = next(i for i, (g, w) in enumerate(zip(seen, want, strict=True)) if g != w)
        raise AssertionError(
            f"MQTT {s.version} subscriber, {what}: message {i} is {seen[i][1][:8]!r} "
            f"(QoS {seen[i][2]}), expected {want[i][1][:8]!r} (QoS {want[i][2]}); "
            f"received {[m[1][:6] for m in seen]}")
    assert not any(m.retain for m in got), f"{what}: a live delivery with RETAIN 1 [MQTT-3.3.1-9]"
    if v5:
        extra = [m.props for m in got if set(m.props) - {USER_PROPERTY}]
        assert not extra, f"{what}: unexpected properties {extra}"


def _check_publisher_acks(pub: RawClient, r: int) -> None:
    """PUBACK for 2r+1, PUBREC for 2r+2 (then PUBREL/PUBCOMP) and the PINGRESP."""
    seen: dict[int, int] = {}
    for _ in range(3):
        p = pub.recv_packet(LONG)
        if p.ptype == PINGRESP:
            seen[0] = PINGRESP
            continue
        ack = parse_ack(p, pub.version)
        assert ack.rc in (0, 0x10), f"bad ack {p!r}"
        seen[ack.pid] = p.ptype
    assert seen == {2 * r + 1: PUBACK, 2 * r + 2: PUBREC, 0: PINGRESP}, seen
    pub.send(pubrel(2 * r + 2, version=pub.version))
    assert pub.expect_ack(PUBCOMP).pid == 2 * r + 2


@pytest.mark.bwfast_only  # the QoS 2 message is delivered on PUBLISH (not on PUBREL)
def test_mixed_writes_keep_the_connections_order(mq: Clients, version: int) -> None:
    """Plain QoS 0 PUBLISHes (the lane's) mixed with QoS 1, QoS 2, a retained one,
    v5 ones with a user property or a topic alias, a PINGREQ, other topics and a
    70 kB one. First all in one write (the lane stops at the QoS 1 one), then cut
    after each packet the lane can't take, so that the lane meets each of them. QoS 1
    subscribers (3.1.1 and 5.0, on other workers) get every message in the order
    sent, at min(QoS, 1), the retained one with RETAIN 0 [MQTT-3.3.1-9], the user
    property only in v5 [MQTT-3.3.2-17]; the retained one is kept for later
    subscribers; the publisher gets its acks and PINGRESP."""
    topic, other, nosub = mq.topic("mix"), mq.topic("other"), mq.topic("nosub")
    pub, ppid = land(mq, version)
    subs = [land(mq, v, away(ppid))[0] for v in (V311, V5)]
    for s in subs:
        assert s.subscribe([(topic, 1), (other, 1)]).codes == [1, 1]
    steps = _mixed_steps(topic, other, nosub, version, 0)
    pub.send(b"".join(data for data, _, _ in steps))
    for s in subs:
        _check_received(s, [e for _, e, _ in steps if e is not None], "one write")
    _check_publisher_acks(pub, 0)
    # The same cut after each packet the lane can't take: each write starts with
    # plain ones, and the subscribers have the write's messages before the next one.
    writes: list[list[tuple[bytes, Expected | None, bool]]] = [[]]
    for step in _mixed_steps(topic, other, nosub, version, 1):
        writes[-1].append(step)
        if not step[2] and step[1] is not None:
            writes.append([])
    for i, write in enumerate(writes):
        pub.send(b"".join(data for data, _, _ in write))
        for s in subs:
            _check_received(s, [e for _, e, _ in write if e is not None], f"write {i}")
    _check_publisher_acks(pub, 1)
    for s in subs:
        assert_nothing_more(s, f"MQTT {s.version} subscriber")
    later, _ = land(mq, V5, away(ppid))  # the retained one was kept [MQTT-3.3.1-5]
    later.subscribe(topic, 1)
    kept = receive_n(later, 1)[0]
    assert (kept.payload, kept.retain, kept.qos) == (b"r1-4", True, 0)
    pub.publish(topic, b"", qos=1, retain=True, pid=99)  # clear it


def test_connect_and_publishes_in_one_write(mq: Clients, version: int) -> None:
    """CONNECT followed by 2,000 QoS 0 PUBLISHes in one write, 2,000 more one by
    one, while the CONNECT waits for the worker that held the client's persistent
    session to let go of it: all 4,000 are delivered in order, and nothing is sent
    to the client before its CONNACK [MQTT-3.2.0-1]."""
    topic, cid = mq.topic("cb"), mq.cid("pub")
    kw = persistent(version)
    first, pid1 = land(mq, version, client_id=cid, **kw)
    first.subscribe(mq.topic("own"), 0)  # routes to move: the CONNACK waits for the peers
    first.disconnect()
    c, pid2 = place(mq, version, away(pid1))
    subs = []
    for v, want in ((V311, near(pid1)), (V5, near(pid2)), (V311, away(pid2))):
        s, _ = land(mq, v, want)
        s.subscribe(topic, 0)
        subs.append((s, b"".join(publish(topic, b"%d" % i, version=v) for i in range(4000))))
    bursts = [b"".join(publish(topic, b"%d" % i, version=version) for i in range(k, k + 2000))
              for k in (0, 2000)]
    with ThreadPoolExecutor(len(subs)) as ex:
        futures = [ex.submit(read_exactly, s, len(want)) for s, want in subs]
        c.send(connect(cid, version=version, **kw) + bursts[0])
        for piece in split_packets(bursts[1]):  # one by one, while the CONNECT waits
            c.send(piece)
        got = [f.result() for f in futures]
    p = c.recv_packet(LONG)
    assert p.ptype == CONNACK, f"{p!r} before CONNACK"
    assert parse_connack(p, version).rc == 0
    for i, ((s, want), g) in enumerate(zip(subs, got, strict=True)):
        assert_stream(g, want, f"subscriber {i} (MQTT {s.version})")
        assert_nothing_more(s, f"subscriber {i}")


# ---------------------------------------------------------------- 3. plans dropped


def test_subscribe_and_unsubscribe_while_a_publisher_streams(
        mq: Clients, version: int, streamers: list[Streamer]) -> None:
    """A client subscribing while a publisher streams QoS 0 gets, from some point
    before its SUBACK on, every message without a gap; after its UNSUBACK nothing
    more [MQTT-3.10.4-2]; a witness subscribed all along gets every message."""
    topic, end = mq.topic("s"), mq.topic("end")
    pub, ppid = land(mq, V311)
    w, _ = land(mq, V5 if version == V311 else V311, away(ppid))
    w.subscribe([(topic, 0), (end, 0)])
    s, _ = land(mq, version, away(ppid))
    s.subscribe(end, 0)
    st = Streamer(pub, topic)
    streamers.append(st)
    time.sleep(0.05)
    s.subscribe(topic, 0, pid=3)
    subscribed = st.mark()
    got = read_until(s, seq_at_least(topic, subscribed + 50), what="messages after SUBACK")
    unsubscribe_holding(s, [topic], pid=4)
    unsubscribed = st.mark()
    time.sleep(0.05)
    total = st.stop(end)
    got += read_until(s, on_topic(end), what="the end marker")
    seqs = seqs_of(got, topic)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), f"gap, repeat or swap: {runs(seqs)}"
    assert seqs[0] <= subscribed, f"messages sent after SUBACK missing: {runs(seqs)}, from {subscribed}"
    assert seqs[-1] < unsubscribed, (
        f"messages sent after UNSUBACK ({unsubscribed} on) delivered: {runs(seqs)}")
    wseqs = seqs_of(read_until(w, on_topic(end), what="the witness's end marker"), topic)
    assert wseqs == list(range(total)), f"witness: {runs(wseqs)} of {total}"


def test_same_client_id_reconnect_and_takeover_while_streaming(
        mq: Clients, version: int, streamers: list[Streamer]) -> None:
    """A persistent subscriber leaves and comes back (on another worker) while a
    publisher streams: the new connection gets, after its CONNACK [MQTT-3.2.0-1],
    every message sent after the CONNACK, in order; then a third connection takes
    the session over [MQTT-3.1.4-3] (v5: DISCONNECT 0x8E to the old one) and gets
    everything from its CONNACK on. No message reaches two connections (QoS 0 is
    at most once) and none comes twice or out of order."""
    topic, end = mq.topic("re"), mq.topic("end")
    cid = mq.cid("same")
    kw = persistent(version)
    pub, ppid = land(mq, V311)
    c1, pid1 = land(mq, version, away(ppid), client_id=cid, **kw)
    c2, pid2 = place(mq, version, away(pid1))  # sockets ready: the gap stays short
    c3, _ = place(mq, version, away(pid2))
    c1.subscribe([(topic, 0), (end, 0)])
    st = Streamer(pub, topic)
    streamers.append(st)
    seqs1 = seqs_of(read_until(c1, seq_at_least(topic, 30)), topic)
    c1.disconnect()
    ack, early = connect_early(c2, cid, **kw)
    assert ack.rc == 0 and ack.session_present, ack
    assert not early, f"PUBLISH before CONNACK: {[m.payload for m in early]}"
    mark2 = st.mark()
    got2 = read_until(c2, seq_at_least(topic, mark2 + 30), what="messages after reconnecting")
    ack, early = connect_early(c3, cid, **kw)
    assert ack.rc == 0 and ack.session_present, ack
    assert not early, f"PUBLISH before CONNACK: {[m.payload for m in early]}"
    mark3 = st.mark()
    rest = c2.wait_closed(LONG)
    if version == V5:
        assert rest and rest[-1].ptype == DISCONNECT, f"no DISCONNECT: {rest[-3:]}"
        assert parse_disconnect(rest[-1], V5).rc == RC_SESSION_TAKEN_OVER
        rest = rest[:-1]
    got2 += [parse_publish(p, version) for p in rest]
    time.sleep(0.05)
    total = st.stop(end)
    seqs3 = seqs_of(read_until(c3, on_topic(end), what="the end marker"), topic)
    seqs2 = seqs_of(got2, topic)
    assert seqs1 == list(range(len(seqs1))), f"first connection: {runs(seqs1)}"
    for name, seqs, mark, last in (("second", seqs2, mark2, max(seqs2)),
                                   ("third", seqs3, mark3, total - 1)):
        assert seqs == sorted(set(seqs)), f"{name} connection: repeat or swap: {runs(seqs)}"
        missing = sorted(set(range(mark, last + 1)) - set(seqs))
        assert not missing, (f"{name} connection misses {runs(missing)} sent after its CONNACK "
                             f"(from {mark}); got {runs(seqs)}")
    assert seqs2[0] > seqs1[-1], f"twice: {runs(seqs1)} then {runs(seqs2)}"
    assert seqs3[0] > seqs2[-1], f"twice: {runs(seqs2)} then {runs(seqs3)}"


@pytest.mark.bwfast_only  # one copy for overlapping subscriptions (others MAY send one each)
@pytest.mark.parametrize("version", [V5], ids=["v5"])
def test_subscription_identifier_added_and_removed_while_streaming(
        mq: Clients, version: int, streamers: list[Streamer]) -> None:
    """A v5 subscriber adds an overlapping subscription with Subscription Identifier
    7 while a publisher streams, later removes it, then subscribes its first filter
    again with identifier 9 (new options, same filter): it gets each message once
    [MQTT-3.3.4-2], with identifier 7 from before that SUBACK until before the
    UNSUBACK [MQTT-3.3.4-3], with 9 from before the last SUBACK to the end, never
    another property; a 3.1.1 witness gets everything unchanged."""
    topic, end, wide = mq.topic("sid"), mq.topic("end"), mq.topic("+")
    pub, ppid = land(mq, V311)
    s, _ = land(mq, V5, away(ppid))
    w, _ = land(mq, V311, away(ppid))
    for c in (s, w):
        c.subscribe([(topic, 0), (end, 0)])
    st = Streamer(pub, topic)
    streamers.append(st)
    got = read_until(s, seq_at_least(topic, 30))
    assert s.subscribe(wide, 0, pid=5, props={SUBSCRIPTION_ID: 7}).codes == [0]
    added = st.mark()
    got += read_until(s, seq_at_least(topic, added + 50))
    unsubscribe_holding(s, [wide], pid=6)
    removed = st.mark()
    got += read_until(s, seq_at_least(topic, removed + 50))
    assert s.subscribe(topic, 0, pid=7, props={SUBSCRIPTION_ID: 9}).codes == [0]
    again = st.mark()
    got += read_until(s, seq_at_least(topic, again + 50))
    total = st.stop(end)
    got += read_until(s, on_topic(end))
    stream = [m for m in got if m.topic == topic]
    seqs = [int(m.payload) for m in stream]
    assert seqs == list(range(total)), f"not each message once, in order: {runs(seqs)}"
    ids: dict[int, list[int]] = {0: [], 7: [], 9: []}
    for m in stream:
        sid = m.props.get(SUBSCRIPTION_ID, [0])
        assert len(sid) == 1 and sid[0] in ids and set(m.props) <= {SUBSCRIPTION_ID}, (
            f"message {m.payload!r} with properties {m.props}")
        ids[sid[0]].append(int(m.payload))
    seven, nine = ids[7], ids[9]
    assert seven == list(range(seven[0], seven[-1] + 1)), f"identifier 7 on {runs(seven)}"
    assert seven[0] <= added and added + 50 <= seven[-1] < removed, (
        f"identifier 7 on {runs(seven)}; subscribed at {added}, unsubscribed at {removed}")
    assert nine == list(range(nine[0], total)), f"identifier 9 on {runs(nine)} of {total}"
    assert removed + 50 <= nine[0] <= again, f"identifier 9 from {nine[0]}, subscribed at {again}"
    wmsgs = read_until(w, on_topic(end))
    assert seqs_of(wmsgs, topic) == list(range(total))


@pytest.mark.parametrize("version", [V5], ids=["v5"])
def test_no_local_subscriber_that_publishes_too(
        mq: Clients, version: int, streamers: list[Streamer]) -> None:
    """A v5 client subscribed with No Local publishes on the topic while another
    client streams to it: it never gets its own messages [MQTT-3.8.3-3] and gets all
    the other's; a plain subscriber gets both streams, each in order. Subscribed
    again without No Local, it gets what it publishes after the SUBACK."""
    topic, end = mq.topic("nl"), mq.topic("end")
    pub, ppid = land(mq, V311)
    n, npid = land(mq, V5, away(ppid))
    o, _ = land(mq, V311, away(npid))
    assert n.subscribe([(topic, sub_options(0, no_local=True)), (end, 0)]).codes == [0, 0]
    o.subscribe([(topic, 0), (end, 0)])
    st = Streamer(pub, topic)
    streamers.append(st)
    own = [publish(topic, b"n%d" % i, version=V5) for i in range(300)]
    for k in range(0, len(own), 30):
        n.send(b"".join(own[k : k + 30]))
        time.sleep(0.003)
    n.send(publish(end, b"n-end", version=V5))
    total = st.stop(end)

    def both_ends() -> Callable[[Publish], bool]:
        ends: set[bytes] = set()
        return lambda m: m.topic == end and (ends.add(m.payload) or ends == {b"end", b"n-end"})

    ngot = read_until(n, both_ends(), what="both end markers")
    mine = [m.payload for m in ngot if m.topic == topic and m.payload.startswith(b"n")]
    assert not mine, f"No Local subscriber got {len(mine)} of its own messages: {mine[:5]}"
    assert seqs_of(ngot, topic) == list(range(total))
    ogot = read_until(o, both_ends(), what="both end markers")
    assert seqs_of(ogot, topic) == list(range(total))
    assert [m.payload for m in ogot if m.payload.startswith(b"n")] == (
        [b"n%d" % i for i in range(300)] + [b"n-end"])
    assert n.subscribe(topic, 0, pid=9).codes == [0]  # the same filter, No Local off
    n.send(b"".join(publish(topic, b"m%d" % i, version=V5) for i in range(50)))
    again = read_until(n, on_topic(topic, b"m49"), what="its own messages")
    assert [m.payload for m in again] == [b"m%d" % i for i in range(50)]


def test_max_packet_size_topic_alias_and_shared_group_subscribers(mq: Clients, version: int) -> None:
    """Subscribers that need more than the received bytes, each alone on its topic
    with a plain subscriber, one write of 200 messages per topic: a v5 client with Maximum
    Packet Size 64 gets only the packets that fit [MQTT-3.1.2-25]; one with Topic
    Alias Maximum 2 gets the topic with alias 1, then the alias alone; a shared
    group's two members get each message once between them [MQTT-4.8.2-2], each
    share in order; the plain subscriber gets them all."""
    t_small, t_alias, t_shared = mq.topic("small"), mq.topic("alias"), mq.topic("shared")
    payloads = [b"%d:" % i + b"x" * (i % 50) for i in range(200)]
    pub, ppid = land(mq, version)
    small, _ = land(mq, V5, near(ppid), props={MAXIMUM_PACKET_SIZE: 64})
    small.subscribe(t_small, 0)
    alias, _ = land(mq, V5, away(ppid), props={TOPIC_ALIAS_MAXIMUM: 2})
    alias.subscribe(t_alias, 0)
    members = [land(mq, V5, near(ppid))[0], land(mq, V311, away(ppid))[0]]
    for m in members:
        assert m.subscribe(f"$share/g{mq.uid}/{t_shared}", 0).codes == [0]
    plain, _ = land(mq, V311, away(ppid))
    plain.subscribe([(t_small, 0), (t_alias, 0), (t_shared, 0)])
    for t in (t_small, t_alias, t_shared):
        pub.send(b"".join(publish(t, p, version=version) for p in payloads))
        got = receive_n(plain, 200)
        assert [(m.topic, m.payload) for m in got] == [(t, p) for p in payloads]
    fits = [p for p in payloads if len(publish(t_small, p, version=V5)) <= 64]
    assert 0 < len(fits) < len(payloads)
    assert [m.payload for m in receive_n(small, len(fits))] == fits
    got = receive_n(alias, 200)
    assert [(m.topic, m.props.get(TOPIC_ALIAS), m.payload) for m in got] == (
        [(t_alias, 1, payloads[0])] + [("", 1, p) for p in payloads[1:]])
    shares: list[list[bytes]] = [[], []]
    deadline = time.monotonic() + LONG
    while sum(map(len, shares)) < 200 and time.monotonic() < deadline:
        for share, m in zip(shares, members, strict=True):
            share += [parse_publish(p, m.version).payload for p in drain(m)]
    for share in shares:
        assert share == [p for p in payloads if p in set(share)], "a member's share out of order"
    assert sorted(shares[0] + shares[1]) == sorted(payloads), (
        f"shared group got {len(shares[0])} + {len(shares[1])} of 200")
    for c in (plain, small, alias, *members):
        assert_nothing_more(c, f"MQTT {c.version} subscriber")


def test_shared_groups_get_each_message_once(mq: Clients, version: int) -> None:
    """Three shared groups on the topic and a plain subscriber; 3,000 QoS 0 messages
    in one write. Two groups have three plain members each (3.1.1 and 5.0, on the
    publisher's worker and on others), the third a v5 member whose subscription has
    Subscription Identifier 5 and a 3.1.1 one. Each group gets each message exactly
    once [MQTT-4.8.2-2]; each member its share, in order, byte for byte a plain
    PUBLISH of its version, or with identifier 5 for the member that asked for it
    [MQTT-3.3.4-3]; every member some of them (round robin); the plain subscriber
    gets them all."""
    topic = mq.topic("sh")
    n = 3000
    payloads = [b"%d" % i for i in range(n)]
    pub, ppid = land(mq, version)
    # per group: [(member, its subscription identifier or 0)]
    groups: list[list[tuple[RawClient, int]]] = []
    for g, spec in [("g1", [(V5, near(ppid), 0), (V311, away(ppid), 0), (V5, away(ppid), 0)]),
                    ("g2", [(V5, near(ppid), 0), (V311, away(ppid), 0), (V311, away(ppid), 0)]),
                    ("g3", [(V5, near(ppid), 5), (V311, away(ppid), 0)])]:
        members = []
        for v, want, sid in spec:
            m, _ = land(mq, v, want)
            props = {SUBSCRIPTION_ID: sid} if sid else None
            assert m.subscribe(f"$share/{g}{mq.uid}/{topic}", 0, props=props).codes == [0]
            members.append((m, sid))
        groups.append(members)
    plain, _ = land(mq, V311, away(ppid))
    plain.subscribe(topic, 0)
    pub.send(b"".join(publish(topic, p, version=version) for p in payloads))
    assert [m.payload for m in receive_n(plain, n)] == payloads
    for gi, members in enumerate(groups):
        shares: list[list[bytes]] = [[] for _ in members]
        deadline = time.monotonic() + LONG
        while sum(map(len, shares)) < n and time.monotonic() < deadline:
            for share, (m, sid) in zip(shares, members, strict=True):
                for p in drain(m):
                    msg = parse_publish(p, m.version)
                    if sid:
                        assert msg.props == {SUBSCRIPTION_ID: [sid]}, (
                            f"group {gi}: {msg.payload!r} with properties {msg.props}")
                    else:
                        raw = bytes([p.ptype << 4 | p.flags]) + varint(len(p.body)) + p.body
                        assert raw == publish(topic, msg.payload, version=m.version), (
                            f"group {gi}: not a plain MQTT {m.version} PUBLISH: {raw[:60]!r}")
                    share.append(msg.payload)
        got = sorted(int(p) for share in shares for p in share)
        assert got == list(range(n)), (
            f"group {gi}: {len(got)} messages, {len(set(got))} distinct, of {n}: {runs(got)}")
        for share, (m, _) in zip(shares, members, strict=True):
            seqs = [int(p) for p in share]
            assert seqs and seqs == sorted(seqs), f"group {gi}: a share {runs(seqs)}"
            assert_nothing_more(m, f"group {gi} member")


@pytest.mark.bwfast_only
def test_offline_persistent_subscriber_gets_what_came_meanwhile(mq: Clients, version: int) -> None:
    """bwfast's general path keeps QoS 0 messages for an offline persistent session
    (MQTT allows it: 3.1.1 section 3.1.2.4): so must the lane, whose plan for the
    topic included the subscriber until it left. 200 messages sent while it is away
    come, in order, after it reconnects."""
    topic = mq.topic("off")
    cid = mq.cid("off")
    other = V5 if version == V311 else V311
    kw = persistent(other)
    pub, ppid = land(mq, version)
    sub, spid = land(mq, other, away(ppid), client_id=cid, **kw)
    sub.subscribe(topic, 0)
    pub.send(publish(topic, b"before", version=version))
    read_until(sub, on_topic(topic, b"before"))
    sub.send(disconnect(version=other))
    assert sub.wait_closed(LONG) == []
    time.sleep(0.2)  # the broker has seen the socket close
    pub.send(b"".join(publish(topic, b"%d" % i, version=version) for i in range(200)))
    pub.sync()
    time.sleep(0.2)  # and the peer worker the forwarded messages
    again, _ = place(mq, other, near(spid))
    ack, early = connect_early(again, cid, **kw)
    assert ack.rc == 0 and ack.session_present and not early, (ack, early)
    assert [m.payload for m in receive_n(again, 200)] == [b"%d" % i for i in range(200)]
    assert_nothing_more(again, "the reconnected subscriber")


# ---------------------------------------------------------------- 4. partial packets


def test_packets_cut_anywhere(mq: Clients, version: int) -> None:
    """A stream sent in pieces cut at random and at the awkward places (after the
    first byte, inside a Remaining Length, inside a topic, a packet id, properties,
    and a 200 kB payload cut in dozens of pieces) reaches 3.1.1 and 5.0 subscribers
    intact and in order; the publisher gets its PUBACK."""
    rng = random.Random(1729 + version)
    topic = mq.topic("cut")
    user = [("key", "value")]
    # (payload, qos, v5 properties); cut offsets inside the packet, None: random only
    msgs: list[tuple[bytes, int, Any, list[int]]] = []
    for i in range(30):
        msgs.append((b"a%d" % i, 0, None, []))
    msgs.append((b"m" * 200, 0, None, [1, 2]))                    # 2-byte length, cut between
    msgs.append((rng.randbytes(200_000), 0, None, [1, 2, 3, 4]))  # 3-byte length
    msgs.append((b"q", 1, None, [len(topic) + 5]))                # in the packet id
    msgs.append((b"", 0, None, [1]))
    if version == V5:
        msgs.append((b"props", 0, {USER_PROPERTY: user}, [len(topic) + 7]))  # in the properties
    msgs.append((b"t", 0, None, [6]))                             # in the topic
    msgs.append((b"x" * 20_000, 0, None, [1]))
    for i in range(30):
        msgs.append((b"b%d" % i, 0, None, []))
    data = bytearray()
    cuts: set[int] = set()
    for n, (payload, qos, props, at) in enumerate(msgs):
        start = len(data)
        data += publish(topic, payload, qos=qos, pid=n + 1 if qos else None, version=version,
                        props=props)
        cuts.update(start + k for k in at)
        if len(payload) > 100_000:
            cuts.update(range(start + 10, len(data), 5000))
    cuts.update(rng.sample(range(1, len(data)), 150))
    pieces = sorted(cuts | {0, len(data)})
    pub, ppid = land(mq, version)
    subs = []
    for v, want in ((V311, near(ppid)), (V5, away(ppid))):
        s, _ = land(mq, v, want)
        s.subscribe(topic, 0)
        subs.append((s, b"".join(publish(topic, p, version=v, props=pr if v == V5 else None)
                                 for p, _, pr, _ in msgs)))
    for lo, hi in zip(pieces, pieces[1:], strict=False):
        pub.send(bytes(data[lo:hi]))
        time.sleep(0.001)
    ack = pub.expect_ack(PUBACK, LONG)
    assert ack.rc in (0, 0x10)
    for s, want in subs:
        assert_stream(read_exactly(s, len(want)), want, f"MQTT {s.version} subscriber")
        assert_nothing_more(s, f"MQTT {s.version} subscriber")


# ---------------------------------------------------------------- 5. REST history


@pytest.fixture(scope="module")
def api_broker(workers: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiBroker]:
    """A broker with its REST API, at the suite's worker counts."""
    yield from start_api_broker(tmp_path_factory.mktemp("fastapi"), workers)


def _rows(api: ApiBroker, path: str, cid: str, key: str) -> list[tuple[str, bytes]]:
    body = api.get(path, device_id=cid, limit=10).json()
    rows = body.get(key) or []
    for row in rows:
        assert abs(row["time"] - time.time() * 1000) < 60_000, row
    return [(r["topic"], base64.b64decode(r["message"]) if r.get("encoding") == "base64"
             else r["message"].encode()) for r in rows]


@pytest.mark.bwfast_only
def test_rest_history_shows_fast_lane_messages(
        api_broker: ApiBroker, request: pytest.FixtureRequest, version: int) -> None:
    """What the lane carried is in the REST API within ~2 s, as the general path's
    messages are: the publisher's last 10 events and each subscriber's last 10
    commands (one subscriber on the publisher's worker, one elsewhere), newest
    first, in the order of the one write that mixed them, binary payloads base64."""
    mq = Clients(api_broker.broker, request.node.nodeid)
    try:
        a, b = mq.topic("ha"), mq.topic("hb")
        pub, ppid = land(mq, version, client_id=mq.cid("pub"))
        subs = [land(mq, V311, near(ppid), client_id=mq.cid("s1"))[0],
                land(mq, V5, away(ppid), client_id=mq.cid("s2"))[0]]
        for s in subs:
            s.subscribe([(a, 0), (b, 0)])
        sent = [(a if i % 3 else b, b"fast-%d" % i) for i in range(25)]
        sent.append((a, b"slow-25"))  # QoS 1: the general path, between fast ones
        sent += [(b, b"fast-26"), (a, b"fast-27"), (a, b"\xff\x00fast-28")]
        data = b"".join(publish(t, p, qos=1, pid=1, version=version) if p.startswith(b"slow")
                        else publish(t, p, version=version) for t, p in sent)
        pub.send(data)
        assert pub.expect_ack(PUBACK, LONG).pid == 1
        def expect_history(sent: list[tuple[str, bytes]]) -> None:
            """Every subscriber got ``sent``; the publisher's last events and each
            subscriber's last commands are its newest 10, newest first."""
            for s in subs:
                assert [(m.topic, m.payload) for m in receive_n(s, len(sent))] == sent
            newest = sent[::-1][:10]
            for path, cid, key in [("last_events_by_device/", mq.cid("pub"), "events"),
                                   ("last_commands_to_device/", mq.cid("s1"), "commands"),
                                   ("last_commands_to_device/", mq.cid("s2"), "commands")]:

                def newest_first(path: str = path, cid: str = cid, key: str = key) -> Any:
                    rows = _rows(api_broker, path, cid, key)
                    return rows[:1] == newest[:1] and rows

                rows = eventually(newest_first, timeout=3.0)
                assert rows == newest, f"{path} {cid}: {rows}"

        expect_history(sent)
        # Only what the lane takes this time (nothing else marks the rings to be saved)
        late = [(a, b"late-%d" % i) for i in range(12)]
        pub.send(b"".join(publish(t, p, version=version) for t, p in late))
        expect_history(late)
    finally:
        mq.close_all()


# ---------------------------------------------------------------- 6. malformed


def _props(version: int) -> bytes:
    return encode_properties(None) if version == V5 else b""


# (id, bad packet for (topic, version), v5 reason codes accepted)
BAD: list[tuple[str, Callable[[str, int], bytes], set[int]]] = [
    ("qos3", lambda t, v: packet(PUBLISH, 0x06, mqtt_str(t) + u16(1) + _props(v) + b"x"),
     {RC_MALFORMED}),
    ("wildcard_plus", lambda t, v: publish(t + "/+", b"x", version=v), {RC_TOPIC_NAME_INVALID}),
    ("wildcard_hash", lambda t, v: publish(t + "/#", b"x", version=v), {RC_TOPIC_NAME_INVALID}),
    ("dup_on_qos0", lambda t, v: packet(PUBLISH, 0x08, mqtt_str(t) + _props(v) + b"x"),
     {RC_MALFORMED, RC_PROTOCOL_ERROR}),
    ("nul_in_topic", lambda t, v: publish(t + "\x00", b"x", version=v), {RC_MALFORMED}),
    ("bad_utf8_topic", lambda t, v: publish(t.encode() + b"\xc3", b"x", version=v),
     {RC_MALFORMED}),
    ("topic_past_end", lambda t, v: b"\x30\x05\x00\x09abc", {RC_MALFORMED}),
    ("type0", lambda t, v: b"\x00\x00", {RC_MALFORMED}),
]


@pytest.mark.parametrize("bad", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_packet_after_fast_ones(
        mq: Clients, version: int, bad: Callable[[str, int], bytes]) -> None:
    """Twenty plain QoS 0 PUBLISHes, a QoS 1 one, five more, a malformed or invalid
    PUBLISH, then five more, in one write: the first 26 are delivered in order, none
    after the bad packet; only that connection is closed, a v5 one after DISCONNECT
    with the reason code the general path gives [MQTT-4.13.1-1]; the subscriber and
    another publisher on the same worker carry on."""
    codes = next(b[2] for b in BAD if b[1] is bad)
    topic = mq.topic("bad")
    pub, ppid = land(mq, version)
    other, _ = land(mq, V311, near(ppid))
    sub, _ = land(mq, V5, away(ppid))
    sub.subscribe(topic, 1)
    good = [b"a%d" % i for i in range(20)] + [b"q1"] + [b"b%d" % i for i in range(5)]
    data = b"".join(publish(topic, p, qos=1, pid=1, version=version) if p == b"q1"
                    else publish(topic, p, version=version) for p in good)
    data += bad(topic, version)
    data += b"".join(publish(topic, b"z%d" % i, version=version) for i in range(5))
    pub.send(data)
    packets = pub.wait_closed(LONG)
    if version == V5:
        assert packets and packets[-1].ptype == DISCONNECT, f"no DISCONNECT: {packets}"
        rc = parse_disconnect(packets[-1], V5).rc
        assert rc in codes, f"DISCONNECT {rc:#x}, expected one of {[hex(c) for c in codes]}"
        packets = packets[:-1]
    assert all(p.ptype == PUBACK for p in packets), f"unexpected {packets}"
    other.publish(topic, b"end", qos=1)
    got = [m.payload for m in read_until(sub, on_topic(topic, b"end"), what="b'end'")]
    assert got == good + [b"end"]
    assert sub.is_open() and not sub.pending, f"after the end marker: {sub.pending}"


def test_packet_over_maximum_size_after_fast_ones(
        mq: Clients, limits_broker: Broker, version: int) -> None:
    """Plain QoS 0 PUBLISHes then one over max_packet_size in one write: the first
    ones are delivered, then the connection is closed (v5: DISCONNECT 0x95)."""
    topic = mq.topic("big")
    limit = limits_broker.conf["max_packet_size"]
    sub = mq.raw_connected(V311, broker=limits_broker, keepalive=20)
    sub.subscribe(topic, 0)
    pub = mq.raw_connected(version, broker=limits_broker, keepalive=20)
    good = [b"g%d" % i for i in range(10)]
    pub.send(b"".join(publish(topic, p, version=version) for p in good)
             + publish(topic, b"B" * limit, version=version)
             + publish(topic, b"after", version=version))
    packets = pub.wait_closed(LONG)
    if version == V5:
        assert [p.ptype for p in packets] == [DISCONNECT], packets
        assert parse_disconnect(packets[0], V5).rc == RC_PACKET_TOO_LARGE
    else:
        assert packets == []
    mq.raw_connected(V311, broker=limits_broker, keepalive=20).publish(topic, b"end")
    assert [m.payload for m in read_until(sub, on_topic(topic, b"end"))] == good + [b"end"]


# ---------------------------------------------------------------- 7. $ topics


def test_dollar_topics_fast_and_general(mq: Clients, version: int) -> None:
    """A client's PUBLISH to $SYS/... is dropped (as the general path and Mosquitto
    do); one to another $ topic reaches a subscriber of that $ prefix but not `#` or
    `+/...` subscribers [MQTT-4.7.2-1]; the same whether the PUBLISH could take the
    lane (plain QoS 0) or not (QoS 1, or v5 with a property)."""
    uid = mq.uid
    sys_t, dollar_t, plain = f"$SYS/{uid}/foo", f"$fl{uid}/x", mq.topic("x")
    pub, ppid = land(mq, version)
    watchers: dict[str, RawClient] = {}
    for name, filters in [("hash", ["#"]), ("plus", ["+/x", "+/+/foo", plain]),
                          ("sys", ["$SYS/#", plain]), ("dollar", [f"$fl{uid}/#", plain])]:
        c, _ = land(mq, V5 if len(watchers) % 2 else V311, away(ppid))
        assert c.subscribe([(f, 0) for f in filters]).codes == [0] * len(filters)
        watchers[name] = c
    kinds: list[tuple[bytes, int, Any]] = [(b"fast", 0, None), (b"qos1", 1, None)]
    if version == V5:
        kinds.append((b"props", 0, {USER_PROPERTY: [("k", "v")]}))
    data = b"".join(publish(t, p, qos=q, pid=1 if q else None, props=pr, version=version)
                    for t in (sys_t, dollar_t) for p, q, pr in kinds)
    pub.send(data + publish(plain, b"end", version=version))
    for _ in range(2):
        assert pub.expect_ack(PUBACK, LONG).pid == 1
    for name, c in watchers.items():
        got = [(m.topic, m.payload) for m in
               read_until(c, on_topic(plain, b"end"), what=f"end marker at {name}")
               if uid in m.topic]
        want = [(dollar_t, p) for p, _, _ in kinds] if name == "dollar" else []
        assert got == want + [(plain, b"end")], f"{name} subscriber got {got}"
