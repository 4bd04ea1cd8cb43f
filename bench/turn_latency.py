"""Turn latency of the local provider: caller speech end to first agent audio out.

    python bench/turn_latency.py [--turns 10] [--concurrent 4] [--mode file|stream]
    python bench/turn_latency.py --pipeline local,remote [--callers 1,2,4,8] [--rounds 2]

The simulator runs in its own process; the engine (local provider, real models) in this one.
Each simulated caller waits for the greeting, says an Asterisk prompt, and hangs up once the
answer has started. From each turn's timeline it prints, per stage, p50/p90: STT finalization
(speech end -> transcript), LLM to first sentence, TTS of the first sentence, playout start, and
the total; and the engine's own share: the turn until the audio is handed on, less the time the
models worked for the call and the time its jobs queued behind other callers' (target: p95 under
20 ms). Then it times each model stage alone on the same inputs and prints the engine's overhead
as total / sum of the stages. Last, the same with --concurrent calls talking at once.
Target on a 2-core CPU: p50 total under 1.2 s, overhead ratio under 1.15.

--pbx asterisk runs the same callers on the real Asterisk 22 of ../shared/asterisk/ (aiagent-sim asterisk:
the callers cross Asterisk's Local channels and bridges both ways, their times taken at their own side).

With --pipeline it prints instead, for each pipeline, the turn latency at the caller (p50, p95) with
1, 2, 4 and 8 callers asking at the same moment: "local" is the models in the engine's worker
processes, "remote" the same models on the model servers (llama.cpp's server, wyoming-faster-whisper,
wyoming-piper) that this script starts on this machine (aiagent-tui model-servers); under each row,
the end-of-speech wait, the time in models, queued and the engine's own share (local stages only).
--json PATH also writes that table's latencies (seconds, per pipeline and number of callers) there.

--transport rtp|audiosocket|websocket: how Asterisk hands the calls' audio to the engine ([media]
transport; --set SECTION.KEY=VALUE for more, e.g. audiosocket.form=dialplan); bench/transports.py
compares them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from engine.config import AppConfig, load_config  # noqa: E402
from providers.config import LocalProviderConfig  # noqa: E402
from providers.profile import AgentProfile  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.sessions import TurnCompleted, TurnTimeline  # noqa: E402
from common import BenchPbx, add_transport_args, apply_transport, free_port, scratch_media  # noqa: E402
from providers.local.llm import ChatModel  # noqa: E402
from providers.local.models import JOE_VOICE, resolve, resolve_llm  # noqa: E402
from providers.local.sentences import SentenceSplitter  # noqa: E402
from providers.local.stt import build_stt  # noqa: E402
from providers.local.tts import PiperTts  # noqa: E402
from stt_wer import phone_audio  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
PROMPTS = ["agent-pass", "auth-incorrect", "call-forwarding", "conf-getpin", "demo-thanks", "dir-instr", "hello-world", "agent-newlocation", "conf-getconfno", "all-circuits-busy-now"]
STAGES = [("stt", "speech_end", "stt_final"), ("llm first sentence", "stt_final", "first_sentence"), ("tts first sentence", "first_sentence", "tts_first_audio"), ("playout start", "tts_first_audio", "first_audio_out")]


async def place(sim_url: str, prompt: str, number: str) -> tuple[str, str]:
    """The caller's id on the PBX's call API, and the call's id in the engine."""
    import aiohttp

    script = [{"wait_agent_done": 0.4}, {"say": str(SOUNDS / f"{prompt}.wav")}, {"wait_agent": 0.3, "timeout_s": 20}]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim_url}/sim/calls", json={"script": script, "caller_number": number}) as r:
            rep = await r.json()
            return rep["id"], rep.get("engine_channel") or rep["id"]


async def caller_side(sim_url: str, ids: list[str]) -> list[float]:
    """Each call's turn latency as its caller heard it: from the caller's last frame to the first
    agent audio after it (the simulator's report)."""
    import aiohttp

    out: list[float] = []
    async with aiohttp.ClientSession() as http:
        for cid in ids:
            async with http.get(f"{sim_url}/sim/calls/{cid}") as r:
                out += (await r.json())["turn_latencies_s"]
    return out


async def run_turns(eng: Engine, sim_url: str, prompts: list[str], concurrent: int, placed: list[str] | None = None) -> list[tuple[str, TurnTimeline]]:
    sub = eng.store.subscribe()
    turns: list[tuple[str, TurnTimeline]] = []
    texts: dict[str, str] = {}
    for i in range(0, len(prompts), concurrent):
        batch = prompts[i : i + concurrent]
        pairs = await asyncio.gather(*(place(sim_url, p, str(3000 + i + j)) for j, p in enumerate(batch)))
        if placed is not None:
            placed += [p[0] for p in pairs]
        want = {p[1] for p in pairs}
        got: set[str] = set()
        deadline = time.monotonic() + 60
        while got != want and time.monotonic() < deadline:
            try:
                ev = await asyncio.wait_for(sub.get(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if isinstance(ev, TurnCompleted) and ev.call_id in want and ev.turn.speech_end is not None and ev.turn.stt_final is not None:
                got.add(ev.call_id)
                session = eng.store.get(ev.call_id)
                texts[ev.call_id] = next((t.text for t in session.transcript if t.role == "caller"), "") if session else ""
                turns.append((texts[ev.call_id], ev.turn))
        while len(eng.store):
            await asyncio.sleep(0.1)
    sub.close()
    return turns


def stage_alone(cfg: LocalProviderConfig, profile: AgentProfile, prompts: list[str]) -> list[float]:
    """Each model stage on its own, in this process, on the same inputs, one after the other: STT
    of the utterance, LLM until its first sentence, TTS of that sentence."""
    stt = build_stt(cfg)
    llm = ChatModel(resolve_llm(cfg.llm_model, cfg.llm_model_path), cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
    tts = PiperTts(resolve(JOE_VOICE, cfg.tts_voice_path), cfg.tts_threads)
    sums = []
    for p in prompts:
        pcm, _ = phone_audio(SOUNDS / f"{p}.wav")
        t0 = time.perf_counter()
        text = stt.transcribe(pcm)
        splitter, first = SentenceSplitter(), list[str]()
        done = threading.Event()

        def on_text(piece: str, first: list[str] = first, splitter: SentenceSplitter = splitter, done: threading.Event = done) -> None:
            if not first:
                first.extend(splitter.feed(piece))
                if first:
                    done.set()

        messages = [{"role": "system", "content": profile.instructions()}, {"role": "assistant", "content": profile.greeting}, {"role": "user", "content": text}]
        llm.generate(messages, cfg.llm_max_tokens, cfg.llm_temperature, on_text, done)
        sentence = first[0] if first else (splitter.flush() or "OK.")
        tts.synthesize(sentence)
        t3 = time.perf_counter()
        sums.append(t3 - t0)
    return sums


def report(title: str, turns: list[tuple[str, TurnTimeline]], alone: list[float] | None, heard: list[float]) -> None:
    print(title)
    for name, a, b in STAGES:
        # Behind a hold line the first audio out is the hold line's: its playout is no stage of the answer.
        v = [getattr(t, b) - getattr(t, a) for _, t in turns
             if getattr(t, a) is not None and getattr(t, b) is not None and not (b == "first_audio_out" and t.hold is not None)]
        if v:
            print(f"  {name:20s} p50 {np.percentile(v, 50) * 1000:7.0f} ms   p90 {np.percentile(v, 90) * 1000:7.0f} ms")
    total = [t.latency_s for _, t in turns if t.latency_s is not None]
    print(f"  {'total (engine)':20s} p50 {np.percentile(total, 50) * 1000:7.0f} ms   p90 {np.percentile(total, 90) * 1000:7.0f} ms   ({len(total)} turns)")
    if heard:
        # What the caller feels: from its last frame, so the end-of-speech wait is in it.
        print(f"  {'at the caller':20s} p50 {np.percentile(heard, 50) * 1000:7.0f} ms   p90 {np.percentile(heard, 90) * 1000:7.0f} ms   ({len(heard)} turns)")
    shares(turns)
    if alone:
        engine_stages = [t.latency_s for _, t in turns if t.latency_s is not None]
        print(f"  model stages alone   p50 {np.percentile(alone, 50) * 1000:7.0f} ms   overhead ratio (engine total / stages alone, p50) {np.percentile(engine_stages, 50) / np.percentile(alone, 50):.2f}")


def own_shares(turns: list[tuple[str, TurnTimeline]]) -> dict[str, list[float]]:
    """Per turn, in seconds: the end-of-speech wait (the caller's last voiced frame in -> the turn
    ended), and of the rest (-> first agent audio out) the time in the models, queued for them
    behind other callers, and the engine's own share (neither)."""
    out: dict[str, list[float]] = {"endpoint": [], "in models": [], "queued": [], "engine's own": []}
    for _, t in turns:
        if t.own_s is None or t.in_models_s is None or t.queued_s is None or t.hold is not None:
            continue
        if t.last_voice_in is not None and t.speech_end is not None:
            out["endpoint"].append(t.speech_end - t.last_voice_in)
        out["in models"].append(t.in_models_s)
        out["queued"].append(t.queued_s)
        out["engine's own"].append(t.own_s)
    return out


def shares(turns: list[tuple[str, TurnTimeline]], indent: str = "  ") -> None:
    for name, v in own_shares(turns).items():
        if v:
            print(f"{indent}{name:20s} p50 {np.percentile(v, 50) * 1000:7.1f} ms   p95 {np.percentile(v, 95) * 1000:7.1f} ms   max {max(v) * 1000:7.1f} ms")


def config(args: argparse.Namespace, env: dict[str, str]) -> AppConfig:
    cfg = load_config(ROOT / "config.toml", env=env)
    apply_transport(cfg, args.transport, args.media_set)
    # The hold line ("One moment, please.") would be the first sound a slow turn's caller hears:
    # off unless asked for, so that the figures are the answers'.
    cfg.providers.local.hold_after_ms = args.hold_after_ms
    if args.complete_end_ms is not None:
        cfg.providers.local.complete_end_ms = args.complete_end_ms
    if args.partial_interval_ms is not None:
        cfg.providers.local.stt_partial_interval_ms = args.partial_interval_ms
    if args.stt_window_s is not None:
        cfg.providers.local.stt_window_s = args.stt_window_s
    if args.tts_threads is not None:
        cfg.providers.local.tts_threads = args.tts_threads
    if args.facts:
        from answers import DENTIST

        cfg.profiles["default"].facts = DENTIST  # a receptionist's prompt: longer, and the answers checked
    return cfg


async def main_async(args: argparse.Namespace) -> None:
    pbx = BenchPbx(args.pbx)
    media = tempfile.mkdtemp()
    env = {**pbx.engine_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "local", "AIAGENT_DOWNSTREAM_MODE": args.mode, "AIAGENT_MEDIA_DIR": scratch_media(media)}
    if args.llm:
        env["LOCAL_LLM_MODEL"] = args.llm
    eng = Engine(config(args, env))
    try:
        await asyncio.sleep(0.5)
        await eng.start()
        assert await eng.wait_ari_connected(10)
        sim_url = pbx.url
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.turns)]
        ids: list[str] = []
        turns = await run_turns(eng, sim_url, prompts, 1, ids)
        heard = await caller_side(sim_url, ids)
        for text, _ in turns[:3]:
            print(f"  heard: {text!r}")
        await eng.stop()
        alone = await asyncio.to_thread(stage_alone, eng.config.providers.local, eng.config.profiles["default"], prompts)
        report(f"turn latency, {len(turns)} turns one at a time ({args.mode} mode)", turns, alone, heard)
        eng = Engine(config(args, env))
        await eng.start()
        assert await eng.wait_ari_connected(10)
        ids = []
        conc = await run_turns(eng, sim_url, prompts[: args.concurrent] * 2, args.concurrent, ids)
        report(f"turn latency, {args.concurrent} calls talking at once", conc, None, await caller_side(sim_url, ids))
    finally:
        await eng.stop()
        pbx.stop()


async def scaling(args: argparse.Namespace) -> dict[str, dict[int, list[float]]]:
    """The scaling table (see the module's docstring); returns each pipeline's turn latencies at
    the caller by number of callers."""
    from aiagent_tui.model_servers import ModelServers, server_specs
    from providers.config import ModelServerConfig, PipelineConfig

    pbx = BenchPbx(args.pbx)
    sim_url = pbx.url
    media = tempfile.mkdtemp()
    callers = [int(n) for n in args.callers.split(",")]
    rows: dict[str, dict[int, list[float]]] = {}
    own: dict[str, dict[int, list[float]]] = {}  # the engine's own share of each turn (local stages only)
    try:
        for pipeline in args.pipeline.split(","):
            env = {**pbx.engine_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "local", "AIAGENT_DOWNSTREAM_MODE": args.mode, "AIAGENT_MEDIA_DIR": scratch_media(media)}
            cfg = config(args, env)
            # Every row's callers are let in: this measures the turns of N callers at once; what the
            # engine admits beyond its measured capacity is bench/capacity.py's.
            cfg.providers.local.max_active_calls = max(callers)
            servers = None
            if pipeline == "remote":
                local = cfg.providers.local
                specs = server_specs(local, llm_port=free_port(), stt_port=free_port(), tts_port=free_port(), threads=local.llm_threads, parallel=max(callers))
                servers = ModelServers(specs, Path(media) / "server-logs")
                await asyncio.to_thread(servers.start)
                for sp in specs:
                    cfg.providers.servers[sp.name] = ModelServerConfig(api=sp.api, url=sp.url, model=local.llm_model, timeout_s=30.0, max_concurrency=16)  # type: ignore[arg-type]
                cfg.providers.pipelines["remote"] = PipelineConfig(stt="stt", llm="llm", tts="tts")
                cfg.providers.default = "remote"
            eng = Engine(cfg)
            try:
                await eng.start()
                assert await eng.wait_ari_connected(10)
                rows[pipeline], own[pipeline] = {}, {}
                for n in callers:
                    ids: list[str] = []
                    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)] * args.rounds
                    turns = await run_turns(eng, sim_url, prompts, n, ids)
                    rows[pipeline][n] = await caller_side(sim_url, ids)
                    heard = rows[pipeline][n] or [float("nan")]
                    print(f"  {pipeline:7s} {n} callers: p50 {np.percentile(heard, 50) * 1000:5.0f} ms  p95 {np.percentile(heard, 95) * 1000:5.0f} ms  "
                          f"({len(rows[pipeline][n])} of {len(prompts)} turns answered)", flush=True)
                    shares(turns, "      ")
                    own[pipeline][n] = own_shares(turns)["engine's own"]
            finally:
                await eng.stop()
                if servers is not None:
                    await asyncio.to_thread(servers.stop)
    finally:
        pbx.stop()
    names = list(rows)
    print(f"turn latency at the caller ({args.pbx}), {args.mode} mode, {args.rounds} rounds of N callers asking at the same moment")
    print("| callers | " + " | ".join(f"{p} p50 | {p} p95" + (f" | {p} engine's own p95" if any(own[p].values()) else "") for p in names) + " |")
    print("|---|" + "|".join("---|---|" + ("---|" if any(own[p].values()) else "") for p in names))
    for n in callers:
        cells = []
        for p in names:
            v = rows[p].get(n) or [float("nan")]
            cells += [f"{np.percentile(v, 50) * 1000:.0f} ms", f"{np.percentile(v, 95) * 1000:.0f} ms"]
            if any(own[p].values()):
                o = own[p].get(n) or [float("nan")]
                cells.append(f"{np.percentile(o, 95) * 1000:.1f} ms")
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"pbx": args.pbx, "transport": args.transport, "mode": args.mode, "rounds": args.rounds,
                                               "turn_latencies_s": {p: {str(n): v for n, v in r.items()} for p, r in rows.items()}}, indent=2))
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=4)
    ap.add_argument("--mode", choices=["file", "stream"], default="file")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    ap.add_argument("--llm", help="providers.local.llm_model for this run (default: config.toml's)")
    ap.add_argument("--facts", action="store_true", help="the default profile gets bench/answers.py's dental practice facts")
    ap.add_argument("--pipeline", help="local, remote or local,remote: the scaling table instead (see above)")
    ap.add_argument("--callers", default="1,2,4,8", help="with --pipeline: callers asking at once, per row")
    ap.add_argument("--rounds", type=int, default=2, help="with --pipeline: rounds per row")
    ap.add_argument("--complete-end-ms", type=int, help="providers.local.complete_end_ms for this run (default: config.toml's)")
    ap.add_argument("--partial-interval-ms", type=int, help="providers.local.stt_partial_interval_ms for this run (default: config.toml's)")
    ap.add_argument("--stt-window-s", type=float, help="providers.local.stt_window_s for this run (default: config.toml's)")
    ap.add_argument("--tts-threads", type=int, help="providers.local.tts_threads for this run (default: config.toml's)")
    ap.add_argument("--hold-after-ms", type=int, default=0, help="providers.local.hold_after_ms (default 0: no hold line, the answers are timed)")
    ap.add_argument("--json", help="with --pipeline: also write the table's latencies here")
    add_transport_args(ap)
    return ap


def main() -> int:
    args = parser().parse_args()
    asyncio.run(scaling(args) if args.pipeline else main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
