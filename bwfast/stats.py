"""Counters and the `$SYS/broker/...` topics they are published on (Mosquitto's names)."""
from __future__ import annotations

import time
from importlib.machinery import EXTENSION_SUFFIXES

from bwfast import __version__, fastpath, packet, topics


def compiled_modules() -> str:
    """Which hot-path modules this process runs compiled (STYLE: no silent fallback)."""
    return " ".join(m.__name__.rsplit(".", 1)[1] for m in (packet, topics, fastpath)
                    if m.__file__ and m.__file__.endswith(tuple(EXTENSION_SUFFIXES)))


class Stats:
    __slots__ = ("msgs_received", "msgs_sent", "bytes_received", "bytes_sent", "dropped",
                 "protocol_errors", "connects", "forwarded", "denied", "refused",
                 "received_qos1", "received_qos2", "payload_received_qos1",
                 "payload_received_qos2", "sent_qos1", "sent_qos2", "packet_bytes_sent_qos1",
                 "packet_bytes_sent_qos2", "started")

    def __init__(self) -> None:
        self.msgs_received = 0
        self.msgs_sent = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.dropped = 0
        self.protocol_errors = 0
        self.connects = 0
        self.forwarded = 0  # copies sent to peer workers (one per peer with a match)
        self.denied = 0     # PUBLISHes and wills the ACL refused
        self.refused = 0    # CONNECTs refused: a failing CONNACK, or max_connections (3.1.1: closed)
        # The general path's QoS 1/2 PUBLISHes (bwfast.observe.count_qos); the rest is QoS 0.
        self.received_qos1 = 0
        self.received_qos2 = 0
        self.payload_received_qos1 = 0
        self.payload_received_qos2 = 0
        # QoS 1/2 PUBLISH packets written to clients (Connection.write); the rest is QoS 0.
        self.sent_qos1 = 0
        self.sent_qos2 = 0
        self.packet_bytes_sent_qos1 = 0
        self.packet_bytes_sent_qos2 = 0
        self.started = time.time()

    def count_sent(self, qos: int, size: int) -> None:
        if qos == 1:
            self.sent_qos1 += 1
            self.packet_bytes_sent_qos1 += size
        else:
            self.sent_qos2 += 1
            self.packet_bytes_sent_qos2 += size

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def sys_topics(totals: dict[str, int], connected: int, sessions: int, subscriptions: int,
               retained: int, workers: int, uptime: int) -> dict[str, str]:
    """The `$SYS` topic -> payload map for one publication (Mosquitto-compatible names)."""
    return {
        "$SYS/broker/version": f"bwfast {__version__}",
        "$SYS/broker/compiled": compiled_modules(),
        "$SYS/broker/uptime": f"{uptime} seconds",
        "$SYS/broker/clients/connected": str(connected),
        "$SYS/broker/clients/active": str(connected),
        "$SYS/broker/clients/total": str(sessions),
        "$SYS/broker/clients/disconnected": str(max(0, sessions - connected)),
        "$SYS/broker/clients/refused": str(totals.get("refused", 0)),
        "$SYS/broker/messages/received": str(totals["msgs_received"]),
        "$SYS/broker/messages/sent": str(totals["msgs_sent"]),
        "$SYS/broker/publish/messages/received": str(totals["msgs_received"]),
        "$SYS/broker/publish/messages/sent": str(totals["msgs_sent"]),
        "$SYS/broker/publish/messages/dropped": str(totals["dropped"]),
        "$SYS/broker/publish/messages/forwarded": str(totals.get("forwarded", 0)),
        "$SYS/broker/messages/denied": str(totals.get("denied", 0)),
        "$SYS/broker/bytes/received": str(totals["bytes_received"]),
        "$SYS/broker/bytes/sent": str(totals["bytes_sent"]),
        "$SYS/broker/subscriptions/count": str(subscriptions),
        "$SYS/broker/retained messages/count": str(retained),
        "$SYS/broker/workers": str(workers),
    }
