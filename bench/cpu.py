"""CPU per call of the local pipeline: the engine and its model worker processes, measured while
simulated callers hold a conversation, and while they are silent between turns.

    python bench/cpu.py [--calls 1,3] [--turns 4] [--mode stream|file] [--llm NAME]

The PBX runs in its own process (not counted: the simulator, or with --pbx asterisk the real Asterisk 22
of ../shared/asterisk/ and its callers); the engine (local provider, real models) in
this one, its STT, LLM and TTS workers in theirs (counted: psutil, user + system time). Printed, as
% of one core:
  - the engine with no call (the floor: timers, the ARI WebSocket);
  - per call between turns: one caller on the line, silent for 10 s after the greeting, on a DTX
    line (no packets while silent) and on a line with faint noise all the time (VAD on every frame);
  - per active call: N callers each talking through the turn benchmark's questions (greeting,
    then --turns questions, each answered in full), CPU over the calls' lifetime / call-seconds;
    each turn's latency at the caller by its place in the call (p50 over the callers), the
    model jobs per answer (Whisper passes, LLM slices, TTS sentences) and the CPU a job took.
--skip-idle: only the active calls' rows. --transport rtp|audiosocket|websocket: how Asterisk hands
the calls' audio to the engine ([media] transport; --set SECTION.KEY=VALUE for more). --json PATH
also writes the figures there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.config import load_config  # noqa: E402
from engine.engine import Engine  # noqa: E402
from common import BenchPbx, add_transport_args, apply_transport, scratch_media  # noqa: E402
from turn_latency import PROMPTS, SOUNDS  # noqa: E402  (the turn benchmark's questions)

# Without "demo-thanks", which says goodbye: the agent ends the call on it (every call here talks
# through all of its --turns).
QUESTIONS = [p for p in PROMPTS if p != "demo-thanks"]

NOISY_LINE_DBFS = -60.0


class CpuMeter:
    """CPU seconds of this process (the engine) and its children (the model workers, named by the
    engine's components), the simulator left out."""

    def __init__(self, eng: Engine, exclude: set[int]) -> None:
        self.me = psutil.Process()
        self.eng = eng
        self.exclude = exclude

    def by_process(self) -> dict[str, float]:
        names = {c.pid: c.name for c in self.eng.components() if c.pid is not None}
        out: dict[str, float] = {}
        for p in [self.me, *self.me.children(recursive=True)]:
            if p.pid in self.exclude:
                continue
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            name = "engine" if p.pid == self.me.pid else names.get(p.pid, "other")
            out[name] = out.get(name, 0.0) + t.user + t.system
        return out

    def seconds(self) -> float:
        return sum(self.by_process().values())

    def jobs(self) -> dict[str, int]:
        """Jobs each model worker has been given so far."""
        return {c.name: c.jobs for c in self.eng.components() if c.jobs is not None}


async def place(http: aiohttp.ClientSession, sim_url: str, script: list[dict], number: str, noise_dbfs: float | None = None) -> str:
    body: dict = {"script": script, "caller_number": number}
    if noise_dbfs is not None:
        body["noise_dbfs"] = noise_dbfs
    async with http.post(f"{sim_url}/sim/calls", json=body) as r:
        return (await r.json())["id"]


async def report(http: aiohttp.ClientSession, sim_url: str, cid: str) -> dict:
    async with http.get(f"{sim_url}/sim/calls/{cid}") as r:
        return await r.json()


async def until_done(http: aiohttp.ClientSession, sim_url: str, ids: list[str]) -> list[dict]:
    while True:
        reports = [await report(http, sim_url, c) for c in ids]
        if all(r["done"] for r in reports):
            return reports
        # Once a second: these requests are this process's work, counted as the engine's (the
        # calls' durations and latencies are the simulator's, whenever they are read).
        await asyncio.sleep(1.0)


async def between_turns(eng: Engine, http: aiohttp.ClientSession, sim_url: str, meter: CpuMeter, noise: float | None) -> float:
    """% of one core for one call whose caller is silent: measured from 1 s after the greeting
    finished, for 8 s."""
    cid = await place(http, sim_url, [{"wait_agent_done": 0.4}, {"pause": 10.0}], "4000", noise)
    heard, still = 0.0, 0
    while still < 5:  # the greeting heard, then 0.5 s without agent audio
        await asyncio.sleep(0.1)
        now = (await report(http, sim_url, cid))["agent_audio_seconds"]
        still = still + 1 if now and now == heard else 0
        heard = now
    await asyncio.sleep(0.5)
    c0, t0 = meter.seconds(), time.monotonic()
    await asyncio.sleep(8.0)
    pct = 100 * (meter.seconds() - c0) / (time.monotonic() - t0)
    await until_done(http, sim_url, [cid])
    while len(eng.store):
        await asyncio.sleep(0.1)
    return pct


async def conversation(
    eng: Engine, http: aiohttp.ClientSession, sim_url: str, meter: CpuMeter, calls: int, turns: int
) -> tuple[float, float, list[list[float]], dict[str, float], dict[str, int]]:
    """(% of one core per active call, call-seconds, each call's turn latencies at the caller, % per
    call by process, jobs per model worker) for ``calls`` callers at once."""
    ids = []
    p0, j0 = meter.by_process(), meter.jobs()
    for i in range(calls):
        script: list[dict] = [{"wait_agent_done": 0.4}]
        for k in range(turns):
            script += [{"say": str(SOUNDS / f"{QUESTIONS[(i + k) % len(QUESTIONS)]}.wav")}, {"wait_agent": 0.3, "timeout_s": 30}, {"wait_agent_done": 0.6, "timeout_s": 30}]
        ids.append(await place(http, sim_url, script, str(5000 + i)))
    reports = await until_done(http, sim_url, ids)
    while len(eng.store):
        await asyncio.sleep(0.1)
    p1 = meter.by_process()
    call_s = sum(r["duration_s"] for r in reports)
    parts = {k: 100 * (v - p0.get(k, 0.0)) / call_s for k, v in p1.items()}
    jobs = {k: v - j0.get(k, 0) for k, v in meter.jobs().items()}
    return sum(parts.values()), call_s, [r["turn_latencies_s"] for r in reports], parts, jobs


async def measure(args: argparse.Namespace) -> dict:
    """The figures printed, as data: % of one core per call (no call, between turns, per active
    call by number of callers with its share by process)."""
    out: dict = {"pbx": args.pbx, "transport": args.transport, "mode": args.mode, "between_turns": {}, "active": {}}
    pbx = BenchPbx(args.pbx)
    env = {**pbx.engine_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "local", "AIAGENT_DOWNSTREAM_MODE": args.mode, "AIAGENT_MEDIA_DIR": scratch_media()}
    if args.llm:
        env["LOCAL_LLM_MODEL"] = args.llm
    cfg = load_config(ROOT / "config.toml", env=env)
    apply_transport(cfg, args.transport, args.media_set)
    cfg.providers.local.hold_after_ms = 0
    if args.partial_interval_ms is not None:
        cfg.providers.local.stt_partial_interval_ms = args.partial_interval_ms
    if args.stt_window_s is not None:
        cfg.providers.local.stt_window_s = args.stt_window_s
    if args.tts_threads is not None:
        cfg.providers.local.tts_threads = args.tts_threads
    eng = Engine(cfg)
    meter = CpuMeter(eng, pbx.pids)
    sim_url = pbx.url
    try:
        await asyncio.sleep(0.5)
        await eng.start()
        assert await eng.wait_ari_connected(10)
        print(f"CPU of the local pipeline (engine + model workers, % of one core; {os.cpu_count()} cores, {args.mode} mode, {args.pbx}, {args.transport})")
        async with aiohttp.ClientSession() as http:
            await conversation(eng, http, sim_url, meter, 1, 1)  # warm-up: models loaded and run once
            if not args.skip_idle:
                c0, t0 = meter.seconds(), time.monotonic()
                await asyncio.sleep(5.0)
                out["no_call"] = 100 * (meter.seconds() - c0) / (time.monotonic() - t0)
                print(f"  no call                                {out['no_call']:6.1f} %")
                for name, noise in (("DTX line", None), (f"line noise {NOISY_LINE_DBFS:.0f} dBFS", NOISY_LINE_DBFS)):
                    pct = out["between_turns"][name] = await between_turns(eng, http, sim_url, meter, noise)
                    print(f"  1 call between turns, {name:18s}{pct:6.1f} %")
            for n in [int(x) for x in args.calls.split(",")]:
                pct, call_s, latencies, parts, jobs = await conversation(eng, http, sim_url, meter, n, args.turns)
                answers = sum(len(x) for x in latencies)
                out["active"][str(n)] = {"pct_per_call": pct, "by_process": parts, "call_seconds": call_s, "answers": answers, "jobs": jobs,
                                         "turn_latencies_s": latencies}
                print(f"  per active call, {n} at once             {pct:6.1f} %   ({call_s:.0f} call-seconds, {answers} answers heard)")
                print("      " + ", ".join(f"{k} {v:.1f} %" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))
                # What each answer cost in model passes: Whisper passes per utterance (pause
                # transcripts and finals), LLM slices (sentences), TTS sentences.
                print("      model jobs per answer: " + ", ".join(f"{k} {v / max(1, answers):.1f}" for k, v in sorted(jobs.items())))
                # What a job cost: the host's speed at the hour of the run (the same questions each
                # run, so a Whisper pass costs the same on the same host: docs/benchmarks.md).
                cost = {k: parts.get(k, 0.0) / 100 * call_s * 1000 / v for k, v in jobs.items() if v}  # ms
                print("      CPU a job: " + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(cost.items())))
                # By the turn's place in the call: a long call's later turns must not cost more.
                by_turn = [statistics.median(x[k] for x in latencies if len(x) > k) for k in range(max(map(len, latencies), default=0))]
                print("      turn latency at the caller, p50 by turn: " + " ".join(f"{1000 * t:.0f}" for t in by_turn) + " ms")
    finally:
        await eng.stop()
        pbx.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", default="1,3", help="callers talking at once, per row")
    ap.add_argument("--turns", type=int, default=4, help="questions per call")
    ap.add_argument("--partial-interval-ms", type=int, help="providers.local.stt_partial_interval_ms for this run (default: config.toml's)")
    ap.add_argument("--llm", help="providers.local.llm_model for this run (default: config.toml's)")
    ap.add_argument("--stt-window-s", type=float, help="providers.local.stt_window_s for this run (default: config.toml's)")
    ap.add_argument("--tts-threads", type=int, help="providers.local.tts_threads for this run (default: config.toml's)")
    ap.add_argument("--mode", choices=["stream", "file"], default="stream")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    ap.add_argument("--skip-idle", action="store_true", help="only the active calls' rows (no idle engine, no call between turns)")
    ap.add_argument("--json", help="also write the figures here")
    add_transport_args(ap)
    return ap


def main() -> int:
    asyncio.run(measure(parser().parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
