"""Media path benchmark: N concurrent echo calls through the PBX simulator.

    python bench/media_load.py [--calls 50] [--seconds 30] [--mode stream|file] [--pbx sim|asterisk] [--transport rtp|audiosocket|websocket]

Phase 1 runs the simulator (aiagent-sim serve) and the engine with the echo provider in separate
processes and measures the engine: RTP in/out, loss, per-packet processing time, outbound pacing
error, CPU seconds per call-minute. ``--mode`` picks how the echo goes back: ``stream`` (RTP paced by
the engine, the default here) or ``file`` (u-law files that the simulator plays on each bridge).
Phase 2 measures the floor: a bare asyncio UDP loop doing the same per-packet work (parse, u-law
decode, 8->16 kHz, 16->8 kHz, u-law encode, packetize, 20 ms paced send) for the same number of
streams, fed by a plain RTP generator. The engine/floor CPU ratio is what the engine's own
structure costs on top of the unavoidable work (--no-floor: phase 1 only).

At the callers: each hears its own speech back; the frames of it it never heard are the frames lost
at the caller (the caller stays on the line until the echo's tail is back). The speech's near-silent
frames are made digital silence, so that a caller on the real Asterisk (which counts only the
frames it can hear) knows which frames it must hear; the simulator's caller hears every frame.

--pbx asterisk: the same callers on the real Asterisk 22 of ../shared/asterisk/ (aiagent-sim
asterisk), its RTP port range sized for them (each caller's own ExternalMedia takes ports as the
engine's does, and Asterisk 22 crashes when they run out); the simulator's own
figures (its stalls, its sockets' drops) are not there. --transport rtp|audiosocket|websocket: how
Asterisk hands the calls' audio to the engine ([media] transport; --set SECTION.KEY=VALUE for more).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import wave
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.audio import Resampler, pcm16_to_ulaw, ulaw_to_pcm16  # noqa: E402
from media.rtp import HEADER, build_packet  # noqa: E402
from pbxsim.media import CATCHUP_TICKS  # noqa: E402
from common import BenchPbx, add_transport_args, apply_transport, free_port, http_json, scratch_media  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
SIM_RTP_PORTS = range(30000, 31999)
PROMPTS = ["demo-congrats.wav", "demo-thanks.wav", "agent-pass.wav", "vm-intro.wav"]
QUIET_DBFS = -40.0  # a speech frame below this is sent as digital silence (the real Asterisk's caller hears from -45)
FRAME_SAMPLES = 160


def speech_wav(seconds: float, out: Path) -> Path:
    """Real speech at least ``seconds`` long: Asterisk prompts back to back, each 20 ms frame
    either louder than QUIET_DBFS or digital silence."""
    frames = b""
    while len(frames) < seconds * 16000:
        for name in PROMPTS:
            with wave.open(str(SOUNDS / name)) as w:
                frames += w.readframes(w.getnframes())
    pcm = np.frombuffer(frames[: int(seconds * 8000) * 2], dtype=np.int16).copy()
    whole = len(pcm) - len(pcm) % FRAME_SAMPLES
    by_frame = pcm[:whole].reshape(-1, FRAME_SAMPLES)
    rms = np.sqrt(np.mean(by_frame.astype(np.float64) ** 2, axis=1))
    by_frame[20 * np.log10(np.maximum(rms, 1e-9) / 32768) < QUIET_DBFS] = 0
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(pcm.tobytes())
    return out


def audible_frames(wav: Path) -> np.ndarray:
    """Whether each 20 ms frame of ``wav`` (as speech_wav made it) is heard, 1 or 0."""
    with wave.open(str(wav)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    whole = len(pcm) - len(pcm) % FRAME_SAMPLES
    return np.any(pcm[:whole].reshape(-1, FRAME_SAMPLES) != 0, axis=1).astype(np.int64)


def lost_at_callers(reports: list[dict], wav: Path, pbx_kind: str) -> tuple[int, int]:
    """(frames the callers should have heard back, frames of those they did not hear). The
    simulator's caller hears every frame the engine sends; the real Asterisk's caller only the
    audible ones, so only its audible frames are expected back."""
    audible = np.cumsum(audible_frames(wav))
    expected = lost = 0
    for r in reports:
        sent = int(r["caller_frames_sent"])
        want = sent if pbx_kind == "sim" else int(audible[min(sent, len(audible)) - 1]) if sent else 0
        heard = round(float(r["agent_audio_seconds"]) / 0.02)
        expected += want
        lost += max(0, want - heard)
    return expected, lost


def udp_drops(ports: range) -> int:
    """The kernel's drop count (no room in the socket's buffer) summed over the UDP sockets bound
    to ``ports`` on this host: the simulator's ExternalMedia ports."""
    total = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) in ports:
                total += int(fields[12])
    return total


def pct(values: list[float] | np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else 0.0


# ---- phase 1: the engine ------------------------------------------------------------------


STALL_S = 0.030  # the engine's loop silent this long: every call's input waits (the echo comes late)


class StallWatch:
    """Where the engine's event loop stalls: the loop beats every 5 ms; a thread that finds the beat
    STALL_S old records the main thread's stack then (the code that holds the loop), and the
    garbage collector's passes are timed, since a full collection of many calls' objects holds it
    too."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import gc
        import threading

        self.loop = loop
        self.beat = time.monotonic()
        self.stalls: list[tuple[float, str]] = []  # (how long, where)
        self.gc_passes: list[tuple[int, float]] = []  # (generation, seconds) of passes over 5 ms
        self._gc_t0 = 0.0
        self._main = threading.main_thread().ident or 0
        self.on = False
        loop.call_soon(self._tick)
        gc.callbacks.append(self._gc)
        threading.Thread(target=self._watch, daemon=True).start()

    def _tick(self) -> None:
        self.beat = time.monotonic()
        self.loop.call_later(0.005, self._tick)

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self.on and (d := time.perf_counter() - self._gc_t0) > 0.005:
            self.gc_passes.append((info["generation"], d))

    def _watch(self) -> None:
        import traceback

        seen = 0.0  # the beat of the stall already recorded
        while True:
            time.sleep(0.002)
            beat = self.beat
            if not self.on or time.monotonic() - beat < STALL_S:
                if seen and beat != seen and self.stalls:  # the stall ended: its length
                    self.stalls[-1] = (beat - seen, self.stalls[-1][1])
                    seen = 0.0
                continue
            if beat == seen:
                continue
            seen = beat
            frame = sys._current_frames().get(self._main)
            stack = traceback.extract_stack(frame) if frame is not None else []
            ours = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in stack if str(ROOT) in f.filename and "bench" not in f.filename]
            self.stalls.append((STALL_S, " < ".join(reversed(ours[-3:])) or (stack[-1].name if stack else "?")))

    def report(self) -> dict:
        from collections import Counter

        where = Counter(w for _, w in self.stalls)
        return {
            "stalls": len(self.stalls),
            "stall_max_ms": max((d for d, _ in self.stalls), default=0.0) * 1000,
            "stall_where": where.most_common(4),
            "gc_passes": len(self.gc_passes),
            "gc_max_ms": max((d for _, d in self.gc_passes), default=0.0) * 1000,
            "gc_full": sum(1 for g, _ in self.gc_passes if g == 2),
        }


INPUT_GAP_S = 0.030  # a call's packets this far apart: its input paused (they are due every 20 ms)


class UnderrunWatch:
    """When the streams ran dry, and whether their input had paused: each call's packets that came
    INPUT_GAP_S or more apart, and the time of each underrun (counted when the stream's audio
    comes again). The echo plays a frame ``delay`` after it came in, so it can only be as early as
    its input: an underrun that follows a pause in its own call's input by that delay is the
    input's (the sender's, the kernel's, or the engine not reading its socket: the loop stalls
    below say which), the others the pacer's."""

    def __init__(self, eng: Any) -> None:
        from engine.media import CallMedia
        from media.rtp import RtpPacket

        self.on = False
        self.delay = eng.config.providers.echo.delay_ms / 1000
        self.gaps: dict[CallMedia, list[tuple[float, float]]] = {}  # by call: (start, end), monotonic
        self.underruns: list[tuple[CallMedia, float]] = []  # (the call, when)
        receive, underrun = CallMedia.receive, CallMedia.underrun

        def on_receive(media: CallMedia, pkt: RtpPacket, arrival: float) -> int:
            # The engine's own arrival time, and its stream statistics' last one.
            before = media.session.rtp_in.last_arrival
            if self.on and before is not None and arrival - before >= INPUT_GAP_S:
                self.gaps.setdefault(media, []).append((before, arrival))
            return receive(media, pkt, arrival)

        receive_stream = CallMedia.receive_stream

        def on_receive_stream(media: CallMedia, pcm8: bytes, arrival: float, samples: int | None = None, nbytes: int | None = None) -> None:
            # A stream transport's audio (AudioSocket, WebSocket): the same pauses, by its own statistics.
            before = media.session.stream_in.last_arrival
            if self.on and before is not None and arrival - before >= INPUT_GAP_S:
                self.gaps.setdefault(media, []).append((before, arrival))
            receive_stream(media, pcm8, arrival, samples, nbytes)

        def on_underrun(media: CallMedia) -> None:
            if self.on:
                self.underruns.append((media, time.monotonic()))
            underrun(media)

        CallMedia.receive = on_receive  # type: ignore[method-assign,assignment]
        CallMedia.receive_stream = on_receive_stream  # type: ignore[method-assign,assignment]
        CallMedia.underrun = on_underrun  # type: ignore[method-assign,assignment]

    def report(self) -> dict:
        def after_pause(media: Any, t: float) -> bool:
            return any(t - self.delay - 0.06 <= end <= t - self.delay + 0.06 for _, end in self.gaps.get(media, ()))

        pauses = [g for gs in self.gaps.values() for g in gs]
        return {
            "input_pauses": len(pauses),
            "input_pause_moments": len({round(end / 0.02) for _, end in pauses}),
            "input_pause_max_ms": max((b - a for a, b in pauses), default=0.0) * 1000,
            "underruns_after_pause": sum(1 for media, t in self.underruns if after_pause(media, t)),
            "underrun_moments": len({round(t / 0.02) for _, t in self.underruns}),
        }


def engine_child(conn, env: dict[str, str], transport: str = "rtp", sets: tuple[str, ...] = ()) -> None:
    from engine.config import load_config
    from engine.engine import Engine

    async def main() -> None:
        try:
            eng = Engine(apply_transport(load_config(None, env=env), transport, sets))
            await eng.start()
            if not await eng.wait_ari_connected(10):
                raise RuntimeError("the engine did not connect to ARI within 10 s")
        except Exception as e:  # said to the parent, which reports it as the run's failure
            conn.send(f"failed: {type(e).__name__}: {e}")
            return
        conn.send("ready")
        link = eng.transports[transport]
        loop = asyncio.get_running_loop()
        watch = StallWatch(loop)
        dry = UnderrunWatch(eng)
        gc.freeze()  # as aiagent_tui's Runtime does once the engine is up
        cpu0 = 0.0
        in0 = out0 = under0 = 0
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "mark":
                eng.rtp.timings.clear()
                cpu0 = time.process_time()
                st = link.status()
                in0, out0 = st.messages_in, st.messages_out
                under0 = sum(s.rtp_out.underruns for s in eng.store)
                watch.on = dry.on = True
                conn.send("marked")
            elif cmd == "report":
                watch.on = dry.on = False
                t = eng.rtp.timings
                calls = list(eng.store)
                st = link.status()
                conn.send(
                    {
                        "cpu_s": time.process_time() - cpu0,
                        "inbound_ms": [t.inbound.percentile_ms(50), t.inbound.percentile_ms(99)],
                        "outbound_ms": [t.outbound.percentile_ms(50), t.outbound.percentile_ms(99)],
                        "send_ms": [t.send.percentile_ms(50), t.send.percentile_ms(99)],
                        "pacing_ms": [t.pacing_error.percentile_ms(50), t.pacing_error.percentile_ms(99)],
                        "pacing_max_ms": float(t.pacing_error.values().max() * 1000) if t.pacing_error.count else 0.0,
                        "late_frames": int(np.sum(t.pacing_error.values() > 0.020)),
                        # The transport's messages: RTP packets, AudioSocket or WebSocket messages.
                        "packets_in": st.messages_in - in0,
                        "packets_out": st.messages_out - out0,
                        "lost_in": sum(c.rtp_in.lost for c in calls),
                        "late_in": eng.rtp.counters.late,
                        "underruns": sum(c.rtp_out.underruns for c in calls),
                        "underruns_window": sum(c.rtp_out.underruns for c in calls) - under0,
                        "overruns": sum(c.rtp_out.overruns for c in calls),
                        "late_ticks": eng.outbound.counters.late_ticks,
                        "kernel_drops": eng.rtp.kernel_drops(),
                        "playbacks": {k: getattr(eng.calls.playback_counters, k) for k in ("files_started", "files_finished", "files_failed", "files_timed_out")},
                        **watch.report(),
                        **dry.report(),
                    }
                )
            elif cmd == "stop":
                await eng.stop()
                # As the app's Runtime does: objects frozen with live resamplers are collected
                # before exit, not reported by nanobind as leaked.
                gc.unfreeze()
                gc.collect()
                conn.send("stopped")
                return

    asyncio.run(main())


def _pbx_priority() -> None:
    """The simulator stands in for Asterisk, which a PBX runs at high priority (asterisk.conf
    highpriority, ``asterisk -p``): on a loaded box its frames keep their time, as Asterisk's do.
    Needs root (or CAP_SYS_NICE); without it the simulator runs at the same priority, and its late
    ticks show in the figures."""
    try:
        os.nice(-10)
    except OSError:
        pass


def call_reports(url: str, ids: list[str]) -> list[dict]:
    """The callers' reports (the real Asterisk's call API answers one call at a time)."""
    return [http_json(f"{url}/sim/calls/{cid}") for cid in ids]


def run_engine_phase(calls: int, seconds: float, wav: Path, mode: str, history: bool = True, pbx_kind: str = "sim",
                     transport: str = "rtp", sets: list[str] | tuple[str, ...] = ()) -> dict:
    real = pbx_kind == "asterisk"
    bench_pbx: BenchPbx | None = None
    sim: subprocess.Popen | None = None
    if real:
        bench_pbx = BenchPbx("asterisk", calls=calls)
        sim_url, pbx_env = bench_pbx.url, bench_pbx.engine_env
    else:
        ari_port = free_port()
        sim = subprocess.Popen(
            [sys.executable, "-m", "pbxsim.cli", "serve", "--port", str(ari_port), "--rtp-start", str(SIM_RTP_PORTS.start), "--rtp-end", str(SIM_RTP_PORTS.stop - 1)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pbx_priority,
        )
        sim_url, pbx_env = f"http://127.0.0.1:{ari_port}", {"ASTERISK_ARI_PORT": str(ari_port)}
    env = {**pbx_env, "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_MAX_CALLS": str(calls + 10), "AIAGENT_MEDIA_DIR": scratch_media(), "AIAGENT_DOWNSTREAM_MODE": mode,
           "AIAGENT_HISTORY": str(history).lower()}
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=engine_child, args=(child, env, transport, tuple(sets)), daemon=True)
    # The caller stays on the line until its echo's tail is back (the echo's delay, the pacer's
    # prebuffer). It starts speaking a moment after it is put through, so that the engine's media channel is in
    # the bridge by then (what it says before is lost to the call's set-up, not to the transport).
    script = [{"pause": 2.0}, {"say": str(wav)}, {"pause": 1.5}]
    try:
        for _ in range(100):
            try:
                http_json(f"{sim_url}/sim/calls/none")
            except urllib.error.HTTPError:
                break  # 404: the call API answers
            except OSError:
                time.sleep(0.1)
        proc.start()
        ready = parent.recv()
        if ready != "ready":
            raise RuntimeError(f"{transport}: {ready}")
        ids = []
        for i in range(calls):
            ids.append(http_json(f"{sim_url}/sim/calls", {"script": script, "caller_number": str(1000 + i)})["id"])
            time.sleep(0.02)
        # Measure the steady state: every call bridged and its echo heard.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            reports = call_reports(sim_url, ids)
            if sum(1 for r in reports if r["agent_audio_seconds"] > 0) == calls:
                break
            if any(r["done"] for r in reports):
                raise RuntimeError(f"{transport}: a call ended before its echo was heard: {next(r for r in reports if r['done'])}")
            time.sleep(0.1)
        sim0 = None if real else http_json(f"{sim_url}/sim/state")
        # The PBX side's CPU in the window (Asterisk and its callers' process; or the simulator).
        pbx_pids = bench_pbx.pids if bench_pbx is not None else {sim.pid} if sim is not None else set()
        pbx_cpu0 = {pid: proc_cpu_s(pid) for pid in pbx_pids}
        parent.send("mark")
        parent.recv()
        t0 = time.monotonic()
        window = max(1.0, seconds - 2.0)
        time.sleep(window)
        parent.send("report")
        eng = parent.recv()
        eng["window_s"] = time.monotonic() - t0
        asterisk_pid = max(pbx_pids - {bench_pbx.proc.pid}) if bench_pbx is not None and len(pbx_pids) > 1 else None
        eng["pbx_cpu_s"] = {("asterisk" if pid == asterisk_pid else "callers" if real else "simulator"): proc_cpu_s(pid) - c0 for pid, c0 in pbx_cpu0.items()}
        if sim0 is not None:
            eng["sim_kernel_drops"] = udp_drops(SIM_RTP_PORTS)  # while the calls' sockets are open
            sim1 = http_json(f"{sim_url}/sim/state")
            eng["sim_stalls_window"] = sim1["media_late_runs"] - sim0["media_late_runs"]
            eng["sim_skipped_window"] = sim1["media_ticks_skipped"] - sim0["media_ticks_skipped"]
        deadline = time.monotonic() + 60
        while not all(r["done"] for r in call_reports(sim_url, ids)) and time.monotonic() < deadline:
            time.sleep(0.25)
        reports = call_reports(sim_url, ids)
        state = http_json(f"{sim_url}/sim/state")
        parent.send("stop")
        parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        if sim is not None:
            sim.send_signal(signal.SIGINT)
            sim.wait(10)
        if bench_pbx is not None:
            bench_pbx.stop()
    # The simulator's ExternalMedia counts (RTP only: 0 on another transport).
    eng["sim_sent"] = sum(r.get("rtp_sent", 0) for r in reports)
    eng["sim_received"] = sum(r.get("rtp_received", 0) for r in reports)
    eng["agent_audio_s"] = sum(r["agent_audio_seconds"] for r in reports)
    eng["caller_frames_expected"], eng["caller_frames_lost"] = lost_at_callers(reports, wav, pbx_kind)
    eng["calls_clean"] = sum(1 for r in reports if r["bridged"] and r.get("hangup_clean", r["error"] is None))
    eng["leftovers"] = len(state["leftover_channels"]) + len(state["leftover_bridges"])
    eng["violations"] = len(state.get("violations", []))
    eng["sim_skipped_ticks"] = state.get("media_ticks_skipped")
    return eng


def proc_cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system, its threads'), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- phase 2: the floor -------------------------------------------------------------------


class FloorStream:
    __slots__ = ("up", "down", "q", "seq", "ts")

    def __init__(self) -> None:
        self.up = Resampler(8000, 16000)
        self.down = Resampler(16000, 8000)
        self.q: deque[bytes] = deque()
        self.seq = 0
        self.ts = 0


class FloorEcho(asyncio.DatagramProtocol):
    """The least a Python echo media server must do per packet, with nothing else around it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        self.loop = loop
        self.delay = delay_s
        self.streams: dict[tuple[str, int], FloorStream] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.packets_in = 0
        self.packets_out = 0

    def datagram_received(self, data: bytes, addr) -> None:
        self.packets_in += 1
        st = self.streams.get(addr)
        if st is None:
            st = self.streams[addr] = FloorStream()
        HEADER.unpack_from(data)
        self.loop.call_later(self.delay, self._echo, st, st.up.process(ulaw_to_pcm16(data[12:])))

    @staticmethod
    def _echo(st: FloorStream, pcm16k: bytes) -> None:
        st.q.append(pcm16_to_ulaw(st.down.process(pcm16k)))

    def tick(self) -> None:
        assert self.transport is not None
        sendto = self.transport.sendto
        for addr, st in self.streams.items():
            if st.q:
                st.seq += 1
                st.ts += 160
                sendto(build_packet(0, st.seq, st.ts, 1, st.q.popleft()), addr)
                self.packets_out += 1


def floor_child(conn, port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        proto = FloorEcho(loop, 0.5)
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", port))
        proto.transport = transport
        t0 = loop.time()
        n = 0

        def run() -> None:
            nonlocal n
            proto.tick()
            n += 1
            loop.call_at(t0 + n * 0.02, run)

        loop.call_at(t0, run)
        conn.send("ready")
        cpu0 = 0.0
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd == "mark":
                cpu0 = time.process_time()
                conn.send("marked")
            elif cmd == "report":
                conn.send({"cpu_s": time.process_time() - cpu0, "packets_in": proto.packets_in, "packets_out": proto.packets_out})
                return

    asyncio.run(main())


def generator_child(port: int, streams: int, seconds: float, wav: Path) -> None:
    """Plain RTP callers: one socket each, 20 ms frames of real speech, replies counted."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with wave.open(str(wav)) as w:
            ulaw = pcm16_to_ulaw(w.readframes(w.getnframes()))
        socks = []
        for _ in range(streams):
            t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            socks.append(t)
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            frame = ulaw[(n * 160) % (len(ulaw) - 160) :][:160]
            for i, t in enumerate(socks):
                t.sendto(build_packet(0, n, n * 160, i, frame), ("127.0.0.1", port))
            n += 1
            await asyncio.sleep(max(0.0, (end - seconds) + n * 0.02 - loop.time()))

    asyncio.run(main())


def run_floor_phase(calls: int, seconds: float, wav: Path) -> dict:
    ctx = mp.get_context("spawn")
    port = free_port(socket.SOCK_DGRAM)
    parent, child = ctx.Pipe()
    floor = ctx.Process(target=floor_child, args=(child, port), daemon=True)
    floor.start()
    assert parent.recv() == "ready"
    gen = ctx.Process(target=generator_child, args=(port, calls, seconds, wav), daemon=True)
    gen.start()
    time.sleep(1.0)
    parent.send("mark")
    parent.recv()
    t0 = time.monotonic()
    time.sleep(max(1.0, seconds - 2.0))
    parent.send("report")
    out = parent.recv()
    out["window_s"] = time.monotonic() - t0
    gen.join(seconds + 10)
    floor.join(5)
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--mode", choices=["stream", "file"], default="stream", help="how agent audio goes back (default stream)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--no-history", action="store_true", help="the engine keeps no call history (to see what keeping it costs)")
    ap.add_argument("--pbx", choices=["sim", "asterisk"], default="sim", help="the simulator, or the real Asterisk 22 of ../shared/asterisk/")
    ap.add_argument("--no-floor", action="store_true", help="the engine only (phase 1), not the bare UDP loop's floor")
    add_transport_args(ap)
    return ap


def measure(args: argparse.Namespace) -> dict:
    """Runs the phases and prints their figures; returns them (what --json writes)."""
    with tempfile.TemporaryDirectory() as tmp:
        # Every caller still talking when the window ends: calls start 20 ms apart and take a
        # while to set up, and hanging up (ARI requests, events) is the simulator's busiest work.
        wav = speech_wav(args.seconds + 5 + args.calls * 0.04, Path(tmp) / "speech.wav")
        e = run_engine_phase(args.calls, args.seconds, wav, args.mode, not args.no_history, args.pbx, args.transport, args.media_set)
        f = None if args.no_floor else run_floor_phase(args.calls, args.seconds, wav)
    sim = args.pbx == "sim"
    call_minutes = args.calls * e["window_s"] / 60
    e_cpm = e["cpu_s"] / call_minutes
    f_cpm = f["cpu_s"] / (args.calls * f["window_s"] / 60) if f else 0.0
    ratio = e_cpm / f_cpm if f_cpm else float("inf")
    lost_echo = e["sim_sent"] - e["sim_received"]
    unit = "packets" if args.transport == "rtp" else "messages"
    print(f"media benchmark: {args.calls} concurrent echo calls, {args.seconds:.0f} s of speech each, {args.mode} mode, {args.pbx}, {args.transport} "
          f"(engine measured over {e['window_s']:.1f} s)")
    label = "RTP" if args.transport == "rtp" else args.transport
    print(f"  {label} in (engine, window)   {e['packets_in']} {unit}; whole run: lost {e['lost_in']}, late {e['late_in']}")
    if args.transport == "rtp":
        print(f"  arrival -> provider       p50 {e['inbound_ms'][0]*1000:.1f} us   p99 {e['inbound_ms'][1]*1000:.1f} us")
    else:
        print("  arrival -> provider       (timed by the RTP server only)")
    if args.mode == "stream":
        if sim and args.transport == "rtp":
            print(f"  RTP out (engine, window)  {e['packets_out']} packets; whole run: sim sent {e['sim_sent']}, got back {e['sim_received']}")
            print(f"                            (the difference is echo lost, or still queued when a caller hung up: {lost_echo / args.calls:.1f} frames per call)")
        else:
            print(f"  {label} out (engine, window)  {e['packets_out']} {unit}")
        print(f"  provider -> queued frame  p50 {e['outbound_ms'][0]*1000:.1f} us   p99 {e['outbound_ms'][1]*1000:.1f} us")
        print(f"  packetize + send          p50 {e['send_ms'][0]*1000:.1f} us   p99 {e['send_ms'][1]*1000:.1f} us")
        print(f"  outbound pacing error     p50 {e['pacing_ms'][0]:.2f} ms   p99 {e['pacing_ms'][1]:.2f} ms   max {e['pacing_max_ms']:.2f} ms")
        print(f"  late frames (>20 ms)      {e['late_frames']}   late ticks {e['late_ticks']}   underruns {e['underruns']}   overruns {e['overruns']}")
    else:
        print(f"  file playbacks            {e['playbacks']}")
    print(f"  echo lost at the callers  {e['caller_frames_lost']} of {e['caller_frames_expected']} frames they should have heard back")
    if sim:
        print(f"  where packets were lost   kernel drops: engine socket {e['kernel_drops']}, simulator sockets {e['sim_kernel_drops']}")
        print(f"  simulator stalls (window) {e['sim_stalls_window']} ticks run 20 ms or more late; {e['sim_skipped_window']} ticks skipped (stalls over {CATCHUP_TICKS * 20} ms; {e['sim_skipped_ticks']} in the whole run, call set-up included)")
    else:
        print(f"  where packets were lost   kernel drops: engine socket {e['kernel_drops']}")
    print(f"  underruns in the window   {e['underruns_window']} (a stream's jitter buffer grows a frame after each), at {e['underrun_moments']} distinct 20 ms ticks;")
    print(f"                            {e['underruns_after_pause']} of them the echo of a pause in their call's input: {e['input_pauses']} pauses of"
          f" {INPUT_GAP_S * 1000:.0f} ms or more at {e['input_pause_moments']} ticks, longest {e['input_pause_max_ms']:.0f} ms")
    print(f"  engine loop stalls        {e['stalls']} of {STALL_S * 1000:.0f} ms or more (longest {e['stall_max_ms']:.0f} ms); garbage collector passes over 5 ms: {e['gc_passes']} ({e['gc_full']} full, longest {e['gc_max_ms']:.0f} ms)")
    for where, n in e["stall_where"]:
        print(f"    {n:4d} x  {where}")
    print(f"  agent audio heard         {e['agent_audio_s'] / args.calls:.1f} s per call")
    print(f"  engine CPU                {e['cpu_s']:.2f} s = {e_cpm:.3f} CPU-s per call-minute")
    if e.get("pbx_cpu_s"):
        parts = ", ".join(f"{who} {s:.2f} s ({100 * s / e['window_s']:.0f} % of a core)" for who, s in sorted(e["pbx_cpu_s"].items()))
        print(f"  PBX side CPU (window)     {parts}")
    if f:
        print(f"  floor CPU                 {f['cpu_s']:.2f} s = {f_cpm:.3f} CPU-s per call-minute ({f['packets_in']} in, {f['packets_out']} out)")
        print(f"  engine / floor CPU ratio  {ratio:.2f}")
    print(f"  calls bridged and clean   {e['calls_clean']}/{args.calls}; leftovers {e['leftovers']}; ARI schema violations {e['violations']}")
    out = {"engine": e, "floor": f, "cpu_per_call_minute": e_cpm, "floor_cpu_per_call_minute": f_cpm, "ratio": ratio,
           "pbx": args.pbx, "transport": args.transport, "calls": args.calls}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def main() -> int:
    measure(parser().parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())
