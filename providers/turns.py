"""The pipeline's side of turn-taking: what it does about the caller's utterance before the engine's
VAD ends it. The engine decides when the caller starts and stops (ConversationCoordinator); a
pipeline, whose Whisper is not streaming, transcribes at the caller's pause and, when those words
read as a whole sentence and the caller stays quiet, ends their turn at once (CallerFinished)
rather than after the VAD's hangover, and may begin the answer (answer_at_pause).

``CallerTurn`` takes those decisions from the frames' levels and the call's clock alone (a
ManualClock in tests): no loop time, no sleeping.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Protocol

from providers.local.sentences import reads_complete
from providers.stages import Priority
from runtime.clock import Clock, Timer
from runtime.tasks import Spawn

SPEECH_DBFS = -45.0  # a frame this loud is the caller's voice
PAUSE_S = 0.2  # this long without voice: transcribe now, the utterance may be over

Covered = str | asyncio.Task[str | None] | None  # the whole utterance's text, or the partial that will have it


class TurnListener(Protocol):
    """What the pipeline does when the caller's turn says so."""

    def heard_so_far(self, text: str) -> None: ...  # a partial transcript (for the operator)
    def caller_goes_on(self) -> None: ...  # voice after a pause: an answer begun on it is stale
    def answer_early(self, text: str) -> None: ...  # a whole sentence at the pause: begin the answer
    def caller_finished(self) -> None: ...  # ... and the caller stayed quiet: their turn is over


class CallerTurn:
    """One call's utterance as the pipeline follows it: voiced frames counted, the pause found,
    partial transcripts started (at the pause, or every interval) and the turn ended early on a
    complete one."""

    def __init__(
        self,
        *,
        clock: Clock,
        spawn: Spawn,
        transcribe: Callable[[Priority], Awaitable[str | None]],  # the utterance so far (None: refused or lost)
        listener: TurnListener,
        at_pause: bool,  # stt_at_pause
        interval_s: float,  # stt_partial_interval_ms: 0, none
        complete_end_s: float,  # complete_end_ms: 0, a complete transcript does not end the turn
        answer_at_pause: bool,
    ) -> None:
        self._clock = clock
        self._spawn = spawn
        self._transcribe = transcribe
        self._listener = listener
        self._at_pause = at_pause
        self._interval_s = interval_s
        self._complete_end_s = complete_end_s
        self._answer_at_pause = answer_at_pause
        self.in_speech = False
        self._utterance = 0  # counts utterances: a partial belongs to the one it started in
        self._voiced = 0  # voiced 20 ms frames in the current utterance
        self._last_voiced_at = 0.0
        self._partial_due = 0.0
        self._partial_voiced = 0  # voiced frames the last partial started covered
        self._partial_at_pause = False  # the partial in flight was started by a pause (not the interval)
        self._partial_task: asyncio.Task[str | None] | None = None
        self._partial: tuple[int, str] | None = None  # (voiced frames it covered, its text)
        self._pause_timer: Timer | None = None
        self._finish_timer: Timer | None = None  # a complete transcript waits for enough quiet
        self._stopped = False

    # ---- the engine's marks and frames
    def started(self) -> None:
        self.in_speech = True
        self._partial_due = self._clock.now() + self._interval_s
        self._voiced = self._partial_voiced = 0
        self._partial = None
        self._utterance += 1

    def frame(self, level_dbfs: float) -> None:
        if not self.in_speech:
            return
        if level_dbfs > SPEECH_DBFS:
            self._voiced += 1
            self._listener.caller_goes_on()  # the pause's transcript is not all they say
            self._drop_pause_partial()
            self._last_voiced_at = self._clock.now()
            if self._pause_timer is None:
                self._pause_timer = self._clock.call_later(PAUSE_S, self._check_pause)
        self._consider_partial()

    def ended(self) -> Covered:
        """The engine ended the utterance: the text of all of it, if a partial has it or is
        working on it."""
        self.in_speech = False
        covered: Covered = None
        t = self._partial_task
        if self._partial is not None and self._partial[0] == self._voiced:
            covered = self._partial[1]
        elif t is not None and not t.done() and self._partial_voiced == self._voiced:
            covered = t
            self._partial_at_pause = False  # the turn's transcript now: not to be dropped as stale
        self._partial = None
        self._voiced = self._partial_voiced = 0
        self._cancel_timers()
        return covered

    def stop(self) -> None:
        """The call is over: no more partials, no timers (the call's tasks are cancelled with it)."""
        self._stopped = True
        self._cancel_timers()

    # ---- the decisions
    def _check_pause(self) -> None:
        """A pause is time without voice, whether frames come or not (a phone with DTX sends
        nothing while its user is silent)."""
        self._pause_timer = None
        quiet = self._clock.now() - self._last_voiced_at
        if quiet < PAUSE_S:
            self._pause_timer = self._clock.call_later(PAUSE_S - quiet, self._check_pause)
        else:
            self._consider_partial()

    def _consider_partial(self) -> None:
        # Whisper is not streaming: transcribe the utterance so far as soon as the caller pauses
        # (or once the partial in flight at the pause is done), and, if asked, every interval
        # (words for the operator early). If no voice comes after that pause, the VAD's end of
        # speech (or the transcript reading complete) finds the transcript done or under way, and
        # waits for it instead of starting again. Each is a whole Whisper pass (its encoder reads
        # at least a 15 s window: 0.2-0.3 CPU-s with tiny.en), hence no periodic ones by default.
        if self._stopped or not self.in_speech or (self._partial_task is not None and not self._partial_task.done()):
            return
        now = self._clock.now()
        pausing = self._at_pause and now - self._last_voiced_at >= PAUSE_S and self._partial_voiced < self._voiced
        if pausing or (self._interval_s and now >= self._partial_due):
            self._partial_due = now + self._interval_s
            self._partial_voiced = self._voiced
            # The pause's transcript is most often the final one (the caller has finished): as
            # urgent as a final; the periodic ones only show the operator words early.
            self._partial_at_pause = pausing
            priority = Priority.NOW if pausing else Priority.IF_IDLE
            self._partial_task = self._spawn(self._run_partial(self._transcribe(priority), self._voiced, self._utterance))
            self._partial_task.add_done_callback(lambda _: self._consider_partial())

    def _drop_pause_partial(self) -> None:
        """The caller speaks again: a transcript of their pause still queued behind other calls'
        model work would only be stale (the next pause transcribes all of it), so its job is
        dropped before it takes a Whisper pass; one already running finishes unused."""
        t = self._partial_task
        if t is not None and self._partial_at_pause and not t.done():
            t.cancel()

    async def _run_partial(self, transcription: Awaitable[str | None], voiced: int, utterance: int) -> str | None:
        text = await transcription
        if text is None or not self.in_speech or utterance != self._utterance:
            return text
        self._partial = (voiced, text)
        if text:
            self._listener.heard_so_far(text)
            if voiced == self._voiced and reads_complete(text):
                # The answer first: ending the turn (at once, when the caller has been quiet
                # complete_end_ms already) takes it over; begun after, it was a second LLM job
                # that the turn's own answer queued behind (measured on a real Asterisk: 1.36 s
                # in the models after the early end against 0.47 s without it).
                if self._answer_at_pause:
                    self._listener.answer_early(text)
                if self._complete_end_s:
                    self._finish_if_quiet(voiced, utterance)
        return text

    def _finish_if_quiet(self, voiced: int, utterance: int) -> None:
        """What the caller said so far (``voiced`` frames of ``utterance``) reads as a whole sentence:
        their turn is over once they have been quiet ``complete_end_s`` (a comma's pause is
        shorter) and said nothing more; the transcript is then the final one."""
        self._finish_timer = None
        if self._stopped or not self.in_speech or utterance != self._utterance or voiced != self._voiced:
            return
        wait = self._last_voiced_at + self._complete_end_s - self._clock.now()
        if wait > 0:
            self._finish_timer = self._clock.call_later(wait, self._finish_if_quiet, voiced, utterance)
        else:
            self._listener.caller_finished()

    def _cancel_timers(self) -> None:
        for timer in (self._pause_timer, self._finish_timer):
            if timer is not None:
                timer.cancel()
        self._pause_timer = self._finish_timer = None
