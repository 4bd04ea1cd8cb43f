"""What the LLM's prefix cache (providers/local/llm.py) saves when calls take turns on the model.

    python bench/prefix_cache.py [--calls 3] [--turns 4] [--history-turns 6]

Several conversations with the same profile (bench/answers.py's dental practice) take turns on one
model, as calls do: each turn is its conversation's history (the provider's window of it,
``providers.pipeline.history_window``) plus a new question. Printed, the first-token latency of
the turns after the first and the LLM's CPU-s per turn:
  - without the cache (the model only reuses what it evaluated last, another conversation's prompt);
  - with it, the window sliding on by one exchange every turn once full (as before: each such turn
    reads the whole conversation again);
  - with it, the window moving half its exchanges at a time, the prompt read anew when it moves;
  - with it, the oldest exchanges cut out of the conversation's cached state when it moves (today);
then the first-token latency by turn number, and where the answers after a cut first differ from
those of the prompt read anew (temperature 0).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from answers import DENTIST, QUESTIONS  # noqa: E402

from providers.config import LocalProviderConfig  # noqa: E402
from providers.local import llm  # noqa: E402
from providers.local.llm import ChatModel  # noqa: E402
from providers.local.models import resolve_llm  # noqa: E402
from providers.pipeline import history_window  # noqa: E402
from providers.profile import AgentProfile  # noqa: E402


Window = Callable[[list[dict[str, str]], int], list[dict[str, str]]]


def sliding(history: list[dict[str, str]], turns: int) -> list[dict[str, str]]:
    return history[len(history) - 2 * turns :] if len(history) > 2 * turns else history


def run(model: ChatModel, calls: int, turns: int, window: Window, history_turns: int) -> tuple[list[list[float]], float, list[list[str]]]:
    """(first-token latency of each turn after the first, by turn; CPU-s; each call's answers)"""
    system = {"role": "system", "content": AgentProfile(facts=DENTIST).instructions()}
    questions = [q for f, q, _ in QUESTIONS if f is DENTIST]
    histories: list[list[dict[str, str]]] = [[] for _ in range(calls)]
    firsts: list[list[float]] = [[] for _ in range(turns)]
    c0 = time.process_time()
    for turn in range(turns):
        for c in range(calls):
            h = histories[c]
            question = {"role": "user", "content": questions[(turn * calls + c) % len(questions)]}
            t0 = time.perf_counter()
            seen: list[float] = []

            def on_text(piece: str, seen: list[float] = seen, t0: float = t0) -> None:
                if not seen:
                    seen.append(time.perf_counter() - t0)

            answer = model.generate([system, *window(h, history_turns), question], 40, 0.0, on_text, threading.Event(), conversation=c)
            h += [question, {"role": "assistant", "content": answer}]
            if turn > 0 and seen:
                firsts[turn].append(seen[0])
    return firsts, time.process_time() - c0, [[m["content"] for m in h[1::2]] for h in histories]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--history-turns", type=int, help="providers.local.history_turns (default: its default)")
    args = ap.parse_args()
    cfg = LocalProviderConfig()
    history_turns = cfg.history_turns if args.history_turns is None else args.history_turns
    print(f"prefix cache: {args.calls} conversations taking turns, {args.turns} turns each, {history_turns} exchanges kept, {cfg.llm_model}, 2 threads")
    by_turn: dict[str, list[list[float]]] = {}
    answers: dict[str, list[list[str]]] = {}
    runs = (
        ("without the cache", False, False, history_window),
        ("cache, sliding window", True, False, sliding),
        ("cache, no cut", True, False, history_window),
        ("with the cache", True, True, history_window),
    )
    gap_match = llm.gap_match
    for label, cached, cut, window in runs:
        model = ChatModel(resolve_llm(cfg.llm_model, cfg.llm_model_path), cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
        if not cached:
            model.cache.restore_for = lambda tokens, conversation=None: 0  # type: ignore[method-assign]
            model.cache.save = lambda conversation=None: None  # type: ignore[method-assign]
        llm.gap_match = gap_match if cut else (lambda key, tokens, p: (p, 0))
        firsts, cpu_s, answers[label] = run(model, args.calls, args.turns, window, history_turns)
        by_turn[label] = firsts
        f = np.array([x for t in firsts for x in t]) * 1000
        print(
            f"  {label:22s} first token p50 {np.percentile(f, 50):5.0f} ms   p90 {np.percentile(f, 90):5.0f} ms   "
            f"LLM {cpu_s / (args.calls * args.turns):.2f} CPU-s a turn   ({len(f)} turns)",
            flush=True,
        )
    print("  first token p50 by turn (ms), turns 2 on:")
    for label, firsts in by_turn.items():
        print(f"    {label:22s} " + " ".join(f"{1000 * float(np.median(t)):5.0f}" for t in firsts[1:] if t))
    # The cut re-rotates the positions of what follows it but keeps its values, computed when the
    # cut stretch was still before them: the answers are not always those of a prompt read anew.
    exact, cut_answers = answers["cache, no cut"], answers["with the cache"]
    firsts_differ = [next((t + 1 for t, (a, b) in enumerate(zip(x, y, strict=True)) if a != b), None) for x, y in zip(exact, cut_answers, strict=True)]
    print(f"  the cut against the prompt read anew (temperature 0): the first different answer, per conversation: {firsts_differ} (None: all the same)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
