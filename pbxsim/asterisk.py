"""A real Asterisk 22 for the tests and benchmarks, and callers on it that behave like the simulator's.

``AsteriskInstance`` starts one instance of the prebuilt Asterisk in ``../shared/asterisk/`` (its
``run.sh``) on loopback with free ports, its own run directory and the project's dialplan
(``pbxsim/asterisk_etc/``: the engine's app, a fallback, transfer targets, an IAX2 loop, StasisBroadcast).

``AsteriskCallers`` places callers on it that follow the simulator's scripts (say a prompt, pause,
wait for the agent, press keys) over a real phone path: the call's far half runs the dialplan into
the engine's app; its near half is recorded by MixMonitor (what the caller hears and says) and
handed to the callers' own ARI app, which speaks and listens through an ExternalMedia channel of
its own at 20 ms real-time pacing. A caller's line is a Local channel, or an IAX2 hop (its own RTP
timing); it sends nothing in silence (DTX) or faint noise all the time; 8 or 16 kHz. The times
it records are taken where the caller is, so a turn's latency is what a caller feels.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from media.audio import audioop
from media.frames import FRAME_S, RATE
from media.rtp import PT_ULAW, RtpPacket, RtpParseError, build_packet
from pbxsim.media import barge_in_reactions, heard_s, line_noise, load_wav_ulaw, mix_ulaw, speech_end_offset, speech_onset_s
from pbxsim.script import Dtmf, Line, Pause, Say, SayText, Step, parse_script, spoken, wait_step

log = logging.getLogger("pbxsim.asterisk")

ETC = Path(__file__).resolve().parent / "asterisk_etc"
CALLERS_APP = "aiagent-callers"
ARI_USER, ARI_PASSWORD = "ari", "ari"
# A frame the caller hears as the agent's audio: louder than line noise and softmix's silence.
HEARD_DBFS = -45.0


class AsteriskNotFound(RuntimeError):
    """No prebuilt Asterisk to run (``../shared/asterisk/`` or AIAGENT_ASTERISK_DIR)."""


def shared_asterisk(root: Path) -> Path:
    """The folder with the real Asterisk's ``run.sh``: AIAGENT_ASTERISK_DIR, else ``../shared/asterisk``
    beside the checkout ``root``."""
    env = os.environ.get("AIAGENT_ASTERISK_DIR")
    where = Path(env) if env else root.resolve().parent / "shared" / "asterisk"
    if not (where / "run.sh").is_file():
        raise AsteriskNotFound(
            f"no real Asterisk at {where} (run.sh missing): the checkout needs ../shared/asterisk/ beside it, "
            "or AIAGENT_ASTERISK_DIR naming that folder")
    return where


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rtp_range(size: int) -> tuple[int, int]:
    """A range of UDP ports below the kernel's ephemeral range (32768 on), none bound now."""
    rng = random.Random()
    for _ in range(50):
        start = rng.randrange(20000, 32000 - size, 2)
        free = True
        for p in range(start, start + size, max(2, size // 8)):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    free = False
                    break
        if free:
            return start, start + size
    raise RuntimeError("no free UDP port range for Asterisk's RTP")


@dataclass
class AsteriskInstance:
    """One running Asterisk: ARI at ``url`` (user ari/ari), its run directory and ports."""

    shared: Path
    run_dir: Path
    _: KW_ONLY
    http_port: int = 0
    iax_port: int = 0
    rtp_range: tuple[int, int] = (0, 0)
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def recordings(self) -> Path:
        return self.run_dir / "recordings"

    @property
    def root(self) -> Path:
        env = os.environ.get("ASTERISK_ROOT")
        return Path(env) if env else Path(os.environ.get("ASTERISK_CACHE", "/var/tmp/aiagent-asterisk")) / "asterisk-22.10.1"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "ASTERISK_RUN_DIR": str(self.run_dir),
            "ASTERISK_ETC": str(self.run_dir / "etc-src"),
            "ASTERISK_HTTP_PORT": str(self.http_port),
            "ASTERISK_RTP_START": str(self.rtp_range[0]),
            "ASTERISK_RTP_END": str(self.rtp_range[1]),
        }

    def start(self) -> None:
        """Start it (again, after ``stop``: same ports, dialplan and run directory)."""
        self.http_port = self.http_port or _free_port()
        self.iax_port = self.iax_port or _free_port(socket.SOCK_DGRAM)
        if not self.rtp_range[0]:
            self.rtp_range = rtp_range(200)
        src = self.run_dir / "etc-src"
        src.mkdir(parents=True, exist_ok=True)
        for conf in (self.shared / "etc").glob("*.conf"):
            shutil.copy(conf, src / conf.name)
        for conf in ETC.glob("*.conf"):
            (src / conf.name).write_text(conf.read_text().replace("@IAX_PORT@", str(self.iax_port)))
        self.recordings.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["bash", str(self.shared / "run.sh")], env=self._env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"Asterisk did not start ({self.shared / 'run.sh'}, exit {out.returncode}):\n{out.stderr.strip()}")
        self.pid = int(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.pid:
            subprocess.run(["bash", str(self.shared / "stop.sh")], env=self._env(), capture_output=True, timeout=30)
            self.pid = 0

    def kill(self) -> None:
        """SIGKILL: Asterisk gone at once, as in a crash."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.pid, 0)
            self.pid = 0

    def cli(self, command: str) -> str:
        """One Asterisk CLI command (``asterisk -rx``); its output."""
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.root / "lib")}
        out = subprocess.run([str(self.root / "sbin" / "asterisk"), "-C", str(self.run_dir / "etc" / "asterisk.conf"), "-rx", command],
                             env=env, capture_output=True, text=True, timeout=30)
        return out.stdout

    def log_tail(self, lines: int = 40) -> str:
        path = self.run_dir / "log" / "full.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def start_asterisk(root: Path, run_dir: Path) -> AsteriskInstance:
    inst = AsteriskInstance(shared_asterisk(root), run_dir)
    inst.start()
    return inst


class Ari:
    """The few ARI requests the callers and the checks need (REST over aiohttp, user ari/ari)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        creds = base64.b64encode(f"{ARI_USER}:{ARI_PASSWORD}".encode()).decode()
        self.http = aiohttp.ClientSession(headers={"Authorization": f"Basic {creds}"}, timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        await self.http.close()

    async def request(self, method: str, path: str, ok: tuple[int, ...] = (200, 201, 204), **params: Any) -> Any:
        body = params.pop("json", None)
        q = {k: (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in params.items() if v is not None}
        async with self.http.request(method, f"{self.url}/ari{path}", params=q, json=body) as r:
            text = await r.text()
            if r.status not in ok:
                raise AriError(r.status, f"{method} {path}: {r.status} {text.strip()}")
            return json.loads(text) if text.strip() else None

    async def channels(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/channels"))

    async def bridges(self) -> list[dict[str, Any]]:
        return list(await self.request("GET", "/bridges"))

    async def global_var(self, name: str) -> str:
        try:
            got = await self.request("GET", "/asterisk/variable", variable=name)
        except AriError:
            return ""
        return str(got.get("value", "")) if got else ""


class AriError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(eq=False, kw_only=True)
class RealCall:
    """One caller on the real PBX: what it said and heard, when (monotonic seconds, the caller's side)."""

    id: str
    caller_number: str
    script: list[Step]
    line: Line
    via: str  # "local" or "iax2"
    dialled: str
    recording: Path | None = None
    channel: str | None = None  # the caller's own (near) channel, in the callers' app
    far_channel: str | None = None  # the call's channel in the engine's app (Local callers: known up front)
    bridge: str | None = None
    em_channel: str | None = None
    remote: tuple[str, int] | None = None  # where the caller's ExternalMedia sends and takes RTP
    answered: bool = False
    bridged: bool = False
    ended_by: str | None = None  # "caller" (script done or hung up by the test) or "agent" (the far side hung up)
    hangup_cause: int | None = None  # Q.850, when the far side hung up (17: busy)
    error: str | None = None
    placed_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None
    frames_sent: int = 0
    heard: list[tuple[float, bytes]] = field(default_factory=list)  # every frame received, as 8 kHz u-law
    agent_frames: list[tuple[float, bytes]] = field(default_factory=list)  # the audible ones
    said: list[tuple[float, float]] = field(default_factory=list)  # (first frame sent, speech onset)
    said_end: list[float] = field(default_factory=list)  # each utterance's last voiced frame sent
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    up: asyncio.Event = field(default_factory=asyncio.Event)
    _speech: bytes = b""
    _pos: int = 0
    _speech_end: int = 0  # byte offset in _speech after its last voiced frame
    _noise: bytes = b""
    _noise_pos: int = 0

    def say(self, ulaw: bytes) -> None:
        """Starts saying ``ulaw`` (8 kHz u-law) from the next frame, as the simulator's caller's
        media ``say`` does: what a Say step of the script does, or a bench on cue."""
        self._speech, self._pos, self._speech_end = ulaw, 0, speech_end_offset(ulaw)

    @property
    def speaking(self) -> bool:
        return self._pos < len(self._speech)

    # What the simulator's caller reports, computed the same way.
    def turn_latencies(self) -> list[float]:
        """For each utterance the agent answered: seconds from the end of the caller's speech (its last
        voiced frame, not the clip's trailing silence) to the first audible agent frame after it."""
        out = []
        times = [t for t, _ in self.agent_frames]
        ends = self.said_end
        for i, end in enumerate(ends):
            nxt = self.said[i + 1][0] if i + 1 < len(self.said) else float("inf")
            after = next((t for t in times if t > end), None)
            if after is not None and after < nxt:
                out.append(round(after - end, 4))
        return out

    def barge_in_reactions(self) -> list[float]:
        """For each time the caller started speaking while the agent was heard: seconds from the
        caller's speech onset to the agent going quiet at the caller."""
        return barge_in_reactions([onset for _, onset in self.said], self.agent_frames)

    def agent_heard_s(self, since: float = 0.0) -> float:
        return heard_s(self.agent_frames, since)

    @property
    def agent_audio_seconds(self) -> float:
        return round(sum(len(p) for _, p in self.agent_frames) / RATE, 3)

    def agent_audio(self) -> bytes:
        return b"".join(p for _, p in self.agent_frames)

    def report(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "engine_channel": self.far_channel,  # the call's id in the engine (its channel in the engine's app)
            "via": self.via,
            "caller_number": self.caller_number,
            "answered": self.answered,
            "bridged": self.bridged,
            "caller_frames_sent": self.frames_sent,
            "agent_audio_seconds": self.agent_audio_seconds,
            "first_agent_audio_s": round(self.agent_frames[0][0] - self.placed_at, 3) if self.agent_frames else None,
            "barge_in_reactions_s": self.barge_in_reactions(),
            "turn_latencies_s": self.turn_latencies(),
            "ended_by": self.ended_by,
            "hangup_cause": self.hangup_cause,
            "error": self.error,
            "done": self.finished.is_set(),
            "duration_s": round((self.ended_at or time.monotonic()) - self.placed_at, 3),
        }


def _audible(ulaw: bytes) -> bool:
    rms = audioop.rms(audioop.ulaw2lin(ulaw, 2), 2)
    return bool(rms) and 20 * np.log10(rms / 32768) > HEARD_DBFS


class AsteriskCallers(asyncio.DatagramProtocol):
    """Places scripted callers on a real Asterisk (see the module's docstring). One ARI connection
    (app ``aiagent-callers``) and one UDP socket for all of them."""

    def __init__(self, pbx: AsteriskInstance) -> None:
        self.pbx = pbx
        self.ari = Ari(pbx.url)
        self.calls: dict[str, RealCall] = {}
        self._by_channel: dict[str, RealCall] = {}
        self._by_remote: dict[tuple[str, int], RealCall] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._em_started: dict[str, asyncio.Event] = {}
        self._seq = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self._transport.get_extra_info("sockname")[1]
        self._ws = await self.ari.http.ws_connect(f"{self.pbx.url}/ari/events", params={"app": CALLERS_APP, "subscribeAll": "false"})
        self._spawn(self._events())

    async def stop(self) -> None:
        for call in list(self.calls.values()):
            if not call.finished.is_set():
                await self.hangup(call)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        await self.ari.close()
        if self._transport is not None:
            self._transport.close()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("caller task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # ---- placing calls
    def place_call(
        self,
        script: list[Step],
        line: Line | None = None,
        dialled: str = "100",
        caller_number: str = "",
        via: str = "local",
        context: str = "aiagent-in",
        record: bool = False,
    ) -> RealCall:
        """A caller dials ``dialled`` in ``context`` (the engine's app by default) and follows ``script``,
        then hangs up. ``via`` "iax2" crosses the IAX2 loop (which enters aiagent-in); ``record``: MixMonitor
        files in the instance's recordings folder (``call.recording``-heard.wav / -said.wav)."""
        self._seq += 1
        cid = f"caller-{self._seq}-{uuid.uuid4().hex[:6]}"
        number = caller_number or f"{5550000 + self._seq}"
        rec_path = self.pbx.recordings / cid if record else None
        call = RealCall(id=cid, caller_number=number, script=script, line=line or Line(), via=via, dialled=dialled, recording=rec_path)
        if call.line.noise_dbfs is not None:
            call._noise = line_noise(call.line.noise_dbfs, seed=self._seq)
        call.channel = f"{cid}-near"
        call.far_channel = f"{cid}-far" if via == "local" else None  # the engine's call id (IAX2: the PBX names it)
        self._by_channel[call.channel] = call
        self.calls[cid] = call
        self._spawn(self._run(call, context))
        return call

    async def _run(self, call: RealCall, context: str) -> None:
        fmt = "slin16" if call.line.rate == 16000 else "ulaw"
        if call.via == "iax2":
            endpoint = f"IAX2/127.0.0.1:{self.pbx.iax_port}/{call.dialled}"
        else:
            endpoint = f"Local/{call.dialled}@{context}/n"
        # _CALLER_NUM reaches the far half of a Local call, which takes it as its caller id (as a trunk's caller has one).
        variables = {"CALLER_ID": call.id, "CALLER_REC": str(call.recording) if call.recording else "", "_CALLER_NUM": call.caller_number}
        near = call.channel
        assert near is not None
        try:
            await self.ari.request(
                "POST", "/channels", endpoint=endpoint, context="callers", extension="s", priority=1, channelId=near,
                otherChannelId=call.far_channel,
                callerId=f"\"Caller {call.caller_number}\" <{call.caller_number}>", formats=fmt, timeout=15,
                json={"variables": variables},
            )
            await asyncio.wait_for(call.up.wait(), 15)
            # The caller's own end speaks u-law to its ExternalMedia: chan_rtp sets no payload type for
            # what it receives, and drops slin16 (PT 118) sent to it. A wideband caller's channel is
            # slin16 all the same: the Local channel and both bridges carry and mix it at 16 kHz.
            await self._bridge(call, "ulaw")
            call.bridged = True
            media = self._spawn(self._media(call))
            for step in call.script:
                if call.finished.is_set():
                    break
                await self._step(call, step)
            media.cancel()
            if not call.finished.is_set():
                call.ended_by = call.ended_by or "caller"
                await self._hangup_near(call)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a caller that fails says why in its report
            call.error = call.error or f"{type(e).__name__}: {e}"
            log.warning("caller %s: %s", call.id, call.error)
            with contextlib.suppress(Exception):
                await self._hangup_near(call)
        finally:
            await self._cleanup(call)

    async def _bridge(self, call: RealCall, fmt: str) -> None:
        bridge = await self.ari.request("POST", "/bridges", type="mixing", name=call.id)
        call.bridge = bridge["id"]
        em_id = f"{call.id}-em"
        started = self._em_started[em_id] = asyncio.Event()
        em = await self.ari.request("POST", "/channels/externalMedia", app=CALLERS_APP, channelId=em_id,
                                    external_host=f"127.0.0.1:{self.port}", format=fmt)
        call.em_channel = em_id
        v = em.get("channelvars", {})
        call.remote = (v["UNICASTRTP_LOCAL_ADDRESS"], int(v["UNICASTRTP_LOCAL_PORT"]))
        self._by_remote[call.remote] = call
        await asyncio.wait_for(started.wait(), 5)
        await self.ari.request("POST", f"/bridges/{call.bridge}/addChannel", channel=f"{call.channel},{em_id}")

    async def _hangup_near(self, call: RealCall) -> None:
        if call.channel:
            with contextlib.suppress(AriError):
                await self.ari.request("DELETE", f"/channels/{call.channel}")

    async def hangup(self, call: RealCall) -> None:
        """The caller hangs up now."""
        if not call.finished.is_set():
            call.ended_by = call.ended_by or "caller"
            await self._hangup_near(call)
            await asyncio.wait_for(call.finished.wait(), 10)

    async def press(self, call: RealCall, digits: str, duration_ms: int = 120) -> None:
        """Keys pressed on the caller's phone (DTMF out of the caller's channel)."""
        await self.ari.request("POST", f"/channels/{call.channel}/dtmf", dtmf=digits, duration=duration_ms, between=100)
        await asyncio.sleep((duration_ms + 100) * len(digits) / 1000)

    async def _cleanup(self, call: RealCall) -> None:
        for ch in (call.em_channel,):
            if ch:
                with contextlib.suppress(Exception):
                    await self.ari.request("DELETE", f"/channels/{ch}", ok=(204, 404))
        if call.bridge:
            with contextlib.suppress(Exception):
                await self.ari.request("DELETE", f"/bridges/{call.bridge}", ok=(204, 404))
        if call.remote:
            self._by_remote.pop(call.remote, None)
        call.ended_at = call.ended_at or time.monotonic()
        call.finished.set()

    # ---- the script
    async def _step(self, call: RealCall, step: Step) -> None:
        alive = lambda: not call.finished.is_set()  # noqa: E731
        if isinstance(step, (Say, SayText)):
            speech = await spoken(step, load_wav_ulaw)
            call.say(speech)
            while alive() and call.speaking:
                await asyncio.sleep(0.01)
        elif isinstance(step, Dtmf):
            await self.press(call, step.digits, step.duration_ms)
        else:
            await wait_step(step, alive, call.agent_frames)

    # ---- media: 20 ms frames out at real time, everything heard kept with its arrival time
    async def _media(self, call: RealCall) -> None:
        assert call.remote is not None and self._transport is not None
        frame = int(RATE * FRAME_S)
        ssrc = random.getrandbits(32)
        seq, ts = random.getrandbits(16), random.getrandbits(32)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        marker = True
        while True:
            payload = None
            speaking = call._pos < len(call._speech)
            if speaking:
                if call._pos == 0:
                    now = time.monotonic()
                    call.said.append((now, now + speech_onset_s(call._speech)))
                chunk = call._speech[call._pos : call._pos + frame].ljust(frame, b"\xff")
                call._pos += frame
                if call._pos >= call._speech_end and len(call.said_end) < len(call.said):
                    call.said_end.append(time.monotonic())
                payload = mix_ulaw([chunk, self._noise_frame(call)]) if call._noise else chunk
            elif call._noise:
                payload = self._noise_frame(call)
            if payload is not None:
                self._transport.sendto(build_packet(PT_ULAW, seq, ts, ssrc, payload, marker), call.remote)
                call.frames_sent += 1
                seq += 1
                marker = False
            else:
                marker = True
            ts += frame
            next_at += FRAME_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def _noise_frame(self, call: RealCall) -> bytes:
        frame = int(RATE * FRAME_S)
        n = call._noise
        chunk = n[call._noise_pos : call._noise_pos + frame]
        call._noise_pos = (call._noise_pos + frame) % (len(n) - len(n) % frame)
        return chunk

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        call = self._by_remote.get(addr)
        if call is None:
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpParseError:
            return
        now = time.monotonic()
        ulaw = pkt.payload
        call.heard.append((now, ulaw))
        if _audible(ulaw):
            call.agent_frames.append((now, ulaw))

    # ---- events
    async def _events(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            ev = json.loads(msg.data)
            kind = ev.get("type")
            ch = ev.get("channel", {}).get("id", "")
            if kind == "StasisStart":
                if ch in self._em_started:
                    self._em_started.pop(ch).set()
                elif (call := self._by_channel.get(ch)) is not None:
                    call.answered = True
                    call.up.set()
            elif kind in ("StasisEnd", "ChannelHangupRequest"):
                call = self._by_channel.get(ch)
                if call is not None and kind == "ChannelHangupRequest" and call.hangup_cause is None and not ev.get("soft"):
                    call.hangup_cause = ev.get("cause")
                if call is not None and not call.finished.is_set() and call.ended_at is None:
                    call.ended_by = call.ended_by or "agent"  # none set: the far side hung up (the engine, or the PBX for it)
                    call.ended_at = time.monotonic()
                    self._spawn(self._cleanup(call))


async def leftovers(ari: Ari) -> tuple[list[str], list[str]]:
    """Channels and bridges still on the PBX (names and ids)."""
    return [c["name"] for c in await ari.channels()], [b["id"] for b in await ari.bridges()]


class CallersServer:
    """The simulator's call API (POST /sim/calls, GET /sim/calls/{id}, POST /sim/calls/{id}/hangup,
    GET /sim/state) over callers on a real Asterisk, so a benchmark drives either PBX the same way
    (``aiagent-sim asterisk``). Its own process: the callers' 20 ms clock and CPU are not the engine's."""

    def __init__(self, callers: AsteriskCallers) -> None:
        self.callers = callers
        self._runner: Any = None

    async def start(self, host: str, port: int) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/sim/calls", self._place)
        app.router.add_get("/sim/calls/{id}", self._get)
        app.router.add_post("/sim/calls/{id}/hangup", self._hangup)
        app.router.add_get("/sim/state", self._state)
        self._runner = web.AppRunner(app, access_log=None)  # a benchmark polls it several times a second
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _call(self, request: Any) -> RealCall:
        from aiohttp import web

        call = self.callers.calls.get(request.match_info["id"])
        if call is None:
            raise web.HTTPNotFound(text="no such call")
        return call

    async def _place(self, request: Any) -> Any:
        from aiohttp import web

        data = await request.json()
        try:
            script: list[Step] = parse_script(data["script"]) if "script" in data else [Say(str(data["wav"])), Pause(float(data.get("hold_s", 2.0)))]
            noise = data.get("noise_dbfs")
            line = Line(None if noise is None else float(noise), int(data.get("rate", 8000)))
            call = self.callers.place_call(script, line, str(data.get("dialled", "100")), str(data.get("caller_number", "")),
                                           str(data.get("via", "local")), record=bool(data.get("record", False)))
        except (KeyError, OSError, ValueError) as e:
            return web.json_response({"error": str(e)}, status=400)
        return web.json_response(call.report())

    async def _get(self, request: Any) -> Any:
        from aiohttp import web

        return web.json_response(self._call(request).report())

    async def _hangup(self, request: Any) -> Any:
        from aiohttp import web

        call = self._call(request)
        await self.callers.hangup(call)
        return web.json_response(call.report())

    async def _state(self, request: Any) -> Any:
        from aiohttp import web

        chans, bridges = await leftovers(self.callers.ari)
        # What the engine left: the callers' own channels and bridges of calls still on are not leftovers.
        live = {c.id for c in self.callers.calls.values() if not c.finished.is_set()}
        chans = [c for c in chans if not any(cid in c for cid in live)]
        return web.json_response({"leftover_channels": chans, "leftover_bridges": [b for b in bridges if b not in live],
                                  "asterisk_pid": self.callers.pbx.pid})
