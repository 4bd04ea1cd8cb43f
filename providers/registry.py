"""How each provider is built from its configuration (the names are in providers.config)."""

from __future__ import annotations

from providers.base import Provider
from providers.config import PROVIDER_NAMES, ProvidersConfig


def build_provider(name: str, config: ProvidersConfig, phrases: tuple[str, ...] = ()) -> Provider:
    """``phrases``: what the profiles always say (greetings, closing lines, announcements), for a
    provider that prepares them once."""
    if name == "echo":
        from providers.echo import EchoProvider

        return EchoProvider(config.echo.delay_ms)
    if name == "tone":
        from providers.tone import ToneProvider

        t = config.tone
        return ToneProvider(t.frequency_hz, t.duration_ms, t.think_ms)
    if name == "local":
        from providers.local.provider import LocalProvider

        return LocalProvider(config.local, phrases)
    if name == "deepgram":
        from providers.deepgram import DeepgramProvider

        return DeepgramProvider(config.deepgram)
    raise ValueError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDER_NAMES))}")
