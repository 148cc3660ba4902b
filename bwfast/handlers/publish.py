"""PUBLISH and its acknowledgements (MQTT 5.0 §3.3–§3.7, §4.3)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from bwfast import codes as c
from bwfast.errors import MQTTError
from bwfast.message import Message
from bwfast.packet import encode_ack

if TYPE_CHECKING:
    from bwfast.protocol import Connection

log = logging.getLogger("bwfast.publish")


def handle_publish(conn: Connection, p: Any) -> None:
    worker = conn.worker
    session = conn.session
    assert session is not None
    topic = p.topic
    version = conn.version
    props = p.properties
    if version == c.MQTT5 and (props or not topic):
        if c.SUBSCRIPTION_IDENTIFIER in props:
            # Only the server puts one in a PUBLISH; the decoder accepts it for
            # the client side of the codec, the direction is checked here.
            raise MQTTError(c.PROTOCOL_ERROR, "PUBLISH from a client with a "
                            "Subscription Identifier")  # [MQTT-3.3.4-6]
        topic = _resolve_alias(conn, topic, props)
    if p.retain and not worker.cfg.broker.retain_available:
        raise MQTTError(c.RETAIN_NOT_SUPPORTED, "retain not available")  # [MQTT-3.3.1-13]
    worker.stats.msgs_received += 1
    qos = p.qos
    pid = p.packet_id
    acl = session.acl
    if acl is not None and not acl.may_write(topic):
        _denied(conn, topic, qos, pid)
        return
    if qos == 2:
        if pid in session.qos2_in:
            # A resent QoS 2 PUBLISH we already took: acknowledge, never deliver twice [MQTT-4.3.3-10].
            worker.ack(conn, encode_ack(c.PUBREC, pid, 0, version))
            return
        if len(session.qos2_in) >= worker.cfg.broker.max_inflight:
            raise MQTTError(c.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")  # [MQTT-3.3.4-9]
    if topic.startswith("$SYS"):
        delivered = seq = 0  # clients don't write $SYS; acknowledged and dropped like Mosquitto
    else:
        msg = Message.from_publish(topic, p, session.client_id, worker.wall)
        worker.history.event(session.client_id, msg)
        delivered, seq = worker.publish(msg, qos > 0)
    if qos == 0:
        return
    rc = c.NO_MATCHING_SUBSCRIBERS if delivered == 0 and version == c.MQTT5 else c.SUCCESS
    if qos == 1:
        worker.ack(conn, encode_ack(c.PUBACK, pid, rc, version), None, seq)
        return
    session.qos2_in.add(pid)
    if session.persistent:
        worker.store.put("inflight", _pid_key(session.client_id, pid), 1)
    worker.ack(conn, encode_ack(c.PUBREC, pid, rc, version), None, seq)


def _denied(conn: Connection, topic: str, qos: int, pid: int) -> None:
    """A PUBLISH to a topic the client may not write: not routed, not retained.
    v5 QoS 1/2 hear it (0x87); QoS 0 and v3.1.1 can't be told, so theirs is
    acknowledged as usual and dropped (CONTRACT.md, "Access control")."""
    worker = conn.worker
    worker.stats.denied += 1
    log.debug("PUBLISH from %s to %s denied", conn.client_id, topic)
    if qos:
        version = conn.version
        rc = c.NOT_AUTHORIZED if version == c.MQTT5 else c.SUCCESS
        worker.ack(conn, encode_ack(c.PUBACK if qos == 1 else c.PUBREC, pid, rc, version))


def _resolve_alias(conn: Connection, topic: str, props: dict) -> str:
    """Topic Alias from the client (MQTT 5.0 §3.3.2.3.4)."""
    alias = props.get(c.TOPIC_ALIAS) if props else None
    if alias is None:
        if not topic:
            raise MQTTError(c.PROTOCOL_ERROR, "empty topic without alias")  # [MQTT-3.3.2-1]
        return topic
    if alias == 0 or alias > conn.worker.cfg.broker.topic_alias_maximum:
        raise MQTTError(c.TOPIC_ALIAS_INVALID, "topic alias out of range")  # [MQTT-3.3.2-9]
    if topic:
        conn.aliases[alias] = topic
        return topic
    known = conn.aliases.get(alias)
    if known is None:
        raise MQTTError(c.PROTOCOL_ERROR, "unknown topic alias")
    return known


def _pid_key(cid: str, pid: int) -> bytes:
    return cid.encode() + b"\x00" + pid.to_bytes(2, "big")


def handle_pubrel(conn: Connection, p: Any) -> None:
    session = conn.session
    assert session is not None
    pid = p.packet_id
    rc = c.SUCCESS
    if pid in session.qos2_in:
        session.qos2_in.discard(pid)
        if session.persistent:
            conn.worker.store.delete("inflight", _pid_key(session.client_id, pid))
    elif conn.version == c.MQTT5:
        rc = c.PACKET_ID_NOT_FOUND
    conn.worker.ack(conn, encode_ack(c.PUBCOMP, pid, rc, conn.version))


def handle_puback(conn: Connection, p: Any) -> None:
    assert conn.session is not None
    conn.session.on_puback(p.packet_id)


def handle_pubrec(conn: Connection, p: Any) -> None:
    session = conn.session
    assert session is not None
    if session.on_pubrec(p.packet_id, p.reason_code):
        if p.reason_code < 0x80:
            # Once the client has PUBREL it forgets the packet id: the message's state
            # (PUBREC received) must be committed first, or a crash would resend the
            # PUBLISH and the client take it as new (QoS 2 exactly once).
            conn.worker.ack(conn, encode_ack(c.PUBREL, p.packet_id, 0, conn.version))
    elif conn.version == c.MQTT5:
        conn.write(encode_ack(c.PUBREL, p.packet_id, c.PACKET_ID_NOT_FOUND, conn.version))
    else:
        conn.write(encode_ack(c.PUBREL, p.packet_id, 0, conn.version))


def handle_pubcomp(conn: Connection, p: Any) -> None:
    assert conn.session is not None
    conn.session.on_pubcomp(p.packet_id)
