"""Is the terminal app responsive with many live calls?

    python bench/tui_load.py [--calls 50] [--seconds 20]

Runs the real app headless (Textual's Pilot) against the simulator in its own process (as Asterisk
would be) with N concurrent echo calls of real speech, and measures what an operator would feel: how long each 10 Hz refresh of the
panes takes, how late the event loop runs (a 50 ms timer's lateness: what a key press waits at
worst), and the engine's outbound RTP pacing meanwhile (stream mode, the mode the UI can disturb).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiagent_tui.runtime import Runtime  # noqa: E402
from aiagent_tui.app import AiAgentApp  # noqa: E402
from engine.config import load_config  # noqa: E402
from common import free_port, http_json, scratch_media  # noqa: E402

SPEECH = "/usr/share/asterisk/sounds/en_US_f_Allison/demo-congrats.wav"  # 15 s


async def run(calls: int, seconds: float) -> None:
    ari = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "pbxsim.cli", "serve", "--port", str(ari)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _run(ari, calls, seconds)
    finally:
        sim.terminate()
        sim.wait(10)


async def _run(ari: int, calls: int, seconds: float) -> None:
    await asyncio.sleep(0.5)
    cfg = load_config(None, env={"ASTERISK_ARI_PORT": str(ari), "RTP_PORT": "0", "HEALTH_PORT": "0",
                                 "AIAGENT_MEDIA_DIR": scratch_media(), "AIAGENT_PROVIDER": "echo",
                                 "AIAGENT_DOWNSTREAM_MODE": "stream", "AIAGENT_MAX_CALLS": str(calls + 5)})
    app = AiAgentApp(rt := Runtime(cfg))
    refresh_times: list[float] = []
    real_refresh = app.refresh_panes

    def timed_refresh() -> None:
        t0 = time.perf_counter()
        real_refresh()
        refresh_times.append(time.perf_counter() - t0)

    app.refresh_panes = timed_refresh  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        while rt.engine is None or not rt.engine.ari_connected:
            await pilot.pause(0.1)
        eng = rt.engine
        for i in range(calls):
            await asyncio.to_thread(http_json, f"http://127.0.0.1:{ari}/sim/calls", {"script": [{"say": SPEECH}, {"pause": seconds}], "caller_number": f"7{i:04d}"})
        while len(eng.store) < calls:
            await pilot.pause(0.1)
        await pilot.pause(2.0)
        refresh_times.clear()
        eng.rtp.timings.clear()
        lags = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            t = loop.time()
            await asyncio.sleep(0.05)
            lags.append(loop.time() - t - 0.05)
        p = eng.rtp.timings.pacing_error
        print(f"terminal app under load: {calls} live echo calls, {seconds:.0f} s, panes refreshed at 10 Hz")
        print(f"  refresh of all panes       p50 {np.percentile(refresh_times, 50) * 1000:.1f} ms   p99 {np.percentile(refresh_times, 99) * 1000:.1f} ms   ({len(refresh_times)} refreshes)")
        print(f"  event loop lateness        p50 {np.percentile(lags, 50) * 1000:.1f} ms   p99 {np.percentile(lags, 99) * 1000:.1f} ms")
        print(f"  RTP pacing error meanwhile p50 {p.percentile_ms(50):.2f} ms   p99 {p.percentile_ms(99):.2f} ms")
        await pilot.press("q")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    asyncio.run(run(args.calls, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
