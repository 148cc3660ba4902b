"""The worker's control socket: commands from the REST API process.

``data_dir/run/worker-N.ctl`` takes msgpack frames ``["api", id, command, args]``
and answers ``["reply", id, result]`` on the same connection. Commands:

- ``send_client`` {clientid, topic, message, qos, retain}: a PUBLISH straight to
  that client's session, subscribed or not; ``{"ok": False}`` when the client
  is not connected here.
- ``send_all`` {topic, message, qos, retain}: an ordinary publish, as if a
  client had sent it (a retained one is stored).
- ``count``: clients connected to this worker.
- ``nodes_count``, ``nodes_send_client``: the same asked of every other node
  ([cluster], bwfast/nodeapi.py); ``{"ok": False}`` without a cluster.
- ``kick`` {clientid}: disconnect that client if it is connected here (v5:
  DISCONNECT 0x98 Administrative action); ``{"ok": False}`` when it is not.
- ``kick_user`` {username}: disconnect every connection here that
  authenticated as that username (its credentials were removed or changed);
  ``{"ok": True, "count": n}``.
- ``acl_reload``: re-read the acl_file and the LMDB ``acl`` rules (after a REST
  or CLI change); ``{"ok": True, "generation": n}``, or ``{"ok": False,
  "generation": n, "error": ...}`` when the acl_file is bad (its previous rules
  are kept, the LMDB rules are applied all the same). ``generation`` is 0 with
  ``[acl] enabled = false``.
- ``client``, ``clear_queue``, ``stats``: for the console and /metrics
  (bwfast/observe.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.codes import ADMINISTRATIVE_ACTION
from bwfast.datadir import DIR_MODE, secure_socket
from bwfast.message import Message
from bwfast.observe import COMMANDS
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
                if isinstance(command, str) and command.startswith("nodes_"):
                    self._ask_nodes(req, command, args)
                    continue
                result, seq = run_command(self.worker, command, args)
            except Exception as e:  # noqa: BLE001 - the API gets an answer whatever happens
                log.exception("control command failed")
                result, seq = {"ok": False, "error": str(e)}, 0
            # Like a PUBACK, the reply waits until the message is durable and every
            # peer worker it went to has it (worker.ack does that bookkeeping).
            self.worker.ack(self, msgpack.packb(["reply", req, result], use_bin_type=True),
                            None, seq)
        self.worker.schedule_tick()

    def _ask_nodes(self, req: int, command: str, args: dict) -> None:
        """[cluster]: the other nodes answer (nodeapi.py), later, on this link."""
        nodes = self.worker.nodes
        if nodes is None:
            self.write(msgpack.packb(["reply", req, {"ok": False, "error": "no cluster"}],
                                     use_bin_type=True))
        else:
            nodes.api.run(self, req, command, args)

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
    if command in KICKS:
        return KICKS[command](worker, args), 0
    if command in COMMANDS:
        return COMMANDS[command](worker, args), 0
    if command == "count":
        return {"ok": True, "count": worker.sessions.connected_count()}, 0
    if command == "acl_reload":
        generation, error = worker.reload_acl()
        if error:
            return {"ok": False, "generation": generation, "error": error}, 0
        return {"ok": True, "generation": generation}, 0
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


def kick(worker: Worker, args: dict) -> dict:
    """Disconnect one client as an administrator would (EMQX's kick): v5 gets
    DISCONNECT 0x98, v3 is closed. The client did not disconnect gracefully,
    so its will is published (after its Will Delay), as EMQX does on a kick."""
    session = worker.sessions.sessions.get(args.get("clientid", ""))
    if session is None or session.conn is None or session.conn.closing:
        return {"ok": False}
    conn = session.conn
    log.info("kicking client %r", session.client_id)
    conn.disconnect(ADMINISTRATIVE_ACTION, "kicked by the administrator")
    return {"ok": True}


def kick_user(worker: Worker, args: dict) -> dict:
    """Disconnect every connection of a username whose credentials were removed
    or changed. No will: like Mosquitto's dynamic security (deleteClient,
    setClientPassword kick "without will"), a revoked device publishes nothing
    more. A CONNECT still in progress for that username is closed too."""
    username = args.get("username")
    if not isinstance(username, str):
        return {"ok": False, "error": "username must be a string"}
    count = 0
    for conn in list(worker.conns):
        if conn.username == username and not conn.closing:
            conn.will_on_close = False
            conn.disconnect(ADMINISTRATIVE_ACTION, "credentials revoked")
            count += 1
    if count:
        log.info("disconnected %d connection(s) of user %r", count, username)
    return {"ok": True, "count": count}


KICKS = {"kick": kick, "kick_user": kick_user}


async def start_control(worker: Worker, run_dir: str) -> asyncio.AbstractServer:
    os.makedirs(run_dir, mode=DIR_MODE, exist_ok=True)
    path = control_path(run_dir, worker.index)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: _ControlLink(worker), path)
    secure_socket(path)  # the API's way in: nobody else may connect
    return server
