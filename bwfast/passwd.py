"""``bwfast passwd``: manage MQTT credentials in the ``auth`` database offline.

    bwfast passwd [--config F] [--data-dir D] add|set|remove|list [USER] [--password P]

``add`` creates a user (fails if it exists), ``set`` creates or replaces,
``remove`` deletes (fails if unknown), ``list`` prints the usernames. Without
``--password`` the password is asked twice on a terminal, or read as one line
from stdin. It is safe while the broker runs: LMDB serialises writers across
processes, and workers read ``auth`` at each CONNECT, so a change applies to
the next CONNECT; ``remove`` and ``set`` of an existing user also close that
user's live connections on a running broker, as the REST API does. Records
are the same salted scrypt hashes the REST API writes (bwfast.auth); a
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

from bwfast.auth import hash_password
from bwfast.config import load_config
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
    sub = parser.add_subparsers(dest="action", required=True, metavar="add|set|remove|list")
    for action, text in (("add", "add a user (fails if it exists)"),
                         ("set", "set a user's password (creates the user if needed)")):
        p = sub.add_parser(action, help=text)
        p.add_argument("user")
        p.add_argument("--password", metavar="P",
                       help="the password (default: prompt, or one line from stdin)")
    p = sub.add_parser("remove", help="remove a user")
    p.add_argument("user")
    sub.add_parser("list", help="list the usernames")
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
    return Store(cfg.broker.data_dir, sync=cfg.persistence.sync)


def run(ns: argparse.Namespace) -> int:
    store = _open_store(ns)
    try:
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
        store.put("auth", key, hash_password(read_password(ns.password)))
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
