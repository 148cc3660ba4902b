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
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.message import Message
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
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for frame in self.unpacker:
            try:
                _, req, command, args = frame
                result = run_command(self.worker, command, args)
            except Exception as e:  # noqa: BLE001 - the API gets an answer whatever happens
                log.exception("control command failed")
                req, result = (frame[1] if isinstance(frame, list) and len(frame) > 1 else 0,
                               {"ok": False, "error": str(e)})
            self.transport.write(msgpack.packb(["reply", req, result], use_bin_type=True))
        self.worker.schedule_tick()


def run_command(worker: Worker, command: str, args: dict) -> dict:
    if command == "count":
        return {"ok": True, "count": worker.sessions.connected_count()}
    topic = args.get("topic", "")
    if not isinstance(topic, str) or not valid_topic(topic):
        return {"ok": False, "error": "invalid topic"}
    payload = args.get("message", b"")
    if isinstance(payload, str):
        payload = payload.encode()
    qos = int(args.get("qos", 0))
    retain = bool(args.get("retain", False))
    msg = Message(topic, payload, qos, retain, origin="")
    if command == "send_client":
        session = worker.sessions.sessions.get(args.get("clientid", ""))
        if session is None or session.conn is None:
            return {"ok": False}
        session.deliver(msg, qos, retain, None)
        return {"ok": True}
    if command == "send_all":
        delivered, _ = worker.publish(msg)
        return {"ok": True, "delivered": delivered}
    return {"ok": False, "error": f"unknown command {command}"}


async def start_control(worker: Worker, run_dir: str) -> asyncio.AbstractServer:
    os.makedirs(run_dir, exist_ok=True)
    path = control_path(run_dir, worker.index)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _ControlLink(worker), path)
