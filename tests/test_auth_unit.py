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
    assert cache.lookup("dev", rec, b"one") is None     # unknown: scrypt must run
    assert verify_password(rec, b"one")
    cache.remember("dev", rec, b"one")
    assert cache.lookup("dev", rec, b"one") is True     # from the cache, no scrypt
    assert cache.lookup("dev", rec, b"two") is False    # a wrong password is still wrong
    changed = hash_password("two")                      # edit_auth: a new salt and hash
    assert cache.lookup("dev", changed, b"one") is None  # the old answer no longer counts
    assert not verify_password(changed, b"one")
    assert cache.lookup("dev", None, b"two") is False   # remove_auth
