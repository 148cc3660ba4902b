"""Credential records and the verified-credentials cache (bwfast/auth.py)."""
from __future__ import annotations

from bwfast.auth import VerifiedCache, hash_password, verify_password


def test_record_never_holds_the_password() -> None:
    rec = hash_password("s3cret")
    assert b"s3cret" not in b"".join(v for v in rec.values() if isinstance(v, bytes))
    assert verify_password(rec, "s3cret") and not verify_password(rec, "other")


def test_cache_answers_like_scrypt_and_follows_password_changes() -> None:
    cache = VerifiedCache()
    rec = hash_password("one")
    assert cache.check("dev", rec, b"one")
    assert cache.check("dev", rec, b"one")          # from the cache
    assert not cache.check("dev", rec, b"two")      # a wrong password is still wrong
    changed = hash_password("two")                  # edit_auth: a new salt and hash
    assert not cache.check("dev", changed, b"one")  # the old password stops at once
    assert cache.check("dev", changed, b"two")
    assert not cache.check("dev", None, b"two")     # remove_auth
