# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""MQTT 3.1 / 3.1.1 / 5.0 codec: bytes in, packet objects out, and back.

This is the broker's hot path. The decoder reads the bytes buffer through a
C pointer, field by field, with no Python call per byte; one PUBLISH costs one
object, its topic (reused while it repeats), its payload and its raw bytes.
It never does I/O (STYLE habit 1).

Every malformed input raises MQTTError carrying the v5 reason code to report
(MQTT 5.0 §4.13, STYLE habit 6). Encoders are strict about structure
(lengths, ranges, property types) but not about content, so tests can build
packets a broker must refuse (a wildcard topic, a property in the wrong packet).

Version numbers: 3 = MQTT 3.1 ("MQIsdp"), 4 = 3.1.1 ("MQTT"), 5 = 5.0.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

from bwfast.errors import MQTTError

__all__ = [
    "Ack", "Auth", "Connack", "Connect", "Disconnect", "EncodeError", "Packet", "Parser",
    "Pingreq", "Pingresp", "Publish", "Suback", "Subscribe", "Unsuback", "Unsubscribe",
    "check_topic", "decode_properties", "encode_ack", "encode_auth", "encode_connack", "encode_connect",
    "encode_disconnect", "encode_pingreq", "encode_pingresp", "encode_properties",
    "encode_publish", "encode_suback", "encode_subscribe", "encode_unsuback",
    "encode_unsubscribe", "encode_varint", "is_compiled", "packet_length", "set_dup",
    "set_packet_id", "set_retain",
]


class EncodeError(MQTTError, ValueError):
    """Arguments an encoder can't turn into a well-formed packet.

    An MQTTError (one except clause catches every codec error) and a
    ValueError (it is the caller's mistake, not the peer's).
    """


cdef enum:
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15
    WILL = 0                      # pseudo packet type of the Will Properties

    MALFORMED = 0x81
    PROTOCOL_ERROR = 0x82
    UNSUPPORTED_VERSION = 0x84
    TOPIC_NAME_INVALID = 0x90
    PACKET_TOO_LARGE = 0x95

    MAX_REMAINING = 268435455     # largest Variable Byte Integer, §1.5.5
    MAX_STRING = 65535            # §1.5.4

    # property value kinds, §2.2.2.2
    K_BYTE = 1
    K_TWO = 2
    K_FOUR = 3
    K_VARINT = 4
    K_STR = 5
    K_BIN = 6
    K_PAIR = 7

    USER_PROPERTY = 0x26
    SUBSCRIPTION_IDENTIFIER = 0x0B


cdef unsigned char PROP_KIND[64]
cdef uint32_t PROP_ALLOWED[64]    # bit t set: allowed in packet type t (bit 0: Will)


cdef void _prop(int pid, int kind, tuple types):
    cdef uint32_t mask = 0
    for t in types:
        mask |= (<uint32_t>1) << <int>t
    PROP_KIND[pid] = kind
    PROP_ALLOWED[pid] = mask


cdef void _init_tables():
    """Property kinds and where each may appear (MQTT 5.0 §2.2.2.2)."""
    _prop(0x01, K_BYTE, (PUBLISH, WILL))                     # Payload Format Indicator
    _prop(0x02, K_FOUR, (PUBLISH, WILL))                     # Message Expiry Interval
    _prop(0x03, K_STR, (PUBLISH, WILL))                      # Content Type
    _prop(0x08, K_STR, (PUBLISH, WILL))                      # Response Topic
    _prop(0x09, K_BIN, (PUBLISH, WILL))                      # Correlation Data
    _prop(0x0B, K_VARINT, (PUBLISH, SUBSCRIBE))              # Subscription Identifier
    _prop(0x11, K_FOUR, (CONNECT, CONNACK, DISCONNECT))      # Session Expiry Interval
    _prop(0x12, K_STR, (CONNACK,))                           # Assigned Client Identifier
    _prop(0x13, K_TWO, (CONNACK,))                           # Server Keep Alive
    _prop(0x15, K_STR, (CONNECT, CONNACK, AUTH))             # Authentication Method
    _prop(0x16, K_BIN, (CONNECT, CONNACK, AUTH))             # Authentication Data
    _prop(0x17, K_BYTE, (CONNECT,))                          # Request Problem Information
    _prop(0x18, K_FOUR, (WILL,))                             # Will Delay Interval
    _prop(0x19, K_BYTE, (CONNECT,))                          # Request Response Information
    _prop(0x1A, K_STR, (CONNACK,))                           # Response Information
    _prop(0x1C, K_STR, (CONNACK, DISCONNECT))                # Server Reference
    _prop(0x1F, K_STR, (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
                        DISCONNECT, AUTH))                   # Reason String
    _prop(0x21, K_TWO, (CONNECT, CONNACK))                   # Receive Maximum
    _prop(0x22, K_TWO, (CONNECT, CONNACK))                   # Topic Alias Maximum
    _prop(0x23, K_TWO, (PUBLISH,))                           # Topic Alias
    _prop(0x24, K_BYTE, (CONNACK,))                          # Maximum QoS
    _prop(0x25, K_BYTE, (CONNACK,))                          # Retain Available
    _prop(0x26, K_PAIR, (CONNECT, CONNACK, PUBLISH, WILL, PUBACK, PUBREC, PUBREL, PUBCOMP,
                         SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT,
                         AUTH))                              # User Property
    _prop(0x27, K_FOUR, (CONNECT, CONNACK))                  # Maximum Packet Size
    _prop(0x28, K_BYTE, (CONNACK,))                          # Wildcard Subscription Available
    _prop(0x29, K_BYTE, (CONNACK,))                          # Subscription Identifier Available
    _prop(0x2A, K_BYTE, (CONNACK,))                          # Shared Subscription Available


_init_tables()


cpdef bint is_compiled():
    """True: this is the compiled codec (there is no pure-Python fallback)."""
    return True


# ==========================================================================
# Packet objects


cdef str _short(object v):
    """repr() that keeps long payloads readable."""
    if isinstance(v, bytes) and len(<bytes>v) > 48:
        return "%r...(%d bytes)" % ((<bytes>v)[:40], len(<bytes>v))
    return repr(v)


cdef class Packet:
    """Base of every packet: ``type`` is the MQTT packet type (bwfast.codes)."""

    cdef readonly int type

    _fields = ()

    def fields(self):
        """The packet's public attributes (except ``type``) as a dict."""
        return {name: getattr(self, name) for name in self._fields}

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            ["%s=%s" % (name, _short(getattr(self, name))) for name in self._fields]))

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.fields() == other.fields()

    def __ne__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.fields() != other.fields()

    __hash__ = None


cdef inline dict _props_arg(object props):
    return {} if props is None else dict(props)


@cython.final
cdef class Connect(Packet):
    """CONNECT (§3.1). ``version`` is the protocol level: 3, 4 or 5."""

    cdef readonly str protocol_name
    cdef readonly int version
    cdef readonly bint clean_start
    cdef readonly int keepalive
    cdef readonly str client_id
    cdef readonly object will_topic        # str or None
    cdef readonly object will_payload      # bytes or None
    cdef readonly int will_qos
    cdef readonly bint will_retain
    cdef readonly dict will_properties
    cdef readonly object username          # str or None
    cdef readonly object password          # bytes or None
    cdef readonly dict properties

    _fields = ("protocol_name", "version", "clean_start", "keepalive", "client_id",
               "will_topic", "will_payload", "will_qos", "will_retain", "will_properties",
               "username", "password", "properties")

    def __init__(self, client_id="", version=4, clean_start=True, keepalive=60,
                 will_topic=None, will_payload=None, will_qos=0, will_retain=False,
                 will_properties=None, username=None, password=None, properties=None,
                 protocol_name=None):
        self.type = CONNECT
        self.protocol_name = protocol_name if protocol_name is not None else (
            "MQIsdp" if version == 3 else "MQTT")
        self.version = version
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.client_id = client_id
        self.will_topic = will_topic
        self.will_payload = will_payload
        self.will_qos = will_qos
        self.will_retain = will_retain
        self.will_properties = _props_arg(will_properties)
        self.username = username
        self.password = password
        self.properties = _props_arg(properties)


@cython.final
cdef class Connack(Packet):
    """CONNACK (§3.2). ``reason_code`` is the v3 return code for v3 clients."""

    cdef readonly bint session_present
    cdef readonly int reason_code
    cdef readonly dict properties

    _fields = ("session_present", "reason_code", "properties")

    def __init__(self, session_present=False, reason_code=0, properties=None):
        self.type = CONNACK
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = _props_arg(properties)


@cython.final
cdef class Publish(Packet):
    """PUBLISH (§3.3). ``raw`` is the whole packet as received, fixed header included."""

    cdef readonly str topic
    cdef readonly int qos
    cdef readonly bint retain
    cdef readonly bint dup
    cdef readonly int packet_id
    cdef readonly bytes payload
    cdef readonly dict properties
    cdef readonly bytes raw

    _fields = ("topic", "qos", "retain", "dup", "packet_id", "payload", "properties")

    def __init__(self, topic="", payload=b"", qos=0, retain=False, dup=False, packet_id=0,
                 properties=None, raw=b""):
        self.type = PUBLISH
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = _props_arg(properties)
        self.raw = raw


@cython.final
cdef class Ack(Packet):
    """PUBACK, PUBREC, PUBREL or PUBCOMP (§3.4–§3.7); ``reason_code`` 0 when absent."""

    cdef readonly int packet_id
    cdef readonly int reason_code
    cdef readonly dict properties

    _fields = ("type", "packet_id", "reason_code", "properties")

    def __init__(self, type, packet_id, reason_code=0, properties=None):
        if not PUBACK <= type <= PUBCOMP:
            raise ValueError("Ack type must be PUBACK, PUBREC, PUBREL or PUBCOMP")
        self.type = type
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = _props_arg(properties)


@cython.final
cdef class Subscribe(Packet):
    """SUBSCRIBE (§3.8): ``topics`` is a list of (filter, raw option byte)."""

    cdef readonly int packet_id
    cdef readonly list topics
    cdef readonly dict properties

    _fields = ("packet_id", "topics", "properties")

    def __init__(self, packet_id, topics, properties=None):
        self.type = SUBSCRIBE
        self.packet_id = packet_id
        self.topics = [(f, o) for f, o in topics]
        self.properties = _props_arg(properties)


@cython.final
cdef class Suback(Packet):
    """SUBACK (§3.9)."""

    cdef readonly int packet_id
    cdef readonly list reason_codes
    cdef readonly dict properties

    _fields = ("packet_id", "reason_codes", "properties")

    def __init__(self, packet_id, reason_codes, properties=None):
        self.type = SUBACK
        self.packet_id = packet_id
        self.reason_codes = list(reason_codes)
        self.properties = _props_arg(properties)


@cython.final
cdef class Unsubscribe(Packet):
    """UNSUBSCRIBE (§3.10): ``topics`` is a list of filters."""

    cdef readonly int packet_id
    cdef readonly list topics
    cdef readonly dict properties

    _fields = ("packet_id", "topics", "properties")

    def __init__(self, packet_id, topics, properties=None):
        self.type = UNSUBSCRIBE
        self.packet_id = packet_id
        self.topics = list(topics)
        self.properties = _props_arg(properties)


@cython.final
cdef class Unsuback(Packet):
    """UNSUBACK (§3.11): ``reason_codes`` is [] before v5 (no payload)."""

    cdef readonly int packet_id
    cdef readonly list reason_codes
    cdef readonly dict properties

    _fields = ("packet_id", "reason_codes", "properties")

    def __init__(self, packet_id, reason_codes=(), properties=None):
        self.type = UNSUBACK
        self.packet_id = packet_id
        self.reason_codes = list(reason_codes)
        self.properties = _props_arg(properties)


@cython.final
cdef class Pingreq(Packet):
    """PINGREQ (§3.12)."""

    def __init__(self):
        self.type = PINGREQ


@cython.final
cdef class Pingresp(Packet):
    """PINGRESP (§3.13)."""

    def __init__(self):
        self.type = PINGRESP


@cython.final
cdef class Disconnect(Packet):
    """DISCONNECT (§3.14); ``reason_code`` 0 when absent."""

    cdef readonly int reason_code
    cdef readonly dict properties

    _fields = ("reason_code", "properties")

    def __init__(self, reason_code=0, properties=None):
        self.type = DISCONNECT
        self.reason_code = reason_code
        self.properties = _props_arg(properties)


@cython.final
cdef class Auth(Packet):
    """AUTH (§3.15, v5 only); ``reason_code`` 0 when absent."""

    cdef readonly int reason_code
    cdef readonly dict properties

    _fields = ("reason_code", "properties")

    def __init__(self, reason_code=0, properties=None):
        self.type = AUTH
        self.reason_code = reason_code
        self.properties = _props_arg(properties)


# ==========================================================================
# Decoding primitives. Each reads at p[pos[0]] within p[0:end] and advances
# pos; running past `end` inside a complete packet is a Malformed Packet.


cdef int _malformed(str msg) except -1:
    raise MQTTError(MALFORMED, msg)


cdef int _protocol_error(str msg) except -1:
    raise MQTTError(PROTOCOL_ERROR, msg)


cdef inline Py_ssize_t _read_u16(const unsigned char* p, Py_ssize_t end,
                                 Py_ssize_t* pos) except -1:
    cdef Py_ssize_t i = pos[0]
    if end - i < 2:
        _malformed("truncated two byte integer")
    pos[0] = i + 2
    return (<Py_ssize_t>p[i] << 8) | p[i + 1]


cdef inline Py_ssize_t _read_varint(const unsigned char* p, Py_ssize_t end,
                                    Py_ssize_t* pos) except -1:
    """Variable Byte Integer, at most 4 bytes [MQTT-1.5.5]."""
    cdef Py_ssize_t i = pos[0], value = 0
    cdef unsigned int c, shift = 0
    while True:
        if i >= end:
            _malformed("truncated variable byte integer")
        c = p[i]
        i += 1
        value |= <Py_ssize_t>(c & 127) << shift
        if not c & 128:
            break
        shift += 7
        if shift == 28:
            _malformed("variable byte integer longer than 4 bytes")
    pos[0] = i
    return value


cdef str _decode_utf8(const unsigned char* s, Py_ssize_t n):
    """Well-formed UTF-8 only (no surrogates, no overlongs) [MQTT-1.5.4-1]."""
    try:
        return PyUnicode_DecodeUTF8(<char*>s, n, NULL)
    except UnicodeDecodeError:
        raise MQTTError(MALFORMED, "string is not valid UTF-8") from None


cdef inline str _utf8(const unsigned char* s, Py_ssize_t n):
    if n == 0:
        return ""
    if memchr(s, 0, n) != NULL:
        _malformed("U+0000 in a UTF-8 string")    # [MQTT-1.5.4-2]
    return _decode_utf8(s, n)


cdef inline str _read_str(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
    cdef Py_ssize_t n = _read_u16(p, end, pos)
    cdef Py_ssize_t i = pos[0]
    if end - i < n:
        _malformed("truncated UTF-8 string")
    pos[0] = i + n
    return _utf8(p + i, n)


cdef inline bytes _read_bin(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos):
    cdef Py_ssize_t n = _read_u16(p, end, pos)
    cdef Py_ssize_t i = pos[0]
    if end - i < n:
        _malformed("truncated binary data")
    pos[0] = i + n
    return PyBytes_FromStringAndSize(<const char*>p + i, n)


cdef dict _read_props(const unsigned char* p, Py_ssize_t end, Py_ssize_t* pos, int ptype):
    """A v5 property block (length + properties) at p[pos[0]] (§2.2.2).

    ``ptype`` is the packet type whose table applies (WILL for Will
    Properties), or -1 to accept any property.
    """
    cdef Py_ssize_t i = pos[0]
    cdef Py_ssize_t plen = _read_varint(p, end, &i)
    cdef Py_ssize_t stop, value
    cdef unsigned int pid, kind
    cdef uint64_t seen = 0, bit
    cdef dict props = {}
    cdef object v
    if plen > end - i:
        _malformed("property length overruns the packet")
    stop = i + plen
    while i < stop:
        pid = p[i]
        i += 1
        kind = PROP_KIND[pid] if pid < 64 else 0
        if kind == 0:
            raise MQTTError(MALFORMED, "unknown property 0x%02x" % pid)
        if ptype >= 0 and not (PROP_ALLOWED[pid] >> ptype) & 1:
            raise MQTTError(PROTOCOL_ERROR, "property 0x%02x not allowed here" % pid)
        bit = (<uint64_t>1) << pid
        if seen & bit and pid != USER_PROPERTY and not (
                pid == SUBSCRIPTION_IDENTIFIER and (ptype == PUBLISH or ptype < 0)):
            raise MQTTError(PROTOCOL_ERROR, "property 0x%02x given twice" % pid)
        seen |= bit
        if kind == K_BYTE:
            if stop - i < 1:
                _malformed("truncated property")
            if p[i] > 1 and pid != 0x01:
                # Request Problem/Response Information [MQTT-3.1.2-28..29 §3.1.2.11.6-7],
                # Maximum QoS, Retain/Wildcard/Subscription Identifier/Shared Available:
                # "a value other than 0 or 1 is a Protocol Error".
                _protocol_error("property 0x%02x must be 0 or 1" % pid)
            props[pid] = <long>p[i]
            i += 1
        elif kind == K_TWO:
            props[pid] = _read_u16(p, stop, &i)
        elif kind == K_FOUR:
            if stop - i < 4:
                _malformed("truncated property")
            props[pid] = ((<uint32_t>p[i] << 24) | (<uint32_t>p[i + 1] << 16)
                          | (<uint32_t>p[i + 2] << 8) | p[i + 3])
            i += 4
        elif kind == K_VARINT:
            value = _read_varint(p, stop, &i)
            if value == 0:
                _protocol_error("subscription identifier 0")    # [MQTT-3.8.2.1.2]
            v = props.get(pid)
            if v is None:
                props[pid] = [value]
            else:
                (<list>v).append(value)
        elif kind == K_STR:
            v = _read_str(p, stop, &i)
            if pid == 0x08 and (not v or "+" in v or "#" in v):
                # Response Topic: a Topic Name, so no wildcards [MQTT-3.3.2-14]
                # (PUBLISH and Will Properties alike) and not empty [MQTT-4.7.3-1].
                _protocol_error("Response Topic is not a valid topic name")
            props[pid] = v
        elif kind == K_BIN:
            props[pid] = _read_bin(p, stop, &i)
        else:   # K_PAIR
            k = _read_str(p, stop, &i)
            v = (k, _read_str(p, stop, &i))
            if pid in props:
                (<list>props[pid]).append(v)
            else:
                props[pid] = [v]
    pos[0] = stop
    return props


cdef inline int _check_end(Py_ssize_t i, Py_ssize_t n) except -1:
    if i != n:
        _malformed("unexpected bytes at the end of the packet")
    return 0


cdef inline int _check_first(unsigned int b0, int version) except -1:
    """Fixed header byte 1: type and the flags it reserves (§2.1.3, [MQTT-2.1.3-1])."""
    cdef unsigned int t = b0 >> 4, flags = b0 & 15
    if t == PUBLISH:
        if (flags & 6) == 6:
            _malformed("PUBLISH with QoS 3")                          # [MQTT-3.3.1-4]
        if (flags & 8) and not (flags & 6):
            _protocol_error("PUBLISH QoS 0 with DUP set")             # [MQTT-3.3.1-2]
        return 0
    if t == 0:
        _malformed("reserved packet type 0")
    if t == PUBREL or t == SUBSCRIBE or t == UNSUBSCRIBE:
        if flags != 2:
            _malformed("reserved fixed header flags must be 0010")   # [MQTT-3.6.1-1] etc.
    elif flags != 0:
        _malformed("reserved fixed header flags must be 0")
    if t == AUTH and (version == 3 or version == 4):
        _malformed("AUTH is reserved before MQTT 5")
    return 0


# --------------------------------------------------------------------------
# Per-type decoders; p points at the variable header, n is the remaining length.


cdef Connect _connect(const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t i = 0, name_len
    cdef unsigned int flags, level
    cdef Connect c = Connect.__new__(Connect)
    name_len = _read_u16(p, n, &i)
    if n - i < name_len + 1:
        _malformed("truncated CONNECT protocol name")
    level = p[i + name_len]
    if name_len == 4 and memcmp(p + i, b"MQTT", 4) == 0 and (level == 4 or level == 5):
        c.protocol_name = "MQTT"
    elif name_len == 6 and memcmp(p + i, b"MQIsdp", 6) == 0 and level == 3:
        c.protocol_name = "MQIsdp"
    else:
        raise MQTTError(UNSUPPORTED_VERSION, "unsupported protocol name or level")  # [MQTT-3.1.2-2]
    i += name_len + 1
    if i >= n:
        _malformed("truncated CONNECT flags")
    flags = p[i]
    i += 1
    if flags & 1:
        _malformed("CONNECT reserved flag set")                        # [MQTT-3.1.2-3]
    c.type = CONNECT
    c.version = level
    c.clean_start = (flags >> 1) & 1
    c.will_qos = (flags >> 3) & 3
    c.will_retain = (flags >> 5) & 1
    if not flags & 4 and (c.will_qos or c.will_retain):
        _malformed("will QoS or retain without a will")                # [MQTT-3.1.2-11, -13, -15]
    if c.will_qos == 3:
        _malformed("will QoS 3")                                       # [MQTT-3.1.2-12]
    if flags & 0x40 and not flags & 0x80 and level < 5:
        _malformed("password without user name")                       # [MQTT-3.1.2-22] (3.1.1)
    c.keepalive = _read_u16(p, n, &i)
    c.properties = _read_props(p, n, &i, CONNECT) if level == 5 else {}
    c.client_id = _read_str(p, n, &i)
    c.will_properties = {}
    if flags & 4:
        if level == 5:
            c.will_properties = _read_props(p, n, &i, WILL)
        c.will_topic = _read_str(p, n, &i)
        c.will_payload = _read_bin(p, n, &i)
    if flags & 0x80:
        c.username = _read_str(p, n, &i)
    if flags & 0x40:
        c.password = _read_bin(p, n, &i)
    _check_end(i, n)
    return c


cdef Connack _connack(const unsigned char* p, Py_ssize_t n, bint v5):
    cdef Py_ssize_t i = 2
    cdef Connack c = Connack.__new__(Connack)
    if n < 2:
        _malformed("truncated CONNACK")
    if p[0] & 0xFE:
        _malformed("CONNACK reserved flags set")                       # [MQTT-3.2.2-1]
    c.type = CONNACK
    c.session_present = p[0] & 1
    c.reason_code = p[1]
    # A v5 CONNACK always carries properties, but a server refusing the
    # protocol level answers in the 3.1.1 form (2 bytes), so accept both.
    c.properties = _read_props(p, n, &i, CONNACK) if v5 and n > 2 else {}
    _check_end(i, n)
    return c


cdef Ack _ack(unsigned int t, const unsigned char* p, Py_ssize_t n, bint v5):
    """PUBACK/PUBREC/PUBREL/PUBCOMP; v5 may omit the reason code and properties (§3.4.2.1)."""
    cdef Py_ssize_t i = 0
    cdef Ack a = Ack.__new__(Ack)
    a.type = t
    a.packet_id = _read_u16(p, n, &i)
    a.reason_code = 0
    if v5 and n > 2:
        a.reason_code = p[2]
        i = 3
        if n > 3:
            a.properties = _read_props(p, n, &i, t)
        else:
            a.properties = {}
    else:
        a.properties = {}
    _check_end(i, n)
    return a


cdef Subscribe _subscribe(const unsigned char* p, Py_ssize_t n, bint v5):
    cdef Py_ssize_t i = 0
    cdef unsigned int opt
    cdef list topics = []
    cdef Subscribe s = Subscribe.__new__(Subscribe)
    s.type = SUBSCRIBE
    s.packet_id = _read_u16(p, n, &i)
    if s.packet_id == 0:
        _protocol_error("SUBSCRIBE packet identifier 0")              # [MQTT-2.2.1-3]
    s.properties = _read_props(p, n, &i, SUBSCRIBE) if v5 else {}
    while i < n:
        filt = _read_str(p, n, &i)
        if i >= n:
            _malformed("missing subscription options")
        opt = p[i]
        i += 1
        if v5:
            if opt & 0xC0 or (opt & 0x30) == 0x30:
                _malformed("reserved subscription option bits")      # [MQTT-3.8.3-5]
        elif opt & 0xFC:
            _malformed("reserved subscription option bits")          # [MQTT-3-8.3-4] (3.1.1)
        if (opt & 3) == 3:
            _malformed("subscription QoS 3")
        topics.append((filt, <long>opt))
    if not topics:
        _protocol_error("SUBSCRIBE without topic filters")            # [MQTT-3.8.3-3]
    s.topics = topics
    return s


cdef Suback _suback(const unsigned char* p, Py_ssize_t n, bint v5):
    cdef Py_ssize_t i = 0
    cdef Suback s = Suback.__new__(Suback)
    s.type = SUBACK
    s.packet_id = _read_u16(p, n, &i)
    s.properties = _read_props(p, n, &i, SUBACK) if v5 else {}
    s.reason_codes = list(PyBytes_FromStringAndSize(<const char*>p + i, n - i))
    return s


cdef Unsubscribe _unsubscribe(const unsigned char* p, Py_ssize_t n, bint v5):
    cdef Py_ssize_t i = 0
    cdef list topics = []
    cdef Unsubscribe u = Unsubscribe.__new__(Unsubscribe)
    u.type = UNSUBSCRIBE
    u.packet_id = _read_u16(p, n, &i)
    if u.packet_id == 0:
        _protocol_error("UNSUBSCRIBE packet identifier 0")            # [MQTT-2.2.1-3]
    u.properties = _read_props(p, n, &i, UNSUBSCRIBE) if v5 else {}
    while i < n:
        topics.append(_read_str(p, n, &i))
    if not topics:
        _protocol_error("UNSUBSCRIBE without topic filters")          # [MQTT-3.10.3-2]
    u.topics = topics
    return u


cdef Unsuback _unsuback(const unsigned char* p, Py_ssize_t n, bint v5):
    cdef Py_ssize_t i = 0
    cdef Unsuback u = Unsuback.__new__(Unsuback)
    u.type = UNSUBACK
    u.packet_id = _read_u16(p, n, &i)
    if v5:
        u.properties = _read_props(p, n, &i, UNSUBACK)
        u.reason_codes = list(PyBytes_FromStringAndSize(<const char*>p + i, n - i))
    else:
        _check_end(i, n)
        u.properties = {}
        u.reason_codes = []
    return u


cdef object _code_props(int t, const unsigned char* p, Py_ssize_t n, bint v5):
    """DISCONNECT and AUTH: optional reason code, then optional properties (§3.14.2, §3.15.2)."""
    cdef Py_ssize_t i = 0
    cdef int rc = 0
    cdef dict props = {}
    if n and not v5:
        _malformed("DISCONNECT with a body before MQTT 5")
    if n:
        rc = p[0]
        i = 1
        if n > 1:
            props = _read_props(p, n, &i, t)
    _check_end(i, n)
    if t == DISCONNECT:
        d = Disconnect.__new__(Disconnect)
        (<Disconnect>d).type = DISCONNECT
        (<Disconnect>d).reason_code = rc
        (<Disconnect>d).properties = props
        return d
    a = Auth.__new__(Auth)
    (<Auth>a).type = AUTH
    (<Auth>a).reason_code = rc
    (<Auth>a).properties = props
    return a


# ==========================================================================
# The incremental decoder


cdef class Parser:
    """Incremental decoder: ``feed(bytes)`` returns every packet completed so far.

    ``version`` (0 until a CONNECT is decoded) selects the v5 layout; a
    decoded CONNECT sets it, so the packets after it in the same feed are read
    right. The broker or a client-side user may set it too.

    ``max_connect_size`` > 0 makes it a server's parser before CONNECT: the
    first byte must be CONNECT's [MQTT-3.1.0-1] and the CONNECT packet may take
    at most that many bytes, both checked as soon as the fixed header is in, so
    an unauthenticated peer can't make it buffer more than that.
    """

    cdef public int version
    cdef public Py_ssize_t max_packet_size
    cdef Py_ssize_t _connect_max  # > 0: no CONNECT decoded yet, its size limit
    cdef list _chunks          # unconsumed input, not yet joined
    cdef Py_ssize_t _pending   # total bytes in _chunks
    cdef Py_ssize_t _need      # bytes the next packet needs (0: not known yet)
    cdef str _last_topic       # last PUBLISH topic decoded, reused while it repeats

    def __init__(self, Py_ssize_t max_packet_size=MAX_REMAINING, int version=0,
                 Py_ssize_t max_connect_size=0):
        self.max_packet_size = max_packet_size
        self.version = version
        self._connect_max = max_connect_size
        self._chunks = []
        self._pending = 0
        self._need = 0
        self._last_topic = None

    @property
    def pending(self):
        """Bytes buffered towards the next, incomplete packet."""
        return self._pending

    @property
    def need(self):
        """The size of the incomplete packet buffered, once its header is in (else 0)."""
        return self._need

    def take_pending(self):
        """Hand back the buffered bytes of the incomplete packet and forget them
        (the broker's fast lane continues from there; see bwfast.fastpath)."""
        cdef bytes buf = b"".join(self._chunks)
        self._chunks = []
        self._pending = 0
        self._need = 0
        return buf

    def feed(self, data):
        """Decode every complete packet; keep the unconsumed tail for the next call.

        On malformed input raise MQTTError whose ``packets`` holds the packets
        completed earlier in this call. The parser is not usable afterwards.
        """
        cdef bytes buf
        cdef list out = []
        cdef Py_ssize_t n, used
        if type(data) is not bytes:
            data = bytes(data)
        n = PyBytes_GET_SIZE(data)
        if n == 0:
            return out
        if self._pending:
            # Join only once the next packet can be complete, so a large
            # packet arriving in many small reads is copied once, not n times.
            self._chunks.append(data)
            self._pending += n
            if self._pending < self._need:
                return out
            buf = b"".join(self._chunks)
            self._chunks = []
            self._pending = 0
        else:
            buf = <bytes>data
        try:
            used = self._parse(buf, out)
        except MQTTError as e:
            e.packets = out
            raise
        n = PyBytes_GET_SIZE(buf)
        if used < n:
            self._chunks.append(buf[used:] if used else buf)
            self._pending = n - used
        return out

    cdef Py_ssize_t _parse(self, bytes buf, list out) except -1:
        """Decode whole packets from buf; return how many bytes were used."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t pos = 0, i, rl, total
        cdef unsigned int b0, c, shift
        while pos < n:
            b0 = p[pos]
            if self._connect_max and (b0 >> 4) != CONNECT:
                _protocol_error("the first packet must be CONNECT")   # [MQTT-3.1.0-1]
            _check_first(b0, self.version)
            i = pos + 1
            rl = 0
            shift = 0
            while True:
                if i >= n:
                    self._need = 0
                    return pos
                c = p[i]
                i += 1
                rl |= <Py_ssize_t>(c & 127) << shift
                if not c & 128:
                    break
                shift += 7
                if shift == 28:
                    _malformed("remaining length longer than 4 bytes")   # [MQTT-1.5.5]
            total = i - pos + rl
            if total > self.max_packet_size:
                raise MQTTError(PACKET_TOO_LARGE, "packet larger than the maximum packet size")
            if self._connect_max and total > self._connect_max:
                raise MQTTError(PACKET_TOO_LARGE, "CONNECT larger than max_connect_size")
            if total > n - pos:
                self._need = total
                return pos
            if (b0 >> 4) == PUBLISH:
                out.append(self._publish(buf, p, pos, i - pos, rl))
            else:
                out.append(self._decode(buf, p, pos, i - pos, rl))
            pos += total
        self._need = 0
        return pos

    cdef object _decode(self, bytes buf, const unsigned char* base, Py_ssize_t start,
                        Py_ssize_t hdr, Py_ssize_t rl):
        cdef const unsigned char* p = base + start + hdr
        cdef unsigned int t = base[start] >> 4
        cdef bint v5 = self.version == 5
        cdef Connect c
        if PUBACK <= t <= PUBCOMP:
            return _ack(t, p, rl, v5)
        if t == CONNECT:
            c = _connect(p, rl)
            self.version = c.version
            self._connect_max = 0
            return c
        if t == CONNACK:
            return _connack(p, rl, v5)
        if t == SUBSCRIBE:
            return _subscribe(p, rl, v5)
        if t == SUBACK:
            return _suback(p, rl, v5)
        if t == UNSUBSCRIBE:
            return _unsubscribe(p, rl, v5)
        if t == UNSUBACK:
            return _unsuback(p, rl, v5)
        if t == PINGREQ or t == PINGRESP:
            _check_end(0, rl)
            if t == PINGREQ:
                r = Pingreq.__new__(Pingreq)
            else:
                r = Pingresp.__new__(Pingresp)
            (<Packet>r).type = t
            return r
        # DISCONNECT, AUTH (AUTH before v5 was refused in _check_first)
        return _code_props(t, p, rl, v5 or t == AUTH)

    cdef Publish _publish(self, bytes buf, const unsigned char* base, Py_ssize_t start,
                          Py_ssize_t hdr, Py_ssize_t rl):
        """PUBLISH (§3.3); QoS 3 and DUP on QoS 0 were refused in _check_first."""
        cdef const unsigned char* p = base + start + hdr
        cdef unsigned int b0 = base[start]
        cdef unsigned int qos = (b0 >> 1) & 3
        cdef Py_ssize_t i, tl, pid = 0
        cdef dict props
        cdef str topic
        cdef Publish pkt
        if rl < 2:
            _malformed("truncated PUBLISH topic")
        tl = (<Py_ssize_t>p[0] << 8) | p[1]
        i = 2 + tl
        if i > rl:
            _malformed("truncated PUBLISH topic")
        topic = self._topic(p + 2, tl)
        if qos:
            if rl - i < 2:
                _malformed("truncated PUBLISH packet identifier")
            pid = (<Py_ssize_t>p[i] << 8) | p[i + 1]
            if pid == 0:
                _protocol_error("PUBLISH packet identifier 0")            # [MQTT-2.2.1-3]
            i += 2
        if self.version == 5:
            # An empty topic is fine here: a Topic Alias may stand for it (§3.3.2.3.4).
            props = _read_props(p, rl, &i, PUBLISH)
        else:
            if tl == 0:
                _protocol_error("empty PUBLISH topic")                    # [MQTT-4.7.3-1]
            props = {}
        pkt = Publish.__new__(Publish)
        pkt.type = PUBLISH
        pkt.topic = topic
        pkt.qos = qos
        pkt.retain = b0 & 1
        pkt.dup = (b0 >> 3) & 1
        pkt.packet_id = pid
        pkt.payload = PyBytes_FromStringAndSize(<const char*>p + i, rl - i)
        pkt.properties = props
        if start == 0 and hdr + rl == PyBytes_GET_SIZE(buf):
            pkt.raw = buf
        else:
            pkt.raw = PyBytes_FromStringAndSize(<const char*>base + start, hdr + rl)
        return pkt

    cdef str _topic(self, const unsigned char* s, Py_ssize_t n):
        """The topic as str, reusing the previous one when the bytes repeat.

        A reused str keeps its cached hash, which the broker's topic lookups
        then get for free. Only validated topics are ever remembered.
        """
        cdef str last = self._last_topic
        cdef const char* lp
        cdef Py_ssize_t ln, j
        cdef unsigned char c
        cdef bint wild = False
        if n == 0:
            return ""
        if last is not None:
            lp = PyUnicode_AsUTF8AndSize(last, &ln)
            if ln == n and memcmp(lp, s, n) == 0:
                return last
        for j in range(n):
            c = s[j]
            if c == 0:
                _malformed("U+0000 in the topic name")                  # [MQTT-4.7.3-2]
            if c == 43 or c == 35:
                wild = True
        topic = _decode_utf8(s, n)
        if wild:
            raise MQTTError(TOPIC_NAME_INVALID, "wildcard in a PUBLISH topic")  # [MQTT-3.3.2-2]
        self._last_topic = topic
        return topic


def check_topic(bytes name not None):
    """A PUBLISH topic name as str, validated as the decoder does; raise MQTTError."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if n == 0:
        _protocol_error("empty PUBLISH topic")
    if memchr(s, 0, n) != NULL:
        _malformed("U+0000 in the topic name")                          # [MQTT-4.7.3-2]
    topic = _decode_utf8(s, n)
    if memchr(s, 43, n) != NULL or memchr(s, 35, n) != NULL:
        raise MQTTError(TOPIC_NAME_INVALID, "wildcard in a PUBLISH topic")  # [MQTT-3.3.2-2]
    return topic


def decode_properties(data, packet_type=None):
    """Decode one v5 property block, its length prefix included (§2.2.2).

    With ``packet_type`` (0 for Will Properties) the table of §2.2.2.2 is
    enforced; without it any property is accepted. Trailing bytes are malformed.
    """
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i = 0
    cdef int ptype = -1 if packet_type is None else packet_type
    props = _read_props(p, n, &i, ptype)
    _check_end(i, n)
    return props


def packet_length(data):
    """Total size of the packet at the start of ``data``, or None until its fixed header is complete."""
    cdef bytes b = data if type(data) is bytes else bytes(data)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(b)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b), i = 1, rl, k
    if n < 2:
        return None
    for k in range(4):
        if i + k >= n:
            return None
        if not p[i + k] & 128:
            break
    rl = _read_varint(p, n, &i)
    return i + rl


# ==========================================================================
# Encoding


cdef struct Buf:
    unsigned char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _buf_init(Buf* b, Py_ssize_t cap) except -1:
    b.data = <unsigned char*>PyMem_Malloc(cap)
    if b.data == NULL:
        raise MemoryError()
    b.len = 0
    b.cap = cap
    return 0


cdef inline void _buf_free(Buf* b):
    if b.data != NULL:
        PyMem_Free(b.data)
        b.data = NULL


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef unsigned char* d
    if cap < b.len + extra:
        cap = b.len + extra
    d = <unsigned char*>PyMem_Realloc(b.data, cap)
    if d == NULL:
        raise MemoryError()
    b.data = d
    b.cap = cap
    return 0


cdef inline int _put1(Buf* b, long long v) except -1:
    if v < 0 or v > 255:
        raise EncodeError(MALFORMED, "byte value out of range: %d" % v)
    if b.len + 1 > b.cap:
        _grow(b, 1)
    b.data[b.len] = <unsigned char>v
    b.len += 1
    return 0


cdef inline int _put2(Buf* b, long long v) except -1:
    if v < 0 or v > 65535:
        raise EncodeError(MALFORMED, "two byte integer out of range: %d" % v)
    if b.len + 2 > b.cap:
        _grow(b, 2)
    b.data[b.len] = <unsigned char>(v >> 8)
    b.data[b.len + 1] = <unsigned char>v
    b.len += 2
    return 0


cdef inline int _put4(Buf* b, long long v) except -1:
    if v < 0 or v > 0xFFFFFFFF:
        raise EncodeError(MALFORMED, "four byte integer out of range: %d" % v)
    if b.len + 4 > b.cap:
        _grow(b, 4)
    b.data[b.len] = <unsigned char>(v >> 24)
    b.data[b.len + 1] = <unsigned char>(v >> 16)
    b.data[b.len + 2] = <unsigned char>(v >> 8)
    b.data[b.len + 3] = <unsigned char>v
    b.len += 4
    return 0


cdef inline int _varint_size(Py_ssize_t n):
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


cdef inline unsigned char* _write_varint(unsigned char* q, Py_ssize_t n):
    """Write n (0..268435455) as a Variable Byte Integer; return the end (§1.5.5)."""
    while True:
        if n < 128:
            q[0] = <unsigned char>n
            return q + 1
        q[0] = <unsigned char>((n & 127) | 128)
        q += 1
        n >>= 7


cdef int _put_varint(Buf* b, long long v) except -1:
    if v < 0 or v > MAX_REMAINING:
        raise EncodeError(MALFORMED, "variable byte integer out of range: %d" % v)
    if b.len + 4 > b.cap:
        _grow(b, 4)
    b.len = _write_varint(b.data + b.len, <Py_ssize_t>v) - b.data
    return 0


cdef inline int _put_raw(Buf* b, const char* s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef const char* _str_data(object s, Py_ssize_t* n) except NULL:
    """UTF-8 bytes of a str (cached in the str) or of already-encoded bytes."""
    if isinstance(s, str):
        try:
            return PyUnicode_AsUTF8AndSize(s, n)
        except UnicodeEncodeError:
            raise EncodeError(MALFORMED, "string can't be encoded as UTF-8") from None
    if isinstance(s, bytes):
        n[0] = PyBytes_GET_SIZE(s)
        return PyBytes_AS_STRING(s)
    raise EncodeError(MALFORMED, "expected str, not %s" % type(s).__name__)


cdef int _put_str(Buf* b, object s) except -1:
    """UTF-8 Encoded String: two byte length, then the bytes (§1.5.4)."""
    cdef Py_ssize_t n
    cdef const char* d = _str_data(s, &n)
    if n > MAX_STRING:
        raise EncodeError(MALFORMED, "string longer than 65535 bytes")
    _put2(b, n)
    _put_raw(b, d, n)
    return 0


cdef bytes _as_bytes(object v):
    if isinstance(v, bytes):
        return <bytes>v
    if isinstance(v, str):
        return (<str>v).encode("utf-8")
    try:
        return bytes(memoryview(v))
    except TypeError:
        raise EncodeError(MALFORMED, "expected bytes, not %s" % type(v).__name__) from None


cdef int _put_bin(Buf* b, object v) except -1:
    """Binary Data: two byte length, then the bytes (§1.5.6)."""
    cdef bytes d = _as_bytes(v)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(d)
    if n > MAX_STRING:
        raise EncodeError(MALFORMED, "binary data longer than 65535 bytes")
    _put2(b, n)
    _put_raw(b, PyBytes_AS_STRING(d), n)
    return 0


cdef long long _int_value(int pid, object v) except? -1:
    if not isinstance(v, int):
        raise EncodeError(MALFORMED, "property 0x%02x needs an int, not %s" % (pid, type(v).__name__))
    if v < 0 or v > 0xFFFFFFFF:
        raise EncodeError(MALFORMED, "property 0x%02x value out of range: %r" % (pid, v))
    return v


cdef int _put_prop(Buf* b, int pid, object value) except -1:
    """One property (pid known); user properties and subscription ids may repeat."""
    cdef int kind = PROP_KIND[pid]
    if kind == K_PAIR:
        if isinstance(value, dict):
            value = list(value.items())
        elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (str, bytes)):
            value = [value]
        for item in value:
            try:
                k, v = item
            except (TypeError, ValueError):
                raise EncodeError(MALFORMED, "user property must be a (name, value) pair") from None
            _put1(b, pid)
            _put_str(b, k)
            _put_str(b, v)
        return 0
    if kind == K_VARINT:
        if isinstance(value, int):
            value = (value,)
        elif not isinstance(value, (list, tuple)):
            raise EncodeError(MALFORMED, "subscription identifier must be an int or a list of int")
        for v in value:
            _put1(b, pid)
            _put_varint(b, _int_value(pid, v))
        return 0
    _put1(b, pid)
    if kind == K_BYTE:
        _put1(b, _int_value(pid, value))
    elif kind == K_TWO:
        _put2(b, _int_value(pid, value))
    elif kind == K_FOUR:
        _put4(b, _int_value(pid, value))
    elif kind == K_STR:
        _put_str(b, value)
    else:   # K_BIN
        _put_bin(b, value)
    return 0


cdef int _put_props_body(Buf* b, object props) except -1:
    """The properties themselves, without the length prefix."""
    if not isinstance(props, dict):
        try:
            props = dict(props)
        except (TypeError, ValueError):
            raise EncodeError(MALFORMED, "properties must be a mapping") from None
    for pid, value in (<dict>props).items():
        if not isinstance(pid, int) or not 0 < pid < 64 or PROP_KIND[<int>pid] == 0:
            raise EncodeError(MALFORMED, "unknown property %r" % (pid,))
        _put_prop(b, pid, value)
    return 0


cdef int _put_props(Buf* b, object props) except -1:
    """A property block: Variable Byte Integer length, then the properties (§2.2.2.1)."""
    cdef Buf t
    if not props:
        return _put1(b, 0)
    _buf_init(&t, 128)
    try:
        _put_props_body(&t, props)
        _put_varint(b, t.len)
        _put_raw(b, <const char*>t.data, t.len)
    finally:
        _buf_free(&t)
    return 0


cdef bytes _finish(unsigned int first, Buf* b):
    """Fixed header (first byte + remaining length) followed by the body in b."""
    cdef Py_ssize_t rl = b.len
    cdef unsigned char* q
    if rl > MAX_REMAINING:
        raise EncodeError(PACKET_TOO_LARGE, "packet larger than 268435455 bytes")
    out = PyBytes_FromStringAndSize(NULL, 1 + _varint_size(rl) + rl)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    q[0] = <unsigned char>first
    q = _write_varint(q + 1, rl)
    memcpy(q, b.data, rl)
    return <bytes>out


cdef bytes _small(unsigned int first, const unsigned char* body, Py_ssize_t n):
    """A packet whose remaining length is below 128 (acks, pings)."""
    out = PyBytes_FromStringAndSize(NULL, 2 + n)
    cdef unsigned char* q = <unsigned char*>PyBytes_AS_STRING(out)
    q[0] = <unsigned char>first
    q[1] = <unsigned char>n
    memcpy(q + 2, body, n)
    return <bytes>out


def encode_varint(long long n):
    """The Variable Byte Integer encoding of n (§1.5.5)."""
    cdef unsigned char q[4]
    if n < 0 or n > MAX_REMAINING:
        raise EncodeError(MALFORMED, "variable byte integer out of range: %d" % n)
    return PyBytes_FromStringAndSize(<const char*>q, _write_varint(q, <Py_ssize_t>n) - q)


def encode_properties(props):
    """A v5 property block with its length prefix; b"\\x00" for None or {} (§2.2.2)."""
    cdef Buf b
    _buf_init(&b, 64)
    try:
        _put_props(&b, props)
        return PyBytes_FromStringAndSize(<const char*>b.data, b.len)
    finally:
        _buf_free(&b)


def encode_connect(client_id, int version=4, bint clean_start=True, int keepalive=60,
                   username=None, password=None, will_topic=None, will_payload=b"",
                   int will_qos=0, bint will_retain=False, will_properties=None,
                   properties=None):
    """CONNECT (§3.1). The will is present when ``will_topic`` is not None."""
    cdef Buf b
    cdef unsigned int flags = 0
    if version == 3:
        name = b"MQIsdp"
    elif version == 4 or version == 5:
        name = b"MQTT"
    else:
        raise EncodeError(UNSUPPORTED_VERSION, "version must be 3, 4 or 5")
    if clean_start:
        flags |= 2
    if will_topic is not None:
        if not 0 <= will_qos <= 2:
            raise EncodeError(MALFORMED, "will QoS must be 0, 1 or 2")
        flags |= 4 | (will_qos << 3) | (0x20 if will_retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    _buf_init(&b, 128)
    try:
        _put_str(&b, name)
        _put1(&b, version)
        _put1(&b, flags)
        _put2(&b, keepalive)
        if version == 5:
            _put_props(&b, properties)
        _put_str(&b, client_id)
        if will_topic is not None:
            if version == 5:
                _put_props(&b, will_properties)
            _put_str(&b, will_topic)
            _put_bin(&b, will_payload if will_payload is not None else b"")
        if username is not None:
            _put_str(&b, username)
        if password is not None:
            _put_bin(&b, password)
        return _finish(0x10, &b)
    finally:
        _buf_free(&b)


def encode_connack(bint session_present, int reason_code, int version, properties=None):
    """CONNACK (§3.2): v5 always carries a property block, earlier versions never."""
    cdef unsigned char body[2]
    cdef Buf b
    if not 0 <= reason_code <= 255:
        raise EncodeError(MALFORMED, "reason code out of range")
    body[0] = 1 if session_present else 0
    body[1] = <unsigned char>reason_code
    if version != 5:
        return _small(0x20, body, 2)
    _buf_init(&b, 64)
    try:
        _put_raw(&b, <const char*>body, 2)
        _put_props(&b, properties)
        return _finish(0x20, &b)
    finally:
        _buf_free(&b)


cdef bytes _build_publish(unsigned int first, const char* t, Py_ssize_t tl, Py_ssize_t pid,
                          bint v5, const unsigned char* props, Py_ssize_t plen,
                          const char* d, Py_ssize_t dl):
    cdef Py_ssize_t rl = 2 + tl + dl
    cdef unsigned char* q
    if pid >= 0:
        rl += 2
    if v5:
        rl += _varint_size(plen) + plen
    if rl > MAX_REMAINING:
        raise EncodeError(PACKET_TOO_LARGE, "packet larger than 268435455 bytes")
    out = PyBytes_FromStringAndSize(NULL, 1 + _varint_size(rl) + rl)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    q[0] = <unsigned char>first
    q = _write_varint(q + 1, rl)
    q[0] = <unsigned char>(tl >> 8)
    q[1] = <unsigned char>tl
    memcpy(q + 2, t, tl)
    q += 2 + tl
    if pid >= 0:
        q[0] = <unsigned char>(pid >> 8)
        q[1] = <unsigned char>pid
        q += 2
    if v5:
        q = _write_varint(q, plen)
        if plen:
            memcpy(q, props, plen)
            q += plen
    memcpy(q, d, dl)
    return <bytes>out


def encode_publish(topic, payload, int qos=0, bint retain=False, bint dup=False,
                   int packet_id=0, int version=4, properties=None):
    """PUBLISH (§3.3); ``packet_id`` is written only for QoS 1 and 2.

    The broker's hot path: without properties it is one allocation and three
    memcpy calls. Content is not checked (an empty or wildcard topic encodes).
    """
    cdef const char* t
    cdef const char* d
    cdef Py_ssize_t tl, dl
    cdef unsigned int first
    cdef Buf pb
    t = _str_data(topic, &tl)
    if tl > MAX_STRING:
        raise EncodeError(MALFORMED, "topic longer than 65535 bytes")
    if type(payload) is not bytes:
        payload = _as_bytes(payload)
    d = PyBytes_AS_STRING(payload)
    dl = PyBytes_GET_SIZE(payload)
    if qos < 0 or qos > 2:
        raise EncodeError(MALFORMED, "QoS must be 0, 1 or 2")
    if qos and (packet_id < 0 or packet_id > 65535):
        raise EncodeError(MALFORMED, "packet identifier out of range")
    first = 0x30 | (qos << 1) | (8 if dup else 0) | (1 if retain else 0)
    if version != 5 or not properties:
        return _build_publish(first, t, tl, packet_id if qos else -1, version == 5,
                              NULL, 0, d, dl)
    _buf_init(&pb, 128)
    try:
        _put_props_body(&pb, properties)
        if pb.len > MAX_REMAINING:
            raise EncodeError(PACKET_TOO_LARGE, "properties too large")
        return _build_publish(first, t, tl, packet_id if qos else -1, True,
                              pb.data, pb.len, d, dl)
    finally:
        _buf_free(&pb)


def encode_ack(int packet_type, int packet_id, int reason_code=0, int version=4,
               properties=None):
    """PUBACK/PUBREC/PUBREL/PUBCOMP (§3.4–§3.7).

    v5 leaves out the reason code and properties when the code is 0 and there
    are no properties, and the properties when there are none (§3.4.2.1).
    """
    cdef unsigned char body[3]
    cdef unsigned int first
    cdef Buf b
    if packet_type < PUBACK or packet_type > PUBCOMP:
        raise EncodeError(MALFORMED, "not an acknowledgement type: %d" % packet_type)
    if packet_id < 0 or packet_id > 65535:
        raise EncodeError(MALFORMED, "packet identifier out of range")
    if reason_code < 0 or reason_code > 255:
        raise EncodeError(MALFORMED, "reason code out of range")
    first = (packet_type << 4) | (2 if packet_type == PUBREL else 0)   # [MQTT-3.6.1-1]
    body[0] = <unsigned char>(packet_id >> 8)
    body[1] = <unsigned char>packet_id
    body[2] = <unsigned char>reason_code
    if version != 5 or (reason_code == 0 and not properties):
        return _small(first, body, 2)
    if not properties:
        return _small(first, body, 3)
    _buf_init(&b, 64)
    try:
        _put_raw(&b, <const char*>body, 3)
        _put_props(&b, properties)
        return _finish(first, &b)
    finally:
        _buf_free(&b)


def encode_subscribe(int packet_id, topics, int version=4, properties=None):
    """SUBSCRIBE (§3.8): ``topics`` is a list of (filter, option byte)."""
    cdef Buf b
    _buf_init(&b, 128)
    try:
        _put2(&b, packet_id)
        if version == 5:
            _put_props(&b, properties)
        for filt, options in topics:
            _put_str(&b, filt)
            _put1(&b, options)
        return _finish(0x82, &b)
    finally:
        _buf_free(&b)


cdef bytes _codes_packet(unsigned int first, int packet_id, object codes, bint v5,
                         object properties, bint with_codes):
    cdef Buf b
    _buf_init(&b, 64)
    try:
        _put2(&b, packet_id)
        if v5:
            _put_props(&b, properties)
        if with_codes:
            for code in codes:
                _put1(&b, code)
        return _finish(first, &b)
    finally:
        _buf_free(&b)


def encode_suback(int packet_id, reason_codes, int version=4, properties=None):
    """SUBACK (§3.9): one reason code (v3: return code) per topic filter."""
    return _codes_packet(0x90, packet_id, reason_codes, version == 5, properties, True)


def encode_unsubscribe(int packet_id, topics, int version=4, properties=None):
    """UNSUBSCRIBE (§3.10)."""
    cdef Buf b
    _buf_init(&b, 128)
    try:
        _put2(&b, packet_id)
        if version == 5:
            _put_props(&b, properties)
        for filt in topics:
            _put_str(&b, filt)
        return _finish(0xA2, &b)
    finally:
        _buf_free(&b)


def encode_unsuback(int packet_id, reason_codes=(), int version=4, properties=None):
    """UNSUBACK (§3.11): before v5 it is the packet identifier alone."""
    return _codes_packet(0xB0, packet_id, reason_codes, version == 5, properties, version == 5)


def encode_pingreq():
    """PINGREQ (§3.12)."""
    return b"\xc0\x00"


def encode_pingresp():
    """PINGRESP (§3.13)."""
    return b"\xd0\x00"


cdef bytes _code_props_packet(unsigned int first, int reason_code, object properties):
    cdef unsigned char rc
    cdef Buf b
    if reason_code < 0 or reason_code > 255:
        raise EncodeError(MALFORMED, "reason code out of range")
    rc = <unsigned char>reason_code
    if not properties:
        if reason_code == 0:
            return _small(first, &rc, 0)
        return _small(first, &rc, 1)
    _buf_init(&b, 64)
    try:
        _put1(&b, reason_code)
        _put_props(&b, properties)
        return _finish(first, &b)
    finally:
        _buf_free(&b)


def encode_disconnect(int reason_code=0, int version=4, properties=None):
    """DISCONNECT (§3.14): b"\\xe0\\x00" before v5, and in v5 for code 0 without properties."""
    if version != 5:
        return b"\xe0\x00"
    return _code_props_packet(0xE0, reason_code, properties)


def encode_auth(int reason_code=0, properties=None):
    """AUTH (§3.15, v5 only)."""
    return _code_props_packet(0xF0, reason_code, properties)


# --------------------------------------------------------------------------
# Patching an encoded PUBLISH without re-encoding it


cdef Py_ssize_t _publish_header(bytes packet) except -1:
    """Offset of the topic length field of the PUBLISH in ``packet``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(packet)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(packet), i = 1
    if n < 2 or (p[0] >> 4) != PUBLISH:
        raise EncodeError(MALFORMED, "not a PUBLISH packet")
    _read_varint(p, n, &i)
    return i


def set_packet_id(bytes packet not None, int packet_id):
    """A copy of a QoS 1/2 PUBLISH with its packet identifier replaced (§3.3.2.2)."""
    cdef Py_ssize_t i = _publish_header(packet), off, n = PyBytes_GET_SIZE(packet)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(packet)
    cdef unsigned char* q
    if not p[0] & 6:
        raise EncodeError(MALFORMED, "a QoS 0 PUBLISH has no packet identifier")
    if packet_id < 0 or packet_id > 65535:
        raise EncodeError(MALFORMED, "packet identifier out of range")
    if n - i < 2:
        raise EncodeError(MALFORMED, "truncated PUBLISH")
    off = i + 2 + ((<Py_ssize_t>p[i] << 8) | p[i + 1])
    if n - off < 2:
        raise EncodeError(MALFORMED, "truncated PUBLISH")
    out = PyBytes_FromStringAndSize(<const char*>p, n)
    q = <unsigned char*>PyBytes_AS_STRING(out)
    q[off] = <unsigned char>(packet_id >> 8)
    q[off + 1] = <unsigned char>packet_id
    return out


cdef bytes _with_flag(bytes packet, unsigned int bit, bint on):
    cdef const char* p = PyBytes_AS_STRING(packet)
    cdef unsigned int b0 = <unsigned char>p[0]
    cdef unsigned int nb0 = (b0 | bit) if on else (b0 & ~bit)
    cdef char* q
    _publish_header(packet)
    if nb0 == b0:
        return packet       # bytes are immutable: the same object is as good as a copy
    out = PyBytes_FromStringAndSize(p, PyBytes_GET_SIZE(packet))
    q = PyBytes_AS_STRING(out)
    q[0] = <char>nb0
    return <bytes>out


def set_dup(bytes packet not None, bint dup):
    """The PUBLISH with its DUP flag set or cleared (§3.3.1.1)."""
    return _with_flag(packet, 8, dup)


def set_retain(bytes packet not None, bint retain):
    """The PUBLISH with its RETAIN flag set or cleared (§3.3.1.3)."""
    return _with_flag(packet, 1, retain)
