"""The LLM: llama.cpp (llama-cpp-python) on a GGUF file, streamed token by token.

Calls take turns on the one model, and each turn's prompt is its call's whole conversation. A
prompt that shares its beginning with the one before (the same call's last turn) costs only its
new tokens; after another call's turn it would cost all of them again (the first token of a
three-call round came 657 ms after the question instead of 86 ms). So the KV cache of earlier
prompts is kept (``PrefixCache``) and the longest one that starts the new prompt is put back first.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from dataclasses import dataclass
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence, cast

import numpy as np

from providers.local.sentences import SentenceSplitter

PREFIX_CACHE_BYTES = 256 << 20  # about 35 conversations of 600 tokens with the 0.5B model
MIN_GAIN_TOKENS = 16  # put a state back only when it saves at least this much prompt


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """KV states of earlier prompts, by their tokens (sequence 0's KV only: llama-cpp-python's own
    LlamaRAMCache also copies the logits, 300 MB a state with a 150k-token vocabulary)."""

    def __init__(self, llm: Any, capacity_bytes: int = PREFIX_CACHE_BYTES) -> None:
        self.llm = llm
        self.capacity = capacity_bytes
        self._states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._bytes = 0
        self.restores = 0

    def restore_for(self, tokens: Sequence[int]) -> int:
        """Puts back the state that starts ``tokens`` the longest, if it beats what the context
        holds now; returns the tokens of the prompt already evaluated."""
        import llama_cpp

        llm = self.llm
        have = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens)
        best, best_key = have, None
        for key in self._states:
            n = common_prefix(key, tokens)
            if n > best:
                best, best_key = n, key
        if best_key is None or best - have < MIN_GAIN_TOKENS:
            return have
        data = self._states[best_key]
        self._states.move_to_end(best_key)
        llm._ctx.kv_cache_clear()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, buf, len(data), 0) == 0:
            llm.n_tokens = 0  # could not restore: evaluate from scratch
            return 0
        llm.input_ids[: len(best_key)] = best_key
        llm.n_tokens = len(best_key)
        llm._requires_eval = True  # the logits are not restored: the last token is evaluated again
        self.restores += 1
        return best

    def save(self) -> None:
        """Keeps the context's current state (after a turn: its prompt and its answer)."""
        import llama_cpp

        llm = self.llm
        key = tuple(llm.input_ids[: llm.n_tokens].tolist())
        if not key or key in self._states:
            return
        size = llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, buf, size, 0)
        data = bytes(buf[:n])
        # A state that extends a kept one replaces it: the same conversation, one turn on.
        for old in [k for k in self._states if len(k) < len(key) and key[: len(k)] == k]:
            self._bytes -= len(self._states.pop(old))
        self._states[key] = data
        self._bytes += len(data)
        while self._bytes > self.capacity and len(self._states) > 1:
            _, dropped = self._states.popitem(last=False)
            self._bytes -= len(dropped)


@dataclass(frozen=True, slots=True)
class Slice:
    """Part of an answer: ``tokens`` is the prompt and every token generated so far (what a next
    slice continues from), ``text`` this slice's text and ``generated`` its tokens, ``finished``
    whether the answer is done."""

    tokens: list[int]
    text: str
    generated: int
    finished: bool


class _PromptOnly(Exception):
    pass


SAMPLING = {"top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}  # create_chat_completion's defaults


class ChatModel:
    """The model, and answers generated a slice (a sentence) at a time, so that the worker can
    serve another caller's first sentence between two sentences of a long answer (the prompt and
    the tokens so far stay in the prefix cache: a next slice costs nothing to resume)."""

    def __init__(self, path: Path, context: int, threads: int, chat_format: str) -> None:
        from llama_cpp import Llama

        cache_holder: list[PrefixCache] = []
        prompt_holder: list[list[int]] = []

        class CachingLlama(Llama):
            def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
                if prompt_holder:  # prompt_tokens(): the chat handler's tokens, nothing evaluated
                    prompt_holder[0] = list(tokens)
                    raise _PromptOnly
                cache = cache_holder[0]
                cache.restore_for(tokens)
                try:
                    yield from super().generate(tokens, *args, **kwargs)
                finally:
                    cache.save()

        self.path = path
        # chat_format None: llama-cpp-python uses the chat template stored in the GGUF.
        self.llm = CachingLlama(
            model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
            chat_format=chat_format or None, verbose=False,
        )
        self.cache = PrefixCache(self.llm)
        cache_holder.append(self.cache)
        self._prompt_holder = prompt_holder

    def prompt_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt as the model's chat format makes it (whichever format: its own handler
        formats and tokenizes, and the generation it starts is stopped before any evaluation)."""
        self._prompt_holder.append([])
        try:
            self.llm.create_chat_completion(messages=cast(Any, messages), max_tokens=1)
        except _PromptOnly:
            return self._prompt_holder[0]
        finally:
            self._prompt_holder.clear()
        raise RuntimeError("the chat handler did not generate")

    def answer_slice(
        self,
        tokens: list[int],
        max_tokens: int,
        temperature: float,
        on_text: Callable[[str], None],
        cancelled: threading.Event,
        whole: bool = False,
    ) -> Slice:
        """Generates from ``tokens`` until a sentence ends (or, ``whole``, the answer), handing each
        piece of text to ``on_text`` as it comes; stops at once when ``cancelled`` is set."""
        import llama_cpp

        vocab = self.llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        splitter = SentenceSplitter()
        out: list[str] = []
        done = list(tokens)
        finished = True
        if max_tokens <= 0:
            return Slice(done, "", 0, True)
        gen = cast(Generator[int, None, None], self.llm.generate(tokens, temp=temperature, **SAMPLING))
        try:
            for token in gen:
                if cancelled.is_set() or llama_cpp.llama_token_is_eog(vocab, token):
                    break
                piece = decoder.decode(self.llm.detokenize([token], prev_tokens=done))
                done.append(token)
                if piece:
                    out.append(piece)
                    on_text(piece)
                if len(done) - len(tokens) >= max_tokens:
                    break
                if not whole and splitter.feed(piece):
                    finished = False
                    break
        finally:
            gen.close()  # the KV state so far goes into the prefix cache
        return Slice(done, "".join(out), len(done) - len(tokens), finished)

    def generate(
        self,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        on_text: Callable[[str], None],
        cancelled: threading.Event,
    ) -> str:
        """The whole answer at once (benchmarks); the worker serves it a slice at a time."""
        return self.answer_slice(self.prompt_tokens(messages), max_tokens, temperature, on_text, cancelled, whole=True).text
