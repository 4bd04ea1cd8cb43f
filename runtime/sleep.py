"""Waiting on a Clock: ``asyncio.sleep`` reads the loop's time, so a wait that a test drives on
the ManualClock (a retry's backoff, a probe's interval) sleeps through the clock instead."""

from __future__ import annotations

import asyncio

from runtime.clock import Clock


async def sleep(clock: Clock, seconds: float) -> None:
    """Returns once ``clock`` has moved on by ``seconds``; cancellable like ``asyncio.sleep``."""
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    timer = clock.call_later(seconds, wake)
    try:
        await woken
    finally:
        timer.cancel()
