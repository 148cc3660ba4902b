"""Prometheus ``GET /metrics`` on the API port (text exposition format).

The broker's figures are summed over the workers at scrape time (api/stats.py);
REST requests are counted here, by route and status, in a response
middleware. ``[api] metrics_auth = true`` makes the scrape need the same
bearer token as the REST API; by default it is open, like the API itself
listening on loopback only.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sanic import Blueprint, HTTPResponse, Sanic
from sanic.request import Request

from api.stats import summary
from api.tokens import bearer

bp = Blueprint("metrics")

# (JSON name from api.stats.summary, metric name, help)
COUNTERS = (
    ("connects", "bwfast_connects", "CONNECTs accepted"),
    ("refused", "bwfast_connect_refusals", "CONNECTs refused (failing CONNACK)"),
    ("bytes_in", "bwfast_bytes_received", "bytes read from MQTT connections"),
    ("bytes_out", "bwfast_bytes_sent", "bytes written to MQTT connections"),
    ("dropped", "bwfast_messages_dropped", "messages dropped (queue full, slow reader, too big)"),
    ("forwarded", "bwfast_messages_forwarded", "copies forwarded to peer workers"),
    ("denied", "bwfast_messages_denied", "PUBLISHes and wills the ACL refused"),
    ("protocol_errors", "bwfast_protocol_errors", "connections closed for a protocol error"),
)
GAUGES = (
    ("connected", "bwfast_clients_connected", "clients connected"),
    ("sessions", "bwfast_sessions", "sessions held (connected or persistent)"),
    ("retained", "bwfast_retained_messages", "retained messages stored"),
    ("subscriptions", "bwfast_subscriptions", "subscriptions"),
    ("queued", "bwfast_queued_messages", "messages in offline queues"),
    ("inflight", "bwfast_inflight_messages", "QoS 1/2 messages sent and not yet acknowledged"),
    ("lmdb_bytes", "bwfast_lmdb_bytes", "bytes of the LMDB environment in use"),
    ("uptime", "bwfast_uptime_seconds", "seconds since the oldest worker started"),
)


class BrokerCollector(Collector):
    """Turns the last gathered figures into metric families."""

    def __init__(self, listeners: list[str]) -> None:
        self.listeners = listeners  # shown with 0 when nobody is connected to them
        self.answers: list[dict[str, Any] | None] = []
        self.figures: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        if not f:
            return
        for key, name, doc in COUNTERS:
            yield CounterMetricFamily(name, doc, value=f[key])
        received = CounterMetricFamily("bwfast_messages_received",
                                       "PUBLISH packets received, by QoS", labels=["qos"])
        for qos, n in f["qos_in"].items():
            received.add_metric([qos], n)
        yield received
        sent = CounterMetricFamily("bwfast_messages_sent", "PUBLISH packets sent, by QoS",
                                   labels=["qos"])
        for qos, n in f["qos_out"].items():
            sent.add_metric([qos], n)
        yield sent
        out_bytes = CounterMetricFamily("bwfast_publish_bytes_sent",
                                        "bytes of QoS 1/2 PUBLISH packets sent", labels=["qos"])
        out_bytes.add_metric(["1"], f["publish_bytes_out_qos1"])
        out_bytes.add_metric(["2"], f["publish_bytes_out_qos2"])
        yield out_bytes
        payload = CounterMetricFamily("bwfast_payload_bytes_received",
                                      "payload bytes of QoS 1/2 PUBLISHes received",
                                      labels=["qos"])
        payload.add_metric(["1"], f["payload_bytes_in_qos1"])
        payload.add_metric(["2"], f["payload_bytes_in_qos2"])
        yield payload
        for key, name, doc in GAUGES:
            yield GaugeMetricFamily(name, doc, value=f[key])
        by_listener = GaugeMetricFamily("bwfast_connections", "clients connected, by listener",
                                        labels=["listener"])
        for listener, n in sorted({**dict.fromkeys(self.listeners, 0),
                                   **f["listeners"]}.items()):
            by_listener.add_metric([listener], n)
        yield by_listener
        yield from self._workers()
        yield from self._commit_latency()
        yield _info(f["version"])

    def _workers(self) -> Iterator[Metric]:
        f = self.figures
        up = GaugeMetricFamily("bwfast_worker_up", "1 if the worker answered", labels=["worker"])
        conns = GaugeMetricFamily("bwfast_worker_connections", "clients connected, by worker",
                                  labels=["worker"])
        cpu = CounterMetricFamily("bwfast_process_cpu_seconds", "CPU seconds (user + system)",
                                  labels=["process"])
        rss = GaugeMetricFamily("bwfast_process_resident_memory_bytes", "resident set size",
                                labels=["process"])
        for k, w in enumerate(f["workers"]):
            up.add_metric([str(k)], 0 if w is None else 1)
            if w is None:
                continue
            conns.add_metric([str(k)], w["connected"])
            cpu.add_metric([f"worker-{k}"], w["cpu_seconds"])
            rss.add_metric([f"worker-{k}"], w["rss_bytes"] or 0)
        for name in ("api", "supervisor"):
            if f.get(name):
                cpu.add_metric([name], f[name]["cpu_seconds"])
                rss.add_metric([name], f[name]["rss_bytes"])
        yield from (up, conns, cpu, rss)

    def _commit_latency(self) -> Iterator[Metric]:
        live = [a["commit"] for a in self.answers if a is not None and "commit" in a]
        if not live:
            return
        bounds = live[0]["bounds"]
        counts = [sum(c["counts"][i] for c in live) for i in range(len(bounds) + 1)]
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip([*map(str, bounds), "+Inf"], counts, strict=True):
            running += n
            buckets.append((bound, running))
        yield HistogramMetricFamily("bwfast_lmdb_commit_seconds",
                                    "time of one LMDB group commit (write + sync)",
                                    buckets=buckets, sum_value=sum(c["sum"] for c in live))


def _info(version: str) -> Metric:
    info = GaugeMetricFamily("bwfast_info", "broker version", labels=["version"])
    info.add_metric([version], 1)
    return info


def install(app: Sanic) -> None:
    """The registry, the collector and the request counter of one app."""
    disable_created_metrics()  # no *_created series: scrapes stay small
    cfg = app.ctx.cfg
    listeners = ["mqtt", *(["tls"] if cfg.tls.enabled else []),
                 *(["ws"] if cfg.websocket.enabled else []),
                 *(["wss"] if cfg.websocket.enabled and cfg.tls.enabled else [])]
    registry = CollectorRegistry(auto_describe=False)
    collector = BrokerCollector(listeners)
    registry.register(collector)
    requests = Counter("bwfast_rest_requests", "REST API requests, by endpoint and status",
                       ["endpoint", "method", "status"], registry=registry)
    app.ctx.metrics = (registry, collector)

    @app.on_response
    async def count(request: Request, response: HTTPResponse) -> None:
        route = request.route
        # The route's pattern, not the path: ids in paths must not make new series.
        endpoint = route.path if route is not None else "unmatched"
        requests.labels("/" + endpoint.lstrip("/"), request.method,
                        str(response.status)).inc()


@bp.get("/metrics")
async def metrics(request: Request) -> HTTPResponse:
    ctx = request.app.ctx
    if ctx.cfg.api.metrics_auth:
        ctx.tokens.check(bearer(request.headers.get("authorization")))
    registry, collector = ctx.metrics
    collector.answers = await ctx.workers.stats()
    collector.figures = summary(collector.answers, ctx.store)
    return HTTPResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
