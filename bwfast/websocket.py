"""MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): an asyncio.Protocol that speaks
the HTTP upgrade and the WebSocket framing, and hands the MQTT bytes to an
ordinary :class:`~bwfast.protocol.Connection`.

The ``websockets`` library's sans-I/O ``ServerProtocol`` does everything that
needs care: the opening handshake and its HTTP errors, subprotocol choice,
ping/pong, the closing handshake, failing the connection. Only the hot path
is ours: once the connection is open, :class:`FrameSplitter` cuts the
client's frames, unmasks binary data frames itself and passes every other
frame, whole, to the ServerProtocol. (websockets' generator-based frame
parser costs 4-6 µs a frame; with one MQTT packet per frame, as paho and
browsers send them, that was 2.5x the broker's CPU per message over TCP.)
Because the ServerProtocol is only ever fed whole frames, or the exact bytes
of the HTTP request, its parser always waits at a frame boundary and the two
never disagree about where the stream is. Once the connection is no longer
open (a close frame sent or received, or a failure) every byte goes to the
ServerProtocol again.

Binary payloads go straight into the inner Connection's incremental parser,
so an MQTT packet split over several frames, or several packets packed into
one frame, need no special handling ([MQTT-6.0.0-2]). What the Connection
writes (already coalesced once per loop iteration by the worker's tick)
leaves as one binary frame per write ([MQTT-6.0.0-1]).

The inner Connection sees a :class:`WebSocketTransport`: ``close()`` runs the
closing handshake before TCP closes, ``abort()`` drops the socket, and
``get_extra_info`` answers from the real (TCP or TLS) transport, so the peer
address and, for WSS, the client certificate are there as on the plain
listeners.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from websockets.exceptions import NegotiationError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bwfast.protocol import Connection

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C helper
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from bwfast.worker import Worker

log = logging.getLogger("bwfast.websocket")
# websockets logs every open and close at INFO; that is per-client noise here.
_frames_log = logging.getLogger("bwfast.websocket.frames")
if _frames_log.level == logging.NOTSET:
    _frames_log.setLevel(logging.WARNING)

OP_CONT, OP_TEXT, OP_BINARY = Opcode.CONT, Opcode.TEXT, Opcode.BINARY
# [MQTT-6.0.0-3]/[MQTT-6.0.0-4]: the subprotocol is "mqtt"; MQTT 3.1 clients
# (and some old libraries) offer "mqttv3.1".
SUBPROTOCOLS: tuple[Subprotocol, ...] = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))
HANDSHAKE_TIMEOUT = 10.0  # seconds a socket may take to send its HTTP upgrade
CLOSE_TIMEOUT = 2.0       # seconds the client gets to answer our close frame
MAX_REQUEST = 65536       # bytes of HTTP request before the upgrade is refused
_END_OF_HEADERS = b"\r\n\r\n"
_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 31\r\n\r\n"
                b"Not a valid HTTP/1.1 request.\r\n")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")

DATA, CONTROL = 0, 1  # FrameSplitter items: (DATA, unmasked payload) / (CONTROL, raw frame)


def select_subprotocol(protocol: ServerProtocol,
                       offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """Take the first MQTT subprotocol the client offers.

    A client that offers none is still served (browsers' libraries differ in
    this, as do Mosquitto's and EMQX's defaults); one that offers only other
    subprotocols gets a 400, since it expects something we don't speak.
    """
    for name in offered:
        if name in SUBPROTOCOLS:
            return name
    if offered:
        raise NegotiationError("no MQTT subprotocol offered; expected mqtt or mqttv3.1")
    return None


class FrameError(Exception):
    """A client frame that fails the connection (RFC 6455 §7.1.7), with its close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameSplitter:
    """Client-to-server frames of an open connection (RFC 6455 §5.2), no I/O.

    ``feed`` appends ``(DATA, payload)`` for binary and continuation frames,
    unmasked, and ``(CONTROL, frame bytes)`` for close/ping/pong frames, whole
    and still masked, for websockets to handle. It raises FrameError as soon
    as a frame header shows a violation: an unmasked frame (§5.1), reserved
    bits without a negotiated extension (§5.2), a text frame ([MQTT-6.0.0-1]),
    an unknown opcode, a fragmented or oversized control frame (§5.5), a
    continuation where none is expected or the reverse (§5.4), or a frame
    larger than ``max_frame``. Items appended before the error stand.
    """

    __slots__ = ("buf", "max_frame", "fragmented")

    def __init__(self, max_frame: int) -> None:
        self.buf = bytearray()
        self.max_frame = max_frame
        self.fragmented = False  # inside a binary message sent in several frames

    def feed(self, data: bytes, out: list[tuple[int, bytes]]) -> None:
        buf = self.buf
        buf += data
        n = len(buf)
        pos = 0
        try:
            while n - pos >= 2:
                b0 = buf[pos]
                b1 = buf[pos + 1]
                length = b1 & 0x7F
                head = pos + 2
                if length == 126:
                    if n - head < 2:
                        return
                    length = (buf[head] << 8) | buf[head + 1]
                    head += 2
                elif length == 127:
                    if n - head < 8:
                        return
                    length = int.from_bytes(buf[head:head + 8], "big")
                    head += 8
                opcode = self._check(b0, b1, length)
                end = head + 4 + length
                if n < end:
                    return
                if opcode <= OP_BINARY:
                    self.fragmented = not b0 & 0x80
                    if length:
                        out.append((DATA, apply_mask(buf[head + 4:end], buf[head:head + 4])))
                else:
                    out.append((CONTROL, bytes(buf[pos:end])))
                pos = end
        finally:
            del buf[:pos]

    def _check(self, b0: int, b1: int, length: int) -> int:
        """Validate one frame header; return its opcode. No state changes here:
        the header of a frame still arriving is checked again with the next read."""
        if not b1 & 0x80:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "incorrect masking")
        if b0 & 0x70:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
        opcode = b0 & 0x0F
        if opcode == OP_BINARY or opcode == OP_CONT:
            if (opcode == OP_CONT) != self.fragmented:
                raise FrameError(CloseCode.PROTOCOL_ERROR,
                                 "unexpected continuation frame" if opcode == OP_CONT
                                 else "expected a continuation frame")
            if length > self.max_frame:
                raise FrameError(CloseCode.MESSAGE_TOO_BIG,
                                 f"frame of {length} bytes exceeds {self.max_frame}")
            return opcode
        if opcode == OP_TEXT:
            raise FrameError(CloseCode.UNSUPPORTED_DATA, "MQTT is carried in binary frames")
        if opcode < 8 or opcode > 10:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"invalid opcode {opcode:#x}")
        if length > 125 or not b0 & 0x80:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "control frame too long or fragmented")
        return opcode

    def take(self) -> bytes:
        """What is buffered of the next frame (when websockets takes over the stream)."""
        rest = bytes(self.buf)
        self.buf.clear()
        return rest


def frame_header(length: int) -> bytes:
    """A server's (unmasked, FIN) binary frame header for a payload of ``length``."""
    if length < 126:
        return bytes((0x82, length))
    if length < 65536:
        return _HEAD16.pack(0x82, 126, length)
    return _HEAD64.pack(0x82, 127, length)


class WebSocketTransport:
    """What the inner Connection writes to: MQTT bytes in, WebSocket frames out."""

    __slots__ = ("_ws",)

    def __init__(self, ws: WebSocketConnection) -> None:
        self._ws = ws

    def write(self, data: bytes) -> None:
        self._ws.send(data)

    def writelines(self, chunks: Sequence[bytes]) -> None:
        self._ws.send(b"".join(chunks))

    def close(self) -> None:
        self._ws.close()

    def abort(self) -> None:
        self._ws.abort()

    def is_closing(self) -> bool:
        ws = self._ws
        return ws.protocol.state is not OPEN or ws.transport is None or ws.transport.is_closing()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        t = self._ws.transport
        return t.get_write_buffer_size() if t is not None else 0

    def pause_reading(self) -> None:
        if self._ws.transport is not None:
            self._ws.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._ws.transport is not None:
            self._ws.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """Peer address, socket, TLS details: those of the underlying transport."""
        ws = self._ws
        if name == "subprotocol":
            return ws.protocol.subprotocol
        if name == "path":
            return ws.path
        if ws.transport is None:
            return default
        return ws.transport.get_extra_info(name, default)


class WebSocketConnection(asyncio.Protocol):
    """One TCP (or TLS) connection on a WebSocket listener.

    Until the upgrade succeeds there is no MQTT Connection: a request for
    another path gets 404, one without the upgrade headers 426, any other bad
    handshake a 4xx from websockets, and the socket closes.
    """

    def __init__(self, worker: Worker, listener: str, path: str) -> None:
        self.worker = worker
        self.listener = listener
        self.path = path
        # A frame is bounded as an MQTT packet is (a whole one with its fixed
        # header), since a frame is buffered whole; a message may be any length.
        self.max_frame = max(worker.cfg.broker.max_packet_size + 5, 1 << 16)
        # Until the CONNACK a frame holds the CONNECT (and what follows it): it is
        # bounded as the CONNECT is, so a frame header claiming more is refused
        # before anything of it is buffered (see Connection._hold).
        self.connect_frame = min(self.max_frame, worker.cfg.broker.max_connect_size)
        self.protocol = ServerProtocol(
            subprotocols=list(SUBPROTOCOLS), select_subprotocol=select_subprotocol,
            max_size=(None, self.max_frame), logger=_frames_log)
        self.transport: Any = None
        self.inner: Connection | None = None
        self.frames: FrameSplitter | None = None  # the fast path, while OPEN
        self._request_tail = b""  # last bytes of the request so far, to find its end
        self._request_size = 0
        self._responded = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._timer = self.worker.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        frames = self.frames
        if frames is not None:
            if self.protocol.state is OPEN:
                self._fast(frames, data)
            else:  # we sent a close frame: websockets reads the rest
                self.frames = None
                self._general(frames.take() + data)
        elif self.protocol.state is CONNECTING:
            self._handshake(data)
        else:
            self._general(data)
        self._send_pending()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._send_pending()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.transport = None
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- input ---------------------------------------------------------------------------
    def _handshake(self, data: bytes) -> None:
        """Feed websockets the request's bytes and no more: what follows the blank
        line is already frames, and those take the fast path."""
        if self._responded:
            return  # refused: the socket is closing; ignore what else comes
        seen = self._request_tail + data
        end = seen.find(_END_OF_HEADERS)
        if end < 0:
            self._request_size += len(data)
            if self._request_size > MAX_REQUEST:
                self.protocol.send_response(self.protocol.reject(431, "Request too large\n"))
                self._responded = True
                return
            self._request_tail = seen[-3:]
            self._general(data)
            return
        cut = end + len(_END_OF_HEADERS) - len(self._request_tail)
        self._general(data[:cut])
        if self.frames is not None and data[cut:]:
            self._fast(self.frames, data[cut:])

    def _fast(self, frames: FrameSplitter, data: bytes) -> None:
        inner = self.inner
        if inner is not None and (inner.session is None or inner.held is not None):
            frames.max_frame = self.connect_frame  # not connected yet
        else:
            frames.max_frame = self.max_frame
        items: list[tuple[int, bytes]] = []
        try:
            frames.feed(data, items)
        except FrameError as e:
            self._deliver(items)
            self.frames = None
            if self.protocol.state is OPEN:
                self.protocol.fail(e.code, e.reason)
            return
        self._deliver(items)

    def _deliver(self, items: list[tuple[int, bytes]]) -> None:
        inner = self.inner
        ws = self.protocol
        for i, (kind, payload) in enumerate(items):
            if kind == DATA:
                if inner is not None:
                    inner.data_received(payload)
                continue
            ws.receive_data(payload)  # ping, pong or close: websockets answers
            ws.events_received()
            if ws.state is not OPEN:
                # Closing: RFC 6455 §1.4, what follows a close frame is discarded.
                frames, self.frames = self.frames, None
                rest = b"".join(p for _, p in items[i + 1:])  # nothing normally
                if frames is not None:
                    rest += frames.take()
                if rest:
                    ws.receive_data(rest)
                    ws.events_received()
                return

    def _general(self, data: bytes) -> None:
        """websockets parses: the request, and everything once the connection closes."""
        ws = self.protocol
        ws.receive_data(data)
        for event in ws.events_received():
            if not isinstance(event, Frame):
                if isinstance(event, Request):
                    self._upgrade(event)
                continue
            opcode = event.opcode
            if opcode is OP_BINARY or opcode is OP_CONT:
                inner = self.inner
                if inner is not None and event.data:
                    inner.data_received(bytes(event.data))
            elif opcode is OP_TEXT:
                # [MQTT-6.0.0-1]: any other kind of data frame closes the connection.
                ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT is carried in binary frames")
                break
            # PING/PONG/CLOSE: answered inside the websockets protocol.

    # -- handshake -----------------------------------------------------------------------
    def _upgrade(self, request: Request) -> None:
        ws = self.protocol
        if request.path.split("?", 1)[0] != self.path:
            response = ws.reject(404, f"No MQTT WebSocket endpoint here; try {self.path}\n")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        self._responded = True
        # Out now: the inner Connection writes to the socket directly, and an
        # early CONNACK (a refused CONNECT closes at once) must follow the 101.
        self._send_pending()
        if response.status_code != 101:
            log.debug("websocket handshake refused (%d) from %s", response.status_code,
                      self.transport.get_extra_info("peername") if self.transport else None)
            return
        self._cancel_timer()
        self.frames = FrameSplitter(self.connect_frame)
        self.inner = inner = Connection(self.worker, self.listener)
        inner.connection_made(WebSocketTransport(self))

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.protocol.state is CONNECTING and self.transport is not None:
            self.transport.close()

    # -- output --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """One binary frame per write [MQTT-6.0.0-1]; servers don't mask (RFC 6455 §5.1)."""
        transport = self.transport
        if self.protocol.state is not OPEN or transport is None:
            return
        if len(data) < 16384:
            transport.write(frame_header(len(data)) + data)
        else:
            transport.write(frame_header(len(data)))
            transport.write(data)

    def _send_pending(self) -> None:
        transport = self.transport
        if transport is None:
            return
        ws = self.protocol
        for chunk in ws.data_to_send():
            if chunk:
                transport.write(chunk)
                continue
            # websockets' end-of-stream marker: a server closes TCP right away.
            if ws.state is CONNECTING and not self._responded:
                transport.write(_BAD_REQUEST)  # not even an HTTP request line
            transport.close()
            self._cancel_timer()
            return
        if ws.close_expected() and self._timer is None:
            # Our close frame is out; the client has CLOSE_TIMEOUT to answer it.
            self._timer = self.worker.loop.call_later(CLOSE_TIMEOUT, self.abort)

    def close(self) -> None:
        """The closing handshake (RFC 6455 §7.1.2), then TCP closes."""
        ws = self.protocol
        if self.transport is None:
            return
        if ws.state is OPEN:
            ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._send_pending()
        elif ws.state is CONNECTING:
            self.transport.close()

    def abort(self) -> None:
        self._timer = None
        if self.transport is not None:
            self.transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
