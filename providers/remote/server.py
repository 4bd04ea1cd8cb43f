"""One model server as the engine sees it: its address, its share of the engine's work (bounded
concurrency), whether it is up (a circuit breaker fed by every job and by a periodic probe), and
its state for /health.

While the circuit is open every job fails at once (``StageFailed``) instead of waiting for a
timeout, so a pipeline on that server is not available and new calls go to its fallback; the probe
closes the circuit again as soon as the server answers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from abc import ABC, abstractmethod
from typing import AsyncIterator, Generic, Mapping, TypeVar

from providers.base import ComponentStatus
from providers.circuit import CircuitBreaker
from providers.config import ModelServerConfig
from providers.redact import server_text, shown_url, url_password
from providers.stages import StageFailed
from runtime.clock import Clock, LoopClock, sleep
from runtime.tasks import OwnedTasks

log = logging.getLogger(__name__)

LOG_EVERY_S = 60.0  # a server that keeps failing is logged once a minute, not once a job


class ModelServer(ABC):
    def __init__(self, name: str, cfg: ModelServerConfig, *, env: Mapping[str, str] | None = None, clock: Clock | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.clock = clock or LoopClock()  # the probe's interval, the circuit, the latency
        env = os.environ if env is None else env
        self.api_key = env.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self.shown_url = shown_url(cfg.url)  # for messages: no password
        self._secrets = (self.api_key, url_password(cfg.url))  # what the server may reflect
        self.circuit = CircuitBreaker(open_s=cfg.probe_interval_s, max_open_s=cfg.probe_interval_s, clock=self.clock)
        self.circuit.state = "open"  # down until it first answers
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self.in_flight = 0
        self.jobs = 0
        self.errors = 0
        self.latency_ms: float | None = None
        self._tasks = OwnedTasks(self.label)  # its probe loop
        self._started = asyncio.Lock()
        self._logged_at = 0.0

    @property
    def label(self) -> str:
        return f"server-{self.name}"

    def status(self) -> ComponentStatus:
        state = "running" if self.circuit.closed else "down"
        return ComponentStatus(
            name=self.label, state=state, errors=self.errors, last_error=self.circuit.last_error,
            jobs=self.jobs, depth=self.in_flight, latency_ms=self.latency_ms,
        )

    @abstractmethod
    async def probe(self) -> None:
        """Raises unless the server is there and answering (a cheap request of its protocol)."""

    # ---- lifecycle
    async def start(self) -> None:
        """Probes once now (a server that is down is shown as such, not an error), then every
        ``probe_interval_s`` in a task this object owns. Once, however many stages use it."""
        async with self._started:
            if self._tasks.tasks:
                return  # probing already
            await self.check()
            self._tasks.spawn(self._probe_loop())

    async def close(self) -> None:
        await self._tasks.cancel()

    async def _probe_loop(self) -> None:
        while True:
            await sleep(self.clock, self.cfg.probe_interval_s)
            if self.circuit.closed and self.in_flight:
                continue  # jobs under way say more than a probe would (and some servers stop an answer for any new request)
            try:
                await self.check()
            except Exception:  # a bug of ours in a probe: logged, and the loop goes on
                log.exception("%s: probe failed unexpectedly", self.label)

    async def check(self) -> bool:
        """One probe: is the server there and answering? Updates the circuit and the latency."""
        t0 = self.clock.now()
        try:
            await asyncio.wait_for(self.probe(), self.cfg.timeout_s)
        except Exception as e:  # TimeoutError among them
            self._failed(self.describe(e))
            return False
        self.latency_ms = (self.clock.now() - t0) * 1000
        self._succeeded()
        return True

    def _succeeded(self) -> None:
        if not self.circuit.closed:
            log.info("%s (%s) is up", self.label, self.shown_url)
        self.circuit.success()

    def _failed(self, why: str) -> None:
        self.errors += 1
        now = self.clock.now()
        if self.circuit.closed or now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning("%s (%s) is down: %s", self.label, self.shown_url, why)
        self.circuit.failure(why)

    def describe(self, e: BaseException) -> str:
        """A failure on this server in one line: where its text enters the engine (the circuit's
        last error, /health, the console, doctor, the log, the call's turn), so the one place its
        text is cleaned (providers/redact.py)."""
        if isinstance(e, TimeoutError):
            return "timed out"
        text = str(e) or e.__class__.__name__
        if not isinstance(e, StageFailed) and not text.startswith(e.__class__.__name__):
            text = f"{e.__class__.__name__}: {text}"
        return server_text(text, self._secrets)

    # ---- jobs
    @asynccontextmanager
    async def job(self) -> AsyncIterator[None]:
        """A job on this server: refused at once while it is down; any failure inside (connection,
        timeout, a bad reply) marks it down and becomes ``StageFailed``. Cancellation is not a
        failure."""
        if not self.circuit.closed:
            raise StageFailed(f"{self.label} is down: {self.circuit.last_error}")
        async with self._slots:
            self.in_flight += 1
            self.jobs += 1
            t0 = self.clock.now()
            try:
                yield
            except Exception as e:
                why = self.describe(e)
                self._failed(why)
                # Not chained: the original's text is the server's, as it came.
                raise StageFailed(why if isinstance(e, StageFailed) else f"{self.label}: {why}") from None
            else:
                self.latency_ms = (self.clock.now() - t0) * 1000
                self._succeeded()
            finally:
                self.in_flight -= 1




S = TypeVar("S", bound=ModelServer)


class ServerStage(Generic[S]):
    """A stage on a model server: its state and start are the server's (shared by the stages on
    that server); whoever made the server closes it."""

    def __init__(self, server: S) -> None:
        self.server = server
        self.name = server.label

    async def start(self) -> None:
        await self.server.start()

    def status(self) -> ComponentStatus:
        return self.server.status()

    async def close(self) -> None:
        pass
