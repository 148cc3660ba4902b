"""One asyncio.Protocol per MQTT connection: bytes in, packets to the handlers.

Every complete packet in a read is decoded and dispatched before returning;
what a connection must send is buffered and written once per loop iteration
by the worker's tick (DESIGN.md, "The hot path"). Protocol errors raised
anywhere below land in :meth:`Connection.fail`, the one place that turns a
reason code into a DISCONNECT (v5) and a close.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from bwfast.codes import CONNECT, MQTT5, REASON_STRING, UNSUPPORTED_PROTOCOL_VERSION
from bwfast.errors import MQTTError
from bwfast.packet import Parser, encode_connack, encode_disconnect

if TYPE_CHECKING:
    from bwfast.session import Session
    from bwfast.worker import Worker

log = logging.getLogger("bwfast.protocol")

WRITE_HIGH = 8 << 20  # bytes buffered for a slow client before QoS 0 to it is dropped


class Connection(asyncio.Protocol):
    """The transport side of a client: parser, output buffer, keepalive, aliases."""

    __slots__ = ("worker", "listener", "transport", "parser", "out", "acks", "held", "session",
                 "client_id", "version", "keepalive", "last_rx", "created", "congested",
                 "aliases", "alias_max_out", "out_aliases", "connect_seen", "closing",
                 "graceful", "will_on_close", "peer", "username", "early", "paused",
                 "counted", "hold", "__weakref__")

    def __init__(self, worker: Worker, listener: str = "mqtt") -> None:
        self.worker = worker
        self.listener = listener
        self.transport: Any = None
        b = worker.cfg.broker
        # Until CONNECT: first byte CONNECT, at most max_connect_size bytes (packet.pyx).
        self.parser = Parser(b.max_packet_size, 0, b.max_connect_size)
        self.out: list[bytes] = []
        self.acks: deque[list] | None = None  # acks waiting for a commit / peers, in order
        self.held: list | None = None      # packets that came while CONNECT was pending
        self.session: Session | None = None
        self.client_id = ""
        self.version = 0
        self.keepalive = 0
        self.last_rx = worker.now
        self.created = worker.now
        self.congested = False                 # transport buffer over WRITE_HIGH
        self.aliases: dict[int, str] = {}      # client -> server topic aliases
        self.alias_max_out = 0                 # server -> client: the client's Topic Alias Maximum
        self.out_aliases: dict[str, int] = {}
        self.connect_seen = False
        self.closing = False
        self.graceful = False      # DISCONNECT received: no will [MQTT-3.1.2-10]
        self.will_on_close = True  # False when the server itself shuts down
        self.peer = ""
        self.username: str | None = None
        self.early = 0          # bytes received before CONNACK (see _hold)
        self.paused = False     # reading paused until CONNACK
        self.counted = False    # holds a [broker] max_connections slot
        self.hold = False  # output waits for the LMDB commit (Worker.hold_until_commit)

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.worker.conns.add(self)
        try:
            transport.set_write_buffer_limits(high=WRITE_HIGH)
        except (AttributeError, NotImplementedError):  # a transport without flow control
            pass

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        worker = self.worker
        self.last_rx = worker.now
        worker.stats.bytes_received += len(data)
        parser = self.parser
        if self.session is None:
            self._hold(len(data))
        else:
            if self.held is not None:  # session attached, CONNACK not out yet
                self._hold(len(data))
            if type(data) is not bytes:
                data = bytes(data)
            # The fast lane (bwfast.fastpath) takes the leading QoS 0 PUBLISHes it can
            # route on its own; the parser and the handlers do whatever follows.
            if parser.pending:
                if parser.pending + len(data) < parser.need:
                    parser.feed(data)  # still incomplete: nothing to decode
                    return
                data = parser.take_pending() + data
            pos = worker.lane.feed(self, data)
            if pos:
                if pos == len(data):
                    return
                data = data[pos:]
        try:
            packets = parser.feed(data)
        except MQTTError as e:
            self._dispatch(e.packets)
            if not self.closing:
                self.fail(e)
            return
        self._dispatch(packets)

    def _dispatch(self, packets: list) -> None:
        handlers = self.worker.handlers
        try:
            for p in packets:
                if self.closing:
                    return
                if self.held is not None:
                    # CONNECT is still in progress (another worker letting go of the
                    # session, routes being applied): keep the rest for afterwards.
                    self.held.append(p)
                    continue
                if self.session is None and p.type != CONNECT:
                    # [MQTT-3.1.0-1]: the first packet must be CONNECT.
                    self.close()
                    return
                handlers[p.type](self, p)
        except MQTTError as e:
            self.fail(e)

    def _hold(self, n: int) -> None:
        """Bound what a client not yet connected makes us keep: the CONNECT is
        at most max_connect_size (the parser sees to that); once more than that
        has come before the CONNACK (packets sent behind the CONNECT while the
        password is checked or another worker lets go of the session), stop
        reading: the rest waits in the kernel, not in our memory."""
        self.early += n
        if not self.paused and self.early > self.worker.cfg.broker.max_connect_size:
            self.paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def connected(self) -> None:
        """CONNECT is done: run what the client sent meanwhile."""
        held, self.held = self.held, None
        if held:
            self._dispatch(held)
        if self.paused and not self.closing:
            self.paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.out.clear()
        self.worker.conns.discard(self)
        if self.counted:
            self.counted = False
            self.worker.quota.release()
        if self.session is not None:
            self.worker.sessions.detach(self)

    def pause_writing(self) -> None:
        """The client reads slower than it is sent to and WRITE_HIGH bytes wait in
        the kernel and the transport: QoS 0 messages to it are dropped (counted in
        $SYS .../dropped) until it catches up; QoS 1/2 wait in its session."""
        self.congested = True

    def resume_writing(self) -> None:
        self.congested = False

    # -- output ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closing:
            return
        kind = data[0] & 0xF6  # a QoS 1/2 PUBLISH: type 3 with QoS bits (dup, retain masked)
        if kind == 0x32 or kind == 0x34:
            self.worker.stats.count_sent(kind >> 1 & 3, len(data))
        out = self.out
        if not out:
            self.worker.mark_dirty(self)
        out.append(data)

    def flush(self) -> None:
        out = self.out
        if not out or self.transport is None:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self.worker.stats.bytes_sent += len(data)
        self.transport.write(data)

    # -- closing ---------------------------------------------------------------------------
    def close(self) -> None:
        """Flush what is buffered and close; the will follows unless graceful."""
        if self.closing:
            return
        if self.hold:
            # Held output waits for a commit (Worker.hold_until_commit): do it now, so
            # the last packets (a v5 DISCONNECT with its reason) still leave.
            self.worker.store.commit()
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def disconnect(self, reason_code: int, reason: str = "") -> None:
        """Server-initiated close: a v5 DISCONNECT with the reason code first (§3.14)."""
        if self.version == MQTT5 and self.session is not None and not self.closing:
            props = {REASON_STRING: reason} if reason else None
            self.write(encode_disconnect(reason_code, MQTT5, props))
        self.close()

    def fail(self, err: MQTTError) -> None:
        """The dispatcher of protocol errors: reason code -> what the client is told."""
        log.debug("closing %s (%s): %s", self.client_id or self.peer, hex(err.reason_code),
                  err.message)
        self.worker.stats.protocol_errors += 1
        if self.session is None:
            if err.reason_code == UNSUPPORTED_PROTOCOL_VERSION:
                # [MQTT-3.1.2-2]: CONNACK 0x01 (v3 form), then close.
                self.write(encode_connack(False, 1, 4))
            self.close()
            return
        self.disconnect(err.reason_code, err.message)

    def reject(self, reason_code: int, v3_code: int) -> None:
        """Refuse a CONNECT with a CONNACK carrying the code, then close [MQTT-3.2.2-5]."""
        code = reason_code if self.version == MQTT5 else v3_code
        self.worker.stats.refused += 1
        self.write(encode_connack(False, code, self.version or 4))
        self.close()

