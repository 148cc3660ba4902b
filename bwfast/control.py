"""The worker's control socket: commands from the REST API process.

``data_dir/run/worker-N.ctl`` takes msgpack frames ``["api", id, command, args]``
and answers ``["reply", id, result]`` on the same connection. Commands:

- ``send_client`` {clientid, topic, message, qos, retain}: a PUBLISH straight to
  that client's session, subscribed or not; ``{"ok": False}`` when the client
  is not connected here.
- ``send_all`` {topic, message, qos, retain}: an ordinary publish, as if a
  client had sent it (a retained one is stored).
- ``count``: clients connected to this worker.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.message import Message
from bwfast.once import admit
from bwfast.topics import valid_topic

if TYPE_CHECKING:
    from bwfast.worker import Worker

log = logging.getLogger("bwfast.control")


def control_path(run_dir: str, index: int) -> str:
    return os.path.join(run_dir, f"worker-{index}.ctl")


class _ControlLink(asyncio.Protocol):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: Any = None
        self.acks: deque[list] | None = deque()
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for frame in self.unpacker:
            req = frame[1] if isinstance(frame, list) and len(frame) > 1 else 0
            try:
                _, req, command, args = frame
                result, seq = run_command(self.worker, command, args)
            except Exception as e:  # noqa: BLE001 - the API gets an answer whatever happens
                log.exception("control command failed")
                result, seq = {"ok": False, "error": str(e)}, 0
            # Like a PUBACK, the reply waits until the message is durable and every
            # peer worker it went to has it (worker.ack does that bookkeeping).
            self.worker.ack(self, msgpack.packb(["reply", req, result], use_bin_type=True),
                            None, seq)
        self.worker.schedule_tick()

    # The part of the Connection interface worker.ack / release use.
    @property
    def closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if not self.closing:
            self.transport.write(data)

    def disconnect(self, reason_code: int, reason: str = "") -> None:
        if not self.closing:
            self.transport.close()


def run_command(worker: Worker, command: str, args: dict) -> tuple[dict, int]:
    """Run one API command; return (result, seq of peer confirmations to wait for)."""
    if command == "count":
        return {"ok": True, "count": worker.sessions.connected_count()}, 0
    topic = args.get("topic", "")
    if not isinstance(topic, str) or not valid_topic(topic):
        return {"ok": False, "error": "invalid topic"}, 0
    payload = args.get("message", b"")
    if isinstance(payload, str):
        payload = payload.encode()
    qos = int(args.get("qos", 0))
    retain = bool(args.get("retain", False))
    msg = Message(topic, payload, qos, retain, origin="")
    # send_client and send_all run once per call however many workers the API
    # asked (bwfast/once.py): only here if this worker claims the call's id.
    if command == "send_client":
        session = worker.sessions.sessions.get(args.get("clientid", ""))
        if session is None or session.conn is None:
            return {"ok": False}, 0
        if (refused := admit(worker.store, worker.index, args)) is not None:
            return refused, 0
        session.deliver(msg, qos, retain, None)
        return {"ok": True}, 0
    if command == "send_all":
        if (refused := admit(worker.store, worker.index, args)) is not None:
            return refused, 0
        # QoS 0 promises nothing past the publish (no PUBACK either): the answer
        # does not wait for the peer workers, so a stalled one holds up nobody.
        delivered, seq = worker.publish(msg, confirm=qos > 0)
        return {"ok": True, "delivered": delivered}, seq
    return {"ok": False, "error": f"unknown command {command}"}, 0


async def start_control(worker: Worker, run_dir: str) -> asyncio.AbstractServer:
    os.makedirs(run_dir, exist_ok=True)
    path = control_path(run_dir, worker.index)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _ControlLink(worker), path)
