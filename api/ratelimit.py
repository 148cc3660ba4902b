"""Failed-login throttle: ten failures from one address within a minute
lock that address out of ``login`` for the rest of that minute (CONTRACT.md)."""
from __future__ import annotations

import time

WINDOW = 60.0
MAX_FAILURES = 10


class LoginThrottle:
    """Fixed windows per address: the first failure opens a one-minute window;
    once it holds MAX_FAILURES failures, logins from there get 429 until it ends."""

    def __init__(self, max_failures: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.max_failures = max_failures
        self.window = window
        self.windows: dict[str, tuple[float, int]] = {}

    def _current(self, addr: str, now: float) -> tuple[float, int] | None:
        entry = self.windows.get(addr)
        if entry is not None and now - entry[0] >= self.window:
            del self.windows[addr]
            return None
        return entry

    def blocked_for(self, addr: str) -> float:
        """Seconds this address must still wait; 0 when it may try."""
        now = time.monotonic()
        entry = self._current(addr, now)
        if entry is None or entry[1] < self.max_failures:
            return 0.0
        return entry[0] + self.window - now

    def failed(self, addr: str) -> None:
        now = time.monotonic()
        entry = self._current(addr, now)
        self.windows[addr] = (now, 1) if entry is None else (entry[0], entry[1] + 1)
        if len(self.windows) > 10_000:  # a scan from many addresses: drop closed windows
            for key in [k for k, (t, _) in self.windows.items() if now - t >= self.window]:
                del self.windows[key]
