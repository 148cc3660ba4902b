"""PINGREQ, AUTH, and packets a client must never send."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bwfast import codes as c
from bwfast.errors import MQTTError
from bwfast.packet import encode_pingresp

if TYPE_CHECKING:
    from bwfast.protocol import Connection

PINGRESP = encode_pingresp()


def handle_pingreq(conn: Connection, p: Any) -> None:
    conn.write(PINGRESP)


def handle_auth(conn: Connection, p: Any) -> None:
    # No authentication method was accepted at CONNECT, so AUTH is a protocol error (§4.12).
    raise MQTTError(c.PROTOCOL_ERROR, "AUTH without an authentication method")


def handle_server_only(conn: Connection, p: Any) -> None:
    raise MQTTError(c.PROTOCOL_ERROR, "packet type only a server sends")
