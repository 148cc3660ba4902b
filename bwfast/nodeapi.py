"""REST commands that reach the other nodes (the API process has no NATS link of its own).

The API sends ``nodes_count`` / ``nodes_send_client`` to one of its node's
workers over the control socket (control.py); that worker asks every worker
of every *other* node on ``bwfast.api`` and gathers the answers until each
worker it hears from has answered, or ``ASK_TIMEOUT`` passed:

    request  [from node, command, args]   command: "count" | "send_client"
    reply    {"ok": ..., "count": ...}    control.run_command's answer there
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from bwfast.control import run_command

if TYPE_CHECKING:
    from bwfast.nodes import NodeLink

log = logging.getLogger("bwfast.nodes")

API = "bwfast.api"
ASK_TIMEOUT = 1.5
COMMANDS = {"nodes_count": "count", "nodes_send_client": "send_client", "nodes_rows": "rows"}
ROW_DBS = ("devices", "subs", "wills")  # what the REST listings read
MAX_REPLY = 900_000  # bytes: under NATS max_payload (1 MB by default)


class NodeAPI:
    def __init__(self, link: NodeLink) -> None:
        self.link = link
        self.sub: Any = None

    async def joined(self) -> None:
        if self.sub is None:
            self.sub = await self.link.nc.subscribe(API, cb=self._on_request)

    async def _on_request(self, m: Any) -> None:
        try:
            node, command, args = msgpack.unpackb(m.data, raw=False)
        except Exception:  # noqa: BLE001 - a stranger on our subject
            return
        if node == self.link.node or command not in COMMANDS.values() or not m.reply:
            return
        if command == "rows":
            if self.link.index == 0:  # one LMDB per node: worker 0 answers for it
                await m.respond(self._rows(args.get("db")))
            return
        result, _ = run_command(self.link.worker, command, args)
        self.link.worker.schedule_tick()
        await m.respond(msgpack.packb(result))

    def _rows(self, db: Any) -> bytes:
        """This node's rows of a listing's database, cut to fit one NATS message."""
        if db not in ROW_DBS:
            return msgpack.packb({"ok": False, "error": "unknown db"})
        rows = [[k, v] for k, v in self.link.worker.store.items(db)]
        data = msgpack.packb({"ok": True, "rows": rows, "node": self.link.node})
        while len(data) > MAX_REPLY and rows:
            rows = rows[: len(rows) * MAX_REPLY // len(data) - 1]
            data = msgpack.packb({"ok": True, "rows": rows, "node": self.link.node,
                                  "partial": True})
        return data

    async def ask(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run a control command on every other node's workers; the combined answer."""
        link = self.link
        nc = link.nc
        if command not in COMMANDS:
            return {"ok": False, "error": f"unknown command {command}"}
        if nc is None or not link.connected:
            return {"ok": False, "error": "not joined to the cluster"}
        expected = len(link.heard)
        if command == "nodes_rows":
            expected = len({node for node, _ in link.heard})
        answers: list[dict] = []
        done = asyncio.Event()
        inbox = nc.new_inbox()

        async def on_reply(m: Any) -> None:
            try:
                answer = msgpack.unpackb(m.data, raw=False)
            except Exception:  # noqa: BLE001
                return
            if isinstance(answer, dict):
                answers.append(answer)
                if len(answers) >= expected or (command == "nodes_send_client"
                                                and answer.get("ok")):
                    done.set()

        sub = await nc.subscribe(inbox, cb=on_reply)
        try:
            await nc.publish(API, msgpack.packb([link.node, COMMANDS[command], args]),
                             reply=inbox)
            if expected:
                try:
                    await asyncio.wait_for(done.wait(), ASK_TIMEOUT)
                except TimeoutError:
                    pass
        finally:
            await sub.unsubscribe()
        if command == "nodes_count":
            return {"ok": True, "count": sum(int(a.get("count") or 0) for a in answers),
                    "answered": len(answers), "expected": expected}
        if command == "nodes_rows":
            return {"ok": True, "rows": [r for a in answers for r in a.get("rows") or ()],
                    "partial": any(a.get("partial") for a in answers) or len(answers) < expected}
        return {"ok": any(a.get("ok") for a in answers)}

    def run(self, reply: Any, req: int, command: str, args: dict[str, Any]) -> None:
        """From the control socket: answer ``req`` once the other nodes did."""
        async def go() -> None:
            try:
                result = await self.ask(command, args)
            except Exception as e:  # noqa: BLE001 - the API gets an answer whatever happens
                result = {"ok": False, "error": type(e).__name__}
            reply.write(msgpack.packb(["reply", req, result], use_bin_type=True))
        asyncio.get_running_loop().create_task(go())
