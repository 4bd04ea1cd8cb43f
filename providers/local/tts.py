"""Piper TTS, sentence by sentence (in the TTS worker process)."""

from __future__ import annotations

from pathlib import Path


class PiperTts:
    def __init__(self, voice_path: Path) -> None:
        from piper import PiperVoice

        config = voice_path.with_name(voice_path.name + ".json")
        self.voice = PiperVoice.load(str(voice_path), config_path=str(config) if config.is_file() else None)
        self.sample_rate: int = self.voice.config.sample_rate

    def synthesize(self, text: str) -> bytes:
        """PCM16 mono at ``sample_rate``. Blocking."""
        return b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text))
