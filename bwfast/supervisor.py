"""The supervisor: checks what can be checked up front, starts, watches, restarts.

It never touches packets. It opens the LMDB environment once before forking
only to validate it (and closes it again: every process opens its own handle
after fork, as py-lmdb requires).
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from bwfast.acl import AclError, read_acl_file
from bwfast.config import validate_tls_files
from bwfast.errors import ConfigError
from bwfast.store import Store, StoreError

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from bwfast.config import Config

log = logging.getLogger("bwfast.supervisor")

STOP_GRACE = 4.0          # seconds children get to stop after SIGTERM (contract: exit within 5 s)
BACKOFF_MAX = 10.0


class StartupError(Exception):
    """Something that must stop the broker before anything half-starts."""


def _check_port(host: str, port: int, what: str) -> None:
    """Fail fast when the port is taken: SO_REUSEPORT alone would let us share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError as e:
        raise StartupError(f"{what} {host}:{port}: {e.strerror or e}") from e
    finally:
        s.close()


def preflight(cfg: Config) -> None:
    b = cfg.broker
    _check_port(b.host, b.port, "[broker] port")
    if cfg.tls.enabled:
        _check_port(b.host, cfg.tls.port, "[tls] port")
    if cfg.websocket.enabled:
        _check_port(b.host, cfg.websocket.port, "[websocket] port")
        if cfg.tls.enabled:
            _check_port(b.host, cfg.websocket.tls_port, "[websocket] tls_port")
    try:
        validate_tls_files(cfg)  # a bad cert/key/CA: one line naming the file
    except ConfigError as e:
        raise StartupError(str(e)) from e
    if cfg.api.enabled:
        _check_port(cfg.api.host, cfg.api.port, "[api] port")
    if cfg.acl.enabled and cfg.acl.file:
        try:
            read_acl_file(cfg.acl.file)  # a bad line: one line naming the file and line
        except AclError as e:
            msg = str(e)
            raise StartupError(msg if msg.startswith("[acl]") else f"[acl] file: {msg}") from e
    os.makedirs(b.data_dir, exist_ok=True)
    try:
        Store(b.data_dir, sync=cfg.persistence.sync).close()
    except StoreError as e:
        raise StartupError(f"[broker] data_dir: {e}") from e


class Child:
    """One supervised process and its restart back-off."""

    def __init__(self, name: str, target, args: tuple) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.target = target
        self.args = args
        self.proc: BaseProcess | None = None
        self.failures = 0
        self.started = 0.0
        self.restart_at = 0.0

    def start(self, ctx: Any) -> None:
        self.proc = ctx.Process(target=_child_main, args=(self.name, self.target, self.args),
                                name=self.name, daemon=False)
        self.proc.start()
        self.started = time.monotonic()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def died(self) -> float:
        """Note a death; return the delay before restarting (0.2 s, doubling while it keeps dying)."""
        if time.monotonic() - self.started > 30:
            self.failures = 0
        self.failures += 1
        return min(BACKOFF_MAX, 0.2 * (2 ** (self.failures - 1)))


def _child_main(name: str, target, args: tuple) -> None:  # type: ignore[no-untyped-def]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; children get SIGTERM
    # SIGHUP reloads the ACL: workers install their own handler; the API ignores it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    mp.current_process().name = name
    target(*args)


def run(cfg: Config) -> int:
    """Start everything and supervise until SIGTERM/SIGINT; return the exit code."""
    try:
        preflight(cfg)
    except StartupError as e:
        print(f"bwfast: {e}", file=sys.stderr)
        return 1

    from bwfast.worker import run_worker

    nworkers = cfg.broker.workers
    ctx = mp.get_context("fork")
    children = [Child(f"worker-{i}", run_worker, (cfg, i, nworkers)) for i in range(nworkers)]
    if cfg.api.enabled:
        try:
            from api.app import run_api
        except ImportError as e:  # the REST API is optional at run time, never fatal
            log.error("REST API not started: %s", e)
        else:
            children.append(Child("api", run_api, (cfg, nworkers)))
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hup(signum: int, frame: object) -> None:
        """Reload the ACL (acl_file and LMDB rules): every worker re-reads them."""
        for child in children:
            proc = child.proc
            if child.target is run_worker and proc is not None and proc.pid and proc.is_alive():
                try:
                    os.kill(proc.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)

    for child in children:
        child.start(ctx)

    while not stopping:
        sentinels = [ch.proc.sentinel for ch in children if ch.proc is not None]
        wait(sentinels, timeout=0.2)
        now = time.monotonic()
        for child in children:
            proc = child.proc
            if proc is not None and not proc.is_alive():
                proc.join()
                if stopping:
                    break
                delay = child.died()
                log.warning("%s exited with %s; restarting in %.1f s", child.name,
                            proc.exitcode, delay)
                child.proc = None
                child.restart_at = now + delay
            elif proc is None and now >= child.restart_at and not stopping:
                child.start(ctx)

    return _stop_children(children)


def _stop_children(children: list[Child]) -> int:
    procs = [ch.proc for ch in children if ch.proc is not None and ch.proc.is_alive()]
    for p in procs:
        if p.pid:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + STOP_GRACE
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            log.warning("%s did not stop in time; killing it", p.name)
            p.kill()
            p.join(1)
    log.info("stopped")
    return 0
