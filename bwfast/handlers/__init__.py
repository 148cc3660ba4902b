"""One module per packet family; ``table()`` maps packet type -> handler."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bwfast import codes as c
from bwfast.handlers.connect import handle_connect, handle_disconnect
from bwfast.handlers.misc import handle_auth, handle_pingreq, handle_server_only
from bwfast.handlers.publish import (
    handle_puback,
    handle_pubcomp,
    handle_publish,
    handle_pubrec,
    handle_pubrel,
)
from bwfast.handlers.subscribe import handle_subscribe, handle_unsubscribe


def table() -> list[Callable[[Any, Any], None]]:
    handlers: list[Callable[[Any, Any], None]] = [handle_server_only] * 16
    handlers[c.CONNECT] = handle_connect
    handlers[c.PUBLISH] = handle_publish
    handlers[c.PUBACK] = handle_puback
    handlers[c.PUBREC] = handle_pubrec
    handlers[c.PUBREL] = handle_pubrel
    handlers[c.PUBCOMP] = handle_pubcomp
    handlers[c.SUBSCRIBE] = handle_subscribe
    handlers[c.UNSUBSCRIBE] = handle_unsubscribe
    handlers[c.PINGREQ] = handle_pingreq
    handlers[c.DISCONNECT] = handle_disconnect
    handlers[c.AUTH] = handle_auth
    return handlers
