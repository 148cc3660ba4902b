"""Just enough MQTT 3.1.1 / 5.0 to drive a broker from the load generator.

Encoders run once per scenario (packets are pre-encoded), so they are plain
Python. The receive side has two paths: `uniform()` counts a run of
same-sized packets with a few C-level slice operations (the common case:
a subscriber receiving one topic shape and payload size), and `split()` is the
general incremental scanner for everything else.
"""

from __future__ import annotations

V311 = 4
V5 = 5

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

DISCONNECT_PACKET = b"\xe0\x00"
PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"

# Packet ids 1..65535 laid out twice, so ids for a batch of consecutive
# messages starting at any index are one slice of each table.
_IDS = [j % 65535 + 1 for j in range(2 * 65535)]
ID_HI = bytes(i >> 8 for i in _IDS)
ID_LO = bytes(i & 0xFF for i in _IDS)
del _IDS


class ProtocolError(Exception):
    """The peer sent bytes that are not MQTT."""


def varint(n: int) -> bytes:
    """Variable Byte Integer [MQTT-1.5.5]."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    """Two-byte length prefixed string [MQTT-1.5.4]."""
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def packet(first: int, body: bytes) -> bytes:
    """Fixed header (first byte + Remaining Length) + body [MQTT-2.1.1]."""
    return bytes([first]) + varint(len(body)) + body


def connect(client_id: str, *, clean: bool = True, keepalive: int = 600,
            version: int = V311, session_expiry: int = 0, username: str = "",
            password: str = "") -> bytes:
    """CONNECT [MQTT-3.1]; v5 persistence needs a Session Expiry Interval (0x11).
    User Name and Password flags 0x80 / 0x40, fields after the client id [MQTT-3.1.3-1]."""
    flags = (0x02 if clean else 0x00) | (0xC0 if username else 0x00)
    body = utf8(b"MQTT") + bytes([version, flags]) + keepalive.to_bytes(2, "big")
    if version == V5:
        props = b"\x11" + session_expiry.to_bytes(4, "big") if session_expiry else b""
        body += varint(len(props)) + props
    body += utf8(client_id)
    if username:
        body += utf8(username) + utf8(password)
    return packet(0x10, body)


def subscribe(packet_id: int, filters: list[str], qos: int, version: int = V311) -> bytes:
    """SUBSCRIBE; fixed-header flags must be 0b0010 [MQTT-3.8.1-1]."""
    body = packet_id.to_bytes(2, "big") + (b"\x00" if version == V5 else b"")
    body += b"".join(utf8(f) + bytes([qos]) for f in filters)
    return packet(0x82, body)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0,
            retain: bool = False, version: int = V311) -> bytes:
    """PUBLISH [MQTT-3.3]; the packet id exists only for QoS > 0 [MQTT-2.3.1-5]."""
    body = utf8(topic)
    if qos:
        body += packet_id.to_bytes(2, "big")
    if version == V5:
        body += b"\x00"
    return packet(0x30 | (qos << 1) | int(retain), body + payload)


def publish_layout(topic: str, payload_len: int, qos: int, version: int = V311) -> tuple[int, int, int]:
    """(packet size, packet-id offset, payload offset) of a PUBLISH of this shape."""
    pkt = publish(topic, b"\x00" * payload_len, qos, 1, False, version)
    head = len(pkt) - payload_len - (1 if version == V5 else 0) - (2 if qos else 0)
    payload_at = len(pkt) - payload_len
    return len(pkt), head if qos else -1, payload_at


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP with reason code omitted (success) [MQTT-3.4.2.1]."""
    return bytes([(kind << 4) | (2 if kind == PUBREL else 0), 2]) + packet_id.to_bytes(2, "big")


def connack(version: int) -> bytes:
    """Accepting CONNACK, for the null sink."""
    return b"\x20\x03\x00\x00\x00" if version == V5 else b"\x20\x02\x00\x00"


def suback(packet_id: int, granted: list[int], version: int) -> bytes:
    """SUBACK granting what was asked, for the null sink."""
    props = b"\x00" if version == V5 else b""
    return packet(0x90, packet_id.to_bytes(2, "big") + props + bytes(granted))


def split(buf: bytes) -> tuple[list[tuple[int, int, int]], int]:
    """Whole packets at the start of buf as (first byte, body start, end), and bytes used."""
    out: list[tuple[int, int, int]] = []
    pos = 0
    n = len(buf)
    while pos + 2 <= n:
        i = pos + 1
        length = 0
        shift = 0
        while True:
            if i >= n:
                return out, pos
            b = buf[i]
            i += 1
            length |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length over 4 bytes")
        end = i + length
        if end > n:
            break
        out.append((buf[pos], i, end))
        pos = end
    return out, pos


def uniform(buf: bytes, size: int, head: bytes) -> int:
    """Count of leading whole packets when all are `size` bytes and start with `head`.

    `head` is the first byte plus the Remaining Length bytes, so a stream
    that is not uniform (a different packet slipped in) fails the check at
    once and returns -1; the caller then uses split().
    """
    n = len(buf) // size
    if n == 0:
        return 0
    lim = n * size
    for k, b in enumerate(head):
        if buf[k:lim:size].count(b) != n:
            return -1
    return n


def head_of(pkt: bytes) -> bytes:
    """The fixed header (first byte + Remaining Length) of an encoded packet."""
    i = 1
    while pkt[i] & 0x80:
        i += 1
    return pkt[: i + 1]


def varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the Variable Byte Integer at pos."""
    value = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def publish_parts(buf: bytes, first: int, start: int, version: int) -> tuple[int, int]:
    """(packet id or 0, payload offset) of a PUBLISH whose body starts at `start`."""
    pos = start + 2 + int.from_bytes(buf[start:start + 2], "big")
    pid = 0
    if first & 0x06:
        pid = int.from_bytes(buf[pos:pos + 2], "big")
        pos += 2
    if version == V5:
        plen, pos = varint_at(buf, pos)
        pos += plen
    return pid, pos


_PROP_SIZE = {**dict.fromkeys((0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A), 1),
              **dict.fromkeys((0x13, 0x21, 0x22, 0x23), 2),
              **dict.fromkeys((0x02, 0x11, 0x18, 0x27), 4)}


def receive_maximum(buf: bytes, start: int, end: int) -> int:
    """Receive Maximum (0x21) from a v5 CONNACK body, 65535 when absent [MQTT-3.2.2.3.3]."""
    plen, pos = varint_at(buf, start + 2)
    stop = min(end, pos + plen)
    while pos < stop:
        prop = buf[pos]
        pos += 1
        if prop == 0x21:
            return int.from_bytes(buf[pos:pos + 2], "big")
        if prop in _PROP_SIZE:
            pos += _PROP_SIZE[prop]
        elif prop == 0x0B:
            _, pos = varint_at(buf, pos)
        elif prop == 0x26:  # string pair
            pos += 2 + int.from_bytes(buf[pos:pos + 2], "big")
            pos += 2 + int.from_bytes(buf[pos:pos + 2], "big")
        else:  # UTF-8 string or binary data
            pos += 2 + int.from_bytes(buf[pos:pos + 2], "big")
    return 65535


def connect_client_id(body: bytes) -> tuple[str, int]:
    """(client id, protocol level) from a CONNECT body, for the null sink."""
    pos = 2 + int.from_bytes(body[0:2], "big")
    version = body[pos]
    pos += 4
    if version == V5:
        plen, pos = varint_at(body, pos)
        pos += plen
    n = int.from_bytes(body[pos:pos + 2], "big")
    return body[pos + 2:pos + 2 + n].decode(), version
