"""The OpenAPI description of the console's management calls (api/routes/manage.py)
and of ``/metrics``; merged into the document by api/openapi.py."""
from __future__ import annotations

from typing import Any

INT: dict[str, Any] = {"type": "integer"}
STR: dict[str, Any] = {"type": "string"}
BOOL: dict[str, Any] = {"type": "boolean"}


def manage_paths(base: str, op: Any, ok: Any, json: Any, ref: Any, fields: Any,
                 query: Any, listing: Any) -> dict[str, Any]:
    """``op`` .. ``listing``: openapi.py's builders (one style for the whole document)."""
    clientid = query("clientid", "client id (URL-encoded, any UTF-8)", required=True)
    sub = fields([], topic=STR, QoS=INT, no_local=BOOL, retain_as_published=BOOL,
                 retain_handling=INT)
    will = fields([], topic=STR, message=STR, QoS=INT, retain=BOOL, delay=INT,
                  encoding={"type": "string", "enum": ["base64"]})
    detail = fields(
        [], device_id=STR, device_name=STR, status={"type": "string",
                                                    "enum": ["active", "inactive"]},
        connected=BOOL, session=BOOL, protocol_version={"type": "string",
                                                        "enum": ["3.1", "3.1.1", "5.0"]},
        listener=STR, address=STR, username=STR, keepalive=INT, persistent=BOOL,
        session_expiry={**INT, "nullable": True, "description": "seconds; null = never"},
        device_connected_time=INT, disconnected_time=INT, worker=INT,
        subscriptions={"type": "array", "items": sub}, queued=INT, inflight=INT, will=will)
    row = fields([], device_id=STR, device_name=STR, status=STR, device_connected_time=INT,
                 disconnected_time=INT, username=STR, listener=STR, address=STR, worker=INT,
                 protocol=INT)
    retained = fields(["topic", "QoS", "size", "time", "message"], topic=STR, QoS=INT,
                      size=INT, time=INT, message=STR, truncated=BOOL,
                      encoding={"type": "string", "enum": ["base64"]})
    unknown = json(ref("Fail"), "unknown client or topic")
    topic_body = fields(["topic"], topic=STR)
    return {
        f"{base}/client": {"get": op(
            "One client: session, subscriptions, queued/in-flight counts, will",
            {**ok(fields(["client"], client=detail)), "404": unknown}, params=[clientid])},
        f"{base}/clear_queue": {"post": op(
            "Drop a client's offline queue (in-flight messages stay)",
            {**ok(fields([], cleared=INT)), "404": unknown},
            body=fields(["clientid"], clientid=STR))},
        f"{base}/clients/": {"get": op(
            "The device registry filtered, searched, sorted and paged (the console's list)",
            ok(fields(["data", "total", "page", "current_page"],
                      data={"type": "array", "items": row}, total=INT, current_page=INT,
                      page={**INT, "description": "number of pages"})),
            params=[
                query("status", "all, active or inactive"),
                query("search", "part of the client id or username (any case)"),
                query("sort", "connected (default), id, username or status"),
                query("order", "asc or desc"),
                query("page", "1-based page", schema={**INT, "minimum": 1}),
                query("limit", "rows per page", schema={**INT, "minimum": 1, "maximum": 1000,
                                                        "default": 25})])},
        f"{base}/retained/": {"get": op(
            "Stored retained messages by topic prefix, in topic order (payloads cut at 1 KB)",
            ok(listing("retained", retained)),
            params=[query("prefix", "topic prefix"),
                    query("after", "last topic of the previous page"),
                    query("limit", "rows", schema={**INT, "minimum": 1, "maximum": 1000,
                                                   "default": 50})])},
        f"{base}/retained_message": {"get": op(
            "One retained message, whole", {**ok(fields(["retained"], retained=retained)),
                                            "404": unknown},
            params=[query("topic", "topic name", required=True)])},
        f"{base}/remove_retained": {"post": op(
            "Clear a topic's retained message (an empty retained publish)",
            {**ok(ref("Ok")), "404": unknown}, body=topic_body)},
        f"{base}/stats": {"get": op(
            "Broker figures summed over workers (and, with series=1, the last 15 minutes)",
            ok(fields(["stats"], stats={"type": "object"})),
            params=[query("series", "1: add one sample a second for 15 minutes")])},
        f"{base}/credentials": {"get": op(
            "Every username that may CONNECT (the console's credential list)",
            ok(fields(["usernames"], usernames={"type": "array", "items": STR})))},
        f"{base}/live": {"get": op(
            "Server-sent events: each message matching filter (the console's Live view)",
            {"200": {"description": "text/event-stream; each `data:` line is JSON "
                                    "{topic, qos, retain, size, truncated, payload (base64)}"},
             "503": json(ref("Fail"), "the API could not subscribe")},
            params=[query("filter", "topic filter", required=True)])},
        "/": {"get": op("The web console (HTML)", {"200": {"description": "text/html"}},
                        secured=False)},
        "/bwiot/": {"get": op("Redirects to the console at /",
                              {"200": {"description": "never sent: always redirects"},
                               "302": {"description": "Location: /"}}, secured=False)},
        "/static/{name}": {"get": op(
            "The console's static files", {"200": {"description": "CSS, JavaScript"}},
            secured=False, params=[{"name": "name", "in": "path", "required": True,
                                    "schema": STR}])},
        "/metrics": {"get": op(
            "Prometheus text exposition ([api] metrics_auth = true: needs the token)",
            {"200": {"description": "text/plain; version=0.0.4"}}, secured=False)},
    }
