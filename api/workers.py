"""Links from the API process to each worker's control socket.

``data_dir/run/worker-N.ctl`` (bwfast/control.py) takes msgpack frames
``["api", id, command, args]`` and answers ``["reply", id, result]`` on the
same connection. One persistent connection per worker, opened on first use
and again after the worker restarts; a request that gets no answer within
the timeout yields ``None`` (the caller answers with the spec's failure, never
a 5xx).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

import msgpack

log = logging.getLogger("bwfast.api.workers")

TIMEOUT = 2.0


class WorkerLink:
    """One worker's control connection and its pending requests."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.lock = asyncio.Lock()

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
        fut = self.pending.pop(frame[1], None)
        if fut is not None and not fut.done():
            fut.set_result(frame[2] if isinstance(frame[2], dict) else {"ok": False})

    def _fail_pending(self) -> None:
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_result({"ok": False, "error": "link closed"})

    async def request(self, command: str, args: dict[str, Any],
                      timeout: float = TIMEOUT) -> dict[str, Any] | None:
        """The worker's answer, or None when it can't be reached in time."""
        try:
            async with asyncio.timeout(timeout):
                writer = await self._connect()
                req = next(self.ids)
                fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                self.pending[req] = fut
                try:
                    writer.write(msgpack.packb(["api", req, command, args], use_bin_type=True))
                    return await fut
                finally:
                    self.pending.pop(req, None)
        except (OSError, TimeoutError) as e:
            log.warning("worker at %s did not answer %s: %s", self.path, command,
                        type(e).__name__)
            return None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.reader_task is not None:
            self.reader_task.cancel()
            await asyncio.gather(self.reader_task, return_exceptions=True)


class Workers:
    """All the workers' links, and the commands the routes need."""

    def __init__(self, data_dir: str, nworkers: int) -> None:
        run_dir = os.path.join(data_dir, "run")
        self.links = [WorkerLink(os.path.join(run_dir, f"worker-{k}.ctl"))
                      for k in range(nworkers)]
        self._next = itertools.count()

    async def send_client(self, clientid: str, hint: int | None, args: dict[str, Any]) -> bool:
        """Deliver to ``clientid``: ask the worker the registry names first,
        then (it may have moved, or the record may lag) every other worker."""
        args = {"clientid": clientid, **args}
        others = list(range(len(self.links)))
        if hint is not None and 0 <= hint < len(self.links):
            answer = await self.links[hint].request("send_client", args)
            if answer is not None and answer.get("ok"):
                return True
            others.remove(hint)
        answers = await asyncio.gather(*(self.links[k].request("send_client", args)
                                         for k in others))
        if any(a is not None and a.get("ok") for a in answers):
            return True
        # [cluster]: connected to another node? (bwfast/nodeapi.py)
        answer = await self.links[0].request("nodes_send_client", args)
        return answer is not None and bool(answer.get("ok"))

    async def send_all(self, args: dict[str, Any]) -> dict[str, Any] | None:
        """An ordinary publish on one worker (round robin; the next if one is down):
        it forwards to the others and stores a retained message like any publish."""
        n = len(self.links)
        start = next(self._next)
        for i in range(n):
            answer = await self.links[(start + i) % n].request("send_all", args)
            if answer is not None and answer.get("ok"):
                return answer
        return None

    async def counts(self) -> list[int | None]:
        """Connected clients per worker (None where a worker did not answer)."""
        answers = await asyncio.gather(*(link.request("count", {}) for link in self.links))
        return [a["count"] if a is not None and a.get("ok") and isinstance(a.get("count"), int)
                else None for a in answers]

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

    async def broadcast(self, command: str, args: dict[str, Any]) -> list[dict[str, Any] | None]:
        """Every worker's answer to one command (None where one did not answer)."""
        return list(await asyncio.gather(*(link.request(command, args) for link in self.links)))

    async def kick(self, clientid: str) -> bool:
        """Disconnect ``clientid`` wherever it is connected; False if nowhere."""
        answers = await self.broadcast("kick", {"clientid": clientid})
        return any(a is not None and a.get("ok") for a in answers)

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
