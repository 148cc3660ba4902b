"""The console's Live view: ``GET live?filter=F`` streams the messages that
match F as server-sent events, read by a real MQTT subscription.

The API process connects to the broker's own MQTT listener as an ordinary
v3.1.1 client, one connection per open view, subscribes to F at QoS 2 (so each
message arrives at the QoS it was published with) and acknowledges what it
gets. That works with the shipped broker.conf (no WebSocket listener needed),
on every worker (the broker routes across them), and sees exactly what a
device subscribed to F would see: retained messages first, `$` topics only
when asked for [MQTT-4.7.2-1].

With ``[authentication] enabled``, the API logs in as its own user, made at
start with a random name and password (:func:`provision`), removed at stop;
with ``[acl] enabled`` that user gets a ``read #`` rule, so the view is the
administrator's, not limited by the devices' rules.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bwfast.acl import DB as ACL_DB
from bwfast.acl import check_rule, rule_key, rule_value
from bwfast.auth import hash_password

if TYPE_CHECKING:
    from bwfast.config import Config
    from bwfast.store import Store

log = logging.getLogger("bwfast.api.live")

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK = (
    1, 2, 3, 4, 5, 6, 7, 8, 9)
PINGREQ = 12
KEEPALIVE = 60
MAX_SHOWN = 16384   # payload bytes sent to the browser per message
USER_PREFIX = "bwfast-console-"


@dataclass
class Identity:
    """Who the API is on the broker's MQTT side."""

    username: str | None = None
    password: str | None = None


def _rule(name: str) -> bytes:
    return rule_key(check_rule("username", name, "#", "read"))


def provision(cfg: Config, store: Store) -> Identity:
    """Make the API's own MQTT user when the broker needs one (see the module doc),
    after removing any an earlier API process left behind (killed, say)."""
    for key, rec in store.items("auth"):
        if is_internal(rec):
            store.delete("auth", key)
            store.delete(ACL_DB, _rule(key.decode("utf-8", "replace")))
    ident = Identity()
    if cfg.authentication.enabled or cfg.acl.enabled:
        ident.username = name = USER_PREFIX + os.urandom(8).hex()
        # Marked as the console's, and kept in `auth` even with authentication off:
        # that is how the next start finds it to remove it.
        ident.password = os.urandom(24).hex()
        store.put("auth", name.encode(), {**hash_password(ident.password), "console": True})
        if cfg.acl.enabled:
            rule = check_rule("username", name, "#", "read")
            store.put(ACL_DB, rule_key(rule), rule_value(rule))
    store.commit()
    return ident


def unprovision(store: Store, ident: Identity) -> None:
    if ident.username is None:
        return
    store.delete("auth", ident.username.encode())
    store.delete(ACL_DB, _rule(ident.username))
    store.commit()


def is_internal(record: object) -> bool:
    """An ``auth`` record of the API's own user, left out of the console's list."""
    return isinstance(record, dict) and record.get("console") is True


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


def connect_packet(client_id: str, ident: Identity) -> bytes:
    flags = 0x02  # clean session: nothing is kept after the view closes
    payload = _string(client_id)
    if ident.username is not None:
        flags |= 0x80
        payload += _string(ident.username)
    if ident.password is not None:
        flags |= 0x40
        payload += _string(ident.password)
    return _packet(CONNECT << 4, _string("MQTT") + bytes([4, flags])
                   + struct.pack("!H", KEEPALIVE) + payload)


async def _read_packet(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, first & 0x0F, await reader.readexactly(length)


class LiveError(Exception):
    """The subscription could not be made; the message says why."""


class Tap:
    """One MQTT subscription made for one open Live view."""

    def __init__(self, host: str, port: int, ident: Identity, filt: str) -> None:
        self.host, self.port, self.ident, self.filt = host, port, ident, filt
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> asyncio.StreamReader:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self.writer = writer
        writer.write(connect_packet("bwfast-console-live-" + os.urandom(6).hex(), self.ident))
        ptype, _, body = await asyncio.wait_for(_read_packet(reader), 5)
        if ptype != CONNACK or len(body) < 2 or body[1] != 0:
            raise LiveError(f"the broker refused the console's connection ({body[1:2].hex()})")
        writer.write(_packet(SUBSCRIBE << 4 | 2, struct.pack("!H", 1) + _string(self.filt)
                             + b"\x02"))
        while True:
            ptype, _, body = await asyncio.wait_for(_read_packet(reader), 5)
            if ptype == SUBACK:
                if body[2:3] == b"\x80":
                    raise LiveError("the broker refused the subscription")
                return reader

    async def messages(self, reader: asyncio.StreamReader) -> AsyncIterator[dict]:
        writer = self.writer
        assert writer is not None
        while True:
            try:
                ptype, flags, body = await asyncio.wait_for(_read_packet(reader), KEEPALIVE / 2)
            except TimeoutError:
                writer.write(bytes([PINGREQ << 4, 0]))
                continue
            if ptype == PUBREL:
                writer.write(_packet(PUBCOMP << 4, body[:2]))
                continue
            if ptype != PUBLISH:
                continue
            qos = (flags >> 1) & 3
            n = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + n].decode("utf-8", "replace")
            pos = 2 + n
            if qos:
                pid = body[pos:pos + 2]
                pos += 2
                writer.write(_packet((PUBACK if qos == 1 else PUBREC) << 4, pid))
            payload = body[pos:]
            yield {"topic": topic, "qos": qos, "retain": bool(flags & 1),
                   "size": len(payload), "truncated": len(payload) > MAX_SHOWN,
                   "payload": base64.b64encode(payload[:MAX_SHOWN]).decode("ascii")}

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.write(bytes([0xE0, 0]))  # DISCONNECT: no will, none set anyway
                self.writer.close()


def broker_address(cfg: Config) -> tuple[str, int]:
    host = cfg.broker.host
    if host in ("", "0.0.0.0", "::", "*"):
        host = "127.0.0.1"
    return host, cfg.broker.port


def event(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
