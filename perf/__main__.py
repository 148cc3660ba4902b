"""python -m perf {run,compare,ceiling,report,chaos} — see BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import sys

from perf import scenarios


def _case_flags(p: argparse.ArgumentParser) -> None:
    """Flags that override a scenario's defaults (None = keep the default)."""
    p.add_argument("--clients", type=int, help="publishers (fanout: subscribers; connstorm: connections)")
    p.add_argument("--qos", type=int, choices=(0, 1, 2))
    p.add_argument("--payload", type=int, help="payload bytes (16 .. 65536)")
    p.add_argument("--duration", type=float, help="measurement window, seconds")
    p.add_argument("--warmup", type=float, help="seconds before the window opens")
    p.add_argument("--rate", type=float, help="total msg/s; 0 = as fast as the broker delivers")
    p.add_argument("--subs", type=int, help="shared: subscribers in the group")
    p.add_argument("--messages", type=int, help="retained topics / backlog messages")
    p.add_argument("--procs", type=int, help="generator processes (default 2)")
    p.add_argument("--mqtt", type=int, choices=(4, 5), help="protocol level (4 = 3.1.1)")
    p.add_argument("--inflight", type=int, help="publisher window of unacked QoS 1/2 ids")


def overrides(args: argparse.Namespace) -> dict:
    keys = ("clients", "qos", "payload", "duration", "warmup", "rate", "subs", "messages",
            "procs", "mqtt", "inflight")
    return {k: getattr(args, k) for k in keys}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m perf", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one scenario against a running broker")
    run.add_argument("scenario", help=f"{', '.join(scenarios.SCENARIOS)}; "
                     "parameters may follow, e.g. pairwise:qos=1,clients=20")
    run.add_argument("--broker", required=True, metavar="HOST:PORT")
    run.add_argument("--pid", type=int, help="broker process to measure (default: the "
                     "process listening on PORT, and its workers)")
    run.add_argument("--json", metavar="FILE", help="also write the result here")
    _case_flags(run)

    cmp_ = sub.add_parser("compare", help="bwfast vs Mosquitto, A B A B, medians")
    cmp_.add_argument("scenarios", nargs="*", help="cases (default: all; see BENCHMARKS.md)")
    cmp_.add_argument("--workers", type=int, default=2, help="bwfast workers (default 2)")
    cmp_.add_argument("--rounds", type=int, help="A B rounds (default 3, --quick 1)")
    cmp_.add_argument("--quick", action="store_true", help="~2 minute smoke run")
    cmp_.add_argument("--brokers", default="bwfast,mosquitto",
                      help="which brokers to run: bwfast, bwfast-acl (ACL on, 1,000 rules), "
                      "bwfast-nodes (2 nodes through NATS: publishers on one, subscribers "
                      "on the other), mosquitto")
    cmp_.add_argument("--no-ceiling", action="store_true", help="skip the null-sink ceiling")
    cmp_.add_argument("--json", metavar="FILE", help="result file (default perf/results/<time>.json)")
    _case_flags(cmp_)

    ceil = sub.add_parser("ceiling", help="the harness against a null sink and a forwarder")
    ceil.add_argument("--quick", action="store_true")
    ceil.add_argument("--procs", type=int, default=2)

    rep = sub.add_parser("report", help="Markdown table of a results file")
    rep.add_argument("file")
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chaos"]:  # its own flags: python -m perf chaos --help
        from perf import chaos

        return chaos.main(argv[1:])
    args = parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "ceiling":
        from perf import compare

        compare.print_ceiling(compare.ceiling(args.procs, args.quick))
        return 0
    if args.command == "report":
        from perf import report

        with open(args.file) as f:
            print(report.markdown(json.load(f)))
        return 0
    from perf import compare

    return compare.main(args, overrides(args))


def cmd_run(args: argparse.Namespace) -> int:
    from perf import procstat

    try:
        case = scenarios.make_case(args.scenario, **overrides(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, _, port_text = args.broker.rpartition(":")
    port = int(port_text)
    root = args.pid or procstat.broker_root(port)
    broker = (lambda: procstat.tree(root)) if root else None
    print(f"{case.label} against {args.broker}"
          + (f" (measuring pid {root} and its children)" if root else ""), flush=True)
    try:
        result = scenarios.run_case(case, host or "127.0.0.1", port, broker)
    except (scenarios.HarnessError, OSError) as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    for key, value in result.items():
        print(f"  {key:16} {value:,.3f}" if isinstance(value, float) else f"  {key:16} {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"case": scenarios.describe(case), "broker": args.broker,
                       "result": result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
