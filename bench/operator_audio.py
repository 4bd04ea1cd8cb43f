"""The operator's audio latency: how late the caller hears an operator who took the call over, and
how late an operator listening in hears the caller.

    python bench/operator_audio.py [--bursts 20] [--calls 1] [--paths local,attached] [--pbx sim|asterisk]

The real engine with the simulator in one process (aiagent_tui.runtime.Runtime, sim=True), or with
--pbx asterisk on the real Asterisk 22 of ../shared/asterisk/ (its callers, pbxsim.asterisk's, in
this process too, hearing the engine over real RTP through Asterisk's bridge), reached
either directly (local: the terminal app running the engine) or over the console socket as
``aiagent-tui attach`` reaches it (attached: aiagent_tui.attach.AttachedEngine). --calls K calls at
once, each taken over or listened to by the same operator (a supervisor may listen to several).

- operator → caller: the operator has taken the calls over and sends 20 ms microphone frames in real
  time: 300 ms of silence, then a 200 ms 1 kHz burst, --bursts times. The latency runs from the
  moment the burst's first frame is handed to the engine (so the microphone's own buffering is left
  out) to the caller's phone receiving the first frame with the tone in it (the phone's clock). The
  microphone's 20 ms grid moves by a random part of a frame before each burst: the spread covers
  its phase against the engine's pacer.
- caller → operator (listening, ``m``): each caller says a 200 ms 1 kHz burst, --bursts times; the
  latency runs from the phone sending the burst's first frame to the operator's audio tap getting the
  first frame with its energy (the speaker's own buffering left out).

The PBX's callers, the engine and the attached console share one event loop here: the socket hop is real,
its process boundary is not.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import free_port  # noqa: E402

from aiagent_tui.attach import AttachedEngine  # noqa: E402
from aiagent_tui.runtime import Runtime  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.engine import Engine  # noqa: E402
from media.audio import pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402
from pbxsim.asterisk import AsteriskCallers, AsteriskInstance, shared_asterisk  # noqa: E402
from pbxsim.script import Pause  # noqa: E402
from pbxsim.server import SimPBX  # noqa: E402

RATE = 8000
FRAME = 160  # samples in 20 ms
TONE_HZ = 1000.0
SILENCE_FRAMES = 15  # 300 ms before each burst
BURST_FRAMES = 10  # 200 ms of tone
WINDOW_S = (SILENCE_FRAMES + BURST_FRAMES) * 0.02  # a burst heard later than this is missed
TAP_KEY = "bench"


def tone(n: int, start: int = 0) -> np.ndarray:
    return (8000 * np.sin(2 * np.pi * TONE_HZ * (start + np.arange(n)) / RATE)).astype(np.int16)


def has_tone(pcm: np.ndarray) -> bool:
    """The frame carries the burst: loud, and mostly 1 kHz (not the agent's beep, not line noise)."""
    if len(pcm) == 0 or np.abs(pcm).max() < 2000:
        return False
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    return float(spectrum[np.abs(freqs - TONE_HZ) < 60].sum() / spectrum.sum()) > 0.5


def first_after(frames: list[tuple[float, np.ndarray]], t0: float) -> float | None:
    """Seconds from ``t0`` to the first frame with the tone in it, within the burst's window."""
    hit = next((t for t, pcm in frames if t0 <= t < t0 + WINDOW_S and has_tone(pcm)), None)
    return None if hit is None else hit - t0


@dataclass
class Phone:
    """One caller, on either PBX: the engine's id for its call, what it heard (monotonic time, u-law),
    when each burst's first frame went out, and how to make it speak."""

    call_id: str
    heard: list[tuple[float, bytes]]
    said: list[tuple[float, float]]
    say: Callable[[bytes], None]


def sim_phone(pbx: SimPBX, n: int) -> Phone:
    rec = pbx.place_call(script=[Pause(3600.0)], caller_number=str(5550100 + n))
    assert rec.media is not None
    return Phone(rec.id, rec.media.agent_frames, rec.media.said, rec.media.say)


def asterisk_phone(callers: AsteriskCallers, n: int) -> Phone:
    call = callers.place_call([Pause(3600.0)], caller_number=str(5550100 + n))
    assert call.far_channel is not None

    return Phone(call.far_channel, call.agent_frames, call.said, call.say)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    missed: int = 0

    def add(self, latency: float | None) -> None:
        if latency is None:
            self.missed += 1
        else:
            self.latencies.append(latency)


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def operator_to_caller(eng: Engine, view: Engine | AttachedEngine, recs: list[Phone], bursts: int, by: str) -> Result:
    for rec in recs:
        view.take_over(rec.call_id, by)
    await wait_until(lambda: all((c := eng.store.get(r.call_id)) is not None and c.operator for r in recs), "the calls taken over")
    silence = bytes(2 * FRAME)
    burst = [tone(FRAME, FRAME * i).tobytes() for i in range(BURST_FRAMES)]
    starts: list[float] = []
    # A microphone's pace: one frame per call every 20 ms on an absolute schedule (no drift).
    phase = random.Random(50)
    next_at = time.monotonic()
    for i in range(bursts * (SILENCE_FRAMES + BURST_FRAMES) + SILENCE_FRAMES * 2):
        k = i % (SILENCE_FRAMES + BURST_FRAMES) - SILENCE_FRAMES
        voiced = 0 <= k and i < bursts * (SILENCE_FRAMES + BURST_FRAMES)
        if voiced and k == 0:
            starts.append(time.monotonic())
        for rec in recs:
            view.operator_audio(rec.call_id, burst[k] if voiced else silence, RATE)
        # A microphone's 20 ms grid has its own phase against the engine's pacer (it differs from
        # one operator's sound card to the next): moved by a random part of a frame early in each
        # silence, so the figures cover every phase rather than one, and the pacer has settled on
        # the new phase (any restart after the gap done) when the burst comes.
        next_at += 0.02 + (phase.uniform(0, 0.02) if k == -SILENCE_FRAMES else 0.0)
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    result = Result()
    for rec in recs:
        heard = [(t, np.frombuffer(ulaw_to_pcm16(p), np.int16)) for t, p in rec.heard]
        for t0 in starts:
            result.add(first_after(heard, t0))
    for rec in recs:
        view.hand_back(rec.call_id, by)
    await wait_until(lambda: all((c := eng.store.get(r.call_id)) is not None and not c.operator for r in recs), "the calls handed back")
    return result


async def caller_to_operator(view: Engine | AttachedEngine, recs: list[Phone], bursts: int) -> Result:
    heard: dict[str, list[tuple[float, np.ndarray]]] = {rec.call_id: [] for rec in recs}

    def tap_for(cid: str) -> Callable[[str, bytes, int], None]:
        def tap(source: str, pcm16: bytes, rate: int) -> None:
            if source == "caller":  # the agent's beeps after each burst go to the tap too
                heard[cid].append((time.monotonic(), np.frombuffer(pcm16, np.int16)))
        return tap

    for rec in recs:
        assert view.set_audio_tap(rec.call_id, tap_for(rec.call_id), key=TAP_KEY)
    # Listening over the socket starts when the engine has the console's tap: let the phones talk
    # until every listener hears them.
    noise = pcm16_to_ulaw(tone(FRAME * BURST_FRAMES).tobytes())
    for rec in recs:
        rec.say(noise)
    await wait_until(lambda: all(heard.values()), "every listener hearing its caller")
    await asyncio.sleep(WINDOW_S)
    said_before = {rec.call_id: len(rec.said) for rec in recs}
    for _ in range(bursts):
        for rec in recs:
            rec.say(noise)
        await asyncio.sleep(WINDOW_S)
    await asyncio.sleep(WINDOW_S)
    result = Result()
    for rec in recs:
        for first_frame, _onset in rec.said[said_before[rec.call_id]:]:
            result.add(first_after(heard[rec.call_id], first_frame))
    for rec in recs:
        view.set_audio_tap(rec.call_id, None, key=TAP_KEY)
    return result


async def run(bursts: int, calls: int, paths: list[str], pbx_kind: str) -> dict[tuple[str, str], Result]:
    scratch = Path(tempfile.mkdtemp(prefix="aiagent-bench-operator-"))
    console = scratch / "engine.sock"  # a Unix socket's path has at most 107 bytes: keep it short
    env = {"ASTERISK_ARI_PORT": str(free_port()), "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_MEDIA_DIR": str(scratch / "media"),
           "AIAGENT_PROVIDER": "tone", "AIAGENT_CONSOLE_SOCKET": str(console)}
    asterisk: AsteriskInstance | None = None
    callers: AsteriskCallers | None = None
    if pbx_kind == "asterisk":
        asterisk = AsteriskInstance(shared_asterisk(ROOT), scratch / "asterisk")
        await asyncio.to_thread(asterisk.start)
        env.update({"ASTERISK_ARI_PORT": str(asterisk.http_port), "ASTERISK_ARI_USERNAME": "ari", "ASTERISK_ARI_PASSWORD": "ari"})
    rt = Runtime(load_config(None, env=env), sim=asterisk is None, demo_interval_s=None)
    attached = AttachedEngine(console)
    out: dict[tuple[str, str], Result] = {}
    try:
        eng = await rt.start()
        if not await eng.wait_ari_connected(15):
            raise RuntimeError(f"the engine did not reach the PBX: {eng.events.last_error}")
        if asterisk is not None:
            callers = AsteriskCallers(asterisk)
            await callers.start()
            recs = [asterisk_phone(callers, i) for i in range(calls)]
        else:
            assert rt.pbx is not None
            recs = [sim_phone(rt.pbx, i) for i in range(calls)]
        await wait_until(lambda: all((c := eng.store.get(r.call_id)) is not None and c.bridged_at is not None for r in recs), "the calls bridged")
        if "attached" in paths:
            await attached.connect()
            await wait_until(lambda: {r.call_id for r in recs} <= {c.call_id for c in attached.store.calls}, "the calls in the attached view")
        user = getpass.getuser()
        for path in paths:
            view: Engine | AttachedEngine = eng if path == "local" else attached
            by = f"{user} (local)" if path == "local" else ""  # attached: the engine names the socket's peer
            out[("operator → caller", path)] = await operator_to_caller(eng, view, recs, bursts, by)
            out[("caller → operator", path)] = await caller_to_operator(view, recs, bursts)
    finally:
        await attached.close()
        await rt.stop()
        if callers is not None:
            await callers.stop()
        if asterisk is not None:
            await asyncio.to_thread(asterisk.stop)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=20, help="bursts per direction, path and call")
    ap.add_argument("--calls", type=int, default=1, help="calls at once, all taken over or listened to by one operator")
    ap.add_argument("--paths", default="local,attached", help="local (the engine's own app), attached (over the console socket)")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    args = ap.parse_args()
    paths = args.paths.split(",")
    results = asyncio.run(run(args.bursts, args.calls, paths, args.pbx))
    print(f"operator audio ({args.pbx}): {args.bursts} bursts per direction, {args.calls} call(s) at once, the caller's and the operator's clocks")
    print(f"  {'direction':18s} {'path':9s} {'p50':>8s} {'p95':>8s} {'max':>8s}  heard")
    for (direction, path), r in results.items():
        if r.latencies:
            ms = np.array(r.latencies) * 1000
            figures = f"{np.percentile(ms, 50):5.1f} ms {np.percentile(ms, 95):5.1f} ms {ms.max():5.1f} ms"
        else:
            figures = f"{'-':>8s} {'-':>8s} {'-':>8s}"
        print(f"  {direction:18s} {path:9s} {figures}  {len(r.latencies)}/{len(r.latencies) + r.missed}")
    return 0 if all(r.latencies and not r.missed for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
