"""SUBSCRIBE and UNSUBSCRIBE (MQTT 5.0 §3.8–§3.11)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bwfast import codes as c
from bwfast.errors import MQTTError
from bwfast.packet import encode_suback, encode_unsuback
from bwfast.session import SubOpts
from bwfast.topics import parse_shared, valid_filter

if TYPE_CHECKING:
    from bwfast.protocol import Connection
    from bwfast.session import Session


def handle_subscribe(conn: Connection, p: Any) -> None:
    worker = conn.worker
    session = conn.session
    assert session is not None
    v5 = conn.version == c.MQTT5
    sub_id = 0
    if v5 and p.properties:
        ids = p.properties.get(c.SUBSCRIPTION_IDENTIFIER)
        if ids:
            sub_id = ids[0]
    codes: list[int] = []
    retained: list[tuple[str, SubOpts]] = []
    acl = session.acl
    for filt, options in p.topics:
        if not valid_filter(filt):
            codes.append(c.TOPIC_FILTER_INVALID if v5 else c.V3_SUBACK_FAILURE)
            continue
        shared = filt.startswith("$share/")
        if shared and options & 4:
            raise MQTTError(c.PROTOCOL_ERROR, "no local on a shared subscription")  # [MQTT-3.8.3-4]
        if acl is not None and not acl.may_subscribe(parse_shared(filt)[1] if shared else filt):
            # A filter the client may read nothing through; a partly denied one is
            # granted and each delivery is checked (Session.deliver).
            codes.append(c.NOT_AUTHORIZED if v5 else c.V3_SUBACK_FAILURE)
            continue
        opts = SubOpts.from_byte(options, sub_id)
        if not v5:
            opts.no_local = opts.rap = False
            opts.rh = 0
        existed = filt in session.subs
        session.subs[filt] = opts
        worker.subscribe(session, filt, opts)
        codes.append(opts.qos)
        # [MQTT-3.3.1-9, 3.8.4]: retained messages per retain handling; none for shared subs.
        if not shared and (opts.rh == 0 or (opts.rh == 1 and not existed)):
            retained.append((filt, opts))
    worker.sessions.save(session)
    worker.history.subscriptions_changed(session)
    # [MQTT-3.8.4-1..]: SUBACK once every peer worker routes the new filters to us.
    seq = worker.announce_routes()
    data = encode_suback(p.packet_id, codes, conn.version)
    worker.ack(conn, data, (lambda: _send_retained(session, retained)) if retained else None, seq)


def _send_retained(session: Session, subs: list[tuple[str, SubOpts]]) -> None:
    """Retained messages go out with RETAIN set [MQTT-3.3.1-8]."""
    if session.conn is None:
        return
    store = session.worker.retained
    for filt, opts in subs:
        sub_ids = [opts.sub_id] if opts.sub_id else None
        for msg in store.match(filt):
            session.deliver(msg, min(msg.qos, opts.qos), True, sub_ids)


def handle_unsubscribe(conn: Connection, p: Any) -> None:
    worker = conn.worker
    session = conn.session
    assert session is not None
    v5 = conn.version == c.MQTT5
    codes: list[int] = []
    for filt in p.topics:
        if not valid_filter(filt):
            codes.append(c.TOPIC_FILTER_INVALID)
            continue
        if session.subs.pop(filt, None) is None:
            codes.append(c.NO_SUBSCRIPTION_EXISTED)
            continue
        worker.unsubscribe(session, filt)
        codes.append(c.SUCCESS)
    worker.sessions.save(session)
    worker.history.subscriptions_changed(session)
    worker.announce_routes()
    worker.ack(conn, encode_unsuback(p.packet_id, codes if v5 else [], conn.version))
