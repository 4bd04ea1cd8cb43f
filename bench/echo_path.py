"""Conversations on the real echo path: does the agent hear itself, and how fast does it answer?

    python bench/echo_path.py [--calls 3] [--questions 10] [--modes file,stream] [--lines dtx,silent,noisy,wideband]

The simulator (its own process) returns bridge playbacks as a real Asterisk 22 bridge does
(BEHAVIOUR.md); the engine runs the local models in this process. For each playback mode and
caller line, ``--calls`` callers at once each ask ``--questions`` questions in a Piper voice and
listen to the answers; in its last turn each caller talks over the answer one second into it.
Printed per mode and line, counted on the caller's side and the engine's:

- false barge-ins: the agent stopped while the caller was silent (its own echo, or noise);
- false pauses: the agent paused on sound that was not the caller talking, and went on
  (barge_in.pause_ms: a gap in its answer, nothing lost);
- barge-in reaction p50 at the caller: from the caller's speech onset to the agent going quiet;
- mis-heard words: caller transcripts that are not one of the caller's questions (the agent's
  own words heard back, or noise turned into words);
- barge-ins caught: of the talk-over turns, how many stopped the agent;
- turn latency p50/p95 at the caller: from the end of the caller's voice to the first answer frame heard;
- the engine's side of those turns, per stage (p50 / p95), and the mean wait of each model's jobs
  for its worker process, by priority: where the time of a turn under load goes.

Lines: dtx (the phone sends nothing in silence), silent (digital silence sent all the time),
noisy (-62 dBFS line noise all the time: the VAD's hangover, not the packets stopping, ends the
turn), wideband (noisy, and a 16 kHz phone: the bridge returns the echo half a frame late).
--pbx asterisk: the same callers on the real Asterisk 22 of ../shared/asterisk/ (aiagent-sim asterisk).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import BenchPbx, http_json, scratch_media  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.sessions import BargeIn, TranscriptAdded, TurnCompleted  # noqa: E402

QUESTIONS = [
    "Hi, what time do you open on Saturday?",
    "Where exactly are you located?",
    "Is there parking near the office?",
    "How much does a first appointment cost?",
    "Can I bring my daughter along?",
    "Do you take credit cards?",
    "Who should I ask for when I arrive?",
    "What is the number for emergencies?",
    "Are you open on public holidays?",
    "Thank you, that is all I needed.",
]
LINES = {
    "dtx": {},
    "silent": {"noise_dbfs": -120.0},
    "noisy": {"noise_dbfs": -62.0},
    "wideband": {"noise_dbfs": -62.0, "rate": 16000},
}


@dataclass
class Result:
    turns: int = 0
    false_barge_ins: int = 0
    misheard: list[str] = field(default_factory=list)
    talk_overs: int = 0
    caught: int = 0
    latencies: list[float] = field(default_factory=list)
    false_pauses: int = 0
    reactions: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)  # engine side, per stage of the turn
    waits: dict[str, tuple[float, int]] = field(default_factory=dict)  # "model priority" -> (seconds waited, jobs)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def is_question(text: str) -> bool:
    """Is this transcript one of the caller's questions (most of its words)?"""
    w = _words(text)
    return bool(w) and any(len(w & _words(q)) >= 0.6 * len(w) for q in QUESTIONS)


def script(questions: int) -> list[dict[str, object]]:
    steps: list[dict[str, object]] = [{"wait_agent_done": 0.8, "timeout_s": 30}]
    for i in range(questions - 1):
        steps += [{"say_text": QUESTIONS[i % len(QUESTIONS)]}, {"wait_agent": 0.3, "timeout_s": 40}, {"wait_agent_done": 1.0, "timeout_s": 60}]
    # The last question: talk over the answer one second into it.
    steps += [{"say_text": "Tell me everything about your opening hours, please."}, {"wait_agent": 1.0, "timeout_s": 40},
              {"say_text": "Sorry, stop, I have to go now."}, {"wait_agent_done": 1.0, "timeout_s": 40}, {"pause": 0.5}]
    return steps


STAGES = [("stt", "speech_end", "stt_final"), ("llm first sentence", "stt_final", "first_sentence"),
          ("tts", "first_sentence", "tts_first_audio"), ("playout", "tts_first_audio", "first_audio_out")]


async def run_case(mode: str, line: str, calls: int, questions: int, hold_after_ms: int = 0, pbx_kind: str = "sim") -> Result:
    pbx = BenchPbx(pbx_kind)
    env = {**pbx.engine_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "local",
           "AIAGENT_DOWNSTREAM_MODE": mode, "AIAGENT_MEDIA_DIR": scratch_media()}
    cfg = load_config(ROOT / "config.toml", env=env)
    # The simulated callers ask again after 1 s of quiet: after a hold line they would talk over
    # the answer that follows it. Off unless asked for.
    cfg.providers.local.hold_after_ms = hold_after_ms
    eng = Engine(cfg)
    res = Result()
    try:
        await asyncio.sleep(0.7)
        await eng.start()
        assert await eng.wait_ari_connected(10)
        sub = eng.store.subscribe(100_000)
        url = pbx.url
        placed = [http_json(f"{url}/sim/calls", {"script": script(questions), "caller_number": f"55501{i:02d}", **LINES[line]}) for i in range(calls)]
        ids = [p["id"] for p in placed]
        engine_id = {p["id"]: p.get("engine_channel") or p["id"] for p in placed}  # the call's id in the engine
        reports: dict[str, dict] = {}
        while len(reports) < len(ids):
            await asyncio.sleep(1.0)
            for cid in ids:
                r = await asyncio.to_thread(http_json, f"{url}/sim/calls/{cid}")
                if r["done"]:
                    reports[cid] = r
        barge_ins: dict[str, int] = {}
        while (ev := sub.get_nowait()) is not None:
            if isinstance(ev, BargeIn) and not ev.forced:
                barge_ins[ev.call_id] = barge_ins.get(ev.call_id, 0) + 1
            elif isinstance(ev, TurnCompleted):
                for name, a, b in STAGES:
                    ta, tb = getattr(ev.turn, a), getattr(ev.turn, b)
                    if ta is not None and tb is not None:
                        res.stages.setdefault(name, []).append(tb - ta)
            elif isinstance(ev, TranscriptAdded) and ev.turn.role == "caller" and ev.turn.final:
                res.turns += 1
                if not is_question(ev.turn.text) and "opening hours" not in ev.turn.text.lower() and "have to go" not in ev.turn.text.lower():
                    res.misheard.append(ev.turn.text)
        for cid, r in reports.items():
            caught = len(r["barge_in_reactions_s"])
            res.talk_overs += 1
            res.caught += min(1, caught)
            res.false_barge_ins += max(0, barge_ins.get(engine_id[cid], 0) - min(1, caught))
            res.latencies += r["turn_latencies_s"]
            res.reactions += r["barge_in_reactions_s"]
        res.false_pauses = eng.calls.conversation_counters.false_pauses
        for metric in eng.metrics.registry.collect():
            if metric.name == "ai_agent_model_wait_seconds":
                for smp in metric.samples:
                    key = f"{smp.labels['model']} {smp.labels['priority']}"
                    total, n = res.waits.get(key, (0.0, 0))
                    if smp.name.endswith("_sum"):
                        res.waits[key] = (smp.value, n)
                    elif smp.name.endswith("_count"):
                        res.waits[key] = (total, int(smp.value))
    finally:
        await eng.stop()
        pbx.stop()
    return res


async def main_async(args: argparse.Namespace) -> None:
    print(f"echo path: {args.calls} callers at once, {args.questions} turns each (the last one talked over), local models")
    print(f"  {'mode':6s} {'line':9s} {'turns':>5s} {'false barge-ins':>15s} {'false pauses':>12s} {'mis-heard':>9s} {'barge-ins caught':>16s}"
          f" {'reaction p50':>12s} {'turn p50':>9s} {'turn p95':>9s}")
    for mode in args.modes.split(","):
        for line in args.lines.split(","):
            r = await run_case(mode, line, args.calls, args.questions, args.hold_after_ms, args.pbx)
            lat = np.array(r.latencies) * 1000 if r.latencies else np.zeros(1)
            reaction = f"{np.percentile(r.reactions, 50) * 1000:.0f}ms" if r.reactions else "-"
            print(f"  {mode:6s} {line:9s} {r.turns:5d} {r.false_barge_ins:15d} {r.false_pauses:12d} {len(r.misheard):9d} {f'{r.caught}/{r.talk_overs}':>16s}"
                  f" {reaction:>12s} {np.percentile(lat, 50):7.0f}ms {np.percentile(lat, 95):7.0f}ms", flush=True)
            print("      engine side, p50 / p95: " + ", ".join(
                f"{name} {np.percentile(v, 50) * 1000:.0f} / {np.percentile(v, 95) * 1000:.0f} ms" for name, v in r.stages.items()), flush=True)
            print("      model queue, mean wait: " + ", ".join(f"{k} {t / n * 1000:.0f} ms ({n})" for k, (t, n) in sorted(r.waits.items()) if n), flush=True)
            for text in r.misheard[:3]:
                print(f"      mis-heard: {text!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--modes", default="file,stream")
    ap.add_argument("--lines", default="dtx,silent,noisy,wideband")
    ap.add_argument("--hold-after-ms", type=int, default=0, help="providers.local.hold_after_ms (default 0: no hold line)")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    asyncio.run(main_async(ap.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
