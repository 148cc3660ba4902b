"""Scenarios: what to connect, how to drive it, and what to measure.

The parent process builds one Plan per generator process, starts them
(multiprocessing, spawn), steps them through their phases and samples the
shared counters and the broker's /proc figures at the edges of the
measurement window.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing as mp
import secrets
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

from perf import gen, mqtt, procstat

FLOWS = ("pairwise", "fanin", "fanout", "shared", "latency", "cpu", "pubonly", "apibusy")
SCENARIOS = FLOWS + ("connstorm", "authstorm", "retained", "backlog")
# Cases that need a broker of their own (compare starts one, fresh, per run):
# authentication on with `clients` devices' credentials / the REST API on.
OWN_BROKER = ("authstorm", "apibusy")


@dataclass
class Case:
    """One scenario with its parameters."""

    scenario: str
    clients: int = 10         # publishers (subscribers for fanout, connections for connstorm)
    qos: int = 0
    payload: int = 16         # bytes
    rate: float = 0.0         # total msg/s; 0 = as fast as the broker delivers
    duration: float = 8.0     # measurement window, s
    warmup: float = 1.0       # s before the window opens
    subs: int = 0             # shared: subscribers in the group
    messages: int = 0         # retained topics / backlog messages
    procs: int = 2            # generator processes
    mqtt: int = mqtt.V311     # protocol level: 4 (3.1.1) or 5
    concurrency: int = 80     # connstorm: connections awaiting their CONNACK at once
    inflight: int = 20        # publisher window of unacknowledged QoS 1/2 ids (as the
    #                           brokers' max_inflight: Mosquitto drops QoS 2 beyond it)
    devices: int = 0          # apibusy: devices known to the REST API (connected once)
    api_rate: float = 0.0     # apibusy: GET devices/ requests per second during the run

    @property
    def label(self) -> str:
        """Short name for tables, e.g. 'pairwise q1 16B x10'."""
        s = self.scenario
        if s in ("connstorm", "authstorm"):
            return f"{s} x{self.clients}"
        if s == "retained":
            return f"{s} {self.messages} topics"
        if s == "backlog":
            return f"{s} {self.messages} q1 sync"
        text = f"{s} q{self.qos} {_size(self.payload)} x{self.clients}"
        if s == "shared":
            text += f">{self.subs}"
        if self.rate:
            text += f" @{self.rate:g}/s"
        if s == "apibusy":
            text += f" api {self.api_rate:g}/s over {self.devices}"
        if self.inflight != 20 and self.qos:
            text += f" w{self.inflight}"
        return text + (" v5" if self.mqtt == mqtt.V5 else "")


DEFAULTS: dict[str, dict] = {
    "pairwise": {},
    "fanin": {},
    "fanout": {},
    "shared": {"subs": 4},
    # One process: a delivery then wakes one process, not two (measured: lower p50/p99).
    "latency": {"clients": 1, "rate": 5000, "procs": 1},
    "cpu": {"clients": 250, "rate": 25000},
    "pubonly": {},
    "connstorm": {"clients": 10_000},
    # 10,000 devices with credentials, first CONNECT after a (re)start: no cache is warm.
    "authstorm": {"clients": 10_000},
    # MQTT pairwise QoS 0 while the REST API pages devices/ over 5,000 devices.
    "apibusy": {"devices": 5000, "api_rate": 200},
    "retained": {"messages": 10_000, "procs": 1},
    "backlog": {"messages": 100_000, "procs": 1},
}

# What `compare` runs by default: every target of the issue.
DEFAULT_CASES = ["pairwise", "pairwise:qos=1", "pairwise:qos=2", "fanin", "fanout", "shared",
                 # issue 13's QoS 1 shape: 16 pairs, 64 B, 32 unacknowledged per publisher
                 "pairwise:qos=1,clients=16,payload=64,inflight=32",
                 "latency", "cpu", "cpu:clients=1000,rate=5000", "connstorm", "authstorm",
                 "retained", "backlog", "apibusy"]


def _size(n: int) -> str:
    return f"{n // 1024}KB" if n >= 1024 and n % 1024 == 0 else f"{n}B"


def make_case(spec: str, **overrides) -> Case:
    """'pairwise:qos=1,clients=20' -> Case; overrides (CLI flags) win over both."""
    name, _, params = spec.partition(":")
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    kinds = {f.name: f.type for f in fields(Case)}
    values = dict(DEFAULTS[name])
    for item in filter(None, params.split(",")):
        key, _, val = item.partition("=")
        if key not in kinds or key == "scenario":
            raise ValueError(f"unknown parameter {key!r} in {spec!r}")
        values[key] = float(val) if kinds[key] in ("float", float) else int(val)
    values.update({k: v for k, v in overrides.items() if v is not None})
    case = Case(scenario=name, **values)
    if case.qos not in (0, 1, 2):
        raise ValueError("qos must be 0, 1 or 2")
    if case.scenario == "latency":
        case = replace(case, payload=max(case.payload, 8))  # room for the timestamp
    if case.scenario == "shared" and not case.subs:
        case = replace(case, subs=4)
    return case


# -- generator processes (parent side) ---------------------------------------

class HarnessError(RuntimeError):
    """A generator failed or timed out; the run is reported as failed."""


class Generators:
    """The generator processes of one run and their shared counters."""

    def __init__(self, plans: list[gen.Plan]) -> None:
        ctx = mp.get_context("spawn")
        self.sent = ctx.RawArray("q", len(plans))
        self.recv = ctx.RawArray("q", len(plans))
        self.procs: list = []
        self.conns: list = []
        for plan in plans:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=gen.child_main, args=(theirs, plan, self.sent, self.recv),
                               daemon=True, name=f"perf-gen-{plan.slot}")
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(ours)

    def call(self, *cmd, timeout: float = 60.0) -> list:
        """Send one command to every process; their replies, in order."""
        for conn in self.conns:
            conn.send(cmd)
        return [self._reply(conn, cmd[0], timeout) for conn in self.conns]

    def call_one(self, index: int, *cmd, timeout: float = 60.0):
        self.conns[index].send(cmd)
        return self._reply(self.conns[index], cmd[0], timeout)

    @staticmethod
    def _reply(conn, name: str, timeout: float):
        try:
            if not conn.poll(timeout):
                raise HarnessError(f"generator: no answer to {name} within {timeout:.0f} s")
            status, value = conn.recv()
        except (EOFError, OSError) as exc:
            raise HarnessError(f"generator died during {name}") from exc
        if status != "ok":
            raise HarnessError(f"{name}: {value}")
        return value

    def totals(self) -> tuple[int, int]:
        return sum(self.sent), sum(self.recv)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid]

    def close(self) -> None:
        try:
            self.call("close", timeout=10)
        except HarnessError:
            pass
        for proc in self.procs:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(2)

    def __enter__(self) -> Generators:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- plans ---------------------------------------------------------------------

def build_plans(case: Case, host: str, port: int, sub_port: int = 0) -> list[gen.Plan]:
    """Spread the clients of a flow scenario over the generator processes.

    Topics have a fixed width so every PUBLISH of a run has the same size,
    which is what lets receivers count with uniform().
    """
    run = secrets.token_hex(3)
    nproc = max(1, case.procs)
    topic = f"b/{run}/{case.scenario[:2]}/{{:05d}}"
    n = case.clients
    subs: list[list] = [[] for _ in range(nproc)]
    pubs: list[list] = [[] for _ in range(nproc)]
    factor = 1
    if case.scenario in ("pairwise", "latency", "cpu", "apibusy"):
        for i in range(n):
            subs[i % nproc].append((f"s{i:05d}", topic.format(i), topic.format(i)))
            pubs[i % nproc].append((f"p{i:05d}", topic.format(i)))
    elif case.scenario == "fanin":
        subs[0].append(("s00000", topic.format(0)[:-5] + "+", topic.format(0)))
        for i in range(n):
            pubs[i % nproc].append((f"p{i:05d}", topic.format(i)))
    elif case.scenario == "fanout":
        factor = n
        pubs[0].append(("p00000", topic.format(0)))
        for i in range(n):
            subs[i % nproc].append((f"s{i:05d}", topic.format(0), topic.format(0)))
    elif case.scenario == "shared":
        flt = f"$share/g{run}/" + topic.format(0)[:-5] + "+"
        for i in range(case.subs):
            subs[i % nproc].append((f"s{i:05d}", flt, topic.format(0)))
        for i in range(n):
            pubs[i % nproc].append((f"p{i:05d}", topic.format(i)))
    elif case.scenario == "pubonly":
        factor = 0
        for i in range(n):
            pubs[i % nproc].append((f"p{i:05d}", topic.format(i)))
    size = mqtt.publish_layout(topic.format(0), case.payload, case.qos, case.mqtt)[0]
    plans = []
    for g in range(nproc):
        prefix = f"pf{run}"  # ids are unique across processes: the forwarder pairs them
        share = len(pubs[g]) / max(1, n if case.scenario != "fanout" else 1)
        plans.append(gen.Plan(
            host=host, port=port, prefix=prefix, run=run, slot=g, version=case.mqtt,
            qos=case.qos, payload=case.payload, inflight=case.inflight,
            batch=max(1, min(1024, 32768 // size)), rate=case.rate * share,
            stamped=case.scenario in ("latency", "cpu"),
            window=max(64, min(50_000, (8 << 20) // size)), factor=factor,
            subs=[(prefix + cid, flt, t) for cid, flt, t in subs[g]], sub_port=sub_port,
            pubs=[(prefix + cid, t) for cid, t in pubs[g]]))
    return [p for p in plans if p.subs or p.pubs]


# -- runners -----------------------------------------------------------------

Pids = Callable[[], list[int]] | None


def _pct(sorted_ns: array, q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, math.ceil(q * len(sorted_ns)) - 1)] / 1e6


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def run_flow(case: Case, host: str, port: int, broker: Pids, api: Api = None,
             sub_port: int = 0) -> dict:
    """pairwise / fanin / fanout / shared / latency / cpu / pubonly / apibusy;
    with ``sub_port`` the subscribers connect there (another node)."""
    plans = build_plans(case, host, port, sub_port)
    factor = plans[0].factor
    load = None
    if case.scenario == "apibusy" and api is not None:
        _known_devices(case, host, port)
        load = ApiLoad(host, api, case.api_rate)
    cpu_start = procstat.cpu_seconds(broker()) if broker else 0.0  # connects included
    with Generators(plans) as gens:
        gens.call("setup", timeout=30 + case.clients / 50)
        t0 = time.monotonic_ns() + 20_000_000
        w0 = t0 + int(case.warmup * 1e9)
        w1 = w0 + int(case.duration * 1e9)
        gens.call("start", t0, w0, w1)
        if load is not None:
            load.start()
        _sleep_until(w0)
        a = _sample(gens, broker)
        api0 = load.done if load else 0
        _sleep_until(w1)
        b = _sample(gens, broker)
        api1 = load.done if load else 0
        if load is not None:
            load.stop()
        gens.call("stop")
        sent, recv = _drain(gens, factor, 3.0 if case.qos else 1.0)
        info = gens.call("collect", timeout=60)
        rss = procstat.rss_bytes(broker()) if broker else 0
        cpu_all = procstat.cpu_seconds(broker()) - cpu_start if broker else 0.0
    dt = (b["t"] - a["t"]) / 1e9
    delivered = b["recv"] - a["recv"]
    res: dict = {
        "delivered_per_s": delivered / dt,
        "sent_per_s": (b["sent"] - a["sent"]) / dt,
        "sent": sent, "received": recv,
        "lost": max(0, sent * factor - recv) if factor else 0,
        "disconnected": sum(i["disconnected"] for i in info),
        "gen_cpu_pct": 100 * (b["gen_cpu"] - a["gen_cpu"]) / dt,
    }
    if broker:
        cpu = b["cpu"] - a["cpu"]
        res["broker_cpu_pct"] = 100 * cpu / dt
        res["cpu_us_per_msg"] = 1e6 * cpu / max(1, delivered)
        # utime+stime of every broker process from before the first CONNECT to the
        # last delivery, per message delivered (issue 13's light-load figure)
        res["cpu_all_us_per_msg"] = 1e6 * cpu_all / max(1, recv)
        res["rss_mb"] = rss / 2**20
    if load is not None:
        res.update({"api_req_per_s": (api1 - api0) / dt, "api_errors": load.errors,
                    "api_devices": load.total})
    if any(i["skipped"] for i in info):
        res["skipped"] = sum(i["skipped"] for i in info)
    lat = array("q")
    for i in info:
        lat.frombytes(i["lat"])
    if lat:
        ordered = array("q", sorted(lat))
        res.update({"p50_ms": _pct(ordered, 0.50), "p90_ms": _pct(ordered, 0.90),
                    "p99_ms": _pct(ordered, 0.99), "max_ms": ordered[-1] / 1e6,
                    "samples": len(ordered)})
    return res


Api = tuple[int, str, str] | None  # the REST API's (port, username, password)


class ApiLoad:
    """GET devices/ at a fixed rate, a page after another over every device, on
    one keep-alive connection in a thread of the parent (which otherwise sleeps)."""

    def __init__(self, host: str, api: tuple[int, str, str], rate: float) -> None:
        self.host, (self.port, user, pw) = host, api
        self.period = 1.0 / max(rate, 0.1)
        self.done = self.errors = self.total = 0
        self.running = False
        self.headers: dict[str, str] = {}
        self.conn = http.client.HTTPConnection(host, self.port, timeout=10)
        body = json.dumps({"username": user, "password": pw})
        token = self._call("POST", "/bwiot/api/v1/login", body)["access_token"]
        self.headers = {"Authorization": f"Bearer {token}"}
        self.total = self._call("GET", "/bwiot/api/v1/devices/?page=1")["total"]
        self.thread = threading.Thread(target=self._run, daemon=True, name="perf-api")

    def _call(self, method: str, path: str, body: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"} if body else {}
        self.conn.request(method, path, body, headers | self.headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise HarnessError(f"REST {method} {path}: HTTP {resp.status} {data[:200]!r}")
        return json.loads(data)

    def start(self) -> None:
        self.running = True
        self.thread.start()

    def _run(self) -> None:
        pages = max(1, math.ceil(self.total / 10))
        due = time.monotonic()
        while self.running:
            try:
                self._call("GET", f"/bwiot/api/v1/devices/?page={self.done % pages + 1}")
            except (OSError, HarnessError, http.client.HTTPException):
                self.errors += 1
                self.conn.close()
            self.done += 1
            due += self.period
            time.sleep(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self.running = False
        self.thread.join(15)
        self.conn.close()


def _known_devices(case: Case, host: str, port: int) -> None:
    """Make `devices` devices known to the broker: each connects once, then leaves."""
    if case.devices:
        run_connstorm(replace(case, scenario="connstorm", clients=case.devices), host, port, None)
        time.sleep(1.5)  # device rows reach LMDB with the history flush (0.5 s)


def _sample(gens: Generators, broker: Pids) -> dict:
    sent, recv = gens.totals()
    out = {"t": time.monotonic_ns(), "sent": sent, "recv": recv,
           "gen_cpu": procstat.cpu_seconds(gens.pids())}
    if broker:
        out["cpu"] = procstat.cpu_seconds(broker())
    return out


def _drain(gens: Generators, factor: int, idle: float) -> tuple[int, int]:
    """Wait for deliveries to catch up with what was published (or to stall)."""
    last, since, start = -1, time.monotonic(), time.monotonic()
    while True:
        sent, recv = gens.totals()
        if not factor or recv >= sent * factor or time.monotonic() - start > 30:
            return sent, recv
        if recv != last:
            last, since = recv, time.monotonic()
        elif time.monotonic() - since > idle:
            return sent, recv
        time.sleep(0.02)


def run_connstorm(case: Case, host: str, port: int, broker: Pids) -> dict:
    """Connect `clients` clean sessions as fast as the broker accepts them; keep them open.
    authstorm: each logs in as one of perf.brokers.device_users (a fresh broker with
    those credentials: no check is cached yet, as after a restart)."""
    from perf.brokers import device_users

    nproc = max(1, case.procs)
    run = secrets.token_hex(3)
    plans = [gen.Plan(host=host, port=port, prefix=f"pf{run}{g}", run=run, slot=g,
                      version=case.mqtt) for g in range(nproc)]
    base = procstat.rss_bytes(broker()) if broker else 0
    # At most ~80 handshakes in flight by default: a listen backlog of 100
    # (Mosquitto's) overflowing costs a 1 s SYN retransmit and would dominate.
    concurrency = max(1, case.concurrency // nproc)
    with Generators(plans) as gens:
        gens.call("setup")
        ids = [[f"{p.prefix}c{i:05d}" for i in range(g, case.clients, nproc)]
               for g, p in enumerate(plans)]
        cpu0 = procstat.cpu_seconds(broker()) if broker else 0.0
        gen0 = procstat.cpu_seconds(gens.pids())
        users = device_users(case.clients) if case.scenario == "authstorm" else []
        for g, conn in enumerate(gens.conns):
            conn.send(("connstorm", ids[g], concurrency, users[g::nproc] or None))
        info = [gens._reply(conn, "connstorm", 120 + case.clients / 100) for conn in gens.conns]
        gen_cpu = procstat.cpu_seconds(gens.pids()) - gen0
        cpu = procstat.cpu_seconds(broker()) - cpu0 if broker else 0.0
        time.sleep(1.0)
        rss = procstat.rss_bytes(broker()) if broker else 0
    ok = sum(i["ok"] for i in info)
    seconds = (max(i["t1"] for i in info) - min(i["t0"] for i in info)) / 1e9
    res = {"connects_per_s": ok / seconds, "seconds": seconds, "connected": ok,
           "failed": sum(i["failed"] for i in info), "gen_cpu_pct": 100 * gen_cpu / seconds}
    errors = [i["error"] for i in info if i["error"]]
    if errors:
        res["error"] = errors[0]
    if broker:
        res.update({"broker_cpu_pct": 100 * cpu / seconds,
                    "rss_base_mb": base / 2**20, "rss_mb": rss / 2**20,
                    "kb_per_conn": (rss - base) / 1024 / max(1, ok)})
    return res


def run_task(case: Case, host: str, port: int, broker: Pids) -> dict:
    """retained / backlog: one generator process runs the whole sequence."""
    run = secrets.token_hex(3)
    plan = gen.Plan(host=host, port=port, prefix=f"pf{run}0", run=run, version=case.mqtt,
                    inflight=case.inflight)
    stall = 20.0
    with Generators([plan]) as gens:
        before = procstat.cpu_seconds(broker()) if broker else 0.0
        if case.scenario == "retained":
            res = gens.call_one(0, "retained", case.messages, case.payload, case.qos, stall,
                                timeout=600)
        else:
            res = gens.call_one(0, "backlog", case.messages, case.payload, stall, timeout=900)
        if broker:
            res["broker_cpu_s"] = procstat.cpu_seconds(broker()) - before
            res["rss_mb"] = procstat.rss_bytes(broker()) / 2**20
    return res


def run_case(case: Case, host: str, port: int, broker: Pids = None, api: Api = None,
             sub_port: int = 0) -> dict:
    """Run one case against host:port; `broker` lists the pids to measure (or None);
    `api` is the REST API the apibusy case loads (None: the MQTT part alone); with
    ``sub_port`` a flow's subscribers connect there (another node)."""
    gen.raise_nofile()
    if case.scenario in ("connstorm", "authstorm"):
        res = run_connstorm(case, host, port, broker)
    elif case.scenario in ("retained", "backlog"):
        res = run_task(case, host, port, broker)
    else:
        res = run_flow(case, host, port, broker, api, sub_port)
    return res


def describe(case: Case) -> dict:
    """The case as plain data, for the JSON file."""
    return asdict(case) | {"label": case.label}
