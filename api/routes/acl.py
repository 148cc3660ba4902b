"""``add_acl``, ``remove_acl``, ``acls/``: run-time ACL rules (CONTRACT.md, "Access control").

A rule is (kind, who, topic, access): kind is the one field given of
``username``, ``clientid`` or ``pattern`` (``"pattern": true``, for everyone,
with ``%u`` / ``%c`` in the topic). Rows live in LMDB (bwfast.acl); after a
write every worker is told ``acl_reload`` so the change applies at once, to
live subscriptions too. A worker that does not answer in time does not fail
the call: it reads the rules again when it restarts, and the answer's
``detail`` says how many did not confirm. Answers are flat, as the spec's
send_client / send_all answers are.
"""
from __future__ import annotations

from sanic import Blueprint, HTTPResponse
from sanic.request import Request

from api.errors import BadParameter, MissingParameter, NotFound, fail_body
from api.guard import authorized, no_data, success
from api.params import Params
from bwfast.acl import (
    ACCESS_WORDS,
    DB,
    KINDS,
    AclError,
    Rule,
    check_rule,
    rule_from_value,
    rule_key,
    rule_value,
    stored_rules,
)

bp = Blueprint("acl", url_prefix="/bwiot/api/v1")

WHO = "|".join(KINDS)  # the name a 400 gives when none of the three is there


def _who(params: Params) -> tuple[str, str]:
    """(kind, who) from exactly one of username, clientid, pattern."""
    given = [k for k in KINDS if params.raw(k) is not None]
    if len(given) > 1:
        raise BadParameter(given[1], f"give exactly one of {', '.join(KINDS)}")
    if not given:
        raise MissingParameter(WHO, f"give one of {', '.join(KINDS)}")
    kind = given[0]
    if kind == "pattern":
        if not params.flag("pattern"):
            raise BadParameter("pattern", "pattern must be true (the rule is for everyone)")
        return kind, ""
    who = params.text(kind, no_nul=True)  # an MQTT UTF-8 string [MQTT-1.5.4-2]
    assert who is not None
    return kind, who


def _rule(params: Params, access_required: bool = True) -> tuple[Rule, str | None]:
    """The rule the fields name, and the access asked (None when not given)."""
    kind, who = _who(params)
    topic = params.text("topic", no_nul=True)
    assert topic is not None
    access = params.text("access", required=access_required)
    if access is not None and access not in ACCESS_WORDS:
        raise BadParameter("access", f"access must be one of {', '.join(ACCESS_WORDS)}")
    try:
        rule = check_rule(kind, who, topic, access or "deny")
    except AclError as e:
        raise BadParameter("topic", str(e)) from None
    return rule, access


async def _reload(request: Request) -> dict[str, str]:
    """Every worker re-reads the rules; ``detail`` when one could not (yet)."""
    silent, error = await request.app.ctx.workers.acl_reload()
    notes = []
    if not request.app.ctx.cfg.acl.enabled:
        notes.append("[acl] enabled = false: the rules are kept but not enforced")
    if silent:
        notes.append(f"{silent} worker(s) did not answer; they apply the rules when they "
                     "restart")
    if error:
        notes.append(error)
    return {"detail": "; ".join(notes)} if notes else {}


@bp.post("/add_acl")
@authorized
async def add_acl(request: Request) -> HTTPResponse:
    """Add a rule, or change the access of the rule for the same who and topic."""
    rule, _ = _rule(Params(request))
    store = request.app.ctx.store
    store.put(DB, rule_key(rule), rule_value(rule))
    store.commit()
    return success(f"Added ACL rule. {rule.kind} '{rule.who}' {rule.access} '{rule.topic}'",
                   **await _reload(request))


@bp.post("/remove_acl")
@authorized
async def remove_acl(request: Request) -> HTTPResponse:
    """Remove the rule for this who and topic; ``access``, when given, must be its access."""
    rule, access = _rule(Params(request), access_required=False)
    store = request.app.ctx.store
    key = rule_key(rule)
    stored = store.get(DB, key)
    if stored is None or (access is not None and rule_from_value(stored).access != access):
        raise NotFound(fail_body("No such ACL rule"))
    store.delete(DB, key)
    store.commit()
    return success(f"Removed ACL rule. {rule.kind} '{rule.who}' '{rule.topic}'",
                   **await _reload(request))


@bp.get("/acls", ignore_body=False)
@authorized
async def acls(request: Request) -> HTTPResponse:
    """Every run-time rule, or those of one ``username`` or ``clientid``
    (the acl_file's rules are the file's; they are not listed here)."""
    params = Params(request)
    wanted: list[tuple[str, str]] = []
    for kind in ("username", "clientid"):
        who = params.text(kind, required=False)
        if who is not None:
            wanted.append((kind, who))
    rows = [r.to_dict() for r in stored_rules(request.app.ctx.store)
            if not wanted or (r.kind, r.who) in wanted]
    return success(acls=rows) if rows else no_data()
