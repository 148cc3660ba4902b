"""Device credentials: salted scrypt hashes in LMDB (`auth`), never the password."""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

# scrypt cost: ~20 ms per check on this class of machine; CONNECT storms with
# authentication on pay it once per connect, so keep n modest.
N, R, P, DKLEN = 1 << 14, 8, 1, 32


def hash_password(password: str | bytes) -> dict[str, Any]:
    if isinstance(password, str):
        password = password.encode()
    salt = os.urandom(16)
    digest = hashlib.scrypt(password, salt=salt, n=N, r=R, p=P, dklen=DKLEN)
    return {"alg": "scrypt", "n": N, "r": R, "p": P, "salt": salt, "hash": digest}


class VerifiedCache:
    """Recently verified credentials, so a reconnect storm costs one scrypt per
    device, not one per CONNECT. Keyed by username; holds a fast digest of the
    password with the record's salt (never the password) and the stored hash it
    was checked against, so an edit_auth/remove_auth takes effect at once."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self.entries: dict[str, tuple[bytes, bytes]] = {}

    def lookup(self, username: str, record: dict[str, Any] | None, password: bytes) -> bool | None:
        """True/False when the answer is known without scrypt, None when it must run."""
        if record is None or record.get("alg") != "scrypt":
            self.entries.pop(username, None)
            return False
        hit = self.entries.get(username)
        if hit is None or hit[1] != record["hash"]:
            return None
        return hmac.compare_digest(hit[0], hashlib.sha256(record["salt"] + password).digest())

    def remember(self, username: str, record: dict[str, Any], password: bytes) -> None:
        if len(self.entries) >= self.maxsize:
            self.entries.clear()
        self.entries[username] = (hashlib.sha256(record["salt"] + password).digest(),
                                  record["hash"])



def verify_password(record: dict[str, Any] | None, password: str | bytes | None) -> bool:
    if record is None or password is None or record.get("alg") != "scrypt":
        return False
    if isinstance(password, str):
        password = password.encode()
    digest = hashlib.scrypt(password, salt=record["salt"], n=record["n"], r=record["r"],
                            p=record["p"], dklen=len(record["hash"]))
    return hmac.compare_digest(digest, record["hash"])
