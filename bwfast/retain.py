"""Retained messages: one per topic, kept in memory and in LMDB (`retained`).

An empty payload clears the topic [MQTT-3.3.1-6, -7]. Matching a new
subscription against the stored topics goes through a SubTrie of topics used
in reverse: every stored topic is inserted as a literal filter, and the new
subscription.s filter is checked against each candidate with topic_matches.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from bwfast.message import Message
from bwfast.topics import topic_matches

if TYPE_CHECKING:
    from bwfast.store import Store


class RetainStore:
    def __init__(self, store: Store | None) -> None:
        self.store = store
        self.messages: dict[str, Message] = {}

    def load(self) -> int:
        """Read every retained message from LMDB (start-up)."""
        if self.store is None:
            return 0
        now = time.time()
        for key, rec in self.store.items("retained"):
            msg = Message.from_record(rec)
            if msg.expired(now):
                self.store.delete("retained", key)
                continue
            self.messages[msg.topic] = msg
        return len(self.messages)

    def set(self, msg: Message, persist: bool = True) -> None:
        """Store, replace or (empty payload) clear the retained message of msg.topic."""
        topic = msg.topic
        if not msg.payload:
            if self.messages.pop(topic, None) is not None and persist and self.store is not None:
                self.store.delete("retained", topic.encode())
            return
        kept = Message(topic, msg.payload, msg.qos, True, msg.props, msg.expiry_at, msg.origin,
                       msg.created)
        self.messages[topic] = kept
        if persist and self.store is not None:
            self.store.put("retained", topic.encode(), kept.to_record())

    def match(self, filt: str) -> list[Message]:
        """Retained messages whose topic matches ``filt``, unexpired, in topic order."""
        now = time.time()
        out = []
        if "+" not in filt and "#" not in filt:
            msg = self.messages.get(filt)
            return [msg] if msg is not None and not msg.expired(now) else []
        for topic, msg in self.messages.items():
            if topic_matches(filt, topic) and not msg.expired(now):
                out.append(msg)
        return out

    def __len__(self) -> int:
        return len(self.messages)
