"""When publishers write: a precise ticker, bulk-read naps, and the pump.

The pump is what makes "flat out" mean "as fast as the broker delivers":
publishers write while the messages in flight (published x deliveries per
message - received, across all generator processes) fit a window. At a fixed
rate it spreads messages evenly over the publishers, one write each.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import TYPE_CHECKING

from perf.client import Client, Tally

if TYPE_CHECKING:
    from perf.gen import Plan


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
