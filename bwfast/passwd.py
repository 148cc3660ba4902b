"""``bwfast passwd``: manage MQTT credentials in the ``auth`` database offline.

    bwfast passwd [--config F] [--data-dir D] add|set|remove|list [USER] [--password P]
                  [--iterations N]
    bwfast passwd [--config F] [--data-dir D] import FILE

``add`` creates a user (fails if it exists), ``set`` creates or replaces,
``remove`` deletes (fails if unknown), ``list`` prints the usernames. Without
``--password`` the password is asked twice on a terminal, or read as one line
from stdin. ``import`` reads a Mosquitto password_file (``user:$7$...`` from
``mosquitto_passwd``, or ``user:$6$...`` from Mosquitto 1.x) and sets each
user's hash as it is, replacing existing users; one bad line and nothing is
written. It is safe while the broker runs: LMDB serialises writers across
processes, and workers read ``auth`` at each CONNECT, so a change applies to
the next CONNECT; ``remove`` and ``set`` of an existing user also close that
user's live connections on a running broker, as the REST API does. Records
are the same salted PBKDF2-SHA512 hashes the REST API writes (bwfast.auth); a
password is never stored or printed.

The data directory is ``--data-dir``, else ``[broker] data_dir`` of
``--config`` or ./broker.conf, as the broker finds it; every command says
which directory it used, so a user is never added somewhere unexpected.

Exit codes: 0 done, 1 the user exists / is unknown, 2 bad usage or config.
"""
from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

from bwfast.auth import (
    ITERATIONS,
    MAX_ITERATIONS,
    SHA512,
    FormatError,
    from_mosquitto,
    hash_password,
)
from bwfast.config import load_config
from bwfast.datadir import private_umask
from bwfast.errors import ConfigError
from bwfast.store import Store

EXIT_OK, EXIT_USER, EXIT_USAGE = 0, 1, 2
MAX_TEXT = 65535  # MQTT UTF-8 string length [MQTT-1.5.4]
MAX_USERNAME = 511  # the longest key LMDB holds (mdb_env_get_maxkeysize)


class UsageError(Exception):
    """A bad argument or password; one line for stderr, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bwfast passwd", description="Manage the broker's MQTT usernames and passwords.")
    parser.add_argument("--config", metavar="FILE",
                        help="broker.conf to read (default: ./broker.conf if present)")
    parser.add_argument("--data-dir", metavar="DIR", help="LMDB directory ([broker] data_dir)")
    sub = parser.add_subparsers(dest="action", required=True,
                                metavar="add|set|remove|list|import")
    for action, text in (("add", "add a user (fails if it exists)"),
                         ("set", "set a user's password (creates the user if needed)")):
        p = sub.add_parser(action, help=text)
        p.add_argument("user")
        p.add_argument("--password", metavar="P",
                       help="the password (default: prompt, or one line from stdin)")
        p.add_argument("--iterations", type=int, default=ITERATIONS, metavar="N",
                       help=f"PBKDF2-SHA512 iterations (default {ITERATIONS}, as Mosquitto; "
                            "more is slower for an attacker with the file, and per first CONNECT)")
    p = sub.add_parser("remove", help="remove a user")
    p.add_argument("user")
    sub.add_parser("list", help="list the usernames")
    p = sub.add_parser("import", help="set users' hashes from a Mosquitto password_file")
    p.add_argument("file")
    return parser


def _check_text(what: str, value: str, limit: int = MAX_TEXT) -> str:
    """An MQTT UTF-8 string without U+0000 [MQTT-1.5.4-2]."""
    if not value:
        raise UsageError(f"{what} must not be empty")
    if "\x00" in value:
        raise UsageError(f"{what} must not contain U+0000")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise UsageError(f"{what} is not valid UTF-8") from e
    if size > limit:
        raise UsageError(f"{what} is longer than {limit} bytes")
    return value


def read_password(given: str | None) -> str:
    """``--password``, else a prompt (twice) on a terminal, else one stdin line."""
    if given is not None:
        return _check_text("password", given)
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            raise UsageError("the passwords do not match")
        return _check_text("password", first)
    line = sys.stdin.readline()
    return _check_text("password", line.rstrip("\r\n"))


def _open_store(ns: argparse.Namespace) -> Store:
    cfg = load_config(ns.config, {"data_dir": ns.data_dir})
    private_umask()  # a data_dir made here is as private as the broker's own
    return Store(cfg.broker.data_dir, sync=cfg.persistence.sync)


def read_password_file(path: str) -> dict[str, dict[str, Any]]:
    """A Mosquitto password_file → {username: record}; UsageError naming the first bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    users: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, text = line.partition(":")
        where = f"{path} line {number}"
        if not sep or not text:
            raise UsageError(f"{where}: not user:hash")
        if not text.startswith("$"):
            raise UsageError(f"{where}: a plain-text password (hash the file with "
                             "mosquitto_passwd -U first)")
        try:
            users[_check_text("username", user, MAX_USERNAME)] = from_mosquitto(text)
        except (UsageError, FormatError) as e:
            raise UsageError(f"{where}: {e}") from e
    return users


def import_users(store: Store, path: str, users: dict[str, dict[str, Any]]) -> int:
    replaced = 0
    for user, record in users.items():
        key = user.encode("utf-8")
        replaced += store.get("auth", key) is not None
        store.put("auth", key, record)
    store.commit()
    weak = sum(1 for r in users.values() if r["alg"] == SHA512)
    print(f"imported {len(users)} users from {path} ({replaced} replaced)")
    if weak:
        print(f"bwfast passwd: warning: {weak} $6$ hashes (one salted SHA512, not iterated) "
              "are cheap to guess if the data directory leaks; set new passwords", file=sys.stderr)
    return EXIT_OK


def run(ns: argparse.Namespace) -> int:
    if ns.action in ("add", "set") and not 1 <= ns.iterations <= MAX_ITERATIONS:
        raise UsageError(f"--iterations must be 1 .. {MAX_ITERATIONS}")
    # the whole file is read and checked before the store is opened: a bad line writes nothing
    users = read_password_file(ns.file) if ns.action == "import" else None
    store = _open_store(ns)
    try:
        if users is not None:
            return import_users(store, ns.file, users)
        if ns.action == "list":
            print(f"users in {store.path}:", file=sys.stderr)
            for key, _ in store.items("auth"):
                print(key.decode("utf-8", errors="replace"))
            return EXIT_OK
        user = _check_text("username", ns.user, MAX_USERNAME)
        key = user.encode("utf-8")
        exists = store.get("auth", key) is not None
        if ns.action == "remove":
            if not exists:
                print(f"bwfast passwd: no user {user!r} in {store.path}", file=sys.stderr)
                return EXIT_USER
            store.delete("auth", key)
            store.commit()
            print(f"removed {user!r} from {store.path}")
            _revoke(store.path, user)
            return EXIT_OK
        if ns.action == "add" and exists:
            print(f"bwfast passwd: user {user!r} exists in {store.path} (use set to change it)",
                  file=sys.stderr)
            return EXIT_USER
        store.put("auth", key, hash_password(read_password(ns.password), ns.iterations))
        store.commit()
        print(f"{'updated' if exists else 'added'} {user!r} in {store.path}")
        if exists:
            _revoke(store.path, user)
        return EXIT_OK
    finally:
        store.close()


def _revoke(data_dir: str, user: str) -> None:
    """As ``remove_auth`` / ``edit_auth`` do: the running broker's live
    connections of that user are closed (v5: DISCONNECT 0x98)."""
    from bwfast.ctlclient import broadcast

    answers = [a for a in broadcast(data_dir, "kick_user", {"username": user}) if a]
    count = sum(a.get("count", 0) for a in answers if isinstance(a.get("count"), int))
    if count:
        print(f"disconnected {count} live connection(s) of {user!r}")


def main(argv: Sequence[str]) -> int:
    """Entry point of ``bwfast passwd`` (bwfast.cli dispatches here)."""
    ns = build_parser().parse_args(list(argv))
    try:
        return run(ns)
    except (UsageError, ConfigError) as e:
        message = " ".join(str(e).split("\n"))
        print(f"bwfast passwd: {message}", file=sys.stderr)
        return EXIT_USAGE
