"""Piper TTS, sentence by sentence (in the TTS worker process)."""

from __future__ import annotations

import json
from pathlib import Path


class PiperTts:
    def __init__(self, voice_path: Path, threads: int, spin: bool = False) -> None:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        # PiperVoice.load's session, but with onnxruntime's worker threads sleeping between
        # operators instead of spinning (``spin``: its default, for bench/tts_speed.py): the spin
        # costs CPU time that the other callers' Whisper and LLM work needs, for 20 ms a sentence.
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
            options.add_session_config_entry(key, "1" if spin else "0")
        config = voice_path.with_name(voice_path.name + ".json")
        self.voice = PiperVoice(
            session=onnxruntime.InferenceSession(str(voice_path), sess_options=options, providers=["CPUExecutionProvider"]),
            config=PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8"))),
        )
        self.sample_rate: int = self.voice.config.sample_rate

    def synthesize(self, text: str) -> bytes:
        """PCM16 mono at ``sample_rate``. Blocking."""
        return b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text))
