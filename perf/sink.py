"""Trivial servers that show the harness's own ceiling.

`null`: answers CONNECT and SUBSCRIBE, then reads and discards everything.
`forward`: pairs publisher `<prefix>p<i>` with subscriber `<prefix>s<i>` by
client id and, once the handshake is done, passes each read from one straight
to the other (PUBLISH one way, acknowledgements back), with flow control.
Neither parses a PUBLISH, so what the generator reaches against them is the
fastest it can measure.
"""

from __future__ import annotations

import asyncio

from perf import mqtt
from perf.gen import child_setup


class SinkProtocol(asyncio.Protocol):
    def __init__(self, server: Sink) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.raw = False
        self.key: tuple[str, str, str] | None = None
        self.peer: SinkProtocol | None = None
        self.version = mqtt.V311

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.key is not None and self.server.clients.get(self.key) is self:
            del self.server.clients[self.key]
        self.transport = None

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.raw:
            self._pass(data)
            return
        buf = self.buf + data
        packets, used = mqtt.split(buf)
        pos = 0
        for first, start, end in packets:
            kind = first >> 4
            if kind == mqtt.CONNECT:
                self._connect(buf[start:end])
            elif kind == mqtt.SUBSCRIBE:
                self._subscribe(buf, start, end)
            elif kind == mqtt.PINGREQ:
                self._write(mqtt.PINGRESP_PACKET)
            elif kind == mqtt.DISCONNECT:
                assert self.transport is not None
                self.transport.close()
                return
            else:
                self.raw = True
                self.peer = self.server.peer_of(self.key)
                if self.peer is not None and self.peer.peer is None:
                    self.peer.peer = self  # its writes come from us: flow control
                self._pass(buf[pos:])
                return
            pos = end
        self.buf = buf[used:]

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _pass(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def _connect(self, body: bytes) -> None:
        cid, self.version = mqtt.connect_client_id(body)
        if len(cid) > 6 and cid[-6] in "ps":
            self.key = (cid[:-6], cid[-6], cid[-5:])
            self.server.clients[self.key] = self
        self._write(mqtt.connack(self.version))

    def _subscribe(self, buf: bytes, start: int, end: int) -> None:
        pid = int.from_bytes(buf[start:start + 2], "big")
        pos = start + 2
        if self.version == mqtt.V5:
            plen, pos = mqtt.varint_at(buf, pos)
            pos += plen
        granted = []
        while pos < end:
            n = int.from_bytes(buf[pos:pos + 2], "big")
            granted.append(buf[pos + 2 + n] & 0x03)
            pos += 3 + n
        self._write(mqtt.suback(pid, granted, self.version))


class Sink:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.clients: dict[tuple[str, str, str], SinkProtocol] = {}

    def peer_of(self, key: tuple[str, str, str] | None) -> SinkProtocol | None:
        if self.mode != "forward" or key is None:
            return None
        prefix, role, index = key
        return self.clients.get((prefix, "s" if role == "p" else "p", index))


async def _serve(mode: str, port: int, ready) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink(mode)
    server = await loop.create_server(lambda: SinkProtocol(sink), "127.0.0.1", port,
                                      backlog=4096)
    ready.set()
    async with server:
        await server.serve_forever()


def sink_main(mode: str, port: int, ready) -> None:
    """Entry point of the sink process."""
    import uvloop

    child_setup()
    uvloop.run(_serve(mode, port, ready))
