"""Credential records and the verified-credentials cache (bwfast/auth.py)."""
from __future__ import annotations

import hashlib

import pytest

from bwfast.auth import (
    ITERATIONS,
    MAX_ITERATIONS,
    FormatError,
    VerifiedCache,
    cheap,
    check,
    from_mosquitto,
    hash_password,
    to_mosquitto,
    verify_password,
)


def test_record_never_holds_the_password() -> None:
    rec = hash_password("s3cret")
    assert b"s3cret" not in b"".join(v for v in rec.values() if isinstance(v, bytes))
    assert verify_password(rec, "s3cret") and not verify_password(rec, "other")


def test_cache_answers_like_the_hash_and_follows_password_changes() -> None:
    cache = VerifiedCache()
    rec = hash_password("one")
    assert cache.lookup("dev", rec, b"one") is None     # unknown: the hash must run
    assert verify_password(rec, b"one")
    cache.remember("dev", rec, b"one")
    assert cache.lookup("dev", rec, b"one") is True     # from the cache, no hash
    assert cache.lookup("dev", rec, b"two") is False    # a wrong password is still wrong
    changed = hash_password("two")                      # edit_auth: a new salt and hash
    assert cache.lookup("dev", changed, b"one") is None  # the old answer no longer counts
    assert not verify_password(changed, b"one")
    assert cache.lookup("dev", None, b"two") is False   # remove_auth


# Mosquitto 2.0 `mosquitto_passwd -b` output for "s3cret" ($7$: PBKDF2-SHA512, 101
# iterations) and Mosquitto 1.x `-H sha512` for "b0b" ($6$: SHA512(password + salt)).
MOSQ_7 = ("$7$101$jrHjkINDa/6Dvujl$bJYH/Leta2zFZrhD9mPi7v7KdeIv1u3TaNBYCwrO52Liduoe8t5zlSM28H"
          "i+XSdVFDd3qI3P81Lb2tenWiOHjw==")
MOSQ_6 = ("$6$W4TtH+yQNNEOxKUs$VQ1lvpxLkKq5TFo79VmvWDrJYLJyDyxQ4HY+4B8ealm+nYCmMBkpYbxWRb9qQwYrX"
          "z3Eph2NmVze8Y7zL8QAmQ==")


def test_new_records_are_pbkdf2_sha512_in_mosquittos_format() -> None:
    rec = hash_password("pw", iterations=7)
    assert (rec["alg"], rec["iterations"], len(rec["salt"]), len(rec["hash"])) == (
        "pbkdf2-sha512", 7, 12, 64)
    assert rec["hash"] == hashlib.pbkdf2_hmac("sha512", b"pw", rec["salt"], 7)
    assert hash_password("pw")["iterations"] == ITERATIONS
    text = to_mosquitto(rec)
    assert text is not None and text.startswith("$7$7$")
    assert from_mosquitto(text) == rec
    for bad in (0, MAX_ITERATIONS + 1):
        with pytest.raises(ValueError):
            hash_password("pw", iterations=bad)


@pytest.mark.parametrize(("text", "alg", "password"), [(MOSQ_7, "pbkdf2-sha512", "s3cret"),
                                                       (MOSQ_6, "sha512", "b0b")])
def test_mosquitto_hashes_verify(text: str, alg: str, password: str) -> None:
    rec = from_mosquitto(text)
    assert rec["alg"] == alg and to_mosquitto(rec) == text
    assert verify_password(rec, password) and verify_password(rec, password.encode())
    assert not verify_password(rec, password + "x") and not verify_password(rec, "")
    assert cheap(rec)


def test_scrypt_records_of_earlier_versions_still_verify() -> None:
    salt = b"\x01" * 16
    rec = {"alg": "scrypt", "n": 16, "r": 1, "p": 1, "salt": salt,
           "hash": hashlib.scrypt(b"old", salt=salt, n=16, r=1, p=1, dklen=32)}
    assert verify_password(rec, "old") and not verify_password(rec, "new")
    assert not cheap(rec) and to_mosquitto(rec) is None
    cache = VerifiedCache()
    assert cache.lookup("dev", rec, b"old") is None
    cache.remember("dev", rec, b"old")
    assert cache.lookup("dev", rec, b"old") is True


def test_costly_pbkdf2_is_not_checked_on_the_loop() -> None:
    assert cheap(hash_password("pw", iterations=ITERATIONS))
    assert not cheap(hash_password("pw", iterations=10 * ITERATIONS))


@pytest.mark.parametrize("text", [
    "", "plain", "$5$abc$def", "$7$$AAAA$" + "A" * 88, "$7$0$AAAA$" + "A" * 88,
    "$7$101$AAAA$short", "$7$101$!!!!$" + "A" * 88, "$6$AAAA", "$6$$" + "A" * 88,
    f"$7${MAX_ITERATIONS + 1}$AAAA$" + "A" * 88])
def test_bad_mosquitto_hashes_are_refused(text: str) -> None:
    with pytest.raises(FormatError):
        from_mosquitto(text)


def test_unknown_or_damaged_records_never_verify() -> None:
    assert not verify_password({"alg": "md5", "salt": b"", "hash": b""}, "x")
    rec = hash_password("pw")
    assert not verify_password(rec | {"iterations": 0}, "pw")
    assert VerifiedCache().lookup("dev", {"alg": "md5"}, b"x") is False


def test_check_upgrades_older_formats_only_when_the_password_is_right() -> None:
    new = hash_password("pw")
    assert check(new, b"pw") == (True, None)
    assert check(new, b"no") == (False, None)
    assert check(None, b"pw") == (False, None)
    for old, password in ((from_mosquitto(MOSQ_6), b"b0b"), (_scrypt(b"pw"), b"pw")):
        assert check(old, password + b"x") == (False, None)
        ok, newer = check(old, password)
        assert ok and newer is not None and newer["alg"] == "pbkdf2-sha512"
        assert verify_password(newer, password) and not verify_password(newer, b"x")
    marked = _scrypt(b"pw") | {"console": True}  # the API's own user keeps its mark
    ok, newer = check(marked, b"pw")
    assert ok and newer is not None and newer["console"] is True
    assert set(newer) == {"alg", "iterations", "salt", "hash", "console"}


def _scrypt(password: bytes) -> dict:
    salt = b"\x02" * 16
    return {"alg": "scrypt", "n": 16, "r": 1, "p": 1, "salt": salt,
            "hash": hashlib.scrypt(password, salt=salt, n=16, r=1, p=1, dklen=32)}
