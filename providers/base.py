"""The provider interface: what every conversational backend (echo, local, Deepgram) implements.

A provider is created once per engine and opens one ProviderCall per phone call. The engine feeds
the call's audio in (PCM16 mono, 16 kHz, 20 ms frames) while capture is open, marks utterance
boundaries found by its VAD (or its fallback timer), and receives typed events back through the
``emit`` callback it passes to ``open_call``. ``emit`` never blocks and must be called on the
engine's event loop (providers that work in threads hop back with ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
import itertools
from collections import deque
from contextvars import ContextVar
from dataclasses import KW_ONLY, dataclass, field
from typing import Callable, Literal, Sequence

from providers.profile import ActionKind, AgentProfile
from runtime.clock import Clock, LoopClock

INPUT_SAMPLE_RATE = 16000


@dataclass(slots=True, frozen=True)
class AgentAudio:
    """Agent speech for the caller: PCM16 mono at ``sample_rate``."""

    pcm16: bytes
    sample_rate: int


@dataclass(slots=True, frozen=True)
class Transcript:
    role: Literal["caller", "agent"]
    text: str
    final: bool = True


@dataclass(slots=True, frozen=True)
class AgentSpeakingStarted:
    pass


@dataclass(slots=True, frozen=True)
class AgentSpeakingStopped:
    pass


@dataclass(slots=True, frozen=True)
class CallerInterrupted:
    """The provider heard the caller start talking (e.g. Deepgram's UserStartedSpeaking): if the
    agent is speaking, this is a barge-in."""


@dataclass(slots=True, frozen=True)
class ProviderError:
    message: str
    # Fatal: this provider cannot go on with the call; the engine moves the call to the
    # fallback provider, or ends it with the error logged.
    fatal: bool = False


@dataclass(slots=True, frozen=True)
class ActionRequest:
    """The agent decided to act: transfer the caller to one of the profile's departments, or hang
    up. The engine checks it against the profile, has the announcement or the closing line said
    (``ProviderCall.say``), waits until it has played, and carries it out."""

    kind: ActionKind
    department: str = ""  # for a transfer: a key of the profile's departments
    reason: str = ""  # in words, for the call's log (e.g. the caller's own)


TurnStage = Literal["stt_final", "llm_first_token", "first_sentence", "tts_first_audio", "hold", "no_answer"]


@dataclass(slots=True, frozen=True)
class TurnMark:
    """A provider reached a stage of its answer (monotonic loop time); "hold" means it said its hold
    line because the answer was slow; "no_answer" means the utterance gets none (nothing was
    understood), so the conversation goes back to listening."""

    stage: TurnStage
    at: float


@dataclass(slots=True)
class Span:
    start: float
    end: float | None = None  # None: still going on


@dataclass(slots=True, frozen=True)
class ModelShare:
    """Of a stretch of a turn: the time a model was working for the call (several at once count
    once), and the time its jobs only waited for a model busy with other calls' work."""

    inside_s: float
    queued_s: float


class ModelWork:
    """One call's model jobs on the loop's monotonic clock: when each waited for its model process
    and when that process worked on it. A turn's time inside the models is what the engine does not
    own; the rest of the turn is its own (bench/turn_latency.py). Jobs find the call's record
    through ``model_work``, set in the call's tasks, so that no stage interface has to carry it."""

    KEEP = 64  # jobs; a turn has a handful
    _numbers = itertools.count(1)

    def __init__(self) -> None:
        # Which conversation a job belongs to, for a model that may reuse only the call's own state
        # in ways that carry what it saw (the LLM's cut: providers/local/llm.py).
        self.conversation = next(self._numbers)
        self.waits: deque[Span] = deque(maxlen=self.KEEP)
        self.runs: deque[Span] = deque(maxlen=self.KEEP)

    def waited(self, queued_at: float, taken_at: float) -> None:
        if taken_at > queued_at:
            self.waits.append(Span(queued_at, taken_at))

    def running(self, at: float) -> Span:
        """A job the process has just been given; its end (and its true start, as the process
        stamps it) is filled in when it is done."""
        span = Span(at)
        self.runs.append(span)
        return span

    def share(self, start: float, end: float) -> ModelShare:
        inside = _covered(self.runs, start, end)
        return ModelShare(inside, _covered([*self.runs, *self.waits], start, end) - inside)


def _covered(spans: Sequence[Span] | deque[Span], start: float, end: float) -> float:
    """How much of [start, end] the spans cover (overlaps once; a running one runs to ``end``)."""
    cut = sorted((max(s.start, start), min(end if s.end is None else s.end, end)) for s in spans)
    total, reach = 0.0, start
    for a, b in cut:
        a = max(a, reach)
        if b > a:
            total += b - a
            reach = b
    return total


model_work: ContextVar[ModelWork | None] = ContextVar("model_work", default=None)


@dataclass(slots=True, frozen=True)
class CallerFinished:
    """The provider has the caller's words so far and they read as complete (a pipeline's
    transcript at the caller's pause): the engine ends the caller's turn now rather than after its
    VAD's hangover, unless the caller has spoken again since."""


@dataclass(slots=True, frozen=True)
class TurnFailed:
    """The caller's turn got no answer from the models, and the caller heard the apology instead:
    ``busy``: refused at once (too much queued: more callers than the models serve); otherwise
    lost (a model process died or hung, a server failed). The engine counts it as a failed turn."""

    reason: str
    busy: bool


@dataclass(slots=True, frozen=True)
class EarlyAnswer:
    """An answer begun at the caller's pause (a pipeline's ``answer_at_pause``) was taken over by
    the turn (``used``) or dropped: the caller said more, so its model work was spent for nothing."""

    used: bool


# What a provider tells the engine: about the conversation (turns, the agent's audio, what was
# said: the engine's ConversationCoordinator answers those), or about the call as a whole (an
# action to carry out, an error that may move the call to another provider: the Call's).
ConversationEvent = (
    AgentAudio | Transcript | AgentSpeakingStarted | AgentSpeakingStopped | CallerInterrupted | TurnMark | CallerFinished | EarlyAnswer | TurnFailed
)
CallEvent = ActionRequest | ProviderError
ProviderEvent = ConversationEvent | CallEvent
EmitFn = Callable[[ProviderEvent], None]


@dataclass(slots=True, frozen=True)
class CallContext:
    call_id: str
    _: KW_ONLY
    caller_number: str = ""
    caller_name: str = ""
    input_sample_rate: int = INPUT_SAMPLE_RATE
    preroll_ms: int = 300  # audio from just before a speech start that belongs to the utterance
    fallback_window_ms: int = 4000  # what a fallback flush hands over
    profile: AgentProfile = field(default_factory=AgentProfile)  # who the agent is on this call
    # The call's clock: a provider reads time and sets timers through it, so its turn decisions
    # run on a ManualClock in tests as the engine's do.
    clock: Clock = field(default_factory=LoopClock)


@dataclass(slots=True, frozen=True)
class Readiness:
    ready: bool
    detail: str = ""


@dataclass(slots=True, frozen=True)
class QueueState:
    """A model's jobs: how many wait or run, and how long the one waiting longest has waited."""

    depth: int
    oldest_wait_s: float = 0.0


@dataclass(slots=True, frozen=True)
class ComponentStatus:
    """A long-lived part of the engine, or a provider's model worker process, for /health."""

    name: str
    state: str  # starting | running | restarting | failed | stopped; a model server: running | down
    _: KW_ONLY
    restarts: int = 0
    errors: int = 0  # failures seen (restarted, or recovered from in place)
    last_error: str | None = None
    pid: int | None = None  # a process of its own
    jobs: int | None = None  # a model worker: jobs served
    depth: int | None = None  # a model worker: jobs waiting or running
    latency_ms: float | None = None  # a model server: its last answer's time (a probe or a job)

    @property
    def ok(self) -> bool:
        return self.state == "running"


class ProviderCall(ABC):
    """One call's conversation with a provider."""

    work: ModelWork | None = None  # its model jobs, where the provider runs them itself

    @abstractmethod
    async def start(self) -> None:
        """Open whatever the call needs (a websocket, a model context)."""

    @abstractmethod
    def send_audio(self, pcm16: bytes, level_dbfs: float) -> None:
        """One 20 ms frame of caller audio and its level (the engine's VAD measured it already).
        Called on the event loop for every frame: must not block."""

    def utterance_started(self) -> None:
        """The engine's VAD heard the caller start speaking."""

    def utterance_ended(self, fallback: bool) -> None:
        """The caller stopped speaking (``fallback``: no speech was detected, but audio has been
        arriving for the fallback interval; what was heard should still go to STT)."""

    async def cancel_response(self, played_s: float | None = None) -> None:
        """Barge-in: stop the answer being generated or spoken. ``played_s``: how much of the
        answer's audio the caller heard (None: not known), so that the conversation's history keeps
        only what was said. Default: nothing to cancel."""

    async def say(self, text: str) -> bool:
        """Speak a fixed line (a transfer announcement, the closing line, "are you still there?"):
        emits its audio like an answer's, and returns once it is handed over. False: this provider
        cannot speak text (the engine acts without the line)."""
        return False

    async def say_next(self, text: str) -> bool:
        """An operator's line: said as the agent's next utterance, after the answer it is giving now
        (if any), and kept in the conversation as the agent's. Default: at once, as ``say``."""
        return await self.say(text)

    def instruct(self, text: str) -> bool:
        """An operator's instruction: added to the agent's instructions for its later answers on
        this call only. False: this provider has no instructions to add to."""
        return False

    def hold_answers(self, held: bool, note: str = "") -> bool:
        """An operator takes the call over (``held``) or hands it back. While held the provider
        still hears the caller and transcribes them (Transcript events) but answers nothing and
        says nothing; on the hand-back ``note`` (what happened meanwhile, the caller's words in it)
        joins the conversation's history, so that its next answer follows on. False: it cannot
        hold its answers (the engine then refuses the take-over)."""
        return False

    @abstractmethod
    async def stop(self) -> None:
        """End the call's session and release everything it holds. Must be idempotent."""


class Provider(ABC):
    name: str
    # Half-duplex providers (the conversational ones) hear nothing while the agent speaks, except
    # the caller barging in; a full-duplex one (the echo line test) hears everything.
    half_duplex: bool = True
    # A provider that finds turns itself in a continuous stream (Deepgram) gets silence in place of
    # the caller's audio while capture is gated, and while no RTP arrives (a two-party bridge
    # sends nothing while the caller is quiet): its endpointing needs to hear the silence.
    continuous_input: bool = False
    # It can speak a given line (ProviderCall.say): the agent's actions and the silence watchdog
    # have their lines said.
    speaks_text: bool = False

    async def load(self) -> None:
        """Once at startup: load models, check keys. Raise with a clear message when unusable."""

    @abstractmethod
    def readiness(self) -> Readiness: ...

    @abstractmethod
    def open_call(self, ctx: CallContext, emit: EmitFn) -> ProviderCall: ...

    async def prepare(self, profiles: Sequence[AgentProfile]) -> None:
        """The config was reloaded: readies what these profiles will need (their fixed lines, their
        instructions), so that the first new call does not wait for it. Failures are logged here."""

    async def close(self) -> None:
        """At engine shutdown, after every call has stopped."""


class UtteranceCollector:
    """Collects one utterance of caller audio from the frames and boundary marks a ProviderCall
    receives: a rolling window while nobody speaks (the pre-roll, and what a fallback flush hands
    over), everything from the speech start to its end."""

    def __init__(self, sample_rate: int = INPUT_SAMPLE_RATE, window_ms: int = 4000, preroll_ms: int = 300, max_ms: int = 30000) -> None:
        bps = sample_rate * 2
        self._window = window_ms * bps // 1000
        self._preroll = preroll_ms * bps // 1000
        self._max = max_ms * bps // 1000
        self._buf = bytearray()
        self.in_speech = False

    def add(self, pcm16: bytes) -> None:
        self._buf += pcm16
        limit = self._max if self.in_speech else self._window
        if len(self._buf) > limit:
            del self._buf[: len(self._buf) - limit]

    def start(self) -> None:
        if not self.in_speech and len(self._buf) > self._preroll:
            del self._buf[: len(self._buf) - self._preroll]
        self.in_speech = True

    def snapshot(self) -> bytes:
        """The utterance so far (for partial transcripts), without consuming it."""
        return bytes(self._buf)

    def take(self) -> bytes:
        """The utterance (or the fallback window), and start afresh."""
        out = bytes(self._buf)
        self._buf.clear()
        self.in_speech = False
        return out
