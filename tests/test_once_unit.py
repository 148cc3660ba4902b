"""bwfast/once.py: request ids claimed as files in data_dir/requests/, exactly one
claim per id across processes (a real Store in tmp, real forked processes)."""
from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

from bwfast import once
from bwfast.store import Store


def test_first_claim_wins_and_the_rest_learn_who(tmp_path: Path) -> None:
    store = Store(str(tmp_path), sync=False)
    rid = once.new_id()
    assert once.claim(store, rid, 2) is None
    assert once.claim(store, rid, 0) == 2
    assert once.claim(store, rid, once.API) == 2
    assert once.claim(store, once.new_id(), once.API) is None
    store.close()


def test_old_claims_are_dropped_and_old_requests_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path), sync=False)
    ms = int((time.time() - once.KEEP - 5) * 1000)
    old = ms.to_bytes(8, "big") + b"\x01" * 8
    assert once.claim(store, old, 1) is None
    assert once.expired(old)
    assert not once.expired(once.new_id())
    assert once.expired(b"short")
    now = int(time.time() * 1000) & ~0xFF  # a low byte of 0: this claim sweeps
    new = now.to_bytes(8, "big") + b"\x01" * 8
    assert once.claim(store, new, 0) is None
    folder = Path(store.path) / once.DIR
    assert sorted(p.name for p in folder.iterdir()) == [new.hex()]
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    store.close()


def _claimer(path: str, owner: int, ids: list[bytes], out: mp.Queue) -> None:
    store = Store(path, sync=False)  # opened after fork, as every process does
    won = [rid for rid in ids if once.claim(store, rid, owner) is None]
    store.close()
    out.put((owner, won))


def test_one_winner_per_id_across_processes(tmp_path: Path) -> None:
    Store(str(tmp_path), sync=False).close()
    ids = [once.new_id() for _ in range(300)]
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path), k, ids, out)) for k in range(4)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
    wins = [rid for won in results.values() for rid in won]
    assert sorted(wins) == sorted(ids)  # every id won once, by exactly one process
    store = Store(str(tmp_path), sync=False)
    for owner, won in results.items():
        for rid in won:
            assert once.claim(store, rid, once.API) == owner
    store.close()
