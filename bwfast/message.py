"""An application message as the broker routes it, and its encoded variants.

A message is encoded once per (protocol version, QoS, retain) variant and the
bytes are shared by every subscriber that takes that variant; QoS 1/2 copies
only get their packet id patched (DESIGN.md, "The hot path").
"""
from __future__ import annotations

import time
from typing import Any

from bwfast.codes import (
    CONTENT_TYPE,
    CORRELATION_DATA,
    MESSAGE_EXPIRY_INTERVAL,
    PAYLOAD_FORMAT_INDICATOR,
    RESPONSE_TOPIC,
    SUBSCRIPTION_IDENTIFIER,
    TOPIC_ALIAS,
    USER_PROPERTY,
)
from bwfast.packet import encode_publish, set_packet_id

# Properties forwarded unchanged to subscribers [MQTT-3.3.2-4, -15, -17, -18, -20].
FORWARDED = (PAYLOAD_FORMAT_INDICATOR, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY)


class Message:
    """One application message. ``props`` holds only forwardable v5 properties."""

    __slots__ = ("topic", "payload", "qos", "retain", "props", "expiry_at", "origin",
                 "variants", "created", "mid")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 props: dict | None = None, expiry_at: float = 0.0, origin: str = "",
                 created: float = 0.0) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.props = props
        self.expiry_at = expiry_at  # monotonic-free wall time (time.time()); 0 = never
        self.origin = origin        # client id of the publisher (no-local)
        self.variants: dict | None = None
        self.created = created or time.time()
        self.mid = 0  # cluster-wide id (multi-worker): lets a moving session drop a repeat

    @classmethod
    def from_publish(cls, topic: str, pkt: Any, origin: str, now: float) -> Message:
        props = pkt.properties
        fwd = None
        expiry_at = 0.0
        if props:
            fwd = {k: v for k, v in props.items() if k in FORWARDED} or None
            interval = props.get(MESSAGE_EXPIRY_INTERVAL)
            if interval is not None:
                expiry_at = now + interval
        return cls(topic, pkt.payload, pkt.qos, pkt.retain, fwd, expiry_at, origin, now)

    def expired(self, now: float) -> bool:
        return self.expiry_at != 0.0 and now >= self.expiry_at

    def encode(self, version: int, qos: int, retain: bool, packet_id: int = 0,
               sub_ids: list[int] | None = None, dup: bool = False, alias: int = 0,
               alias_known: bool = False) -> bytes:
        """The PUBLISH bytes for one subscriber.

        Shared variants are cached; a message with an expiry interval,
        subscription identifiers or a topic alias is encoded per delivery
        because those properties differ per subscriber or per moment
        [MQTT-3.3.2-6].
        """
        if sub_ids or self.expiry_at or dup or alias:
            props = self._props(version, sub_ids)
            topic = self.topic
            if alias:
                props = props or {}
                props[TOPIC_ALIAS] = alias
                if alias_known:
                    topic = ""  # the alias alone names the topic [MQTT-3.3.2-12]
            return encode_publish(topic, self.payload, qos, retain, dup, packet_id, version, props)
        key = (version, qos, retain)
        variants = self.variants
        if variants is None:
            variants = self.variants = {}
        data = variants.get(key)
        if data is None:
            data = encode_publish(self.topic, self.payload, qos, retain, False, 1 if qos else 0,
                                  version, self.props if version == 5 else None)
            variants[key] = data
        if qos:
            return set_packet_id(data, packet_id)
        return data

    def _props(self, version: int, sub_ids: list[int] | None) -> dict | None:
        if version != 5:
            return None
        props = dict(self.props) if self.props else {}
        if self.expiry_at:
            props[MESSAGE_EXPIRY_INTERVAL] = max(0, int(self.expiry_at - time.time() + 0.999))
        if sub_ids:
            props[SUBSCRIPTION_IDENTIFIER] = list(sub_ids)
        return props

    # -- persistence ---------------------------------------------------------------
    def to_record(self) -> list:
        return [self.topic, self.payload, self.qos, self.retain, self.props, self.expiry_at,
                self.origin, self.created, self.mid]

    @classmethod
    def from_record(cls, rec: list) -> Message:
        topic, payload, qos, retain, props, expiry_at, origin, created = rec[:8]
        if props:
            props = {int(k): (
                [tuple(p) for p in v] if int(k) == USER_PROPERTY else v) for k, v in props.items()}
        msg = cls(topic, payload, qos, retain, props or None, expiry_at, origin, created)
        if len(rec) > 8:
            msg.mid = rec[8]
        return msg
