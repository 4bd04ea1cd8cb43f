"""The tone provider: answers every utterance with a beep.

A diagnostic for turn-taking on a real line: it shows that the VAD hears the caller, that the
agent's answer is played, that the caller is not heard while it plays, and that talking over the
beep stops it (barge-in) — with no model in the loop.
"""

from __future__ import annotations

import numpy as np

from media.audio import voiced_ms
from providers.base import (
    AgentAudio,
    AgentSpeakingStarted,
    AgentSpeakingStopped,
    CallContext,
    EmitFn,
    Provider,
    ProviderCall,
    Readiness,
    Transcript,
    UtteranceCollector,
)
from runtime.clock import Timer

SAMPLE_RATE = 16000
MIN_VOICED_MS = 200  # a fallback window with less sound than this is not answered
VOICED_DBFS = -45.0


def tone_pcm16(frequency_hz: float, duration_ms: int, sample_rate: int = SAMPLE_RATE, level: float = 0.3) -> bytes:
    t = np.arange(int(sample_rate * duration_ms / 1000)) / sample_rate
    wave = level * np.sin(2 * np.pi * frequency_hz * t)
    ramp = min(len(t) // 2, int(sample_rate * 0.005))  # 5 ms fades: no clicks
    if ramp:
        env = np.ones(len(t))
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        wave *= env
    return (wave * 32767).astype(np.int16).tobytes()


class ToneCall(ProviderCall):
    def __init__(self, ctx: CallContext, emit: EmitFn, tone: bytes, think_s: float) -> None:
        self._emit = emit
        self._tone = tone
        self._think = think_s
        self._collector = UtteranceCollector(ctx.input_sample_rate, ctx.fallback_window_ms, ctx.preroll_ms)
        self._clock = ctx.clock
        self._answer: Timer | None = None  # the beep, due after the think time
        self.answers = 0
        self._held = False  # an operator has the call: utterances are still reported, never answered

    async def start(self) -> None:
        pass

    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        self._collector.add(pcm16)

    def utterance_started(self) -> None:
        self._collector.start()

    def utterance_ended(self, fallback: bool) -> None:
        heard = self._collector.take()
        ms = voiced_ms(heard, SAMPLE_RATE, VOICED_DBFS)
        if fallback and ms < MIN_VOICED_MS:
            return
        self._emit(Transcript("caller", f"[{ms} ms of speech]"))
        if self._answer is None and not self._held:
            self._answer = self._clock.call_later(self._think, self._say)

    def _say(self) -> None:
        self._answer = None
        self.answers += 1
        self._emit(AgentSpeakingStarted())
        self._emit(Transcript("agent", "[beep]"))
        self._emit(AgentAudio(self._tone, SAMPLE_RATE))
        self._emit(AgentSpeakingStopped())

    async def cancel_response(self, played_s: float | None = None) -> None:
        if self._answer is not None:
            self._answer.cancel()
            self._answer = None

    def hold_answers(self, held: bool, note: str = "") -> bool:
        self._held = held
        if held and self._answer is not None:
            self._answer.cancel()
            self._answer = None
        return True

    async def stop(self) -> None:
        await self.cancel_response()


class ToneProvider(Provider):
    name = "tone"

    def __init__(self, frequency_hz: float, duration_ms: int, think_ms: int) -> None:
        self._tone = tone_pcm16(frequency_hz, duration_ms)
        self._think = think_ms / 1000
        self.detail = f"{frequency_hz:.0f} Hz for {duration_ms} ms after each utterance"

    def readiness(self) -> Readiness:
        return Readiness(True, self.detail)

    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall:
        return ToneCall(ctx, emit, self._tone, self._think)
