"""Log lines for faults that can repeat thousands of times a second (bad packets, bad frames, a
full disk, bad HTTP requests): one line per kind per interval, then a count of what was held back."""

from __future__ import annotations

import logging
import time
from typing import Callable, Hashable


class _Window:
    """Admits one event per key per interval and counts the rest."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> str | None:
        """None: hold this one back. Otherwise a suffix saying how many were held ('' for none)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        held = self._held.pop(key, 0)
        return f" ({held} more like this in the last {now - last:.0f} s not logged)" if held and last is not None else ""


class Throttle(_Window):
    """The same window for lines that go elsewhere than a logger (the session store's call log,
    which the terminal app shows too): ``admit(kind)`` is None for a line to hold back, else the
    suffix that says how many were held back."""


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._window = _Window(interval_s, clock)

    def log(self, level: int, kind: str, message: str, exc_info: BaseException | None = None) -> bool:
        """Logs ``message`` unless a line of this kind went out less than an interval ago (then it
        is counted, and the next line of the kind says how many were held back). True if logged."""
        suffix = self._window.admit(kind)
        if suffix is None:
            return False
        self._log.log(level, message + suffix, exc_info=exc_info)
        return True

    def warning(self, kind: str, message: str, exc_info: BaseException | None = None) -> bool:
        return self.log(logging.WARNING, kind, message, exc_info)

    def error(self, kind: str, message: str, exc_info: BaseException | None = None) -> bool:
        return self.log(logging.ERROR, kind, message, exc_info)


class RateLimitFilter(logging.Filter):
    """The same for a library's own logger (aiohttp's per-request errors): one record per logger
    and message template per interval; the next one carries the count."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic, client_faults: bool = False) -> None:
        super().__init__()
        self._window = _Window(interval_s, clock)
        # client_faults: what is logged is a client's bad request, not our error: a one-line
        # warning with the exception's message, no traceback.
        self._client_faults = client_faults

    def filter(self, record: logging.LogRecord) -> bool:
        suffix = self._window.admit((record.name, record.msg))
        if suffix is None:
            return False
        if self._client_faults and record.exc_info and record.exc_info[1] is not None:
            text = " ".join(str(record.exc_info[1]).split())[:200]
            record.msg = f"{record.getMessage()}: {record.exc_info[1].__class__.__name__}: {text}"
            record.args = None
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if suffix:
            record.msg = f"{record.msg}{suffix}"
        return True
