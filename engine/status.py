"""The engine's state as frozen typed objects: made by ``Engine.summary()`` / ``Engine.status()``,
served by ``/health`` (``EngineStatus.as_json``), drawn by the app's header, read by the metrics
collector. Per-call detail lives here and in the app, never in metric labels."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from engine.sessions import CallSnapshot, PlaybackMode
from providers.base import ComponentStatus, Readiness


@dataclass(frozen=True, slots=True)
class ModelQueue:
    model: str  # the stage's component name: local-llm-worker, server-NAME
    depth: int  # jobs waiting or running
    oldest_wait_s: float  # how long the job waiting longest has waited (in-process workers)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """The last config reload (SIGHUP, the console's R): what it applied to new calls, what waits for
    a restart, what it could not do, or why the file was refused whole."""

    at: float  # wall clock
    applied: tuple[str, ...]  # dotted settings
    restart: tuple[str, ...]
    failed: tuple[str, ...]
    refused: str | None = None
    removed_profiles: tuple[str, ...] = ()  # their callers now get the default profile
    overridden: tuple[str, ...] = ()  # "rtp.port (RTP_PORT)": set in the file, but the environment wins

    @property
    def warns(self) -> bool:
        """Something the operator should read: not everything in the file took effect as written."""
        return bool(self.restart or self.failed or self.removed_profiles or self.overridden)

    def describe(self) -> str:
        if self.refused is not None:
            return f"refused: {self.refused}"
        parts = [f"{_listed(self.applied)} for new calls" if self.applied else "nothing changed that applies while running"]
        if self.removed_profiles:
            parts.append(f"profiles removed: {', '.join(self.removed_profiles)} (their callers now get the default profile)")
        if self.restart:
            parts.append(f"{_listed(self.restart)} at the next restart")
        if self.overridden:
            parts.append(f"the environment overrides the file for {_listed(self.overridden)}: the file's value has no effect")
        parts += self.failed
        return "; ".join(parts)


def _listed(names: tuple[str, ...], most: int = 6) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStatus:
    """The call history (engine/history.py): failing from a failed write (or one that has not
    returned for a second) until a write succeeds."""

    url: str  # without its password
    opened: bool
    failing: bool
    failing_since: float | None  # wall clock
    last_error: str | None
    write_s: float | None  # a write in flight for this long
    write_errors: int
    records_written: int
    records_held: int  # ended calls' records waiting in memory for the database
    records_lost: int  # refused by the database, beyond what memory holds, or unwritten at shutdown
    incident: str | None  # a file deleted or damaged, and what was done, recently


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportStatus:
    """One transport's server-wide counters, for /health and /metrics (``ai_agent_transport_*``,
    labelled by ``name``). On RTP a message is a datagram and a connection a call's route."""

    name: str
    listening: str  # where the engine listens or connects ("" if it does neither)
    running: bool
    connections: int = 0  # open now
    connections_total: int = 0
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    malformed: int = 0  # messages that could not be read (the connection is closed, the call ends)
    oversize: int = 0  # frames over the size limit
    unknown: int = 0  # connections that matched no call
    cut: int = 0  # connections that ended before their call did
    slow_reader: int = 0  # frames dropped because the peer did not read them in time


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineSummary:
    """The engine without per-call detail: cheap enough for a header drawn ten times a second."""

    status: Literal["ok", "degraded"]
    fatal_error: str | None
    ari_connected: bool
    ari_url: str
    ari_app: str
    ari_last_error: str | None
    ari_reconnects: int
    rtp_server_running: bool
    rtp_address: str
    audio_transport: str
    active_calls: int
    max_calls: int
    calls_total: int
    calls_rejected_over_capacity: int
    calls_failed: int
    default_provider: str
    new_calls_provider: str  # where a new call goes now: the default, or its fallback while it is not ready
    providers: dict[str, Readiness]
    downstream_mode: PlaybackMode  # playback.downstream_mode: how new calls' agent audio goes out
    problems: tuple[str, ...]  # components and model workers that are not running, in words
    model_queues: tuple[ModelQueue, ...]  # each model stage's jobs (in-process workers, servers)
    health_url: str
    metrics_url: str
    last_reload: ReloadResult | None = None
    # The calls this machine's models serve at once (None: no model runs here), how that was found
    # (measured, the start value, or providers.local.max_active_calls), and the calls using them now.
    model_capacity: int | None = None
    model_capacity_basis: str = ""
    model_calls: int = 0
    calls_refused_model_capacity: int = 0  # turned away (asterisk.over_capacity): the models were at capacity
    turns_failed: int = 0  # turns the models could not serve: the caller got the apology instead
    history: HistoryStatus | None = None  # None: history.enabled is false
    # The media transports this engine serves calls on: rtp always, and those media.transport or a
    # profile names (docs/transports.md). More than one: the call list shows each call's.
    media_transports: tuple[str, ...] = ("rtp",)


@dataclass(frozen=True, slots=True)
class AriCounters:
    malformed_events: int
    handler_errors: int
    call_task_errors: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RtpCounters:
    packets_in: int
    packets_out: int
    foreign_dropped: int
    after_end_dropped: int  # from a call that had just ended (in flight as it went)
    malformed_dropped: dict[str, int]  # by reason
    unsupported_payload_dropped: int
    duplicates: int
    late_dropped: int
    probation_dropped: int
    kernel_drops: int | None
    receive_buffer_bytes: int
    send_errors: int
    internal_errors: int
    late_ticks: int
    pacing_error_p50_ms: float
    pacing_error_p99_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallAggregates:
    """Over every live call (and, for the totals, the ended ones): bounded, for /metrics."""

    worst_loss_ratio: float
    worst_jitter_ms: float
    gated: int  # calls whose capture is muted while the agent speaks
    capturing: int  # calls whose caller audio reaches the provider
    stream_underruns: int
    stream_overruns: int


@dataclass(slots=True, kw_only=True)
class ConversationCounters:
    """Engine-wide turn-taking counts (every call's conversation adds to one), and the record of them
    that EngineStatus holds (a copy): one set of names from the counting to /metrics."""

    barge_ins: int = 0
    barge_ins_forced: int = 0
    barge_in_attempts: int = 0  # caller sound during agent speech too short to stop it
    barge_in_pauses: int = 0  # the agent paused on caller sound (stream mode)
    false_pauses: int = 0  # ... and resumed: it was not the caller talking (a cough, a click, echo)
    fallback_flushes: int = 0
    turns: int = 0
    early_ends: int = 0  # turns ended at the caller's pause on a complete transcript, before the VAD's hangover
    early_answers_used: int = 0  # answers begun at the caller's pause and taken over by the turn
    early_answers_dropped: int = 0  # ... and dropped: the caller said more (model work spent for nothing)


@dataclass(slots=True, kw_only=True)
class PlaybackCounters:
    """Engine-wide playback counts, and the record of them that EngineStatus holds (a copy)."""

    files_started: int = 0
    files_finished: int = 0
    files_failed: int = 0
    files_timed_out: int = 0
    files_stopped: int = 0
    stream_fallbacks: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineStatus:
    summary: EngineSummary
    components: tuple[ComponentStatus, ...]
    ari: AriCounters
    rtp: RtpCounters
    aggregates: CallAggregates
    conversation: ConversationCounters  # a copy of the engine's, taken with the rest
    playback: PlaybackCounters
    actions: tuple[tuple[str, str, int], ...]  # (kind, outcome, count): transfers, hangups, prompts
    calls: tuple[CallSnapshot, ...]  # empty unless asked for with detail
    transports: tuple[TransportStatus, ...] = ()  # every transport the engine has, running or not
    calls_by_transport: dict[str, int] = dataclasses.field(default_factory=dict)  # live calls by their transport

    def as_json(self) -> dict[str, Any]:
        """The /health document: the summary's fields at the top, then the detail."""
        summary = dataclasses.asdict(self.summary)
        summary["problems"] = list(self.summary.problems)
        rtp = dataclasses.asdict(self.rtp)
        rtp["malformed_dropped"] = sum(self.rtp.malformed_dropped.values())
        return {
            **summary,
            "components": [dataclasses.asdict(c) for c in self.components],
            "ari": dataclasses.asdict(self.ari),
            "rtp": rtp,
            # Each transport: running, where it listens or connects, its connections and counters.
            "transports": {t.name: {**dataclasses.asdict(t), "calls": self.calls_by_transport.get(t.name, 0)} for t in self.transports},
            "conversation": {
                s.call_id: {
                    "state": s.conversation.state,
                    "gating": s.conversation.gating,
                    "capture_enabled": s.conversation.capture_enabled,
                    "barge_ins": s.conversation.barge_ins,
                    "downstream_mode": s.conversation.downstream_mode,
                    "operator": s.conversation.operator,
                }
                for s in self.calls
            },
            "actions": [{"kind": k, "outcome": o, "count": n} for k, o, n in self.actions],
            "calls": [dataclasses.asdict(s) for s in self.calls],
        }
