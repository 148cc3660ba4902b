"""Property tests of the compiled MQTT codec (bwfast.packet) with Hypothesis.

- Random valid packets of every type and version survive encode -> decode,
  whatever way the byte stream is split between feeds.
- Random garbage, and valid streams with bytes flipped, cut or inserted,
  either decode or raise MQTTError: never another exception, never a hang.
- Garbage after valid packets never costs the valid ones: they come back from
  feed() or in the error's ``packets``.
"""
from __future__ import annotations

from typing import Any

from bwfast.packet import (
    Ack,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Parser,
    Pingreq,
    Pingresp,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode_ack,
    encode_auth,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_pingresp,
    encode_publish,
    encode_suback,
    encode_subscribe,
    encode_unsuback,
    encode_unsubscribe,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bwfast import codes as c
from bwfast.errors import MQTTError

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Strings an MQTT peer may send: no U+0000, no surrogates [MQTT-1.5.4-1, -2].
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
TOPIC = st.text(st.characters(codec="utf-8", exclude_characters="\x00+#"),
                min_size=1, max_size=12)
BYTES = st.binary(max_size=40)
U8, U16, U32 = st.integers(0, 255), st.integers(0, 65535), st.integers(0, 2**32 - 1)
VERSIONS = st.sampled_from([c.MQTT31, c.MQTT311, c.MQTT5])

# Property value strategies by id (MQTT 5.0 §2.2.2.2).
# Flags are 0 or 1 and a Response Topic is a topic name, or it is a Protocol Error.
FLAG = st.integers(0, 1)
VALUE: dict[int, st.SearchStrategy] = {
    0x01: U8, 0x02: U32, 0x03: TEXT, 0x08: TOPIC, 0x09: BYTES,
    0x0B: st.lists(st.integers(1, 268435455), min_size=1, max_size=3),
    0x11: U32, 0x12: TEXT, 0x13: U16, 0x15: TEXT, 0x16: BYTES, 0x17: FLAG, 0x18: U32,
    0x19: FLAG, 0x1A: TEXT, 0x1C: TEXT, 0x1F: TEXT, 0x21: U16, 0x22: U16, 0x23: U16,
    0x24: FLAG, 0x25: FLAG, 0x26: st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3),
    0x27: U32, 0x28: FLAG, 0x29: FLAG, 0x2A: FLAG,
}
ACK_IDS = (0x1F, 0x26)
ALLOWED: dict[str, tuple[int, ...]] = {
    "will": (0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26),
    "connect": (0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27),
    "connack": (0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26,
                0x27, 0x28, 0x29, 0x2A),
    "publish": (0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26),
    "ack": ACK_IDS,
    "subscribe": (0x0B, 0x26),
    "unsubscribe": (0x26,),
    "disconnect": (0x11, 0x1C, 0x1F, 0x26),
    "auth": (0x15, 0x16, 0x1F, 0x26),
}


def props(kind: str) -> st.SearchStrategy[dict]:
    optional = {pid: VALUE[pid] for pid in ALLOWED[kind]}
    if kind == "subscribe":   # one subscription identifier at most [MQTT-3.8.2.1.2]
        optional[0x0B] = st.lists(st.integers(1, 268435455), min_size=1, max_size=1)
    return st.fixed_dictionaries({}, optional=optional)  # type: ignore[arg-type]


def v5_props(draw: Any, version: int, kind: str) -> dict:
    return draw(props(kind)) if version == 5 else {}


@st.composite
def connect_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    kw: dict = {"client_id": draw(TEXT), "version": version, "clean_start": draw(st.booleans()),
                "keepalive": draw(U16), "properties": v5_props(draw, version, "connect")}
    if draw(st.booleans()):
        kw.update(will_topic=draw(TOPIC), will_payload=draw(BYTES), will_qos=draw(st.integers(0, 2)),
                  will_retain=draw(st.booleans()),
                  will_properties=v5_props(draw, version, "will"))
    if draw(st.booleans()):
        kw["username"] = draw(TEXT)
    if draw(st.booleans()) and (version == 5 or "username" in kw):
        kw["password"] = draw(BYTES)
    return encode_connect(**kw), Connect(**kw)


@st.composite
def connack_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    present, rc = draw(st.booleans()), draw(U8)
    p = v5_props(draw, version, "connack")
    return encode_connack(present, rc, version, p), Connack(present, rc, p)


@st.composite
def publish_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    topic = draw(TOPIC | st.just("")) if version == 5 else draw(TOPIC)
    qos = draw(st.integers(0, 2))
    dup = qos > 0 and draw(st.booleans())
    pid = draw(st.integers(1, 65535)) if qos else 0
    retain = draw(st.booleans())
    payload = draw(st.binary(max_size=300))
    p = v5_props(draw, version, "publish")
    data = encode_publish(topic, payload, qos, retain, dup, pid, version, p)
    return data, Publish(topic, payload, qos, retain, dup, pid, p, data)


@st.composite
def ack_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    ptype = draw(st.sampled_from([c.PUBACK, c.PUBREC, c.PUBREL, c.PUBCOMP]))
    pid = draw(U16)
    rc = draw(U8) if version == 5 else 0
    p = v5_props(draw, version, "ack")
    return encode_ack(ptype, pid, rc, version, p), Ack(ptype, pid, rc, p)


@st.composite
def subscribe_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    if version == 5:
        options = st.builds(lambda q, nl, rap, rh: q | nl << 2 | rap << 3 | rh << 4,
                            st.integers(0, 2), st.integers(0, 1), st.integers(0, 1),
                            st.integers(0, 2))
    else:
        options = st.integers(0, 2)
    topics = draw(st.lists(st.tuples(TEXT, options), min_size=1, max_size=4))
    pid = draw(st.integers(1, 65535))
    p = v5_props(draw, version, "subscribe")
    return encode_subscribe(pid, topics, version, p), Subscribe(pid, topics, p)


@st.composite
def suback_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    pid, codes = draw(U16), draw(st.lists(U8, min_size=1, max_size=5))
    p = v5_props(draw, version, "ack")
    return encode_suback(pid, codes, version, p), Suback(pid, codes, p)


@st.composite
def unsubscribe_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    pid, topics = draw(st.integers(1, 65535)), draw(st.lists(TEXT, min_size=1, max_size=4))
    p = v5_props(draw, version, "unsubscribe")
    return encode_unsubscribe(pid, topics, version, p), Unsubscribe(pid, topics, p)


@st.composite
def unsuback_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    pid, codes = draw(U16), draw(st.lists(U8, max_size=5))
    p = v5_props(draw, version, "ack")
    expected = Unsuback(pid, codes if version == 5 else [], p)
    return encode_unsuback(pid, codes, version, p), expected


@st.composite
def simple_packet(draw: Any, version: int) -> tuple[bytes, Any]:
    kind = draw(st.sampled_from(["pingreq", "pingresp", "disconnect"]
                                + (["auth"] if version == 5 else [])))
    if kind == "pingreq":
        return encode_pingreq(), Pingreq()
    if kind == "pingresp":
        return encode_pingresp(), Pingresp()
    rc = draw(U8) if version == 5 else 0
    if kind == "disconnect":
        p = v5_props(draw, version, "disconnect")
        return encode_disconnect(rc, version, p), Disconnect(rc, p)
    p = draw(props("auth"))
    return encode_auth(rc, p), Auth(rc, p)


def any_packet(version: int) -> st.SearchStrategy[tuple[bytes, Any]]:
    return st.one_of(connect_packet(version), connack_packet(version), publish_packet(version),
                     publish_packet(version), ack_packet(version), subscribe_packet(version),
                     suback_packet(version), unsubscribe_packet(version),
                     unsuback_packet(version), simple_packet(version))


@st.composite
def stream(draw: Any) -> tuple[int, list[tuple[bytes, Any]]]:
    version = draw(VERSIONS)
    return version, draw(st.lists(any_packet(version), min_size=1, max_size=8))


def split(draw: Any, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def feed_all(parser: Parser, pieces: list[bytes]) -> tuple[list, MQTTError | None]:
    """Every packet decoded, from the returns and from the error's ``packets``."""
    out: list = []
    for piece in pieces:
        try:
            out += parser.feed(piece)
        except MQTTError as e:
            return out + e.packets, e
    return out, None


@FUZZ
@given(stream(), st.data())
def test_valid_packets_round_trip_under_any_split(case: tuple, data: Any) -> None:
    version, packets = case
    wire = b"".join(raw for raw, _ in packets)
    parser = Parser(version=version)
    out, err = feed_all(parser, split(data.draw, wire))
    assert err is None
    assert out == [expected for _, expected in packets]
    assert [p.raw for p in out if isinstance(p, Publish)] == [
        raw for raw, p in packets if isinstance(p, Publish)]
    assert parser.pending == 0


@FUZZ
@given(st.binary(max_size=400), st.sampled_from([0, 3, 4, 5]), st.data())
def test_garbage_decodes_or_raises_mqtt_error(garbage: bytes, version: int, data: Any) -> None:
    feed_all(Parser(max_packet_size=data.draw(st.sampled_from([268435455, 64])),
                    version=version), split(data.draw, garbage))


@FUZZ
@given(stream(), st.data())
def test_mutated_streams_decode_or_raise_mqtt_error(case: tuple, data: Any) -> None:
    """Flip, cut and insert bytes in valid streams: reach deep into every decoder."""
    version, packets = case
    wire = bytearray(b"".join(raw for raw, _ in packets))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "flip" and wire:
            wire[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut" and wire:
            del wire[pos:pos + data.draw(st.integers(1, 4))]
        else:
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
    feed_all(Parser(version=version), split(data.draw, bytes(wire)))


@FUZZ
@given(stream(), st.binary(min_size=1, max_size=100), st.data())
def test_garbage_after_valid_packets_keeps_them(case: tuple, garbage: bytes, data: Any) -> None:
    version, packets = case
    wire = b"".join(raw for raw, _ in packets) + garbage
    out, _ = feed_all(Parser(version=version), split(data.draw, wire))
    assert out[:len(packets)] == [expected for _, expected in packets]
