"""The pieces of a pipeline's answers: the turn's record (what the caller heard of it), an answer
begun at the caller's pause, the feed of the LLM's text into sentences, the agent's voice that
speaks them, and the dialogue's history the LLM reads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Protocol

from providers.base import AgentAudio, AgentSpeakingStarted, AgentSpeakingStopped, EmitFn, ProviderError, Transcript, TurnMark, TurnStage
from providers.local.sentences import SentenceSplitter
from providers.stages import Priority, Reply, Speech, StageBusy, StageFailed
from runtime.tasks import Spawn
from runtime.clock import Clock, Timer

Heard = str | StageBusy | StageFailed  # the caller's words, or why the STT could not give them
class SpeechSource(Protocol):
    def get(self, text: str) -> Speech | None: ...  # the pipeline's SpeechCache


CALLER_HOLDS_S = 4.0  # an answer waits at most this long for a caller who is talking (a noisy line may never stop)


@dataclass(kw_only=True)
class Turn:
    user: str = ""  # what the caller said ("" for a line of the agent's own)
    cancelled: bool = False
    spoken: list[tuple[str, float]] = field(default_factory=list)  # (sentence, seconds of its audio)
    recorded: bool = False  # in the history already
    hold: Timer | None = None  # the hold line, due if the answer is slow
    hearing: asyncio.Task[Heard] | None = None  # the transcription of the caller's words it answers

    def heard(self, played_s: float | None) -> str:
        """What the caller heard of the answer: whole sentences, and the words of the one cut off
        in proportion to how much of it played."""
        if played_s is None:
            return " ".join(t for t, _ in self.spoken)
        out, left = [], played_s
        for text, seconds in self.spoken:
            if left >= seconds:
                out.append(text)
            else:
                words = text.split()
                cut = int(len(words) * max(0.0, left) / seconds) if seconds > 0 else 0
                if cut:
                    out.append(" ".join(words[:cut]) + "...")
                break
            left -= seconds
        return " ".join(out)


class AnswerBegun:
    """The LLM's answer to a transcript taken at the caller's pause, begun before their turn is
    over: what it has generated so far, handed to the turn if the caller ends it on those words,
    dropped if they say more."""

    def __init__(
        self, text: str, messages: list[dict[str, str]], generate: Callable[[Callable[[str], None]], Awaitable[Reply]], spawn: Spawn,
    ) -> None:
        self.text = text
        self.messages = messages
        self._pieces: list[str] = []
        self._sink: Callable[[str], None] | None = None
        self.task: asyncio.Task[Reply | StageBusy | StageFailed] = spawn(self._generate(generate))

    async def _generate(self, generate: Callable[[Callable[[str], None]], Awaitable[Reply]]) -> Reply | StageBusy | StageFailed:
        # A generation that fails before it is wanted is not the caller's problem: the failure is
        # kept for the turn that follows it, if one does.
        try:
            return await generate(self._got)
        except (StageBusy, StageFailed) as e:
            return e

    def _got(self, piece: str) -> None:
        self._pieces.append(piece)
        if self._sink is not None:
            self._sink(piece)

    async def follow(self, on_text: Callable[[str], None]) -> Reply:
        """The answer: what came so far at once, the rest as it comes. Cancelling stops it."""
        for piece in self._pieces:
            on_text(piece)
        self._sink = on_text
        reply = await self.task
        if not isinstance(reply, Reply):
            raise reply
        return reply

    def drop(self) -> None:
        self.task.cancel()


Check = Callable[[str, bool], str | None]  # (sentence, is it the first) -> None, or what to say instead


class SentenceFeed:
    """The LLM's text as it streams, cut into sentences for the speaker; each checked against the
    business's facts before it is spoken (providers/facts/verify.py): a wrong one is replaced by the
    right fact or the honest line, and the rest of the answer dropped."""

    def __init__(self, turn: Turn, check: Check, first_token: Callable[[], None]) -> None:
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.replaced = False  # the answer was replaced: the rest of its generation is not wanted
        self.generating: asyncio.Task[Reply] | None = None
        self._turn = turn
        self._check = check
        self._first_token: Callable[[], None] | None = first_token
        self._splitter = SentenceSplitter()
        self._first = True

    def got_text(self, piece: str) -> None:
        if self._turn.cancelled:
            return
        if self._first_token is not None:
            self._first_token()
            self._first_token = None
        for sentence in self._splitter.feed(piece):
            self._deliver(sentence)

    def flush(self) -> None:
        rest = self._splitter.flush()
        if rest:
            self._deliver(rest)

    def close(self) -> None:
        self.sentences.put_nowait(None)

    def _deliver(self, sentence: str) -> None:
        if self.replaced:
            return
        instead = self._check(sentence, self._first)
        self._first = False
        if instead is not None:
            self.replaced = True
            self.sentences.put_nowait(instead)
            if self.generating is not None:
                self.generating.cancel()
            return
        self.sentences.put_nowait(sentence)


class CallerQuiet:
    """Whether the caller is quiet (between the engine's utterance marks): an answer ready while
    they speak waits for it, at most a while of the call's clock."""

    def __init__(self) -> None:
        self._quiet = True
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._quiet

    def clear(self) -> None:
        self._quiet = False

    def set(self) -> None:
        self._quiet = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()

    async def wait(self, clock: Clock, at_most_s: float) -> None:
        if self._quiet:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        timer = clock.call_later(at_most_s, _settle, fut)
        try:
            await fut
        finally:
            timer.cancel()


class Speaker:
    """The agent's voice on one call: an answer's sentences synthesized and emitted as they come,
    whole lines at once."""

    def __init__(
        self,
        *,
        emit: EmitFn,
        synthesize: Callable[[str, Priority], Awaitable[Speech]],
        clock: Clock,
        caller_quiet: CallerQuiet,
    ) -> None:
        self._emit = emit
        self._synthesize = synthesize
        self._clock = clock
        self._caller_quiet = caller_quiet

    def mark(self, stage: TurnStage) -> None:
        self._emit(TurnMark(stage, self._clock.now()))

    async def speak(self, sentences: asyncio.Queue[str | None], turn: Turn) -> None:
        """Speaks sentences as they come (TTS of one overlaps generation of the next)."""
        started = False
        try:
            while (sentence := await sentences.get()) is not None:
                if turn.cancelled:
                    continue
                if not started:
                    self.mark("first_sentence")
                speech = await self._synthesize(sentence, Priority.LATER if started else Priority.NOW)
                if not started and not self._caller_quiet.is_set():
                    # The caller has begun to speak again since the words this answers (a slow
                    # answer on a loaded machine): not over them. How their utterance ends decides:
                    # a turn of its own cancels this one, whose words it answers too (they are in
                    # the history); a cough or the line's noise lets this answer play.
                    await self._caller_quiet.wait(self._clock, CALLER_HOLDS_S)
                if turn.cancelled:
                    continue
                if not started:
                    started = True
                    self.mark("tts_first_audio")
                    self._emit(AgentSpeakingStarted())
                turn.spoken.append((sentence, speech.seconds))
                self._emit(Transcript("agent", sentence))
                self._emit(AgentAudio(speech.pcm16, speech.sample_rate))
        finally:
            if started and not turn.cancelled:
                self._emit(AgentSpeakingStopped())
            elif not started:
                self.mark("no_answer")

    async def line(self, text: str) -> Speech | None:
        """A whole line's speech (the greeting, the apology, a line the engine asks for); None
        (said in the events) if it cannot be spoken."""
        if not text:
            self.mark("no_answer")
            return None
        try:
            return await self._synthesize(text, Priority.NOW)
        except (StageBusy, StageFailed) as e:
            self._emit(ProviderError(f"could not speak: {e}"))
            self.mark("no_answer")
            return None

    def hold_line(self, turn: Turn, when: float, text: str, cache: SpeechSource) -> Timer:
        """The hold line at ``when``, if the answer has not started by then (and the caller is
        quiet); its speech pinned in the cache at load: no model work."""

        def hold() -> None:
            speech = cache.get(text)
            if not turn.cancelled and not turn.spoken and speech is not None and self._caller_quiet.is_set():
                self.mark("hold")
                self.play(text, speech)

        return self._clock.call_at(when, hold)

    def play(self, text: str, speech: Speech) -> None:
        """A whole line of the agent's, spoken at once."""
        self._emit(AgentSpeakingStarted())
        self._emit(Transcript("agent", text))
        self._emit(AgentAudio(speech.pcm16, speech.sample_rate))
        self._emit(AgentSpeakingStopped())


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
