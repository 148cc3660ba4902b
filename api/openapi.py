"""The OpenAPI 3.0 description of the REST API, served at ``openapi.json``.

Written by hand from spec/rest-api.txt and CONTRACT.md; a test checks that
every route of the app is described here.
"""
from __future__ import annotations

from typing import Any

from api.openapi_manage import manage_paths

BASE = "/bwiot/api/v1"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _fields(required: list[str], **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = required
    return schema


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """POST fields: a JSON object, form fields, or query parameters (CONTRACT.md)."""
    return {"required": True, "content": {
        "application/json": {"schema": schema},
        "application/x-www-form-urlencoded": {"schema": schema},
    }}


def _query(name: str, description: str, required: bool = False,
           schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


STR: dict[str, Any] = {"type": "string"}
QOS = {"type": "integer", "enum": [0, 1, 2], "default": 0}
FLAG = {"oneOf": [{"type": "integer", "enum": [0, 1]}, {"type": "boolean"}], "default": 0}
MESSAGE = {"oneOf": [{"type": "string"}, {"type": "object"}, {"type": "array"}],
           "description": "text (sent as UTF-8) or JSON (sent compact)"}
PUBLISH = {"topic": {**STR, "description": "topic name, no wildcards"}, "message": MESSAGE,
           "QoS": {**QOS, "description": "also accepted as qos"}, "retain": FLAG}

# The call failed as a whole: nothing was published, and nothing will be later
# (a worker that was stalled finds the request withdrawn, bwfast/once.py).
NOT_SENT = ("`Message could not be delivered`: the client is not connected (send_client), "
            "or no worker answered within 2 s; nothing was sent and nothing will be")

AUTH_ERRORS = {
    "400": _json(_ref("Fail"), "`Missing parameter:<name>` (absent or empty) or "
                               "`Invalid parameter:<name>` (wrong type or out of range)"),
    "401": _json(_ref("AuthFail"), "`Authorization Credentials not provided` or "
                                   "`Invalid Access Token`"),
}


def _op(summary: str, responses: dict[str, Any], *, secured: bool = True,
        body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses}}
    if secured:
        op["responses"].update(AUTH_ERRORS)
    else:
        op["security"] = []
    if body is not None:
        op["requestBody"] = _body(body)
    if params:
        op["parameters"] = params
    return op


def _ok(schema: dict[str, Any], description: str = "Success") -> dict[str, Any]:
    return {"200": _json(schema, description)}


def _status(description: str) -> dict[str, Any]:
    return _json(_fields([], status=_ref("Fail")), description)


def _listing(key: str, row: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [
        _fields(["bwapi-status", key], **{"bwapi-status": STR,
                                          key: {"type": "array", "items": row}}),
        _ref("NoData"),
    ]}


MESSAGE_ROW = _fields(["message", "time", "topic"], message=STR, time={"type": "integer"},
                      topic=STR, encoding={"type": "string", "enum": ["base64"]})
DEVICE_ID = _query("device_id", "client id of the device (URL-encoded, any UTF-8)")
HISTORY = [
    {**DEVICE_ID, "required": True},
    _query("limit", "how many, newest first", schema={"type": "integer", "minimum": 1,
                                                       "maximum": 10, "default": 1}),
]


ACCESS = {"type": "string", "enum": ["read", "write", "readwrite", "deny"]}
ACL_WHO = {
    "username": {**STR, "description": "the rule is for this username"},
    "clientid": {**STR, "description": "the rule is for this client id"},
    "pattern": {"type": "boolean", "enum": [True],
                "description": "the rule is for everyone; %u and %c in topic are substituted"},
}
ACL_RULE = _fields(["topic"], **ACL_WHO, topic={**STR, "description": "topic filter"},
                   access=ACCESS)
ACL_RULE["description"] = "exactly one of username, clientid, pattern"
ACL_CHANGED = {**_ok(_fields([], **{"bwapi-status": STR, "bwapi-status-reason": STR,
                                    "detail": {**STR, "description": "workers that did not "
                                               "confirm the reload (they reload on restart)"}}))}


def _acl_paths() -> dict[str, Any]:
    return {
        f"{BASE}/add_acl": {"post": _op(
            "Add an ACL rule (or change the access of the same who and topic); applies at once",
            ACL_CHANGED, body={**ACL_RULE, "required": ["topic", "access"]})},
        f"{BASE}/remove_acl": {"post": _op(
            "Remove an ACL rule (access, when given, must match)",
            {**ACL_CHANGED, "404": _json(_ref("Fail"), "`No such ACL rule`")}, body=ACL_RULE)},
        f"{BASE}/acls/": {"get": _op(
            "Run-time ACL rules, all or of one username / client id", _ok(_listing(
                "acls", _fields(["kind", "who", "topic", "access"], kind={
                    "type": "string", "enum": ["username", "clientid", "pattern"]},
                    who=STR, topic=STR, access=ACCESS))),
            params=[_query("username", "only this username's rules"),
                    _query("clientid", "only this client id's rules")])},
        f"{BASE}/kick": {"post": _op(
            "Disconnect a client (v5: DISCONNECT 0x98); its will is published",
            {**_ok(_ref("Ok")), "404": _json(_ref("Fail"), "`Client not connected:<clientid>`")},
            body=_fields(["clientid"], clientid=STR))},
    }


def _paths() -> dict[str, Any]:
    sent = _ok(_ref("Ok"))
    return {
        f"{BASE}/login": {"post": _op(
            "Log in with the [api] username and password; returns a JWT", {
                **_ok(_fields(["access_token"], access_token=STR, **{
                    "bwapi-status": STR, "bwapi-status-reason": STR})),
                "400": _json(_ref("Fail"), "`Missing parameter:username|password`"),
                "401": _json(_ref("Fail"), "`Invalid Login`"),
                "429": _json(_ref("Fail"), "`Too many failed logins` (10 within a minute)"),
            }, secured=False, body=_fields(["username", "password"], username=STR, password=STR))},
        f"{BASE}/logout": {"post": _op("Revoke this token at once", sent)},
        f"{BASE}/send_client": {"post": _op(
            "Send a message to one connected client, subscribed or not; once per "
            "successful call",
            {**sent, "404": _json(_ref("Fail"), NOT_SENT)},
            body=_fields(["clientid", "topic", "message"], clientid=STR, **PUBLISH))},
        f"{BASE}/send_all": {"post": _op(
            "Publish to every subscriber of the topic (retained if asked); once per "
            "successful call",
            {**sent, "404": _json(_ref("Fail"), NOT_SENT)},
            body=_fields(["topic", "message"], **PUBLISH))},
        f"{BASE}/add_auth": {"post": _op(
            "Add MQTT credentials", {**_ok(_fields([], status=_ref("Ok"))),
                                     "409": _status("`Username already exist`")},
            body=_fields(["username", "password"], username=STR, password=STR))},
        f"{BASE}/edit_auth": {"post": _op(
            "Change a user's password; disconnects that user's live connections", {**_ok(_fields([], status=_ref("Ok"))),
                                         "404": _status("unknown username")},
            body=_fields(["username", "new_password"], username=STR, new_password=STR))},
        f"{BASE}/remove_auth": {"post": _op(
            "Remove MQTT credentials (the password, when given, must match); disconnects "
            "that user's live connections",
            {**_ok(_fields([], status=_ref("Ok"))),
             "404": _status("`This username does not exist.`")},
            body=_fields(["username"], username=STR, password=STR))},
        f"{BASE}/devices/": {"get": _op(
            "Every device, active or inactive, most recently connected first", {
                **_ok(_fields(["data", "page", "current_page", "total"], **{
                    "bwapi-status": STR,
                    "data": {"type": "array", "items": _fields(
                        [], device_name=STR, device_connected_time={"type": "integer"},
                        status={"type": "string", "enum": ["active", "inactive"]},
                        device_id=STR)},
                    "page": {"type": "integer", "description": "number of pages"},
                    "current_page": {"type": "integer"}, "total": {"type": "integer"}})),
                "404": _json(_ref("Fail"), "`No Device / Invalid Page`"),
            }, params=[
                _query("page", "1-based page", schema={"type": "integer", "minimum": 1}),
                _query("limit", "rows per page", schema={"type": "integer", "minimum": 1,
                                                         "maximum": 1000, "default": 10}),
            ])},
        f"{BASE}/connected_devices": {"get": _op(
            "Connected devices, numbered from 1",
            _ok(_fields(["devices"], devices={"type": "object",
                                              "additionalProperties": STR})))},
        f"{BASE}/subscriptions/": {"get": _op(
            "Subscriptions of every device, or of device_id", _ok(_listing(
                "subscriptions", _fields([], topic=STR, device_name=STR, QoS=QOS,
                                         device_id=STR))), params=[DEVICE_ID])},
        f"{BASE}/last_events_by_device/": {"get": _op(
            "Latest messages the device published", _ok(_listing("events", MESSAGE_ROW)),
            params=HISTORY)},
        f"{BASE}/last_commands_to_device/": {"get": _op(
            "Latest messages delivered to the device", _ok(_listing("commands", MESSAGE_ROW)),
            params=HISTORY)},
        f"{BASE}/wills/": {"get": _op(
            "Will of every device that has one, or of device_id", _ok(_listing(
                "will", _fields([], message=STR, device_name=STR, retain={"type": "integer"},
                                device_id=STR, topic=STR, QoS=QOS,
                                encoding={"type": "string", "enum": ["base64"]}))),
            params=[DEVICE_ID])},
        "/graph/client_count": {"get": _op(
            "Number of connected clients", _ok(_fields(["count"], count={"type": "integer"})))},
        f"{BASE}/openapi.json": {"get": _op("This document", _ok({"type": "object"}),
                                            secured=False)},
        **_acl_paths(),
        **manage_paths(BASE, _op, _ok, _json, _ref, _fields, _query, _listing),
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "bwfast REST API", "version": "1.0",
                 "description": "Bevywise-compatible REST API of the bwfast MQTT broker. "
                                "Times are ms since the epoch; payloads are UTF-8 text, or "
                                "base64 with \"encoding\": \"base64\". GET parameters may "
                                "also come as a JSON object or form body."},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "Authorization: Bearer <token> (a bare <token> works too)"}},
            "schemas": {
                "Ok": _fields(["bwapi-status"], **{"bwapi-status": {"type": "string",
                                                                    "enum": ["success"]},
                                                   "bwapi-status-reason": STR}),
                "Fail": _fields(["bwapi-status", "bwapi-status-reason"], **{
                    "bwapi-status": {"type": "string", "enum": ["fail"]},
                    "bwapi-status-reason": STR, "detail": STR}),
                "AuthFail": _fields(["bwapi-status", "bwapi-status-reason", "detail"], **{
                    "bwapi-status": {"type": "string", "enum": ["fail"]},
                    "bwapi-status-reason": STR, "detail": STR}),
                "NoData": _fields(["bwapi-status", "bwapi-status-reason"], **{
                    "bwapi-status": {"type": "string", "enum": ["success"]},
                    "bwapi-status-reason": {"type": "string", "enum": ["no_data_found"]}}),
            },
        },
    }
