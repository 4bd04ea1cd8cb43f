"""This machine's sound device (sounddevice/PortAudio): listening in on a live call or to a recorded
one, and the operator's microphone when they take a call over.

The engine (or, attached, the console socket) hands over the caller's and the agent's audio as it
flows; AudioMonitor plays both sides mixed at 8 kHz, or one side alone (the agent's side is what
the caller hears: an operator who took the call over is on it). Replay plays a recording
(both sides mixed) and knows where it is, for the transcript to follow. OperatorMic records the
operator at 8 kHz in 20 ms frames for the engine's ``operator_audio``. On a PBX with no sound device
(the usual case) they say so in plain words: listen from a laptop, attached over SSH. The devices
are injectable (``open_output``, ``open_input``) for tests and for machines without a sound card."""

from __future__ import annotations

import asyncio
import threading
from functools import partial
import wave
from collections import deque
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import numpy as np

from media.audio import Resampler
from media.frames import FRAME_SAMPLES, RATE

MAX_BUFFER_S = 2.0  # a listener further behind than this skips ahead
# The app's listener among a call's (set_audio_tap's key): attached consoles listen beside it.
TAP_KEY = "monitor"

# What an operator listens to: both sides mixed, or one alone.
Side = Literal["both", "caller", "agent"]

# PortAudio's own words for "no device" ("Error querying device -1") tell an operator nothing.
NO_OUTPUT = "no sound device on this machine: listen from a laptop with `aiagent-tui attach` over SSH port forwarding (docs/operations.md)"
NO_OUTPUT_REPLAY = "no sound device on this machine: play the recording on one that has (`calls show ID` names its file)"
NO_INPUT = "no microphone on this machine: take the call over from a laptop with `aiagent-tui attach` over SSH port forwarding (docs/operations.md)"


class MonitorUnavailable(Exception):
    pass


def _sounddevice(no_device: str) -> Any:
    try:
        import sounddevice as sd
    except OSError as e:  # PortAudio itself is missing
        raise MonitorUnavailable(f"{no_device}; or install the PortAudio library here (libportaudio2): {e}") from e
    return sd


# PortAudio's callback: (int16[frames, 1] to fill or recorded, frames, time info, status).
Callback = Callable[[np.ndarray, int, Any, Any], None]


class Output(Protocol):  # a device open until closed (a speaker or a microphone)
    device: str

    def close(self) -> None: ...


class _Stream:
    """The default output or input device, 8 kHz mono, ``callback`` on PortAudio's thread."""

    def __init__(self, kind: Literal["output", "input"], callback: Callback, no_device: str, blocksize: int = 0) -> None:
        sd = _sounddevice(no_device)
        try:
            info = sd.query_devices(kind=kind)
        except Exception as e:  # PortAudio: "Error querying device -1"
            raise MonitorUnavailable(no_device) from e
        self.device = str(info.get("name", f"default {kind}"))
        stream = sd.OutputStream if kind == "output" else sd.InputStream
        try:
            self._stream = stream(samplerate=RATE, channels=1, dtype="int16", blocksize=blocksize, callback=callback)
            self._stream.start()
        except Exception as e:
            raise MonitorUnavailable(f"cannot open {self.device}: {e}") from e

    def close(self) -> None:
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:
            pass


OpenOutput = Callable[[Callback], Output]
# The default devices (partials, not functions: a screen keeps them as class attributes, unbound).
speaker: OpenOutput = partial(_Stream, "output", no_device=NO_OUTPUT)
microphone: OpenOutput = partial(_Stream, "input", no_device=NO_INPUT, blocksize=FRAME_SAMPLES)  # 20 ms blocks
REPLAY_DEVICE: OpenOutput = partial(_Stream, "output", no_device=NO_OUTPUT_REPLAY)  # says what to do with a recording instead


class AudioMonitor:
    """A live call on the sound device: ``feed`` is the engine's AudioTap; ``side`` what is played."""

    def __init__(self, call_id: str, open_output: OpenOutput = speaker, side: Side = "both") -> None:
        self.call_id = call_id
        self.side: Side = side
        # The voice of an operator who took the call over, with the agent's side: off for that
        # operator themselves (their own voice back, late, is no help).
        self.play_operator = True
        self._lock = threading.Lock()
        self._queues: dict[str, deque[np.ndarray]] = {"caller": deque(), "agent": deque()}
        self._resamplers: dict[tuple[str, int], Resampler] = {}
        self._out = open_output(self._play)
        self.device = self._out.device

    def feed(self, source: str, pcm16: bytes, rate: int) -> None:
        """Called by the engine on its loop: must be quick."""
        if source == "operator":
            if not self.play_operator:
                return
            source = "agent"  # what the caller hears
        if source not in self._queues or self.side not in ("both", source):
            return
        if rate != RATE:
            key = (source, rate)
            if key not in self._resamplers:
                self._resamplers[key] = Resampler(rate, RATE)
            pcm16 = self._resamplers[key].process(pcm16)
        samples = np.frombuffer(pcm16, dtype=np.int16)
        with self._lock:
            q = self._queues[source]
            q.append(samples)
            while sum(len(x) for x in q) > RATE * MAX_BUFFER_S:
                q.popleft()

    def _take(self, q: deque, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.int32)
        i = 0
        while i < n and q:
            chunk = q[0]
            k = min(n - i, len(chunk))
            out[i : i + k] = chunk[:k]
            if k == len(chunk):
                q.popleft()
            else:
                q[0] = chunk[k:]
            i += k
        return out

    def _play(self, outdata, frames, time_info, status) -> None:  # PortAudio's thread
        with self._lock:
            mix = self._take(self._queues["caller"], frames) + self._take(self._queues["agent"], frames)
        outdata[:, 0] = np.clip(mix, -32768, 32767).astype(np.int16)

    def close(self) -> None:
        self._out.close()


OpenInput = Callable[[Callback], Output]


class OperatorMic:
    """The operator's microphone while they have the call: each block goes to ``send(pcm16, rate)``
    on the event loop that opened it (the engine's ``operator_audio`` is not thread-safe)."""

    def __init__(self, call_id: str, send: Callable[[bytes, int], None], open_input: OpenInput = microphone) -> None:
        self.call_id = call_id
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._in = open_input(self._record)
        self.device = self._in.device

    def _record(self, indata, frames, time_info, status) -> None:  # PortAudio's thread
        pcm16 = np.ascontiguousarray(indata[:, 0], dtype=np.int16).tobytes()
        try:
            self._loop.call_soon_threadsafe(self._send, pcm16, RATE)
        except RuntimeError:  # the loop closed under a device still running
            pass

    def close(self) -> None:
        self._in.close()


class Replay:
    """A recorded call on the sound device, both sides mixed; ``position_s`` is what has been played.
    Space pauses (the device plays silence meanwhile)."""

    def __init__(self, path: str | Path, open_output: OpenOutput = REPLAY_DEVICE) -> None:
        try:
            with wave.open(str(path)) as w:
                if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (2, 2, RATE):
                    raise MonitorUnavailable(f"{path} is not a call recording (8 kHz 16-bit stereo)")
                both = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2).astype(np.int32)
        except (OSError, EOFError, wave.Error) as e:
            raise MonitorUnavailable(f"cannot read the recording {path}: {e}") from e
        self.samples = np.clip(both[:, 0] + both[:, 1], -32768, 32767).astype(np.int16)
        self.duration_s = len(self.samples) / RATE
        self._pos = 0
        self.paused = False
        self._out = open_output(self._play)
        self.device = self._out.device

    @property
    def position_s(self) -> float:
        return self._pos / RATE

    @property
    def done(self) -> bool:
        return self._pos >= len(self.samples)

    def _play(self, outdata, frames, time_info, status) -> None:  # PortAudio's thread
        outdata[:, 0] = 0
        if self.paused:
            return
        chunk = self.samples[self._pos : self._pos + frames]
        outdata[: len(chunk), 0] = chunk
        self._pos += len(chunk)

    def close(self) -> None:
        self._out.close()
