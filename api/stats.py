"""Broker figures summed over the workers, for ``GET stats`` and ``/metrics``.

Each worker answers ``stats`` on its control socket (bwfast/observe.py); the
retained count and the LMDB size are read here from LMDB (the workers' copies
also hold the ``$SYS`` topics, which are not stored). A :class:`Sampler`
keeps one sample a second for the last 15 minutes, so the console's charts
are full from the moment the page opens.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from bwfast import __version__
from bwfast.observe import other_process_figures, process_figures

if TYPE_CHECKING:
    from api.workers import Workers
    from bwfast.store import Store

log = logging.getLogger("bwfast.api.stats")

WINDOW = 900          # samples kept: 15 minutes at one a second
SAMPLE_EVERY = 1.0
# Counters summed over workers (bwfast/stats.py names → the JSON's names).
COUNTERS = {
    "msgs_received": "messages_in", "msgs_sent": "messages_out",
    "bytes_received": "bytes_in", "bytes_sent": "bytes_out",
    "dropped": "dropped", "forwarded": "forwarded", "denied": "denied",
    "connects": "connects", "refused": "refused", "protocol_errors": "protocol_errors",
    "received_qos1": "messages_in_qos1", "received_qos2": "messages_in_qos2",
    "payload_received_qos1": "payload_bytes_in_qos1",
    "payload_received_qos2": "payload_bytes_in_qos2",
    "sent_qos1": "messages_out_qos1", "sent_qos2": "messages_out_qos2",
    "packet_bytes_sent_qos1": "publish_bytes_out_qos1",
    "packet_bytes_sent_qos2": "publish_bytes_out_qos2",
}
GAUGES = ("connected", "sessions", "subscriptions", "queued", "inflight")
SERIES = ("messages_in", "messages_out", "bytes_in", "bytes_out", "connected")


def summary(answers: list[dict[str, Any] | None], store: Store) -> dict[str, Any]:
    """The broker-wide figures; ``workers`` lists each worker (None: no answer)."""
    live = [a for a in answers if a is not None]
    out: dict[str, Any] = {"version": __version__, "time": int(time.time() * 1000)}
    for src, dst in COUNTERS.items():
        out[dst] = sum(int(a["counters"].get(src, 0)) for a in live)
    for name in GAUGES:
        out[name] = sum(int(a.get(name, 0)) for a in live)
    listeners: dict[str, int] = {}
    for a in live:
        for name, n in a.get("listeners", {}).items():
            listeners[name] = listeners.get(name, 0) + int(n)
    out["listeners"] = listeners
    out["retained"] = store.entries("retained")
    out["lmdb_bytes"] = store.size()
    out["uptime"] = int(max((a.get("uptime", 0) for a in live), default=0))
    out["workers"] = [None if a is None else {
        "worker": a["worker"], "connected": a["connected"], "listeners": a.get("listeners", {}),
        "pid": a.get("pid"), "cpu_seconds": round(a.get("cpu", 0.0), 3), "rss_bytes": a.get("rss"),
    } for a in answers]
    api = process_figures()
    out["api"] = {"pid": api["pid"], "cpu_seconds": round(api["cpu"], 3),
                  "rss_bytes": api["rss"]}
    sup = other_process_figures(os.getppid())  # the API process's parent: the supervisor
    out["supervisor"] = None if sup is None else {
        "pid": sup["pid"], "cpu_seconds": round(sup["cpu"], 3), "rss_bytes": sup["rss"]}
    out["qos_in"] = {
        "0": out["messages_in"] - out["messages_in_qos1"] - out["messages_in_qos2"],
        "1": out["messages_in_qos1"], "2": out["messages_in_qos2"]}
    out["qos_out"] = {
        "0": max(0, out["messages_out"] - out["messages_out_qos1"] - out["messages_out_qos2"]),
        "1": out["messages_out_qos1"], "2": out["messages_out_qos2"]}
    return out


class Sampler:
    """The last WINDOW seconds of SERIES, one sample a second, while someone looks.

    Asking every worker for its figures walks its sessions (~20 ms at 100,000),
    so samples are taken only while the console was used in the last WINDOW
    seconds (:meth:`watched`); a console opened after a quiet spell starts its
    charts then.
    """

    def __init__(self, workers: Workers, store: Store) -> None:
        self.workers = workers
        self.store = store
        self.samples: deque[list[float]] = deque(maxlen=WINDOW)
        self.task: asyncio.Task[None] | None = None
        self.seen = -float(WINDOW)

    def watched(self) -> None:
        """The console asked for figures: keep sampling for the next WINDOW seconds."""
        now = time.monotonic()
        if now - self.seen > WINDOW:
            self.samples.clear()  # a gap: start the charts afresh
        self.seen = now

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                if time.monotonic() - self.seen <= WINDOW:
                    await self.sample()
            except Exception:  # noqa: BLE001 - a failed sample is a gap in a chart
                log.exception("stats sample failed")
            await asyncio.sleep(SAMPLE_EVERY)

    async def sample(self) -> dict[str, Any]:
        figures = summary(await self.workers.stats(), self.store)
        self.add(figures)
        return figures

    def add(self, figures: dict[str, Any]) -> None:
        t = figures["time"] / 1000
        if not self.samples or t > self.samples[-1][0]:
            self.samples.append([t, *(figures[k] for k in SERIES)])

    def series(self) -> dict[str, Any]:
        """Columns: ``t`` (seconds since the epoch) and each of SERIES (running totals
        for the counters; the console turns them into rates)."""
        cols = list(zip(*self.samples, strict=True)) if self.samples else [()] * (len(SERIES) + 1)
        return {"t": list(cols[0]), **{k: list(cols[i + 1]) for i, k in enumerate(SERIES)}}

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
