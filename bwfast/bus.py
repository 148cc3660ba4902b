"""Links between worker processes: unix sockets in data_dir/run/, msgpack frames.

Each worker listens on ``run/worker-N.sock`` and keeps one outbound link to
every peer; a link carries frames one way, so replies go back on the
replier's own outbound link. Frames are msgpack objects, self-delimiting
(msgpack's streaming Unpacker plays the length prefix). Frames for a peer are
batched and written once per loop iteration by the worker's tick. A link
that drops is re-established; frames for a peer that is down are held
(bounded) and sent when it is back, so a restarted worker gets what was
routed to it meanwhile. The bus writes nothing to LMDB.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import msgpack

from bwfast.datadir import DIR_MODE, secure_socket

log = logging.getLogger("bwfast.bus")

MAX_HELD_FRAMES = 200_000   # per peer while its link is down
RETRY_DELAY = 0.1


def socket_path(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"worker-{index}.sock")


class _InLink(asyncio.Protocol):
    """Receiving side of a peer's outbound link."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True)

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        on_frame = self.bus.on_frame
        for frame in self.unpacker:
            try:
                on_frame(frame)
            except Exception:  # noqa: BLE001 - one bad frame must not kill the link
                log.exception("bus frame %r failed", frame[:1] if frame else frame)


class _OutLink(asyncio.Protocol):
    def __init__(self, bus: Bus, peer: int) -> None:
        self.bus = bus
        self.peer = peer
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.bus._link_up(self.peer, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.bus._link_down(self.peer, self)


class Bus:
    def __init__(self, index: int, nworkers: int, run_dir: str,
                 on_frame: Callable[[Any], None], on_peer_up: Callable[[int], None],
                 on_peer_down: Callable[[int], None], request_flush: Callable[[], None]) -> None:
        self.index = index
        self.peers = [i for i in range(nworkers) if i != index]
        self.run_dir = run_dir
        self.on_frame = on_frame
        self.on_peer_up = on_peer_up
        self.on_peer_down = on_peer_down
        self.request_flush = request_flush
        self.links: dict[int, _OutLink] = {}
        self.out: dict[int, list[bytes]] = {p: [] for p in self.peers}
        # Forwarded messages of this iteration, one ["pubs", ...] frame per peer.
        self.items: dict[int, list[Any]] = {p: [] for p in self.peers}
        self.server: asyncio.AbstractServer | None = None
        self.closed = False
        self.frames_sent = 0
        # One packer for every frame (msgpack.packb builds a new Packer per call).
        self._pack = msgpack.Packer(use_bin_type=True).pack

    async def start(self) -> None:
        os.makedirs(self.run_dir, mode=DIR_MODE, exist_ok=True)
        path = socket_path(self.run_dir, self.index)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _InLink(self), path)
        secure_socket(path)  # peers only: a stranger could inject forwarded messages
        for peer in self.peers:
            loop.create_task(self._connect(peer))

    async def _connect(self, peer: int) -> None:
        loop = asyncio.get_running_loop()
        path = socket_path(self.run_dir, peer)
        while not self.closed and peer not in self.links:
            try:
                await loop.create_unix_connection(lambda: _OutLink(self, peer), path)
                return
            except OSError:
                await asyncio.sleep(RETRY_DELAY)

    def _link_up(self, peer: int, link: _OutLink) -> None:
        self.links[peer] = link
        log.debug("link to worker %d up", peer)
        self.on_peer_up(peer)
        if self.out[peer]:
            self.request_flush()

    def _link_down(self, peer: int, link: _OutLink) -> None:
        if self.links.get(peer) is link:
            del self.links[peer]
            log.info("link to worker %d down; reconnecting", peer)
            self.on_peer_down(peer)
            if not self.closed:
                asyncio.get_running_loop().create_task(self._connect(peer))

    def is_up(self, peer: int) -> bool:
        return peer in self.links

    # -- sending ------------------------------------------------------------------------------------
    def send(self, peer: int, frame: Any) -> None:
        self.send_packed(peer, self._pack(frame))

    def queue_item(self, peer: int, item: Any) -> None:
        """A forwarded message: batched with the others of this loop iteration."""
        items = self.items[peer]
        if not items:
            self.request_flush()
        items.append(item)

    def _seal(self, peer: int) -> None:
        items = self.items[peer]
        if items:
            self.items[peer] = []
            self._append(peer, self._pack(["pubs", self.index, items]))

    def send_packed(self, peer: int, data: bytes) -> None:
        self._seal(peer)  # frames keep their order with the batched messages
        self._append(peer, data)

    def _append(self, peer: int, data: bytes) -> None:
        out = self.out[peer]
        if len(out) >= MAX_HELD_FRAMES:
            log.warning("worker %d unreachable: dropping a frame", peer)
            return
        if not out:
            self.request_flush()
        out.append(data)

    def broadcast(self, frame: Any) -> None:
        data = self._pack(frame)
        for peer in self.peers:
            self.send_packed(peer, data)

    def flush(self) -> None:
        for peer in self.peers:
            self._seal(peer)
        for peer, out in self.out.items():
            if out:
                link = self.links.get(peer)
                if link is None or link.transport is None:
                    continue
                link.transport.write(b"".join(out))
                self.frames_sent += len(out)
                out.clear()

    def close(self) -> None:
        self.closed = True
        self.flush()
        for link in list(self.links.values()):
            if link.transport is not None:
                link.transport.close()
        if self.server is not None:
            self.server.close()
