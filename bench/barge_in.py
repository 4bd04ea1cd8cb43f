"""Barge-in reaction time: how fast the agent stops when the caller talks over it.

    python bench/barge_in.py [--calls 20] [--concurrency 5] [--modes stream,file]

The simulator (aiagent-sim serve) and the engine (aiagent-tui --no-ui, tone provider answering
each utterance with a 6 s beep) run as separate processes. Each simulated caller says a prompt,
waits until it has heard 0.6 s of the beep, then says another prompt over it. The reaction is
measured on the caller's clock, from the onset of the caller's speech to the last agent audio
the caller heard. Goals: p50 80 ms in stream mode, 150 ms in file mode. --pbx asterisk: the same callers on the real
Asterisk 22 of ../shared/asterisk/ (aiagent-sim asterisk), the reaction taken at the caller's side.
--transport rtp|audiosocket|websocket: how Asterisk hands the calls' audio to the engine ([media]
transport; --set SECTION.KEY=VALUE for more). --json PATH also writes each mode's reactions there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import BenchPbx, add_transport_args, free_port, http_json, scratch_media, transport_toml

ROOT = Path(__file__).resolve().parent.parent
SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
BIN = Path(sys.executable).parent


def run_mode(mode: str, calls: int, concurrency: int, pbx_kind: str, transport: str = "rtp", sets: list[str] | tuple[str, ...] = ()) -> tuple[list[float], int]:
    """The barge-in reactions at the callers (seconds) and the calls in which none was heard."""
    health = free_port()
    media = tempfile.mkdtemp()
    pbx = BenchPbx(pbx_kind)
    env = {**os.environ, **pbx.engine_env, "HEALTH_PORT": str(health), "RTP_PORT": str(free_port()),
           "AIAGENT_PROVIDER": "tone", "AIAGENT_DOWNSTREAM_MODE": mode, "AIAGENT_MEDIA_DIR": scratch_media(media)}
    cfg = Path(media) / "config.toml"
    cfg.write_text("[providers.tone]\nduration_ms = 6000\n" + transport_toml(transport, sets))
    # The engine's output to a file: what it said when it did not come up is the reason given.
    eng_log = Path(media) / "engine.log"
    with eng_log.open("w") as out:
        eng = subprocess.Popen([BIN / "aiagent-tui", "--config", str(cfg), "--no-ui"], env=env, stdout=subprocess.DEVNULL, stderr=out)
    sim_url = pbx.url
    try:
        for _ in range(200):
            try:
                if http_json(f"http://127.0.0.1:{health}/health")["ari_connected"]:
                    break
            except OSError:
                pass
            if eng.poll() is not None:
                tail = eng_log.read_text().strip().splitlines()[-5:]
                raise RuntimeError(f"the engine exited ({eng.returncode}): " + " / ".join(tail))
            time.sleep(0.05)
        script = [
            {"say": str(SOUNDS / "hello-world.wav")},
            {"wait_agent": 0.6},
            {"say": str(SOUNDS / "agent-pass.wav")},
            {"wait_agent_done": 0.5},
        ]
        reactions: list[float] = []
        missed = 0
        done = 0
        while done < calls:
            batch = [http_json(f"{sim_url}/sim/calls", {"script": script, "caller_number": str(2000 + done + i)})["id"] for i in range(min(concurrency, calls - done))]
            while True:
                reports = [http_json(f"{sim_url}/sim/calls/{cid}") for cid in batch]
                if all(r["done"] for r in reports):
                    break
                time.sleep(0.2)
            for r in reports:
                if r["barge_in_reactions_s"]:
                    reactions.extend(r["barge_in_reactions_s"])
                else:
                    missed += 1
            done += len(batch)
        return reactions, missed
    finally:
        if eng.poll() is None:
            eng.send_signal(signal.SIGTERM)
            eng.wait(15)
        pbx.stop()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=5)
    ap.add_argument("--modes", default="stream,file")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    ap.add_argument("--json", help="also write each mode's reactions (seconds) and missed barge-ins here")
    add_transport_args(ap)
    return ap


def measure(args: argparse.Namespace) -> dict[str, dict]:
    """Each mode's reactions at the caller (seconds) and barge-ins missed, printed as it goes."""
    limits = {"stream": 0.080, "file": 0.150}
    print(f"barge-in benchmark ({args.pbx}, {args.transport}): {args.calls} calls per mode, {args.concurrency} at a time, the caller's clock")
    out: dict[str, dict] = {}
    for mode in args.modes.split(","):
        reactions, missed = run_mode(mode, args.calls, args.concurrency, args.pbx, args.transport, args.media_set)
        out[mode] = {"reactions_s": reactions, "missed": missed}
        r = np.array(reactions) * 1000
        if not len(r):
            print(f"  {mode:6s}  no barge-in heard   barge-ins missed: {missed}")
            continue
        within = int(np.sum(r < limits[mode] * 1000))
        print(
            f"  {mode:6s}  p50 {np.percentile(r, 50):6.1f} ms   p99 {np.percentile(r, 99):6.1f} ms   max {r.max():6.1f} ms"
            f"   within {limits[mode] * 1000:.0f} ms: {within}/{len(r)}   barge-ins missed: {missed}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"pbx": args.pbx, "transport": args.transport, "modes": out}, indent=2))
    return out


def main() -> int:
    measure(parser().parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
