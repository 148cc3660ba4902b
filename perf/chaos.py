"""python -m perf chaos: delivery guarantees under an operator's bad day (issue 12).

A bwfast it starts itself (REST API off) gets, for ``duration`` seconds:

- publishers, one per QoS level (0, 1, 2), streaming ``<seq>`` payloads round
  robin over ``topics`` topics (``chaos/<t>/q<qos>``), each with a persistent
  session: after a broken connection they reconnect and resend what was not
  acknowledged (DUP), as [MQTT-4.4.0-1] asks;
- subscribers to ``chaos/#`` at QoS 2: persistent v3.1.1, persistent v5 and a
  clean v3.1.1 one, which leave and come back at random (DISCONNECT, a dropped
  socket, or a takeover by their next connection);
- chaos: a worker SIGKILLed or SIGSTOPped for 1-3 s, now and then the whole
  broker killed (SIGKILL to its process group) and started again.

The checker then counts, per run: order violations per topic (a message that is
not a resend arriving after a later one of its topic on one connection), QoS 1/2
messages a publisher had acknowledged that a persistent subscriber never got,
QoS 2 messages a subscriber got twice as new (not a resend of a packet id still
waiting for its PUBREL), and QoS 1 messages that came again without DUP.

Not covered (yet): REST ``send_all`` alongside, the REST history's missing rows,
MQTT 5 publishers, shared subscriptions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from perf import mqtt
from perf.brokers import HOST, Broker, bwfast
from perf.procstat import tree

RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = ("order", "lost", "qos2_twice", "qos1_again_no_dup")


class Link:
    """A blocking MQTT connection: whole packets out, (first byte, body) in."""

    def __init__(self, port: int, client_id: str, version: int, clean: bool,
                 timeout: float = 5.0) -> None:
        self.version = version
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.send(mqtt.connect(client_id, clean=clean, keepalive=30, version=version,
                               session_expiry=0 if clean else 3600))
        first, body = self.recv(timeout)
        if first >> 4 != mqtt.CONNACK or body[1] != 0:
            raise OSError(f"CONNACK refused: {first:#x} {body!r}")
        self.present = bool(body[0] & 1)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> tuple[int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            packets, used = mqtt.split(self.buf)
            if packets:
                first, start, end = packets[0]
                body = self.buf[start:end]
                self.buf = self.buf[end:]
                return first, body
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk

    def close(self, abort: bool = False) -> None:
        try:
            if abort:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            self.sock.close()
        except OSError:
            pass


def connect_retry(port: int, cid: str, version: int, clean: bool, stop: threading.Event,
                  limit: float = 30.0) -> Link | None:
    deadline = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            return Link(port, cid, version, clean)
        except (OSError, TimeoutError, ConnectionError, IndexError):
            time.sleep(0.05)
    return None


# ------------------------------------------------------------------ publishers


class Publisher(threading.Thread):
    """Streams one QoS level; remembers what the broker acknowledged."""

    def __init__(self, port: int, qos: int, topics: int, rate: float, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"pub-q{qos}")
        self.port, self.qos, self.topics, self.rate, self.stop = port, qos, topics, rate, stop
        self.sent = 0
        self.acked: set[tuple[str, int]] = set()  # (topic, seq) acknowledged (PUBACK / PUBREC)
        self.unacked: dict[int, bytes] = {}       # packet id -> PUBLISH (resent with DUP)
        self.released: set[int] = set()           # PUBREC'd, PUBCOMP not yet: PUBREL again
        self.meta: dict[int, tuple[str, int]] = {}
        self.resent: set[tuple[str, int]] = set()  # sent again after a broken connection
        self.reconnects = 0

    def run(self) -> None:
        cid = f"chaos-pub-q{self.qos}"
        link = connect_retry(self.port, cid, mqtt.V311, False, self.stop)
        seqs = [0] * self.topics
        pid = 0
        gap = 1.0 / self.rate
        next_at = time.monotonic()
        while link is not None and not (self.stop.is_set() and not self.unacked
                                        and not self.released):
            try:
                now = time.monotonic()
                if not self.stop.is_set() and now >= next_at and len(self.unacked) < 10:
                    t = self.sent % self.topics
                    topic = f"chaos/{t}/q{self.qos}"
                    seq = seqs[t]
                    seqs[t] += 1
                    self.sent += 1
                    next_at = now + gap
                    if self.qos == 0:
                        link.send(mqtt.publish(topic, b"%d" % seq))
                        self.acked.add((topic, seq))  # sent is all QoS 0 promises
                        continue
                    pid = pid % 65535 + 1
                    while pid in self.unacked or pid in self.released:
                        pid = pid % 65535 + 1
                    pkt = mqtt.publish(topic, b"%d" % seq, self.qos, pid)
                    self.unacked[pid] = pkt
                    self.meta[pid] = (topic, seq)
                    link.send(pkt)
                    continue
                try:
                    first, body = link.recv(max(0.001, min(0.05, next_at - now)))
                except TimeoutError:
                    if self.stop.is_set() and self.qos == 0:
                        break
                    continue
                kind = first >> 4
                p = int.from_bytes(body[:2], "big")
                if kind == mqtt.PUBACK and p in self.unacked:
                    del self.unacked[p]
                    self.acked.add(self.meta.pop(p))
                elif kind == mqtt.PUBREC and p in self.unacked:
                    del self.unacked[p]
                    self.acked.add(self.meta.pop(p))
                    self.released.add(p)
                    link.send(mqtt.ack(mqtt.PUBREL, p))
                elif kind == mqtt.PUBCOMP:
                    self.released.discard(p)
            except (OSError, ConnectionError):
                link.close()
                self.reconnects += 1
                link = connect_retry(self.port, cid, mqtt.V311, False, self.stop, 60)
                if link is None:
                    return
                for p, pkt in list(self.unacked.items()):  # DUP, same packet id
                    self.resent.add(self.meta[p])
                    link.send(bytes([pkt[0] | 0x08]) + pkt[1:])
                for p in list(self.released):
                    link.send(mqtt.ack(mqtt.PUBREL, p))
        if link is not None:
            link.send(mqtt.DISCONNECT_PACKET)
            link.close()


# ------------------------------------------------------------------ subscribers


@dataclass
class Stats:
    received: int = 0
    connections: int = 0
    # (column, (topic, seq), text): judged at the end, when the publishers' resends are known
    found: list[tuple[str, tuple[str, int], str]] = field(default_factory=list)


class Subscriber(threading.Thread):
    def __init__(self, port: int, name: str, version: int, clean: bool, rng: random.Random,
                 stop: threading.Event) -> None:
        super().__init__(daemon=True, name=name)
        self.port, self.cid, self.version, self.clean = port, name, version, clean
        self.rng, self.stop = rng, stop
        self.stats = Stats()
        self.got: set[tuple[str, int]] = set()       # (topic, seq) received at all
        self.new2: set[tuple[str, int]] = set()      # QoS 2 taken as new
        self.got1: set[tuple[str, int]] = set()
        self.waiting: dict[int, tuple[str, int]] = {}  # QoS 2 pid -> message, until PUBREL
        self.since = 0.0  # first SUBACK: from then on every acknowledged message is due

    def _open(self) -> Link | None:
        link = connect_retry(self.port, self.cid, self.version, self.clean, self.stop, 60)
        if link is None:
            return None
        self.stats.connections += 1
        if self.clean or not link.present:
            self.waiting.clear()
            props = b"\x00" if self.version == mqtt.V5 else b""
            link.send(mqtt.packet(0x82, b"\x00\x01" + props + mqtt.utf8("chaos/#") + b"\x02"))
        return link

    def run(self) -> None:
        link = self._open()
        last: dict[str, int] = {}
        leave_at = time.monotonic() + self.rng.uniform(2, 6)
        while link is not None:
            if time.monotonic() > leave_at and not self.stop.is_set():
                how = self.rng.choice(("disconnect", "abort", "takeover"))
                if how == "takeover":
                    old = link
                    link = self._open()
                    old.close()
                else:
                    if how == "disconnect":
                        try:
                            link.send(mqtt.DISCONNECT_PACKET)
                        except OSError:
                            pass
                    link.close(abort=how == "abort")
                    time.sleep(self.rng.uniform(0, 0.5))
                    link = self._open()
                last = {}
                leave_at = time.monotonic() + self.rng.uniform(2, 6)
                continue
            try:
                first, body = link.recv(0.1)
            except TimeoutError:
                if self.stop.is_set():
                    break
                continue
            except (OSError, ConnectionError):
                link.close()
                link = self._open()
                last = {}
                continue
            try:
                self._packet(link, first, body, last)
            except OSError:
                continue
        if link is not None:
            link.close()

    def _packet(self, link: Link, first: int, body: bytes, last: dict[str, int]) -> None:
        kind = first >> 4
        if kind == mqtt.SUBACK:
            self.since = self.since or time.monotonic()
            return
        if kind == mqtt.PUBREL:
            p = int.from_bytes(body[:2], "big")
            self.waiting.pop(p, None)
            link.send(mqtt.ack(mqtt.PUBCOMP, p))
            return
        if kind != mqtt.PUBLISH:
            return
        tlen = int.from_bytes(body[:2], "big")
        topic = body[2:2 + tlen].decode()
        pid, at = mqtt.publish_parts(body, first, 0, self.version)
        qos, dup = (first >> 1) & 3, bool(first & 0x08)
        seq = int(body[at:])
        key = (topic, seq)
        st = self.stats
        st.received += 1
        resend = qos == 2 and pid in self.waiting
        if not dup and not resend:
            prev = last.get(topic, -1)
            if seq < prev:
                st.found.append(("order", key, f"{self.cid}: {topic} {seq} after {prev}"))
            last[topic] = max(prev, seq)
        if qos == 1:
            if key in self.got1 and not dup:
                st.found.append(("qos1_again_no_dup", key,
                                 f"{self.cid}: {topic} {seq} again without DUP"))
            self.got1.add(key)
            link.send(mqtt.ack(mqtt.PUBACK, pid))
        elif qos == 2:
            if not resend:
                if key in self.new2 and not self.clean:
                    st.found.append(("qos2_twice", key, f"{self.cid}: {topic} {seq} twice as new"))
                self.new2.add(key)
                self.waiting[pid] = key
            link.send(mqtt.ack(mqtt.PUBREC, pid))
        self.got.add(key)


# ------------------------------------------------------------------ chaos


class Chaos(threading.Thread):
    """Kills and stalls workers, and now and then the whole broker."""

    def __init__(self, broker: Broker, rng: random.Random, stop: threading.Event,
                 kinds: tuple[str, ...]) -> None:
        super().__init__(daemon=True, name="chaos")
        self.broker, self.rng, self.stop, self.kinds = broker, rng, stop, kinds
        self.events: dict[str, int] = defaultdict(int)

    def run(self) -> None:
        while not self.stop.wait(self.rng.uniform(2, 5)):
            assert self.broker.proc is not None
            workers = [p for p in tree(self.broker.proc.pid) if p != self.broker.proc.pid]
            if not workers or not self.kinds:
                continue
            weight = {"kill": 4, "stop": 3, "restart": 1}
            what = self.rng.choices(self.kinds, [weight[k] for k in self.kinds])[0]
            victim = self.rng.choice(workers)
            try:
                if what == "kill":
                    os.kill(victim, signal.SIGKILL)
                elif what == "stop":
                    os.kill(victim, signal.SIGSTOP)
                    time.sleep(self.rng.uniform(1, 3))
                    os.kill(victim, signal.SIGCONT)
                else:
                    os.killpg(self.broker.proc.pid, signal.SIGKILL)
                    self.broker.proc.wait(5)
                    why = self.broker.start()
                    if why:
                        raise RuntimeError(f"restart failed: {why}")
            except ProcessLookupError:
                continue
            self.events[what] += 1


# ------------------------------------------------------------------ run


KINDS = ("kill", "stop", "restart")


def run(duration: float, workers: int, seed: int, topics: int = 4, rate: float = 150.0,
        kinds: tuple[str, ...] = KINDS, quiet: bool = False) -> dict:
    """One chaos run; returns the report (see COLUMNS)."""
    from tqdm import tqdm

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="bwfast-chaos-"))
    broker = bwfast(tmp, workers)
    why = broker.start(settle=0.5)
    if why:
        raise RuntimeError(f"bwfast did not start: {why}")
    stop_subs, stop_pubs, stop_chaos = threading.Event(), threading.Event(), threading.Event()
    subs = [Subscriber(broker.port, name, v, clean, random.Random(rng.random()), stop_subs)
            for name, v, clean in (("chaos-sub-p4", mqtt.V311, False),
                                   ("chaos-sub-p5", mqtt.V5, False),
                                   ("chaos-sub-c4", mqtt.V311, True))]
    chaos = Chaos(broker, random.Random(rng.random()), stop_chaos, kinds)
    try:
        for s in subs:
            s.start()
        time.sleep(1.0)  # subscribed before the first message
        pubs = [Publisher(broker.port, q, topics, rate, stop_pubs) for q in (0, 1, 2)]
        for p in pubs:
            p.start()
        chaos.start()
        bar = tqdm(total=int(duration), unit="s", disable=quiet or None, dynamic_ncols=True)
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < duration:
            time.sleep(1.0)
            bar.n = min(int(elapsed), int(duration))
            bar.set_postfix(sent=sum(p.sent for p in pubs),
                            got=sum(s.stats.received for s in subs), **chaos.events)
        bar.close()
        stop_chaos.set()
        chaos.join(10)
        stop_pubs.set()
        for p in pubs:
            p.join(60)
        # The subscribers drain what is queued for them (up to 15 s for the last ones).
        due = set().union(*(p.acked for p in pubs if p.qos))
        drain_until = time.monotonic() + 15.0
        time.sleep(2.0)
        while time.monotonic() < drain_until and any(
                not s.clean and not due <= s.got for s in subs):
            time.sleep(0.5)
        stop_subs.set()
        for s in subs:
            s.join(30)
    finally:
        stop_chaos.set()
        stop_pubs.set()
        stop_subs.set()
        broker.stop()
    return _report(seed, duration, workers, pubs, subs, chaos)


def _report(seed: int, duration: float, workers: int, pubs: list[Publisher],
            subs: list[Subscriber], chaos: Chaos) -> dict:
    # A QoS 0/1 message its publisher sent again (no PUBACK before its connection
    # broke) is a second publication: it may come twice, and after later ones.
    resent = set().union(*(p.resent for p in pubs if p.qos < 2))
    rows = []
    for s in subs:
        row: dict = {c: 0 for c in COLUMNS}
        examples: list[str] = []
        for column, key, text in s.stats.found:
            if column != "qos2_twice" and key in resent:
                continue
            row[column] += 1
            if len(examples) < 6:
                examples.append(text)
        if not s.clean:
            for p in pubs:
                if p.qos:
                    missing = sorted(k for k in p.acked if k not in s.got)
                    row["lost"] += len(missing)
                    examples += [f"{s.cid}: acknowledged {k[0]} {k[1]} never came"
                                 for k in missing[:2]]
        rows.append({"subscriber": s.cid, **row, "received": s.stats.received,
                     "connections": s.stats.connections, "examples": examples})
    return {"when": datetime.datetime.now().isoformat(timespec="seconds"), "seed": seed,
            "kinds": list(chaos.kinds),
            "duration": duration, "workers": workers, "chaos": dict(chaos.events),
            "published": {f"q{p.qos}": p.sent for p in pubs},
            "acknowledged": {f"q{p.qos}": len(p.acked) for p in pubs},
            "publisher_reconnects": {f"q{p.qos}": p.reconnects for p in pubs},
            "rows": rows, "totals": {c: sum(r[c] for r in rows) for c in COLUMNS},
            "not_covered": ["REST send_all", "REST history rows", "v5 publishers",
                            "shared subscriptions"]}


def table(report: dict) -> str:
    head = f"{'subscriber':16} {'order':>6} {'lost':>6} {'q2 twice':>9} {'q1 no DUP':>10} " \
           f"{'received':>9} {'conns':>6}"
    lines = [head, "-" * len(head)]
    for r in report["rows"]:
        lines.append(f"{r['subscriber']:16} {r['order']:6} {r['lost']:6} {r['qos2_twice']:9} "
                     f"{r['qos1_again_no_dup']:10} {r['received']:9} {r['connections']:6}")
    t = report["totals"]
    lines.append(f"{'total':16} {t['order']:6} {t['lost']:6} {t['qos2_twice']:9} "
                 f"{t['qos1_again_no_dup']:10}")
    lines.append(f"chaos: {report['chaos']}; published {report['published']}, "
                 f"acknowledged {report['acknowledged']} (seed {report['seed']}, "
                 f"{report['workers']} workers, {report['duration']:.0f} s)")
    for r in report["rows"]:
        for e in r["examples"]:
            lines.append(f"  {e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf chaos", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of chaos (default 60)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--topics", type=int, default=4, help="topics per QoS level")
    ap.add_argument("--rate", type=float, default=150.0, help="msg/s per publisher")
    ap.add_argument("--chaos", default=",".join(KINDS),
                    help="what happens to the broker: kill (a worker, SIGKILL), stop (a worker, "
                    "SIGSTOP 1-3 s), restart (kill -9 of the whole broker); '' for none")
    ap.add_argument("--json", metavar="FILE", help="default perf/results/chaos-<time>.json")
    args = ap.parse_args(argv)
    kinds = tuple(k for k in args.chaos.split(",") if k)
    if not set(kinds) <= set(KINDS):
        ap.error(f"--chaos: one or more of {', '.join(KINDS)}")
    report = run(args.duration, args.workers, args.seed, args.topics, args.rate, kinds)
    print(table(report))
    path = Path(args.json) if args.json else RESULTS / (
        "chaos-" + report["when"].replace(":", "") + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    print(f"written to {path}")
    return 1 if any(report["totals"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
