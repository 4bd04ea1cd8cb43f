"""Tasks one object owns (a call, call control): each failure is counted and logged once, with its
traceback, by the owner's name; the owner cancels what is left when it ends."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

log = logging.getLogger(__name__)

# Runs a coroutine as a task of its owner (``OwnedTasks.spawn``, or a call's spawn).
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class OwnedTasks:
    def __init__(self, owner: str) -> None:
        self.owner = owner  # names the owner in the log line of a failure
        self.tasks: set[asyncio.Task[Any]] = set()
        self.errors = 0

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=getattr(coro, "__qualname__", None))
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:
            self.errors += 1
            log.error("%s: task %s failed: %s", self.owner, task.get_name(), e, exc_info=e)

    async def cancel(self) -> None:
        """Cancels every task but the one calling, and waits for them to finish."""
        current = asyncio.current_task()
        pending = [t for t in self.tasks if t is not current]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
