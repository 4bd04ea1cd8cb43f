"""Time for the engine's timing decisions (pacing, VAD gaps, gating tails, barge-in, turn timing).

The engine reads time and sets timers only through a Clock: ``LoopClock`` is the asyncio loop's
monotonic clock; ``ManualClock`` moves only when a test advances it, so those decisions are
tested frame by frame without sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import itertools
from typing import Any, Callable, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...
    def wall(self) -> dt.datetime: ...  # the date and time of day (aware, UTC): "are you open now?"
    def call_at(self, when: float, fn: Callable[..., object], *args: Any) -> Timer: ...
    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Timer: ...


class LoopClock:
    """The running asyncio loop's clock (``loop.time()``, ``call_at``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def wall(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc)

    def call_at(self, when: float, fn: Callable[..., object], *args: Any) -> Timer:
        return self.loop.call_at(when, fn, *args)

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Timer:
        return self.loop.call_later(delay, fn, *args)


class _ManualTimer:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that stands still until ``advance``; due timers then run in time order."""

    def __init__(self, start: float = 1000.0, *, wall: dt.datetime | None = None) -> None:
        self._now = start
        self._start = start
        self._wall = wall or dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.timezone.utc)  # a Monday morning
        self._heap: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> dt.datetime:
        return self._wall + dt.timedelta(seconds=self._now - self._start)

    def call_at(self, when: float, fn: Callable[..., object], *args: Any) -> Timer:
        timer = _ManualTimer(when, fn, args)
        heapq.heappush(self._heap, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> Timer:
        return self.call_at(self._now + delay, fn, *args)

    def advance(self, seconds: float) -> None:
        """Moves time on by ``seconds``, running each timer at its own moment on the way."""
        end = self._now + seconds
        while self._heap and self._heap[0][0] <= end:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.fn(*timer.args)
        self._now = end

    def stall(self, seconds: float) -> None:
        """Time passes while the loop is blocked: no timer runs until the next ``advance``."""
        self._now += seconds


async def sleep(clock: Clock, seconds: float) -> None:
    """Returns once ``clock`` has moved on by ``seconds``; cancellable like ``asyncio.sleep``
    (which reads the loop's time, so a wait a test drives on the ManualClock, a retry's backoff
    or a probe's interval, sleeps through the clock instead)."""
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    timer = clock.call_later(seconds, wake)
    try:
        await woken
    finally:
        timer.cancel()
