"""The echo provider: plays the caller's own audio back after a fixed delay.

A line test for operators (does audio flow both ways, how does it sound) and a way to measure
the media path with no model in the loop.
"""

from __future__ import annotations

import asyncio
from collections import deque

from providers.base import AgentAudio, CallContext, EmitFn, Provider, ProviderCall, Readiness


class EchoCall(ProviderCall):
    """Plays each frame ``delay_s`` after its place in the caller's stream, not after its arrival:
    the line's jitter (a frame 60 ms late, then two at once) is absorbed by the delay instead of
    being played back as a gap. A frame more than half the delay late (the caller's packets
    stopped: DTX, hold) starts the schedule anew from it; an early one waits for its place."""

    def __init__(self, ctx: CallContext, emit: EmitFn, delay_s: float, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._ctx = ctx
        self._emit = emit
        self._delay = delay_s
        self._loop = loop or asyncio.get_running_loop()
        # Timer handles instead of a task per frame: 50 frames/s per call must stay cheap.
        self._pending: deque[asyncio.TimerHandle] = deque()
        self._stopped = False
        self._anchor: float | None = None  # when the stream's first sample would have arrived
        self._samples = 0  # where the next frame starts in the caller's stream
        self._held = False  # an operator has the call: the caller is not echoed (they would hear themselves over the operator)

    async def start(self) -> None:
        pass

    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        if self._stopped or self._held:
            return
        now = self._loop.time()
        place = self._samples / self._ctx.input_sample_rate
        if self._anchor is None or now - (self._anchor + place) > self._delay / 2:
            self._anchor = now - place
        self._pending.append(self._loop.call_at(self._anchor + place + self._delay, self._release, pcm16))
        self._samples += len(pcm16) // 2

    def _release(self, pcm16: bytes) -> None:
        self._pending.popleft()
        self._emit(AgentAudio(pcm16, self._ctx.input_sample_rate))

    async def cancel_response(self, played_s: float | None = None) -> None:
        self._cancel_pending()

    def hold_answers(self, held: bool, note: str = "") -> bool:
        self._held = held
        self._anchor = None  # the schedule starts anew from the first frame after the hand-back
        self._cancel_pending()
        return True

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
