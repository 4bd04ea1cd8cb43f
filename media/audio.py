"""G.711 u-law coding and streaming sample-rate conversion (PCM16 mono, native byte order)."""

from __future__ import annotations

import io
import wave

try:
    import audioop as audioop  # stdlib up to 3.12; re-exported for the simulator
except ModuleNotFoundError:  # pragma: no cover - Python 3.13+: the audioop-lts package
    import audioop as audioop

import numpy as np
import soxr

from media.frames import RATE as LINE_RATE


def ulaw_to_pcm16(data: bytes) -> bytes:
    return audioop.ulaw2lin(data, 2)


def pcm16_to_ulaw(data: bytes) -> bytes:
    return audioop.lin2ulaw(data, 2)


class Resampler:
    """A streaming PCM16 resampler that keeps its filter state between chunks of one stream.

    Chunks of one call must go through the same instance, or every 20 ms frame boundary clicks.
    """

    __slots__ = ("in_rate", "out_rate", "_stream")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        # "QQ" is soxr's quick quality: ample for telephone band audio and cheap per 20 ms chunk.
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="QQ")

    def process(self, pcm16: bytes) -> bytes:
        if self._stream is None:
            return pcm16
        out: np.ndarray = self._stream.resample_chunk(np.frombuffer(pcm16, dtype=np.int16))
        return out.tobytes()

    def flush(self) -> bytes:
        if self._stream is None:
            return b""
        out: np.ndarray = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return out.tobytes()


class FixedResampler:
    """Frames of one rate to another, each frame out the size of the frame in times the ratio, as
    Asterisk's translators make them (a stream transport's slin16 frames): the resampler's delay
    leads as silence instead of making the first frames short."""

    __slots__ = ("_rs", "_ratio", "_buf", "_primed")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._rs = Resampler(in_rate, out_rate)
        self._ratio = out_rate / in_rate
        self._buf = b""
        self._primed = False

    def process(self, pcm16: bytes) -> bytes:
        want = int(len(pcm16) // 2 * self._ratio) * 2
        data = self._buf + self._rs.process(pcm16)
        if not self._primed:
            data = bytes(max(0, want - len(data))) + data
            self._primed = True
        out, self._buf = data[:want], data[want:]
        return out


class UlawEncoder:
    """Agent speech at any sample rate to the line's u-law at 8 kHz, one stream per call (the
    resampler's filter state carries across chunks)."""

    __slots__ = ("_resampler",)

    def __init__(self) -> None:
        self._resampler: Resampler | None = None

    def encode(self, pcm16: bytes, sample_rate: int) -> bytes:
        if sample_rate != LINE_RATE:
            if self._resampler is None or self._resampler.in_rate != sample_rate:
                self._resampler = Resampler(sample_rate, LINE_RATE)
            pcm16 = self._resampler.process(pcm16)
        return pcm16_to_ulaw(pcm16)


def wav_bytes(pcm16: bytes, rate: int) -> bytes:
    """PCM16 mono as a WAV file."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)
    return buf.getvalue()


def rms_dbfs(pcm16: bytes) -> float:
    """RMS level in dBFS (-inf for digital silence clipped to -96)."""
    if not pcm16:
        return -96.0
    rms = audioop.rms(pcm16, 2)
    if rms <= 0:
        return -96.0
    return max(-96.0, 20.0 * float(np.log10(rms / 32768.0)))


def voiced_ms(pcm16: bytes, sample_rate: int, threshold_dbfs: float) -> int:
    """How much of the audio is louder than ``threshold_dbfs``, in 20 ms frames: a cheap test of
    whether an utterance has any speech in it."""
    frame = sample_rate * 2 // 50
    return 20 * sum(1 for i in range(0, len(pcm16) - frame + 1, frame) if rms_dbfs(pcm16[i : i + frame]) > threshold_dbfs)
