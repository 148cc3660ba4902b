"""Request fields: a JSON object body, form fields or query parameters.

The spec sends POST parameters as "raw data in body" (a JSON object), but
CONTRACT.md accepts form fields and query parameters too, for GET as well
(the spec's own GET examples send a body; those routes are declared with
``ignore_body=False`` so Sanic reads it). Precedence, lowest first: query,
form, JSON. A body that is neither a form nor a JSON object is ignored (its
fields are then "missing"), and the 400 says so in ``detail``.

Every value is checked here, so a handler only ever sees well-typed values
and bad input can't reach a code path that would answer 5xx. An absent or
empty field is ``Missing parameter:<name>``; one of the wrong type or out of
range is ``Invalid parameter:<name>`` (CONTRACT.md).
"""
from __future__ import annotations

import json
import re
from typing import Any

from sanic.request import Request

from api.errors import BadParameter, MissingParameter

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_TEXT = 65535  # MQTT UTF-8 strings carry a 2-byte length [MQTT-1.5.4]
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DIGITS = re.compile(r"[0-9]{1,12}")


def _utf8(value: str) -> bool:
    """False for strings Python holds but UTF-8 can't carry (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Params:
    """The fields of one request, with typed accessors that raise :class:`BadParameter`."""

    def __init__(self, request: Request) -> None:
        self.values: dict[str, Any] = {}
        self.body_note: str | None = None
        for key in request.args:
            self.values[key] = request.args.get(key)
        self._read_body(request)

    def _read_body(self, request: Request) -> None:
        """A JSON object whatever the Content-Type says (``curl -d '{...}'``
        labels JSON as a form), else form fields, else nothing."""
        body = request.body or b""
        ctype = (request.content_type or "").lower()
        if not body.strip():
            return
        if not ctype.startswith("multipart/"):
            try:
                data = json.loads(body)
            except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
                data = None
                self.body_note = "the body is not valid JSON"
            else:
                if isinstance(data, dict):
                    self.values.update(data)
                    return
                self.body_note = "the body is not a JSON object"
        if ctype.startswith(FORM_TYPES):
            self.body_note = None
            form: Any = request.form or {}
            for key in form:
                self.values[key] = form.get(key)

    def _missing(self, name: str) -> MissingParameter:
        return MissingParameter(name, self.body_note)

    def raw(self, *names: str) -> tuple[str, Any] | None:
        """The first of ``names`` present, with its value."""
        for name in names:
            if name in self.values and self.values[name] is not None:
                return name, self.values[name]
        return None

    def text(self, name: str, *, required: bool = True, allow_empty: bool = False,
             no_nul: bool = False, max_bytes: int = MAX_TEXT) -> str | None:
        """A string field; absent (or empty, unless allowed) counts as missing."""
        found = self.raw(name)
        if found is None:
            if required:
                raise self._missing(name)
            return None
        value = found[1]
        if not isinstance(value, str):
            raise BadParameter(name, f"{name} must be a string")
        if not value and not allow_empty:
            if required:
                raise MissingParameter(name, f"{name} must not be empty")
            return None
        if not _utf8(value) or len(value.encode("utf-8")) > max_bytes:
            raise BadParameter(name, f"{name} must be valid UTF-8 of at most {max_bytes} bytes")
        if no_nul and "\x00" in value:
            raise BadParameter(name, f"{name} must not contain U+0000")  # [MQTT-1.5.4-2]
        return value

    def payload(self, name: str = "message") -> bytes:
        """The message to publish: a string (sent as UTF-8), or a JSON object
        or array (sent as compact JSON, what a device would expect)."""
        found = self.raw(name)
        if found is None:
            raise self._missing(name)
        value = found[1]
        if isinstance(value, (dict, list)):
            try:
                return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
            except (ValueError, RecursionError):  # a lone surrogate somewhere inside
                raise BadParameter(name, f"{name} must be valid UTF-8") from None
        if not isinstance(value, str) or not _utf8(value):
            raise BadParameter(name, f"{name} must be a string, a JSON object or an array")
        return value.encode("utf-8")

    def qos(self) -> int:
        """``QoS`` (the spec's spelling) or ``qos``: 0, 1 or 2; absent means 0."""
        found = self.raw("QoS", "qos")
        if found is None:
            return 0
        name, value = found
        if isinstance(value, str) and value.strip() in ("0", "1", "2"):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
            return value
        raise BadParameter(name, f"{name} must be 0, 1 or 2")

    def flag(self, name: str) -> bool:
        """A 0/1/true/false field; absent means false."""
        found = self.raw(name)
        if found is None:
            return False
        value = found[1]
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise BadParameter(name, f"{name} must be 0, 1, true or false")

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        """A whole number of at least ``lo``; more than ``hi`` is cut to ``hi``."""
        found = self.raw(name)
        if found is None or found[1] == "":
            return default
        value = found[1]
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
            number = int(value.strip())
        if number is None or number < lo:
            raise BadParameter(name, f"{name} must be a whole number of at least {lo}")
        return min(number, hi)
