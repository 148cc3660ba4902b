"""One MQTT client connection of the load generator (asyncio.Protocol, no streams).

A Client can publish, subscribe, or both. Publishing writes pre-encoded
batches and stops while the transport is paused (pause_writing) or the QoS
1/2 window of unacknowledged ids is full. Receiving counts PUBLISH packets,
answers PUBACK / PUBREC / PUBCOMP, and, for stamped payloads, records the
end-to-end latency from the 8-byte time.monotonic_ns() stamp that starts the
payload (CLOCK_MONOTONIC, the same clock in every process on Linux).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from array import array
from collections.abc import Callable

from perf import mqtt
from perf.mqtt import PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, V311

PUBACK_TEMPLATE = b"\x40\x02\x00\x00" * 4096
LINGER0 = struct.pack("ii", 1, 0)


class Tally:
    """Counters of one generator process, mirrored into shared memory for the parent."""

    __slots__ = ("sent", "recv", "sent_arr", "recv_arr", "slot", "kick")

    def __init__(self, sent_arr=None, recv_arr=None, slot: int = 0) -> None:
        self.sent = 0
        self.recv = 0
        self.sent_arr = sent_arr
        self.recv_arr = recv_arr
        self.slot = slot
        self.kick: Callable[[], None] | None = None

    def add_sent(self, n: int) -> None:
        self.sent += n
        if self.sent_arr is not None:
            self.sent_arr[self.slot] = self.sent

    def add_recv(self, n: int) -> None:
        self.recv += n
        if self.recv_arr is not None:
            self.recv_arr[self.slot] = self.recv
        if self.kick is not None:
            self.kick()


class Client(asyncio.Protocol):
    """An MQTT client whose hot paths do no per-message Python work when they can avoid it."""

    def __init__(self, tally: Tally | None = None, version: int = V311,
                 qos: int = 0, inflight: int = 20) -> None:
        self.tally = tally or Tally()
        self.version = version
        self.qos = qos
        self.inflight = inflight if qos else 1 << 60
        self.transport: asyncio.Transport | None = None
        self.rest = b""
        loop = asyncio.get_running_loop()
        self.connack: asyncio.Future = loop.create_future()
        self.suback: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        # receive side
        self.received = 0
        self.fast_size = 0
        self.fast_head = b""
        self.fast_id = -1
        self.stamp_at = -1
        self.latency: array | None = None
        self.lat_window = (0, 0)
        self.waiter: tuple[int, asyncio.Future] | None = None
        self.napper: Callable[[Client], None] | None = None
        self.nap_below = 1 << 60  # nap after reads of fewer messages / acks than this
        # publish side
        self.sent = 0
        self.done = 0
        self.paused = False
        self.on_ready: Callable[[], None] | None = None
        self.batch = b""
        self.batch_n = 0
        self.template: bytearray | None = None
        self.pkt_size = 0
        self.id_at = -1
        self.next_id = 0
        self.stamp_parts: tuple[bytes, bytes, bytes] = (b"", b"", b"")

    # -- connection -----------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # No TIME_WAIT on close: a storm of 10,000 connections per run
            # would otherwise eat the ephemeral port range.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER0)
        transport.set_write_buffer_limits(high=256 * 1024)

    def connection_lost(self, exc) -> None:
        for fut in (self.connack, self.suback, self.lost):
            if not fut.done():
                fut.set_result(exc or ConnectionResetError("connection closed"))
        if self.waiter and not self.waiter[1].done():
            self.waiter[1].set_result(False)
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_ready is not None:
            self.on_ready()

    async def connect(self, client_id: str, clean: bool = True, session_expiry: int = 0,
                      timeout: float = 30.0) -> bool:
        """Send CONNECT and wait for CONNACK; returns the Session Present flag."""
        assert self.transport is not None
        self.transport.write(mqtt.connect(client_id, clean=clean, version=self.version,
                                          session_expiry=session_expiry))
        res = await asyncio.wait_for(self.connack, timeout)
        if isinstance(res, BaseException):
            raise res
        return bool(res)

    async def subscribe(self, filters: list[str], qos: int, timeout: float = 30.0) -> None:
        """Send SUBSCRIBE and wait for a SUBACK granting every filter."""
        assert self.transport is not None
        self.transport.write(mqtt.subscribe(1, filters, qos, self.version))
        res = await asyncio.wait_for(self.suback, timeout)
        if isinstance(res, BaseException):
            raise res

    def close(self) -> None:
        """DISCONNECT and close (linger 0, see connection_made)."""
        if self.transport is not None:
            self.transport.write(mqtt.DISCONNECT_PACKET)
            self.transport.close()

    async def wait_count(self, target: int, stall: float) -> bool:
        """Wait until `target` PUBLISH packets arrived; False after `stall` s without progress."""
        while self.received < target:
            if self.transport is None:
                return False
            fut = asyncio.get_running_loop().create_future()
            self.waiter = (target, fut)
            before = self.received
            try:
                await asyncio.wait_for(fut, stall)
            except TimeoutError:
                if self.received == before:
                    return False
        return True

    # -- receive ----------------------------------------------------------

    def expect(self, topic: str, payload_len: int, qos: int) -> None:
        """Enable the uniform fast path for deliveries of this shape (QoS 0/1 only)."""
        if qos == 2 or self.stamp_at >= 0:
            return
        size, id_at, _ = mqtt.publish_layout(topic, payload_len, qos, self.version)
        self.fast_size = size
        self.fast_id = id_at
        self.fast_head = mqtt.head_of(mqtt.publish(topic, b"\x00" * payload_len, qos, 1,
                                                   False, self.version))

    def data_received(self, data: bytes) -> None:
        buf = self.rest + data if self.rest else data
        self.rest = b""
        got = 0
        done = self.done
        if self.sent and buf:
            buf = self._ack_run(buf)
        if self.fast_size:
            n = mqtt.uniform(buf, self.fast_size, self.fast_head)
            if n > 0:
                lim = n * self.fast_size
                if self.fast_id >= 0:
                    self._puback_run(buf, n, lim)
                buf = buf[lim:]
                got = n
        if buf:
            got += self._generic(buf)
        if got:
            self.received += got
            self.tally.add_recv(got)
            if self.waiter and self.received >= self.waiter[0] and not self.waiter[1].done():
                self.waiter[1].set_result(True)
        if (self.napper is not None and self.transport is not None
                and got + self.done - done < self.nap_below):
            # A small read: read again in a moment, a larger chunk then. A broker
            # that writes each message on its own would otherwise have us pay a
            # wakeup, a Python call and a write per message: CPU taken from the
            # broker on a 2-core box. A large read (the broker's window of
            # unacknowledged messages may be full) is answered at once.
            self.transport.pause_reading()
            self.napper(self)

    def wake(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _ack_run(self, buf: bytes) -> bytes:
        """Publisher side: a run of PUBACKs (QoS 1) or PUBRECs / PUBCOMPs (QoS 2) at once."""
        if self.qos == 1:
            n = mqtt.uniform(buf, 4, b"\x40\x02")
        elif self.qos == 2:
            n = mqtt.uniform(buf, 4, b"\x70\x02")
            if n < 0:
                n = mqtt.uniform(buf, 4, b"\x50\x02")
                if n > 0:
                    rel = bytearray(buf[:4 * n])
                    rel[0::4] = b"\x62" * n
                    assert self.transport is not None
                    self.transport.write(rel)
                    return buf[4 * n:]
        else:
            return buf
        if n <= 0:
            return buf
        self.done += n
        if self.on_ready is not None:
            self.on_ready()
        return buf[4 * n:]

    def _puback_run(self, buf: bytes, n: int, lim: int) -> None:
        """PUBACK every id of a uniform run at once, by strided slice assignment."""
        i = self.fast_id
        size = self.fast_size
        while n:
            k = min(n, 4096)
            acks = bytearray(PUBACK_TEMPLATE[:4 * k])
            end = i + k * size
            acks[2::4] = buf[i:end:size]
            acks[3::4] = buf[i + 1:end:size]
            assert self.transport is not None
            self.transport.write(acks)
            i = end
            n -= k

    def _generic(self, buf: bytes) -> int:
        """Handle every whole packet in buf; keep the tail. Returns PUBLISH count."""
        packets, used = mqtt.split(buf)
        self.rest = buf[used:]
        out: list[bytes] = []
        count = 0
        acked = 0
        now = time.monotonic_ns() if self.latency is not None else 0
        for first, start, end in packets:
            kind = first >> 4
            if kind == PUBLISH:
                count += 1
                pid, at = mqtt.publish_parts(buf, first, start, self.version)
                if first & 0x02:
                    out.append(mqtt.ack(PUBACK, pid))
                elif first & 0x04:
                    out.append(mqtt.ack(PUBREC, pid))
                if self.latency is not None and end - at >= 8:
                    lo, hi = self.lat_window
                    if lo <= now <= hi:
                        self.latency.append(now - int.from_bytes(buf[at:at + 8], "big"))
            elif kind == PUBACK or kind == PUBCOMP:
                acked += 1
            elif kind == PUBREC:
                out.append(mqtt.ack(PUBREL, int.from_bytes(buf[start:start + 2], "big")))
            elif kind == PUBREL:
                out.append(mqtt.ack(PUBCOMP, int.from_bytes(buf[start:start + 2], "big")))
            elif kind == mqtt.CONNACK:
                if self.version == mqtt.V5 and self.qos and end - start > 2:
                    self.inflight = min(self.inflight, mqtt.receive_maximum(buf, start, end))
                self._handshake(self.connack, buf[start + 1], bool(buf[start] & 1))
            elif kind == mqtt.SUBACK:
                codes_at = start + 2
                if self.version == mqtt.V5:
                    plen, codes_at = mqtt.varint_at(buf, codes_at)
                    codes_at += plen
                ok = all(c < 0x80 for c in buf[codes_at:end])
                self._handshake(self.suback, 0 if ok else 0x80, None)
            elif kind == mqtt.PINGREQ:
                out.append(mqtt.PINGRESP_PACKET)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if acked:
            self.done += acked
            if self.on_ready is not None:
                self.on_ready()
        return count

    @staticmethod
    def _handshake(fut: asyncio.Future, code: int, value) -> None:
        if fut.done():
            return
        fut.set_result(value if code == 0 else ConnectionRefusedError(f"refused, code 0x{code:02x}"))

    # -- publish ----------------------------------------------------------

    def can_send(self) -> int:
        """How many more messages may go out now (flow control and the QoS window)."""
        if self.paused or self.transport is None:
            return 0
        return self.inflight - (self.sent - self.done)

    def prepare(self, topic: str, payload_len: int, batch: int, stamped: bool) -> None:
        """Pre-encode the publish batch (or the stamped single-message parts)."""
        payload = b"\x00" * payload_len
        pkt = mqtt.publish(topic, payload, self.qos, 1 if self.qos else 0, False, self.version)
        self.pkt_size, self.id_at, at = mqtt.publish_layout(topic, payload_len, self.qos,
                                                            self.version)
        self.batch_n = batch
        if self.qos:
            self.template = bytearray(pkt * batch)
        else:
            self.batch = pkt * batch
        if stamped:
            if self.qos:
                self.stamp_parts = (pkt[:self.id_at], pkt[self.id_at + 2:at],
                                    payload[8:])
            else:
                self.stamp_parts = (pkt[:at], b"", payload[8:])

    def send_batch(self, n: int) -> None:
        """Write n pre-encoded messages in one write (n <= batch size)."""
        assert self.transport is not None
        if not self.qos:
            self.transport.write(self.batch if n == self.batch_n else self.batch[:n * self.pkt_size])
        else:
            tpl = self.template
            assert tpl is not None
            j = self.next_id
            lim = n * self.pkt_size
            tpl[self.id_at:lim:self.pkt_size] = mqtt.ID_HI[j:j + n]
            tpl[self.id_at + 1:lim:self.pkt_size] = mqtt.ID_LO[j:j + n]
            self.transport.write(bytes(memoryview(tpl)[:lim]))
            self.next_id = (j + n) % 65535
        self.sent += n
        self.tally.add_sent(n)

    def send_stamped(self, n: int) -> None:
        """Write n messages one write each, each stamped with the time it left."""
        assert self.transport is not None
        a, b, tail = self.stamp_parts
        write = self.transport.write
        for _ in range(n):
            stamp = time.monotonic_ns().to_bytes(8, "big")
            if self.qos:
                write(a + (self.next_id % 65535 + 1).to_bytes(2, "big") + b + stamp + tail)
                self.next_id = (self.next_id + 1) % 65535
            else:
                write(a + stamp + tail)
        self.sent += n
        self.tally.add_sent(n)

    async def send_list(self, packets: list[bytes], stall: float = 30.0) -> bool:
        """Send ready-made packets under the window, then wait until all are acknowledged.

        QoS 0 packets go out at once under flow control; returns False when
        acknowledgements stall for `stall` seconds or the connection drops.
        """
        loop = asyncio.get_running_loop()
        pos = 0
        total = len(packets)
        target = self.done + total if self.qos else 0
        progress = loop.create_future()

        def ready() -> None:
            if not progress.done():
                progress.set_result(None)

        self.on_ready = ready
        try:
            while pos < total or (self.qos and self.done < target):
                k = min(self.can_send(), total - pos, 1024)
                if k > 0:
                    assert self.transport is not None
                    self.transport.write(b"".join(packets[pos:pos + k]))
                    pos += k
                    self.sent += k
                    if not self.qos:
                        continue
                if self.transport is None:
                    return False
                if pos == total and not self.qos:
                    break
                try:
                    await asyncio.wait_for(progress, stall)
                except TimeoutError:
                    return False
                progress = loop.create_future()
            return True
        finally:
            self.on_ready = None
