"""Shared helpers for the end-to-end MQTT suite: a raw-socket client, packet
builders and parsers written out by hand, and a thin paho-mqtt wrapper.

Nothing here imports bwfast: the suite checks the broker's bytes against an
independent reading of the MQTT 3.1.1 and 5.0 specifications.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

# ---------------------------------------------------------------- constants

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

PACKET_NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
    15: "AUTH",
}

V31, V311, V5 = 3, 4, 5

# v5 property identifiers (MQTT 5.0 section 2.2.2.2)
PAYLOAD_FORMAT = 0x01
MESSAGE_EXPIRY = 0x02
CONTENT_TYPE = 0x03
RESPONSE_TOPIC = 0x08
CORRELATION_DATA = 0x09
SUBSCRIPTION_ID = 0x0B
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
AUTH_METHOD = 0x15
AUTH_DATA = 0x16
REQUEST_PROBLEM_INFO = 0x17
WILL_DELAY = 0x18
REQUEST_RESPONSE_INFO = 0x19
RESPONSE_INFO = 0x1A
SERVER_REFERENCE = 0x1C
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS_MAXIMUM = 0x22
TOPIC_ALIAS = 0x23
MAXIMUM_QOS = 0x24
RETAIN_AVAILABLE = 0x25
USER_PROPERTY = 0x26
MAXIMUM_PACKET_SIZE = 0x27
WILDCARD_SUB_AVAILABLE = 0x28
SUB_ID_AVAILABLE = 0x29
SHARED_SUB_AVAILABLE = 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_TYPES: dict[int, int] = {
    PAYLOAD_FORMAT: _BYTE,
    MESSAGE_EXPIRY: _U32,
    CONTENT_TYPE: _STR,
    RESPONSE_TOPIC: _STR,
    CORRELATION_DATA: _BIN,
    SUBSCRIPTION_ID: _VARINT,
    SESSION_EXPIRY: _U32,
    ASSIGNED_CLIENT_ID: _STR,
    SERVER_KEEP_ALIVE: _U16,
    AUTH_METHOD: _STR,
    AUTH_DATA: _BIN,
    REQUEST_PROBLEM_INFO: _BYTE,
    WILL_DELAY: _U32,
    REQUEST_RESPONSE_INFO: _BYTE,
    RESPONSE_INFO: _STR,
    SERVER_REFERENCE: _STR,
    REASON_STRING: _STR,
    RECEIVE_MAXIMUM: _U16,
    TOPIC_ALIAS_MAXIMUM: _U16,
    TOPIC_ALIAS: _U16,
    MAXIMUM_QOS: _BYTE,
    RETAIN_AVAILABLE: _BYTE,
    USER_PROPERTY: _PAIR,
    MAXIMUM_PACKET_SIZE: _U32,
    WILDCARD_SUB_AVAILABLE: _BYTE,
    SUB_ID_AVAILABLE: _BYTE,
    SHARED_SUB_AVAILABLE: _BYTE,
}
# Properties that may legitimately appear more than once in one packet.
REPEATABLE = {USER_PROPERTY, SUBSCRIPTION_ID}

# v5 reason codes used by the suite
RC_SUCCESS = 0x00
RC_DISCONNECT_WITH_WILL = 0x04
RC_NO_SUBSCRIPTION_EXISTED = 0x11
RC_UNSPECIFIED = 0x80
RC_MALFORMED = 0x81
RC_PROTOCOL_ERROR = 0x82
RC_UNSUPPORTED_PROTOCOL = 0x84
RC_CLIENT_ID_NOT_VALID = 0x85
RC_KEEP_ALIVE_TIMEOUT = 0x8D
RC_SESSION_TAKEN_OVER = 0x8E
RC_TOPIC_FILTER_INVALID = 0x8F
RC_TOPIC_NAME_INVALID = 0x90
RC_RECEIVE_MAX_EXCEEDED = 0x93
RC_TOPIC_ALIAS_INVALID = 0x94
RC_PACKET_TOO_LARGE = 0x95

DEFAULT_TIMEOUT = 5.0

# ---------------------------------------------------------------- encoding


def varint(n: int) -> bytes:
    """Variable Byte Integer (MQTT 5.0 1.5.5 / 3.1.1 2.2.3)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return struct.pack("!H", n)


def u32(n: int) -> bytes:
    return struct.pack("!I", n)


def mqtt_str(s: str | bytes) -> bytes:
    """UTF-8 string with a two-byte length; bytes are sent as given (for bad UTF-8)."""
    raw = s.encode() if isinstance(s, str) else s
    return u16(len(raw)) + raw


def mqtt_bin(b: bytes) -> bytes:
    return u16(len(b)) + b


PropsIn = Iterable[tuple[int, Any]] | dict[int, Any] | None


def encode_properties(props: PropsIn) -> bytes:
    """Property Length + properties; a dict value that is a list repeats the id."""
    items: list[tuple[int, Any]] = []
    if isinstance(props, dict):
        for pid, value in props.items():
            if pid in REPEATABLE and isinstance(value, list):
                items.extend((pid, v) for v in value)
            else:
                items.append((pid, value))
    elif props:
        items = list(props)
    body = bytearray()
    for pid, value in items:
        body += varint(pid)
        kind = PROPERTY_TYPES[pid]
        if kind == _BYTE:
            body.append(value)
        elif kind == _U16:
            body += u16(value)
        elif kind == _U32:
            body += u32(value)
        elif kind == _VARINT:
            body += varint(value)
        elif kind == _STR:
            body += mqtt_str(value)
        elif kind == _BIN:
            body += mqtt_bin(value)
        else:
            body += mqtt_str(value[0]) + mqtt_str(value[1])
    return varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header (type, flags, Remaining Length) + body."""
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def connect(
    client_id: str | bytes = "",
    *,
    version: int = V311,
    clean: bool = True,
    keepalive: int = 60,
    will_topic: str | bytes | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    will_props: PropsIn = None,
    username: str | None = None,
    password: bytes | None = None,
    props: PropsIn = None,
    protocol_name: bytes | None = None,
    reserved_flag: bool = False,
) -> bytes:
    """CONNECT (3.1.1 section 3.1 / 5.0 section 3.1); version 3 uses "MQIsdp"."""
    if protocol_name is None:
        protocol_name = b"MQIsdp" if version == V31 else b"MQTT"
    flags = (0x02 if clean else 0) | (0x01 if reserved_flag else 0)
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = mqtt_str(protocol_name) + bytes([version, flags]) + u16(keepalive)
    if version == V5:
        body += encode_properties(props)
    body += mqtt_str(client_id)
    if will_topic is not None:
        if version == V5:
            body += encode_properties(will_props)
        body += mqtt_str(will_topic) + mqtt_bin(will_payload)
    if username is not None:
        body += mqtt_str(username)
    if password is not None:
        body += mqtt_bin(password)
    return packet(CONNECT, 0, body)


def publish(
    topic: str | bytes,
    payload: bytes = b"",
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
    version: int = V311,
    props: PropsIn = None,
) -> bytes:
    """PUBLISH; a packet id is written only for QoS > 0 unless pid is forced."""
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = mqtt_str(topic)
    if qos or pid is not None:
        body += u16(pid if pid is not None else 1)
    if version == V5:
        body += encode_properties(props)
    return packet(PUBLISH, flags, body + payload)


def _ack(ptype: int, flags: int, pid: int, version: int, rc: int | None, props: PropsIn) -> bytes:
    body = u16(pid)
    if version == V5 and (rc is not None or props):
        body += bytes([rc or 0])
        if props:
            body += encode_properties(props)
    return packet(ptype, flags, body)


def puback(pid: int, *, version: int = V311, rc: int | None = None, props: PropsIn = None) -> bytes:
    return _ack(PUBACK, 0, pid, version, rc, props)


def pubrec(pid: int, *, version: int = V311, rc: int | None = None, props: PropsIn = None) -> bytes:
    return _ack(PUBREC, 0, pid, version, rc, props)


def pubrel(pid: int, *, version: int = V311, rc: int | None = None, props: PropsIn = None) -> bytes:
    """PUBREL carries fixed-header flags 0010 [MQTT-3.6.1-1]."""
    return _ack(PUBREL, 0x02, pid, version, rc, props)


def pubcomp(
    pid: int, *, version: int = V311, rc: int | None = None, props: PropsIn = None
) -> bytes:
    return _ack(PUBCOMP, 0, pid, version, rc, props)


def sub_options(qos: int, *, no_local: bool = False, rap: bool = False, rh: int = 0) -> int:
    """v5 Subscription Options byte (5.0 section 3.8.3.1)."""
    return qos | (0x04 if no_local else 0) | (0x08 if rap else 0) | (rh << 4)


def subscribe(
    pid: int,
    filters: Sequence[tuple[str | bytes, int]] | Sequence[tuple[str, int]],
    *,
    version: int = V311,
    props: PropsIn = None,
    flags: int = 0x02,
) -> bytes:
    """SUBSCRIBE; its fixed-header flags must be 0010 [MQTT-3.8.1-1]."""
    body = u16(pid)
    if version == V5:
        body += encode_properties(props)
    for topic_filter, options in filters:
        body += mqtt_str(topic_filter) + bytes([options])
    return packet(SUBSCRIBE, flags, body)


def unsubscribe(
    pid: int, filters: list[str], *, version: int = V311, props: PropsIn = None
) -> bytes:
    body = u16(pid)
    if version == V5:
        body += encode_properties(props)
    for topic_filter in filters:
        body += mqtt_str(topic_filter)
    return packet(UNSUBSCRIBE, 0x02, body)


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect(*, version: int = V311, rc: int | None = None, props: PropsIn = None) -> bytes:
    body = b""
    if version == V5 and (rc is not None or props):
        body = bytes([rc or 0]) + (encode_properties(props) if props else b"")
    return packet(DISCONNECT, 0, body)


# ---------------------------------------------------------------- decoding


class Reader:
    """Cursor over a packet body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        self.pos += 2
        return int(struct.unpack_from("!H", self.data, self.pos - 2)[0])

    def u32(self) -> int:
        self.pos += 4
        return int(struct.unpack_from("!I", self.data, self.pos - 4)[0])

    def varint(self) -> int:
        value, mult = 0, 1
        for _ in range(4):
            b = self.byte()
            value += (b & 0x7F) * mult
            if not b & 0x80:
                return value
            mult *= 128
        raise AssertionError("variable byte integer longer than 4 bytes from broker")

    def raw(self, n: int) -> bytes:
        self.pos += n
        assert self.pos <= len(self.data), "field runs past the end of the packet"
        return self.data[self.pos - n : self.pos]

    def bin(self) -> bytes:
        return self.raw(self.u16())

    def str(self) -> str:
        return self.bin().decode("utf-8")

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def properties(self) -> dict[int, Any]:
        """Decode a property block; user properties and subscription ids become lists."""
        end = self.varint() + self.pos
        props: dict[int, Any] = {}
        while self.pos < end:
            pid = self.varint()
            kind = PROPERTY_TYPES.get(pid)
            assert kind is not None, f"unknown property id 0x{pid:02x} from broker"
            value: Any
            if kind == _BYTE:
                value = self.byte()
            elif kind == _U16:
                value = self.u16()
            elif kind == _U32:
                value = self.u32()
            elif kind == _VARINT:
                value = self.varint()
            elif kind == _STR:
                value = self.str()
            elif kind == _BIN:
                value = self.bin()
            else:
                value = (self.str(), self.str())
            if pid in REPEATABLE:
                props.setdefault(pid, []).append(value)
            else:
                assert pid not in props, f"property 0x{pid:02x} repeated [MQTT-2.2.2-2]"
                props[pid] = value
        assert self.pos == end, "property length does not match its properties"
        return props


@dataclass
class Packet:
    """One control packet as read off the wire."""

    ptype: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.ptype, f"type{self.ptype}")

    def __repr__(self) -> str:
        return f"<{self.name} flags={self.flags:#x} body={self.body[:60]!r}>"


@dataclass
class Connack:
    session_present: bool
    rc: int
    props: dict[int, Any] = field(default_factory=dict)


@dataclass
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    pid: int | None
    props: dict[int, Any] = field(default_factory=dict)


@dataclass
class Ack:
    ptype: int
    pid: int
    rc: int
    props: dict[int, Any] = field(default_factory=dict)


@dataclass
class Suback:
    pid: int
    codes: list[int]
    props: dict[int, Any] = field(default_factory=dict)


@dataclass
class Disconnect:
    rc: int
    props: dict[int, Any] = field(default_factory=dict)


def parse_connack(p: Packet, version: int) -> Connack:
    assert p.ptype == CONNACK, f"expected CONNACK, got {p!r}"
    assert p.flags == 0, "CONNACK fixed-header flags are reserved (0)"
    r = Reader(p.body)
    ack_flags, rc = r.byte(), r.byte()
    assert ack_flags & 0xFE == 0, "CONNACK acknowledge flags bits 7-1 are reserved [MQTT-3.2.2-1]"
    props = r.properties() if version == V5 and r.left() else {}
    assert r.left() == 0, "trailing bytes in CONNACK"
    return Connack(bool(ack_flags & 1), rc, props)


def parse_publish(p: Packet, version: int) -> Publish:
    assert p.ptype == PUBLISH, f"expected PUBLISH, got {p!r}"
    qos = (p.flags >> 1) & 3
    assert qos != 3, "broker sent a PUBLISH with QoS 3 [MQTT-3.3.1-4]"
    r = Reader(p.body)
    topic = r.str()
    pid = r.u16() if qos else None
    if pid is not None:
        assert pid != 0, "QoS > 0 PUBLISH with packet id 0 [MQTT-2.3.1-1]"
    props = r.properties() if version == V5 else {}
    return Publish(topic, r.rest(), qos, bool(p.flags & 1), bool(p.flags & 8), pid, props)


def parse_ack(p: Packet, version: int) -> Ack:
    """PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK(v3) style: packet id, optional v5 reason."""
    expected_flags = 0x02 if p.ptype == PUBREL else 0
    assert p.flags == expected_flags, f"bad fixed-header flags on {p!r}"
    r = Reader(p.body)
    pid = r.u16()
    rc, props = 0, {}
    if version == V5 and r.left():
        rc = r.byte()
        if r.left():
            props = r.properties()
    assert r.left() == 0, f"trailing bytes in {p!r}"
    return Ack(p.ptype, pid, rc, props)


def parse_suback(p: Packet, version: int) -> Suback:
    """SUBACK or UNSUBACK with a list of return/reason codes."""
    assert p.ptype in (SUBACK, UNSUBACK), f"expected SUBACK/UNSUBACK, got {p!r}"
    assert p.flags == 0
    r = Reader(p.body)
    pid = r.u16()
    props = r.properties() if version == V5 else {}
    return Suback(pid, list(r.rest()), props)


def parse_disconnect(p: Packet, version: int) -> Disconnect:
    assert p.ptype == DISCONNECT, f"expected DISCONNECT, got {p!r}"
    r = Reader(p.body)
    rc = r.byte() if r.left() else 0
    props = r.properties() if version == V5 and r.left() else {}
    return Disconnect(rc, props)


# ---------------------------------------------------------------- raw client


class ConnectionClosed(Exception):
    """The broker closed the TCP connection."""


class RawClient:
    """A blocking socket that speaks MQTT bytes, for exact-packet checks."""

    def __init__(self, host: str, port: int, *, version: int = V311) -> None:
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.pending: list[Packet] = []  # read ahead while waiting for PINGRESP

    # -- transport
    def send(self, data: bytes) -> None:
        """Send bytes; a broker that already closed may make this fail, which is ignored."""
        try:
            self.sock.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self) -> None:
        """Drop the connection with an RST, as a crashed device would."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def _fill(self, deadline: float) -> None:
        if self.eof:
            raise ConnectionClosed()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError as exc:  # reset by peer counts as closed
            self.eof = True
            raise ConnectionClosed() from exc
        if not chunk:
            self.eof = True
            raise ConnectionClosed()
        self.buf += chunk

    def _try_parse(self) -> Packet | None:
        if len(self.buf) < 2:
            return None
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(self.buf):
                return None
            b = self.buf[i]
            length += (b & 0x7F) * mult
            mult *= 128
            i += 1
            if not b & 0x80:
                break
            assert i < 5, "broker sent a remaining length longer than 4 bytes"
        if len(self.buf) < i + length:
            return None
        first = self.buf[0]
        body = bytes(self.buf[i : i + length])
        del self.buf[: i + length]
        return Packet(first >> 4, first & 0x0F, body)

    def recv_packet(self, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        """Next packet; TimeoutError if none within timeout, ConnectionClosed on EOF."""
        if self.pending:
            return self.pending.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            p = self._try_parse()
            if p is not None:
                return p
            self._fill(deadline)

    def expect(self, ptype: int, timeout: float = DEFAULT_TIMEOUT) -> Packet:
        try:
            p = self.recv_packet(timeout)
        except TimeoutError:
            raise AssertionError(f"no {PACKET_NAMES[ptype]} within {timeout}s") from None
        except ConnectionClosed:
            raise AssertionError(
                f"connection closed while waiting for {PACKET_NAMES[ptype]}"
            ) from None
        assert p.ptype == ptype, f"expected {PACKET_NAMES[ptype]}, got {p!r}"
        return p

    def expect_publish(self, timeout: float = DEFAULT_TIMEOUT) -> Publish:
        return parse_publish(self.expect(PUBLISH, timeout), self.version)

    def expect_ack(self, ptype: int, timeout: float = DEFAULT_TIMEOUT) -> Ack:
        return parse_ack(self.expect(ptype, timeout), self.version)

    def expect_nothing(self, seconds: float) -> None:
        """Assert that no packet arrives (and the connection stays open) for `seconds`."""
        try:
            p = self.recv_packet(seconds)
        except TimeoutError:
            return
        except ConnectionClosed:
            raise AssertionError("connection closed unexpectedly") from None
        raise AssertionError(f"unexpected packet {p!r}")

    def wait_closed(self, timeout: float = DEFAULT_TIMEOUT) -> list[Packet]:
        """Read until the broker closes; returns the packets it sent first."""
        deadline = time.monotonic() + timeout
        got: list[Packet] = []
        while True:
            try:
                got.append(self.recv_packet(max(0.0, deadline - time.monotonic())))
            except ConnectionClosed:
                return got
            except TimeoutError:
                raise AssertionError(
                    f"broker did not close the connection within {timeout}s (got {got!r})"
                ) from None

    def is_open(self, within: float = 1.0) -> bool:
        """True when a PINGREQ is answered by PINGRESP [MQTT-3.12.4-1]; other packets
        that arrive meanwhile are kept for the next recv_packet."""
        self.send(pingreq())
        held: list[Packet] = []
        try:
            while True:
                p = self.recv_packet(within)
                if p.ptype == PINGRESP:
                    return True
                held.append(p)
        except (TimeoutError, ConnectionClosed):
            return False
        finally:
            self.pending = held + self.pending

    def sync(self) -> None:
        """Round-trip a PINGREQ so everything sent before has been processed."""
        assert self.is_open(DEFAULT_TIMEOUT), "no PINGRESP: connection lost"

    # -- MQTT conveniences
    def connect(self, client_id: str | bytes = "", **kw: Any) -> Connack:
        """Send CONNECT with this client's version and return the parsed CONNACK."""
        kw.setdefault("version", self.version)
        self.send(connect(client_id, **kw))
        return parse_connack(self.expect(CONNACK), self.version)

    def subscribe(
        self,
        filters: Sequence[tuple[str | bytes, int]] | Sequence[tuple[str, int]] | str,
        qos: int = 0,
        *,
        pid: int = 1,
        props: PropsIn = None,
    ) -> Suback:
        if isinstance(filters, str):
            filters = [(filters, qos)]
        self.send(subscribe(pid, filters, version=self.version, props=props))
        held: list[Packet] = []
        try:
            while True:  # PUBLISHes may precede the SUBACK (3.1.1 section 3.8.4)
                p = self.recv_packet()
                if p.ptype == SUBACK:
                    break
                assert p.ptype in (PUBLISH, PUBREL), f"expected SUBACK, got {p!r}"
                held.append(p)
        except TimeoutError:
            raise AssertionError("no SUBACK") from None
        except ConnectionClosed:
            raise AssertionError("connection closed while waiting for SUBACK") from None
        finally:
            self.pending = held + self.pending
        ack = parse_suback(p, self.version)
        assert ack.pid == pid, "SUBACK packet id must match SUBSCRIBE [MQTT-3.8.4-2]"
        return ack

    def unsubscribe(self, filters: list[str], *, pid: int = 2) -> Suback:
        self.send(unsubscribe(pid, filters, version=self.version))
        ack = parse_suback(self.expect(UNSUBACK), self.version)
        assert ack.pid == pid, "UNSUBACK packet id must match UNSUBSCRIBE [MQTT-3.10.4-4]"
        return ack

    def publish(
        self,
        topic: str | bytes,
        payload: bytes = b"",
        *,
        qos: int = 0,
        retain: bool = False,
        pid: int = 1,
        props: PropsIn = None,
    ) -> None:
        """Publish and complete the QoS handshake as the sender (for QoS 0, a PINGREQ
        round trip shows the broker has processed it)."""
        self.send(
            publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                pid=pid if qos else None,
                version=self.version,
                props=props,
            )
        )
        if qos == 0:
            self.sync()
        elif qos == 1:
            ack = self.expect_holding(PUBACK)
            assert ack.pid == pid and ack.rc < 0x80, f"bad PUBACK {ack}"
        elif qos == 2:
            rec = self.expect_holding(PUBREC)
            assert rec.pid == pid and rec.rc < 0x80, f"bad PUBREC {rec}"
            self.send(pubrel(pid, version=self.version))
            comp = self.expect_holding(PUBCOMP)
            assert comp.pid == pid, f"bad PUBCOMP {comp}"

    def expect_holding(self, ptype: int, timeout: float = DEFAULT_TIMEOUT) -> Ack:
        """Wait for an ack of type ptype; PUBLISHes (for a client subscribed to what it
        publishes) and PUBRELs arriving first are kept for the next recv_packet."""
        held: list[Packet] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                p = self._next(ptype, max(0.01, deadline - time.monotonic()))
                if p.ptype == ptype:
                    return parse_ack(p, self.version)
                assert p.ptype in (PUBLISH, PUBREL), f"expected {PACKET_NAMES[ptype]}, got {p!r}"
                held.append(p)
        finally:
            self.pending = held + self.pending

    def _next(self, ptype: int, timeout: float) -> Packet:
        try:
            return self.recv_packet(timeout)
        except TimeoutError:
            raise AssertionError(f"no {PACKET_NAMES[ptype]} within {timeout}s") from None
        except ConnectionClosed:
            raise AssertionError(
                f"connection closed while waiting for {PACKET_NAMES[ptype]}"
            ) from None

    def ack(self, msg: Publish) -> None:
        """Acknowledge a received PUBLISH (completing QoS 2 with PUBREC/PUBREL/PUBCOMP)."""
        if msg.qos == 1:
            assert msg.pid is not None
            self.send(puback(msg.pid, version=self.version))
        elif msg.qos == 2:
            assert msg.pid is not None
            self.send(pubrec(msg.pid, version=self.version))
            rel = self.expect_holding(PUBREL)
            assert rel.pid == msg.pid, "PUBREL must carry the packet id of the PUBLISH it releases"
            self.send(pubcomp(msg.pid, version=self.version))

    def receive(
        self, n: int, timeout: float = DEFAULT_TIMEOUT, *, ack: bool = True
    ) -> list[Publish]:
        """Receive n PUBLISH packets, acknowledging them unless ack=False. With ack,
        QoS 2 handshakes are completed too (PUBREC, then PUBCOMP for each PUBREL),
        whatever order the broker interleaves them in; PUBLISHes beyond n that arrive
        meanwhile are kept for the next call."""
        out: list[Publish] = []
        extra: list[Packet] = []
        awaiting_rel: set[int] = set()
        deadline = time.monotonic() + timeout
        try:
            while len(out) < n or awaiting_rel:
                left = max(0.01, deadline - time.monotonic())
                try:
                    p = self.recv_packet(left)
                except TimeoutError:
                    raise AssertionError(
                        f"got {len(out)} of {n} PUBLISHes within {timeout}s "
                        f"(PUBREL still due for {sorted(awaiting_rel)}): {out}"
                    ) from None
                except ConnectionClosed:
                    raise AssertionError(f"connection closed after {len(out)} of {n}") from None
                if p.ptype == PUBREL and ack:
                    pid = parse_ack(p, self.version).pid
                    assert pid in awaiting_rel, f"PUBREL for unknown packet id {pid}"
                    awaiting_rel.discard(pid)
                    self.send(pubcomp(pid, version=self.version))
                    continue
                if len(out) >= n:
                    extra.append(p)
                    continue
                msg = parse_publish(p, self.version)
                if ack and msg.pid is not None:
                    if msg.qos == 1:
                        self.send(puback(msg.pid, version=self.version))
                    else:
                        self.send(pubrec(msg.pid, version=self.version))
                        awaiting_rel.add(msg.pid)
                out.append(msg)
        finally:
            self.pending = extra + self.pending
        return out

    def collect_until(self, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list[Publish]:
        """PUBLISHes received up to and including the first on `topic` (a sentinel),
        acknowledging each as it comes (PUBREC for QoS 2, PUBCOMP for PUBREL)."""
        deadline = time.monotonic() + timeout
        out: list[Publish] = []
        while True:
            try:
                p = self.recv_packet(max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                raise AssertionError(f"sentinel {topic} not received; got {out}") from None
            if p.ptype == PUBREL:
                self.send(pubcomp(parse_ack(p, self.version).pid, version=self.version))
                continue
            if p.ptype in (SUBACK, UNSUBACK, PINGRESP):
                continue
            msg = parse_publish(p, self.version)
            if msg.qos == 1 and msg.pid is not None:
                self.send(puback(msg.pid, version=self.version))
            elif msg.qos == 2 and msg.pid is not None:
                self.send(pubrec(msg.pid, version=self.version))
            out.append(msg)
            if msg.topic == topic:
                return out

    def disconnect(self, rc: int | None = None, props: PropsIn = None) -> None:
        self.send(disconnect(version=self.version, rc=rc, props=props))
        self.close()


# ---------------------------------------------------------------- paho wrapper


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Any = None


class PahoClient:
    """paho-mqtt client on its own network thread, with blocking helpers.

    Automatic reconnection is off so a takeover or a kick is visible to tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str,
        *,
        protocol: int = V311,
        clean: bool = True,
        keepalive: int = 20,
    ) -> None:
        self.host, self.port, self.protocol, self.keepalive = host, port, protocol, keepalive
        self.clean = clean
        kwargs: dict[str, Any] = {}
        if protocol != V5:
            kwargs["clean_session"] = clean
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTProtocolVersion(protocol),
            reconnect_on_failure=False,
            **kwargs,
        )
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connack: tuple[bool, int, Any] | None = None
        self.disconnect_rc: int | None = None
        self._subacks: dict[int, list[int]] = {}
        self._sub_event = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.connack = (bool(flags.session_present), int(rc.value), props)
        self.connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        self.disconnect_rc = int(rc.value)
        self.disconnected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        props = getattr(msg, "properties", None)
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), props))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._sub_event:
            self._subacks[mid] = [int(c.value) for c in codes] if codes else []
            self._sub_event.notify_all()

    def will(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        props: Properties | None = None,
    ) -> None:
        self.client.will_set(topic, payload, qos, retain, props)

    def connect(
        self,
        *,
        session_expiry: int | None = None,
        props: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> tuple[bool, int, Any]:
        """Connect, start the network thread and wait for CONNACK."""
        kwargs: dict[str, Any] = {}
        if self.protocol == V5:
            kwargs["clean_start"] = self.clean
            if session_expiry is not None:
                props = props or Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = session_expiry
            kwargs["properties"] = props
        self.client.connect(self.host, self.port, keepalive=self.keepalive, **kwargs)
        self.client.loop_start()
        assert self.connected.wait(timeout), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        options: SubscribeOptions | None = None,
        props: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[int]:
        if options is not None:
            rc, mid = self.client.subscribe(topic, options=options, properties=props)
        else:
            rc, mid = self.client.subscribe(topic, qos, properties=props)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        return self._wait_ack(mid, timeout)

    def unsubscribe(self, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list[int]:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_ack(mid, timeout)

    def _wait_ack(self, mid: int | None, timeout: float) -> list[int]:
        assert mid is not None
        with self._sub_event:
            ok = self._sub_event.wait_for(lambda: mid in self._subacks, timeout)
            assert ok, "no SUBACK/UNSUBACK"
            return self._subacks.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        props: Properties | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Publish and wait until the QoS handshake is complete (sent, for QoS 0)."""
        info = self.client.publish(topic, payload, qos, retain, props)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"publish to {topic} not completed within {timeout}s"

    def get(self, timeout: float = DEFAULT_TIMEOUT) -> Received:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def get_n(self, n: int, timeout: float = DEFAULT_TIMEOUT) -> list[Received]:
        deadline = time.monotonic() + timeout
        out = []
        for i in range(n):
            try:
                out.append(self.messages.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {i} of {n} messages within {timeout}s: {out}") from None
        return out

    def get_until(self, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list[Received]:
        """Messages received up to and including the first one on `topic` (a sentinel)."""
        deadline = time.monotonic() + timeout
        out: list[Received] = []
        while True:
            try:
                msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"sentinel {topic} not received; got {out}") from None
            out.append(msg)
            if msg.topic == topic:
                return out

    def drain(self, seconds: float) -> list[Received]:
        """Everything that arrives within `seconds`."""
        deadline = time.monotonic() + seconds
        out: list[Received] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return out
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                return out

    def disconnect(self) -> None:
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.disconnected.wait(2.0)
        self.client.loop_stop()

    def close(self) -> None:
        """Tear down whatever state the client is in (idempotent)."""
        if self.client.is_connected():
            self.disconnect()
        else:
            self.client.loop_stop()
            try:
                sock = self.client.socket()
                if sock is not None:
                    sock.close()
            except Exception:
                pass


def props_for(packet_type: int, **values: Any) -> Properties:
    """paho Properties for a packet type, e.g. props_for(PacketTypes.PUBLISH, ContentType="x")."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def wait_for(predicate: Any, timeout: float = DEFAULT_TIMEOUT, interval: float = 0.02) -> bool:
    """Poll predicate until true or timeout; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def persistent(version: int, expiry: int = 300) -> dict[str, Any]:
    """CONNECT keyword arguments for a session that outlives the connection:
    CleanSession=0 (3.1.1) or Clean Start=0 with a Session Expiry Interval (5.0)."""
    if version == V5:
        return {"clean": False, "props": {SESSION_EXPIRY: expiry}}
    return {"clean": False}
