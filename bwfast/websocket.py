"""MQTT over WebSocket (MQTT 5.0 §6, 3.1.1 §6): an asyncio.Protocol that speaks
the HTTP upgrade and the WebSocket framing with the ``websockets`` library's
sans-I/O ``ServerProtocol``, and hands the MQTT bytes to an ordinary
:class:`~bwfast.protocol.Connection`.

The WebSocket layer only moves bytes. Binary frame payloads go straight into
the inner Connection's incremental parser, so an MQTT packet split over
several frames, or several packets packed into one frame, need no special
handling ([MQTT-6.0.0-2]: "the receiver MUST NOT assume that MQTT Control
Packets are aligned on WebSocket frame boundaries"). What the Connection
writes (already coalesced once per loop iteration by the worker's tick)
leaves as one binary frame per write ([MQTT-6.0.0-1]).

The inner Connection sees a :class:`WebSocketTransport`: ``close()`` runs the
WebSocket closing handshake before the TCP connection closes, ``abort()``
drops the socket, and ``get_extra_info`` answers from the real (TCP or TLS)
transport, so the peer address and, for WSS, the client certificate are
there as on the plain listeners.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from websockets.exceptions import NegotiationError
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bwfast.protocol import Connection

if TYPE_CHECKING:
    from bwfast.worker import Worker

log = logging.getLogger("bwfast.websocket")
# websockets logs every open and close at INFO; that is per-client noise here.
_frames_log = logging.getLogger("bwfast.websocket.frames")
if _frames_log.level == logging.NOTSET:
    _frames_log.setLevel(logging.WARNING)

# [MQTT-6.0.0-3]/[MQTT-6.0.0-4]: the subprotocol is "mqtt"; MQTT 3.1 clients
# (and some old libraries) offer "mqttv3.1".
OP_BINARY, OP_CONT, OP_TEXT = Opcode.BINARY, Opcode.CONT, Opcode.TEXT
SUBPROTOCOLS: tuple[Subprotocol, ...] = (Subprotocol("mqtt"), Subprotocol("mqttv3.1"))
HANDSHAKE_TIMEOUT = 10.0  # seconds a socket may take to send its HTTP upgrade
CLOSE_TIMEOUT = 2.0       # seconds the client gets to answer our close frame
_BAD_REQUEST = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 31\r\n\r\n"
                b"Not a valid HTTP/1.1 request.\r\n")


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
        limit = worker.cfg.broker.max_packet_size + 5  # a whole packet with its fixed header
        # Messages may be any length (a stream of packets); a single frame is
        # bounded as an MQTT packet is, since websockets buffers a frame whole.
        self.protocol = ServerProtocol(
            subprotocols=list(SUBPROTOCOLS), select_subprotocol=select_subprotocol,
            max_size=(None, max(limit, 1 << 16)), logger=_frames_log)
        self.transport: Any = None
        self.inner: Connection | None = None
        self._responded = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._timer = self.worker.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def data_received(self, data: bytes) -> None:
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
                if inner is not None:
                    payload = event.data
                    inner.data_received(payload if type(payload) is bytes else bytes(payload))
            elif opcode is OP_TEXT:
                # [MQTT-6.0.0-1]: any other kind of data frame closes the connection.
                ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT is carried in binary frames")
                break
            # PING/PONG/CLOSE: answered inside the websockets protocol.
        self._send_pending()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._send_pending()
        return None  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        transport, self.transport = self.transport, None
        del transport
        inner, self.inner = self.inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # -- handshake -----------------------------------------------------------------------
    def _upgrade(self, request: Request) -> None:
        ws = self.protocol
        if request.path.split("?", 1)[0] != self.path:
            response = ws.reject(404, f"No MQTT WebSocket endpoint here; try {self.path}\n")
        else:
            response = ws.accept(request)
        ws.send_response(response)
        self._responded = True
        if response.status_code != 101:
            log.debug("websocket handshake refused (%d) from %s", response.status_code,
                      self.transport.get_extra_info("peername") if self.transport else None)
            return
        self._cancel_timer()
        self.inner = inner = Connection(self.worker, self.listener)
        inner.connection_made(WebSocketTransport(self))

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.protocol.state is CONNECTING and self.transport is not None:
            self.transport.close()

    # -- output --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """One binary frame per write [MQTT-6.0.0-1]."""
        ws = self.protocol
        if ws.state is not OPEN or self.transport is None:
            return
        ws.send_binary(data)
        self._send_pending()

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
