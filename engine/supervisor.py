"""The owner of the engine's long-lived work: each component's failure is seen, logged once with
its traceback, shown in /health, and followed by a restart with backoff; a component that keeps
failing is fatal, and the process exits non-zero so that systemd restarts it.

Two kinds of component: tasks (the ARI event stream) that the supervisor runs and restarts, and
callbacks (the RTP receive path, the pacer) that recover on their own and report each failure here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Awaitable, Callable

from runtime.backoff import Backoff
from runtime.ratelimit import RateLimitedLog
from providers.base import ComponentStatus

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Component:
    name: str
    _: KW_ONLY
    state: str = "running"  # running | restarting | failed | stopped
    restarts: int = 0
    errors: int = 0  # failures seen, restarted or recovered from
    last_error: str | None = None
    recent: list[float] = field(default_factory=list)  # monotonic times of failures

    def status(self) -> ComponentStatus:
        return ComponentStatus(name=self.name, state=self.state, restarts=self.restarts, errors=self.errors, last_error=self.last_error)


class Supervisor:
    def __init__(
        self,
        on_fatal: Callable[[str], None],
        max_failures: int = 5,
        window_s: float = 60.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_fatal = on_fatal
        self.max_failures = max_failures
        self.window_s = window_s
        self._backoff = backoff
        self._clock = clock
        self.components: dict[str, _Component] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rl = RateLimitedLog(log)

    def status(self) -> list[ComponentStatus]:
        return [c.status() for c in self.components.values()]

    @property
    def healthy(self) -> bool:
        return all(c.state == "running" for c in self.components.values())

    # ---- tasks
    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs ``run()`` for as long as the engine runs; it is not meant to return."""
        self.components[name] = _Component(name)
        self._tasks[name] = asyncio.create_task(self._own(name, run), name=name)

    async def _own(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        comp = self.components[name]
        backoff = Backoff(*self._backoff)
        while True:
            comp.state = "running"
            try:
                await run()
                raise RuntimeError("returned, but it should run until the engine stops")
            except asyncio.CancelledError:
                comp.state = "stopped"
                raise
            except Exception as e:
                if self._failed(comp, e, "restarting"):
                    return
            await asyncio.sleep(backoff.next_delay())
            comp.restarts += 1

    def _failed(self, comp: _Component, e: BaseException, then: str) -> bool:
        """Records a failure; True if it was one too many (the component is then failed)."""
        now = self._clock()
        comp.errors += 1
        comp.last_error = f"{e.__class__.__name__}: {e}"
        comp.recent = [t for t in comp.recent if now - t < self.window_s] + [now]
        if len(comp.recent) > self.max_failures:
            comp.state = "failed"
            log.critical("%s failed %d times in %.0f s, giving up: %s", comp.name, len(comp.recent), self.window_s, comp.last_error, exc_info=e)
            self._on_fatal(f"{comp.name} keeps failing: {comp.last_error}")
            return True
        comp.state = then
        # Once with its traceback per interval; a storm of the same failure is counted, not repeated.
        self._rl.error(comp.name, f"{comp.name} failed ({comp.last_error}); {then}", exc_info=e)
        return False

    # ---- callbacks
    def register(self, name: str) -> None:
        self.components.setdefault(name, _Component(name))

    def report(self, name: str, e: BaseException) -> None:
        """A callback component caught ``e`` and recovered (dropped the packet, re-armed its timer).
        Counted and shown, never fatal: a packet that trips a bug must not end every call."""
        comp = self.components.setdefault(name, _Component(name))
        comp.errors += 1
        comp.last_error = f"{e.__class__.__name__}: {e}"
        self._rl.error(name, f"{name}: {comp.last_error}; recovered", exc_info=e)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in self.components.values():
            c.state = "stopped"
