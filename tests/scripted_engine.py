"""A scripted engine for the app: live calls with fixed state, and a record of the commands the
app sends. It fills the same SessionStore the real engine does, so the panes render real
CallSnapshots; only time is held still (see ``freeze_session_clock``)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from engine import sessions
from engine.api import AudioTap, AudioTaps, BringIn
from engine.sessions import (
    ActionRecord,
    CallSession,
    CallState,
    ConversationState,
    PlaybackRef,
    ProviderSession,
    SessionStore,
    TranscriptTurn,
    TurnTimeline,
)
from engine.status import EngineSummary, ModelQueue, ReloadResult
from providers.base import Readiness

NOW = 5000.0
WALL_NOW = 1_790_000_000.0  # the wall clock's now, as frozen below


def freeze_session_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Call durations and packet ages are read from this clock: a screenshot stays the same."""
    monkeypatch.setattr(sessions, "time", SimpleNamespace(monotonic=lambda: NOW, time=lambda: WALL_NOW))


def _stream(session: CallSession, packets: int, lost: set[int], start: float) -> None:
    ssrc = 0x5EED0000 + int(session.caller_number[-4:])
    for i in range(packets):
        if i not in lost:
            jitter = 0.002 if i % 7 == 0 else 0.0
            session.rtp_in.update(1000 + i, 160 * i, ssrc, 160, start + i * 0.02 + jitter)


def _stream_in(session: CallSession, messages: int, start: float, stalls: dict[int, float] | None = None) -> None:
    """A stream transport's caller audio: one 20 ms message every 20 ms, some held up (``stalls``:
    message index -> seconds late; the ones after it come in a burst, as TCP delivers them)."""
    late = 0.0
    for i in range(messages):
        late = max(0.0, late - 0.02) if not stalls or i not in stalls else stalls[i]
        session.stream_in.update(160, 320, start + i * 0.02 + late + (0.001 if i % 5 == 0 else 0.0))


def _add_rtp_calls(eng: ScriptedEngine) -> None:
    a = eng.add_call("5550142", 74.0, ConversationState.AGENT_SPEAKING, capture_enabled=False, barge_ins=1, profile="dental", dialled="100")
    a.actions.append(ActionRecord(kind="transfer", by="keypad", reason="caller pressed 1", department="billing", target="201@from-internal", at=NOW))
    _stream(a, 3700, lost={50, 51, 900}, start=NOW - 74.0)
    a.rtp_out.packets, a.rtp_out.bytes = 1480, 236800
    a.rtp_out.last_pacing_error_ms, a.rtp_out.max_pacing_error_ms = 0.4, 1.7
    a.playbacks["stream"] = PlaybackRef("stream", "", 0.0)
    a.voice.level_dbfs = -31.5
    a.voice.levels.extend([-70.0] * 40 + [-35.0, -28.0, -24.0, -26.0, -30.0] * 8 + [-60.0] * 70)
    a.transcript.extend([
        TranscriptTurn("agent", "Hello, thanks for calling Northside Dental. How can I help?", True, NOW - 72),
        TranscriptTurn("caller", "Hi, are you open on Saturday?", True, NOW - 66),
        TranscriptTurn("agent", "We are open Saturday from nine to one.", True, NOW - 64),
        TranscriptTurn("caller", "And where do I park?", True, NOW - 58),
        TranscriptTurn("agent", "There is free parking behind the building.", True, NOW - 56),
    ])
    a.turns.extend([
        # The caller's last voiced frame 0.55 s before the end-of-speech decision (the VAD's hangover).
        TurnTimeline(speech_end=NOW - 66.0, stt_final=NOW - 65.74, llm_first_token=NOW - 65.61, first_sentence=NOW - 65.61, tts_first_audio=NOW - 65.52, first_audio_out=NOW - 65.50, last_voice_in=NOW - 66.55),
        TurnTimeline(speech_end=NOW - 58.0, stt_final=NOW - 57.71, llm_first_token=NOW - 57.55, first_sentence=NOW - 57.55, tts_first_audio=NOW - 57.47, first_audio_out=NOW - 57.45, last_voice_in=NOW - 58.55),
    ])
    b = eng.add_call("5550199", 12.0, ConversationState.USER_SPEAKING)
    _stream(b, 600, lost=set(), start=NOW - 12.0)
    b.voice.speaking = True
    b.voice.level_dbfs = -22.0


class ScriptedEngine:
    def __init__(self, problems: tuple[str, ...] = ()) -> None:
        self.store = SessionStore()
        self.media_transports: tuple[str, ...] = ("rtp",)
        self.fatal = asyncio.Event()
        self.fatal_error: str | None = None
        self.default_provider = "local"
        self.problems = problems
        self.model_queues: tuple[ModelQueue, ...] = ()
        self.commands: list[tuple[str, ...]] = []
        self.taps: dict[str, AudioTaps] = {}  # the listeners on each call (a call with none is not here): a test plays audio into them
        self.operator_frames: list[tuple[str, bytes, int]] = []  # (call id, pcm16, rate) from the operator's microphone
        self.refuse: set[str] = set()  # operator actions (say, take_over, ...) this engine says no to

    def add_call(self, number: str, started_s_ago: float, state: ConversationState, **kw: Any) -> CallSession:
        cid = f"1790000{len(self.store):03d}.{number[-4:]}"
        s = CallSession(
            call_id=cid, caller_channel_id=cid, caller_channel_name=f"PJSIP/trunk-{len(self.store) + 42:08x}", caller_number=number,
            provider=ProviderSession("local", ready=True),
        )
        s.created_mono = NOW - started_s_ago
        s.bridge_id = f"aiagent-br-{number}"
        s.external_channel_id = f"aiagent-em-{number}"
        s.rtp_remote = ("127.0.0.1", 17000 + len(self.store))
        s.downstream_mode = "stream"
        self.store.add(s)
        s.state = CallState.SPEAKING if state is ConversationState.AGENT_SPEAKING else CallState.STREAMING
        s.conversation = state
        for k, v in kw.items():
            setattr(s, k, v)
        return s

    def add_stream_call(self, number: str, started_s_ago: float, state: ConversationState, transport: str, remote: str, **kw: Any) -> CallSession:
        """A call whose audio comes over a stream transport (AudioSocket, WebSocket)."""
        s = self.add_call(number, started_s_ago, state, **kw)
        s.transport, s.media_remote, s.rtp_remote = transport, remote, None
        _stream_in(s, int(started_s_ago / 0.02) - 10, NOW - started_s_ago, stalls={400: 0.31, 900: 0.12} if transport == "websocket" else None)
        s.rtp_out.packets, s.rtp_out.bytes = int(started_s_ago / 0.02 * 0.4), int(started_s_ago / 0.02 * 0.4) * 320
        s.rtp_out.last_pacing_error_ms, s.rtp_out.max_pacing_error_ms = 0.3, 1.2
        return s

    @classmethod
    def mixed_transports(cls) -> ScriptedEngine:
        """Calls on each transport: the two RTP calls of ``two_calls``, one over AudioSocket, one
        over WebSocket media (its audio stalled twice)."""
        eng = cls()
        eng.media_transports = ("rtp", "audiosocket", "websocket")
        _add_rtp_calls(eng)
        c = eng.add_stream_call("5550123", 41.0, ConversationState.LISTENING, "audiosocket", "127.0.0.1:51544", profile="dental", dialled="100")
        c.transcript.extend([
            TranscriptTurn("agent", "Hello, thanks for calling Northside Dental. How can I help?", True, NOW - 39),
            TranscriptTurn("caller", "I'd like to move my appointment to Thursday.", True, NOW - 33),
            TranscriptTurn("agent", "I can put you through to the front desk for that.", True, NOW - 31),
        ])
        c.turns.append(TurnTimeline(speech_end=NOW - 33.0, stt_final=NOW - 32.74, llm_first_token=NOW - 32.6, first_sentence=NOW - 32.6,
                                    tts_first_audio=NOW - 32.52, first_audio_out=NOW - 32.5, last_voice_in=NOW - 33.55))
        eng.add_stream_call("5550177", 27.0, ConversationState.AGENT_SPEAKING, "websocket", "ws://127.0.0.1:8088/media/aiagent-em-5550177",
                            capture_enabled=False)
        return eng

    @classmethod
    def two_calls(cls, problems: tuple[str, ...] = ()) -> ScriptedEngine:
        eng = cls(problems)
        _add_rtp_calls(eng)
        return eng

    # ---- EngineView
    def summary(self) -> EngineSummary:
        return EngineSummary(
            status="degraded" if self.problems else "ok",
            fatal_error=None,
            ari_connected=True,
            ari_url="http://127.0.0.1:8088",
            ari_app="aiagent",
            ari_last_error=None,
            ari_reconnects=0,
            rtp_server_running=True,
            rtp_address="127.0.0.1:40000",
            audio_transport="externalmedia",
            active_calls=len(self.store),
            max_calls=50,
            calls_total=17,
            calls_rejected_over_capacity=0,
            calls_failed=1,
            default_provider=self.default_provider,
            new_calls_provider=self.default_provider,
            providers=self.provider_readiness(),
            downstream_mode="stream",
            problems=self.problems,
            model_queues=self.model_queues,
            health_url="http://127.0.0.1:15000/health",
            metrics_url="http://127.0.0.1:15000/metrics",
            media_transports=self.media_transports,
        )

    def provider_readiness(self) -> dict[str, Readiness]:
        return {
            "deepgram": Readiness(False, "DEEPGRAM_API_KEY is not set"),
            "echo": Readiness(False, "not loaded"),
            "local": Readiness(True, "models loaded"),
            "tone": Readiness(False, "not loaded"),
        }

    # ---- the operator in the loop: recorded in ``commands``, refused for the names in ``refuse``
    def _operator(self, action: str, call_id: str, *args: str) -> bool:
        self.commands.append((action, call_id, *args))
        return action not in self.refuse and self.store.get(call_id) is not None

    def operator_say(self, call_id: str, text: str, by: str) -> bool:
        return self._operator("say", call_id, text, by)

    def operator_instruct(self, call_id: str, text: str, by: str) -> bool:
        return self._operator("instruct", call_id, text, by)

    def take_over(self, call_id: str, by: str) -> bool:
        if ok := self._operator("take_over", call_id, by):
            call = self.store.get(call_id)
            assert call is not None
            call.operator, call.operator_since, call.conversation = by, WALL_NOW, ConversationState.OPERATOR
        return ok

    def hand_back(self, call_id: str, by: str) -> bool:
        if ok := self._operator("hand_back", call_id, by):
            call = self.store.get(call_id)
            assert call is not None
            call.operator, call.operator_since, call.conversation = "", None, ConversationState.LISTENING
        return ok

    def operator_audio(self, call_id: str, pcm16: bytes, rate: int) -> None:
        self.operator_frames.append((call_id, pcm16, rate))

    def bring_in(self, call_id: str, department: str, how: BringIn, by: str) -> bool:
        return self._operator("bring_in", call_id, department, how, by)

    def barge_in(self, call_id: str) -> bool:
        self.commands.append(("barge_in", call_id))
        return True

    async def hangup(self, call_id: str) -> bool:
        self.commands.append(("hangup", call_id))
        return True

    def transfer(self, call_id: str, department: str) -> bool:
        self.commands.append(("transfer", call_id, department))
        return True

    def departments(self, call_id: str) -> dict[str, str]:
        return {"billing": "201@from-internal", "operator": "0@from-internal"}

    async def set_default_provider(self, name: str) -> None:
        self.commands.append(("default_provider", name))
        self.default_provider = name

    async def set_call_provider(self, call_id: str, name: str) -> bool:
        self.commands.append(("call_provider", call_id, name))
        return True

    def set_audio_tap(self, call_id: str, tap: AudioTap | None, *, key: str) -> bool:
        self.commands.append(("tap", call_id, "on" if tap else "off"))
        taps = self.taps.setdefault(call_id, AudioTaps())
        taps.set(key, tap)
        if not taps:
            del self.taps[call_id]
        return True


class ScriptedRuntime:
    ends_calls = True

    def __init__(self, engine: ScriptedEngine) -> None:
        self.engine = engine
        self.stopped = False
        self.reloads = 0
        self.reload_result = ReloadResult(at=0.0, applied=("profiles.default.greeting",), restart=("rtp.port",), failed=())

    async def start(self) -> ScriptedEngine:
        return self.engine

    async def stop(self) -> None:
        self.stopped = True

    async def reload(self) -> ReloadResult:
        self.reloads += 1
        return self.reload_result

    def describe(self) -> str:
        return "scripted engine"
