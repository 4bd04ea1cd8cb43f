"""How each provider is built from its configuration (the names are in providers.config)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from providers.base import Provider
from providers.profile import AgentProfile
from providers.config import ProvidersConfig

if TYPE_CHECKING:
    from providers.pipeline import StagePool


def build_provider(name: str, config: ProvidersConfig, pool: StagePool, profiles: Sequence[AgentProfile] = ()) -> Provider:
    """``pool``: the model stages pipelines share; ``profiles``: who the agent will be, for a
    provider that prepares their fixed lines (greetings, closing lines, announcements) and
    instructions once."""
    if name == "echo":
        from providers.echo import EchoProvider

        return EchoProvider(config.echo.delay_ms)
    if name == "tone":
        from providers.tone import ToneProvider

        t = config.tone
        return ToneProvider(t.frequency_hz, t.duration_ms, t.think_ms)
    if config.is_pipeline(name):
        from providers.pipeline import PipelineProvider

        return PipelineProvider(name, config, pool, profiles)
    if name == "deepgram":
        from providers.deepgram import DeepgramProvider

        return DeepgramProvider(config.deepgram)
    raise ValueError(f"unknown provider {name!r}; known: {', '.join(sorted(config.names))}")
