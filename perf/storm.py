"""Connection storm clients: as light as a connection can be, so the harness
spends its time in the kernel's TCP handshake rather than in Python."""

from __future__ import annotations

import asyncio
import socket
import time

from perf import mqtt
from perf.client import LINGER0


class Storm:
    """Progress of a connection storm in this process."""

    def __init__(self, total: int, slots: asyncio.Semaphore, done: asyncio.Future) -> None:
        self.total = total
        self.slots = slots
        self.done = done
        self.ok = 0
        self.answered = 0
        self.last = time.monotonic_ns()
        self.error = ""

    def answer(self, ok: bool) -> None:
        self.ok += ok
        self.answered += 1
        self.last = time.monotonic_ns()
        self.slots.release()
        if self.answered == self.total and not self.done.done():
            self.done.set_result(None)


class Idle(asyncio.Protocol):
    """A connection-storm client: CONNECT as soon as connected, then idle.

    Much lighter than Client (no futures), so the harness spends its time in
    the kernel's TCP handshake rather than in Python.
    """

    __slots__ = ("storm", "hello", "transport", "answered")

    def __init__(self, storm: Storm, hello: bytes) -> None:
        self.storm = storm
        self.hello = hello
        self.transport: asyncio.Transport | None = None
        self.answered = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                      LINGER0)
        transport.write(self.hello)

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self.answered = True
            # CONNACK, return / reason code 0 [MQTT-3.2.2.3]
            self.storm.answer(data[:1] == b"\x20" and len(data) >= 4 and data[3] == 0)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if not self.answered:
            self.answered = True
            self.storm.error = self.storm.error or "connection closed before CONNACK"
            self.storm.answer(False)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(mqtt.DISCONNECT_PACKET)
            self.transport.close()
