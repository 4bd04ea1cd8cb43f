"""A model worker process: loads one model (STT, LLM or TTS) and serves its jobs over stdin/stdout.

Native model code (llama.cpp, CTranslate2, onnxruntime) can crash, abort or hang; in its own
process that ends this worker only, and the engine (providers/local/workers.py) restarts it while
the calls carry on. Run as ``python -m providers.local.worker_process``; the first frame on stdin
is ``(kind, config)``.

Frames are a 4-byte big-endian length and a pickle; both ends are this project's own code.
  parent -> worker: ("job", id, method, args) | ("cancel", id)
  worker -> parent: ("ready", detail) | ("chunk", id, piece) | ("done", id, result, started, ended)
                    | ("error", id, text)
``started`` and ``ended`` are this machine's monotonic clock (the engine loop's): the job's time in
the model, which a turn's timing takes out to find the engine's own share.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import queue
import struct
import sys
import threading
import time
from typing import Any, BinaryIO, Callable

_LEN = struct.Struct(">I")


def encode(msg: tuple) -> bytes:
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    return _LEN.pack(len(body)) + body


def read_frame(stream: BinaryIO) -> tuple | None:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    (n,) = _LEN.unpack(head)
    body = stream.read(n)
    if len(body) < n:
        return None
    msg = pickle.loads(body)
    return msg if isinstance(msg, tuple) else None


class _Model:
    """One loaded model and the jobs it serves: ``methods[name](args, on_chunk, cancelled)``."""

    def __init__(self, kind: str, cfg: Any) -> None:
        from providers.local.llm import ChatModel
        from providers.local.models import JOE_VOICE, resolve, resolve_llm
        from providers.local.stt import build_stt
        from providers.local.tts import PiperTts

        self.methods: dict[str, Callable[[tuple, Callable[[Any], None], threading.Event], Any]] = {}
        self.llm: ChatModel | None = None  # the LLM worker's model (its prefix cache's counters)
        if kind == "stt":
            stt = build_stt(cfg)
            self.detail = stt.name
            self.methods["transcribe"] = lambda a, chunk, cancelled: stt.transcribe(a[0], a[1], cancelled)
        elif kind == "llm":
            llm = self.llm = ChatModel(resolve_llm(cfg.llm_model, cfg.llm_model_path), cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
            self.detail = llm.path.name
            # ("answer", messages or None, tokens so far or None, max tokens, temperature, conversation):
            # one slice.
            self.methods["answer"] = lambda a, chunk, cancelled: dataclasses.astuple(
                llm.answer_slice(a[1] if a[1] is not None else llm.prompt_tokens(a[0]), a[2], a[3], chunk, cancelled, conversation=a[4])
            )
        elif kind == "tts":
            tts = PiperTts(resolve(JOE_VOICE, cfg.tts_voice_path), cfg.tts_threads)
            self.detail = str(tts.sample_rate)
            self.methods["synthesize"] = lambda a, chunk, cancelled: tts.synthesize(a[0])
        else:
            raise ValueError(f"unknown model kind {kind!r}")
        # Fault injection for the fault suite and bench/faults.py: a job whose method is "crash"
        # or "abort" ends the process the way native code does.
        self.methods["crash"] = lambda a, chunk, cancelled: os.kill(os.getpid(), 11)
        self.methods["abort"] = lambda a, chunk, cancelled: os.abort()


def main() -> int:
    # The protocol gets its own copy of stdout; fd 1 then points at stderr, so native code that
    # prints (llama.cpp, onnxruntime) cannot corrupt a frame.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    first = read_frame(inp)
    if first is None:
        return 2
    kind, cfg_data = first
    from providers.config import LocalProviderConfig

    cfg = LocalProviderConfig.model_validate(cfg_data)
    write_lock = threading.Lock()

    def send(msg: tuple) -> None:
        data = encode(msg)
        with write_lock:
            out.write(data)

    model = _Model(kind, cfg)
    send(("ready", model.detail))

    jobs: queue.Queue[tuple | None] = queue.Queue()
    cancels: dict[int, threading.Event] = {}

    def reader() -> None:
        while (msg := read_frame(inp)) is not None:
            if msg[0] == "job":
                cancels[msg[1]] = threading.Event()
                jobs.put(msg)
            elif msg[0] == "cancel" and (ev := cancels.get(msg[1])) is not None:
                ev.set()
        jobs.put(None)  # the engine closed our stdin (or died): stop

    threading.Thread(target=reader, name="worker-reader", daemon=True).start()
    while (job := jobs.get()) is not None:
        _, job_id, method, args = job
        cancelled = cancels[job_id]
        started = time.monotonic()
        try:
            if cancelled.is_set():
                result: Any = None
            else:
                def chunk(piece: Any, j: int = job_id) -> None:
                    send(("chunk", j, piece))

                result = model.methods[method](args, chunk, cancelled)
            send(("done", job_id, result, started, time.monotonic()))
        except Exception as e:
            send(("error", job_id, f"{e.__class__.__name__}: {e}"))
        finally:
            cancels.pop(job_id, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
