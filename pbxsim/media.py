"""The simulated PBX's media: callers, ExternalMedia RTP endpoints, bridges and playbacks.

Behaviour follows shared/ari/BEHAVIOUR.md (measured on Asterisk 22.10.1):
- a two-party bridge forwards each frame at once and sends nothing while the other side is silent;
- a bridge with 3+ channels or a playback is softmix: one mixed frame every 20 ms to every channel,
  silence as 0xFF, the bridge's playback heard by the ExternalMedia channel too (the feedback that
  makes gating necessary); a channel queueing more than ~80 ms is flushed;
- ExternalMedia keeps one SSRC, continues sequence numbers across silence, jumps the timestamp by
  the wall-clock gap and sets the marker on the first packet after a gap;
- strict RTP: only packets from external_host are taken.
"""

from __future__ import annotations

import asyncio
import random
import time
import wave
from collections import deque
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soxr

from media.audio import audioop
from media.frames import FRAME_S, RATE, ULAW_SILENCE
from media.frames import ULAW_FRAME_BYTES as FRAME_BYTES
from media.rtp import PT_ULAW, RtpPacket, RtpParseError, build_packet

SILENCE = bytes([ULAW_SILENCE]) * FRAME_BYTES
SOFTMIX_MAX_QUEUE = 4  # frames (80 ms); more triggers a flush
VOICE_DBFS = -45.0  # a frame heard louder than this is someone's voice (line noise and softmix's silence are not)


def voiced(ulaw: bytes) -> bool:
    if ulaw == SILENCE:
        return False
    rms = audioop.rms(audioop.ulaw2lin(ulaw, 2), 2)
    return bool(rms) and 20 * np.log10(rms / 32768) > VOICE_DBFS


def load_wav_ulaw(path: str | Path) -> bytes:
    """A WAV file as 8 kHz mono u-law, resampled and downmixed if need be."""
    return audioop.lin2ulaw(load_wav_pcm(path).tobytes(), 2)


def load_wav_pcm(path: str | Path) -> np.ndarray:
    """A WAV file as 8 kHz mono 16-bit samples, resampled and downmixed if need be."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
        rate, channels = w.getframerate(), w.getnchannels()
        pcm = w.readframes(w.getnframes())
    samples = np.frombuffer(pcm, dtype=np.int16)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE).astype(np.int16)
    return samples


def _ast_lin2mu_table() -> np.ndarray:
    """Asterisk's own 16-bit linear to u-law coder (main/ulaw.c, AST_LIN2MU): a table indexed by the
    sample's top 14 bits, each entry coded from the highest of its 4 samples (bias 0x84, clip
    32635). It differs from audioop.lin2ulaw on 508 of the 65536 values: -1..-3 are 0x7F there
    (audioop: 0x7E), and values near segment edges."""
    exp_lut = np.array([0, 0, 1, 1] + [2] * 4 + [3] * 8 + [4] * 16 + [5] * 32 + [6] * 64 + [7] * 128)
    x = (np.arange(16384, dtype=np.int32) << 2).astype(np.uint16).astype(np.int16).astype(np.int32) + 3
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = exp_lut[(mag >> 7) & 0xFF]
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


_AST_LIN2MU = _ast_lin2mu_table()


def ast_lin2mu(pcm16: bytes | np.ndarray) -> bytes:
    """16-bit linear samples to u-law exactly as Asterisk's translators and softmix code them."""
    x = np.frombuffer(pcm16, dtype=np.int16) if isinstance(pcm16, bytes) else pcm16.astype(np.int16)
    return bytes(_AST_LIN2MU[x.view(np.uint16) >> 2])


def speech_onset_s(ulaw: bytes, threshold_dbfs: float = -40.0) -> float:
    """Where speech starts in a prompt: the first 20 ms frame louder than ``threshold_dbfs``."""
    for i in range(0, len(ulaw), FRAME_BYTES):
        pcm = audioop.ulaw2lin(ulaw[i : i + FRAME_BYTES], 2)
        rms = audioop.rms(pcm, 2)
        if rms and 20 * np.log10(rms / 32768) > threshold_dbfs:
            return i / RATE
    return 0.0


def speech_end_offset(ulaw: bytes, threshold_dbfs: float = -40.0) -> int:
    """Bytes into a prompt after its last 20 ms frame louder than ``threshold_dbfs``: where the
    caller's voice ends (its trailing silence is not speech; a turn is timed from here)."""
    end = 0
    for i in range(0, len(ulaw), FRAME_BYTES):
        rms = audioop.rms(audioop.ulaw2lin(ulaw[i : i + FRAME_BYTES], 2), 2)
        if rms and 20 * np.log10(rms / 32768) > threshold_dbfs:
            end = min(len(ulaw), i + FRAME_BYTES)
    return end


def heard_s(frames: list[tuple[float, bytes]], since: float = 0.0) -> float:
    """Seconds of the agent's audio among ``frames`` (arrival time, 8 kHz u-law) since ``since``."""
    return sum(len(p) for t, p in frames if t >= since) / RATE


def agent_stopped_after(frames: list[tuple[float, bytes]], t: float, gap_s: float = 0.1) -> float | None:
    """When the agent's audio stopped reaching the caller after time ``t``: the last of ``frames``
    (arrival time, audio) before a silence of ``gap_s`` or more (None if it never stopped)."""
    last = None
    for ft, _ in frames:
        if ft < t:
            last = ft
            continue
        if last is not None and ft - last >= gap_s:
            return last
        last = ft
    if last is not None and time.monotonic() - last >= gap_s:
        return last
    return None


def barge_in_reactions(onsets: list[float], frames: list[tuple[float, bytes]]) -> list[float]:
    """For each speech onset of the caller's while the agent was being heard: seconds to the agent
    going quiet at the caller."""
    out = []
    for onset in onsets:
        talking = any(onset - 0.1 <= t <= onset for t, _ in frames)
        stopped = agent_stopped_after(frames, onset) if talking else None
        if stopped is not None:
            out.append(round(stopped - onset, 4))
    return out


def mix_ulaw(parts: list[bytes], linear: bytes | None = None) -> bytes:
    """softmix: the 16-bit saturating sum of the parts (u-law frames, plus ``linear`` PCM16),
    re-encoded to u-law (BEHAVIOUR.md: AST_LIN2MU(file + caller), byte-exact)."""
    if len(parts) == 1 and linear is None:
        return parts[0]
    acc = linear
    for p in parts:
        lin = audioop.ulaw2lin(p.ljust(FRAME_BYTES, b"\xff"), 2)
        acc = lin if acc is None else audioop.add(acc, lin, 2)  # audioop.add saturates
    assert acc is not None
    return ast_lin2mu(acc)


def line_noise(dbfs: float, seconds: float = 4.0, seed: int = 7) -> bytes:
    """Band-limited hiss at ``dbfs`` (RMS), as u-law: what a phone line carries between words."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    white = rng.standard_normal(n + 8)
    noise = np.convolve(white, np.ones(8) / 8, mode="valid")[:n]  # duller than white, as line noise is
    noise *= 32768.0 * 10 ** (dbfs / 20) / max(1e-9, float(np.sqrt(np.mean(noise**2))))
    return audioop.lin2ulaw(np.clip(noise, -32768, 32767).astype(np.int16).tobytes(), 2)


class WidebandEchoPath:
    """The playback as a 16 kHz caller's bridge returns it to an 8 kHz ExternalMedia channel
    (BEHAVIOUR.md): 80 samples (10 ms) later and low-pass filtered by the 8 -> 16 -> 8 kHz
    translation, at 0 dB."""

    DELAY = 80

    def __init__(self) -> None:
        taps = 31
        n = np.arange(taps) - (taps - 1) / 2
        cutoff = 3400 / RATE
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps)
        self._h = h / h.sum()
        self._history = np.zeros(self.DELAY - (taps - 1) // 2 + taps - 1)

    def process(self, pcm16: np.ndarray) -> np.ndarray:
        x = np.concatenate([self._history, pcm16.astype(np.float64)])
        self._history = x[-len(self._history):]
        y = np.convolve(x, self._h, mode="valid")  # filter delay 15 + line delay 65 = 80
        return y[: len(pcm16)]


class Endpoint:
    """What a bridge member is to the media: it can be handed a frame."""

    def deliver(self, payload: bytes, agent: bool, tick: int) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class Playback:
    id: str
    media_uri: str
    target_uri: str
    frames: list[bytes] | None  # None: the URI cannot be played (missing file, bad scheme)
    _: KW_ONLY
    never_finishes: bool = False  # unknown URI scheme: Asterisk never sends PlaybackFinished
    loops: bool = False  # a tone: its frames again and again until stopped (channel playbacks)
    state: str = "queued"
    pos: int = 0  # frames played (channel playbacks)
    spos: int = 0  # samples played (bridge playbacks: sample-continuous across the queue)
    _data: bytes | None = None

    def read(self, n: int) -> bytes:
        """Up to ``n`` more samples of the file (u-law)."""
        if self._data is None:
            self._data = b"".join(self.frames or [])
        out = self._data[self.spos : self.spos + n]
        self.spos += len(out)
        return out

    @property
    def exhausted(self) -> bool:
        return self._data is not None and self.spos >= len(self._data)

    SKIP_SAMPLES = 3 * RATE  # reverse/forward: Asterisk's default skipms, 3000

    def seek(self, op: str) -> None:
        """restart, reverse or forward, in both the channel's frames and the bridge's samples."""
        if op == "restart":
            self.pos = self.spos = 0
            return
        step = self.SKIP_SAMPLES if op == "forward" else -self.SKIP_SAMPLES
        total = sum(len(f) for f in self.frames or [])
        self.spos = min(max(0, self.spos + step), total)
        self.pos = min(max(0, self.pos + step // FRAME_BYTES), len(self.frames or []))

    def next_frame(self) -> bytes | None:
        if self.frames is None or self.pos >= len(self.frames) and not self.loops:
            return None
        f = self.frames[self.pos % len(self.frames)]
        self.pos += 1
        return f


# The tone zone of pbxsim/asterisk_etc/indications.conf (country us): ``ring = 440+480/2000,0/4000``.
TONES = {"ring": ((440.0, 480.0, 2.0), (0.0, 0.0, 4.0))}
TONE_VOLUME = 7219  # Asterisk's playtones default (-8 dB), each of a tone's two frequencies


def tone_frames(name: str) -> list[bytes] | None:
    """One cycle of an indication tone of the zone, as Asterisk's playtones generator makes it;
    None for a tone the zone lacks (``tone:ring;tonezone=us`` names the zone, which is the only one)."""
    parts = TONES.get(name.split(";")[0])
    if parts is None:
        return None
    out = []
    for f1, f2, seconds in parts:
        t = np.arange(int(seconds * RATE)) / RATE
        out.append(TONE_VOLUME * (np.sin(2 * np.pi * f1 * t) + np.sin(2 * np.pi * f2 * t)))
    data = ast_lin2mu(np.concatenate(out).astype(np.int16))
    return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)]


def load_playback_frames(media_uri: str, sounds_dirs: list[Path]) -> tuple[list[bytes] | None, bool]:
    """(frames, never_finishes) for a media URI, as Asterisk's file player would find it. A tone's
    frames are one cycle of it (``Playback.loops``: it plays until stopped, as in Asterisk)."""
    scheme, _, target = media_uri.partition(":")
    if scheme == "tone":
        return tone_frames(target), False
    if scheme != "sound":
        return None, scheme not in ("digits", "number", "characters", "recording")
    base = Path(target) if target.startswith("/") else None
    candidates = [base] if base else [d / target for d in sounds_dirs]
    for b in candidates:
        for ext, kind in ((".ulaw", "ulaw"), (".ul", "ulaw"), (".mu", "ulaw"), (".sln", "slin"), (".slin", "slin"), (".raw", "slin"), (".wav", "wav")):
            f = b.with_name(b.name + ext)
            if f.is_file():
                data = f.read_bytes()
                # Linear files reach a u-law channel through Asterisk's own coder.
                if kind == "slin":
                    data = ast_lin2mu(data[: len(data) // 2 * 2])
                elif kind == "wav":
                    data = ast_lin2mu(load_wav_pcm(f))
                return [data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)], False
    return None, False


class BridgePlayer:
    """Asterisk's bridge playback as the ExternalMedia channel receives it (BEHAVIOUR.md, "The echo
    of bridge playbacks"): queued playbacks play sample-continuously, whatever their lengths; a run
    starts either with the file's first frame in the first packet (then one frame without playback
    follows within 20-380 ms) or one frame late; about every 8-12 s of continuous playback the mixer
    emits one more frame without playback, so the delay only grows; when the queue runs empty, the
    last partial frame is dropped and the next playback starts a new run."""

    def __init__(self, queue: deque[Playback], on_playback: Callable[[Playback, str], None], rng: random.Random) -> None:
        self.queue = queue
        self._on_playback = on_playback
        self._rng = rng
        self._running = False
        self._until_step = 0  # frames of content before the next frame without playback
        self._finished: list[Playback] = []

    def _steps_every(self) -> int:
        return self._rng.randint(400, 600)  # 8-12 s

    def _start(self, pb: Playback) -> bool:
        """PlaybackStarted; False if the playback cannot play (Asterisk still sends PlaybackStarted,
        then at once PlaybackFinished ``failed``; an unknown scheme never finishes)."""
        self.flush_events()  # the previous playback's PlaybackFinished comes before this one's start
        if pb.frames is None:
            self.queue.popleft()
            pb.state = "playing"
            self._on_playback(pb, "started")
            if not pb.never_finishes:
                pb.state = "failed"
                self._on_playback(pb, "finished")
            return False
        pb.state = "playing"
        self._on_playback(pb, "started")
        return True

    def frame(self) -> bytes | None:
        """This tick's playback content (160 u-law samples), or None for a frame without any."""
        while not self._running:
            if not self.queue:
                return None
            if self.queue[0].state == "queued" and not self._start(self.queue[0]):
                continue
            self._running = True
            if self._rng.random() < 0.5:  # the first packet carries the file's first frame ...
                self._until_step = self._rng.randint(1, 19)  # ... and a frame without it follows soon
            else:
                self._until_step = self._steps_every()
                return None  # ... or silence, and the file from the next frame on
        if self.queue and self.queue[0].state == "paused":
            return None  # the announcer holds its place in the file; the queue behind it waits
        if self._until_step == 0:
            self._until_step = self._steps_every()
            return None
        self._until_step -= 1
        out = bytearray()
        while len(out) < FRAME_BYTES and self.queue:
            pb = self.queue[0]
            if pb.state == "queued" and not self._start(pb):
                continue
            out += pb.read(FRAME_BYTES - len(out))
            if pb.exhausted:
                self.queue.popleft()
                pb.state = "done"
                self._finished.append(pb)
        if not self.queue:
            self._running = False
            if len(out) < FRAME_BYTES:
                return None  # the last partial frame never reaches the channel
        return bytes(out)

    def flush_events(self) -> None:
        """PlaybackFinished of what ended this tick: after its last echo frame went out."""
        for pb in self._finished:
            self._on_playback(pb, "finished")
        self._finished.clear()

    def stopped(self) -> None:
        """A playback was taken out of the queue: an empty queue ends the run."""
        if not self.queue:
            self._running = False


class Bridge:
    def __init__(
        self, bridge_id: str, name: str, bridge_type: str, on_playback: Callable[[Playback, str], None],
        rng: random.Random | None = None,
    ) -> None:
        self.id = bridge_id
        self.name = name
        self.bridge_type = bridge_type
        self.members: list[Endpoint] = []
        self.queues: dict[Endpoint, deque[bytes]] = {}
        self.playbacks: deque[Playback] = deque()
        self.created = time.time()
        self._on_playback = on_playback  # (playback, "started" | "finished")
        self.player = BridgePlayer(self.playbacks, on_playback, rng or random.Random())
        self._wideband: WidebandEchoPath | None = None

    @property
    def softmix(self) -> bool:
        return len(self.members) >= 3 or bool(self.playbacks)

    @property
    def technology(self) -> str:
        """What ARI reports: a playback is a member of its own (the announcer channel), so the caller,
        the ExternalMedia channel and a playback make a softmix bridge, one channel and a playback
        a simple_bridge."""
        return "softmix" if len(self.members) + bool(self.playbacks) >= 3 else "simple_bridge"

    def add(self, ep: Endpoint) -> None:
        if ep not in self.members:
            self.members.append(ep)
            self.queues[ep] = deque()

    def remove(self, ep: Endpoint) -> None:
        if ep in self.members:
            self.members.remove(ep)
            self.queues.pop(ep, None)

    def on_frame(self, src: Endpoint, payload: bytes, agent: bool, tick: int) -> None:
        if src not in self.queues:
            return
        if not self.softmix:
            for other in self.members:
                if other is not src:
                    other.deliver(payload, agent, tick)
            return
        q = self.queues[src]
        q.append(payload)
        if len(q) > SOFTMIX_MAX_QUEUE:
            q.clear()

    def mix_tick(self, tick: int) -> None:
        """One 20 ms softmix step: every member hears everyone else and the playback."""
        inputs = {m: (q.popleft() if q else None) for m, q in self.queues.items()}
        pb_frame = self.player.frame()
        pb_linear = None
        wideband = any(getattr(m, "rate", RATE) != RATE for m in self.members)
        if wideband:
            if self._wideband is None:
                self._wideband = WidebandEchoPath()
            x = np.frombuffer(audioop.ulaw2lin(pb_frame, 2), dtype=np.int16) if pb_frame is not None else np.zeros(FRAME_BYTES, np.int16)
            y = self._wideband.process(x)
            if pb_frame is not None or np.abs(y).max() >= 1:  # the filtered tail still sounds
                pb_linear = np.clip(np.round(y), -32768, 32767).astype(np.int16).tobytes()
        elif pb_frame is not None:
            pb_linear = audioop.ulaw2lin(pb_frame, 2)
        agents = {m: getattr(m, "is_agent", False) for m in self.members}
        for m in self.members:
            parts: list[bytes] = []
            agent = False
            for o in self.members:
                frame = inputs.get(o)
                if o is not m and frame is not None:
                    parts.append(frame)
                    agent = agent or agents[o]
            if pb_linear is not None:
                agent = True
            if pb_frame is not None and not parts and not wideband:
                m.deliver(pb_frame, agent, tick)  # the file alone: its samples as Asterisk coded them
            elif parts or pb_linear is not None:
                m.deliver(mix_ulaw(parts, pb_linear), agent, tick)
            else:
                m.deliver(SILENCE, False, tick)
        self.player.flush_events()

    def stop_playback(self, pb: Playback) -> bool:
        if pb in self.playbacks:
            self.playbacks.remove(pb)
            pb.state = "done"
            self.player.stopped()
            self._on_playback(pb, "finished")
            return True
        return False


@dataclass(eq=False, kw_only=True)
class CallerMedia(Endpoint):
    """A simulated phone: speaks u-law in real time when told to, silent otherwise (no packets,
    as a two-party bridge carries nothing while a side is silent); records what it hears."""

    speech: bytes = b""
    bridge: Bridge | None = None
    pos: int = 0
    frames_sent: int = 0
    frames_heard: int = 0
    agent_frames: list[tuple[float, bytes]] = field(default_factory=list)
    said: list[tuple[float, float]] = field(default_factory=list)  # (first frame time, speech onset time)
    said_end: list[float] = field(default_factory=list)  # when each utterance's last voiced frame went out
    muted: bool = False  # a playback on the caller's own channel cuts its speech off the bridge
    is_agent: bool = False
    # Every voiced frame heard, whoever spoke it (the agent, a person brought in, a whisper).
    heard_voice: list[tuple[float, bytes]] = field(default_factory=list)
    snoops: list[SnoopMedia] = field(default_factory=list)  # snoop channels on this phone's channel
    rate: int = RATE  # 16000: a wideband phone (slin16), which changes how the bridge's mix sounds
    noise: bytes = b""  # line noise sent all the time (empty: DTX, nothing sent in silence)
    _noise_pos: int = 0
    _onset_s: float = 0.0
    _end: int = 0  # where the voice ends in ``speech``

    def say(self, ulaw: bytes) -> None:
        self.speech = ulaw
        self.pos = 0
        self._onset_s = speech_onset_s(ulaw)
        self._end = speech_end_offset(ulaw)

    @property
    def speech_done(self) -> bool:
        return self.pos >= len(self.speech)

    def _noise_frame(self) -> bytes:
        n = self.noise
        frame = n[self._noise_pos : self._noise_pos + FRAME_BYTES]
        self._noise_pos = (self._noise_pos + FRAME_BYTES) % (len(n) - len(n) % FRAME_BYTES)
        return frame

    def produce(self, tick: int) -> None:
        if self.bridge is None:
            return
        if self.speech_done:
            if not self.noise:
                return  # DTX: a silent phone sends nothing
            frame = self._noise_frame()
        else:
            if self.pos == 0:
                now = time.monotonic()
                self.said.append((now, now + self._onset_s))
            frame = self.speech[self.pos : self.pos + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
            self.pos += FRAME_BYTES
            if self.pos >= self._end and len(self.said_end) < len(self.said):
                self.said_end.append(time.monotonic())
            if self.noise:
                frame = mix_ulaw([frame, self._noise_frame()])
        if self.muted:
            return
        self.frames_sent += 1
        for sn in self.snoops:
            sn.spied(frame, False, tick, "in")
        self.bridge.on_frame(self, frame, False, tick)

    def agent_heard_s(self, since: float = 0.0) -> float:
        return heard_s(self.agent_frames, since)

    def turn_latencies(self) -> list[float]:
        """For each utterance the agent answered: seconds from the end of the caller's voice (its
        last voiced frame, not the prompt's trailing silence) to the first agent audio after it,
        as the caller hears it."""
        out = []
        times = [t for t, _ in self.agent_frames]
        for end in self.said_end:
            after = next((t for t in times if t > end), None)
            if after is not None and all(not (end < t < after) for t in self.said_end):
                out.append(round(after - end, 4))
        return out

    def barge_in_reactions(self) -> list[float]:
        """For each time the caller started speaking while the agent was being heard (the first
        utterance left out): seconds from the caller's speech onset to the agent going quiet."""
        return barge_in_reactions([onset for _, onset in self.said[1:]], self.agent_frames)

    def agent_stopped_after(self, t: float, gap_s: float = 0.1) -> float | None:
        return agent_stopped_after(self.agent_frames, t, gap_s)

    def deliver(self, payload: bytes, agent: bool, tick: int) -> None:
        for sn in self.snoops:
            sn.spied(payload, agent, tick, "out")
            whisper = sn.take_whisper(tick)
            if whisper is not None:
                payload = mix_ulaw([payload, whisper])
        self.hear(payload, agent)

    def hear(self, payload: bytes, agent: bool) -> None:
        """What reaches the phone's ear (a whisper comes here straight, not through the bridge)."""
        self.frames_heard += 1
        now = time.monotonic()
        if agent:
            self.agent_frames.append((now, payload))
        if voiced(payload):
            self.heard_voice.append((now, payload))

    def voice_heard_s(self, since: float = 0.0) -> float:
        """Seconds of anyone's voice this phone heard since ``since``."""
        return heard_s(self.heard_voice, since)

    @property
    def agent_audio_seconds(self) -> float:
        return round(sum(len(p) for _, p in self.agent_frames) / RATE, 3)

    def agent_audio(self) -> bytes:
        return b"".join(p for _, p in self.agent_frames)


class SnoopMedia(Endpoint):
    """A snoop channel (res_stasis_snoop) on a phone's channel: it carries into its own bridge what
    the phone sends (spy in) and hears (spy out), and whispers what it is given to the phone
    (whisper out: the phone hears it; in: it goes out with the phone's own voice). As measured, a
    whisper out is mixed into the frames the phone is sent: with none (a two-party bridge whose
    other side is silent) it is lost."""

    is_agent = False

    def __init__(self, target: CallerMedia, spy: str, whisper: str) -> None:
        self.target = target
        self.spy = spy  # none, in, out, both
        self.whisper = whisper
        self.bridge: Bridge | None = None
        self._pending: tuple[int, bytes] | None = None  # a whisper out waiting for a frame to ride on

    def spied(self, payload: bytes, agent: bool, tick: int, direction: str) -> None:
        if self.bridge is not None and self.spy in (direction, "both"):
            self.bridge.on_frame(self, payload, agent, tick)

    def take_whisper(self, tick: int) -> bytes | None:
        p, self._pending = self._pending, None
        return p[1] if p is not None and tick - p[0] <= 1 else None

    def deliver(self, payload: bytes, agent: bool, tick: int) -> None:
        if self.whisper in ("out", "both"):
            self._pending = (tick, payload)
        if self.whisper in ("in", "both") and self.target.bridge is not None:
            self.target.bridge.on_frame(self.target, payload, agent, tick)


class ExternalMediaEndpoint(Endpoint, asyncio.DatagramProtocol):
    """chan_rtp's ExternalMedia channel: one UDP port, RTP to and from external_host."""

    is_agent = True

    def __init__(self, remote: tuple[str, int], clock: "MediaClock", loss_every: int = 0) -> None:
        self.remote = remote
        self.clock = clock
        self.loss_every = loss_every  # fault: the network loses every Nth packet to the engine
        self.packets_lost = 0
        self.bridge: Bridge | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] | None = None
        self.ssrc = random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.ts = random.getrandbits(32)
        self._last_tick: int | None = None
        self.packets_sent = 0
        self.packets_received = 0
        self.strict_rtp_dropped = 0
        self.malformed = 0
        # (arrival, seq, timestamp, marker, ssrc) of each packet from the agent, for reports/tests.
        self.rx_log: list[tuple[float, int, int, bool, int]] = []

    async def open(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.local = self.transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def deliver(self, payload: bytes, agent: bool, tick: int) -> None:
        if self.transport is None:
            return
        # res_rtp_asterisk's rtp_raw_write: the timestamp follows the wall clock, with the marker
        # bit, only when that strays 640 samples (80 ms) or more from the prediction (+160); after
        # a shorter gap (up to 4 frames missed) it just goes on by 160.
        gap = 1 if self._last_tick is None else max(1, tick - self._last_tick)
        marker = (gap - 1) * FRAME_BYTES >= 640
        self.ts = (self.ts + FRAME_BYTES * (gap if marker else 1)) & 0xFFFFFFFF
        self._last_tick = tick
        self.seq = (self.seq + 1) & 0xFFFF
        if self.loss_every and self.seq % self.loss_every == 0:
            self.packets_lost += 1
            return
        self.transport.sendto(build_packet(PT_ULAW, self.seq, self.ts, self.ssrc, payload, marker), self.remote)
        self.packets_sent += 1

    def inject_forged(self, seq_ahead: int, ssrc: int | None = None) -> None:
        """Fault: one packet from this channel's own address, ``seq_ahead`` beyond the stream (a
        forged or stray packet that strict RTP cannot tell from a genuine one)."""
        if self.transport is not None:
            pkt = build_packet(PT_ULAW, (self.seq + seq_ahead) & 0xFFFF, self.ts, self.ssrc if ssrc is None else ssrc, b"\x00" * FRAME_BYTES)
            self.transport.sendto(pkt, self.remote)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:  # type: ignore[override]
        if addr[:2] != self.remote:
            self.strict_rtp_dropped += 1
            return
        try:
            pkt = RtpPacket.parse(data)
        except RtpParseError:
            self.malformed += 1
            return
        self.packets_received += 1
        self.rx_log.append((time.monotonic(), pkt.sequence, pkt.timestamp, pkt.marker, pkt.ssrc))
        if self.bridge is not None:
            self.bridge.on_frame(self, pkt.payload, True, self.clock.tick)


CATCHUP_TICKS = 5


class MediaClock:
    """One 20 ms clock for the whole PBX: callers speak, softmix bridges mix."""

    def __init__(self) -> None:
        self.callers: set[CallerMedia] = set()
        self.bridges: dict[str, Bridge] = {}
        self.tick = 0
        self.late_runs = 0  # times the clock ran a tick or more (20 ms) late: the simulator stalled
        self.skipped_ticks = 0  # ticks the simulator ran too late for (its callers' frames came late)
        self._t0 = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._handle = loop.call_at(self._t0, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = int((loop.time() - self._t0) / FRAME_S)
        # A phone keeps its own clock: when the simulator runs late, the frames it owes go out
        # now, back to back (as a network delivers a delayed burst), up to CATCHUP_TICKS; a
        # longer stall skips ticks, counted.
        late = max(0, due - self.tick)
        self.late_runs += late > 0
        if late > CATCHUP_TICKS:
            self.skipped_ticks += late - CATCHUP_TICKS
            self.tick = due - CATCHUP_TICKS
        while True:
            tick = self.tick
            for c in list(self.callers):
                c.produce(tick)
            for b in list(self.bridges.values()):
                if b.softmix:
                    b.mix_tick(tick)
            self.tick = tick + 1
            if self.tick > due:
                break
        self._handle = loop.call_at(self._t0 + self.tick * FRAME_S, self._run)
