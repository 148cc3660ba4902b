"""Errors as classes carrying their HTTP status and the spec's JSON body.

Handlers raise these; one error handler (:func:`api.app.create_app`) turns
them, and anything else, into a JSON response. CONTRACT.md fixes the codes:
400 missing or bad parameter, 401 no or bad token, 404 unknown client or
user, 409 username exists, 413 body too large, 429 too many failed logins.
"""
from __future__ import annotations

from typing import Any

from sanic.exceptions import SanicException

STATUS = "bwapi-status"
REASON = "bwapi-status-reason"


def fail_body(reason: str) -> dict[str, Any]:
    return {STATUS: "fail", REASON: reason}


class APIError(SanicException):
    """A failure the client caused; ``body`` is exactly what it gets back."""

    status_code = 400
    quiet = True

    def __init__(self, body: dict[str, Any], status: int | None = None) -> None:
        super().__init__(str(body.get(REASON, "")), status_code=status or self.status_code)
        self.body = body


class BadParameter(APIError):
    """400 ``Invalid parameter:<name>``: the field is there but of the wrong type
    or out of range (CONTRACT.md); ``detail`` says what a good value is."""

    status_code = 400
    prefix = "Invalid parameter"

    def __init__(self, name: str, detail: str | None = None) -> None:
        body = fail_body(f"{self.prefix}:{name}")
        if detail:
            body["detail"] = detail
        super().__init__(body)


class MissingParameter(BadParameter):
    """400 ``Missing parameter:<name>`` (spec): the field is absent or empty;
    ``detail`` says why when the body itself was unreadable."""

    prefix = "Missing parameter"


class NoCredentials(APIError):
    """401 without an Authorization header (spec, "Authorization Header")."""

    status_code = 401

    def __init__(self) -> None:
        body = fail_body("Authorization Credentials not provided")
        body["detail"] = "Authentication credentials were not provided."
        super().__init__(body)


class InvalidToken(APIError):
    """401 for a token that is malformed, forged, expired or revoked."""

    status_code = 401

    def __init__(self) -> None:
        body = fail_body("Invalid Access Token")
        body["detail"] = "Invalid token."
        super().__init__(body)


class InvalidLogin(APIError):
    status_code = 401

    def __init__(self) -> None:
        super().__init__(fail_body("Invalid Login"))


class TooManyLogins(APIError):
    status_code = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(fail_body("Too many failed logins"))
        self.headers = {"Retry-After": str(max(1, retry_after))}


class NotFound(APIError):
    """404: an unknown client (not delivered) or user; ``body`` as the spec shows it."""

    status_code = 404


class Conflict(APIError):
    status_code = 409
