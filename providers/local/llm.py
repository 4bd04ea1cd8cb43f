"""The LLM: llama.cpp (llama-cpp-python) on a GGUF file, streamed token by token.

Calls take turns on the one model, and each turn's prompt is its call's conversation (its last
exchanges). A prompt that shares its beginning with the one before (the same call's last turn)
costs only its new tokens; after another call's turn it would cost all of them again (the first
token of a three-call round came 657 ms after the question instead of 86 ms). So the KV cache of
earlier prompts is kept (``PrefixCache``) and the longest one that starts the new prompt is put
back first. When a long call's oldest exchanges leave its prompt, they are cut out of the call's
state rather than the whole conversation being read again.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Sequence, cast

import numpy as np

from providers.local.sentences import SentenceSplitter
from providers.local.wire import Slice

PREFIX_CACHE_BYTES = 256 << 20  # about 35 conversations of 600 tokens with the 0.5B model
MIN_GAIN_TOKENS = 16  # put a state back only when it saves at least this much prompt
MAX_GAP_STARTS = 64  # places tried where a state may go on as the prompt does, after a cut


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def gap_match(key: Sequence[int], tokens: Sequence[int], p: int) -> tuple[int, int]:
    """Where ``key`` goes on as ``tokens`` does after their first ``p`` tokens (their common prefix)
    if a stretch of ``key`` is skipped: (j, m) with key[j : j + m] == tokens[p : p + m], the longest
    such m; (p, 0) if none."""
    if p >= len(key) or p >= len(tokens):
        return p, 0
    k, rest = np.asarray(key), tokens[p:]
    best = (p, 0)
    for j in np.flatnonzero(k[p + 1 :] == tokens[p])[:MAX_GAP_STARTS] + p + 1:
        m = common_prefix(key[j:], rest)
        if m > best[1]:
            best = (int(j), m)
    return best


class PrefixCache:
    """KV states of earlier prompts, by their tokens (sequence 0's KV only: llama-cpp-python's own
    LlamaRAMCache also copies the logits, 300 MB a state with a 150k-token vocabulary)."""

    def __init__(self, llm: Any, capacity_bytes: int = PREFIX_CACHE_BYTES) -> None:
        self.llm = llm
        self.capacity = capacity_bytes
        self._states: OrderedDict[tuple[int, ...], tuple[bytes, int | None]] = OrderedDict()  # state, its conversation
        self._conversation: int | None = None  # whose state the context holds
        self._bytes = 0
        self.restores = 0
        self.cuts = 0

    def restore_for(self, tokens: Sequence[int], conversation: int | None = None) -> int:
        """Puts back the state that starts ``tokens`` the longest, if it beats what the context
        holds now; returns the tokens of the prompt already evaluated. A state that holds the
        prompt with a stretch more in its middle (a conversation whose oldest exchanges have just
        left the prompt: providers.pipeline.history_window) counts too: the stretch is cut out of
        its KV cache and what follows moves up, as llama.cpp's server does to reuse a cache
        (``--cache-reuse``; the positions are re-rotated, the values are not recomputed). The
        values after the cut were computed with the stretch before them, so only the same
        ``conversation``'s state is cut: a state shared only up to its common prefix carries
        nothing of another call."""
        import llama_cpp

        llm = self.llm
        ctx = llm._ctx.ctx
        current = tuple(llm.input_ids[: llm.n_tokens].tolist())
        have = common_prefix(current, tokens)
        best, best_key, cut = have, current, (have, have)
        shift = llama_cpp.llama_memory_can_shift(llama_cpp.llama_get_memory(ctx))
        owners = {current: self._conversation} | {k: v[1] for k, v in self._states.items()}
        for key, owner in owners.items():
            p = common_prefix(key, tokens)
            j, m = gap_match(key, tokens, p) if shift and conversation is not None and owner == conversation else (p, 0)
            if p + m > best:  # m == 0: the common prefix alone (j == p: nothing to cut)
                best, best_key, cut = p + m, key, (p, j)
        if best - have < MIN_GAIN_TOKENS:
            return have
        if best_key is not current:
            data, self._conversation = self._states[best_key]
            self._states.move_to_end(best_key)
            llm._ctx.kv_cache_clear()
            buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
            if llama_cpp.llama_state_seq_set_data(ctx, buf, len(data), 0) == 0:
                llm.n_tokens = 0  # could not restore: evaluate from scratch
                self._conversation = None
                return 0
            self.restores += 1
        kept = best_key
        p, j = cut
        if j > p:
            memory = llama_cpp.llama_get_memory(ctx)
            if not llama_cpp.llama_memory_seq_rm(memory, 0, p, j):
                llm.n_tokens = 0
                llm._ctx.kv_cache_clear()
                self._conversation = None
                return 0
            llama_cpp.llama_memory_seq_add(memory, 0, j, -1, p - j)
            kept = best_key[:p] + best_key[j:]
            self.cuts += 1
        llm.input_ids[: len(kept)] = kept
        llm.n_tokens = len(kept)
        llm._requires_eval = True  # the logits are not restored: the last token is evaluated again
        return best

    def save(self, conversation: int | None = None) -> None:
        """Keeps the context's current state (after a turn: its prompt and its answer)."""
        import llama_cpp

        llm = self.llm
        key = tuple(llm.input_ids[: llm.n_tokens].tolist())
        self._conversation = conversation
        if not key or key in self._states:
            return
        size = llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, buf, size, 0)
        data = ctypes.string_at(buf, n)  # not bytes(buf[:n]): that slice is a list of ints, 0.1 s for 7 MB
        # A state that extends a kept one replaces it: the same conversation, one turn on.
        for old in [k for k in self._states if len(k) < len(key) and key[: len(k)] == k]:
            self._bytes -= len(self._states.pop(old)[0])
        self._states[key] = (data, conversation)
        self._bytes += len(data)
        while self._bytes > self.capacity and len(self._states) > 1:
            _, (dropped, _) = self._states.popitem(last=False)
            self._bytes -= len(dropped)


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
            def generate(self, tokens: Sequence[int], *args: Any, conversation: int | None = None, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
                if prompt_holder:  # prompt_tokens(): the chat handler's tokens, nothing evaluated
                    prompt_holder[0] = list(tokens)
                    raise _PromptOnly
                cache = cache_holder[0]
                cache.restore_for(tokens, conversation)
                try:
                    yield from super().generate(tokens, *args, **kwargs)
                finally:
                    cache.save(conversation)

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
        conversation: int | None = None,
    ) -> Slice:
        """Generates from ``tokens`` until a sentence ends (or, ``whole``, the answer), handing each
        piece of text to ``on_text`` as it comes; stops at once when ``cancelled`` is set.
        ``conversation``: whose answer it is (the call), for the prefix cache."""
        import llama_cpp

        vocab = self.llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        splitter = SentenceSplitter()
        out: list[str] = []
        done = list(tokens)
        finished = True
        if max_tokens <= 0:
            return Slice(done, "", 0, True)
        gen = cast(Generator[int, None, None], self.llm.generate(tokens, temp=temperature, conversation=conversation, **SAMPLING))
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
        conversation: int | None = None,
    ) -> str:
        """The whole answer at once (benchmarks); the worker serves it a slice at a time."""
        return self.answer_slice(self.prompt_tokens(messages), max_tokens, temperature, on_text, cancelled, whole=True, conversation=conversation).text
