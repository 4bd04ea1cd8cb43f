"""The in-process stages: Whisper, llama.cpp and Piper, each in its supervised worker process
(providers/local/workers.py)."""

from __future__ import annotations

from typing import Callable, Sequence

from providers.base import ComponentStatus
from providers.local.workers import ModelWorker
from providers.stages import LanguageModel, Message, Reply, Speech, SpeechToText, TextToSpeech, Tool


class _WorkerStage:
    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker
        self.name = worker.name

    async def start(self) -> None:
        await self.worker.start()

    def status(self) -> ComponentStatus:
        return self.worker.status()

    @property
    def detail(self) -> str:
        return self.worker.detail

    async def close(self) -> None:
        await self.worker.close()


class WorkerStt(_WorkerStage, SpeechToText):
    async def transcribe(self, pcm16: bytes, prompt: str) -> str:
        return str(await self.worker.run("transcribe", pcm16, prompt))


class WorkerLlm(_WorkerStage, LanguageModel):
    async def generate(
        self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None], tools: Sequence[Tool] = ()
    ) -> Reply:
        return Reply(str(await self.worker.run("generate", messages, max_tokens, temperature, on_chunk=on_text)))

    async def prime(self, system: str) -> None:
        # One token of an answer to the system prompt alone: its KV state goes into the prefix cache.
        await self.worker.run("generate", [{"role": "system", "content": system}], 1, 0.0)


class WorkerTts(_WorkerStage, TextToSpeech):
    sample_rate = 0

    async def start(self) -> None:
        await self.worker.start()
        self.sample_rate = int(self.worker.detail)  # the worker reports its voice's rate

    async def synthesize(self, text: str) -> Speech:
        return Speech(await self.worker.run("synthesize", text), self.sample_rate)
