"""What the nodes must agree on, in JetStream key-value buckets (DESIGN.md, "Beyond one machine").

- ``bwfast_retained``: topic -> [node, message record]. Every worker watches
  the bucket and applies what other nodes set (the node that set it already
  has it), so a retained message is visible on every node and outlives any
  one node; the bucket is replicated (R3) when the NATS servers are clustered.
- ``bwfast_clients``: client id -> node holding its session. A CONNECT on
  node B for a client id that node A holds asks A (request/reply on
  ``bwfast.take.<A>``): A closes the old connection [MQTT-3.1.4-3] and hands
  over the persistent session (record, subscriptions, queued and in-flight
  messages, QoS 2 packet ids) unless the CONNECT asks for a clean start;
  B writes it to its LMDB, loads it and answers session-present.

Keys are base64url of the topic / client id (KV keys allow few characters).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.message import Message
from bwfast.session import queue_key

if TYPE_CHECKING:
    from bwfast.nodes import NodeLink

log = logging.getLogger("bwfast.nodes")

RETAINED = "bwfast_retained"
CLIENTS = "bwfast_clients"
TAKE_TIMEOUT = 2.0
KV_TIMEOUT = 1.0  # seconds a CONNECT waits for a bucket (JetStream electing a leader...)
MOVE_GRACE = 3.0  # seconds a session handed to another node forwards what still comes here
REMOTE_MOVE = 1 << 20  # Session.moved_to of a session moving to another node (nodes.REMOTE_BASE)


def kv_key(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode() or "="


def from_key(key: str) -> str:
    return base64.urlsafe_b64decode(key.encode()).decode()


def take_subject(node: str) -> str:
    return f"bwfast.take.{node}"


class NodeKV:
    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.worker = link.worker
        self.retained: Any = None
        self.clients: Any = None
        self.watcher: Any = None
        self.ops: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue()
        self.task: asyncio.Task | None = None
        self.take_sub: Any = None

    async def joined(self) -> None:
        """On every (re)connection: the buckets, our watch on retained, the take subject."""
        nc = self.link.nc
        js = nc.jetstream()
        self.retained = await _bucket(js, RETAINED)
        self.clients = await _bucket(js, CLIENTS)
        if self.take_sub is None:
            self.take_sub = await nc.subscribe(take_subject(self.link.node), cb=self._on_take)
        if self.watcher is not None:
            try:
                await self.watcher.stop()
            except Exception:  # noqa: BLE001 - its server may be gone
                pass
        self.watcher = await self.retained.watchall()
        asyncio.get_running_loop().create_task(self._watch(self.watcher))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._writer())

    # -- retained ------------------------------------------------------------------------------
    def retained_changed(self, msg: Message) -> None:
        key = kv_key(msg.topic)
        if msg.payload:
            self.ops.put_nowait(("put", key, msgpack.packb([self.link.node, msg.to_record()])))
        else:
            self.ops.put_nowait(("del", key, b""))

    async def _writer(self) -> None:
        """One task writes the buckets in the order things happened."""
        while True:
            op, key, value = await self.ops.get()
            while True:  # NATS away: the change waits (in order) until it is back
                bucket = self.retained if op != "client" else self.clients
                try:
                    if bucket is None:
                        raise ConnectionError("no bucket yet")
                    if op == "del":
                        await bucket.delete(key)
                    else:
                        await bucket.put(key, value)
                    break
                except Exception as e:  # noqa: BLE001 - NATS away: try again shortly
                    log.debug("cluster: kv %s %s failed (%s)", op, key, e)
                    await asyncio.sleep(0.5)

    async def _watch(self, watcher: Any) -> None:
        node = self.link.node
        worker = self.worker
        try:
            async for entry in watcher:
                if entry is None:
                    continue  # the end of the initial values
                try:
                    if entry.operation in ("DEL", "PURGE") or not entry.value:
                        msg = Message(from_key(entry.key), b"", 0, True)
                    else:
                        origin, rec = msgpack.unpackb(entry.value, raw=False)
                        if origin == node:
                            continue  # we set it: our workers have it already
                        msg = Message.from_record(rec)
                    # Worker 0 keeps the node's LMDB copy; every worker its memory copy.
                    worker.retained.set(msg, persist=worker.index == 0)
                    worker.schedule_tick()
                except Exception:  # noqa: BLE001 - one bad entry must not end the watch
                    log.exception("cluster: bad retained entry %s", entry.key)
        except Exception:  # noqa: BLE001 - watch ended with its connection; joined() renews it
            return

    # -- client ids ----------------------------------------------------------------------------
    def claim(self, cid: str, clean: bool, proceed: Callable[[], None]) -> None:
        """Before the local claim: take cid's session from the node that holds it."""
        asyncio.get_running_loop().create_task(self._claim(cid, clean, proceed))

    async def _claim(self, cid: str, clean: bool, proceed: Callable[[], None]) -> None:
        try:
            await self._take(cid, clean)
        except Exception as e:  # noqa: BLE001 - NATS trouble: this node serves the client anyway
            log.warning("cluster: takeover of %r failed (%s)", cid, type(e).__name__)
        if self.clients is not None and self.link.connected:
            try:
                # Written before the CONNACK, so a CONNECT on another node right after finds us.
                await asyncio.wait_for(self.clients.put(kv_key(cid), self.link.node.encode()),
                                       KV_TIMEOUT)
            except Exception:  # noqa: BLE001 - NATS away: the next CONNECT writes it
                self.ops.put_nowait(("client", kv_key(cid), self.link.node.encode()))
        proceed()
        self.worker.schedule_tick()

    async def _take(self, cid: str, clean: bool) -> None:
        if self.clients is None or not self.link.connected:
            return
        try:
            entry = await asyncio.wait_for(self.clients.get(kv_key(cid)), KV_TIMEOUT)
        except Exception:  # noqa: BLE001 - KeyNotFound: nobody had it; or JetStream is slow
            return
        owner = entry.value.decode() if entry.value else ""
        if not owner or owner == self.link.node:
            return
        data, answered = await self._ask_owner(owner, cid, clean)
        if not answered and self.link.durable is not None:
            data = await self.link.durable.left_by(owner, cid)  # its node is gone
        if data and not clean:
            self._install(cid, data)

    async def _ask_owner(self, owner: str, cid: str, clean: bool) -> tuple[Any, int]:
        """Every worker of ``owner`` answers: the holder with the session (or None
        for a clean start), the others None. We wait for the holder's answer, or
        for all of them, or TAKE_TIMEOUT (the node is gone)."""
        nc = self.link.nc
        expected = self.link.node_workers.get(owner, 1 << 30)  # unknown: wait for the holder
        answers: list[Any] = []
        done = asyncio.Event()

        async def on_reply(m: Any) -> None:
            try:
                holder, data = msgpack.unpackb(m.data, raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001
                return
            answers.append(data)
            if holder or len(answers) >= expected:
                done.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_reply)
        try:
            await nc.publish(take_subject(owner),
                             msgpack.packb([cid, clean, self.link.node, self.link.index]),
                             reply=inbox)
            try:
                await asyncio.wait_for(done.wait(), TAKE_TIMEOUT)
            except TimeoutError:
                pass
        finally:
            await sub.unsubscribe()
        return next((a for a in answers if a), None), len(answers)

    def _install(self, cid: str, data: dict) -> None:
        """Write the handed-over session into our LMDB and load it here."""
        store = self.worker.store
        sessions = self.worker.sessions
        held = sessions.sessions.get(cid)
        if held is not None:
            if held.moved_to != REMOTE_MOVE:
                return  # a local session wins (it was never on the other node)
            # It left us a moment ago and comes back: the other node's copy is current.
            self.link.moved.pop(cid, None)
            held.moved_to = -1
            sessions.destroy(held, publish_will=False)
        store.put("sessions", cid.encode(), data["rec"])
        for i, qrec in enumerate(data["entries"], 1):
            if len(qrec[0]) > 8:
                # Message ids are unique per node only: another node's could pass here
                # for a repeat of one of ours (registry._repeat, Session.seen).
                qrec[0][8] = 0
            store.put("queue", queue_key(cid, i), qrec)
        for pid in data["qos2"]:
            store.put("inflight", cid.encode() + b"\x00" + pid.to_bytes(2, "big"), 1)
        store.commit()
        session = sessions.adopt(cid)
        if session is not None:
            self.link.deliver_early(session)

    async def _on_take(self, m: Any) -> None:
        """Another node has a CONNECT for a client id: answer if this worker holds it."""
        try:
            cid, clean, to_node, to_worker = msgpack.unpackb(m.data, raw=False)
        except Exception:  # noqa: BLE001 - a stranger on our subject
            return
        sessions = self.worker.sessions
        session = sessions.sessions.get(cid)
        if session is None:
            await m.respond(msgpack.packb([False, None]))  # not this worker
            return
        if session.conn is not None:
            sessions._take_over(session, clean)
        data = session_data(session) if not clean and session.persistent else None
        if data is None:
            sessions.destroy(session, publish_will=False)
        else:
            self._moving(session, to_node, to_worker)
        self.worker.schedule_tick()
        await m.respond(msgpack.packb([True, data]))

    def _moving(self, session: Any, to_node: str, to_worker: int) -> None:
        """Make before break: until the new node's routes are everywhere, messages
        that still come here for the session are forwarded to it (at least once)."""
        type(self.worker.sessions)._cancel_timers(session)
        session.discard_state()  # handed over with the session
        session.moved_to = REMOTE_MOVE
        self.link.moved[session.client_id] = (to_node, to_worker)
        self.worker.router.invalidate()
        asyncio.get_running_loop().call_later(MOVE_GRACE, self._moved, session)

    def _moved(self, session: Any) -> None:
        self.link.moved.pop(session.client_id, None)
        sessions = self.worker.sessions
        held = sessions.sessions.get(session.client_id)
        if held is not None and held is session:
            held.moved_to = -1
            sessions.destroy(held, publish_will=False)
            self.worker.schedule_tick()


def session_data(session: Any) -> dict:
    """A persistent session as another node installs it (see _install)."""
    entries = []
    for pid, e in session.inflight.items():
        entries.append([e[1].to_record(), e[2], e[3], e[4], pid, e[0]])
    for e in session.queue or ():
        entries.append([e[1].to_record(), e[2], e[3], e[4], 0, e[0]])
    return {"rec": {"v": session.version, "e": session.expiry,
                    "s": {f: o.to_record() for f, o in session.subs.items()},
                    "d": session.disconnected_at or time.time(), "p": session.next_pid, "f": -1},
            "entries": entries, "qos2": sorted(session.qos2_in)}


async def _bucket(js: Any, name: str) -> Any:
    """Bind to the bucket, or create it: three replicas where NATS is clustered."""
    try:
        return await js.key_value(name)
    except Exception:  # noqa: BLE001 - not there yet
        pass
    err: Exception = RuntimeError(f"cannot create bucket {name}")
    for replicas in (3, 1):
        try:
            return await js.create_key_value(bucket=name, history=1, replicas=replicas)
        except Exception as e:  # noqa: BLE001 - fewer servers than replicas: try fewer
            err = e
    raise err
