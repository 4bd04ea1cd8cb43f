"""What a front end (the terminal app) may use of a running engine: its public API as protocols,
so that the app can be given the real Engine or a scripted one (snapshot tests)."""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

from engine.history import CallRecord, CallRow, HistoryDb, HistoryFilter
from engine.sessions import SessionStore
from engine.status import EngineSummary, ReloadResult
from providers.base import Readiness

__all__ = ["AudioTap", "CallRecord", "CallRow", "EngineRuntime", "EngineView", "HistoryDb", "HistoryFilter"]  # the call history is read directly

# Listening in on a call: gets ("caller" | "agent", pcm16, sample rate) as the audio passes.
AudioTap = Callable[[str, bytes, int], None]


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
    def set_audio_tap(self, call_id: str, tap: AudioTap | None) -> bool: ...


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
