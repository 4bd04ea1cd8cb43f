"""The LLM: llama.cpp (llama-cpp-python) on a GGUF file, streamed token by token."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator, cast


class ChatModel:
    def __init__(self, path: Path, context: int, threads: int, chat_format: str) -> None:
        from llama_cpp import Llama

        self.path = path
        # chat_format None: llama-cpp-python uses the chat template stored in the GGUF.
        self.llm = Llama(
            model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
            chat_format=chat_format or None, verbose=False,
        )

    def generate(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        on_text: Callable[[str], None],
        cancelled: threading.Event,
    ) -> str:
        """Runs in the LLM's worker thread; hands each piece of text to ``on_text`` as it comes
        and stops at once when ``cancelled`` is set (barge-in). Returns the whole text."""
        out = []
        # llama-cpp-python types messages as TypedDicts and the result as stream-or-not.
        stream = cast(Iterator[dict], self.llm.create_chat_completion(messages=cast(Any, messages), max_tokens=max_tokens, temperature=temperature, stream=True))
        for chunk in stream:
            if cancelled.is_set():
                break
            piece = chunk["choices"][0].get("delta", {}).get("content")
            if piece:
                out.append(piece)
                on_text(piece)
        return "".join(out)
