"""Beyond capacity, nobody is left in silence: N callers at once, N = 2x and 4x what the models serve.

    python bench/capacity.py [--multipliers 2,4] [--rounds 1] [--mode file|stream]
    python bench/capacity.py --capacity 1 --multipliers 2      # a quick check of the script itself

The PBX runs in its own process (the simulator; with --pbx asterisk the real Asterisk 22 of
../shared/asterisk/ and its callers); the engine (local provider, real models) in this one. First the engine measures its capacity (engine/capacity.py): rounds of
``--warmup-callers`` callers at once until it is measured rather than the start value (or
``--capacity`` sets providers.local.max_active_calls instead). Then, for each multiplier M,
M x capacity callers dial at the same moment; each waits for the greeting, says an Asterisk prompt
and hangs up once it hears an answer (or after ``--wait-s`` without one). Per run it prints:

- served: callers the engine took;
- turned away at once: callers it refused (asterisk.over_capacity: busy, or back to the
  dialplan; model capacity or rtp.max_calls), and how long that took;
- turns answered, and within the goal: the caller's wait from their last voiced frame to the
  first audio of the answer (the simulator's measure), p50/p95, and how many within ``--goal-s``
  (3 s: the goal for 8 callers at once, p95);
- turns apologised: the models could not serve them (the apology, counted as failed turns);
- turns dropped in silence: a served caller who heard nothing after speaking within ``--wait-s``.
  Must be 0.

The hold line is off unless ``--hold-after-ms`` asks for it, so that the waits are the answers'.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.config import AppConfig, load_config  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.sessions import TranscriptAdded  # noqa: E402
from common import BenchPbx, http_json, scratch_media  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS = ["agent-pass", "auth-incorrect", "call-forwarding", "conf-getpin", "demo-thanks", "dir-instr", "hello-world", "agent-newlocation", "conf-getconfno", "all-circuits-busy-now"]


@dataclass
class Run:
    callers: int
    capacity_before: int | None
    capacity_after: int | None = None
    served: int = 0
    turned_away: int = 0
    turned_away_s: list[float] = field(default_factory=list)  # dialling to the end of the call
    answered: list[float] = field(default_factory=list)  # the caller's wait, seconds
    apologised: int = 0
    silent: int = 0
    how: Counter[str] = field(default_factory=Counter)  # how the PBX saw them go: busy, back to the dialplan
    at_model_capacity: int = 0  # the engine's count: refused at the models' capacity
    at_max_calls: int = 0  # ... at rtp.max_calls

    def print(self, goal_s: float) -> None:
        print(f"{self.callers} callers at once (capacity {self.capacity_before} before, {self.capacity_after} after):")
        print(f"  served                      {self.served}")
        away = f" (each within {max(self.turned_away_s):.2f} s of dialling)" if self.turned_away_s else ""
        how = ", ".join(f"{n} {k}" for k, n in sorted(self.how.items()))
        print(f"  turned away at once         {self.turned_away}{away}" + (f": {how}; {self.at_model_capacity} at model capacity, {self.at_max_calls} at max_calls" if how else ""))
        if self.answered:
            a = np.array(self.answered)
            within = int((a <= goal_s).sum())
            print(f"  turns answered              {len(a)}: p50 {np.percentile(a, 50):.2f} s, p95 {np.percentile(a, 95):.2f} s; "
                  f"within {goal_s:g} s: {within} of {len(a)}")
        else:
            print("  turns answered              0")
        print(f"  turns apologised            {self.apologised}")
        print(f"  turns dropped in silence    {self.silent}" + ("" if not self.silent else "   <-- must be 0"))


def config(args: argparse.Namespace, env: dict[str, str]) -> AppConfig:
    cfg = load_config(ROOT / "config.toml", env=env)
    cfg.providers.local.hold_after_ms = args.hold_after_ms
    if args.capacity:
        cfg.providers.local.max_active_calls = args.capacity
    if args.over_capacity:
        cfg.asterisk.over_capacity = args.over_capacity
    return cfg


async def place(sim_url: str, prompt: str, number: str, wait_s: float) -> str:
    script = [
        {"wait_agent_done": 0.4, "timeout_s": 20},  # the greeting
        {"say": str(SOUNDS / f"{prompt}.wav")},
        {"wait_agent": 0.3, "timeout_s": wait_s},  # the answer (or the apology), or nothing
    ]
    r = await asyncio.to_thread(http_json, f"{sim_url}/sim/calls", {"script": script, "caller_number": number})
    return str(r["id"])


async def one_run(eng: Engine, sim_url: str, callers: int, wait_s: float, first_number: int) -> Run:
    run = Run(callers, eng.capacity.limit)
    store = eng.store
    refused_before = (store.calls_refused_model_capacity, store.calls_rejected_over_capacity)
    sub = eng.store.subscribe()
    apology = eng.config.providers.local.apology
    ids = await asyncio.gather(*(place(sim_url, PROMPTS[i % len(PROMPTS)], str(first_number + i), wait_s) for i in range(callers)))
    reports: dict[str, dict] = {}
    deadline = time.monotonic() + 120 + wait_s
    while len(reports) < len(ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        for cid in ids:
            if cid not in reports:
                r = await asyncio.to_thread(http_json, f"{sim_url}/sim/calls/{cid}")
                if r["done"]:
                    reports[cid] = r
    while len(eng.store):
        await asyncio.sleep(0.1)
    apologies: Counter[str] = Counter()
    while (e := sub.get_nowait()) is not None:
        if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final and e.turn.text == apology:
            apologies[e.call_id] += 1
    sub.close()
    for cid in ids:
        r = reports.get(cid)
        if r is None:
            run.silent += 1  # never finished: counted against the engine
            continue
        # Never bridged by the engine (the simulator's report), or hung up busy before a word (a real
        # PBX's caller, whose own side of the call is always bridged).
        if not r["bridged"] or (r["hangup_cause"] == 17 and not r["agent_audio_seconds"]):
            run.turned_away += 1
            run.turned_away_s.append(r["duration_s"])
            run.how["busy" if r["hangup_cause"] == 17 else f"ended by {r['ended_by']}"] += 1
            continue
        run.served += 1
        heard = r["turn_latencies_s"]
        if apologies[cid]:
            run.apologised += 1
        elif heard:
            run.answered.append(heard[0])
        else:
            run.silent += 1
    run.capacity_after = eng.capacity.limit
    run.at_model_capacity = store.calls_refused_model_capacity - refused_before[0]
    run.at_max_calls = store.calls_rejected_over_capacity - refused_before[1]
    return run


async def main_async(args: argparse.Namespace) -> int:
    pbx = BenchPbx(args.pbx)
    sim_url = pbx.url
    media = tempfile.mkdtemp(prefix="aiagent-bench-capacity-")
    env = {**pbx.engine_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "local",
           "AIAGENT_DOWNSTREAM_MODE": args.mode, "AIAGENT_MEDIA_DIR": scratch_media(media)}
    eng = Engine(config(args, env))
    silent = 0
    try:
        await eng.start()
        assert await eng.wait_ari_connected(10)
        number = 4000
        for n in range(args.max_warmup_rounds):
            est = eng.capacity.estimate()
            if args.capacity or est.basis.startswith("measured"):
                break
            warm = await one_run(eng, sim_url, args.warmup_callers, args.wait_s, number)
            number += args.warmup_callers
            print(f"warm-up round {n + 1}: {args.warmup_callers} callers, {warm.served} served, {len(warm.answered)} answered; "
                  f"{eng.capacity.observed_call_s:.0f} call-seconds measured", flush=True)
        est = eng.capacity.estimate()
        print(f"capacity: {est.calls} calls at once ({est.basis})", flush=True)
        for m in (int(x) for x in args.multipliers.split(",")):
            for _ in range(args.rounds):
                capacity = eng.capacity.limit or 1
                run = await one_run(eng, sim_url, m * capacity, args.wait_s, number)
                number += m * capacity
                print(f"{m}x capacity, ", end="")
                run.print(args.goal_s)
                silent += run.silent
        s = eng.summary()
        print(f"engine: refused at model capacity {s.calls_refused_model_capacity}, at max_calls {s.calls_rejected_over_capacity}, "
              f"turns failed {s.turns_failed}, calls failed {s.calls_failed}")
    finally:
        await eng.stop()
        pbx.stop()
    return 1 if silent else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--multipliers", default="2,4", help="runs of M x capacity callers at once")
    ap.add_argument("--rounds", type=int, default=1, help="runs per multiplier")
    ap.add_argument("--mode", choices=["file", "stream"], default="file")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    ap.add_argument("--capacity", type=int, default=0, help="providers.local.max_active_calls (default 0: measured first)")
    ap.add_argument("--warmup-callers", type=int, default=4, help="callers at once per warm-up round, while the capacity is measured")
    ap.add_argument("--max-warmup-rounds", type=int, default=10)
    ap.add_argument("--wait-s", type=float, default=8.0, help="a caller waits this long for an answer after speaking")
    ap.add_argument("--goal-s", type=float, default=3.0, help="an answer within this counts as within the goal")
    ap.add_argument("--hold-after-ms", type=int, default=0, help="providers.local.hold_after_ms (default 0: no hold line, the answers are timed)")
    ap.add_argument("--over-capacity", choices=["hangup", "dialplan"], help="asterisk.over_capacity for this run (default: config.toml's)")
    args = ap.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
