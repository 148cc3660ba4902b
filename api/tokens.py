"""Access tokens: PyJWT, HS256, signed with a secret kept in LMDB.

The secret is made at the first start (``meta`` / ``jwt_secret``), so tokens
survive an API restart. Each token carries ``sub`` (the [api] username),
``iat``, ``exp`` (now + ``token_ttl``) and a random ``jti``; logout writes the
jti to ``revoked`` until the token would have expired anyway, and every call
checks it there, so a revocation applies at once (even across a restart).
"""
from __future__ import annotations

import os
import secrets
import time
from typing import Any

import jwt

from api.errors import InvalidToken, NoCredentials
from bwfast.store import Store

ALGORITHM = "HS256"
SECRET_KEY = b"jwt_secret"
SECRET_BYTES = 64


def load_secret(store: Store) -> bytes:
    """The signing key, created (and committed) on first use."""
    secret = store.get("meta", SECRET_KEY)
    if isinstance(secret, bytes) and len(secret) >= 32:
        return secret
    secret = os.urandom(SECRET_BYTES)
    store.put("meta", SECRET_KEY, secret)
    store.commit()
    return secret


def bearer(header: str | None) -> str:
    """The token of an Authorization header: ``Bearer <t>`` or a bare ``<t>``."""
    if header is None or not header.strip():
        raise NoCredentials()
    parts = header.split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    if len(parts) == 1 and parts[0].lower() != "bearer":
        return parts[0]
    if len(parts) == 1:
        raise NoCredentials()  # "Bearer" and nothing after it
    raise InvalidToken()


class Tokens:
    """Issues, checks and revokes tokens for one API process."""

    def __init__(self, store: Store, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self.secret = load_secret(store)

    def issue(self, username: str) -> str:
        now = int(time.time())
        claims = {"sub": username, "iat": now, "exp": now + self.ttl,
                  "jti": secrets.token_urlsafe(16)}
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM)

    def check(self, token: str) -> dict[str, Any]:
        """The token's claims; InvalidToken when it is not one we issued and still live.

        ``algorithms=[HS256]`` refuses ``alg: none`` and every other algorithm;
        ``require`` refuses tokens without the claims we always set.
        """
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM],
                options={"require": ["exp", "jti", "sub"]},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            raise InvalidToken() from e
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or self.revoked(jti):
            raise InvalidToken()
        return claims

    def revoked(self, jti: str) -> bool:
        return self.store.get("revoked", jti.encode()) is not None

    def revoke(self, claims: dict[str, Any]) -> None:
        self.store.put("revoked", str(claims["jti"]).encode(), int(claims["exp"]))
        self.store.commit()

    def prune(self) -> int:
        """Forget revocations of tokens that have expired anyway."""
        now = time.time()
        n = 0
        for key, exp in self.store.items("revoked"):
            if not isinstance(exp, (int, float)) or exp < now:
                self.store.delete("revoked", key)
                n += 1
        if n:
            self.store.commit()
        return n
