"""Device credentials in LMDB (`auth`): salted, iterated hashes, never the password.

New records are PBKDF2-HMAC-SHA512, the hash of Mosquitto's password file
(`$7$iterations$salt$hash`), so a record and a Mosquitto line convert both ways
and `bwfast passwd import` takes a password_file as it is. Why not scrypt (the
first format, still verified): a reconnect storm after a restart pays one check
per device, and scrypt at n=2^14 costs ~40-100 ms of CPU each, minutes for
10,000 devices; PBKDF2-SHA512 at ITERATIONS costs ~64 us. The iteration
count lives in each record, so it can be raised per user (`bwfast passwd
--iterations`) without breaking the others. `$6$` records (Mosquitto 1.x:
one salted SHA512, not iterated) are verified so an old password file can be
imported, and the import warns that they are weak. Records of the other
formats (scrypt, `$6$`) are rewritten as PBKDF2-SHA512 on the device's next
successful CONNECT (`check`, `Store.replace_if`): the broker only ever has the
password then, and without it existing devices would pay scrypt after every
restart for good. (For scrypt that trades its memory-hardness for the same
cost as every new record: the policy is one cost for all.)
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

# PBKDF2 iterations of a new record: Mosquitto 2.0's default (PW_DEFAULT_ITERATIONS),
# so a storm of first CONNECTs costs about what Mosquitto pays per CONNECT.
ITERATIONS = 101
MAX_ITERATIONS = 10_000_000  # refuse records that would stall a worker's thread for minutes
SALT_LEN = 12                # Mosquitto's SALT_LEN
PBKDF2, SHA512, SCRYPT = "pbkdf2-sha512", "sha512", "scrypt"
ALGORITHMS = (PBKDF2, SHA512, SCRYPT)
HASH_FIELDS = frozenset({"alg", "iterations", "n", "r", "p", "salt", "hash"})


def _bytes(password: str | bytes) -> bytes:
    return password.encode() if isinstance(password, str) else password


def hash_password(password: str | bytes, iterations: int = ITERATIONS) -> dict[str, Any]:
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1 .. {MAX_ITERATIONS}")
    salt = os.urandom(SALT_LEN)
    digest = hashlib.pbkdf2_hmac("sha512", _bytes(password), salt, iterations)
    return {"alg": PBKDF2, "iterations": iterations, "salt": salt, "hash": digest}


def check(record: dict[str, Any] | None, password: bytes) -> tuple[bool, dict[str, Any] | None]:
    """verify_password, and when it passes on a record of another format than new
    ones (scrypt, `$6$`), the PBKDF2-SHA512 record to store instead."""
    ok = verify_password(record, password)
    if ok and record is not None and record.get("alg") != PBKDF2:
        # marks beside the hash (the console's own user: "console") stay
        marks = {k: v for k, v in record.items() if k not in HASH_FIELDS}
        return True, marks | hash_password(password)
    return ok, None


def cheap(record: dict[str, Any]) -> bool:
    """True when checking this record costs well under a millisecond, so doing it
    on the event loop is cheaper than the hop to a thread and back."""
    alg = record.get("alg")
    return alg == SHA512 or (alg == PBKDF2 and record.get("iterations", 0) <= 2 * ITERATIONS)


def verify_password(record: dict[str, Any] | None, password: str | bytes | None) -> bool:
    if record is None or password is None or record.get("alg") not in ALGORITHMS:
        return False
    pw = _bytes(password)
    alg, salt, want = record["alg"], record["salt"], record["hash"]
    if alg == PBKDF2:
        if not 1 <= record["iterations"] <= MAX_ITERATIONS:
            return False
        digest = hashlib.pbkdf2_hmac("sha512", pw, salt, record["iterations"], len(want))
    elif alg == SHA512:
        digest = hashlib.sha512(pw + salt).digest()  # Mosquitto's $6$: password, then salt
    else:
        digest = hashlib.scrypt(pw, salt=salt, n=record["n"], r=record["r"], p=record["p"],
                                dklen=len(want))
    return hmac.compare_digest(digest, want)


class FormatError(ValueError):
    """A password-file hash this broker cannot read."""


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError("bad base64") from e


def from_mosquitto(text: str) -> dict[str, Any]:
    """`$7$iterations$salt$hash` (PBKDF2-SHA512) or `$6$salt$hash` (SHA512) → record."""
    parts = text.strip().split("$")
    record: dict[str, Any]
    if len(parts) == 5 and parts[:2] == ["", "7"]:
        if not parts[2].isdigit() or not 1 <= int(parts[2]) <= MAX_ITERATIONS:
            raise FormatError(f"bad iteration count {parts[2]!r}")
        record = {"alg": PBKDF2, "iterations": int(parts[2]), "salt": _b64(parts[3]),
                  "hash": _b64(parts[4])}
    elif len(parts) == 4 and parts[:2] == ["", "6"]:
        record = {"alg": SHA512, "salt": _b64(parts[2]), "hash": _b64(parts[3])}
    else:
        raise FormatError("not a Mosquitto $6$ or $7$ hash")
    if not record["salt"] or len(record["hash"]) != 64:
        raise FormatError("bad salt or hash length")
    return record


def to_mosquitto(record: dict[str, Any]) -> str | None:
    """The password_file form of a record, or None (scrypt has none)."""
    salt = base64.b64encode(record["salt"]).decode()
    digest = base64.b64encode(record["hash"]).decode()
    if record.get("alg") == PBKDF2:
        return f"$7${record['iterations']}${salt}${digest}"
    if record.get("alg") == SHA512:
        return f"$6${salt}${digest}"
    return None


class VerifiedCache:
    """Recently verified credentials, so reconnects cost one full check per device
    per process lifetime, not one per CONNECT. Keyed by username; holds a fast
    digest of the password with the record's salt (never the password; memory
    only, never stored) and the stored hash it was checked against, so an
    edit_auth/remove_auth takes effect at once."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self.maxsize = maxsize
        self.entries: dict[str, tuple[bytes, bytes]] = {}

    def lookup(self, username: str, record: dict[str, Any] | None, password: bytes) -> bool | None:
        """True/False when the answer is known without the full hash, None when it must run."""
        if record is None or record.get("alg") not in ALGORITHMS:
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
