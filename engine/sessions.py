"""SessionStore: the single source of call state, and the typed events it publishes.

Consumers (metrics, the terminal app, tests) subscribe to events and read snapshots; they
never reach into the media path or call control.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterator, Literal, Protocol

from media.rtp_stats import RtpStreamStats
from media.stream_stats import StreamStats

log = logging.getLogger(__name__)

# How the agent's audio reaches the caller (playback.downstream_mode): files Asterisk plays on the
# bridge, or RTP through the engine's socket (engine/playback.py).
PlaybackMode = Literal["file", "stream"]

QUIET_MIN_S = 2.0  # quiet spells kept for the history: shorter ones are a normal pause

class CallState(str, enum.Enum):
    CONNECTING = "connecting"  # answered, bridge and ExternalMedia being set up
    STREAMING = "streaming"  # media flows, listening to the caller
    PROCESSING = "processing"  # the provider is working on an answer
    SPEAKING = "speaking"  # agent audio is going out
    CLEANUP = "cleanup"  # tearing down channels, bridge, files
    ENDED = "ended"


class ConversationState(str, enum.Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    PROCESSING = "processing"  # the caller finished; the agent has not answered yet
    AGENT_SPEAKING = "agent_speaking"
    OPERATOR = "operator"  # an operator has taken the call over: the agent is silent, the caller still transcribed


@dataclass(slots=True, kw_only=True)
class TurnTimeline:
    """One exchange, on the loop's monotonic clock (seconds). Stages a provider does not have stay None.

    The turn's latency is what the caller feels: from their last voiced frame (``last_voice_in``)
    to the first agent audio out. The first part of it is the end-of-speech wait (``endpoint_s``:
    that frame to the engine's decision that the caller has finished, ``speech_end``); the
    provider's stages follow from that decision."""

    speech_end: float | None = None  # the engine decided the caller had finished (VAD end, early end, fallback flush)
    stt_final: float | None = None
    llm_first_token: float | None = None
    first_sentence: float | None = None
    tts_first_audio: float | None = None
    first_audio_out: float | None = None  # first agent frame sent / playback started (the hold line's, if held)
    hold: float | None = None  # the provider said its hold line: the answer was slow
    # The caller's last frame the VAD heard as voice in this turn (its arrival), before speech_end;
    # None: none was heard (a fallback flush).
    last_voice_in: float | None = None
    # The engine handed the first audio on: its first frame sent (stream mode, = first_audio_out),
    # its first play request sent (file mode: Asterisk starts it 1-8 ms later).
    audio_handed: float | None = None
    # Of speech_end -> audio_handed, where the provider runs models itself (the local pipeline): the
    # time a model worked for this call, and the time its jobs waited behind other calls'.
    in_models_s: float | None = None
    queued_s: float | None = None

    @property
    def voice_end(self) -> float | None:
        """Where the caller's wait starts: their last voiced frame, else the end-of-speech decision."""
        return self.last_voice_in if self.last_voice_in is not None else self.speech_end

    @property
    def endpoint_s(self) -> float | None:
        """The end-of-speech wait: the caller's last voiced frame to the decision that they had finished."""
        if self.last_voice_in is None or self.speech_end is None:
            return None
        return self.speech_end - self.last_voice_in

    @property
    def latency_s(self) -> float | None:
        """What the caller waited: their last voiced frame (else the end-of-speech decision) to the
        first agent audio out."""
        start = self.voice_end
        if start is None or self.first_audio_out is None:
            return None
        return self.first_audio_out - start

    @property
    def own_s(self) -> float | None:
        """The engine's own share of the turn until it handed the audio on: neither in a model nor
        queued for one. Counted from the end-of-speech decision: the wait for it is not the engine's
        work but the VAD's hangover (``endpoint_s``)."""
        if self.speech_end is None or self.audio_handed is None or self.in_models_s is None or self.queued_s is None:
            return None
        return self.audio_handed - self.speech_end - self.in_models_s - self.queued_s


@dataclass(slots=True)
class VoiceState:
    """The caller's voice activity, for display: current level and the last seconds of levels."""

    speaking: bool = False
    level_dbfs: float = -96.0
    levels: deque[float] = field(default_factory=lambda: deque(maxlen=150))  # 3 s of 20 ms frames


@dataclass(slots=True, kw_only=True)
class OutboundStats:
    packets: int = 0
    bytes: int = 0
    overruns: int = 0  # frames dropped because the outbound queue was full
    underruns: int = 0  # a playing stream ran dry and audio came again within 100 ms
    operator_gaps: int = 0  # the same while an operator spoke (their line's bursts, not the agent's audio)
    operator_dropped: int = 0  # an operator's oldest frames dropped to keep their delay bounded
    last_pacing_error_ms: float = 0.0
    max_pacing_error_ms: float = 0.0


@dataclass(slots=True)
class PlaybackRef:
    """One agent playback on the call's bridge (file mode); its id is the gating token."""

    playback_id: str
    path: str
    duration_s: float
    started_at: float | None = None
    posted_at: float | None = None  # the engine asked Asterisk to play it


@dataclass(slots=True)
class ProviderSession:
    name: str
    started_at: float | None = None
    ready: bool = False
    errors: int = 0
    last_error: str | None = None


@dataclass(slots=True, frozen=True)
class TranscriptTurn:
    role: Literal["caller", "agent", "note"]  # note: not spoken (an operator's instruction, a take-over)
    text: str
    final: bool
    at: float  # wall clock
    by: str = ""  # an operator's doing (a line they had the agent say, a note): who ("alice (local)")


# The operator's actions on a call, in words (ActionRecord.kind -> what the history says).
OPERATOR_ACTIONS = {"say": "line for the agent", "instruct": "instruction", "take_over": "take over", "hand_back": "hand back"}


@dataclass(slots=True, kw_only=True)
class ActionRecord:
    """An action on the call: a transfer or a hangup, who asked for it, and how it went."""

    # "transfer" | "hangup"; an operator's: "say" (a line the agent says), "instruct" (added to its
    # instructions for the rest of the call), "take_over", "hand_back"
    kind: str
    by: str  # "agent" (the provider decided), "keypad" (the caller's DTMF), "operator" or "NAME (local)"/"NAME (attached)", "silence"
    reason: str
    department: str = ""
    target: str = ""  # for a transfer: EXT@CONTEXT or TECH/resource
    # announcing (its line is being said) -> sent (ARI asked) -> done | failed; refused: not allowed
    state: str = "announcing"
    detail: str = ""  # why it failed or was refused
    text: str = ""  # an operator's line or instruction
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        what = action_words(self.kind, self.department, self.target, self.text)
        return f"{what} by {self.by}: {self.state}{' - ' + self.detail if self.detail else ''}"


def action_words(kind: str, department: str, target: str, text: str) -> str:
    """An action in words, as the call's log and `calls show` say it."""
    if kind == "transfer":
        return f"transfer to {department} ({target})"
    if kind == "bring_in":  # its reason is the way: introduce, bridge, snoop
        return f"bringing in {department} ({target})"
    what = OPERATOR_ACTIONS.get(kind, kind)
    return f"{what} {text!r}" if text else what


@dataclass(slots=True, kw_only=True)
class CallSession:
    call_id: str  # the caller's channel id
    caller_channel_id: str
    caller_channel_name: str = ""  # Asterisk's name for it (PJSIP/100-0000002a), as in `core show channels`
    caller_number: str = ""
    caller_name: str = ""
    stasis_args: tuple[str, ...] = ()
    dialled: str = ""  # the extension the caller dialled (StasisStart channel.dialplan.exten)
    profile: str = "default"  # the agent profile serving the call
    actions: list[ActionRecord] = field(default_factory=list)
    bridge_id: str | None = None
    external_channel_id: str | None = None
    rtp_remote: tuple[str, int] | None = None  # Asterisk's UNICASTRTP_LOCAL_ADDRESS/PORT
    transport: str = "rtp"  # how Asterisk hands the call's audio over: rtp, audiosocket, websocket
    media_remote: str = ""  # the media link's far end ("127.0.0.1:20002/udp", a peer, a URL)
    state: CallState = CallState.CONNECTING
    provider: ProviderSession | None = None
    rtp_in: RtpStreamStats = field(default_factory=RtpStreamStats)
    rtp_in_malformed: int = 0
    rtp_in_late: int = 0  # reordered packets not passed on (audio is never played backwards)
    rtp_out: OutboundStats = field(default_factory=OutboundStats)  # the agent's frames out, on any transport
    stream_in: StreamStats = field(default_factory=StreamStats)  # a stream transport's caller audio (not RTP)
    outbound_ssrc: int = 0
    playbacks: dict[str, PlaybackRef] = field(default_factory=dict)  # gating tokens
    conversation: ConversationState = ConversationState.LISTENING
    conversation_since: float = field(default_factory=time.monotonic)  # when it entered that state
    operator: str = ""  # who has taken the call over (conversation OPERATOR); "" while the agent has it
    operator_since: float | None = None  # wall clock: when they took it over
    capture_enabled: bool = True
    downstream_mode: PlaybackMode | Literal[""] = ""  # set by the call's playback path ("": none yet)
    barge_ins: int = 0
    turns_failed: int = 0  # turns the models could not serve: the caller got the apology instead
    barge_in_at: list[float] = field(default_factory=list)  # monotonic, for the history (storms)
    recording: str | None = None  # the WAV file, when the profile records
    recording_started_at: float | None = None  # wall clock of its first sample
    # (start, seconds) of each quiet spell past QUIET_MIN_S: nobody speaking, no answer on the way
    silences: list[tuple[float, float]] = field(default_factory=list)
    voice: VoiceState = field(default_factory=VoiceState)
    turns: list[TurnTimeline] = field(default_factory=list)
    transcript: list[TranscriptTurn] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    created_mono: float = field(default_factory=time.monotonic)
    bridged_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None

    def _media_in(self, now: float) -> RtpSnapshot:
        """The caller's audio in, as its transport counts it: RTP's sequence-number view, or a
        stream's (nothing lost, gaps and arrival jitter instead) in the same fields."""
        out = self.rtp_out
        common = dict(
            transport=self.transport,
            packets_out=out.packets,
            bytes_out=out.bytes,
            outbound_overruns=out.overruns,
            outbound_underruns=out.underruns,
            pacing_error_ms=round(out.last_pacing_error_ms, 3),
            max_pacing_error_ms=round(out.max_pacing_error_ms, 3),
        )
        if self.transport != "rtp":
            t = self.stream_in
            return RtpSnapshot(
                ssrc=None, packets_in=t.messages, bytes_in=t.bytes, expected=t.messages, lost=0, loss_pct=0.0,
                duplicates=0, reordered=0, late_dropped=0, malformed=t.malformed, jitter_ms=round(t.jitter_ms, 3),
                ssrc_changes=0, last_packet_age_s=round(now - t.last_arrival, 3) if t.last_arrival is not None else None,
                gaps=t.gaps, max_gap_ms=round(t.max_gap_ms, 1), **common,  # type: ignore[arg-type]
            )
        s = self.rtp_in
        return RtpSnapshot(
            ssrc=s.ssrc,
            packets_in=s.packets,
            bytes_in=s.bytes,
            expected=s.expected,
            lost=s.lost,
            loss_pct=round(100.0 * s.loss_fraction, 3),
            duplicates=s.duplicates,
            reordered=s.reordered,
            late_dropped=self.rtp_in_late,
            malformed=self.rtp_in_malformed,
            jitter_ms=round(s.jitter_ms, 3),
            ssrc_changes=s.ssrc_changes,
            last_packet_age_s=round(now - s.last_arrival, 3) if s.last_arrival is not None else None,
            **common,  # type: ignore[arg-type]
        )

    def snapshot(self) -> CallSnapshot:
        now = time.monotonic()
        return CallSnapshot(
            call_id=self.call_id,
            caller_number=self.caller_number,
            caller_name=self.caller_name,
            dialled=self.dialled,
            profile=self.profile,
            state=self.state.value,
            provider=self.provider.name if self.provider else None,
            provider_error=self.provider.last_error if self.provider else None,
            channel=self.caller_channel_name,
            bridge_id=self.bridge_id,
            external_channel_id=self.external_channel_id,
            rtp_remote=f"{self.rtp_remote[0]}:{self.rtp_remote[1]}" if self.rtp_remote else None,
            transport=self.transport,
            media_remote=self.media_remote,
            duration_s=round(now - self.created_mono, 3),
            rtp=self._media_in(now),
            conversation=ConversationSnapshot(
                state=self.conversation.value,
                capture_enabled=self.capture_enabled,
                gating=bool(self.playbacks),
                playbacks=tuple(self.playbacks),
                barge_ins=self.barge_ins,
                downstream_mode=self.downstream_mode,
                speaking=self.voice.speaking,
                level_dbfs=round(self.voice.level_dbfs, 1),
                levels=tuple(round(v, 1) for v in self.voice.levels),
                last_turn_latency_s=next((round(t.latency_s, 3) for t in reversed(self.turns) if t.latency_s is not None), None),
                operator=self.operator,
                operator_since=self.operator_since,
            ),
            turns=tuple(copy.copy(t) for t in self.turns[-10:]),
            transcript=tuple(self.transcript),
            actions=tuple(copy.copy(a) for a in self.actions),
            end_reason=self.end_reason,
        )


@dataclass(slots=True, frozen=True, kw_only=True)
class RtpSnapshot:
    """The call's media counters. On a stream transport (AudioSocket, WebSocket) packets are its
    audio messages, nothing is lost, reordered or duplicated, and jitter is the arrival jitter
    against the audio's own clock; ``gaps`` and ``max_gap_ms`` say when audio stalled."""

    transport: str = "rtp"
    ssrc: int | None
    packets_in: int
    bytes_in: int
    expected: int
    lost: int
    loss_pct: float
    duplicates: int
    reordered: int
    late_dropped: int
    malformed: int
    jitter_ms: float
    ssrc_changes: int
    last_packet_age_s: float | None
    packets_out: int
    bytes_out: int
    outbound_overruns: int
    outbound_underruns: int
    pacing_error_ms: float
    max_pacing_error_ms: float
    gaps: int = 0  # stream transports: arrivals more than 100 ms after the previous one
    max_gap_ms: float = 0.0


@dataclass(slots=True, frozen=True, kw_only=True)
class CallSummary:
    """A call's line in a call list: cheap enough to make for every call ten times a second."""

    call_id: str
    caller_number: str
    state: str
    duration_s: float
    provider: str | None
    in_state_s: float = 0.0  # how long the conversation has been in that state (a turn waiting: processing)
    channel: str = ""  # Asterisk's name of the caller's channel (PJSIP/100-0000002a)
    profile: str = ""
    operator: str = ""  # who has taken the call over (state "operator"): "taken over by NAME"
    operator_since: float | None = None  # wall clock
    transport: str = "rtp"  # how Asterisk hands the call's audio over (CallSession.transport)


@dataclass(slots=True, frozen=True, kw_only=True)
class ConversationSnapshot:
    state: str
    capture_enabled: bool
    gating: bool
    playbacks: tuple[str, ...]
    barge_ins: int
    downstream_mode: PlaybackMode | Literal[""]
    speaking: bool
    level_dbfs: float
    levels: tuple[float, ...]
    last_turn_latency_s: float | None
    operator: str = ""  # who has taken the call over (state "operator"); "" while the agent has it
    operator_since: float | None = None  # wall clock: when they took it over


@dataclass(slots=True, frozen=True, kw_only=True)
class CallSnapshot:
    """A copy of one call's state at one moment, safe to hand to any consumer."""

    call_id: str
    caller_number: str
    caller_name: str
    dialled: str
    profile: str
    state: str
    provider: str | None
    provider_error: str | None
    channel: str  # Asterisk's name of the caller's channel
    bridge_id: str | None
    external_channel_id: str | None
    rtp_remote: str | None
    duration_s: float
    transport: str = "rtp"
    media_remote: str = ""
    rtp: RtpSnapshot
    conversation: ConversationSnapshot
    turns: tuple[TurnTimeline, ...]
    transcript: tuple[TranscriptTurn, ...]
    actions: tuple[ActionRecord, ...]
    end_reason: str | None


# ---- events -------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class CallStarted:
    call_id: str
    caller_number: str
    provider: str


@dataclass(slots=True, frozen=True)
class CallStateChanged:
    call_id: str
    old: CallState
    new: CallState


@dataclass(slots=True, frozen=True)
class CallEnded:
    call_id: str
    reason: str
    snapshot: CallSnapshot


@dataclass(slots=True, frozen=True)
class TranscriptAdded:
    call_id: str
    turn: TranscriptTurn


@dataclass(slots=True, frozen=True)
class ConversationChanged:
    call_id: str
    state: ConversationState
    capture_enabled: bool
    gating: bool


@dataclass(slots=True, frozen=True)
class BargeIn:
    call_id: str
    forced: bool
    reaction_s: float | None  # caller speech onset to agent stopped (None when forced)


@dataclass(slots=True, frozen=True)
class TurnCompleted:
    call_id: str
    turn: TurnTimeline


@dataclass(slots=True, frozen=True)
class ActionChanged:
    """An action was asked for, carried out, refused or failed (a copy of its record)."""

    call_id: str
    action: ActionRecord


@dataclass(slots=True, frozen=True)
class CallLog:
    """A line for the call's log: what happened, in words an operator reads."""

    call_id: str | None
    level: int
    message: str
    at: float = field(default_factory=time.time)


SessionEvent = CallStarted | CallStateChanged | CallEnded | TranscriptAdded | ConversationChanged | BargeIn | TurnCompleted | ActionChanged | CallLog


class Subscription:
    """A bounded queue of events for one consumer. A consumer that falls behind loses the
    oldest events (counted in ``dropped``) rather than slowing the engine down."""

    def __init__(self, store: SessionStore, maxsize: int) -> None:
        self._store = store
        self._queue: asyncio.Queue[SessionEvent] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, event: SessionEvent) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self) -> SessionEvent:
        return await self._queue.get()

    def get_nowait(self) -> SessionEvent | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        self._store._subscribers.discard(self)

    def __aiter__(self) -> AsyncIterator[SessionEvent]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[SessionEvent]:
        while True:
            yield await self._queue.get()


class SessionWatcher(Protocol):
    """Told of each call as it is added and removed, synchronously (the call history: unlike an
    event subscriber that may lag, it cannot miss a call that ends before it looks)."""

    def call_added(self, call: CallSession) -> None: ...
    def call_removed(self, call: CallSession) -> None: ...
    def call_amended(self, call: CallSession) -> None:
        """A call that ended changed since (a transfer's outcome, known seconds later)."""


class SessionStore:
    def __init__(self) -> None:
        self._calls: dict[str, CallSession] = {}
        self._subscribers: set[Subscription] = set()
        self.watchers: list[SessionWatcher] = []
        self.calls_total = 0
        self.calls_rejected_over_capacity = 0
        self.calls_failed = 0
        self.calls_refused_model_capacity = 0  # turned away: the models here were at capacity
        self.turns_failed = 0  # answered with the apology: the models refused or lost the turn
        self.ended_underruns = 0  # of calls already gone, so totals survive them
        self.ended_overruns = 0

    # -- reading
    def get(self, call_id: str) -> CallSession | None:
        return self._calls.get(call_id)

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[CallSession]:
        return iter(list(self._calls.values()))

    def snapshots(self) -> list[CallSnapshot]:
        return [c.snapshot() for c in self._calls.values()]

    def summaries(self) -> list[CallSummary]:
        now = time.monotonic()
        return [
            CallSummary(
                call_id=c.call_id, caller_number=c.caller_number, state=c.conversation.value, duration_s=now - c.created_mono,
                provider=c.provider.name if c.provider else None, in_state_s=now - c.conversation_since,
                channel=c.caller_channel_name, profile=c.profile, operator=c.operator, operator_since=c.operator_since,
                transport=c.transport,
            )
            for c in self._calls.values()
        ]

    def snapshot(self, call_id: str) -> CallSnapshot | None:
        c = self._calls.get(call_id)
        return c.snapshot() if c is not None else None

    # -- writing
    def add(self, call: CallSession) -> None:
        if call.call_id in self._calls:
            raise KeyError(f"call {call.call_id} already exists")
        self._calls[call.call_id] = call
        self.calls_total += 1
        for w in self.watchers:
            w.call_added(call)
        self.publish(CallStarted(call.call_id, call.caller_number, call.provider.name if call.provider else ""))

    def set_state(self, call: CallSession, state: CallState) -> None:
        if call.state is state:
            return
        old, call.state = call.state, state
        self.publish(CallStateChanged(call.call_id, old, state))

    def add_transcript(self, call: CallSession, turn: TranscriptTurn) -> None:
        if turn.final:
            call.transcript.append(turn)
            log.info("[%s] %s: %s", call.call_id, turn.role, turn.text)
        self.publish(TranscriptAdded(call.call_id, turn))

    def log(self, call_id: str | None, level: int, message: str) -> None:
        log.log(level, "%s%s", f"[{call_id}] " if call_id else "", message)
        self.publish(CallLog(call_id, level, message))

    def remove(self, call: CallSession, reason: str) -> None:
        if self._calls.pop(call.call_id, None) is None:
            return
        call.ended_at = time.time()
        call.end_reason = reason
        self.ended_underruns += call.rtp_out.underruns
        self.ended_overruns += call.rtp_out.overruns
        old, call.state = call.state, CallState.ENDED
        for w in self.watchers:
            w.call_removed(call)
        self.publish(CallStateChanged(call.call_id, old, CallState.ENDED))
        self.publish(CallEnded(call.call_id, reason, call.snapshot()))

    def amend(self, call: CallSession) -> None:
        """An ended call's record changed (its transfer settled): the watchers write it again."""
        for w in self.watchers:
            w.call_amended(call)

    # -- events
    def subscribe(self, maxsize: int = 10000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def publish(self, event: SessionEvent) -> None:
        for sub in tuple(self._subscribers):
            sub._offer(event)
