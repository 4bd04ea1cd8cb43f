"""The one frame vocabulary: Asterisk's ExternalMedia stream is u-law at 8 kHz in 20 ms frames."""

from __future__ import annotations

from typing import Final

RATE: Final = 8000  # samples per second on the line
FRAME_MS: Final = 20
FRAME_S: Final = FRAME_MS / 1000
FRAME_SAMPLES: Final = RATE * FRAME_MS // 1000  # 160
ULAW_FRAME_BYTES: Final = FRAME_SAMPLES  # one byte per sample
PCM_FRAME_BYTES: Final = FRAME_SAMPLES * 2  # PCM16
SILENT_PCM_FRAME: Final = bytes(PCM_FRAME_BYTES)
ULAW_SILENCE: Final = 0xFF  # u-law code of 0, what Asterisk fills silence with


def frames_in(ms: int) -> int:
    """How many whole frames ``ms`` milliseconds are (at least one)."""
    return max(1, ms // FRAME_MS)


def packet_frames(pcm: bytes) -> list[bytes]:
    """One packet's audio (8 kHz PCM16) as whole 20 ms frames. A short packet (Asterisk can end a
    prompt with a 12-byte one) is padded with silence rather than carried into the next packet, so
    that frame boundaries stay on packet boundaries, where the agent's own playback lines up."""
    size = PCM_FRAME_BYTES
    if len(pcm) == size:
        return [pcm]
    rem = len(pcm) % size
    if rem:
        pcm = pcm + bytes(size - rem)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]
