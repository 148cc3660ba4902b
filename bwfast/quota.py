"""``[broker] max_connections``: clients at once, counted across every worker.

The supervisor makes one shared-memory slot per worker before it forks them;
each worker writes only its own slot (the clients it holds, CONNECTs in
progress included) and reads the others' to decide. The slot is zeroed when
its worker starts and when it dies, so a crashed worker's clients don't count.
Two workers deciding in the same instant may let the limit be passed by one
each: it is a guard against exhaustion, not an exact count.
"""
from __future__ import annotations

from collections.abc import MutableSequence


class Quota:
    __slots__ = ("limit", "slots", "index", "mine")

    def __init__(self, limit: int, slots: MutableSequence[int] | None, index: int) -> None:
        self.limit = limit          # 0: unlimited
        self.slots = slots          # None: a single worker without a supervisor
        self.index = index
        self.mine = 0
        self._publish()

    def _publish(self) -> None:
        if self.slots is not None:
            self.slots[self.index] = self.mine

    def total(self) -> int:
        return sum(self.slots) if self.slots is not None else self.mine

    def take(self) -> bool:
        """Count one more client, unless the broker is full."""
        if self.limit and self.total() >= self.limit:
            return False
        self.mine += 1
        self._publish()
        return True

    def release(self) -> None:
        self.mine -= 1
        self._publish()
