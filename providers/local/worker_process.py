"""A model worker process: loads one model (STT, LLM or TTS) and serves its jobs over stdin/stdout.

Native model code (llama.cpp, CTranslate2, onnxruntime) can crash, abort or hang; in its own
process that ends this worker only, and the engine (providers/local/workers.py) restarts it while
the calls carry on. Run as ``python -m providers.local.worker_process``; the frames, their records
and their order are in providers/local/wire.py.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from providers.config import LocalProviderConfig
from providers.local.models import ModelNotFound, ModelSpec, ModelUnusable, unusable
from providers.local.wire import (
    Answer, Cancel, Chunk, Crash, Done, Failed, FromWorker, Job, Load, LoadFailed, Ready, Run, Synthesize, Transcribe, encode, read_frame,
)


class _Model:
    """One loaded model, and the jobs of its kind it serves."""

    def __init__(self, kind: str, cfg: LocalProviderConfig) -> None:
        from providers.local.llm import ChatModel
        from providers.local.models import JOE_VOICE, VOSK, WHISPER_TINY_EN, llm_spec, resolve, resolve_llm
        from providers.local.stt import SttModel, build_stt
        from providers.local.tts import PiperTts

        self.kind = kind
        self.stt: SttModel | None = None
        self.llm: ChatModel | None = None  # (its prefix cache's counters, for the tests)
        self.tts: PiperTts | None = None
        if kind == "stt":
            spec = {"whisper": WHISPER_TINY_EN, "vosk": VOSK}.get(cfg.stt_engine)  # pocketsphinx: its package's own model
            path = resolve(spec, cfg.stt_model_path) if spec is not None else None
            with _loading(spec or WHISPER_TINY_EN, path, cfg.stt_model_path):
                self.stt = build_stt(cfg)
            self.detail = self.stt.name
        elif kind == "llm":
            path = resolve_llm(cfg.llm_model, cfg.llm_model_path)
            with _loading(llm_spec(cfg.llm_model, cfg.llm_model_path), path, cfg.llm_model_path):
                self.llm = ChatModel(path, cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
            self.detail = self.llm.path.name
        elif kind == "tts":
            path = resolve(JOE_VOICE, cfg.tts_voice_path)
            with _loading(JOE_VOICE, path, cfg.tts_voice_path):
                self.tts = PiperTts(path, cfg.tts_threads)
            self.detail = str(self.tts.sample_rate)
        else:
            raise ValueError(f"unknown model kind {kind!r}")

    def serve(self, job: Job[object], chunk: Callable[[str], None], cancelled: threading.Event) -> object:
        match job:
            case Transcribe(pcm16, vocabulary) if self.stt is not None:
                return self.stt.transcribe(pcm16, vocabulary, cancelled)
            case Answer(messages, tokens, max_tokens, temperature, conversation) if self.llm is not None:
                start = tokens if tokens is not None else self.llm.prompt_tokens(messages or [])
                return self.llm.answer_slice(start, max_tokens, temperature, chunk, cancelled, conversation=conversation)
            case Synthesize(text) if self.tts is not None:
                return self.tts.synthesize(text)
            case Crash(signum):
                os.kill(os.getpid(), signum)
                return None
            case _:
                raise ValueError(f"a {self.kind} model does not serve {job.__class__.__name__}")


@contextmanager
def _loading(spec: ModelSpec, path: Path | None, configured: str) -> Iterator[None]:
    """A model that is there but fails to load (what the cheap look at startup cannot see: a
    truncated GGUF with a good header, a corrupt graph) raises ModelUnusable naming the file and
    the loader's reason."""
    try:
        yield
    except ModelNotFound:
        raise
    except Exception as e:
        if path is None:
            raise
        raise ModelUnusable(unusable(spec, path, configured, f"{e.__class__.__name__}: {e} (corrupt or truncated?)")) from e


def main() -> int:
    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so native code that
    # prints (llama.cpp, onnxruntime) cannot corrupt a frame.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    first = read_frame(inp)
    if not isinstance(first, Load):
        return 2
    write_lock = threading.Lock()

    def send(frame: FromWorker) -> None:
        data = encode(frame)
        with write_lock:
            out.write(data)

    try:
        model = _Model(first.kind, LocalProviderConfig.model_validate(first.config))
    except Exception as e:
        # The engine shows this (startup error, /health, the header), not "exited with status 1".
        send(LoadFailed(str(e) if isinstance(e, ModelNotFound) else f"{first.kind} model: {e.__class__.__name__}: {e}"))
        return 1
    send(Ready(model.detail))

    jobs: queue.Queue[Run | None] = queue.Queue()
    cancels: dict[int, threading.Event] = {}

    def reader() -> None:
        while (frame := read_frame(inp)) is not None:
            match frame:
                case Run(job_id):
                    cancels[job_id] = threading.Event()
                    jobs.put(frame)
                case Cancel(job_id) if (ev := cancels.get(job_id)) is not None:
                    ev.set()
        jobs.put(None)  # the engine closed our stdin (or died): stop

    threading.Thread(target=reader, name="worker-reader", daemon=True).start()
    while (run := jobs.get()) is not None:
        cancelled = cancels[run.id]
        started = time.monotonic()
        try:
            def chunk(text: str, j: int = run.id) -> None:
                send(Chunk(j, text))

            result = None if cancelled.is_set() else model.serve(run.job, chunk, cancelled)
            send(Done(run.id, result, started, time.monotonic()))
        except Exception as e:
            send(Failed(run.id, f"{e.__class__.__name__}: {e}"))
        finally:
            cancels.pop(run.id, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
