"""MQTT over TLS, mutual TLS, WebSocket and secure WebSocket (issue 5).

Real broker processes, certificates made here with `cryptography`
(tls_helpers.py), paho-mqtt over every transport, and raw ssl / WebSocket
clients where the exact bytes or the TLS alert matter. The broker with every
listener runs with 1 and 2 workers: each worker binds each listener with
SO_REUSEPORT, and delivery must cross listeners (and workers) both ways.
"""
from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, free_port
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_helpers import (
    CONNACK,
    PUBLISH,
    SUBACK,
    V5,
    V311,
    Packet,
    PahoClient,
    connect,
    disconnect,
    parse_connack,
    parse_publish,
    publish,
    sub_options,
    subscribe,
)
from tls_helpers import PKI, Pair, make_pki
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from bwfast.websocket import CONTROL, DATA, FrameError, FrameSplitter

pytestmark = pytest.mark.bwfast_only
HOST = "127.0.0.1"
WS_PATH = "/mqtt"
TIMEOUT = 5.0


# ---------------------------------------------------------------- brokers

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Listeners(Broker):
    """A broker with TLS, WS and WSS beside plain MQTT, on free ports."""

    def __init__(self, root: Path, pki: PKI, workers: int, *, mutual: bool = True,
                 identity: bool = False, auth: bool = False) -> None:
        self.tls_port, self.ws_port, self.wss_port = free_port(), free_port(), free_port()
        conf: dict[str, Any] = {
            "tls.enabled": True, "tls.port": self.tls_port,
            "tls.certfile": pki.server.cert, "tls.keyfile": pki.server.key,
            "websocket.enabled": True, "websocket.port": self.ws_port,
            "websocket.tls_port": self.wss_port, "websocket.path": WS_PATH,
        }
        if mutual:
            conf |= {"tls.cafile": pki.ca, "tls.require_certificate": True}
        if identity:
            conf["tls.use_identity_as_username"] = True
        if auth:
            conf["authentication.enabled"] = True
        super().__init__(root, conf, workers)

    def start(self) -> Listeners:
        super().start()
        # Ready means every listener of every worker: wait for the other ports too.
        for port in (self.tls_port, self.ws_port, self.wss_port):
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    socket.create_connection((self.host, port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"port {port} never accepted"
                    time.sleep(0.05)
        return self


def _run(broker: Listeners) -> Iterator[Listeners]:
    broker.start()
    yield broker
    if not broker.alive():
        print(broker.log_tail())
    broker.stop()
    assert "Traceback" not in broker.log_path.read_text(), broker.log_tail()


@pytest.fixture(scope="module", params=[1, 2], ids=lambda w: f"workers{w}")
def mutual(request: pytest.FixtureRequest, pki: PKI,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    """Mutual TLS on the TLS and WSS listeners; plain MQTT and WS beside them."""
    root = tmp_path_factory.mktemp(f"mutual{request.param}")
    yield from _run(Listeners(root, pki, request.param))


@pytest.fixture(scope="module")
def server_only(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    """TLS without client certificates."""
    yield from _run(Listeners(tmp_path_factory.mktemp("server_only"), pki, 1, mutual=False))


@pytest.fixture(scope="module")
def identity(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    """[authentication] on, and the client certificate's CN is the username."""
    yield from _run(Listeners(tmp_path_factory.mktemp("identity"), pki, 2,
                              identity=True, auth=True))


# ---------------------------------------------------------------- clients

_ids = iter(range(10**6))


def cid(tag: str) -> str:
    return f"tw{tag}{next(_ids)}"[:23]


def paho(broker: Listeners, kind: str, pki: PKI, *, cert: Pair | None = None,
         protocol: int = V311, client_id: str | None = None, do_connect: bool = True,
         username: str | None = None, password: str | None = None) -> PahoClient:
    """A paho client on one listener: "mqtt", "tls", "ws" or "wss"."""
    port = {"mqtt": broker.port, "tls": broker.tls_port,
            "ws": broker.ws_port, "wss": broker.wss_port}[kind]
    c = PahoClient(HOST, port, client_id or cid(kind), protocol=protocol)
    if kind in ("ws", "wss"):
        c.client.transport = "websockets"
        c.client.ws_set_options(path=WS_PATH)
    if kind in ("tls", "wss"):
        c.client.tls_set(ca_certs=str(pki.ca), certfile=str(cert.cert) if cert else None,
                         keyfile=str(cert.key) if cert else None)
    if username is not None:
        c.client.username_pw_set(username, password)
    if do_connect:
        _, rc, _ = c.connect()
        assert rc == 0, f"{kind} CONNECT refused with {rc:#x}"
    return c


@pytest.fixture
def clients() -> Iterator[list[PahoClient]]:
    made: list[PahoClient] = []
    yield made
    for c in made:
        c.close()


def client_context(pki: PKI, cert: Pair | None, *,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def tls_refusal(port: int, ctx: ssl.SSLContext) -> None:
    """Handshake and CONNECT; the broker must drop the connection at once, before
    any CONNACK.

    With TLS 1.3 the server checks the client certificate after the client's
    side of the handshake has finished, so the refusal shows at the first read.
    asyncio's and uvloop's SSL transports close without sending the TLS alert
    OpenSSL prepared (CPython gh-98078), so the client sees the connection end
    rather than a named alert; what matters is that no MQTT gets through.
    """
    started = time.monotonic()
    data = b""
    try:
        with socket.create_connection((HOST, port), timeout=TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(connect(cid("bad")))
            data = s.recv(16)
    except (ssl.SSLError, ConnectionError):
        pass
    assert data == b"", f"a client the broker should refuse got {data!r}"
    assert time.monotonic() - started < 2, "refused only by a timeout"


def assert_alive(c: PahoClient, topic: str) -> None:
    """The client still gets its own messages back: it carried on unharmed."""
    c.subscribe(topic, 1)
    c.publish(topic, b"still here", 1)
    assert c.get().payload == b"still here"


class WSClient:
    """MQTT bytes over a WebSocket (websockets' sync client): exact framing control."""

    def __init__(self, broker: Listeners, *, subprotocols: list[str] | None = None,
                 secure: ssl.SSLContext | None = None) -> None:
        scheme, port = ("wss", broker.wss_port) if secure else ("ws", broker.ws_port)
        self.ws: ClientConnection = ws_connect(
            f"{scheme}://{HOST}:{port}{WS_PATH}", ssl=secure,
            subprotocols=[Subprotocol(s) for s in subprotocols or ["mqtt"]],
            open_timeout=TIMEOUT, legacy=True, server_hostname="localhost" if secure else None)
        self.buf = bytearray()

    def packet(self, timeout: float = TIMEOUT) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            p = self._split()
            if p is not None:
                return p
            data = self.ws.recv(timeout=max(0.01, deadline - time.monotonic()))
            assert isinstance(data, bytes), "MQTT must come in binary frames [MQTT-6.0.0-1]"
            self.buf += data

    def _split(self) -> Packet | None:
        buf, length, mult, i = self.buf, 0, 1, 1
        while i < len(buf):
            length += (buf[i] & 0x7F) * mult
            mult *= 128
            i += 1
            if not buf[i - 1] & 0x80:
                if len(buf) < i + length:
                    return None
                first, body = buf[0], bytes(buf[i:i + length])
                del buf[:i + length]
                return Packet(first >> 4, first & 0x0F, body)
        return None

    def close(self) -> None:
        self.ws.close()


# ---------------------------------------------------------------- delivery

def test_cross_listener_delivery_both_ways(mutual: Listeners, pki: PKI,
                                          clients: list[PahoClient]) -> None:
    """Two clients on each of TCP, TLS, WS, WSS (so with 2 workers some sit on
    each): every message reaches every subscriber, whichever listener it
    came in on, in both directions and at QoS 1."""
    kinds = ["mqtt", "tls", "ws", "wss"] * 2
    prefix = f"x/{cid('cross')}"
    for i, kind in enumerate(kinds):
        c = paho(mutual, kind, pki, cert=pki.client, protocol=V5 if i % 2 else V311)
        clients.append(c)
        assert c.subscribe(f"{prefix}/#", 1) == [1]
    for i, (kind, c) in enumerate(zip(kinds, clients, strict=True)):
        c.publish(f"{prefix}/{kind}/{i}", f"from {kind} {i}".encode() * 50, 1)
    want = {f"{prefix}/{kind}/{i}" for i, kind in enumerate(kinds)}
    for kind, c in zip(kinds, clients, strict=True):
        got = c.get_n(len(kinds))
        assert {m.topic for m in got} == want, f"{kind} subscriber"
        assert all(m.qos == 1 and m.payload.startswith(b"from ") for m in got)


def test_server_only_tls_and_wss(server_only: Listeners, pki: PKI,
                                 clients: list[PahoClient]) -> None:
    """Without require_certificate a client needs only to trust the server."""
    topic = f"so/{cid('so')}"
    tls = paho(server_only, "tls", pki)
    wss = paho(server_only, "wss", pki)
    clients += [tls, wss]
    wss.subscribe(topic, 1)
    tls.publish(topic, b"tls to wss", 1)
    assert wss.get().payload == b"tls to wss"
    tls.subscribe(topic + "/back", 1)
    wss.publish(topic + "/back", b"wss to tls", 1)
    assert tls.get().payload == b"wss to tls"


def test_mutual_tls_over_tls12(mutual: Listeners, pki: PKI) -> None:
    """Older gateways speak TLS 1.2: accepted with a good certificate, and a
    missing certificate fails inside the handshake there too."""
    ok = client_context(pki, pki.client, max_version=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection((HOST, mutual.tls_port), timeout=TIMEOUT) as raw, \
            ok.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() == "TLSv1.2"
        s.sendall(connect(cid("t12")))
        assert s.recv(4) == b"\x20\x02\x00\x00"
    bare = client_context(pki, None, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError), \
            socket.create_connection((HOST, mutual.tls_port), timeout=TIMEOUT) as raw:
        bare.wrap_socket(raw, server_hostname="localhost")


# ---------------------------------------------------------------- refusals

def test_bad_clients_are_refused_while_others_carry_on(mutual: Listeners, pki: PKI,
                                                       clients: list[PahoClient]) -> None:
    """Expired, untrusted or missing client certificates fail the handshake;
    plain MQTT on the TLS port and HTTP on the WebSocket port are turned away;
    the clients already connected on every listener don't notice."""
    steady = {kind: paho(mutual, kind, pki, cert=pki.client)
              for kind in ("mqtt", "tls", "ws", "wss")}
    clients += steady.values()

    for port in (mutual.tls_port, mutual.wss_port):  # WSS holds the same context
        for cert in (pki.client_expired, pki.client_untrusted, None):
            tls_refusal(port, client_context(pki, cert))

    # paho sees the same refusal: no CONNACK, however the failure surfaces.
    bad = paho(mutual, "tls", pki, cert=pki.client_untrusted, do_connect=False)
    clients.append(bad)
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        bad.connect(timeout=2)

    # Plain MQTT to the TLS port: no CONNACK, the socket closes at once.
    with socket.create_connection((HOST, mutual.tls_port), timeout=TIMEOUT) as s:
        s.sendall(connect(cid("plain")))
        started = time.monotonic()
        assert s.recv(16) == b""
        assert time.monotonic() - started < 2

    # An HTTP GET (no upgrade) and a WebSocket upgrade on the wrong path.
    assert http_status(mutual.ws_port, f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\n\r\n") == 426
    assert http_status(mutual.ws_port, "GET /other HTTP/1.1\r\nHost: x\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n") == 404
    assert http_status(mutual.ws_port, "\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\r\n\r\n") == 400

    for kind, c in steady.items():
        assert c.client.is_connected(), kind
        assert_alive(c, f"alive/{cid(kind)}")


def http_status(port: int, request: str) -> int:
    """Send one request; return the response's status; the socket must then close."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as s:
        s.sendall(request.encode("latin-1"))
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1.1 "), data[:200]
    return int(status_line.split()[1])


def test_websocket_subprotocols(mutual: Listeners) -> None:
    """[MQTT-6.0.0-4]: the server answers with the MQTT subprotocol offered;
    an offer of only other subprotocols is a 400."""
    for offered, chosen in ((["mqtt"], "mqtt"), (["mqttv3.1"], "mqttv3.1"),
                            (["chat", "mqtt"], "mqtt")):
        c = WSClient(mutual, subprotocols=offered)
        assert c.ws.subprotocol == chosen
        c.close()
    assert http_status(mutual.ws_port, f"GET {WS_PATH} HTTP/1.1\r\nHost: x\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n") == 400


# ---------------------------------------------------------------- WebSocket framing

@pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
def test_packets_split_across_and_packed_into_frames(mutual: Listeners, version: int) -> None:
    """[MQTT-6.0.0-2]: packets need not line up with frames. CONNECT arrives in
    three frames (one of them a fragmented message), SUBSCRIBE and two
    PUBLISHes in one frame; PINGs are answered by the WebSocket layer."""
    ws = WSClient(mutual)
    topic = f"ws/{cid('split')}"
    data = connect(cid("split"), version=version)
    ws.ws.send(data[:3])
    ws.ws.send([data[3:7], data[7:-1]])  # one message in two frames (continuation)
    assert ws.ws.ping(b"p1").wait(TIMEOUT)
    ws.ws.send(data[-1:])
    assert parse_connack(ws.packet(), version).rc == 0
    packed = (subscribe(1, [(topic, sub_options(0))], version=version)
              + publish(topic, b"one", version=version)
              + publish(topic, b"two" * 10000, version=version))
    ws.ws.send(packed)
    # §3.8.4: matching PUBLISHes may come before the SUBACK.
    got = [ws.packet() for _ in range(3)]
    assert [p.ptype for p in got].count(SUBACK) == 1
    payloads = [parse_publish(p, version).payload for p in got if p.ptype == PUBLISH]
    assert payloads == [b"one", b"two" * 10000]
    ws.close()


def test_close_handshakes(mutual: Listeners, pki: PKI, clients: list[PahoClient]) -> None:
    """A client's close frame is echoed (RFC 6455 §5.5.1); MQTT DISCONNECT makes
    the broker close with 1000; a text frame is refused with 1003
    [MQTT-6.0.0-1]; a WebSocket close without DISCONNECT publishes the will."""
    watcher = paho(mutual, "mqtt", pki)
    clients.append(watcher)
    will_topic = f"will/{cid('will')}"
    watcher.subscribe(will_topic, 1)

    # Client-initiated close, no DISCONNECT: the will goes out.
    c = WSClient(mutual)
    c.ws.send(connect(cid("cl"), will_topic=will_topic, will_payload=b"gone", will_qos=1))
    assert c.packet().ptype == CONNACK
    c.close()
    assert c.ws.protocol.close_rcvd is not None and c.ws.protocol.close_rcvd.code == 1000
    assert watcher.get().payload == b"gone"

    # MQTT DISCONNECT: the broker starts the WebSocket close, no will.
    c = WSClient(mutual)
    c.ws.send(connect(cid("dc"), will_topic=will_topic, will_payload=b"not this"))
    assert c.packet().ptype == CONNACK
    c.ws.send(disconnect())
    with pytest.raises(ConnectionClosed) as info:
        c.ws.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000

    # A text frame: close 1003.
    c = WSClient(mutual)
    c.ws.send(connect(cid("txt")))
    assert c.packet().ptype == CONNACK
    c.ws.send("text is not MQTT")
    with pytest.raises(ConnectionClosed) as info:
        c.ws.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1003
    assert watcher.drain(0.3) == []


def test_wss_raw_framing(mutual: Listeners, pki: PKI) -> None:
    """The WSS listener: TLS underneath, the same WebSocket handling on top."""
    c = WSClient(mutual, secure=client_context(pki, pki.client))
    topic = f"wss/{cid('wss')}"
    c.ws.send(connect(cid("wss")) + subscribe(1, [(topic, 1)]))
    assert c.packet().ptype == CONNACK
    assert c.packet().ptype == SUBACK
    c.ws.send(publish(topic, b"over wss"))
    p = c.packet()
    assert p.ptype == PUBLISH and parse_publish(p, V311).payload == b"over wss"
    c.close()


# ---------------------------------------------------------------- the frame splitter (no I/O)

def _client_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    """A masked client frame, serialized by websockets (an independent encoder)."""
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


# A stream item: a binary message in 1..3 frames, or a ping between frames.
_messages = st.lists(st.one_of(
    st.tuples(st.just("data"), st.lists(st.binary(max_size=300), min_size=1, max_size=3)),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
    st.tuples(st.just("big"), st.integers(126, 70000))), max_size=8)


@settings(max_examples=200, deadline=None)
@given(messages=_messages, cuts=st.lists(st.integers(0, 10**6), max_size=20),
       ping_inside=st.booleans())
def test_frame_splitter_random_splits(messages: list[tuple[str, Any]], cuts: list[int],
                                      ping_inside: bool) -> None:
    """Whatever the read boundaries, binary payloads come out unmasked and in
    order, and control frames come out whole (a ping may sit between the
    fragments of a message, RFC 6455 §5.4)."""
    stream, want = b"", []
    for kind, value in messages:
        if kind == "ping":
            raw = _client_frame(Opcode.PING, value)
            stream += raw
            want.append((CONTROL, raw))
            continue
        parts = value if kind == "data" else [bytes(range(256)) * (value // 256 + 1)][:1]
        for i, part in enumerate(parts):
            op = Opcode.BINARY if i == 0 else Opcode.CONT
            stream += _client_frame(op, part, fin=i == len(parts) - 1)
            if part:
                want.append((DATA, part))
            if ping_inside and i < len(parts) - 1:
                raw = _client_frame(Opcode.PING, b"mid")
                stream += raw
                want.append((CONTROL, raw))
    splitter, got = FrameSplitter(1 << 20), []  # type: ignore[var-annotated]
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in zip(bounds, bounds[1:], strict=False):
        splitter.feed(stream[a:b], got)
    assert got == want
    assert splitter.take() == b""


def test_frame_splitter_one_byte_at_a_time() -> None:
    pong = _client_frame(Opcode.PONG, b"")
    stream = (_client_frame(Opcode.BINARY, b"ab", fin=False) + pong
              + _client_frame(Opcode.CONT, b"c" * 200) + _client_frame(Opcode.BINARY, b""))
    splitter, got = FrameSplitter(1 << 20), []  # type: ignore[var-annotated]
    for i in range(len(stream)):
        splitter.feed(stream[i:i + 1], got)
    assert got == [(DATA, b"ab"), (CONTROL, pong), (DATA, b"c" * 200)]  # pong whole, masked


def _unmasked(opcode: int, data: bytes) -> bytes:
    return bytes([0x80 | opcode, len(data)]) + data


@pytest.mark.parametrize(("stream", "code", "in_message"), [
    (_unmasked(2, b"x"), CloseCode.PROTOCOL_ERROR, False),                   # §5.1
    (bytes([0xC2]) + _client_frame(Opcode.BINARY, b"x")[1:], CloseCode.PROTOCOL_ERROR, False),
    (_client_frame(Opcode.TEXT, b"x"), CloseCode.UNSUPPORTED_DATA, False),  # [MQTT-6.0.0-1]
    (_client_frame(Opcode.CONT, b"x"), CloseCode.PROTOCOL_ERROR, False),    # §5.4
    (_client_frame(Opcode.BINARY, b"y"), CloseCode.PROTOCOL_ERROR, True),
    (bytes([0x83, 0x80, 0, 0, 0, 0]), CloseCode.PROTOCOL_ERROR, False),      # opcode 3
    (bytes([0x09, 0x80, 0, 0, 0, 0]), CloseCode.PROTOCOL_ERROR, False),      # fragmented ping
    (bytes([0x89, 0xFE, 0, 200]), CloseCode.PROTOCOL_ERROR, False),          # ping > 125
    (bytes([0x82, 0xFE, 0x01, 0x00]), CloseCode.MESSAGE_TOO_BIG, False),     # header alone
], ids=["unmasked", "rsv", "text", "cont-first", "binary-in-message", "opcode",
        "fragmented-ping", "long-ping", "too-big"])
def test_frame_splitter_refuses(stream: bytes, code: int, in_message: bool) -> None:
    """Violations fail the connection with the right close code as soon as
    the header shows them; frames before the bad one are still delivered."""
    good = _client_frame(Opcode.BINARY, b"ok", fin=not in_message)
    splitter, got = FrameSplitter(255), []  # type: ignore[var-annotated]
    with pytest.raises(FrameError) as info:
        splitter.feed(good + stream, got)
    assert info.value.code == code
    assert got == [(DATA, b"ok")]


def test_raw_websocket_byte_by_byte(mutual: Listeners) -> None:
    """The upgrade request with frames right behind it in one segment (a
    CONNECT and a PING), then SUBSCRIBE and PUBLISH one byte per segment: the
    broker answers the ping, and the MQTT flow is intact."""
    topic = f"raw/{cid('raw')}"
    request = (f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").encode()
    first = (request + _client_frame(Opcode.BINARY, connect(cid("raw"), version=V5))
             + _client_frame(Opcode.PING, b"hello"))
    rest = (_client_frame(Opcode.BINARY, subscribe(1, [(topic, 0)], version=V5))
            + _client_frame(Opcode.BINARY, publish(topic, b"bytewise", version=V5)))
    with socket.create_connection((HOST, mutual.ws_port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(first)
        for i in range(len(rest)):
            sock.sendall(rest[i:i + 1])
            if i % 7 == 0:
                time.sleep(0.001)
        reader = ServerFrames(sock)
        assert reader.response.startswith(b"HTTP/1.1 101 ")
        assert b"sec-websocket-protocol: mqtt" in reader.response.lower()
        mqtt_bytes, pongs = b"", []
        while b"bytewise" not in mqtt_bytes:
            opcode, payload = reader.frame()
            if opcode == Opcode.PONG:
                pongs.append(payload)
            else:
                assert opcode == Opcode.BINARY
                mqtt_bytes += payload
        assert pongs == [b"hello"]
        assert mqtt_bytes.startswith(b"\x20")  # CONNACK first


def test_refused_connect_right_behind_the_upgrade(mutual: Listeners) -> None:
    """A CONNECT refused at once ([MQTT-3.1.2-2], unknown protocol level), sent
    in the same segment as the upgrade: 101 first, then the CONNACK, then a
    close frame."""
    request = (f"GET {WS_PATH} HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n").encode()
    bad = connect(cid("lvl"), version=V311).replace(b"MQTT\x04", b"MQTT\x09", 1)
    with socket.create_connection((HOST, mutual.ws_port), timeout=TIMEOUT) as sock:
        sock.sendall(request + _client_frame(Opcode.BINARY, bad))
        reader = ServerFrames(sock)
        assert reader.response.startswith(b"HTTP/1.1 101 ")
        assert reader.frame() == (Opcode.BINARY, b"\x20\x02\x00\x01")
        opcode, payload = reader.frame()
        assert opcode == Opcode.CLOSE and payload[:2] == b"\x03\xe8"  # 1000


class ServerFrames:
    """Reads the 101 response, then unmasked server frames, off a raw socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        self.response, _, self.buf = self.buf.partition(b"\r\n\r\n")

    def _more(self) -> None:
        data = self.sock.recv(65536)
        assert data, "connection closed"
        self.buf += data

    def _need(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def frame(self) -> tuple[int, bytes]:
        b0, b1 = self._need(2)
        assert not b1 & 0x80, "server frames are not masked (RFC 6455 §5.1)"
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._need(2), "big")
        elif length == 127:
            length = int.from_bytes(self._need(8), "big")
        return b0 & 0x0F, self._need(length)


# ---------------------------------------------------------------- identity

def test_identity_as_username(identity: Listeners, pki: PKI,
                              clients: list[PahoClient]) -> None:
    """With [authentication] on and use_identity_as_username, the certificate
    (CN=device-7) is the credential on TLS and WSS: no password needed, and
    a wrong one is ignored. Plain TCP still needs a password."""
    tls = paho(identity, "tls", pki, cert=pki.client)
    wss = paho(identity, "wss", pki, cert=pki.client, protocol=V5,
               username="someone-else", password="wrong")
    clients += [tls, wss]
    topic = f"id/{cid('id')}"
    wss.subscribe(topic, 1)
    tls.publish(topic, b"by certificate", 1)
    assert wss.get().payload == b"by certificate"

    for kind in ("mqtt", "ws"):
        anon = paho(identity, kind, pki, do_connect=False)
        clients.append(anon)
        _, rc, _ = anon.connect()
        # paho reports v3.1.1 CONNACK codes 4/5 as reason codes 0x86/0x87.
        assert rc in (0x86, 0x87), f"{kind}: anonymous CONNECT got {rc:#x}"


# ---------------------------------------------------------------- refusing to start

def _broker_conf(tmp: Path, pki: PKI, **tls: Any) -> Path:
    ports = {"port": free_port(), "tls": free_port(), "ws": free_port(), "wss": free_port()}
    tls = {"certfile": pki.server.cert, "keyfile": pki.server.key, **tls}
    lines = ["[broker]", f"host = {HOST}", f"port = {ports['port']}", "workers = 1",
             f"data_dir = {tmp / 'data'}", "[api]", "enabled = false",
             "[tls]", "enabled = true", f"port = {tls.pop('port', ports['tls'])}"]
    lines += [f"{k} = {v}" for k, v in tls.items()]
    lines += ["[websocket]", "enabled = true", f"port = {ports['ws']}",
              f"tls_port = {ports['wss']}"]
    path = tmp / "broker.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def _refuses_to_start(tmp: Path, conf: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "bwfast", "--config", str(conf)], cwd=tmp,
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_certfile_refuses_to_start(tmp_path: Path, pki: PKI) -> None:
    missing = tmp_path / "nope.crt"
    line = _refuses_to_start(tmp_path, _broker_conf(tmp_path, pki, certfile=missing))
    assert "[tls] certfile" in line and str(missing) in line, line


def test_key_not_matching_cert_refuses_to_start(tmp_path: Path, pki: PKI) -> None:
    line = _refuses_to_start(tmp_path, _broker_conf(tmp_path, pki, keyfile=pki.stray_key))
    assert "[tls] keyfile" in line and str(pki.stray_key) in line, line
    assert "does not match" in line, line


def test_tls_port_in_use_refuses_to_start(tmp_path: Path, pki: PKI) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _refuses_to_start(tmp_path, _broker_conf(tmp_path, pki, port=port))
    assert "[tls] port" in line and str(port) in line, line
