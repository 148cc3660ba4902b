"""Exceptions shared by the compiled codec and the pure-Python broker.

Errors carry their MQTT v5 reason code; only the dispatcher turns them into
CONNACK / SUBACK / DISCONNECT codes (STYLE habit 6).
"""
from __future__ import annotations


class MQTTError(Exception):
    """A protocol violation. ``reason_code`` is the v5 reason code to report.

    ``packets`` holds the packets the decoder completed, in the same feed, before
    it met the malformed one, so the caller can still act on them.
    """

    def __init__(self, reason_code: int, message: str = "") -> None:
        super().__init__(message or hex(reason_code))
        self.reason_code = reason_code
        self.message = message
        self.packets: list = []


class ConfigError(Exception):
    """A bad broker.conf or flag: one line naming the key and the problem."""
