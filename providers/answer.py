"""The pieces of a pipeline's answer to one turn: the turn's record (what the caller heard of it),
an answer begun at the caller's pause, and the feed of the LLM's text into spoken sentences."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine

from providers.local import grounding
from providers.local.sentences import SentenceSplitter
from providers.profile import AgentProfile
from providers.stages import Reply, StageBusy, StageFailed
from runtime.clock import Timer

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]
Heard = str | StageBusy | StageFailed  # the caller's words, or why the STT could not give them


@dataclass
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


class SentenceFeed:
    """The LLM's text as it streams, cut into sentences for the speaker; the first one checked
    against the question (an answer that only echoes it is replaced: providers/local/grounding.py)."""

    def __init__(self, turn: Turn, question: str, profile: AgentProfile, first_token: Callable[[], None]) -> None:
        self.sentences: asyncio.Queue[str | None] = asyncio.Queue()
        self.replaced = False  # the answer was replaced: the rest of its generation is not wanted
        self.generating: asyncio.Task[Reply] | None = None
        self._turn = turn
        self._question = question
        self._profile = profile
        self._first_token: Callable[[], None] | None = first_token
        self._splitter = SentenceSplitter()
        self._checked = False

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
        if not self._checked:
            self._checked = True
            instead = grounding.check(sentence, self._question, self._profile.facts, self._profile.unknown_answer)
            if instead is not None:
                self.replaced = True
                self.sentences.put_nowait(instead)
                if self.generating is not None:
                    self.generating.cancel()
                return
        self.sentences.put_nowait(sentence)
