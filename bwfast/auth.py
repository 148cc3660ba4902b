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


def verify_password(record: dict[str, Any] | None, password: str | bytes | None) -> bool:
    if record is None or password is None or record.get("alg") != "scrypt":
        return False
    if isinstance(password, str):
        password = password.encode()
    digest = hashlib.scrypt(password, salt=record["salt"], n=record["n"], r=record["r"],
                            p=record["p"], dklen=len(record["hash"]))
    return hmac.compare_digest(digest, record["hash"])
