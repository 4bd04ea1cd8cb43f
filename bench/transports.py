"""The media transports side by side: the same four measurements, at the caller's side, per transport.

    python bench/transports.py [--pbx sim|asterisk] [--transports rtp,audiosocket,websocket]
        [--callers 1,3] [--rounds 2] [--barge-calls 20] [--cpu-calls 10] [--cpu-turns 4]
        [--echo-calls 100] [--echo-seconds 20] [--only turn,barge,cpu,echo] [--set SECTION.KEY=VALUE] [--json PATH]

For each transport ([media] transport of the engine: rtp, audiosocket, websocket), one after the
other and never two measurements at once (each one's figures are its own on a small machine):

  - turn latency at the caller, p50/p95, with 1 and 3 callers asking at the same moment (the local
    pipeline: bench/turn_latency.py --pipeline local);
  - barge-in: how fast the agent stops when the caller talks over it, as the caller hears it, p50/p95
    (bench/barge_in.py, stream mode);
  - CPU per call: the engine and its model workers, % of one core per active call with --cpu-calls
    callers talking at once, and the engine process's own share in brackets (what a transport
    changes) (bench/cpu.py);
  - echo calls: --echo-calls concurrent echo calls for --echo-seconds: the frames of their own
    speech the callers never heard back, of those they should have; the engine's late frames (sent
    over 20 ms late) and underruns (a playing stream ran dry) in the measured window
    (bench/media_load.py).

Each measurement is the benchmark script's own (imported, run in this process); its full output
goes to a file named under the table, and under the table is the command that repeats each row's
measurement alone. Before its measurements a transport is tried with one echo call: one that cannot
carry it (its server did not start, Asterisk or the simulator refused its channel) says why in its
row, and the others still run. Downstream audio is streamed (--mode stream): in file mode Asterisk
plays the agent's audio itself, and no transport carries it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import barge_in  # noqa: E402
import cpu  # noqa: E402
import media_load  # noqa: E402
import turn_latency  # noqa: E402
from common import TRANSPORTS, BenchPbx, apply_transport, scratch_media  # noqa: E402
from engine.config import ConfigError, load_config  # noqa: E402
from engine.engine import Engine  # noqa: E402
from engine.sessions import CallEnded, CallLog  # noqa: E402

MEASURES = ("turn", "barge", "cpu", "echo")
SCRIPTS = {"turn": "turn_latency.py", "barge": "barge_in.py", "cpu": "cpu.py", "echo": "media_load.py"}
PROBE_WAV = Path("/usr/share/asterisk/sounds/en_US_f_Allison/hello-world.wav")


def one_line(text: str) -> str:
    """A reason as one table cell: its lines joined, pydantic's link to its docs left out."""
    return " ".join(ln.strip() for ln in text.splitlines() if ln.strip() and "errors.pydantic.dev" not in ln).replace("|", "/")


def transport_argv(transport: str, sets: list[str]) -> list[str]:
    out = ["--transport", transport]
    for s in sets:
        out += ["--set", s]
    return out


def commands(args: argparse.Namespace, transport: str) -> dict[str, list[str]]:
    """Each measurement's command-line arguments for ``transport`` (its script's own options)."""
    t = ["--pbx", args.pbx, *transport_argv(transport, args.media_set)]
    return {
        "turn": ["--pipeline", "local", "--callers", args.callers, "--rounds", str(args.rounds), "--mode", args.mode, *t],
        "barge": ["--calls", str(args.barge_calls), "--concurrency", str(args.barge_concurrency), "--modes", args.mode, *t],
        "cpu": ["--calls", str(args.cpu_calls), "--turns", str(args.cpu_turns), "--mode", args.mode, "--skip-idle", *t],
        "echo": ["--calls", str(args.echo_calls), "--seconds", str(args.echo_seconds), "--mode", args.mode, "--no-floor", *t],
    }


def command_line(measure: str, argv: list[str]) -> str:
    return shlex.join(["python", f"bench/{SCRIPTS[measure]}", *argv])


async def probe(pbx_kind: str, transport: str, sets: list[str]) -> str | None:
    """One echo call over ``transport``: None if its caller heard its echo, else why not (the
    call's end as the engine logged it, or the engine's own failure)."""
    try:
        pbx = BenchPbx(pbx_kind)
    except Exception as e:
        return f"the {pbx_kind} PBX did not start: {e}"
    env = {**pbx.engine_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "echo", "AIAGENT_MEDIA_DIR": scratch_media(), "AIAGENT_HISTORY": "false"}
    eng: Engine | None = None
    try:
        try:
            eng = Engine(apply_transport(load_config(None, env=env), transport, sets))
        except (ConfigError, ValueError) as e:
            return f"its configuration: {e}"
        sub = eng.store.subscribe()
        try:
            await eng.start()
        except Exception as e:
            return f"the engine did not start: {type(e).__name__}: {e}"
        if not await eng.wait_ari_connected(10):
            return "the engine did not connect to ARI within 10 s"
        script = [{"pause": 1.0}, {"say": str(PROBE_WAV)}, {"wait_agent": 0.5, "timeout_s": 10}]
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{pbx.url}/sim/calls", json={"script": script, "caller_number": "7000"}) as r:
                cid = (await r.json())["id"]
            deadline = time.monotonic() + 40
            while True:
                async with http.get(f"{pbx.url}/sim/calls/{cid}") as r:
                    report = await r.json()
                if report["done"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
        if report["agent_audio_seconds"] >= 0.3:
            return None
        # Why: the engine's words for the call's failure, else the caller's.
        problems: list[str] = []
        while (ev := sub.get_nowait()) is not None:
            if isinstance(ev, CallLog) and ev.level >= logging.WARNING:
                problems.append(ev.message)
            elif isinstance(ev, CallEnded) and ev.reason and not problems:  # a failed set-up's reason is in its log already
                problems.append(f"the call ended: {ev.reason}")
        if report.get("error"):
            problems.append(f"the caller: {report['error']}")
        if not report["done"]:
            problems.append("the call was still on after 40 s")
        return "; ".join(dict.fromkeys(problems)) or f"the caller heard no echo ({report['agent_audio_seconds']} s of agent audio)"
    finally:
        if eng is not None:
            await eng.stop()
        pbx.stop()


def run_measure(measure: str, argv: list[str], out: Path) -> dict[str, Any]:
    """One measurement by its script's own code, its printed output to ``out``."""
    with out.open("w") as f, contextlib.redirect_stdout(f):
        print("$ " + command_line(measure, argv), flush=True)
        if measure == "turn":
            return {"rows": asyncio.run(turn_latency.scaling(turn_latency.parser().parse_args(argv)))}
        if measure == "barge":
            return barge_in.measure(barge_in.parser().parse_args(argv))
        if measure == "cpu":
            return asyncio.run(cpu.measure(cpu.parser().parse_args(argv)))
        return media_load.measure(media_load.parser().parse_args(argv))


def ms(values: list[float]) -> str:
    if not values:
        return "none heard"
    return f"{np.percentile(values, 50) * 1000:.0f} / {np.percentile(values, 95) * 1000:.0f} ms"


def cells(measure: str, figures: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The table's cells of one measurement."""
    if measure == "turn":
        rows = figures["rows"]["local"]
        return [ms(rows.get(int(n), [])) for n in args.callers.split(",")]
    if measure == "barge":
        m = figures[args.mode]
        return [ms(m["reactions_s"]) + (f" ({m['missed']} missed)" if m["missed"] else "")]
    if measure == "cpu":
        a = figures["active"][str(args.cpu_calls)]
        return [f"{a['pct_per_call']:.1f} % ({a['by_process'].get('engine', 0.0):.1f} %)"]
    e = figures["engine"]
    return [f"{e['caller_frames_lost']} of {e['caller_frames_expected']} / {e['late_frames']} / {e['underruns_window']}"]


def headers(args: argparse.Namespace, measures: list[str]) -> list[str]:
    out = []
    for m in measures:
        if m == "turn":
            out += [f"turn p50 / p95, {n} caller{'s' if n != '1' else ''}" for n in args.callers.split(",")]
        elif m == "barge":
            out.append("barge-in p50 / p95")
        elif m == "cpu":
            out.append(f"CPU per call, {args.cpu_calls} call{'s' if args.cpu_calls != 1 else ''} (engine)")
        else:
            out.append(f"{args.echo_calls} echo calls: lost / late / underruns")
    return out


def width(measure: str, args: argparse.Namespace) -> int:
    return len(args.callers.split(",")) if measure == "turn" else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="which, in this order (default all: rtp,audiosocket,websocket)")
    ap.add_argument("--transport", dest="transports", help="the same as --transports (one transport)")
    ap.add_argument("--only", default=",".join(MEASURES), help="which measurements (turn,barge,cpu,echo; default all)")
    ap.add_argument("--mode", choices=["stream"], default="stream", help="how the agent's audio goes down (stream: over the transport)")
    ap.add_argument("--callers", default="1,3", help="turn latency: callers asking at once, per column")
    ap.add_argument("--rounds", type=int, default=2, help="turn latency: rounds per number of callers")
    ap.add_argument("--barge-calls", type=int, default=20)
    ap.add_argument("--barge-concurrency", type=int, default=5)
    ap.add_argument("--cpu-calls", type=int, default=10, help="CPU: callers talking at once")
    ap.add_argument("--cpu-turns", type=int, default=4, help="CPU: questions per call")
    ap.add_argument("--echo-calls", type=int, default=100)
    ap.add_argument("--echo-seconds", type=float, default=20.0)
    ap.add_argument("--set", dest="media_set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a transport setting for every run, e.g. audiosocket.form=dialplan (repeatable)")
    ap.add_argument("--out", help="where the measurements' output and the engine's log go (default: a new temporary directory)")
    ap.add_argument("--json", help="also write every transport's figures here")
    args = ap.parse_args()
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    measures = [m.strip() for m in args.only.split(",") if m.strip()]
    for t in transports:
        if t not in TRANSPORTS:
            ap.error(f"--transports: {t!r} is not one of {', '.join(TRANSPORTS)}")
    for m in measures:
        if m not in MEASURES:
            ap.error(f"--only: {m!r} is not one of {', '.join(MEASURES)}")
    try:  # a --set the engine would refuse is the command's mistake, not a transport's
        for t in transports:
            apply_transport(load_config(None, env={}), t, args.media_set)
    except (ConfigError, ValueError) as e:
        ap.error(f"--set: {one_line(str(e))}")
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="aiagent-bench-transports-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    # The engines run in this process (the probes, turn latency, CPU): their log to a file, not the table.
    logging.basicConfig(filename=out_dir / "engine.log", level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    print(f"media transports on {args.pbx}: {', '.join(transports)}; {', '.join(measures)}; the output of each in {out_dir}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for t in transports:
        row: dict[str, Any] = {"error": None, "figures": {}, "failed": {}, "commands": {}}
        results[t] = row
        why = asyncio.run(probe(args.pbx, t, args.media_set))
        if why is not None:
            row["error"] = why = one_line(why)
            print(f"  {t}: not set up: {why}", flush=True)
            continue
        argvs = commands(args, t)
        for m in measures:
            row["commands"][m] = command_line(m, argvs[m])
            started = time.monotonic()
            try:
                row["figures"][m] = run_measure(m, argvs[m], out_dir / f"{t}-{m}.txt")
                note = "done"
            except Exception as e:
                with (out_dir / f"{t}-{m}.txt").open("a") as f:
                    traceback.print_exc(file=f)
                row["failed"][m] = one_line(f"{type(e).__name__}: {e}")
                note = f"failed: {row['failed'][m]}"
            print(f"  {t} {m}: {note} ({time.monotonic() - started:.0f} s)", flush=True)

    print()
    print(f"media transports at the caller ({args.pbx}, {args.mode} mode); turn latency and barge-in p50 / p95; "
          "CPU % of one core per active call (the engine process's own); echo frames lost at the caller, late frames, underruns")
    head = ["transport", *headers(args, measures)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for t, row in results.items():
        if row["error"] is not None:
            print(f"| {t} | not set up: {row['error']} |" + " |" * (len(head) - 2))
            continue
        line: list[str] = []
        for m in measures:
            if m in row["failed"]:
                line += [f"failed: {row['failed'][m]}"] * width(m, args)
            else:
                try:
                    line += cells(m, row["figures"][m], args)
                except (KeyError, TypeError, ValueError) as e:
                    line += [f"no figure: {type(e).__name__}: {e}"] * width(m, args)
        print(f"| {t} | " + " | ".join(line) + " |")
    print()
    print("the commands (each row's measurements alone):")
    for t, row in results.items():
        for m, cmd in row["commands"].items():
            print(f"  {t:11s} {m:5s}  {cmd}")
    if args.json:
        Path(args.json).write_text(json.dumps({"pbx": args.pbx, "mode": args.mode, "transports": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
