"""Links from the API process to each worker's control socket.

``data_dir/run/worker-N.ctl`` (bwfast/control.py) takes msgpack frames
``["api", id, command, args]`` and answers ``["reply", id, result]`` on the
same connection. One persistent connection per worker, opened on first use
and again after the worker restarts; a request that gets no answer within
the timeout yields ``None`` (the caller answers with the spec's failure, never
a 5xx).

Each link remembers the requests it has not answered yet. A worker that has
owed an answer for longer than HEDGE is *silent* (stalled, or badly behind):
``send_all`` goes to an answering worker instead, and a request already with
a silent worker is handed to the next one too. That is safe because the
publishing commands carry an id that only one process can claim
(bwfast/once.py): whoever gets to it second does nothing.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import zlib
from typing import Any

import msgpack

from bwfast import once
from bwfast.store import Store

log = logging.getLogger("bwfast.api.workers")

TIMEOUT = 2.0   # seconds a caller waits for the workers at most
HEDGE = 0.25    # seconds of silence after which the next worker is asked as well

Answer = dict[str, Any]
UNREACHABLE: Answer = {"ok": False, "error": "unreachable"}  # the request was not sent


def topic_worker(topic: str, nworkers: int) -> int:
    """The worker that publishes a topic's send_all calls while it answers."""
    return zlib.crc32(topic.encode()) % nworkers


class WorkerLink:
    """One worker's control connection, its pending requests and its liveness."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[Answer]] = {}
        self.owed: dict[int, float] = {}  # request id -> when sent, until the worker answers it
        self.ids = itertools.count(1)
        self.lock = asyncio.Lock()

    def silent_for(self) -> float:
        """Seconds the oldest unanswered request has waited (0: the worker is keeping up).
        It counts requests whose callers stopped waiting too: a worker that
        answers nothing is silent until it answers."""
        return time.monotonic() - min(self.owed.values()) if self.owed else 0.0

    async def _connect(self) -> asyncio.StreamWriter:
        async with self.lock:
            if self.writer is not None and not self.writer.is_closing():
                return self.writer
            reader, writer = await asyncio.open_unix_connection(self.path)
            self.writer = writer
            self.reader_task = asyncio.create_task(self._read(reader, writer))
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            while data := await reader.read(65536):
                unpacker.feed(data)
                for frame in unpacker:
                    self._answer(frame)
        except (OSError, ValueError, msgpack.UnpackException) as e:
            log.warning("control link %s failed: %s", self.path, e)
        finally:
            writer.close()
            if self.writer is writer:
                self.writer = None
            self._fail_pending()

    def _answer(self, frame: Any) -> None:
        if not (isinstance(frame, list) and len(frame) == 3 and frame[0] == "reply"):
            return
        self.owed.pop(frame[1], None)
        fut = self.pending.pop(frame[1], None)
        if fut is not None and not fut.done():
            fut.set_result(frame[2] if isinstance(frame[2], dict) else {"ok": False})

    def _fail_pending(self) -> None:
        pending, self.pending = self.pending, {}
        self.owed.clear()
        for fut in pending.values():
            if not fut.done():
                fut.set_result({"ok": False, "error": "link closed"})

    async def request(self, command: str, args: dict[str, Any],
                      timeout: float = TIMEOUT) -> Answer | None:
        """The worker's answer, or None when it can't be reached in time."""
        answer = await self.ask(command, args, timeout)
        return None if answer is UNREACHABLE else answer

    async def ask(self, command: str, args: dict[str, Any],
                  timeout: float = TIMEOUT) -> Answer | None:
        """Like :meth:`request`, telling apart a request that could not be sent
        (UNREACHABLE: it never runs) from one sent and not answered in time
        (None: it may still run)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                writer = await self._connect()
        except (OSError, TimeoutError) as e:
            log.warning("worker at %s unreachable for %s: %s", self.path, command,
                        type(e).__name__)
            return UNREACHABLE
        req = next(self.ids)
        fut: asyncio.Future[Answer] = loop.create_future()
        self.pending[req] = fut
        self.owed[req] = time.monotonic()
        try:
            writer.write(msgpack.packb(["api", req, command, args], use_bin_type=True))
            async with asyncio.timeout_at(deadline):
                return await fut
        except TimeoutError:
            log.warning("worker at %s did not answer %s in time", self.path, command)
            return None
        finally:
            self.pending.pop(req, None)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.reader_task is not None:
            self.reader_task.cancel()
            await asyncio.gather(self.reader_task, return_exceptions=True)


class Workers:
    """All the workers' links, and the commands the routes need."""

    def __init__(self, data_dir: str, nworkers: int, store: Store | None = None) -> None:
        run_dir = os.path.join(data_dir, "run")
        self.links = [WorkerLink(os.path.join(run_dir, f"worker-{k}.ctl"))
                      for k in range(nworkers)]
        self.store = store  # for the claims of unanswered requests (create_app sets it)

    async def send_client(self, clientid: str, hint: int | None, args: dict[str, Any]) -> bool:
        """Deliver to ``clientid`` once: ask the worker that holds it (``hint``:
        the `clients` record, else the device row), then, as it may have moved
        or the record may lag, every other worker at once."""
        n = len(self.links)
        if hint is None or not 0 <= hint < n:
            waves = [list(range(n))]
        else:
            waves = [[hint], [k for k in range(n) if k != hint]]
        answer = await self._once("send_client", {"clientid": clientid, **args}, waves)
        if answer is not None:
            return True
        # [cluster]: connected to another node? (bwfast/nodeapi.py)
        other = await self.links[0].request("nodes_send_client", {"clientid": clientid, **args})
        return other is not None and bool(other.get("ok"))

    async def send_all(self, args: dict[str, Any]) -> Answer | None:
        """An ordinary publish, once, on one worker; it forwards to the others and
        stores a retained message like any publish.

        The topic's own worker (``topic_worker``) publishes while it answers, so
        that one caller's messages on a topic leave through one worker's links
        and arrive in the order they were sent [MQTT-4.6.0-6]; when it is silent,
        the next answering one (the silent ones are tried last)."""
        n = len(self.links)
        start = topic_worker(args["topic"], n)
        order = [(start + i) % n for i in range(n)]
        order.sort(key=lambda k: self.links[k].silent_for() >= HEDGE)  # stable: the rest kept
        return await self._once("send_all", args, [[k] for k in order])

    async def _once(self, command: str, args: dict[str, Any], waves: list[list[int]]
                    ) -> Answer | None:
        """Run ``command`` exactly once on the first worker that takes it.

        The waves of workers are asked in turn, the next one as soon as the ones
        asked so far have all said no, or HEDGE has passed without a yes. Every
        request carries the same id, so at most one worker runs it (bwfast/once.py).
        Returns the answer of the worker that ran it, None when none did or will.
        """
        rid = once.new_id()
        args = {**args, "once": rid}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        asked: dict[asyncio.Task[Answer | None], int] = {}
        lost: set[int] = set()      # links that closed before answering: those workers died
        unanswered = False          # a request timed out, or another worker claimed it
        try:
            for i, wave in enumerate(waves):
                for k in wave:
                    task = asyncio.create_task(
                        self.links[k].ask(command, args, deadline - loop.time()))
                    asked[task] = k
                until = deadline if i == len(waves) - 1 else min(deadline, loop.time() + HEDGE)
                while asked and loop.time() < until:
                    done, _ = await asyncio.wait(asked, timeout=until - loop.time(),
                                                 return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        k = asked.pop(task)
                        answer = task.result()
                        if answer is None or answer.get("claimed"):
                            unanswered = True
                        elif answer.get("ok"):
                            return answer
                        elif answer.get("error") == "link closed":
                            lost.add(k)
                if loop.time() >= deadline:
                    break
        finally:
            for task in asked:
                task.cancel()
        if not asked and not unanswered and not lost:
            return None  # every worker asked said no: nothing runs later
        # Some worker may hold the request still. Claim it: if the claim is ours,
        # no worker ever runs it; if a worker claimed it, that one ran it (or runs
        # it as soon as it resumes), unless it died meanwhile.
        if self.store is None:
            return None  # nothing to claim with: unknown, so not reported as sent
        owner = once.claim(self.store, rid, once.API)
        if owner is None or owner in lost:
            return None
        return {"ok": True, "late": True}

    async def counts(self) -> list[int | None]:
        """Connected clients per worker (None where a worker did not answer)."""
        answers = await asyncio.gather(*(link.request("count", {}) for link in self.links))
        return [a["count"] if a is not None and a.get("ok") and isinstance(a.get("count"), int)
                else None for a in answers]

    async def broadcast(self, command: str, args: dict[str, Any]) -> list[dict[str, Any] | None]:
        """Every worker's answer to one command (None where one did not answer)."""
        return list(await asyncio.gather(*(link.request(command, args) for link in self.links)))

    async def kick(self, clientid: str) -> bool:
        """Disconnect ``clientid`` wherever it is connected; False if nowhere."""
        answers = await self.broadcast("kick", {"clientid": clientid})
        return any(a is not None and a.get("ok") for a in answers)

    async def nodes_rows(self, db: str) -> list[Any]:
        """[cluster]: the other nodes' rows of ``db`` (devices, subs, wills); [] without."""
        answer = await self.links[0].request("nodes_rows", {"db": db})
        if answer is not None and answer.get("ok") and isinstance(answer.get("rows"), list):
            return list(answer["rows"])
        return []

    async def nodes_count(self) -> int:
        """[cluster]: clients connected to the other nodes (0 without a cluster)."""
        answer = await self.links[0].request("nodes_count", {})
        if answer is not None and answer.get("ok") and isinstance(answer.get("count"), int):
            return int(answer["count"])
        return 0

    async def kick_user(self, username: str) -> int:
        """Disconnect every live connection of ``username``; how many there were.
        A worker that does not answer in time keeps its connections of that
        user (they are refused at their next CONNECT); the call still succeeds."""
        answers = await self.broadcast("kick_user", {"username": username})
        return sum(a["count"] for a in answers
                   if a is not None and a.get("ok") and isinstance(a.get("count"), int))

    async def acl_reload(self) -> tuple[int, str]:
        """Tell every worker to re-read the ACL: (how many did not answer, the
        first acl_file error one reported). A worker that is down reads the
        rules when it starts again; with a bad acl_file a worker keeps that
        file's previous rules and applies the LMDB rules all the same."""
        answers = await self.broadcast("acl_reload", {})
        silent = sum(1 for a in answers if a is None)
        errors = [str(a["error"]) for a in answers if a is not None and a.get("error")]
        return silent, errors[0] if errors else ""

    async def client(self, clientid: str) -> dict[str, Any] | None:
        """The session of ``clientid`` as the worker holding it describes it:
        the connected one first (a moment after a takeover two may answer)."""
        answers = [a for a in await self.broadcast("client", {"clientid": clientid})
                   if a is not None and a.get("ok")]
        answers.sort(key=lambda a: not a.get("connected"))
        return answers[0] if answers else None

    async def clear_queue(self, clientid: str) -> int | None:
        """Messages dropped from ``clientid``'s offline queue; None if no worker has it."""
        answers = [a for a in await self.broadcast("clear_queue", {"clientid": clientid})
                   if a is not None and a.get("ok")]
        return sum(int(a.get("cleared") or 0) for a in answers) if answers else None

    async def stats(self) -> list[dict[str, Any] | None]:
        """Every worker's figures (bwfast.observe.stats); None where one did not answer."""
        answers = await self.broadcast("stats", {})
        return [a if a is not None and a.get("ok") else None for a in answers]

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links))
