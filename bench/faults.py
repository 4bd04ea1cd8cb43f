"""Every fault of the fault probe, with live calls: what the engine lost and how fast it recovered.

The engine runs in this process; the simulated PBX in its own process (so that its work does not
stall the engine's loop), with its fault knobs set over its /sim API. For each fault: calls are
live before it, the fault is injected, then a new call must be answered; the table says

  fault | calls before | calls lost | recovery | leftovers | note

"calls lost": calls that were live or placed during the fault and did not end the way their
caller ended them (setup failed, or the engine hung up). "recovery": from the end of the fault to
the first new call that is answered and bridged. "leftovers": channels and bridges of the engine's
still in the PBX once every call is over.

  .venv/bin/python bench/faults.py            # every fault (loads the local models once)
  .venv/bin/python bench/faults.py --only http,rtp
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Mapping, Sequence
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, scratch_media  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.engine import Engine  # noqa: E402
from providers.local.stages import WorkerLlm  # noqa: E402
from providers.pipeline import PipelineProvider  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
THANKS = str(SOUNDS / "demo-thanks.wav")  # 5.5 s
HELLO = str(SOUNDS / "hello-world.wav")
AGENT_PASS = str(SOUNDS / "agent-pass.wav")

BAD_FRAMES = ["[1,2,3]", "null", "42", '"x"', "true", '{"type":[]}', "not json", '{"type": "StasisStart"}']


@dataclass
class Row:
    fault: str
    before: int
    lost: int
    recovery_s: float | None
    leftovers: int
    note: str = ""


class LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


class Bench:
    def __init__(self, sim_url: str, eng: Engine) -> None:
        self.sim = sim_url
        self.eng = eng
        self.http = aiohttp.ClientSession()

    async def post(self, path: str, data: dict) -> dict:
        async with self.http.post(self.sim + path, json=data) as r:
            return await r.json()

    async def get(self, path: str) -> dict:
        async with self.http.get(self.sim + path) as r:
            return await r.json()

    async def call(self, script: Sequence[Mapping[str, object]], number: str = "") -> str:
        return (await self.post("/sim/calls", {"script": script, "caller_number": number}))["id"]

    async def live_calls(self, n: int, seconds: float = 8.0) -> list[str]:
        script: list[dict[str, object]] = [{"say": THANKS}, {"pause": seconds}]
        ids = [await self.call(script, f"55500{i:02d}") for i in range(n)]
        await self.until(lambda: sum(1 for s in self.eng.store if s.state.value == "streaming") >= n, 15)
        return ids

    async def until(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.02)
        return True

    async def recovery(self, since: float, timeout: float = 30.0) -> float | None:
        """Time from ``since`` until a new call is answered and bridged."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            cid = await self.call([{"say": HELLO}, {"pause": 0.3}])
            ok = await self.until(lambda cid=cid: (s := self.eng.store.get(cid)) is not None and s.state.value == "streaming", 5)
            if ok:
                return time.monotonic() - since
            await asyncio.sleep(0.1)
        return None

    async def outcome(self, ids: list[str], timeout: float = 40.0) -> tuple[int, int]:
        """(calls lost, leftovers) once every call of ``ids`` is over."""
        end = time.monotonic() + timeout
        reports = []
        while time.monotonic() < end:
            reports = [await self.get(f"/sim/calls/{i}") for i in ids]
            if all(r["done"] for r in reports) and len(self.eng.store) == 0:
                break
            await asyncio.sleep(0.2)
        lost = sum(1 for r in reports if not r["done"] or r["ended_by"] != "caller" or not r["bridged"])
        await asyncio.sleep(0.3)
        st = await self.get("/sim/state")
        return lost, len(st["leftover_channels"]) + len(st["leftover_bridges"])

    async def faults(self, **knobs) -> None:
        await self.post("/sim/faults", knobs)

    # ---- the faults
    async def bad_frames(self) -> Row:
        ids = await self.live_calls(3)
        t0 = time.monotonic()
        for _ in range(1000):
            await self.post("/sim/events/raw", {"frames": BAD_FRAMES})
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        return Row(f"bad ARI frames ({1000 * len(BAD_FRAMES)})", 3, lost, rec, left,
                   f"{self.eng.events.malformed_events} skipped in {time.monotonic() - t0:.1f} s, events task restarts 0")

    async def bad_replies(self) -> Row:
        self.eng.config.rtp.max_calls = 3
        ids = await self.live_calls(3, seconds=1.0)
        body = {"status": 200, "body": "<html>bad gateway</html>", "count": 100}
        await self.faults(bad_replies={"bridges.destroy": body, "channels.hangup": body, "bridges.addChannel": body})
        more = [await self.call([{"say": HELLO}, {"pause": 0.5}]) for _ in range(3)]
        await self.until(lambda: len(self.eng.store) == 0, 30)
        await self.faults()
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        self.eng.config.rtp.max_calls = 40
        return Row("non-JSON 2xx replies (max_calls=3)", 3, lost, rec, left,
                   f"{len(more)} calls set up during the fault failed cleanly; every slot freed")

    async def ws_blips(self) -> Row:
        await self.faults(drop_ws_after={"channels.externalMedia": {"block_s": 0.2}})
        ids = []
        for _ in range(40):
            # As on Asterisk, a call dialled while no socket is registered is refused by the PBX
            # itself: dial once the app is back (that is what the engine controls).
            for _ in range(100):
                if "aiagent" in (await self.get("/sim/state"))["apps"]:
                    break
                await asyncio.sleep(0.05)
            ids.append(await self.call([{"say": HELLO}, {"pause": 0.5}]))
            await asyncio.sleep(0.3)
        await self.faults()
        rec = await self.recovery(time.monotonic())
        failed_before = self.eng.store.calls_failed
        lost, left = await self.outcome(ids)
        return Row("WebSocket drop at each ExternalMedia (40 calls)", 0, lost, rec, left,
                   f"setups failed {failed_before}, reconnects {self.eng.events.connects - 1}")

    async def http_burst(self) -> Row:
        self.eng.config.playback.downstream_mode = "stream"
        ids = await self.live_calls(10, seconds=6.0)
        await asyncio.sleep(1.0)  # agent audio (the echo) flowing on every call
        timings = self.eng.rtp.timings
        timings.pacing_error.clear()
        await asyncio.sleep(1.0)
        quiet = timings.pacing_error.values()
        timings.pacing_error.clear()
        underruns = sum(s.rtp_out.underruns for s in self.eng.store)
        ctx = mp.get_context("spawn")
        statuses: dict[int, int] = {}
        during_parts = []
        burst_s = 0.0
        for _ in range(3):  # three bursts, pooled: one is too few ticks for a steady p99
            q = ctx.Queue()
            proc = ctx.Process(target=_burst, args=(f"http://127.0.0.1:{self.eng.health_server.port}/health", 1000, q))
            proc.start()
            await asyncio.sleep(0.3)  # the client process starting up
            timings.pacing_error.clear()
            t0 = time.monotonic()
            while proc.is_alive():
                await asyncio.sleep(0.05)
            burst_s += time.monotonic() - t0
            during_parts.append(timings.pacing_error.values())
            for k, v in q.get().items():
                statuses[k] = statuses.get(k, 0) + v
        during = np.concatenate(during_parts)
        underruns = sum(s.rtp_out.underruns for s in self.eng.store) - underruns
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        self.eng.config.playback.downstream_mode = "file"
        return Row("1,000 concurrent /health requests, 3 times", 10, lost, rec, left,
                   f"pacing p99 {np.percentile(quiet, 99) * 1000:.1f} ms quiet, {np.percentile(during, 99) * 1000:.1f} ms "
                   f"during the bursts ({burst_s:.1f} s, {len(during)} frames, max {during.max() * 1000:.1f} ms); "
                   f"underruns {underruns}; answers {statuses}")

    async def rtp_forged(self) -> Row:
        ids = await self.live_calls(3)
        await asyncio.sleep(0.5)
        for i in ids:
            await self.post(f"/sim/calls/{i}/forge", {"seq_ahead": 90})
        late = sum(s.rtp_in_late for s in self.eng.store)
        await asyncio.sleep(2.5)
        late = sum(s.rtp_in_late for s in self.eng.store) - late
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        return Row("forged RTP packet, sequence +90", 3, lost, rec, left,
                   f"genuine packets dropped as late: {late}; held on probation {self.eng.rtp.counters.probation}")

    async def rtp_flood(self) -> Row:
        ids = await self.live_calls(3)
        import socket

        before = self.eng.rtp.kernel_drops() or 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            pkt = bytes([0x80, 0]) + bytes(10) + b"\xff" * 160
            end = time.monotonic() + 2.0
            n = 0
            while time.monotonic() < end:
                for _ in range(200):
                    s.sendto(pkt, ("127.0.0.1", self.eng.rtp.port))
                n += 200
                await asyncio.sleep(0)
        await asyncio.sleep(1.2)
        drops = (self.eng.rtp.kernel_drops() or 0) - before
        sessions = [self.eng.store.get(i) for i in ids]
        expected = sum(x.rtp_in.expected for x in sessions if x)
        lost_pkts = sum(x.rtp_in.lost for x in sessions if x)
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        return Row("junk RTP flood (2 s)", 3, lost, rec, left, f"{n} junk datagrams sent; kernel drops shown in /health: {drops}; "
                   f"genuine packets lost meanwhile {lost_pkts} of {expected}")

    async def deepgram_down(self) -> Row:
        """Deepgram unreachable (its URL is a port nobody listens on), the local provider as fallback."""
        eng = self.eng
        os.environ["DEEPGRAM_API_KEY"] = "bench-key"
        eng.config.providers.deepgram.agent_url = f"ws://127.0.0.1:{free_port()}"
        eng.config.providers.fallback = "local"
        await eng.get_provider("local")
        await eng.set_default_provider("deepgram")
        greet = [{"wait_agent": 0.5, "timeout_s": 10}, {"pause": 0.3}]
        first = await self.call(greet)
        await self.until(lambda: not eng.providers["deepgram"].readiness().ready, 10)
        second = await self.call(greet)
        lost, left = await self.outcome([first, second])
        heard = [(await self.get(f"/sim/calls/{i}"))["first_agent_audio_s"] for i in (first, second)]
        fmt = ["never" if h is None else f"{h:.2f} s" for h in heard]
        rec = await self.recovery(time.monotonic())
        eng.default_provider = "echo"
        eng.config.providers.fallback = ""
        return Row("Deepgram unreachable (fallback: local)", 0, lost, rec, left,
                   f"dialling to the fallback's greeting: first call {fmt[0]}, next call {fmt[1]} (circuit open)")

    async def model_worker_kill(self) -> Row:
        eng = self.eng
        if "local" not in eng.providers:
            await eng.get_provider("local")
        await eng.set_default_provider("local")
        local = eng.providers["local"]
        assert isinstance(local, PipelineProvider) and local.models is not None and isinstance(local.models.llm, WorkerLlm)
        llm = local.models.llm.worker
        ids = [await self.call([{"wait_agent_done": 0.4}, {"say": AGENT_PASS}, {"wait_agent": 0.3, "timeout_s": 30},
                                {"wait_agent_done": 0.8, "timeout_s": 30}, {"say": HELLO}, {"wait_agent": 0.3, "timeout_s": 30},
                                {"wait_agent_done": 0.8, "timeout_s": 30}])]
        await self.until(lambda: llm.depth == 1, 30)
        assert llm.pid is not None
        os.kill(llm.pid, signal.SIGKILL)
        t0 = time.monotonic()
        await self.until(lambda: llm.state == "running" and llm.restarts == 1, 60)
        restart_s = time.monotonic() - t0
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids, 90)
        await eng.set_default_provider("echo")
        return Row("LLM worker SIGKILL mid-answer", 1, lost, rec, left, f"worker back in {restart_s:.1f} s; the turn got the apology")


def _burst(url: str, n: int, q) -> None:
    async def main() -> dict[int, int]:
        out: dict[int, int] = {}
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
            async def one() -> None:
                try:
                    async with s.get(url) as r:
                        await r.read()
                        out[r.status] = out.get(r.status, 0) + 1
                except Exception:
                    out[0] = out.get(0, 0) + 1

            await asyncio.gather(*(one() for _ in range(n)))
        return out

    q.put(asyncio.run(main()))


SCENARIOS = {
    "frames": Bench.bad_frames, "replies": Bench.bad_replies, "blips": Bench.ws_blips, "http": Bench.http_burst,
    "rtp": Bench.rtp_forged, "flood": Bench.rtp_flood, "deepgram": Bench.deepgram_down, "worker": Bench.model_worker_kill,
}


async def main_async(only: list[str]) -> None:
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "pbxsim.cli", "serve", "--port", str(port)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    media = tempfile.mkdtemp()
    env = {"ASTERISK_ARI_PORT": str(port), "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "echo", "AIAGENT_MEDIA_DIR": scratch_media(media)}
    cfg = load_config(None, env=env)
    cfg.asterisk.reconnect_initial_s = 0.05
    cfg.asterisk.reconnect_max_s = 0.5
    eng = Engine(cfg)
    counter = LogCounter()
    logging.getLogger().addHandler(counter)
    rows: list[Row] = []
    try:
        await asyncio.sleep(0.8)
        await eng.start()
        assert await eng.wait_ari_connected(10)
        b = Bench(f"http://127.0.0.1:{port}", eng)
        for name in only:
            logged = counter.n
            row = await SCENARIOS[name](b)
            row.note += f"; {counter.n - logged} warning lines logged"
            rows.append(row)
            print(f"  {row.fault}: done", flush=True)
        await b.http.close()
    finally:
        await eng.stop()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
    print()
    print(f"| {'fault':50s} | before | lost | recovery | leftovers | note")
    print(f"|{'-' * 52}|--------|------|----------|-----------|-----")
    for r in rows:
        rec = f"{r.recovery_s:.2f} s" if r.recovery_s is not None else "never"
        print(f"| {r.fault:50s} | {r.before:6d} | {r.lost:4d} | {rec:>8s} | {r.leftovers:9d} | {r.note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.ERROR)  # warnings are counted, not printed
    asyncio.run(main_async([s for s in args.only.split(",") if s]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
