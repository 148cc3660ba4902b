"""The ``bwfast`` command: flags → Config → supervisor.

A bad config or flag prints one line, ``bwfast: <problem>``, and exits 2
before anything starts (CONTRACT: "nothing half-starts"). Subcommands are
dispatched on the first argument before the broker's own flags are parsed, so
``bwfast passwd ...`` can grow its own parser without touching this one.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from bwfast import __version__
from bwfast.config import load_config, validate_tls_files
from bwfast.errors import ConfigError

EXIT_CONFIG = 2
LOG_FORMAT = "%(asctime)s %(processName)s %(levelname)s %(name)s: %(message)s"


def passwd_main(argv: Sequence[str]) -> int:
    """``bwfast passwd``: manage broker users (bwfast/passwd.py)."""
    from bwfast.passwd import main as passwd

    return passwd(argv)


def acl_main(argv: Sequence[str]) -> int:
    """``bwfast acl``: run-time ACL rules, reload (bwfast/manage.py)."""
    from bwfast.manage import acl_main as acl

    return acl(argv)


def kick_main(argv: Sequence[str]) -> int:
    """``bwfast kick``: disconnect a client of the running broker (bwfast/manage.py)."""
    from bwfast.manage import kick_main as kick

    return kick(argv)


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "passwd": passwd_main, "acl": acl_main, "kick": kick_main}


def build_parser() -> argparse.ArgumentParser:
    """The broker's flags. Values stay strings so that load_config validates
    them exactly as it validates the file, with the same one-line messages."""
    parser = argparse.ArgumentParser(
        prog="bwfast",
        description="A fast MQTT 3.1/3.1.1/5.0 broker with a REST API.",
        epilog="subcommands: " + ", ".join(f"bwfast {name} ..." for name in SUBCOMMANDS),
    )
    parser.add_argument("--config", metavar="FILE",
                        help="broker.conf to read (default: ./broker.conf if present)")
    parser.add_argument("--port", metavar="N", help="MQTT port ([broker] port)")
    parser.add_argument("--api-port", metavar="N", help="REST API port ([api] port)")
    parser.add_argument("--workers", metavar="N|auto",
                        help="worker processes ([broker] workers)")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="LMDB directory ([broker] data_dir)")
    parser.add_argument("--log-level", metavar="LEVEL",
                        help="debug, info, warning or error ([broker] log_level)")
    parser.add_argument("--version", action="version", version=f"bwfast {__version__}")
    return parser


def setup_logging(level: str) -> None:
    """Root logging to stderr; process name tells workers apart."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr,
                        force=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bwfast`` script and ``python -m bwfast``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in SUBCOMMANDS:
        return SUBCOMMANDS[args[0]](args[1:])
    ns = build_parser().parse_args(args)
    overrides = {"port": ns.port, "api_port": ns.api_port, "workers": ns.workers,
                 "data_dir": ns.data_dir, "log_level": ns.log_level}
    try:
        cfg = load_config(ns.config, overrides)
        validate_tls_files(cfg)
    except ConfigError as e:
        message = " ".join(str(e).split("\n"))
        print(f"bwfast: {message}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.broker.log_level)
    log = logging.getLogger("bwfast.config")
    for warning in cfg.warnings:
        log.warning("%s", warning)
    from bwfast.supervisor import run  # lazily: nothing starts on a bad config
    return run(cfg)
