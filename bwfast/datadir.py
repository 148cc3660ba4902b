"""The data directory at rest: private modes, one broker at a time, no stale sockets.

``data_dir`` holds everything a local user must not read: the JWT secret the
REST API signs tokens with (LMDB ``meta``), credential hashes, queued and
retained messages. So it is 0700 and everything in it 0600 (directories
0700), whatever the umask, and a directory that already grants group or
other access is tightened with one log line (CONTRACT: "data_dir is 0700 and
its files 0600").

One broker per ``data_dir``: the supervisor takes an ``flock`` on
``data_dir/bwfast.lock`` (which holds its pid) before anything starts and
keeps it until it exits. The lock belongs to the open file, so the worker
processes forked from the supervisor hold it too: it is only free once the
whole broker is gone. A second broker exits at once naming the first one's
pid; it must not start, or it would restore the same sessions and replace
the first one's sockets in ``run/``.
"""
from __future__ import annotations

import fcntl
import logging
import os
import stat

log = logging.getLogger("bwfast.datadir")

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077
LOCK_NAME = "bwfast.lock"
RUN_DIR = "run"


class DataDirBusy(Exception):
    """Another broker holds the data directory's lock."""

    def __init__(self, path: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"[broker] data_dir {path} is in use by a running bwfast ({who})")
        self.pid = pid


def private_umask() -> None:
    """What this process creates is readable by its user only (sockets included)."""
    os.umask(UMASK)


def secure(path: str) -> bool:
    """Create ``path`` 0700 if needed; make it and everything under it private.

    Return True when the directory itself granted group/other access before.
    Symlinks are left alone (never follow one out of the directory).
    """
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    loosened = bool(stat.S_IMODE(os.stat(path).st_mode) & 0o077)
    os.chmod(path, DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            _chmod(os.path.join(root, name), FILE_MODE)
    return loosened


def _chmod(path: str, mode: int) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    except FileNotFoundError:  # gone meanwhile (a socket of a stopping process)
        pass


def prepare(path: str) -> None:
    """The supervisor's start: private directory, logged if it had to be tightened."""
    if secure(path):
        log.warning("data_dir %s was readable by other users; set it to 0700 and its "
                    "files to 0600", path)


def lock(path: str) -> int:
    """Take the one-broker lock on ``path``; return the fd to keep open until exit."""
    lock_path = os.path.join(path, LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise DataDirBusy(path, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def clean_run(path: str) -> int:
    """Remove what an earlier run left in ``run/`` (sockets of dead processes);
    only called with the lock held, so nothing there is alive. Return the count."""
    run_dir = os.path.join(path, RUN_DIR)
    os.makedirs(run_dir, mode=DIR_MODE, exist_ok=True)
    os.chmod(run_dir, DIR_MODE)
    removed = 0
    for name in os.listdir(run_dir):
        target = os.path.join(run_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            continue
        try:
            os.unlink(target)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def secure_socket(path: str) -> None:
    """A unix socket we just bound: 0600 whatever the umask was."""
    os.chmod(path, FILE_MODE)
