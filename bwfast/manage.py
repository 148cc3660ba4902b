"""``bwfast acl`` and ``bwfast kick``: manage a broker from its host.

    bwfast acl [--config F] [--data-dir D] add (--username U | --clientid C | --pattern) TOPIC ACCESS
    bwfast acl [...] remove (--username U | --clientid C | --pattern) TOPIC [ACCESS]
    bwfast acl [...] list [--username U | --clientid C]
    bwfast acl [...] reload
    bwfast kick [--config F] [--data-dir D] CLIENTID

``add``, ``remove`` and ``list`` work on the run-time rules in LMDB (the same
rows the REST API writes, bwfast.acl), whether the broker runs or not; after
a change the running workers are told to reload. ``reload`` makes every
worker re-read the acl_file and the LMDB rules; ``kick`` disconnects a client
(v5: DISCONNECT 0x98). Both need a running broker: they reach its workers
through ``data_dir/run/worker-N.ctl`` (bwfast.ctlclient).

The data directory is ``--data-dir``, else ``[broker] data_dir`` of
``--config`` or ./broker.conf, as the broker itself finds it; every command
says which one it used.

Exit codes: 0 done, 1 no such rule / client not connected / a worker
reported an error, 2 bad usage or config, 3 no broker running.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from bwfast import ctlclient
from bwfast.acl import (
    ACCESS_WORDS,
    DB,
    AclError,
    check_rule,
    rule_from_value,
    rule_key,
    rule_value,
    stored_rules,
)
from bwfast.config import load_config
from bwfast.errors import ConfigError
from bwfast.passwd import _open_store as open_store
from bwfast.store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3


class Failure(Exception):
    """One line for stderr and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help="broker.conf to read (default: ./broker.conf if present)")
    parser.add_argument("--data-dir", metavar="DIR", help="LMDB directory ([broker] data_dir)")


def _who(parser: argparse.ArgumentParser, required: bool) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--username", metavar="U", help="the rule is for this username")
    group.add_argument("--clientid", metavar="C", help="the rule is for this client id")
    if required:
        group.add_argument("--pattern", action="store_true",
                           help="the rule is for everyone (%%u, %%c in TOPIC substituted)")


def acl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bwfast acl", description="Manage the broker's run-time ACL rules (LMDB).")
    _common(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="add|remove|list|reload")
    p = sub.add_parser("add", help="add a rule (or change the access of the same who and topic)")
    _who(p, required=True)
    p.add_argument("topic", help="topic filter")
    p.add_argument("access", choices=ACCESS_WORDS)
    p = sub.add_parser("remove", help="remove a rule")
    _who(p, required=True)
    p.add_argument("topic", help="topic filter")
    p.add_argument("access", nargs="?", choices=ACCESS_WORDS, help="must match, when given")
    p = sub.add_parser("list", help="list the rules (all, or one username's / client id's)")
    _who(p, required=False)
    sub.add_parser("reload", help="make the running workers re-read the acl_file and rules")
    return parser


def kick_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bwfast kick", description="Disconnect a client (v5: DISCONNECT 0x98); "
                                        "its will is published.")
    _common(parser)
    parser.add_argument("clientid")
    return parser


def data_dir(ns: argparse.Namespace) -> str:
    """The data directory the broker would use."""
    return load_config(ns.config, {"data_dir": ns.data_dir}).broker.data_dir


def _enforced(ns: argparse.Namespace) -> None:
    if not load_config(ns.config, {"data_dir": ns.data_dir}).acl.enabled:
        print("note: [acl] enabled = false in this configuration: the rules are kept but "
              "not enforced", file=sys.stderr)


def _kind(ns: argparse.Namespace) -> tuple[str, str]:
    if getattr(ns, "pattern", False):
        return "pattern", ""
    if ns.username is not None:
        return "username", ns.username
    return "clientid", ns.clientid


def _answers(path: str, command: str) -> tuple[int, int, list[str]]:
    """(workers, how many answered, errors they reported) for one broadcast."""
    answers = ctlclient.broadcast(path, command, {})
    live = [a for a in answers if a is not None]
    errors = [str(a.get("error")) for a in live if not a.get("ok")]
    return len(answers), len(live), errors


def _reload_after_change(path: str) -> None:
    total, live, errors = _answers(path, "acl_reload")
    if not live:
        print(f"no broker running on {path}: the rules apply when it starts")
        return
    print(f"{live} running worker(s) reloaded the rules")
    if live < total:
        print(f"{total - live} worker(s) did not answer: they apply the rules when they restart")
    for error in sorted(set(errors)):
        print(f"bwfast acl: a worker reported: {error}", file=sys.stderr)


def _list(store: Store, ns: argparse.Namespace) -> None:
    wanted = None
    if ns.username is not None:
        wanted = ("username", ns.username)
    elif ns.clientid is not None:
        wanted = ("clientid", ns.clientid)
    for rule in stored_rules(store):
        if wanted is None or (rule.kind, rule.who) == wanted:
            print("\t".join((rule.kind, rule.who, rule.access, rule.topic)))


def _change(store: Store, ns: argparse.Namespace) -> None:
    kind, who = _kind(ns)
    try:
        rule = check_rule(kind, who, ns.topic, ns.access or "deny")
    except AclError as e:
        raise Failure(str(e), EXIT_USAGE) from None
    key = rule_key(rule)
    if ns.action == "add":
        store.put(DB, key, rule_value(rule))
        store.commit()
        print(f"added {kind} {who!r} {rule.access} {rule.topic!r} in {store.path}")
        return
    stored: Any = store.get(DB, key)
    if stored is None or (ns.access is not None and rule_from_value(stored).access != ns.access):
        raise Failure(f"no such rule in {store.path}", EXIT_FAILED)
    store.delete(DB, key)
    store.commit()
    print(f"removed {kind} {who!r} {rule.topic!r} from {store.path}")


def _acl(ns: argparse.Namespace) -> int:
    if ns.action == "reload":
        path = data_dir(ns)
        total, live, errors = _answers(path, "acl_reload")
        if not live:
            raise Failure(f"no broker running on {path}", EXIT_NOT_RUNNING)
        print(f"{live} of {total} worker(s) of the broker on {path} reloaded the ACL")
        if errors:
            raise Failure(f"not every rule was reloaded: {sorted(set(errors))[0]}",
                          EXIT_FAILED)
        return EXIT_OK
    store = open_store(ns)  # as `bwfast passwd` opens it (same data_dir, same care)
    path = store.path
    try:
        if ns.action == "list":
            print(f"rules in {path}:", file=sys.stderr)
            _list(store, ns)
            return EXIT_OK
        _change(store, ns)
    finally:
        store.close()
    _enforced(ns)
    _reload_after_change(path)
    return EXIT_OK


def _kick(ns: argparse.Namespace) -> int:
    path = data_dir(ns)
    answers = ctlclient.broadcast(path, "kick", {"clientid": ns.clientid})
    if not any(a is not None for a in answers):
        raise Failure(f"no broker running on {path}", EXIT_NOT_RUNNING)
    if not any(a is not None and a.get("ok") for a in answers):
        raise Failure(f"client {ns.clientid!r} is not connected to the broker on {path}",
                      EXIT_FAILED)
    print(f"kicked {ns.clientid!r} from the broker on {path}")
    return EXIT_OK


def _run(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str], body: Any) -> int:
    ns = parser.parse_args(list(argv))
    try:
        return int(body(ns))
    except Failure as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.code
    except ConfigError as e:
        message = " ".join(str(e).split("\n"))
        print(f"{prog}: {message}", file=sys.stderr)
        return EXIT_USAGE


def acl_main(argv: Sequence[str]) -> int:
    """Entry point of ``bwfast acl`` (bwfast.cli dispatches here)."""
    return _run("bwfast acl", acl_parser(), argv, _acl)


def kick_main(argv: Sequence[str]) -> int:
    """Entry point of ``bwfast kick``."""
    return _run("bwfast kick", kick_parser(), argv, _kick)
