"""Nodes joined into one broker through NATS (DESIGN.md, "Beyond one machine").

The bus has two transports. Between the workers of one host it stays the
unix-socket mesh of bus.py, untouched (nothing within a host gets slower).
Between hosts it is NATS: *every worker* holds its own NATS connection, so a
publish that matches subscribers on another node leaves from the worker that
received it, straight to that node, with no hop through a gateway process.

Each node receives on one subject per worker, ``bwfast.in.<node>.<w>``; a
sender worker ``i`` always writes to worker ``i % nworkers`` of the target
node, so one publisher's messages take one path (NATS keeps the order of one
connection's messages on one subject) and keep their order per topic. The
receiving worker delivers to its own subscribers and hands the rest to its
peer workers over the unix bus, as it does for its own clients' messages.

Routes are a merge table (EMQX's design): each worker owns its
filter -> (node, worker) rows and announces them on ``bwfast.routes``
(``+``/``-`` changes with a generation number, a full ``snap`` on join, on a
``req`` and when a gap in the generations shows one was missed, ``hb`` every
lease/4). Every worker merges the rows per node: the router sees a remote
node as one peer id (REMOTE_BASE + n), so a publish crosses once per node
with a matching subscriber, never once per subscriber or per remote worker.
A node worker not heard from for ``[cluster] lease`` seconds has its rows
dropped.

Frames on ``bwfast.in.<node>.<w>`` are msgpack ``[from node, from worker,
items]``, one per destination per loop iteration; items:

    ["p", rec, normal, groups, seq]   a message matched for that node; seq != 0: confirm
    ["d", seq]                        the message of seq is held (see ``attach``)

A QoS 1/2 PUBACK/PUBREC waits for every node it was forwarded to: the
receiving worker answers once the message is committed to its LMDB where a
persistent session needs it, and its own peer workers have it (the same
``Worker.ack`` bookkeeping a local publish uses). No answer within the lease:
the publisher is disconnected without the ack and resends (at least once).
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.codes import UNSPECIFIED_ERROR
from bwfast.message import Message
from bwfast.nodeapi import NodeAPI
from bwfast.nodedurable import DurableSessions
from bwfast.nodekv import NodeKV
from bwfast.nodesync import NodeSync

if TYPE_CHECKING:
    from bwfast.worker import AckTarget, Worker

log = logging.getLogger("bwfast.nodes")

REMOTE_BASE = 1 << 20  # router peer ids of remote nodes start here (workers are below)
ROUTES = "bwfast.routes"
FRAME_ITEMS = 1000     # messages per frame at most (a flood is sent as it comes)
MAX_EARLY = 10_000     # messages kept for a moving session not here yet
EARLY_KEEP = 10.0      # seconds they are kept
ROUTE_TIMEOUT = 2.0    # seconds a SUBACK waits for other nodes at most
SYS = "bwfast.sys"     # [node, figures]: each node's worker 0, every sys_interval
RETRY = 1.0            # seconds between connection attempts until the first one works


def inbox(node: str, worker: int) -> str:
    return f"bwfast.in.{node}.{worker}"


class _RemoteAcker:
    """The AckTarget of one remote (node, worker): Worker.ack orders our answers to it."""

    def __init__(self, link: NodeLink, node: str, worker: int) -> None:
        self.link = link
        self.node = node
        self.worker = worker
        self.acks: deque[list] | None = None

    def write(self, data: bytes) -> None:
        self.link.queue(self.node, self.worker, ["d", int.from_bytes(data, "big")])

    def disconnect(self, reason_code: int, reason: str = "") -> None:
        """Our peer workers never confirmed: say nothing, the sender times out and
        disconnects its publisher, who sends again."""


class NodeLink:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.cfg = worker.cfg.cluster
        self.node = self.cfg.node_name
        self.index = worker.index
        self.nworkers = worker.nworkers
        self.nc: Any = None
        self.connected = False
        self.closed = False
        self.warned = False
        self.lost = 0  # frames NATS would not take during this outage
        # The merge table: (node, worker) -> its filters; (node, filter) -> workers having it.
        self.rows: dict[tuple[str, int], set[str]] = {}
        self.gens: dict[tuple[str, int], int] = {}
        self.heard: dict[tuple[str, int], float] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.node_workers: dict[str, int] = {}
        self.ids: dict[str, int] = {}
        self.names: dict[int, str] = {}
        # Our own announcements.
        self.gen = 0
        self.changes: list[list[Any]] = []
        # Batched frames: (node, worker) -> items, sent in order by one task.
        self.items: dict[tuple[str, int], list[Any]] = {}
        self.outq: list[tuple[str, bytes]] = []
        self.wake = asyncio.Event()
        self._seq = 0
        # seq -> [node ids or (node, worker)s to answer, conn, entry, deadline, is routes]
        self.waiters: dict[int, list[Any]] = {}
        self.ackers: dict[tuple[str, int], _RemoteAcker] = {}
        self._rr: dict[tuple[str, str], int] = {}
        self._last_hb = 0.0
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._pub_cmd: Any = None
        self.tasks: list[asyncio.Task] = []
        self.kv = NodeKV(self)
        self.moved: dict[str, tuple[str, int]] = {}  # client id -> (node, worker) it moved to
        self.early: dict[str, tuple[float, list]] = {}  # client id -> (since, forwarded msgs)
        self.api = NodeAPI(self)
        self.sync = NodeSync(self)
        self.durable = DurableSessions(self) if self.cfg.durable_sessions else None
        self.node_figures: dict[str, tuple[float, list[int]]] = {}

    # -- connection ------------------------------------------------------------------------------
    async def start(self, wait: float = 3.0) -> None:
        """Connect (or, failing that, say so once and keep trying in the background)."""
        loop = asyncio.get_running_loop()
        first = loop.create_future()
        self.tasks.append(loop.create_task(self._connect_loop(first)))
        self.tasks.append(loop.create_task(self._sender()))
        try:
            await asyncio.wait_for(asyncio.shield(first), wait)
        except TimeoutError:
            self._cannot_reach("no answer")

    def _cannot_reach(self, why: str) -> None:
        if not self.warned and self.index == 0:
            log.warning("cluster: node %s cannot reach NATS at %s (%s); serving local "
                        "clients, joining when NATS is back", self.node, self.cfg.nats, why)
        self.warned = True

    def _options(self) -> dict[str, Any]:
        cfg = self.cfg
        opts: dict[str, Any] = {
            "servers": cfg.nats.split(","), "name": f"bwfast-{self.node}-{self.index}",
            "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
            "connect_timeout": 2, "pending_size": 64 * 1024 * 1024,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if cfg.user:
            opts["user"], opts["password"] = cfg.user, cfg.password
        if cfg.credentials:
            opts["user_credentials"] = cfg.credentials
        if cfg.tls_cafile or cfg.tls_certfile:
            ctx = ssl.create_default_context(cafile=cfg.tls_cafile or None)
            if cfg.tls_certfile:
                ctx.load_cert_chain(cfg.tls_certfile, cfg.tls_keyfile)
            opts["tls"] = ctx
        return opts

    async def _connect_loop(self, first: asyncio.Future) -> None:
        import nats  # imported here: a broker without [cluster] never loads it
        from nats.protocol.command import pub_cmd

        self._pub_cmd = pub_cmd

        while not self.closed:
            try:
                # nats-py keeps trying until it gets through (max_reconnect_attempts=-1);
                # start() says so when that takes long.
                nc = await nats.connect(**self._options())
            except Exception as e:  # noqa: BLE001 - a bad URL, TLS files...
                self._cannot_reach(type(e).__name__)
                if not first.done():
                    first.set_result(False)
                await asyncio.sleep(RETRY)
                continue
            self.nc = nc
            await nc.subscribe(ROUTES, cb=self._on_routes)
            await nc.subscribe(inbox(self.node, self.index), cb=self._on_inbox)
            if self.index == 0:
                await nc.subscribe(SYS, cb=self._on_sys)
            await asyncio.wait({await self._joined()}, timeout=3.0)
            if self.index == 0:
                log.info("cluster: node %s joined through NATS at %s", self.node,
                         nc.connected_url.netloc if nc.connected_url else self.cfg.nats)
            if not first.done():
                first.set_result(True)
            return

    async def _joined(self) -> asyncio.Task:
        self.connected = True
        now = time.monotonic()
        for key in self.heard:  # we heard nobody while away: their lease starts again
            self.heard[key] = now
        self._announce("snap", list(self.worker.router.local_routes))
        self._announce("req", [])
        self.worker.schedule_tick()
        return asyncio.get_running_loop().create_task(self._kv_joined())

    async def _kv_joined(self) -> None:
        """The buckets; JetStream may not be ready yet (a NATS cluster electing its
        leader): routing works meanwhile, and we try again every second."""
        warned = False
        while self.connected and not self.closed:
            try:
                await self.kv.joined()
                await self.api.joined()
                await self.sync.joined()
                if self.durable is not None:
                    await self.durable.joined()
                return
            except Exception as e:  # noqa: BLE001 - JetStream not (yet) available
                if not warned and self.index == 0:
                    log.warning("cluster: JetStream buckets unavailable (%s); retrying",
                                type(e).__name__)
                warned = True
                await asyncio.sleep(RETRY)

    async def _on_error(self, e: Exception) -> None:
        log.debug("cluster: NATS error %s", e)

    async def _on_disconnected(self) -> None:
        if self.connected and self.index == 0 and not self.closed:
            log.warning("cluster: node %s lost NATS; reconnecting", self.node)
        self.connected = False

    async def _on_reconnected(self) -> None:
        if self.index == 0:
            log.info("cluster: node %s back on NATS", self.node)
        if self.lost:
            log.warning("cluster: %d frames to other nodes were lost while NATS was away",
                        self.lost)
            self.lost = 0
        await self._joined()

    async def close(self) -> None:
        self.closed = True
        self.flush()
        nc = self.nc
        if nc is not None:
            try:
                for topic, data in self.outq:
                    await nc.publish(topic, data)
                self.outq.clear()
                await asyncio.wait_for(nc.drain(), 2.0)
            except Exception:  # noqa: BLE001 - shutting down anyway
                pass
        for task in self.tasks:
            task.cancel()

    # -- sending -----------------------------------------------------------------------------------
    def queue(self, node: str, worker: int, item: list[Any]) -> None:
        items = self.items.get((node, worker))
        if items is None:
            items = self.items[(node, worker)] = []
        if not items and not self.outq:
            self.worker.schedule_tick()
        items.append(item)
        if len(items) >= FRAME_ITEMS:  # a flood: don't let one frame carry it all at once
            self.items[(node, worker)] = []
            self._frames(inbox(node, worker), items)
            self._drain()

    def _announce(self, kind: str, filters: list[Any], seq: int = 0) -> None:
        self.outq.append((ROUTES, self._pack(
            [self.node, self.index, self.nworkers, kind, self.gen, filters, seq])))
        self.wake.set()

    def announce(self) -> int:
        """Send our route changes; return a seq a SUBACK waits on (0: none): every
        worker of every node we hear from answers once its trie has the new rows,
        so a message published anywhere after the SUBACK reaches the subscriber."""
        if not self.changes:
            return 0
        seq = 0
        for kind, filters in _coalesce(self.changes, self.worker.router.local_routes):
            self.gen += 1
            if kind == "+" and self.connected and self.heard:
                seq = self.next_seq()
                self.waiters[seq] = [set(self.heard), None, None,
                                     time.monotonic() + ROUTE_TIMEOUT, True]
                self._announce(kind, filters, seq)
            else:
                self._announce(kind, filters)
        self.changes.clear()
        return seq

    def flush(self) -> None:
        """Once per loop iteration (Worker._tick): route changes, then one frame per target."""
        self.announce()
        if self.items:
            for (node, worker), items in self.items.items():
                self._frames(inbox(node, worker), items)
            self.items = {}
        self._drain()

    def _drain(self) -> None:
        outq = self.outq
        if outq:
            sent = 0
            for subject, data in outq:
                if not self._write_now(subject, data):
                    break
                sent += 1
            del outq[:sent]
            if outq:
                self.wake.set()

    def _frames(self, subject: str, items: list[Any]) -> None:
        """One frame for the items, or halves of them while a frame exceeds the
        server's max_payload (1 MB by default); an item alone too big is dropped."""
        data = self._pack([self.node, self.index, items])
        limit = self.nc.max_payload if self.nc is not None else 1 << 20
        if len(data) <= limit - 512:  # room for the protocol line
            self.outq.append((subject, data))
        elif len(items) > 1:
            half = len(items) // 2
            self._frames(subject, items[:half])
            self._frames(subject, items[half:])
        else:
            log.warning("cluster: a %d-byte message exceeds NATS max_payload; not sent to %s",
                        len(data), subject)

    def _write_now(self, subject: str, data: bytes) -> bool:
        """Write a frame to the NATS socket at once, as the unix bus does, when
        nothing of ours or the client's is waiting: nats-py's publish takes a task
        and a flusher hop, two loop iterations that a worker flooded with
        publishes makes long. Uses nats-py internals (pinned >= 2.9); anything
        unexpected and the frame takes the ordinary path."""
        nc = self.nc
        try:
            if nc is None or not nc.is_connected or nc._pending_data_size:
                return False
            nc._transport.write(self._pub_cmd(subject, "", data))
            nc.stats["out_msgs"] += 1
            nc.stats["out_bytes"] += len(data)
            return True
        except Exception:  # noqa: BLE001 - a different nats-py: the ordinary path
            return False

    async def _sender(self) -> None:
        """One task publishes everything, in the order flush() queued it."""
        while not self.closed:
            await self.wake.wait()
            self.wake.clear()
            nc = self.nc
            if nc is None or not self.outq:
                continue
            batch, self.outq = self.outq, []
            for subject, data in batch:
                try:
                    await nc.publish(subject, data)
                except Exception as e:  # noqa: BLE001 - closed or buffer full: lost, see README
                    self.lost += 1
                    if self.lost == 1:  # once per outage: a flood of these helps nobody
                        log.warning("cluster: frames to other nodes lost while NATS is away "
                                    "(%s); counted until it is back", type(e).__name__)

    # -- routes out -------------------------------------------------------------------------------
    def route_added(self, filt: str) -> None:
        self.changes.append(["+", filt])
        self.worker.schedule_tick()

    def route_removed(self, filt: str) -> None:
        self.changes.append(["-", filt])
        self.worker.schedule_tick()

    # -- routes in ---------------------------------------------------------------------------------
    async def _on_routes(self, m: Any) -> None:
        try:
            node, w, nworkers, kind, gen, filters, seq = msgpack.unpackb(m.data, raw=False)
        except Exception:  # noqa: BLE001 - a stranger on our subject
            return
        if node == self.node:
            return
        key = (node, w)
        self.heard[key] = time.monotonic()
        self.node_workers[node] = nworkers
        if kind == "req":
            if not filters or filters == [self.node, self.index]:
                self._announce("snap", list(self.worker.router.local_routes))
            return
        if kind == "snap":
            self._replace(key, filters)
            self.gens[key] = gen
        elif kind in ("+", "-"):
            if self.gens.get(key, -1) + 1 != gen:
                self._announce("req", [node, w])  # we missed a change: ask for the whole table
            self.gens[key] = gen
            if kind == "+":
                for filt in filters:
                    self._add(key, filt)
                if seq:
                    self.queue(node, w, ["ra", seq])
            else:
                for filt in filters:
                    self._remove(key, filt)
        elif kind == "hb" and self.gens.get(key) != gen:
            self._announce("req", [node, w])
        self.worker.schedule_tick()

    def peer_id(self, node: str) -> int:
        pid = self.ids.get(node)
        if pid is None:
            pid = self.ids[node] = REMOTE_BASE + len(self.ids)
            self.names[pid] = node
        return pid

    def _add(self, key: tuple[str, int], filt: str) -> None:
        rows = self.rows.setdefault(key, set())
        if filt in rows:
            return
        rows.add(filt)
        ck = (key[0], filt)
        n = self.counts.get(ck, 0)
        self.counts[ck] = n + 1
        if n == 0:
            self.worker.router.add_peer_route(self.peer_id(key[0]), filt)

    def _remove(self, key: tuple[str, int], filt: str) -> None:
        rows = self.rows.get(key)
        if rows is None or filt not in rows:
            return
        rows.discard(filt)
        ck = (key[0], filt)
        n = self.counts.get(ck, 0) - 1
        if n > 0:
            self.counts[ck] = n
            return
        self.counts.pop(ck, None)
        self.worker.router.remove_peer_route(self.peer_id(key[0]), filt)

    def _replace(self, key: tuple[str, int], filters: list[str]) -> None:
        new = set(filters)
        for filt in list(self.rows.get(key, ())):
            if filt not in new:
                self._remove(key, filt)
        for filt in new:
            self._add(key, filt)

    def remote_nodes(self) -> list[str]:
        """Nodes we currently hear from."""
        return sorted({node for node, _ in self.heard})

    # -- messages out ------------------------------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def forward(self, msg: Message, forwards: dict[int, list], confirm: bool) -> int:
        """Take the remote nodes out of ``forwards`` and send msg once to each;
        return a seq to wait on (0: nothing to wait for)."""
        remote = [pid for pid in forwards if pid >= REMOTE_BASE]
        if not remote:
            return 0
        rec = msg.to_record()
        seq = self.next_seq() if confirm else 0
        for pid in remote:
            normal, groups = forwards.pop(pid)
            node = self.names[pid]
            target = self.index % max(1, self.node_workers.get(node, 1))
            self.queue(node, target, ["p", rec, normal, groups, seq])
        self.worker.stats.forwarded += len(remote)
        if confirm:
            self.waiters[seq] = [set(remote), None, None,
                                 time.monotonic() + self.cfg.lease, False]
        return seq

    def attach(self, seq: int, conn: AckTarget, entry: list) -> bool:
        w = self.waiters.get(seq)
        if w is None:
            return False
        w[1] = conn
        w[2] = entry
        return True

    def _answered(self, seq: int, pid: Any) -> None:
        w = self.waiters.get(seq)
        if w is None:
            return
        w[0].discard(pid)
        if not w[0]:
            del self.waiters[seq]
            if w[1] is not None:
                self.worker.release(w[1], w[2])

    # -- messages in -------------------------------------------------------------------------------
    async def _on_inbox(self, m: Any) -> None:
        try:
            node, w, items = msgpack.unpackb(m.data, raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 - a stranger on our subject
            return
        self.heard[(node, w)] = time.monotonic()
        pid = self.peer_id(node)
        for item in items:
            try:
                if item[0] == "p":
                    self._deliver(node, w, item[1], item[2], item[3], item[4])
                elif item[0] == "d":
                    self._answered(item[1], pid)
                elif item[0] == "sf":
                    self._session_forward(*item[1:])
                elif item[0] == "ra":
                    self._answered(item[1], (node, w))
            except Exception:  # noqa: BLE001 - one bad item must not lose the others
                log.exception("cluster: item from %s failed", node)
        self.worker.schedule_tick()

    def _deliver(self, node: str, w: int, rec: list, normal: bool, groups: list,
                 seq: int) -> None:
        """Deliver here and to our peer workers; groups name the shared subscriptions
        this node was picked for: we pick one member among our workers."""
        worker = self.worker
        router = worker.router
        msg = self._local(rec)
        cluster = worker.cluster
        forwards: dict[int, list] = {}
        if normal:
            router.deliver_forwarded(msg, True, [])
            if router.peer_filters:
                for subs in router.peer_cache.match(msg.topic):
                    for key in subs:
                        if type(key) is int and key < REMOTE_BASE:
                            forwards.setdefault(key, [True, []])
        for name, real in groups:
            gkey = (name, real)
            cands: list[int] = []
            subs = router.trie.get(real)
            if subs and ("$share", name) in subs:
                cands.append(-1)
            if router.peer_filters:
                for psubs in router.peer_cache.match(msg.topic):
                    for key, value in psubs.items():
                        if (type(key) is tuple and key[2] < REMOTE_BASE
                                and tuple(value) == gkey):
                            cands.append(key[2])
            if not cands:
                continue
            i = self._rr.get(gkey, 0)
            self._rr[gkey] = i + 1
            choice = cands[i % len(cands)]
            if choice < 0:
                router.deliver_forwarded(msg, False, [gkey])
            else:
                forwards.setdefault(choice, [False, []])[1].append(gkey)
        lseq = 0
        if forwards and cluster is not None:
            lseq = cluster.forward(msg, forwards, bool(seq))
        if seq:
            acker = self.ackers.get((node, w))
            if acker is None:
                acker = self.ackers[(node, w)] = _RemoteAcker(self, node, w)
            worker.ack(acker, seq.to_bytes(8, "big"), None, lseq)

    # -- $SYS (worker 0 of each node) ----------------------------------------------------------------
    def sys_topics(self, totals: dict[str, int], connected: int, sessions: int,
                   subs: int) -> dict[str, str]:
        """Share this node's figures; return `$SYS/broker/nodes/<name>/...` for every
        node heard within the lease and `$SYS/broker/cluster/...` for their sums."""
        mine = [connected, sessions, subs, totals.get("msgs_received", 0),
                totals.get("msgs_sent", 0)]
        if self.connected:
            self.outq.append((SYS, self._pack([self.node, mine])))
            self.wake.set()
        now = time.monotonic()
        rows = {self.node: mine}
        rows.update({n: f for n, (t, f) in self.node_figures.items()
                     if now - t < self.cfg.lease and n != self.node})
        names = ("clients/connected", "clients/total", "subscriptions/count",
                 "messages/received", "messages/sent")
        topics: dict[str, str] = {"$SYS/broker/cluster/nodes": str(len(rows)),
                                  "$SYS/broker/cluster/node": self.node}
        for i, name in enumerate(names):
            topics[f"$SYS/broker/cluster/{name}"] = str(sum(f[i] for f in rows.values()))
            for node, f in rows.items():
                topics[f"$SYS/broker/nodes/{node}/{name}"] = str(f[i])
        return topics

    async def _on_sys(self, m: Any) -> None:
        try:
            node, figures = msgpack.unpackb(m.data, raw=False)
            self.node_figures[str(node)] = (time.monotonic(), [int(x) for x in figures[:5]])
        except Exception:  # noqa: BLE001 - a stranger on our subject
            return

    # -- sessions moving to another node (nodekv.NodeKV._moving) -------------------------------------
    def forward_to_session(self, cid: str, msg: Message, qos: int, retain: bool,
                           sub_ids: list[int] | None) -> None:
        target = self.moved.get(cid)
        if target is not None:
            self.queue(target[0], target[1], ["sf", cid, msg.to_record(), qos, retain, sub_ids])

    def _session_forward(self, cid: str, rec: list, qos: int, retain: bool,
                         sub_ids: list[int] | None) -> None:
        session = self.worker.sessions.sessions.get(cid)
        if session is None:
            # Ahead of the takeover reply that brings the session (another path
            # through NATS): kept until it is installed (NodeKV._install).
            held = self.early.setdefault(cid, (time.monotonic(), []))[1]
            if len(held) < MAX_EARLY:
                held.append((rec, qos, retain, sub_ids))
            return
        session.deliver(self._local(rec), qos, retain, sub_ids)

    def _local(self, rec: list) -> Message:
        """A message from another node, with an id of ours (ids are unique per node)."""
        msg = Message.from_record(rec)
        cluster = self.worker.cluster
        msg.mid = cluster.new_mid() if cluster is not None else 0
        return msg

    def deliver_early(self, session: Any) -> None:
        """Messages forwarded to a moving session that came before it did."""
        for rec, qos, retain, sub_ids in self.early.pop(session.client_id, (0.0, []))[1]:
            session.deliver(self._local(rec), qos, retain, sub_ids)

    # -- leases and timeouts (Worker._scan) ---------------------------------------------------------
    def sweep(self) -> None:
        now = time.monotonic()
        lease = self.cfg.lease
        if self.connected and now - self._last_hb > lease / 4:
            self._last_hb = now
            self._announce("hb", [])
        if self.connected:
            for key, heard in list(self.heard.items()):
                if now - heard > lease:
                    self._drop(key)
        for cid in [c for c, (t, _) in self.early.items() if now - t > EARLY_KEEP]:
            log.warning("cluster: %d messages for session %r that never arrived here",
                        len(self.early.pop(cid)[1]), cid)
        for seq, w in list(self.waiters.items()):
            if now > w[3]:
                del self.waiters[seq]
                if w[4]:  # a route announcement: the lease deals with who never answered
                    if w[1] is not None:
                        self.worker.release(w[1], w[2])
                    continue
                names = [self.names.get(p) for p in w[0]]
                log.warning("cluster: nodes %s did not confirm a message; disconnecting "
                            "the publisher", names)
                if w[1] is not None:
                    w[1].disconnect(UNSPECIFIED_ERROR, "message not confirmed by other nodes")

    def _drop(self, key: tuple[str, int]) -> None:
        """A node's worker went silent for a lease: its rows go, nothing waits for it."""
        node = key[0]
        log.warning("cluster: node %s worker %d silent for %ds; dropping its routes",
                    node, key[1], self.cfg.lease)
        del self.heard[key]
        self.gens.pop(key, None)
        for filt in list(self.rows.pop(key, ())):
            self.rows[key] = {filt}
            self._remove(key, filt)
        self.rows.pop(key, None)
        self.ackers.pop(key, None)
        for seq in [s for s, w in self.waiters.items() if key in w[0]]:
            self._answered(seq, key)
        pid = self.ids.get(node)
        if pid is not None and not any(n == node for n, _ in self.heard):
            for seq in [s for s, w in self.waiters.items() if pid in w[0]]:
                self._answered(seq, pid)  # gone with its subscribers: nothing to wait for
        self.worker.schedule_tick()


def _coalesce(changes: list[list[Any]], held: dict[str, int]) -> list[tuple[str, list[str]]]:
    """The net change per filter since the last announcement, "-" first: a filter
    removed and added again in one iteration (a session moving back) is never
    announced as gone, so the other nodes never lose its route meanwhile."""
    touched = list(dict.fromkeys(filt for _, filt in changes))
    gone = [f for f in touched if f not in held]
    new = [f for f in touched if f in held]
    return [(kind, fs) for kind, fs in (("-", gone), ("+", new)) if fs]
