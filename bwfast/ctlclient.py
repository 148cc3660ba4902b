"""A small synchronous client of the workers' control sockets, for the CLI.

The REST API process talks to ``data_dir/run/worker-N.ctl`` with asyncio
(api/workers.py); ``bwfast acl`` and ``bwfast kick`` are short-lived commands
and use plain blocking sockets, one request per connection. A socket file
left by a broker that is gone refuses the connection and counts as a worker
that did not answer.
"""
from __future__ import annotations

import os
import re
import socket
from typing import Any

import msgpack

TIMEOUT = 3.0
_CTL = re.compile(r"worker-(\d+)\.ctl")


def control_sockets(data_dir: str) -> list[str]:
    """The control socket paths under ``data_dir/run``, by worker index."""
    run_dir = os.path.join(data_dir, "run")
    try:
        names = os.listdir(run_dir)
    except OSError:
        return []
    found = sorted((int(m.group(1)), name) for name in names if (m := _CTL.fullmatch(name)))
    return [os.path.join(run_dir, name) for _, name in found]


def request(path: str, command: str, args: dict[str, Any],
            timeout: float = TIMEOUT) -> dict[str, Any] | None:
    """One worker's answer to one command, or None when it can't be reached."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(msgpack.packb(["cli", 1, command, args], use_bin_type=True))
            unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
            while data := sock.recv(65536):
                unpacker.feed(data)
                for frame in unpacker:
                    if isinstance(frame, list) and len(frame) == 3 and frame[:2] == ["reply", 1]:
                        return frame[2] if isinstance(frame[2], dict) else {"ok": False}
    except (OSError, ValueError, msgpack.UnpackException):
        return None
    return None


def broadcast(data_dir: str, command: str, args: dict[str, Any]) -> list[dict[str, Any] | None]:
    """Every control socket's answer, None where nothing answered: all None
    (or an empty list) means no broker is running on ``data_dir``."""
    return [request(path, command, args) for path in control_sockets(data_dir)]
