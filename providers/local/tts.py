"""Piper TTS, sentence by sentence (in the TTS worker process), and the engine-side cache of what
it already said."""

from __future__ import annotations

from collections import OrderedDict
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


class SpeechCache:
    """Synthesized sentences by normalised text, least recently used dropped first, plus pinned
    ones (the greeting, the apology). It lives in the engine, so those play even while the TTS
    worker restarts."""

    def __init__(self, size: int) -> None:
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._pinned: dict[str, bytes] = {}
        self._size = size
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _key(text: str) -> str:
        return " ".join(text.split()).lower()

    def get(self, text: str) -> bytes | None:
        key = self._key(text)
        pcm = self._pinned.get(key) or self._cache.get(key)
        if pcm is None:
            self.misses += 1
            return None
        if key in self._cache:
            self._cache.move_to_end(key)
        self.hits += 1
        return pcm

    def put(self, text: str, pcm: bytes, pin: bool = False) -> None:
        if pin:
            self._pinned[self._key(text)] = pcm
        elif self._size:
            self._cache[self._key(text)] = pcm
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
