"""A load-generator process: one uvloop loop driving many Client connections.

The parent sends commands over a Pipe (setup, start, stop, collect, close, or
one of the single-shot tasks connstorm / retained / backlog) and reads one
reply per command. Live counts go through shared memory (Tally), so the
parent samples throughput without talking to the children.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import signal
import socket
import time
from array import array
from dataclasses import dataclass, field

from perf import mqtt
from perf.client import LINGER0, Client, Tally


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
    connect_concurrency: int = 64


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


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Ticker:
    """Calls `fn` every `period_ns`: a timerfd when it can, else loop.call_later.

    The event loop's own timers have 1 ms resolution; a fixed-rate publisher
    driven by them sends a burst each millisecond, which is not the "one
    message at a time" load the latency and CPU scenarios want. A timerfd
    (with timer slack cut to 1 ns) wakes the loop on time to ~10 us.
    """

    def __init__(self, period_ns: int, fn) -> None:
        self.fn = fn
        self.period_ns = period_ns
        self.loop = asyncio.get_running_loop()
        self.fd = -1
        self.handle: asyncio.TimerHandle | None = None
        if period_ns < 1_000_000:
            self.fd = self._timerfd(period_ns)
        if self.fd >= 0:
            self.loop.add_reader(self.fd, self._on_fd)
        else:
            self._on_timer()

    @staticmethod
    def _timerfd(period_ns: int) -> int:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK: 1 ns
            fd = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return -1
            t = _Timespec(period_ns // 1_000_000_000, period_ns % 1_000_000_000)
            if libc.timerfd_settime(fd, 0, ctypes.byref(_Itimerspec(t, t)), None) != 0:
                os.close(fd)
                return -1
            return fd
        except (OSError, AttributeError):
            return -1

    def _on_fd(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        self.fn()

    def _on_timer(self) -> None:
        self.fn()
        self.handle = self.loop.call_later(max(0.001, self.period_ns / 1e9), self._on_timer)

    def stop(self) -> None:
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Waker:
    """Resumes reading on napping clients every period (see Client.napper)."""

    def __init__(self, period_ns: int) -> None:
        self.sleeping: list[Client] = []
        self.ticker = Ticker(period_ns, self.wake)

    def add(self, client: Client) -> None:
        self.sleeping.append(client)

    def wake(self) -> None:
        sleeping, self.sleeping = self.sleeping, []
        for client in sleeping:
            client.wake()

    def stop(self) -> None:
        self.ticker.stop()
        self.wake()


class Pump:
    """Feeds the publishers of this process, flat out or at a fixed rate.

    Flat out, the budget is the delivery window: (published x factor) -
    received, summed over all processes from shared memory, so we measure what
    the broker delivers, not what piles up in socket buffers. If deliveries
    stop while the window is full (a broker dropping QoS 0), the outstanding
    messages are written off after 0.3 s so the run continues.
    """

    def __init__(self, plan: Plan, pubs: list[Client], tally: Tally, sent_arr, recv_arr) -> None:
        self.plan = plan
        self.pubs = pubs
        self.tally = tally
        self.sent_arr = sent_arr
        self.recv_arr = recv_arr
        self.running = False
        self.filling = False
        self.t0 = 0
        self.issued = 0
        self.skipped = 0
        self.forgiven = 0
        self.last_recv = -1
        self.last_change = 0.0
        self.ticker: Ticker | None = None

    def start(self, t0_ns: int) -> None:
        self.t0 = t0_ns
        self.running = True
        for p in self.pubs:
            p.on_ready = self.fill
        if self.plan.factor and not self.plan.rate:
            self.tally.kick = self.fill
        # Fixed rate: about one message per tick, but no tick shorter than 50 us.
        period = max(50_000, int(1e9 / self.plan.rate)) if self.plan.rate else 1_000_000
        self.ticker = Ticker(period, self.fill)

    def stop(self) -> None:
        self.running = False
        self.tally.kick = None
        for p in self.pubs:
            p.on_ready = None
        if self.ticker is not None:
            self.ticker.stop()
            self.ticker = None

    def fill(self) -> None:
        if not self.running or self.filling or time.monotonic_ns() < self.t0:
            return
        self.filling = True
        try:
            if self.plan.rate:
                self._fill_rate()
            else:
                self._fill_flat()
        finally:
            self.filling = False

    def _budget(self) -> int:
        plan = self.plan
        if not plan.factor:
            return 1 << 60
        recv = sum(self.recv_arr)
        inflight = sum(self.sent_arr) * plan.factor - recv - self.forgiven
        now = time.monotonic()
        if recv != self.last_recv:
            self.last_recv = recv
            self.last_change = now
        elif inflight >= plan.window and now - self.last_change > 0.3:
            self.forgiven += inflight
            self.last_change = now
            inflight = 0
        return (plan.window - inflight) // plan.factor

    def _fill_flat(self) -> None:
        """Write batches while the window allows. A publisher waits for a worthwhile
        write: an eighth of a batch at QoS 0, half its id window at QoS 1 (fewer,
        larger writes; QoS 2's longer handshake wants every free id used at once)."""
        budget = self._budget()
        qos = self.plan.qos
        progress = True
        while budget > 0 and progress:
            progress = False
            for p in self.pubs:
                k = min(p.can_send(), p.batch_n, budget)
                least = p.batch_n // 8 if qos == 0 else p.inflight // 2 if qos == 1 else 1
                least = min(least, p.batch_n)
                if k > 0 and k >= least:
                    p.send_batch(k)
                    budget -= k
                    progress = True
                    if budget <= 0:
                        break

    def _fill_rate(self) -> None:
        """Message m of this process goes to publisher m % n: evenly spread, one write each."""
        target = int(self.plan.rate * (time.monotonic_ns() - self.t0) / 1e9)
        k = min(target - self.issued, 10_000)
        n = len(self.pubs)
        for m in range(self.issued, self.issued + max(k, 0)):
            p = self.pubs[m % n]
            if p.can_send() > 0:
                if self.plan.stamped:
                    p.send_stamped(1)
                else:
                    p.send_batch(1)
            else:
                self.skipped += 1
        self.issued += max(k, 0)


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
                   session_expiry: int = 0, tally: Tally | None = None) -> Client:
        """TCP connect + MQTT CONNECT/CONNACK."""
        plan = self.plan
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(
            lambda: Client(tally or self.tally, plan.version, qos, plan.inflight),
            plan.host, plan.port)
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
            client = await self.open(cid)
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

    async def cmd_connstorm(self, ids: list[str], concurrency: int) -> dict:
        """Connect every id (clean session) and keep it open; report how long it took.

        At most `concurrency` connections wait for their CONNACK at a time, so
        the broker's accept queue never overflows (a dropped SYN costs 1 s).
        """
        loop = asyncio.get_running_loop()
        storm = Storm(len(ids), asyncio.Semaphore(concurrency), loop.create_future())
        it = iter(ids)

        async def worker() -> None:
            for cid in it:
                await storm.slots.acquire()
                hello = mqtt.connect(cid, version=self.plan.version)
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
