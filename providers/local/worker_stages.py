"""The in-process stages: Whisper, llama.cpp and Piper, each in its supervised worker process
(providers/local/workers.py)."""

from __future__ import annotations

from typing import Callable, Sequence

from providers.base import ComponentStatus, QueueState, model_work
from providers.local.wire import Answer, Synthesize, Transcribe
from providers.local.workers import ModelWorker
from providers.stages import LanguageModel, Message, Priority, Reply, Speech, SpeechToText, TextToSpeech, Tool


class _WorkerStage:
    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker
        self.name = worker.name

    async def start(self) -> None:
        await self.worker.start()

    def status(self) -> ComponentStatus:
        return self.worker.status()

    def queue(self) -> QueueState:
        return QueueState(self.worker.depth, self.worker.oldest_wait_s(self.worker.clock.now()))

    @property
    def detail(self) -> str:
        return self.worker.detail

    async def close(self) -> None:
        await self.worker.close()


class WorkerStt(_WorkerStage, SpeechToText):
    async def transcribe(self, pcm16: bytes, prompt: str, priority: Priority = Priority.NOW) -> str:
        return await self.worker.run(Transcribe(pcm16, prompt), priority=priority)


class WorkerLlm(_WorkerStage, LanguageModel):
    async def generate(
        self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None], tools: Sequence[Tool] = ()
    ) -> Reply:
        """A sentence at a time: the first one now, each later one behind any other caller's
        first sentence that waits by then (the worker keeps the answer's state between them)."""
        text: list[str] = []
        tokens: list[int] | None = None  # the prompt and the answer so far, once the first slice is done
        priority, left = Priority.NOW, max_tokens
        work = model_work.get()
        conversation = work.conversation if work is not None else None
        while True:
            part = await self.worker.run(
                Answer(messages if tokens is None else None, tokens, left, temperature, conversation), on_chunk=on_text, priority=priority
            )
            tokens = part.tokens
            text.append(part.text)
            left -= part.generated
            if part.finished:
                return Reply("".join(text))
            priority = Priority.LATER

    async def prime(self, system: str) -> None:
        # One token of an answer to the system prompt alone: its KV state goes into the prefix cache.
        await self.worker.run(Answer([{"role": "system", "content": system}], None, 1, 0.0, None))


class WorkerTts(_WorkerStage, TextToSpeech):
    sample_rate = 0

    async def start(self) -> None:
        await self.worker.start()
        self.sample_rate = int(self.worker.detail)  # the worker reports its voice's rate

    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech:
        return Speech(await self.worker.run(Synthesize(text), priority=priority), self.sample_rate)
