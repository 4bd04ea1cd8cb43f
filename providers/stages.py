"""The three model stages of a pipeline (speech to text, the LLM, text to speech), each either in
this machine's model worker processes (providers/local) or on a model server (providers/remote).

A pipeline call only sees these interfaces, so that its stages can be mixed freely: a remote LLM
with local Whisper and Piper, say. A stage that cannot do a job raises ``StageBusy`` (refused at
once: too much queued) or ``StageFailed`` (a worker crashed or hung, a server is down or too slow):
the caller hears a short apology for that turn, never silence.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Sequence

from providers.base import ComponentStatus, QueueState

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}
Tool = dict[str, Any]  # a function's "name", "description" and JSON-schema "parameters"


@dataclass(frozen=True, slots=True)
class Speech:
    """Synthesized speech: PCM16 mono at ``sample_rate`` (each TTS has its own rate)."""

    pcm16: bytes
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.pcm16) / 2 / self.sample_rate


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the LLM called instead of (or after) answering."""

    name: str
    arguments: str  # JSON, as the model wrote it


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    tool_calls: tuple[ToolCall, ...] = ()


class Priority(IntEnum):
    """Which job a stage serves first when several wait (in-process stages; a server orders its
    own): what a caller is waiting on, then the rest of answers, then partial transcripts, which
    are refused when anything else waits (they only show the operator words early)."""

    NOW = 0  # a final transcript, an answer's first sentence and its voice, a fixed line
    LATER = 1  # the later sentences of an answer, and their voice
    IF_IDLE = 2  # a partial transcript


class StageBusy(Exception):
    """Refused at once: the stage has too much work queued."""


class StageFailed(Exception):
    """The job was lost: its worker process died or hung, or its server is down or too slow."""


class Stage(ABC):
    """What every stage has: a start (load the model, or find the server), a state for /health,
    a close."""

    name: str  # in /health: "stt", "llm", "tts" for workers; "server:NAME" for a server

    async def start(self) -> None:
        """Raises if the stage cannot start at all (a missing model file). A server that does not
        answer yet is not an error here: it is shown as down until it answers."""

    @abstractmethod
    def status(self) -> ComponentStatus: ...

    def queue(self) -> QueueState:
        """Its jobs waiting or running (a server's: in flight from this engine)."""
        return QueueState(self.status().depth or 0)

    @property
    def available(self) -> bool:
        """False while the stage is known to fail every job (a server's circuit is open, a worker
        failed for good): new calls go to the pipeline's fallback."""
        return self.status().state not in ("failed", "stopped", "down")

    async def close(self) -> None:
        pass


class SpeechToText(Stage):
    @abstractmethod
    async def transcribe(self, pcm16: bytes, prompt: str, priority: Priority = Priority.NOW) -> str:
        """The text of PCM16 mono 16 kHz speech; ``prompt``: words to expect (where the stage can
        use them)."""


class LanguageModel(Stage):
    @property
    def calls_tools(self) -> bool:
        """Whether it is offered functions to call (``tools``): a model that calls them well, on
        a server that passes them on. The small in-process models are not (providers/intents.py)."""
        return False

    @abstractmethod
    async def generate(
        self, messages: list[Message], max_tokens: int, temperature: float, on_text: Callable[[str], None], tools: Sequence[Tool] = ()
    ) -> Reply:
        """The reply to ``messages``, streamed: ``on_text`` gets each piece of text as it comes
        (on the event loop). ``tools``: functions it may call (name, description, parameters), if
        ``calls_tools``. Cancelling stops the generation."""

    async def prime(self, system: str) -> None:
        """Reads a system prompt ahead of the first call that uses it, where that saves time."""


class TextToSpeech(Stage):
    @abstractmethod
    async def synthesize(self, text: str, priority: Priority = Priority.NOW) -> Speech: ...
