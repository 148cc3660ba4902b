"""Control-socket commands for the console and /metrics (bwfast/control.py runs them).

- ``client`` {clientid}: the session this worker holds for that client id
  (connected or kept for a persistent client), or ``{"ok": False}``.
- ``clear_queue`` {clientid}: drop the session's offline queue (messages not
  yet sent; in-flight ones stay, their exchange is under way [MQTT-4.4.0-1]).
- ``stats``: this worker's counters, gauges and process figures.

Also the per-QoS count of PUBLISHes that take the general path (the fast
lane only takes QoS 0, so what it counts is QoS 0).
"""
from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bwfast import codes as c
from bwfast.session import NEVER_EXPIRES, queue_key

if TYPE_CHECKING:
    from bwfast.session import Session
    from bwfast.worker import Worker

VERSIONS = {c.MQTT31: "3.1", c.MQTT311: "3.1.1", c.MQTT5: "5.0"}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def count_qos(handlers: list[Callable[[Any, Any], None]], stats: Any) -> None:
    """Wrap the PUBLISH handler so that QoS 1 and 2 messages (and payload bytes)
    are counted; the rest of ``msgs_received`` is QoS 0."""
    inner = handlers[c.PUBLISH]

    def publish(conn: Any, p: Any) -> None:
        qos = p.qos
        if qos == 1:
            stats.received_qos1 += 1
            stats.payload_received_qos1 += len(p.payload)
        elif qos == 2:
            stats.received_qos2 += 1
            stats.payload_received_qos2 += len(p.payload)
        inner(conn, p)

    handlers[c.PUBLISH] = publish


def _held(worker: Worker, cid: Any) -> Session | None:
    session = worker.sessions.sessions.get(cid) if isinstance(cid, str) else None
    if session is None or session.moved_to >= 0:
        return None  # handed over: the other worker answers for it
    return session


def client(worker: Worker, args: dict) -> dict:
    session = _held(worker, args.get("clientid"))
    if session is None:
        return {"ok": False}
    conn = session.conn
    will = session.will
    return {
        "ok": True,
        "worker": worker.index,
        "connected": conn is not None and not conn.closing,
        "protocol_version": VERSIONS.get(session.version, str(session.version)),
        "listener": conn.listener if conn is not None else None,
        "address": conn.peer if conn is not None else None,
        "username": session.username,
        "keepalive": conn.keepalive if conn is not None else None,
        "persistent": session.persistent,
        # Seconds kept after a disconnect; None = never expires (v3 clean session = 0).
        "session_expiry": None if session.expiry == NEVER_EXPIRES else session.expiry,
        "disconnected_at": int(session.disconnected_at * 1000) if conn is None else None,
        "subscriptions": [{"topic": f, "QoS": o.qos, "no_local": o.no_local,
                           "retain_as_published": o.rap, "retain_handling": o.rh}
                          for f, o in sorted(session.subs.items())],
        "queued": len(session.queue or ()),
        "inflight": len(session.inflight),
        "will": None if will is None else {
            "topic": will.topic, "payload": bytes(will.payload), "QoS": will.qos,
            "retain": bool(will.retain), "delay": session.will_delay},
    }


def clear_queue(worker: Worker, args: dict) -> dict:
    session = _held(worker, args.get("clientid"))
    if session is None:
        return {"ok": False}
    queue = session.queue or ()
    count = len(queue)
    for entry in queue:
        if entry[5]:  # the LMDB sequence of a persistent QoS 1/2 entry
            worker.store.delete("queue", queue_key(session.client_id, entry[5]))
    session.queue = None
    return {"ok": True, "cleared": count}


def process_figures() -> dict[str, float]:
    """CPU seconds (user + system) and resident set size of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = 0
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        rss = usage.ru_maxrss * 1024
    return {"cpu": usage.ru_utime + usage.ru_stime, "rss": rss, "pid": os.getpid()}


def other_process_figures(pid: int) -> dict[str, float] | None:
    """The same for another process (the supervisor, from the API), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    # fields[11], [12]: utime, stime (proc(5) fields 14 and 15, counted after the name)
    return {"cpu": (int(fields[11]) + int(fields[12])) / ticks, "rss": rss, "pid": pid}


def stats(worker: Worker, args: dict) -> dict:
    subs = queued = inflight = 0
    for s in worker.sessions.sessions.values():  # one pass: 100,000 sessions cost ~20 ms
        subs += len(s.subs)
        inflight += len(s.inflight)
        if s.queue:
            queued += len(s.queue)
    listeners: dict[str, int] = {}
    for conn in worker.conns:
        if conn.session is not None and not conn.closing:
            listeners[conn.listener] = listeners.get(conn.listener, 0) + 1
    counters = worker.stats.snapshot()
    counters.pop("started", None)
    return {
        "ok": True,
        "worker": worker.index,
        "counters": counters,
        "connected": worker.sessions.connected_count(),
        "listeners": listeners,
        "sessions": len(worker.sessions),
        "subscriptions": subs,
        "queued": queued,
        "inflight": inflight,
        "retained": len(worker.retained),
        "uptime": time.time() - worker.stats.started,
        "commit": worker.store.commit_latency(),
        **process_figures(),
    }


COMMANDS: dict[str, Callable[[Worker, dict], dict]] = {
    "client": client, "clear_queue": clear_queue, "stats": stats,
}
