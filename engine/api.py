"""What a front end (the terminal app) may use of a running engine: its public API as protocols,
so that the app can be given the real Engine or a scripted one (snapshot tests)."""

from __future__ import annotations

import asyncio
from typing import Callable, Literal, Protocol

from engine.history import CallRecord, CallRow, HistoryDb, HistoryFilter
from engine.sessions import SessionStore
from engine.status import EngineSummary, ReloadResult
from providers.base import Readiness

__all__ = ["AudioTap", "AudioTaps", "BringIn", "CallRecord", "CallRow", "EngineRuntime", "EngineView", "HistoryDb", "HistoryFilter"]  # the call history is read directly

# How a person is brought into a call (bring_in): "introduce" calls them, tells them who is calling
# and why, then connects them; "bridge" adds them to the call; "snoop" lets them hear both sides and
# speak to the caller through a snoop (whisper) channel on the caller's channel, the agent staying on.
BringIn = Literal["introduce", "bridge", "snoop"]

# Listening in on a call: gets ("caller" | "agent" | "operator", pcm16, sample rate) as the audio
# passes; "operator": what an operator who took the call over sends the caller (operator_audio).
AudioTap = Callable[[str, bytes, int], None]


class AudioTaps:
    """A call's listeners, each under the key of who holds it (the terminal app running the engine,
    the console socket's consoles): several listen at once, and one stopping leaves the others.
    Called as an AudioTap, it hands the audio to each."""

    __slots__ = ("_taps",)

    def __init__(self) -> None:
        self._taps: dict[str, AudioTap] = {}

    def set(self, key: str, tap: AudioTap | None) -> None:
        """``key``'s listener is ``tap`` (in place of its earlier one); None: ``key`` stops listening."""
        if tap is None:
            self._taps.pop(key, None)
        else:
            self._taps[key] = tap

    def __bool__(self) -> bool:
        return bool(self._taps)

    def __contains__(self, key: object) -> bool:
        return key in self._taps

    def __call__(self, source: str, pcm16: bytes, rate: int) -> None:
        for tap in tuple(self._taps.values()):  # a listener may stop from its own tap
            tap(source, pcm16, rate)


class EngineView(Protocol):
    @property
    def store(self) -> SessionStore:
        """Snapshots of live calls and the event stream."""
        ...

    fatal: asyncio.Event  # set when the engine cannot go on
    fatal_error: str | None

    @property
    def default_provider(self) -> str: ...

    def summary(self) -> EngineSummary: ...
    def provider_readiness(self) -> dict[str, Readiness]: ...
    def barge_in(self, call_id: str) -> bool: ...
    async def hangup(self, call_id: str) -> bool: ...
    def transfer(self, call_id: str, department: str) -> bool: ...
    def departments(self, call_id: str) -> dict[str, str]: ...
    async def set_default_provider(self, name: str) -> None: ...
    async def set_call_provider(self, call_id: str, name: str) -> bool: ...
    def set_audio_tap(self, call_id: str, tap: AudioTap | None, *, key: str) -> bool:
        """``key`` (who listens: the app's monitor, the console socket) listens in on the call
        through ``tap``, beside any other listener; None: ``key`` stops. False: no such call."""
        ...

    # ---- the operator in the loop (``by`` names the operator, for the call's history)
    def operator_say(self, call_id: str, text: str, by: str) -> bool:
        """The agent says ``text`` next (after what it is saying now)."""
        ...

    def operator_instruct(self, call_id: str, text: str, by: str) -> bool:
        """``text`` joins the agent's instructions for the rest of this call."""
        ...

    def take_over(self, call_id: str, by: str) -> bool:
        """The agent falls silent and stops answering (the caller's words are still transcribed);
        the operator's audio (``operator_audio``) goes to the caller."""
        ...

    def hand_back(self, call_id: str, by: str) -> bool:
        """The agent takes the call again, with what was said meanwhile in its history."""
        ...

    def operator_audio(self, call_id: str, pcm16: bytes, rate: int) -> None:
        """The operator's microphone while the call is taken over (dropped otherwise)."""
        ...

    def bring_in(self, call_id: str, department: str, how: BringIn, by: str) -> bool:
        """A person joins the call (one of the profile's departments): put through after a spoken
        introduction or added to the call's bridge, the agent leaving; or on a snoop channel, the
        agent staying on."""
        ...


class EngineRuntime(Protocol):
    """Starts an engine (and whatever it needs, such as a simulator) and stops it again."""

    # True when stop() ends the engine and so hangs its calls up (not when attached to one).
    ends_calls: bool

    async def start(self) -> EngineView: ...
    async def stop(self) -> None: ...
    async def reload(self) -> ReloadResult:
        """Reads the config file again: new calls get what changed (see engine.config.LIVE_SECTIONS)."""
        ...

    def describe(self) -> str: ...
