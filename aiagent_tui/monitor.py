"""Listening in on a call on this machine's sound device (sounddevice/PortAudio).

The engine hands over the caller's and the agent's audio as it flows; this mixes the two at
8 kHz and plays them. On a PBX with no sound device (the usual case) it says so instead."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from media.audio import Resampler

RATE = 8000
MAX_BUFFER_S = 2.0  # a listener further behind than this skips ahead


class MonitorUnavailable(Exception):
    pass


class AudioMonitor:
    def __init__(self, call_id: str) -> None:
        try:
            import sounddevice as sd
        except OSError as e:  # PortAudio itself is missing
            raise MonitorUnavailable(f"no PortAudio library ({e}); install libportaudio2") from e
        try:
            info = sd.query_devices(kind="output")
        except Exception as e:
            raise MonitorUnavailable(f"no audio output device on this machine ({e})") from e
        self.call_id = call_id
        self.device = str(info.get("name", "default output"))
        self._lock = threading.Lock()
        self._queues: dict[str, deque[np.ndarray]] = {"caller": deque(), "agent": deque()}
        self._resamplers: dict[tuple[str, int], Resampler] = {}
        try:
            self._stream = sd.OutputStream(samplerate=RATE, channels=1, dtype="int16", callback=self._play)
            self._stream.start()
        except Exception as e:
            raise MonitorUnavailable(f"cannot open {self.device}: {e}") from e

    def feed(self, source: str, pcm16: bytes, rate: int) -> None:
        """Called by the engine on its loop: must be quick."""
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
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:
            pass
