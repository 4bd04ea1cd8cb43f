"""How each provider is built from its configuration (the names are in providers.config)."""

from __future__ import annotations

from typing import Sequence

from providers.base import Provider
from providers.profile import AgentProfile
from providers.config import PROVIDER_NAMES, ProvidersConfig


def build_provider(name: str, config: ProvidersConfig, profiles: Sequence[AgentProfile] = ()) -> Provider:
    """``profiles``: who the agent will be, for a provider that prepares their fixed lines
    (greetings, closing lines, announcements) and instructions once."""
    if name == "echo":
        from providers.echo import EchoProvider

        return EchoProvider(config.echo.delay_ms)
    if name == "tone":
        from providers.tone import ToneProvider

        t = config.tone
        return ToneProvider(t.frequency_hz, t.duration_ms, t.think_ms)
    if name == "local":
        from providers.local.provider import LocalProvider

        phrases = tuple(dict.fromkeys(t for p in profiles for t in p.fixed_phrases() if t))
        return LocalProvider(config.local, phrases, tuple(dict.fromkeys(p.instructions() for p in profiles)))
    if name == "deepgram":
        from providers.deepgram import DeepgramProvider

        return DeepgramProvider(config.deepgram)
    raise ValueError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDER_NAMES))}")
