"""Model work off the event loop: one worker thread per model, jobs served in arrival order.

Models are loaded once and shared by every call. A model object (a llama.cpp context, a Whisper
model) is used by one thread at a time, so each gets a single worker; calls that speak at once
queue in arrival order (first come, first served), and the queue is bounded so that a flood of
turns fails fast instead of piling up minutes of work.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    pass


class ModelWorker:
    def __init__(self, name: str, max_queue: int) -> None:
        self.name = name
        self.max_queue = max_queue
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self.depth = 0  # jobs waiting or running
        self.jobs = 0

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.depth >= self.max_queue:
            raise QueueFull(f"{self.name}: {self.depth} jobs already queued")
        self.depth += 1
        self.jobs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self.depth -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
