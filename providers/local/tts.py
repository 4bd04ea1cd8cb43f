"""Piper TTS, sentence by sentence, with a cache of what it already said."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path


class PiperTts:
    def __init__(self, voice_path: Path, cache_size: int) -> None:
        from piper import PiperVoice

        config = voice_path.with_name(voice_path.name + ".json")
        self.voice = PiperVoice.load(str(voice_path), config_path=str(config) if config.is_file() else None)
        self.sample_rate: int = self.voice.config.sample_rate
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def cached(self, text: str) -> bytes | None:
        key = " ".join(text.split()).lower()
        pcm = self._cache.get(key)
        if pcm is not None:
            self._cache.move_to_end(key)
            self.hits += 1
        return pcm

    def synthesize(self, text: str) -> bytes:
        """PCM16 mono at ``sample_rate``. Blocking: runs in the TTS worker."""
        pcm = self.cached(text)
        if pcm is not None:
            return pcm
        self.misses += 1
        pcm = b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(text))
        if self._cache_size:
            self._cache[" ".join(text.split()).lower()] = pcm
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return pcm
