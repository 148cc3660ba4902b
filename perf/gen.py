"""A load-generator process: one uvloop loop driving many Client connections.

The parent sends commands over a Pipe (setup, start, stop, collect, close, or
one of the single-shot tasks connstorm / retained / backlog) and reads one
reply per command. Live counts go through shared memory (Tally), so the
parent samples throughput without talking to the children.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import time
from array import array
from dataclasses import dataclass, field

from perf import mqtt
from perf.client import Client, Tally
from perf.pacing import Pump, Waker
from perf.storm import Idle, Storm


@dataclass
class Plan:
    """What one generator process connects and how it publishes."""

    host: str
    port: int
    prefix: str                       # client-id prefix, unique per run
    run: str                          # topic prefix component, unique per run
    slot: int = 0                     # this process's index in the shared arrays
    version: int = mqtt.V311
    qos: int = 0
    payload: int = 16
    inflight: int = 20                # QoS 1/2 publisher window of unacknowledged ids
    batch: int = 512                  # messages per write when flat out
    rate: float = 0.0                 # msg/s for this process; 0 = flat out
    stamped: bool = False             # payload carries a send timestamp (latency)
    window: int = 50_000              # flat out: deliveries in flight, all processes
    factor: int = 1                   # deliveries per publish; 0 = nobody receives
    subs: list[tuple[str, str, str]] = field(default_factory=list)  # (id, filter, topic)
    pubs: list[tuple[str, str]] = field(default_factory=list)       # (id, topic)
    sub_port: int = 0                 # subscribers connect here (another node); 0 = port
    connect_concurrency: int = 64


def password(user: str) -> str:
    """The authstorm devices' passwords: one each, known to the harness and the
    password file it makes (perf.brokers.credentials)."""
    return f"pw-{user}-7Kq2"


def child_setup() -> None:
    """In a harness child: Ctrl-C is the parent's to handle (it shuts us down in
    order), and a larger fd limit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()


def raise_nofile() -> int:
    """Raise the soft fd limit to the hard limit; brokers we start inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Agent:
    """Runs the parent's commands in this process."""

    def __init__(self, conn, plan: Plan, sent_arr, recv_arr) -> None:
        self.conn = conn
        self.plan = plan
        self.tally = Tally(sent_arr, recv_arr, plan.slot)
        self.sent_arr = sent_arr
        self.recv_arr = recv_arr
        self.subs: list[Client] = []
        self.pubs: list[Client] = []
        self.others: list[Client] = []
        self.idle: list[Idle] = []
        self.pump: Pump | None = None
        self.waker: Waker | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        loop.add_reader(self.conn.fileno(), lambda: inbox.put_nowait(self.conn.recv()))
        while True:
            name, *args = await inbox.get()
            try:
                reply = ("ok", await getattr(self, "cmd_" + name)(*args))
            except Exception as exc:  # reported to the parent, which decides
                reply = ("error", f"{type(exc).__name__}: {exc}")
            os.set_blocking(self.conn.fileno(), True)  # add_reader made it non-blocking
            self.conn.send(reply)
            if name == "close":
                loop.remove_reader(self.conn.fileno())
                return

    async def open(self, client_id: str, *, qos: int = 0, clean: bool = True,
                   session_expiry: int = 0, tally: Tally | None = None,
                   port: int = 0) -> Client:
        """TCP connect + MQTT CONNECT/CONNACK."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: Client(tally or self.tally, plan.version, qos, plan.inflight),
            plan.host, port or plan.port)
        try:
            await client.connect(client_id, clean, session_expiry)
        except BaseException:
            client.close()
            raise
        return client

    async def _each(self, items: list, fn, concurrency: int) -> list:
        """Run fn over items with at most `concurrency` in flight; returns exceptions too."""
        it = iter(enumerate(items))
        out: list = [None] * len(items)

        async def worker() -> None:
            for i, item in it:
                try:
                    out[i] = await fn(item)
                except Exception as exc:
                    out[i] = exc

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out

    # -- flow scenarios -----------------------------------------------------

    async def cmd_setup(self) -> int:
        plan = self.plan

        async def sub(spec: tuple[str, str, str]) -> Client:
            cid, flt, topic = spec
            client = await self.open(cid, port=plan.sub_port)
            if plan.stamped:
                client.latency = array("q")
            elif topic:
                client.expect(topic, plan.payload, plan.qos)
            await client.subscribe([flt], plan.qos)
            return client

        async def pub(spec: tuple[str, str]) -> Client:
            cid, topic = spec
            client = await self.open(cid, qos=plan.qos)
            client.prepare(topic, plan.payload, plan.batch, plan.stamped)
            return client

        subs = await self._each(plan.subs, sub, plan.connect_concurrency)
        pubs = await self._each(plan.pubs, pub, plan.connect_concurrency)
        self.subs = [c for c in subs if isinstance(c, Client)]
        self.pubs = [c for c in pubs if isinstance(c, Client)]
        for c in subs + pubs:
            if isinstance(c, BaseException):
                await self.cmd_close()
                raise c
        self.pump = Pump(plan, self.pubs, self.tally, self.sent_arr, self.recv_arr)
        return len(self.subs) + len(self.pubs)

    async def cmd_start(self, t0: int, lat_from: int, lat_to: int) -> None:
        for c in self.subs:
            c.lat_window = (lat_from, lat_to)
        self._naps()
        assert self.pump is not None
        self.pump.start(t0)

    async def cmd_stop(self) -> int:
        assert self.pump is not None
        self.pump.stop()
        return self.tally.sent

    async def cmd_collect(self) -> dict:
        lat = array("q")
        for c in self.subs:
            if c.latency is not None:
                lat.extend(c.latency)
        everyone = self.subs + self.pubs
        return {"lat": lat.tobytes(), "sent": self.tally.sent, "recv": self.tally.recv,
                "skipped": self.pump.skipped if self.pump else 0,
                "disconnected": sum(1 for c in everyone if c.transport is None)}

    def _naps(self) -> None:
        """Read in bulk: 1 ms naps at QoS 0; at QoS 1 0.5 ms naps after small reads
        only (the broker sends a subscriber at most max_inflight unacknowledged
        messages, so a full window is acked at once). QoS 2 and latency runs
        read at once. Napping changes nothing the broker does (it wrote each
        message already); it only spares the harness CPU the broker needs."""
        plan = self.plan
        if plan.stamped or plan.qos == 2 or plan.payload > 4096:
            return  # (large messages: a read per message costs little, socket buffers fill)
        self.waker = Waker(1_000_000 if plan.qos == 0 else 500_000)
        for c in self.subs:
            c.napper = self.waker.add
            c.nap_below = 1 << 60 if plan.qos == 0 else 10  # half of max_inflight 20
        for c in self.pubs if plan.qos else []:
            c.napper = self.waker.add
            c.nap_below = max(1, c.inflight // 2)

    async def cmd_close(self) -> None:
        if self.pump is not None:
            self.pump.stop()
        if self.waker is not None:
            for c in self.subs + self.pubs:
                c.napper = None
            self.waker.stop()
            self.waker = None
        everyone: list[Client | Idle] = [*self.subs, *self.pubs, *self.others, *self.idle]
        for conn in everyone:
            conn.close()
        self.subs, self.pubs, self.others, self.idle = [], [], [], []
        await asyncio.sleep(0.05)

    # -- single-shot scenarios ---------------------------------------------

    async def cmd_connstorm(self, ids: list[str], concurrency: int,
                            users: list[str] | None = None) -> dict:
        """Connect every id (clean session) and keep it open; report how long it took.

        At most `concurrency` connections wait for their CONNACK at a time, so
        the broker's accept queue never overflows (a dropped SYN costs 1 s).
        With `users`, id i logs in as users[i] with password(users[i]).
        """
        logins = dict(zip(ids, users, strict=True)) if users else {}
        loop = asyncio.get_running_loop()
        storm = Storm(len(ids), asyncio.Semaphore(concurrency), loop.create_future())
        it = iter(ids)

        async def worker() -> None:
            for cid in it:
                await storm.slots.acquire()
                user = logins.get(cid, "")
                hello = mqtt.connect(cid, version=self.plan.version, username=user,
                                     password=password(user) if user else "")
                try:
                    _, idle = await loop.create_connection(lambda h=hello: Idle(storm, h),  # type: ignore[misc]
                                                           self.plan.host, self.plan.port)
                    self.idle.append(idle)
                except OSError as exc:
                    storm.error = storm.error or f"{type(exc).__name__}: {exc}"
                    storm.answer(False)

        t0 = time.monotonic_ns()
        await asyncio.gather(*(worker() for _ in range(8)))
        try:
            await asyncio.wait_for(storm.done, 60)
        except TimeoutError:
            storm.error = storm.error or "CONNACKs missing after 60 s"
        return {"t0": t0, "t1": storm.last, "ok": storm.ok, "failed": len(ids) - storm.ok,
                "error": storm.error}

    async def cmd_retained(self, n: int, payload: int, qos: int, stall: float) -> dict:
        """Store n retained topics (QoS 1, acknowledged), then time a wildcard subscriber."""
        plan = self.plan
        v = plan.version
        body = b"\x00" * payload
        topics = [f"b/{plan.run}/r/{i:05d}" for i in range(n)]
        pub = await self.open(plan.prefix + "rp", qos=1)
        self.others.append(pub)
        pkts = [mqtt.publish(t, body, 1, i % 65535 + 1, True, v) for i, t in enumerate(topics)]
        t0 = time.monotonic()
        stored = await pub.send_list(pkts, stall)
        t1 = time.monotonic()
        sub = await self.open(plan.prefix + "rs", tally=Tally())
        self.others.append(sub)
        t2 = time.monotonic()
        assert sub.transport is not None
        sub.transport.write(mqtt.subscribe(1, [f"b/{plan.run}/r/#"], qos, v))
        complete = await sub.wait_count(n, stall)
        t3 = time.monotonic()
        got = sub.received
        # An empty retained message deletes the topic's retained one [MQTT-3.3.1-10].
        await pub.send_list([mqtt.publish(t, b"", 1, i % 65535 + 1, True, v)
                             for i, t in enumerate(topics)], stall)
        await self.cmd_close()
        return {"stored": stored, "store_per_s": n / (t1 - t0), "complete": complete,
                "received": got, "seconds": t3 - t2, "per_s": got / (t3 - t2)}

    async def cmd_backlog(self, n: int, payload: int, stall: float) -> dict:
        """Queue n QoS 1 messages for an offline persistent session, then time its drain."""
        plan = self.plan
        cid = plan.prefix + "bq"
        topic = f"b/{plan.run}/q/00000"
        expiry = 3600 if plan.version == mqtt.V5 else 0
        sub = await self.open(cid, clean=False, session_expiry=expiry, tally=Tally())
        await sub.subscribe([topic], 1)
        sub.close()
        await asyncio.sleep(0.3)
        pub = await self.open(plan.prefix + "bp", qos=1)
        self.others.append(pub)
        body = b"\x00" * payload
        pkts = [mqtt.publish(topic, body, 1, i % 65535 + 1, False, plan.version)
                for i in range(n)]
        t0 = time.monotonic()
        queued = await pub.send_list(pkts, stall)
        t1 = time.monotonic()
        loop = asyncio.get_running_loop()
        _, sub = await loop.create_connection(
            lambda: Client(Tally(), plan.version, 0, plan.inflight), plan.host, plan.port)
        self.others.append(sub)
        sub.expect(topic, payload, 1)
        t2 = time.monotonic()
        present = await sub.connect(cid, clean=False, session_expiry=expiry)
        complete = await sub.wait_count(n, stall)
        t3 = time.monotonic()
        got = sub.received
        await self.cmd_close()
        await asyncio.sleep(0.1)
        # Reconnecting with a clean session discards the stored one [MQTT-3.1.2-6].
        (await self.open(cid, clean=True)).close()
        return {"queued": queued, "enqueue_per_s": n / (t1 - t0), "session_present": present,
                "complete": complete, "received": got, "lost": max(0, n - got),
                "drain_s": t3 - t2, "drain_per_s": got / (t3 - t2)}


def child_main(conn, plan: Plan, sent_arr, recv_arr) -> None:
    """Entry point of a generator process."""
    import uvloop

    child_setup()
    out = os.environ.get("PERF_PROFILE")  # a directory: cProfile each generator there
    if not out:
        uvloop.run(Agent(conn, plan, sent_arr, recv_arr).serve())
        return
    import cProfile

    cProfile.runctx("uvloop.run(Agent(conn, plan, sent_arr, recv_arr).serve())",
                    globals(), locals(), os.path.join(out, f"gen-{os.getpid()}.prof"))
