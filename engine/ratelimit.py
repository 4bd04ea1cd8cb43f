"""Log lines for faults that can repeat thousands of times a second (bad packets, bad frames, a
full disk, bad HTTP requests): one line per kind per interval, then a count of what was held back."""

from __future__ import annotations

import logging
import time
from typing import Callable


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, exc_info: BaseException | None = None) -> bool:
        """Logs ``message`` unless a line of this kind went out less than an interval ago (then it
        is counted, and the next line of the kind says how many were held back). True if logged."""
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        if held:
            message += f" ({held} more like this in the last {now - last:.0f} s not logged)"  # type: ignore[operator]
        self._log.log(level, message, exc_info=exc_info)
        return True

    def warning(self, kind: str, message: str, exc_info: BaseException | None = None) -> bool:
        return self.log(logging.WARNING, kind, message, exc_info)

    def error(self, kind: str, message: str, exc_info: BaseException | None = None) -> bool:
        return self.log(logging.ERROR, kind, message, exc_info)


class RateLimitFilter(logging.Filter):
    """The same for a library's own logger (aiohttp's per-request errors): one record per logger
    and message template per interval; the next one carries the count."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[tuple[str, object], float] = {}
        self._held: dict[tuple[str, object], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {now - last:.0f} s not logged)"  # type: ignore[operator]
        return True
