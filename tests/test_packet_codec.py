"""Unit tests of the compiled MQTT codec (bwfast.packet, ext/packet.pyx).

Round trips for every packet type in MQTT 3.1, 3.1.1 and 5.0, exact bytes from
the specifications' examples, every malformed-input case with its reason code,
and incremental feeding split at every byte boundary.
"""
from __future__ import annotations

import random
import struct

import pytest
from bwfast.packet import (
    Ack,
    Auth,
    Connack,
    Connect,
    Disconnect,
    EncodeError,
    Parser,
    Pingreq,
    Pingresp,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    decode_properties,
    encode_ack,
    encode_auth,
    encode_connack,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_pingresp,
    encode_properties,
    encode_publish,
    encode_suback,
    encode_subscribe,
    encode_unsuback,
    encode_unsubscribe,
    encode_varint,
    packet_length,
    set_dup,
    set_packet_id,
    set_retain,
)

from bwfast import codes as c
from bwfast import packet as pk
from bwfast.errors import MQTTError

VERSIONS = [c.MQTT31, c.MQTT311, c.MQTT5]
ACK_TYPES = [c.PUBACK, c.PUBREC, c.PUBREL, c.PUBCOMP]
USER = [("k", "v"), ("k", "v2"), ("ü", "")]

# Every property allowed in each packet (MQTT 5.0 §2.2.2.2), with a value.
WILL_PROPS = {
    c.PAYLOAD_FORMAT_INDICATOR: 1, c.MESSAGE_EXPIRY_INTERVAL: 3600, c.CONTENT_TYPE: "text/plain",
    c.RESPONSE_TOPIC: "resp/t", c.CORRELATION_DATA: b"\x00\x01corr", c.WILL_DELAY_INTERVAL: 30,
    c.USER_PROPERTY: USER,
}
CONNECT_PROPS = {
    c.SESSION_EXPIRY_INTERVAL: 0xFFFFFFFF, c.AUTHENTICATION_METHOD: "SCRAM-SHA-1",
    c.AUTHENTICATION_DATA: b"\xffdata", c.REQUEST_PROBLEM_INFORMATION: 0,
    c.REQUEST_RESPONSE_INFORMATION: 1, c.RECEIVE_MAXIMUM: 20, c.TOPIC_ALIAS_MAXIMUM: 10,
    c.USER_PROPERTY: USER, c.MAXIMUM_PACKET_SIZE: 1 << 20,
}
CONNACK_PROPS = {
    c.SESSION_EXPIRY_INTERVAL: 60, c.ASSIGNED_CLIENT_IDENTIFIER: "bw-1",
    c.SERVER_KEEP_ALIVE: 120, c.AUTHENTICATION_METHOD: "m", c.AUTHENTICATION_DATA: b"d",
    c.RESPONSE_INFORMATION: "info", c.SERVER_REFERENCE: "other:1883", c.REASON_STRING: "why",
    c.RECEIVE_MAXIMUM: 65535, c.TOPIC_ALIAS_MAXIMUM: 10, c.MAXIMUM_QOS: 1,
    c.RETAIN_AVAILABLE: 1, c.USER_PROPERTY: USER, c.MAXIMUM_PACKET_SIZE: 268435460,
    c.WILDCARD_SUBSCRIPTION_AVAILABLE: 1, c.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 1,
    c.SHARED_SUBSCRIPTION_AVAILABLE: 0,
}
PUBLISH_PROPS = {
    c.PAYLOAD_FORMAT_INDICATOR: 1, c.MESSAGE_EXPIRY_INTERVAL: 10, c.CONTENT_TYPE: "json",
    c.RESPONSE_TOPIC: "r/1", c.CORRELATION_DATA: b"\x00", c.SUBSCRIPTION_IDENTIFIER: [1, 268435455],
    c.TOPIC_ALIAS: 3, c.USER_PROPERTY: USER,
}
ACK_PROPS = {c.REASON_STRING: "no", c.USER_PROPERTY: USER}
SUBSCRIBE_PROPS = {c.SUBSCRIPTION_IDENTIFIER: [16384], c.USER_PROPERTY: USER}
DISCONNECT_PROPS = {
    c.SESSION_EXPIRY_INTERVAL: 0, c.SERVER_REFERENCE: "s", c.REASON_STRING: "bye",
    c.USER_PROPERTY: USER,
}
AUTH_PROPS = {
    c.AUTHENTICATION_METHOD: "m", c.AUTHENTICATION_DATA: b"x", c.REASON_STRING: "r",
    c.USER_PROPERTY: USER,
}


def decode_one(data: bytes, version: int = 0):
    """The single packet in data; checks that nothing is left over."""
    parser = Parser(version=version)
    packets = parser.feed(data)
    assert len(packets) == 1, packets
    assert parser.pending == 0
    return packets[0]


def reason_of(data: bytes, version: int = 0, max_packet_size: int = 268435455) -> int:
    with pytest.raises(MQTTError) as exc:
        Parser(max_packet_size, version).feed(data)
    return exc.value.reason_code


def fixed(first: int, body: bytes) -> bytes:
    """A packet from its first byte and body (remaining length < 128)."""
    assert len(body) < 128
    return bytes([first, len(body)]) + body


def s16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def varint(n: int) -> bytes:
    return encode_varint(n)


def props_block(raw: bytes) -> bytes:
    return varint(len(raw)) + raw


# --------------------------------------------------------------------------
# The module itself


def test_is_compiled() -> None:
    assert pk.is_compiled() is True
    assert pk.__file__.endswith((".so", ".pyd"))


# --------------------------------------------------------------------------
# Round trips, every type and version


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("with_will", [False, True])
@pytest.mark.parametrize("with_auth", [False, True])
def test_connect_round_trip(version: int, with_will: bool, with_auth: bool) -> None:
    v5 = version == c.MQTT5
    kw: dict = {"client_id": "client-ü", "version": version, "clean_start": not with_auth,
                "keepalive": 65535}
    if with_will:
        kw.update(will_topic="will/t", will_payload=b"\x00gone", will_qos=2, will_retain=True,
                  will_properties=WILL_PROPS if v5 else None)
    if with_auth:
        kw.update(username="user", password=b"\x00\xffsecret")
    if v5:
        kw["properties"] = CONNECT_PROPS
    p = decode_one(encode_connect(**kw))
    assert isinstance(p, Connect)
    assert p.type == c.CONNECT
    assert p.protocol_name == ("MQIsdp" if version == 3 else "MQTT")
    assert p.version == version
    assert p.clean_start is (not with_auth)
    assert p.keepalive == 65535
    assert p.client_id == "client-ü"
    assert p.will_topic == ("will/t" if with_will else None)
    assert p.will_payload == (b"\x00gone" if with_will else None)
    assert p.will_qos == (2 if with_will else 0)
    assert p.will_retain is with_will
    assert p.will_properties == (WILL_PROPS if v5 and with_will else {})
    assert p.username == ("user" if with_auth else None)
    assert p.password == (b"\x00\xffsecret" if with_auth else None)
    assert p.properties == (CONNECT_PROPS if v5 else {})
    assert p == Connect(**{**kw, "will_payload": kw.get("will_payload")})


def test_connect_v5_password_without_username_allowed() -> None:
    p = decode_one(encode_connect("c", version=5, password=b"pw"))
    assert p.username is None and p.password == b"pw"


def test_connect_empty_client_id_and_will_payload() -> None:
    p = decode_one(encode_connect("", will_topic="t", will_payload=b""))
    assert p.client_id == "" and p.will_payload == b""


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("present", [False, True])
def test_connack_round_trip(version: int, present: bool) -> None:
    v5 = version == c.MQTT5
    rc = c.NOT_AUTHORIZED if v5 else c.V3_NOT_AUTHORIZED
    p = decode_one(encode_connack(present, rc, version, CONNACK_PROPS if v5 else None), version)
    assert isinstance(p, Connack)
    assert (p.type, p.session_present, p.reason_code) == (c.CONNACK, present, rc)
    assert p.properties == (CONNACK_PROPS if v5 else {})


def test_connack_v3_form_read_by_v5_parser() -> None:
    # A server refusing the protocol level answers in the 3.1.1 form [MQTT-3.1.2-2].
    p = decode_one(encode_connack(False, 1, 4), version=5)
    assert (p.reason_code, p.properties) == (1, {})


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("retain", [False, True])
def test_publish_round_trip(version: int, qos: int, retain: bool) -> None:
    v5 = version == c.MQTT5
    dup = qos > 0
    payload = bytes(range(256)) * 3
    data = encode_publish("a/b/ü", payload, qos, retain, dup, 0xFFFF if qos else 0, version,
                          PUBLISH_PROPS if v5 else None)
    p = decode_one(data, version)
    assert isinstance(p, Publish)
    assert p.type == c.PUBLISH
    assert (p.topic, p.qos, p.retain, p.dup) == ("a/b/ü", qos, retain, dup)
    assert p.packet_id == (0xFFFF if qos else 0)
    assert p.payload == payload
    assert p.properties == (PUBLISH_PROPS if v5 else {})
    assert p.raw == data
    assert p == Publish("a/b/ü", payload, qos, retain, dup, p.packet_id,
                        PUBLISH_PROPS if v5 else None)


def test_publish_bytes_topic_and_empty_payload() -> None:
    p = decode_one(encode_publish(b"t/1", b""))
    assert (p.topic, p.payload) == ("t/1", b"")


def test_publish_empty_topic_allowed_in_v5() -> None:
    # The broker resolves the Topic Alias (§3.3.2.3.4); the codec lets it through.
    p = decode_one(encode_publish("", b"x", version=5, properties={c.TOPIC_ALIAS: 1}), 5)
    assert p.topic == "" and p.properties == {c.TOPIC_ALIAS: 1}


def test_publish_raw_is_exact_bytes_within_a_stream() -> None:
    a = encode_publish("a", b"1")
    b = encode_publish("b", b"22", 1, packet_id=5)
    packets = Parser().feed(a + b + a)
    assert [p.raw for p in packets] == [a, b, a]


def test_publish_topic_reused_while_it_repeats() -> None:
    packets = Parser().feed(encode_publish("x/y", b"1") * 2 + encode_publish("x/z", b"2"))
    assert packets[0].topic is packets[1].topic
    assert packets[2].topic == "x/z"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ptype", ACK_TYPES)
def test_ack_round_trip(version: int, ptype: int) -> None:
    v5 = version == c.MQTT5
    for rc, props in [(0, None), (0x10, None), (0x80, ACK_PROPS), (0, ACK_PROPS)]:
        data = encode_ack(ptype, 1234, rc, version, props)
        p = decode_one(data, version)
        assert isinstance(p, Ack)
        assert (p.type, p.packet_id) == (ptype, 1234)
        assert p.reason_code == (rc if v5 else 0)
        assert p.properties == ((props or {}) if v5 else {})
        assert p == Ack(ptype, 1234, rc if v5 else 0, props if v5 else None)


def test_ack_v5_short_forms() -> None:
    """v5 omits what it can (§3.4.2.1): 2 bytes for success, 3 for a bare reason code."""
    assert encode_ack(c.PUBACK, 7, 0, 5) == b"\x40\x02\x00\x07"
    assert encode_ack(c.PUBREC, 7, 0x10, 5) == b"\x50\x03\x00\x07\x10"
    assert encode_ack(c.PUBREL, 7, 0x92, 5) == b"\x62\x03\x00\x07\x92"
    assert encode_ack(c.PUBCOMP, 7, 0, 5, {}) == b"\x70\x02\x00\x07"
    assert encode_ack(c.PUBACK, 7, 0, 5, {c.REASON_STRING: "a"}) == (
        b"\x40\x08\x00\x07\x00\x04\x1f\x00\x01a")
    assert encode_ack(c.PUBACK, 7, 0x80, 4) == b"\x40\x02\x00\x07"


@pytest.mark.parametrize("version", VERSIONS)
def test_subscribe_round_trip(version: int) -> None:
    v5 = version == c.MQTT5
    topics = [("a/+", 0), ("b/#", 1), ("$share/g/c", 2), ("ü", 1)]
    if v5:
        topics += [("d", 0x2E), ("e", 0x1D), ("f", 0x04)]
    p = decode_one(encode_subscribe(65535, topics, version, SUBSCRIBE_PROPS if v5 else None),
                   version)
    assert isinstance(p, Subscribe)
    assert (p.type, p.packet_id, p.topics) == (c.SUBSCRIBE, 65535, topics)
    assert p.properties == (SUBSCRIBE_PROPS if v5 else {})


@pytest.mark.parametrize("version", VERSIONS)
def test_suback_round_trip(version: int) -> None:
    v5 = version == c.MQTT5
    codes = [0, 1, 2, 0x80] + ([0x8F, 0xA2] if v5 else [])
    p = decode_one(encode_suback(9, codes, version, ACK_PROPS if v5 else None), version)
    assert isinstance(p, Suback)
    assert (p.type, p.packet_id, p.reason_codes) == (c.SUBACK, 9, codes)
    assert p.properties == (ACK_PROPS if v5 else {})


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_round_trip(version: int) -> None:
    v5 = version == c.MQTT5
    topics = ["a/+", "b/#", "ü/ö"]
    props = {c.USER_PROPERTY: USER} if v5 else None
    p = decode_one(encode_unsubscribe(3, topics, version, props), version)
    assert isinstance(p, Unsubscribe)
    assert (p.type, p.packet_id, p.topics) == (c.UNSUBSCRIBE, 3, topics)
    assert p.properties == (props or {})


@pytest.mark.parametrize("version", VERSIONS)
def test_unsuback_round_trip(version: int) -> None:
    v5 = version == c.MQTT5
    data = encode_unsuback(3, [0, 0x11, 0x8F], version, ACK_PROPS if v5 else None)
    p = decode_one(data, version)
    assert isinstance(p, Unsuback)
    assert (p.type, p.packet_id) == (c.UNSUBACK, 3)
    assert p.reason_codes == ([0, 0x11, 0x8F] if v5 else [])
    assert p.properties == (ACK_PROPS if v5 else {})
    if not v5:
        assert data == b"\xb0\x02\x00\x03"   # 3.1.1 §3.11: no payload


@pytest.mark.parametrize("version", VERSIONS)
def test_ping_round_trip(version: int) -> None:
    assert encode_pingreq() == b"\xc0\x00"
    assert encode_pingresp() == b"\xd0\x00"
    req = decode_one(encode_pingreq(), version)
    resp = decode_one(encode_pingresp(), version)
    assert isinstance(req, Pingreq) and req.type == c.PINGREQ and req == Pingreq()
    assert isinstance(resp, Pingresp) and resp.type == c.PINGRESP


@pytest.mark.parametrize("version", VERSIONS)
def test_disconnect_round_trip(version: int) -> None:
    v5 = version == c.MQTT5
    assert encode_disconnect(0, version) == b"\xe0\x00"
    for rc, props in [(0, None), (c.SESSION_TAKEN_OVER, None), (0x04, DISCONNECT_PROPS)]:
        p = decode_one(encode_disconnect(rc, version, props), version)
        assert isinstance(p, Disconnect) and p.type == c.DISCONNECT
        assert p.reason_code == (rc if v5 else 0)
        assert p.properties == ((props or {}) if v5 else {})
    assert encode_disconnect(0x8E, 5) == b"\xe0\x01\x8e"
    assert encode_disconnect(0x8E, 4) == b"\xe0\x00"


def test_auth_round_trip() -> None:
    assert encode_auth() == b"\xf0\x00"
    for rc, props in [(0, None), (c.CONTINUE_AUTHENTICATION, AUTH_PROPS), (0x19, None)]:
        for version in (0, 5):
            p = decode_one(encode_auth(rc, props), version)
            assert isinstance(p, Auth) and p.type == c.AUTH
            assert (p.reason_code, p.properties) == (rc, props or {})


def test_parser_takes_version_from_connect() -> None:
    """Packets after a v5 CONNECT in the same feed are read with properties."""
    parser = Parser()
    assert parser.version == 0
    data = (encode_connect("c", version=5)
            + encode_publish("t", b"x", version=5, properties={c.CONTENT_TYPE: "a"}))
    con, pub = parser.feed(data)
    assert parser.version == 5
    assert pub.properties == {c.CONTENT_TYPE: "a"}
    parser.version = 4
    assert parser.feed(encode_publish("t", b"x"))[0].properties == {}


def test_packet_objects_compare_and_repr() -> None:
    a = Publish("t", b"x" * 100, 1, packet_id=3)
    assert a == Publish("t", b"x" * 100, 1, packet_id=3)
    assert a != Publish("t", b"x" * 100, 1, packet_id=4)
    assert a != Ack(c.PUBACK, 3)
    assert "Publish(topic='t'" in repr(a) and "100 bytes" in repr(a)
    assert repr(Ack(c.PUBACK, 3)) == "Ack(type=4, packet_id=3, reason_code=0, properties={})"
    assert a.fields()["packet_id"] == 3
    with pytest.raises(AttributeError):
        a.topic = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------
# Exact bytes from the specifications


def test_spec_variable_byte_integers() -> None:
    """MQTT 5.0 §1.5.5 Table 1-1 (3.1.1 §2.2.3 Table 2.4)."""
    table = {0: "00", 127: "7f", 128: "8001", 16383: "ff7f", 16384: "808001",
             2097151: "ffff7f", 2097152: "80808001", 268435455: "ffffff7f"}
    for n, hexed in table.items():
        assert encode_varint(n).hex() == hexed
    with pytest.raises(EncodeError):
        encode_varint(268435456)


def test_spec_utf8_string_example() -> None:
    """§1.5.4 Figure 1-1: "A\\U0002A6D4" is 00 05 41 F0 AA 9B 94."""
    data = encode_publish("A\U0002A6D4", b"")
    assert data[2:9] == bytes.fromhex("000541F0AA9B94")
    assert decode_one(data).topic == "A\U0002A6D4"


def test_spec_connect_variable_header_311() -> None:
    """3.1.1 §3.1.2.10 Figure 3.6: protocol name, level 4, flags 0xCE, keep alive 10."""
    data = encode_connect("c", version=4, clean_start=True, keepalive=10, username="u",
                          password=b"p", will_topic="w", will_payload=b"m", will_qos=1)
    assert data[2:12] == bytes.fromhex("00044D515454" "04" "CE" "000A")


def test_spec_connect_variable_header_5() -> None:
    """5.0 §3.1.2.11 Figure 3-8: ... flags 0xCE, keep alive 10, Session Expiry Interval 10."""
    data = encode_connect("c", version=5, keepalive=10, username="u", password=b"p",
                          will_topic="w", will_payload=b"m", will_qos=1,
                          properties={c.SESSION_EXPIRY_INTERVAL: 10})
    assert data[2:18] == bytes.fromhex("00044D515454 05 CE 000A 05 110000000A".replace(" ", ""))


def test_spec_publish_variable_header() -> None:
    """3.1.1 §3.3.2.3 Figure 3.12: topic "a/b", packet identifier 10."""
    data = encode_publish("a/b", b"", 1, packet_id=10)
    assert data == b"\x32\x07" + bytes.fromhex("00 03 61 2F 62 00 0A".replace(" ", ""))


def test_exact_bytes_of_simple_packets() -> None:
    assert encode_connect("a") == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a"
    assert encode_connect("a", version=3) == b"\x10\x0f\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x01a"
    assert encode_connect("a", version=5, clean_start=False) == (
        b"\x10\x0e\x00\x04MQTT\x05\x00\x00\x3c\x00\x00\x01a")
    assert encode_connack(True, 0, 4) == b"\x20\x02\x01\x00"
    assert encode_connack(False, 0, 5) == b"\x20\x03\x00\x00\x00"
    assert encode_ack(c.PUBACK, 7) == b"\x40\x02\x00\x07"
    assert encode_ack(c.PUBREL, 7) == b"\x62\x02\x00\x07"       # [MQTT-3.6.1-1]
    assert encode_subscribe(1, [("a/b", 1)]) == b"\x82\x08\x00\x01\x00\x03a/b\x01"
    assert encode_subscribe(1, [("a/b", 1)], 5) == b"\x82\x09\x00\x01\x00\x00\x03a/b\x01"
    assert encode_suback(1, [1]) == b"\x90\x03\x00\x01\x01"
    assert encode_unsubscribe(1, ["a"]) == b"\xa2\x05\x00\x01\x00\x01a"
    assert encode_publish("a", b"hi", retain=True) == b"\x31\x05\x00\x01ahi"
    assert encode_publish("a", b"hi", version=5) == b"\x30\x06\x00\x01a\x00hi"


def test_remaining_length_over_127() -> None:
    payload = b"p" * 200
    data = encode_publish("t", payload)
    assert data[:3] == b"\x30" + encode_varint(203)
    assert packet_length(data) == len(data)
    assert packet_length(data[:2]) is None
    assert decode_one(data).payload == payload


# --------------------------------------------------------------------------
# Properties


def test_properties_round_trip_every_property() -> None:
    allprops = {**WILL_PROPS, **CONNECT_PROPS, **CONNACK_PROPS, **PUBLISH_PROPS}
    data = encode_properties(allprops)
    assert decode_properties(data) == allprops
    assert encode_properties(None) == b"\x00" and encode_properties({}) == b"\x00"
    assert decode_properties(b"\x00") == {}


def test_properties_encoding_by_kind() -> None:
    assert encode_properties({0x01: 1}) == b"\x02\x01\x01"
    assert encode_properties({0x21: 258}) == b"\x03\x21\x01\x02"
    assert encode_properties({0x02: 1}) == b"\x05\x02\x00\x00\x00\x01"
    assert encode_properties({0x0B: 128}) == b"\x03\x0b\x80\x01"
    assert encode_properties({0x03: "ab"}) == b"\x05\x03\x00\x02ab"
    assert encode_properties({0x09: b"\x00"}) == b"\x04\x09\x00\x01\x00"
    assert encode_properties({0x26: ("a", "b")}) == b"\x07\x26\x00\x01a\x00\x01b"
    assert encode_properties({0x26: [("a", "b"), ("a", "c")]}) == (
        b"\x0e\x26\x00\x01a\x00\x01b\x26\x00\x01a\x00\x01c")


def test_decode_properties_with_packet_table() -> None:
    data = encode_properties({c.TOPIC_ALIAS: 1})
    assert decode_properties(data, c.PUBLISH) == {c.TOPIC_ALIAS: 1}
    with pytest.raises(MQTTError) as exc:
        decode_properties(data, c.CONNECT)
    assert exc.value.reason_code == c.PROTOCOL_ERROR
    with pytest.raises(MQTTError) as exc:
        decode_properties(data + b"\x00")
    assert exc.value.reason_code == c.MALFORMED_PACKET


@pytest.mark.parametrize("props", [
    {0x7F: 1}, {0: 1}, {"x": 1}, {0x01: 256}, {0x01: -1}, {0x21: 65536}, {0x02: 1 << 32},
    {0x0B: 268435456}, {0x03: 5}, {0x03: "x" * 65536}, {0x09: 5}, {0x26: [("a",)]},
    {0x01: "1"},
])
def test_encode_properties_rejects_bad_values(props: dict) -> None:
    with pytest.raises(EncodeError):
        encode_properties(props)


# --------------------------------------------------------------------------
# Malformed input and its reason codes


def test_remaining_length_longer_than_4_bytes() -> None:
    assert reason_of(b"\x30\xff\xff\xff\xff\x01") == c.MALFORMED_PACKET
    # Raised as soon as the 4th length byte says "more", before any body arrives.
    assert reason_of(b"\x30\x80\x80\x80\x80") == c.MALFORMED_PACKET


@pytest.mark.parametrize("data, version", [
    (b"\x30\x01\x00", 4),                              # topic length cut
    (b"\x30\x03\x00\x05a", 4),                         # topic longer than the packet
    (b"\x32\x04\x00\x01a\x00", 4),                     # packet identifier cut
    (b"\x30\x04\x00\x01a\x05", 5),                     # property length past the end
    (b"\x30\x05\x00\x01a\x02\x02", 5),                 # four byte property cut
    (b"\x30\x05\x00\x01a\x02\x03", 5),                 # string property length cut
    (b"\x30\x06\x00\x01a\x01\x0b\x80", 5),             # varint property cut
    (b"\x30\x08\x00\x01a\x05\x0b\x80\x80\x80\x80", 5),  # varint property > 4 bytes
    (b"\x10\x02\x00\x04", 4),                          # protocol name cut
    (fixed(0x10, s16(b"MQTT") + b"\x04\x02\x00"), 4),  # keep alive cut
    (fixed(0x10, s16(b"MQTT") + b"\x04\x02\x00\x3c"), 4),   # client id missing
    (fixed(0x10, s16(b"MQTT") + b"\x04\x06\x00\x3c" + s16(b"c") + s16(b"w")), 4),  # will msg
    (fixed(0x10, s16(b"MQTT") + b"\x04\x82\x00\x3c" + s16(b"c")), 4),   # user name missing
    (fixed(0x10, s16(b"MQTT") + b"\x04\xc2\x00\x3c" + s16(b"c") + s16(b"u")), 4),  # password
    (b"\x20\x01\x00", 4),                              # CONNACK cut
    (b"\x40\x01\x00", 4),                              # PUBACK cut
    (b"\x82\x05\x00\x01\x00\x01a", 4),                 # subscription options missing
    (b"\x82\x01\x00", 4),                              # packet identifier cut
    (b"\xa2\x04\x00\x01\x00\x05", 4),                  # unsubscribe filter cut
    (b"\x90\x01\x00", 4),                              # SUBACK cut
])
def test_truncated_field_in_complete_packet(data: bytes, version: int) -> None:
    assert reason_of(data, version) == c.MALFORMED_PACKET


@pytest.mark.parametrize("raw", [
    b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x00b", b"\xe2\x82",
])
def test_invalid_utf8_is_malformed(raw: bytes) -> None:
    """Ill-formed UTF-8, surrogates, > U+10FFFF and U+0000 [MQTT-1.5.4-1, -2]."""
    assert reason_of(fixed(0x30, s16(raw) + b"x"), 4) == c.MALFORMED_PACKET
    assert reason_of(fixed(0x82, b"\x00\x01" + s16(raw) + b"\x00"), 4) == c.MALFORMED_PACKET
    assert reason_of(fixed(0xA2, b"\x00\x01" + s16(raw)), 4) == c.MALFORMED_PACKET
    connect = fixed(0x10, s16(b"MQTT") + b"\x04\x02\x00\x3c" + s16(raw))
    assert reason_of(connect) == c.MALFORMED_PACKET
    prop = props_block(b"\x26" + s16(b"k") + s16(raw))
    assert reason_of(fixed(0x30, s16(b"t") + prop), 5) == c.MALFORMED_PACKET
    assert reason_of(fixed(0xE0, b"\x00" + props_block(b"\x1f" + s16(raw))), 5) == (
        c.MALFORMED_PACKET)


# Each type with its reserved flags: the right value decodes, others are malformed.
GOOD_BODIES = {
    c.CONNACK: b"\x00\x00", c.PUBACK: b"\x00\x01", c.PUBREC: b"\x00\x01",
    c.PUBREL: b"\x00\x01", c.PUBCOMP: b"\x00\x01", c.SUBSCRIBE: b"\x00\x01\x00\x01a\x00",
    c.SUBACK: b"\x00\x01\x00", c.UNSUBSCRIBE: b"\x00\x01\x00\x01a", c.UNSUBACK: b"\x00\x01",
    c.PINGREQ: b"", c.PINGRESP: b"", c.DISCONNECT: b"",
    c.CONNECT: s16(b"MQTT") + b"\x04\x02\x00\x3c" + s16(b"c"),
}


@pytest.mark.parametrize("ptype", sorted(GOOD_BODIES))
def test_reserved_fixed_header_flags(ptype: int) -> None:
    """[MQTT-2.1.3-1]: 0010 for PUBREL, SUBSCRIBE, UNSUBSCRIBE, 0000 for the rest."""
    right = 2 if ptype in (c.PUBREL, c.SUBSCRIBE, c.UNSUBSCRIBE) else 0
    body = GOOD_BODIES[ptype]
    assert decode_one(fixed(ptype << 4 | right, body), 4).type == ptype
    for flags in range(16):
        if flags != right:
            assert reason_of(fixed(ptype << 4 | flags, body), 4) == c.MALFORMED_PACKET


def test_auth_flags_and_versions() -> None:
    assert reason_of(b"\xf1\x00", 5) == c.MALFORMED_PACKET
    assert reason_of(b"\xf0\x00", 4) == c.MALFORMED_PACKET   # reserved type before v5
    assert reason_of(b"\xf0\x00", 3) == c.MALFORMED_PACKET


def test_packet_type_0() -> None:
    assert reason_of(b"\x00\x00") == c.MALFORMED_PACKET
    assert reason_of(b"\x00") == c.MALFORMED_PACKET


def test_publish_flag_errors() -> None:
    body = s16(b"t") + b"\x00\x01x"
    assert reason_of(fixed(0x36, body)) == c.MALFORMED_PACKET         # QoS 3 [MQTT-3.3.1-4]
    assert reason_of(fixed(0x3E, body)) == c.MALFORMED_PACKET
    assert reason_of(fixed(0x38, s16(b"t") + b"x")) == c.PROTOCOL_ERROR  # DUP on QoS 0
    assert reason_of(fixed(0x39, s16(b"t") + b"x")) == c.PROTOCOL_ERROR
    assert decode_one(fixed(0x3D, body)).dup is True                  # DUP QoS 2 retain


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [1, 2])
def test_publish_packet_id_0(version: int, qos: int) -> None:
    data = encode_publish("t", b"x", qos, packet_id=0, version=version)
    assert reason_of(data, version) == c.PROTOCOL_ERROR


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("topic", ["+", "a/#", "a/+/b", "#"])
def test_publish_wildcard_topic(version: int, topic: str) -> None:
    """[MQTT-3.3.2-2]: no wildcards in a topic name."""
    assert reason_of(encode_publish(topic, b"x", version=version), version) == (
        c.TOPIC_NAME_INVALID)
    # Also after the same-topic cache holds a valid topic.
    parser = Parser(version=version)
    parser.feed(encode_publish("a/b", b"x", version=version))
    with pytest.raises(MQTTError) as exc:
        parser.feed(encode_publish(topic, b"x", version=version))
    assert exc.value.reason_code == c.TOPIC_NAME_INVALID


@pytest.mark.parametrize("version", [0, c.MQTT31, c.MQTT311])
def test_publish_empty_topic_before_v5(version: int) -> None:
    assert reason_of(encode_publish("", b"x", version=version), version) == c.PROTOCOL_ERROR


@pytest.mark.parametrize("version", VERSIONS)
def test_subscribe_unsubscribe_without_filters(version: int) -> None:
    """[MQTT-3.8.3-3], [MQTT-3.10.3-2]."""
    assert reason_of(encode_subscribe(1, [], version), version) == c.PROTOCOL_ERROR
    assert reason_of(encode_unsubscribe(1, [], version), version) == c.PROTOCOL_ERROR


@pytest.mark.parametrize("version", VERSIONS)
def test_subscribe_unsubscribe_packet_id_0(version: int) -> None:
    """[MQTT-2.2.1-3]: SUBSCRIBE and UNSUBSCRIBE carry a non-zero packet identifier."""
    assert reason_of(encode_subscribe(0, [("a", 0)], version), version) == c.PROTOCOL_ERROR
    assert reason_of(encode_unsubscribe(0, ["a"], version), version) == c.PROTOCOL_ERROR


@pytest.mark.parametrize("options, version", [
    (0x40, 5), (0x80, 5), (0x30, 5), (0x03, 5), (0x03, 4), (0x04, 4), (0x08, 4), (0x80, 3),
    (0x10, 3),
])
def test_subscribe_reserved_option_bits(options: int, version: int) -> None:
    """[MQTT-3.8.3-5] (v5 bits 6-7, retain handling 3), 3.1.1 bits 2-7, QoS 3."""
    data = encode_subscribe(1, [("a", 0), ("b", options)], version)
    assert reason_of(data, version) == c.MALFORMED_PACKET


def connect_body(name: bytes = b"MQTT", level: int = 4, flags: int = 2, tail: bytes = b"") -> bytes:
    props = b"\x00" if level == 5 else b""
    return fixed(0x10, s16(name) + bytes([level, flags]) + b"\x00\x3c" + props + s16(b"c") + tail)


@pytest.mark.parametrize("name, level", [
    (b"MQTT", 3), (b"MQTT", 6), (b"MQTT", 0), (b"MQIsdp", 4), (b"MQIsdp", 5), (b"MQTX", 4),
    (b"mqtt", 4), (b"", 4), (b"MQTT\x00", 4),
])
def test_connect_unsupported_protocol(name: bytes, level: int) -> None:
    """[MQTT-3.1.2-1], [MQTT-3.1.2-2]: 0x84, so the broker answers CONNACK 0x01."""
    assert reason_of(connect_body(name, level)) == c.UNSUPPORTED_PROTOCOL_VERSION


@pytest.mark.parametrize("flags, level", [
    (0x03, 4),        # reserved bit [MQTT-3.1.2-3]
    (0x03, 5),
    (0x0A, 4),        # will QoS without will flag [MQTT-3.1.2-13]
    (0x12, 5),
    (0x22, 4),        # will retain without will flag [MQTT-3.1.2-15]
    (0x1E, 4),        # will QoS 3 [MQTT-3.1.2-14]
    (0x42, 4),        # password without user name (3.1.1 [MQTT-3.1.2-22])
    (0x42, 3),
])
def test_connect_flag_errors(flags: int, level: int) -> None:
    name = b"MQIsdp" if level == 3 else b"MQTT"
    assert reason_of(connect_body(name, level, flags, s16(b"w") * 3)) == c.MALFORMED_PACKET


def pub5(props: bytes) -> bytes:
    return fixed(0x30, s16(b"t") + props_block(props) + b"x")


@pytest.mark.parametrize("props", [b"\x7f\x00", b"\x00\x00", b"\x04\x00", b"\x80\x01\x00"])
def test_unknown_property(props: bytes) -> None:
    assert reason_of(pub5(props), 5) == c.MALFORMED_PACKET


@pytest.mark.parametrize("data", [
    pub5(b"\x12" + s16(b"id")),                                      # CONNACK only
    pub5(b"\x18\x00\x00\x00\x01"),                                   # Will only
    fixed(0x10, s16(b"MQTT") + b"\x05\x02\x00\x3c" + props_block(b"\x23\x00\x01") + s16(b"c")),
    fixed(0x10, s16(b"MQTT") + b"\x05\x02\x00\x3c" + props_block(b"\x18\x00\x00\x00\x01")
          + s16(b"c")),
    fixed(0x10, s16(b"MQTT") + b"\x05\x06\x00\x3c\x00" + s16(b"c")
          + props_block(b"\x11\x00\x00\x00\x01") + s16(b"w") + s16(b"m")),  # will props
    fixed(0x40, b"\x00\x01\x00" + props_block(b"\x01\x01")),          # PUBACK
    fixed(0x82, b"\x00\x01" + props_block(b"\x1f" + s16(b"r")) + s16(b"a") + b"\x00"),
    fixed(0xA2, b"\x00\x01" + props_block(b"\x0b\x01") + s16(b"a")),  # UNSUBSCRIBE
    fixed(0xE0, b"\x00" + props_block(b"\x15" + s16(b"m"))),          # DISCONNECT
    fixed(0xF0, b"\x18" + props_block(b"\x11\x00\x00\x00\x01")),      # AUTH
    fixed(0x20, b"\x00\x00" + props_block(b"\x17\x01")),              # CONNACK
])
def test_property_not_allowed_in_packet(data: bytes) -> None:
    assert reason_of(data, 5) == c.PROTOCOL_ERROR


@pytest.mark.parametrize("data", [
    pub5(b"\x01\x00\x01\x01"),
    pub5(b"\x23\x00\x01\x23\x00\x02"),
    pub5(b"\x09\x00\x00\x09\x00\x00"),
    fixed(0x82, b"\x00\x01" + props_block(b"\x0b\x01\x0b\x02") + s16(b"a") + b"\x00"),
    fixed(0x20, b"\x00\x00" + props_block(b"\x21\x00\x01\x21\x00\x01")),
])
def test_property_given_twice(data: bytes) -> None:
    assert reason_of(data, 5) == c.PROTOCOL_ERROR


def test_repeatable_properties() -> None:
    """User properties may repeat anywhere; subscription ids repeat in PUBLISH (§3.3.2.3.8)."""
    p = decode_one(pub5(b"\x0b\x01\x0b\x02" + b"\x26" + s16(b"a") + s16(b"1")
                        + b"\x26" + s16(b"a") + s16(b"2")), 5)
    assert p.properties == {c.SUBSCRIPTION_IDENTIFIER: [1, 2],
                            c.USER_PROPERTY: [("a", "1"), ("a", "2")]}


def test_property_length_overrun() -> None:
    assert reason_of(fixed(0x30, s16(b"t") + b"\x09\x01\x01"), 5) == c.MALFORMED_PACKET
    assert reason_of(fixed(0x40, b"\x00\x01\x00\x05\x1f"), 5) == c.MALFORMED_PACKET
    # A property whose value crosses the end of the property block.
    assert reason_of(pub5(b"\x23\x00"), 5) == c.MALFORMED_PACKET
    data = fixed(0x30, s16(b"t") + b"\x02\x03\x00\x05abcde")
    assert reason_of(data, 5) == c.MALFORMED_PACKET


def test_subscription_identifier_0() -> None:
    assert reason_of(pub5(b"\x0b\x00"), 5) == c.PROTOCOL_ERROR
    sub = fixed(0x82, b"\x00\x01" + props_block(b"\x0b\x00") + s16(b"a") + b"\x00")
    assert reason_of(sub, 5) == c.PROTOCOL_ERROR


@pytest.mark.parametrize("data, version", [
    (b"\xc0\x01\x00", 4), (b"\xd0\x01\x00", 5), (b"\xe0\x01\x00", 4), (b"\xe0\x01\x00", 0),
    (b"\x40\x03\x00\x01\x00", 4), (b"\x62\x03\x00\x01\x00", 3), (b"\xb0\x03\x00\x01\x00", 4),
    (b"\x20\x03\x00\x00\x00", 4), (b"\x40\x05\x00\x01\x00\x00\x00", 5),
    (b"\xe0\x03\x00\x00\x00", 5), (b"\x20\x04\x00\x00\x00\x00", 5),
    (connect_body(tail=b"\x00"), 4),
])
def test_extra_bytes_at_end(data: bytes, version: int) -> None:
    assert reason_of(data, version) == c.MALFORMED_PACKET


# --------------------------------------------------------------------------
# Errors in a stream, and the maximum packet size


def test_error_carries_packets_completed_in_the_same_feed() -> None:
    good = [encode_publish("a", b"1"), encode_ack(c.PUBACK, 1), encode_pingreq()]
    parser = Parser(version=4)
    earlier = parser.feed(encode_publish("e", b"0"))
    assert len(earlier) == 1
    with pytest.raises(MQTTError) as exc:
        parser.feed(b"".join(good) + b"\xc0\x01\x00" + encode_pingreq())
    assert exc.value.reason_code == c.MALFORMED_PACKET
    assert [type(p) for p in exc.value.packets] == [Publish, Ack, Pingreq]
    assert exc.value.packets[0].payload == b"1"


def test_error_packets_includes_those_completed_from_buffered_bytes() -> None:
    parser = Parser()
    pub = encode_publish("a", b"1")
    assert parser.feed(pub[:3]) == []
    with pytest.raises(MQTTError) as exc:
        parser.feed(pub[3:] + b"\x00\x00")
    assert [p.topic for p in exc.value.packets] == ["a"]


def test_max_packet_size() -> None:
    data = encode_publish("t", b"x" * 100)
    assert len(Parser(len(data)).feed(data)) == 1
    assert reason_of(data, 4, len(data) - 1) == c.PACKET_TOO_LARGE


def test_max_packet_size_raised_from_the_fixed_header_alone() -> None:
    parser = Parser(max_packet_size=1000)
    ok = encode_pingreq()
    with pytest.raises(MQTTError) as exc:
        parser.feed(ok + b"\x30" + encode_varint(5000))
    assert exc.value.reason_code == c.PACKET_TOO_LARGE
    assert exc.value.packets == [Pingreq()]


def test_max_packet_size_is_writable() -> None:
    parser = Parser()
    data = encode_publish("t", b"x" * 50)
    parser.feed(data)
    parser.max_packet_size = 10
    assert parser.max_packet_size == 10
    with pytest.raises(MQTTError) as exc:
        parser.feed(data)
    assert exc.value.reason_code == c.PACKET_TOO_LARGE


def test_default_max_packet_size() -> None:
    assert Parser().max_packet_size == 268435455
    assert Parser(100, 5).version == 5


# --------------------------------------------------------------------------
# Patching encoded PUBLISH packets


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [1, 2])
def test_set_packet_id(version: int, qos: int) -> None:
    props = {c.USER_PROPERTY: USER} if version == 5 else None
    for payload in (b"", b"x" * 300):
        data = encode_publish("a/b", payload, qos, packet_id=1, version=version, properties=props)
        patched = set_packet_id(data, 0xBEEF)
        assert patched == encode_publish("a/b", payload, qos, packet_id=0xBEEF, version=version,
                                         properties=props)
        p = decode_one(patched, version)
        assert (p.packet_id, p.payload) == (0xBEEF, payload)
        assert decode_one(data, version).packet_id == 1   # the original is untouched


def test_set_packet_id_errors() -> None:
    with pytest.raises(EncodeError):
        set_packet_id(encode_publish("a", b"x"), 5)                 # QoS 0
    with pytest.raises(EncodeError):
        set_packet_id(encode_ack(c.PUBACK, 1), 5)                   # not a PUBLISH
    with pytest.raises(EncodeError):
        set_packet_id(b"\x32\x03\x00\x01a", 5)                      # truncated
    with pytest.raises(EncodeError):
        set_packet_id(encode_publish("a", b"x", 1, packet_id=1), 70000)
    assert issubclass(EncodeError, MQTTError) and issubclass(EncodeError, ValueError)


def test_set_dup_and_retain() -> None:
    data = encode_publish("a/b", b"x" * 200, 1, packet_id=9, version=5,
                          properties={c.CONTENT_TYPE: "t"})
    dup = set_dup(data, True)
    assert dup == encode_publish("a/b", b"x" * 200, 1, dup=True, packet_id=9, version=5,
                                 properties={c.CONTENT_TYPE: "t"})
    assert decode_one(dup, 5).dup is True
    assert set_dup(dup, False) == data
    ret = set_retain(dup, True)
    p = decode_one(ret, 5)
    assert (p.retain, p.dup, p.packet_id) == (True, True, 9)
    assert set_retain(ret, False) == dup
    assert set_retain(data, False) == data
    with pytest.raises(EncodeError):
        set_dup(encode_pingreq(), True)


# --------------------------------------------------------------------------
# Encoder argument checks


def test_encoder_errors() -> None:
    with pytest.raises(EncodeError):
        encode_publish("t" * 65536, b"")
    with pytest.raises(EncodeError):
        encode_publish("t", b"", qos=3)
    with pytest.raises(EncodeError):
        encode_publish("t", b"", qos=1, packet_id=65536)
    with pytest.raises(EncodeError):
        encode_publish(5, b"")  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode_publish("\ud800", b"")
    with pytest.raises(EncodeError):
        encode_ack(c.PUBLISH, 1)
    with pytest.raises(EncodeError):
        encode_ack(c.PUBACK, 1, 256)
    with pytest.raises(EncodeError):
        encode_connect("c", version=6)
    with pytest.raises(EncodeError):
        encode_connect("c", will_topic="w", will_qos=3)
    with pytest.raises(EncodeError):
        encode_subscribe(1, [("a", 256)])
    with pytest.raises(EncodeError):
        encode_subscribe(70000, [("a", 0)])


def test_encoders_accept_bytes_like_payloads() -> None:
    p = decode_one(encode_publish("t", bytearray(b"ab")))
    assert p.payload == b"ab"
    assert decode_one(encode_publish("t", memoryview(b"cd"))).payload == b"cd"
    assert decode_one(encode_connect("c", username="u", password="pw")).password == b"pw"


def test_parser_accepts_bytearray_and_memoryview() -> None:
    data = encode_publish("t", b"x") * 2
    assert len(Parser().feed(bytearray(data))) == 2
    assert len(Parser().feed(memoryview(data))) == 2


# --------------------------------------------------------------------------
# Incremental feeding


def stream_v5() -> tuple[bytes, int]:
    """A long v5 stream with every packet type, starting with CONNECT."""
    parts = [encode_connect("c", version=5, username="u", password=b"p", will_topic="w",
                            will_payload=b"bye", will_properties=WILL_PROPS,
                            properties=CONNECT_PROPS),
             encode_connack(True, 0, 5, CONNACK_PROPS)]
    rng = random.Random(7)
    for i in range(300):
        qos = i % 3
        parts.append(encode_publish(f"t/{i % 7}", bytes(rng.randrange(256) for _ in range(i)),
                                    qos, i % 2 == 0, False, i + 1 if qos else 0, 5,
                                    PUBLISH_PROPS if i % 5 == 0 else None))
        if qos:
            parts.append(encode_ack(ACK_TYPES[i % 4], i + 1, (0, 0x10, 0x80)[i % 3], 5,
                                    ACK_PROPS if i % 4 == 0 else None))
        if i % 25 == 0:
            parts += [encode_subscribe(i + 1, [("a/#", 1), ("b", 0x2A)], 5, SUBSCRIBE_PROPS),
                      encode_suback(i + 1, [1, 0x80], 5, ACK_PROPS),
                      encode_unsubscribe(i + 1, ["a/#"], 5), encode_unsuback(i + 1, [0], 5),
                      encode_pingreq(), encode_pingresp(), encode_auth(0x18, AUTH_PROPS)]
    parts.append(encode_publish("big", b"B" * 70000, 1, packet_id=1, version=5))
    parts.append(encode_disconnect(0x04, 5, DISCONNECT_PROPS))
    return b"".join(parts), len(parts)


def stream_v3(version: int) -> tuple[bytes, int]:
    parts = [encode_connect("c", version=version, will_topic="w")]
    for i in range(200):
        qos = i % 3
        parts.append(encode_publish(f"t/{i % 5}", b"p" * i, qos, packet_id=i + 1 if qos else 0,
                                    version=version))
        parts.append(encode_ack(ACK_TYPES[i % 4], i + 1, version=version))
    parts += [encode_subscribe(1, [("a", 1)], version), encode_unsubscribe(2, ["a"], version),
              encode_suback(1, [0]), encode_unsuback(2), encode_pingreq(), encode_disconnect()]
    return b"".join(parts), len(parts)


def feed_in_pieces(data: bytes, cuts: list[int]) -> list:
    parser = Parser()
    out: list = []
    prev = 0
    for cut in cuts + [len(data)]:
        out += parser.feed(data[prev:cut])
        prev = cut
    assert parser.pending == 0
    return out


@pytest.mark.parametrize("make", [stream_v5, lambda: stream_v3(3), lambda: stream_v3(4)],
                         ids=["v5", "v3.1", "v3.1.1"])
def test_stream_split_anywhere(make) -> None:
    data, count = make()
    whole = Parser().feed(data)
    assert len(whole) == count
    for seed in range(5):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), rng.choice([3, 50, 2000])))
        assert feed_in_pieces(data, cuts) == whole


def test_every_packet_fed_byte_by_byte() -> None:
    data, _ = stream_v5()
    parser = Parser()
    expected = Parser().feed(data)
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    assert out == expected
    assert [p.raw for p in out if isinstance(p, Publish)] == [
        p.raw for p in expected if isinstance(p, Publish)]


def test_large_packet_in_small_feeds_is_linear() -> None:
    """A 1 MB PUBLISH in 1-byte and 100-byte feeds: joined once, not re-copied each feed."""
    data = encode_publish("big", b"\xab" * (1 << 20), 1, packet_id=3)
    parser = Parser()
    out = []
    for i in range(0, len(data), 100):
        out += parser.feed(data[i:i + 100])
        if not out:
            assert parser.pending == min(i + 100, len(data))
    assert len(out) == 1 and out[0].payload == b"\xab" * (1 << 20)
    half = data[: 1 << 18]
    parser = Parser()
    feed = parser.feed
    for i in range(len(half)):
        feed(half[i:i + 1])
    assert parser.pending == len(half)
    assert parser.feed(data[len(half):])[0].raw == data


def test_empty_feed() -> None:
    parser = Parser()
    assert parser.feed(b"") == []
    assert parser.feed(b"\xc0") == []
    assert parser.feed(b"") == []
    assert parser.feed(b"\x00") == [Pingreq()]


# --------------------------------------------------------------------------
# A server's parser before CONNECT (max_connect_size), issue 11


def test_before_connect_the_first_byte_must_be_connect() -> None:
    """[MQTT-3.1.0-1]: refused on the first byte, before any length or body."""
    for first in (0x30, 0x82, 0xC0, 0xE0, 0x20):
        with pytest.raises(MQTTError) as exc:
            Parser(268435455, 0, 65536).feed(bytes([first]))
        assert exc.value.reason_code == c.PROTOCOL_ERROR
    # A parser without max_connect_size (a client's) reads any packet first.
    assert Parser().feed(encode_pingresp()) == [Pingresp()]


def test_connect_size_is_checked_from_the_fixed_header_alone() -> None:
    parser = Parser(268435455, 0, 100)
    with pytest.raises(MQTTError) as exc:
        parser.feed(b"\x10" + varint(101))
    assert exc.value.reason_code == c.PACKET_TOO_LARGE
    connect = encode_connect("c", 4)
    assert len(connect) < 100
    assert isinstance(Parser(268435455, 0, len(connect)).feed(connect)[0], Connect)
    with pytest.raises(MQTTError):
        Parser(268435455, 0, len(connect) - 1).feed(connect)


def test_after_connect_the_packet_limit_is_max_packet_size_again() -> None:
    """Only the CONNECT has the small limit; the packets after it, in the same feed or
    byte by byte, have max_packet_size."""
    big = encode_publish("t", b"x" * 5000, version=4)
    stream = encode_connect("c", 4) + big + encode_pingreq()
    got = Parser(268435455, 0, 1000).feed(stream)
    assert [type(p) for p in got] == [Connect, Publish, Pingreq]
    parser = Parser(268435455, 0, 1000)
    out = []
    for i in range(len(stream)):
        out += parser.feed(stream[i:i + 1])
    assert [type(p) for p in out] == [Connect, Publish, Pingreq]


@pytest.mark.parametrize("pid", [c.REQUEST_PROBLEM_INFORMATION, c.REQUEST_RESPONSE_INFORMATION])
def test_request_information_other_than_0_or_1(pid: int) -> None:
    """5.0 §3.1.2.11.6-7: a value other than 0 or 1 is a Protocol Error."""
    for value in (0, 1):
        assert decode_one(encode_connect("c", 5, properties={pid: value})).properties == {
            pid: value}
    with pytest.raises(MQTTError) as exc:
        Parser().feed(encode_connect("c", 5, properties={pid: 2}))
    assert exc.value.reason_code == c.PROTOCOL_ERROR


@pytest.mark.parametrize("topic", ["a/+", "#", "a/#/b", ""])
def test_response_topic_is_a_topic_name(topic: str) -> None:
    """[MQTT-3.3.2-14]: no wildcards in a Response Topic, in a PUBLISH or a will."""
    with pytest.raises(MQTTError) as exc:
        Parser(version=5).feed(encode_publish("t", b"", version=5,
                                              properties={c.RESPONSE_TOPIC: topic}))
    assert exc.value.reason_code == c.PROTOCOL_ERROR
    with pytest.raises(MQTTError) as exc:
        Parser().feed(encode_connect("c", 5, will_topic="w",
                                     will_properties={c.RESPONSE_TOPIC: topic}))
    assert exc.value.reason_code == c.PROTOCOL_ERROR
