"""Provider names and how each is built from config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from providers.base import Provider

if TYPE_CHECKING:
    from engine.config import AppConfig

PROVIDER_NAMES = frozenset({"echo", "tone", "local", "deepgram"})


def build_provider(name: str, config: AppConfig) -> Provider:
    if name == "echo":
        from providers.echo import EchoProvider

        return EchoProvider(config.providers.echo.delay_ms)
    if name == "tone":
        from providers.tone import ToneProvider

        t = config.providers.tone
        return ToneProvider(t.frequency_hz, t.duration_ms, t.think_ms)
    if name == "local":
        from providers.local.provider import LocalProvider

        return LocalProvider(config.providers.local)
    if name == "deepgram":
        from providers.deepgram import DeepgramProvider

        return DeepgramProvider(config.providers.deepgram)
    raise ValueError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDER_NAMES))}")
