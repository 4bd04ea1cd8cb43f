"""The echo provider: plays the caller's own audio back after a fixed delay.

A line test for operators (does audio flow both ways, how does it sound) and a way to measure
the media path with no model in the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

from providers.base import AgentAudio, CallContext, EmitFn, Provider, ProviderCall, Readiness


class EchoCall(ProviderCall):
    def __init__(self, ctx: CallContext, emit: EmitFn, delay_s: float) -> None:
        self._ctx = ctx
        self._emit = emit
        self._delay = delay_s
        self._loop = asyncio.get_running_loop()
        # Timer handles instead of a task per frame: 50 frames/s per call must stay cheap.
        self._pending: deque[asyncio.TimerHandle] = deque()
        self._stopped = False

    async def start(self) -> None:
        pass

    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        if self._stopped:
            return
        self._pending.append(self._loop.call_later(self._delay, self._release, pcm16))

    def _release(self, pcm16: bytes) -> None:
        self._pending.popleft()
        self._emit(AgentAudio(pcm16, self._ctx.input_sample_rate))

    async def cancel_response(self, played_s: float | None = None) -> None:
        self._cancel_pending()

    def _cancel_pending(self) -> None:
        while self._pending:
            self._pending.popleft().cancel()

    async def stop(self) -> None:
        self._stopped = True
        self._cancel_pending()


class EchoProvider(Provider):
    name = "echo"
    half_duplex = False  # a line test: it hears and repeats everything, its own echo included

    def __init__(self, delay_ms: int) -> None:
        self.delay_s = delay_ms / 1000.0

    def readiness(self) -> Readiness:
        return Readiness(True, f"echo after {self.delay_s * 1000:.0f} ms")

    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall:
        return EchoCall(ctx, emit, self.delay_s)
