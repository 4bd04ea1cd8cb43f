"""The echo provider's schedule: each frame its delay after its place in the caller's stream."""

from __future__ import annotations

from typing import Any, cast

import pytest

from providers.base import AgentAudio, CallContext, ProviderEvent
from providers.echo import EchoCall

FRAME = b"\x00\x00" * 320  # 20 ms at 16 kHz


class ManualLoop:
    """The two calls EchoCall makes of its loop, with time set by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any, tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn: Any, *args: Any) -> Any:
        self.timers.append((when, fn, args))
        return self

    def cancel(self) -> None:
        pass

    def run_until(self, t: float) -> None:
        due = [x for x in self.timers if x[0] <= t]
        self.timers = [x for x in self.timers if x[0] > t]
        for _, fn, args in sorted(due, key=lambda x: x[0]):
            fn(*args)


def echo(delay_s: float) -> tuple[EchoCall, ManualLoop, list[ProviderEvent]]:
    loop = ManualLoop()
    out: list[ProviderEvent] = []
    return EchoCall(CallContext("c1"), out.append, delay_s, loop=cast(Any, loop)), loop, out


def release_times(loop: ManualLoop) -> list[float]:
    return [round(t, 6) for t, _, _ in loop.timers]


def test_a_late_frame_and_the_burst_after_it_are_played_on_their_places():
    call, loop, out = echo(0.5)
    # Frames 0-2 on time, then nothing for 90 ms, frames 3-5 at once (a network's burst), 6 20 ms late.
    for t in [0.0, 0.02, 0.04, 0.13, 0.131, 0.132, 0.14]:
        loop.now = t
        call.send_audio(FRAME, -20.0)
    assert release_times(loop) == pytest.approx([0.5, 0.52, 0.54, 0.56, 0.58, 0.6, 0.62])
    loop.run_until(1.0)
    assert [type(e) for e in out] == [AgentAudio] * 7


def test_packets_stopping_start_the_schedule_anew():
    call, loop, _ = echo(0.5)
    for t in [0.0, 0.02, 0.04]:
        loop.now = t
        call.send_audio(FRAME, -20.0)
    # DTX: nothing for 2 s, then the caller talks again; played 0.5 s after it comes, not at once.
    for t in [2.06, 2.08]:
        loop.now = t
        call.send_audio(FRAME, -20.0)
    assert release_times(loop) == pytest.approx([0.5, 0.52, 0.54, 2.56, 2.58])


def test_an_early_frame_waits_for_its_place():
    call, loop, _ = echo(0.5)
    for t in [0.0, 0.001, 0.002]:  # three frames at once: the sender caught up
        loop.now = t
        call.send_audio(FRAME, -20.0)
    assert release_times(loop) == pytest.approx([0.5, 0.52, 0.54])
