"""What crosses the pipe between the engine (providers/local/workers.py) and a model worker process
(providers/local/worker_process.py): typed records, one per job kind and one per frame.

A frame is a 4-byte big-endian length and a pickle of one record; both ends are this project's own
code. The records live here, not in the process's module (run as ``__main__``), so that a record
is the same class on both sides of the pipe.

  engine -> worker: Load (first), then Run | Cancel
  worker -> engine: Ready (once loaded), then Chunk* and one Done | Failed per job;
                    or LoadFailed (the model did not load), and the process exits
"""

from __future__ import annotations

import pickle
import signal
import struct
from dataclasses import dataclass
from typing import BinaryIO, Generic, TypeVar

_LEN = struct.Struct(">I")
HEADER_SIZE = _LEN.size

R = TypeVar("R")


# ---- jobs: what the model is asked; ``Job[R]`` answers an R
@dataclass(frozen=True, slots=True)
class Job(Generic[R]):
    pass


@dataclass(frozen=True, slots=True)
class Transcribe(Job[str]):
    pcm16: bytes  # 16 kHz mono
    vocabulary: str  # words to expect (the profile's names)


@dataclass(frozen=True, slots=True)
class Slice:
    """Part of an answer: ``tokens`` is the prompt and every token generated so far (what a next
    slice continues from), ``text`` this slice's text and ``generated`` its tokens, ``finished``
    whether the answer is done."""

    tokens: list[int]
    text: str
    generated: int
    finished: bool


@dataclass(frozen=True, slots=True)
class Answer(Job[Slice]):
    """One slice (a sentence) of an answer: from ``messages`` for the first, from ``tokens`` (the
    last slice's) for the next; ``conversation``: the call whose answer it is (the prefix cache
    cuts a state only for its own call), None for no call."""

    messages: list[dict[str, str]] | None
    tokens: list[int] | None
    max_tokens: int
    temperature: float
    conversation: int | None


@dataclass(frozen=True, slots=True)
class Synthesize(Job[bytes]):
    text: str  # PCM16 mono back, at the voice's rate (Ready's detail)


@dataclass(frozen=True, slots=True)
class Crash(Job[None]):
    """Fault injection (the fault suite, bench/faults.py): the process dies of ``signum`` the way
    native code does."""

    signum: int = signal.SIGSEGV


# ---- frames
@dataclass(frozen=True, slots=True)
class Load:
    kind: str  # "stt", "llm", "tts"
    config: dict  # LocalProviderConfig, as data


@dataclass(frozen=True, slots=True)
class Run:
    id: int
    job: Job


@dataclass(frozen=True, slots=True)
class Cancel:
    id: int


@dataclass(frozen=True, slots=True)
class Ready:
    detail: str  # what the model is (its file, or the voice's sample rate)


@dataclass(frozen=True, slots=True)
class LoadFailed:
    error: str  # which model file, why, and what to do


@dataclass(frozen=True, slots=True)
class Chunk:
    id: int
    text: str  # a piece of an answer as it is generated


@dataclass(frozen=True, slots=True)
class Done:
    """``started``/``ended``: this machine's monotonic clock (the engine loop's), the job's time in
    the model, which a turn's timing takes out to find the engine's own share."""

    id: int
    result: object  # what the job's kind answers (``Job[R]``: an R)
    started: float
    ended: float


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    error: str  # the exception, in one line


ToWorker = Load | Run | Cancel
FromWorker = Ready | LoadFailed | Chunk | Done | Failed


def encode(frame: ToWorker | FromWorker) -> bytes:
    body = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


def body_size(head: bytes) -> int:
    return int(_LEN.unpack(head)[0])


def read_frame(stream: BinaryIO) -> object | None:
    """The next frame on a blocking stream, or None once it has ended."""
    head = stream.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE:
        return None
    n = body_size(head)
    body = stream.read(n)
    if len(body) < n:
        return None
    return pickle.loads(body)
