"""What the LLM's prefix cache (providers/local/llm.py) saves when calls take turns on the model.

    python bench/prefix_cache.py [--calls 3] [--turns 4]

Several conversations with the same profile (bench/answers.py's dental practice) take turns on one
model, as calls do: each turn is its conversation's whole history plus a new question. Printed: the
first-token latency of the turns after the first, with the cache and without it (then the model only
reuses what it evaluated last, another conversation's prompt).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from answers import DENTIST, QUESTIONS  # noqa: E402

from providers.config import LocalProviderConfig  # noqa: E402
from providers.local.llm import ChatModel  # noqa: E402
from providers.local.models import resolve_llm  # noqa: E402
from providers.profile import AgentProfile  # noqa: E402


def run(model: ChatModel, calls: int, turns: int) -> list[float]:
    system = AgentProfile(facts=DENTIST).instructions()
    questions = [q for f, q, _ in QUESTIONS if f is DENTIST]
    histories: list[list[dict[str, str]]] = [[{"role": "system", "content": system}] for _ in range(calls)]
    firsts: list[float] = []
    for turn in range(turns):
        for c in range(calls):
            h = histories[c]
            h.append({"role": "user", "content": questions[(turn * calls + c) % len(questions)]})
            t0 = time.perf_counter()
            seen: list[float] = []

            def on_text(piece: str, seen: list[float] = seen, t0: float = t0) -> None:
                if not seen:
                    seen.append(time.perf_counter() - t0)

            answer = model.generate(h, 40, 0.0, on_text, threading.Event())
            h.append({"role": "assistant", "content": answer})
            if turn > 0 and seen:
                firsts.append(seen[0])
    return firsts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--turns", type=int, default=4)
    args = ap.parse_args()
    cfg = LocalProviderConfig()
    print(f"prefix cache: {args.calls} conversations taking turns, {args.turns} turns each, {cfg.llm_model}, 2 threads")
    for label, cached in (("without the cache", False), ("with the cache", True)):
        model = ChatModel(resolve_llm(cfg.llm_model, cfg.llm_model_path), cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
        if not cached:
            model.cache.restore_for = lambda tokens: 0  # type: ignore[method-assign]
            model.cache.save = lambda: None  # type: ignore[method-assign]
        f = np.array(run(model, args.calls, args.turns)) * 1000
        print(f"  {label:18s} first token p50 {np.percentile(f, 50):5.0f} ms   p90 {np.percentile(f, 90):5.0f} ms   ({len(f)} turns)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
