"""The agent's side of one conversation: its answer's audio down the call's playback path, how
much of it was handed down (what a barge-in cut off), the capture gate that follows the playback's
tokens, and who waits for a line to play out (an action's announcement)."""

from __future__ import annotations

import asyncio
from typing import Callable

from engine.playback import Downstream
from engine.sessions import CallSession, ConversationState
from runtime.clock import Clock, Timer


class AgentVoice:
    def __init__(
        self,
        *,
        session: CallSession,
        clock: Clock,
        gating_tail_s: float,  # capture stays muted this long after the agent's audio ends
        set_state: Callable[[ConversationState], None],
        set_capture: Callable[[bool], None],
    ) -> None:
        self._session = session
        self._clock = clock
        self._gating_tail_s = gating_tail_s
        self._set_state = set_state
        self._set_capture = set_capture
        self.downstream: Downstream | None = None  # set by the call once its playback path is chosen
        self._turn_open = False  # between the provider's AgentSpeakingStarted and Stopped
        self._answer_audio_s = 0.0  # agent audio handed down for the answer being spoken
        self._pieces = 0  # agent audio handed down, counted
        self._played_out: list[tuple[int, asyncio.Future[None]]] = []  # (pieces when asked, done)
        self._ungate: Timer | None = None

    @property
    def speaking(self) -> bool:
        s = self._session
        return bool(s.playbacks) or s.conversation is ConversationState.AGENT_SPEAKING

    def started(self) -> None:
        self._turn_open = True
        self._answer_audio_s = 0.0

    def audio(self, pcm16: bytes, sample_rate: int) -> None:
        if self.downstream is None:
            return
        self.downstream.add(pcm16, sample_rate)
        if self._session.conversation is not ConversationState.AGENT_SPEAKING:
            if not self._turn_open:
                self._answer_audio_s = 0.0
            self._set_state(ConversationState.AGENT_SPEAKING)
        self._answer_audio_s += len(pcm16) / 2 / sample_rate
        self._pieces += 1

    def finished(self) -> None:
        self._turn_open = False
        if self.downstream is not None:
            self.downstream.finish()

    def stop(self) -> float | None:
        """Stops the agent's audio now; how much of its answer the caller heard (None if the agent
        was not speaking)."""
        self._turn_open = False
        if self.downstream is None:
            return None
        speaking = self.speaking
        unplayed = self.downstream.stop()
        return max(0.0, self._answer_audio_s - unplayed) if speaking else None

    def pause(self, paused: bool) -> bool:
        return self.downstream is not None and self.downstream.pause(paused)

    # ---- the capture gate
    def tokens_changed(self) -> None:
        """Gating follows the session's playback tokens: muted while any is held, and for a
        short tail after the last (the bridge's mix lags the playback by a frame or two)."""
        s = self._session
        if s.playbacks:
            self.cancel_tail()
            if s.capture_enabled:
                self._set_capture(False)
        elif not s.capture_enabled and self._ungate is None:
            self._ungate = self._clock.call_later(self._gating_tail_s, self._reopen)

    def cancel_tail(self) -> None:
        if self._ungate is not None:
            self._ungate.cancel()
            self._ungate = None

    def _reopen(self) -> None:
        self._ungate = None
        if self._session.playbacks:
            return
        self._set_capture(True)
        if not self._turn_open:
            waiting = []
            for since, fut in self._played_out:
                if since < self._pieces and not fut.done():
                    fut.set_result(None)
                elif not fut.done():
                    waiting.append((since, fut))
            self._played_out = waiting
            if self._session.conversation is ConversationState.AGENT_SPEAKING:
                self._set_state(ConversationState.LISTENING)

    def played_out(self) -> asyncio.Future[None]:
        """Resolves once agent audio handed down from now on (a line about to be said) has
        played to the caller."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._played_out.append((self._pieces, fut))
        return fut

    def close(self) -> None:
        for _, fut in self._played_out:
            fut.cancel()
        self.cancel_tail()
        if self.downstream is not None:
            self.downstream.close()
