"""CONNECT and DISCONNECT (MQTT 5.0 §3.1, §3.14; 3.1.1 §3.1, §3.14)."""
from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from bwfast import codes as c
from bwfast.errors import MQTTError
from bwfast.listeners import identity_username
from bwfast.message import FORWARDED, Message
from bwfast.packet import encode_connack
from bwfast.session import NEVER_EXPIRES
from bwfast.store import MAX_KEY
from bwfast.topics import valid_topic

if TYPE_CHECKING:
    from bwfast.protocol import Connection

MAX_CLIENT_ID = MAX_KEY - 16  # bytes


def handle_connect(conn: Connection, p: Any) -> None:
    if conn.connect_seen:
        raise MQTTError(c.PROTOCOL_ERROR, "second CONNECT")  # [MQTT-3.1.0-2]
    conn.connect_seen = True
    conn.version = p.version
    worker = conn.worker
    cfg = worker.cfg.broker
    props = p.properties
    v5 = p.version == c.MQTT5

    cid = p.client_id
    assigned = ""
    if len(cid.encode()) > MAX_CLIENT_ID:
        # Client ids key LMDB records (with a sequence suffix): refused beyond what
        # LMDB can key, as [MQTT-3.1.3-5] lets a server limit them.
        conn.reject(c.CLIENT_ID_NOT_VALID, c.V3_IDENTIFIER_REJECTED)
        return
    if not cid:
        # [MQTT-3.1.3-8]: 3.1.1 needs clean session for an empty id; 3.1 has no empty ids.
        if p.version == c.MQTT31 or (not v5 and not p.clean_start) or not cfg.allow_zero_length_clientid:
            conn.reject(c.CLIENT_ID_NOT_VALID, c.V3_IDENTIFIER_REJECTED)
            return
        cid = "bw-" + secrets.token_hex(8)
        assigned = cid

    if v5:
        if props.get(c.RECEIVE_MAXIMUM) == 0 or props.get(c.MAXIMUM_PACKET_SIZE) == 0:
            raise MQTTError(c.PROTOCOL_ERROR, "receive maximum / maximum packet size of 0")
        if c.AUTHENTICATION_METHOD in props:
            conn.reject(c.BAD_AUTH_METHOD, c.V3_NOT_AUTHORIZED)  # no enhanced auth (§4.12)
            return
        expiry = props.get(c.SESSION_EXPIRY_INTERVAL, 0)
    else:
        expiry = 0 if p.clean_start else NEVER_EXPIRES

    will = None
    if p.will_topic is not None:
        if not valid_topic(p.will_topic):
            if not v5:
                # 3.1.1: a CONNECT that doesn't conform to §3.1 (a Will Topic is a
                # Topic Name: no wildcards [MQTT-3.1.3-10], [MQTT-4.7.1-1]) closes
                # the connection without a CONNACK [MQTT-3.1.4-1].
                raise MQTTError(c.MALFORMED_PACKET, "will topic is not a valid topic name")
            conn.reject(c.TOPIC_NAME_INVALID, c.V3_NOT_AUTHORIZED)  # the CONNACK code for it
            return
        if p.will_retain and not cfg.retain_available:
            conn.reject(c.RETAIN_NOT_SUPPORTED, c.V3_NOT_AUTHORIZED)
            return
        will = _make_will(p)

    username = p.username
    identity = None
    if worker.cfg.tls.use_identity_as_username and conn.listener in ("tls", "wss"):
        # Like Mosquitto's use_identity_as_username: the certificate is the credential.
        identity = identity_username(conn)
        if identity is None:
            conn.reject(c.NOT_AUTHORIZED, c.V3_NOT_AUTHORIZED)
            return
        username = identity
    keepalive = p.keepalive
    server_keepalive = None
    if keepalive > cfg.max_keepalive or (keepalive == 0 and cfg.max_keepalive < 65535):
        if v5:
            server_keepalive = keepalive = cfg.max_keepalive  # [MQTT-3.2.2-21]
    if not worker.quota.take():
        # [broker] max_connections: v5 says why (Quota exceeded); 3.1.1 has no code
        # for it, so the connection just closes, as Mosquitto's max_connections does.
        if v5:
            conn.reject(c.QUOTA_EXCEEDED, c.V3_SERVER_UNAVAILABLE)  # counted in reject
        else:
            worker.stats.refused += 1
            conn.close()
        return
    conn.counted = True
    # Whatever the client sends next waits until this CONNECT is through
    # (a password check off the loop, another worker letting go of the session).
    conn.held = []

    def proceed() -> None:
        if conn.closing:
            return
        session, present = worker.sessions.attach(conn, cid, p.clean_start, expiry)
        worker.sessions.set_will(
            session, will, p.will_properties.get(c.WILL_DELAY_INTERVAL, 0) if will else 0,
            replace=True)
        session.receive_max = cfg.max_inflight
        session.max_packet = 0
        ack_props = None
        if v5:
            session.receive_max = min(cfg.max_inflight, props.get(c.RECEIVE_MAXIMUM, 65535))
            session.max_packet = props.get(c.MAXIMUM_PACKET_SIZE, 0)
            conn.alias_max_out = min(props.get(c.TOPIC_ALIAS_MAXIMUM, 0), cfg.topic_alias_maximum)
            ack_props = _connack_props(conn, assigned, server_keepalive)
        # CONNACK once the session is durable and every worker routes its
        # subscriptions here; only then may anything else go to the client.
        seq = worker.announce_routes()

        def connected() -> None:
            worker.on_connected(conn)
            session.resume()
            if worker.cluster is not None:
                worker.cluster.session_live(cid)
            conn.connected()

        worker.ack(conn, encode_connack(present, c.SUCCESS, conn.version, ack_props), connected, seq)

    def authenticated(code: int) -> None:
        if conn.closing:
            return
        if code:
            conn.reject(code, c.V5_TO_V3_CONNACK.get(code, c.V3_NOT_AUTHORIZED))
            return
        conn.username = username
        conn.keepalive = keepalive
        worker.claim(cid, p.clean_start, proceed)

    if identity is not None:
        authenticated(0)
    else:
        worker.authenticate(username, p.password, authenticated)


def _make_will(p: Any) -> Message:
    wp = p.will_properties
    props = {k: v for k, v in wp.items() if k in FORWARDED} if wp else None
    msg = Message(p.will_topic, p.will_payload, p.will_qos, p.will_retain, props or None,
                  origin=p.client_id)
    if wp and c.MESSAGE_EXPIRY_INTERVAL in wp:
        # Stored as an interval until the will is published (publish_will stamps it).
        msg.expiry_at = -float(wp[c.MESSAGE_EXPIRY_INTERVAL])
    return msg


def _connack_props(conn: Connection, assigned: str, server_keepalive: int | None) -> dict:
    cfg = conn.worker.cfg.broker
    props: dict = {
        c.RECEIVE_MAXIMUM: cfg.max_inflight,
        c.TOPIC_ALIAS_MAXIMUM: cfg.topic_alias_maximum,
        c.SHARED_SUBSCRIPTION_AVAILABLE: 1,
        c.WILDCARD_SUBSCRIPTION_AVAILABLE: 1,
        c.SUBSCRIPTION_IDENTIFIER_AVAILABLE: 1,
    }
    if not cfg.topic_alias_maximum:
        del props[c.TOPIC_ALIAS_MAXIMUM]
    if not cfg.retain_available:
        props[c.RETAIN_AVAILABLE] = 0
    if cfg.max_packet_size < 268435455:
        props[c.MAXIMUM_PACKET_SIZE] = cfg.max_packet_size
    if assigned:
        props[c.ASSIGNED_CLIENT_IDENTIFIER] = assigned
    if server_keepalive is not None:
        props[c.SERVER_KEEP_ALIVE] = server_keepalive
    return props


def handle_disconnect(conn: Connection, p: Any) -> None:
    """Client DISCONNECT: no will unless v5 reason 0x04 [MQTT-3.14.4-3]."""
    session = conn.session
    if conn.version == c.MQTT5 and session is not None:
        new_expiry = p.properties.get(c.SESSION_EXPIRY_INTERVAL)
        if new_expiry is not None:
            if session.expiry == 0 and new_expiry != 0:
                raise MQTTError(c.PROTOCOL_ERROR, "session expiry set after CONNECT with 0")  # [MQTT-3.14.2-2]
            session.expiry = new_expiry
    conn.graceful = not (conn.version == c.MQTT5 and p.reason_code == c.DISCONNECT_WITH_WILL)
    conn.close()
