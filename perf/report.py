"""Markdown tables from a results file (what `compare` prints and BENCHMARKS.md holds)."""

from __future__ import annotations

# Per scenario: (result key, column label, True when higher is better).
METRICS: dict[str, list[tuple[str, str, bool]]] = {
    "flow": [("delivered_per_s", "delivered msg/s", True),
             ("cpu_us_per_msg", "broker CPU µs/msg", False),
             ("lost", "lost", False)],
    "pubonly": [("sent_per_s", "published msg/s", True)],
    "latency": [("p50_ms", "p50 ms", False), ("p99_ms", "p99 ms", False),
                ("max_ms", "max ms", False)],
    "cpu": [("cpu_us_per_msg", "broker CPU µs/msg", False),
            ("cpu_all_us_per_msg", "broker CPU µs/msg incl. connects", False),
            ("p50_ms", "p50 ms", False), ("p90_ms", "p90 ms", False), ("p99_ms", "p99 ms", False),
            ("delivered_per_s", "delivered msg/s", True)],
    "connstorm": [("connects_per_s", "connects/s", True), ("seconds", "s for all", False),
                  ("kb_per_conn", "broker KB/conn", False), ("rss_mb", "broker RSS MB", False)],
    "authstorm": [("connects_per_s", "connects/s", True), ("seconds", "s for all", False),
                  ("failed", "refused", False)],
    "apibusy": [("delivered_per_s", "delivered msg/s", True),
                ("api_req_per_s", "REST req/s (bwfast only)", True)],
    "retained": [("seconds", "s to receive all", False), ("per_s", "msg/s", True)],
    "backlog": [("drain_per_s", "drain msg/s", True), ("enqueue_per_s", "enqueue msg/s", True),
                ("lost", "lost", False)],
}


def metrics_for(scenario: str, qos: int = 0) -> list[tuple[str, str, bool]]:
    rows = METRICS.get(scenario, METRICS["flow"])
    if scenario in ("pairwise", "fanin", "fanout", "shared") and qos == 0:
        rows = [r for r in rows if r[0] != "lost"]  # shown only when not zero
    return rows


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in rows]
    return "\n".join([line, rule, *body])


def ceiling_table(ceiling: list[dict]) -> str:
    rows = []
    for item in ceiling:
        res = item["result"]
        if "error" in res:
            rows.append([item["label"], "error", res["error"]])
            continue
        for key, label, _ in metrics_for(item["scenario"]):
            if key in res and key not in ("cpu_us_per_msg", "lost"):
                rows.append([item["label"], label, fmt(res[key])])
        rows.append([item["label"], "generator CPU %", fmt(res.get("gen_cpu_pct"))])
    return table(["harness against a null sink / forwarder", "metric", "value"], rows)


def comparison_table(data: dict) -> str:
    brokers: list[str] = data["brokers"]
    both = "bwfast" in brokers and "mosquitto" in brokers
    acl = "bwfast" in brokers and "bwfast-acl" in brokers  # the ACL's cost
    headers = (["scenario", "metric", *brokers] + (["bwfast/mosquitto"] if both else [])
               + (["bwfast-acl/bwfast"] if acl else []))
    rows = []
    for case in data["cases"]:
        med = data["medians"].get(case["label"], {})
        for key, label, higher in metrics_for(case["scenario"], case["qos"]):
            values = [med.get(b, {}).get(key) for b in brokers]
            if key == "lost" and not any(values) and case["qos"] == 0:
                continue
            if all(v is None for v in values) and not any("error" in med.get(b, {})
                                                          for b in brokers):
                continue
            cells = [fmt(v) if v is not None else _err(med.get(b, {})) for v, b in
                     zip(values, brokers, strict=True)]
            pairs = ([("bwfast", "mosquitto")] if both else []) + (
                [("bwfast-acl", "bwfast")] if acl else [])
            for x, y in pairs:
                a, m = med.get(x, {}).get(key), med.get(y, {}).get(key)
                cells.append(f"{a / m:.2f}×" if a is not None and m else "—")
            rows.append([case["label"], label + (" ↑" if higher else " ↓"), *cells])
    return table(headers, rows)


def _err(med: dict) -> str:
    return "failed" if "error" in med else "—"


def markdown(data: dict) -> str:
    """The whole report: machine, notes, ceiling and the comparison."""
    m = data.get("machine", {})
    out = [f"Run {data.get('when', '?')}: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
           f"{m.get('memory_gb', '?')} GB, Linux {m.get('kernel', '?')}, "
           f"Python {m.get('python', '?')}, {m.get('mosquitto') or 'mosquitto not installed'}, "
           f"bwfast {m.get('bwfast_commit', '?')}; "
           + ", ".join(f"{k} {v}" for k, v in data.get("settings", {}).items()) + "."]
    for note in data.get("notes", []):
        out.append(f"\n> {note}")
    if data.get("ceiling"):
        out += ["", ceiling_table(data["ceiling"])]
    if data.get("cases"):
        out += ["", f"Medians of {data.get('settings', {}).get('rounds', '?')} rounds "
                "(↑ higher is better, ↓ lower is better):", "", comparison_table(data)]
    return "\n".join(out)
