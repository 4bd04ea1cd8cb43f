"""The call history: each call's record in a database, kept across calls, restarts and crashes.

``HistoryRecorder`` follows the session store: a call's row is written when the call starts,
brought up to date once a second while it runs (a crash or ``kill -9`` loses at most that second),
and completed when it ends; at the next start, rows still marked live are marked interrupted.
``HistoryDb`` is the database: SQLite by default (one file, WAL), or any database URL SQLAlchemy
knows (``postgresql+psycopg://...``: several engines sharing one history). Each row has the
columns that lists filter on and the whole record as JSON (``CallRecord``). Every statement runs
on one thread of the recorder's own, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel

from engine.config import AppConfig, shown_url
from engine.ratelimit import RateLimitedLog
from engine.sessions import QUIET_MIN_S, CallSession, ConversationState, SessionStore, TurnTimeline

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log)

T = TypeVar("T")
SYNC_INTERVAL_S = 1.0  # what a crash can lose: a live call's words and turns, and when it ended
QUALITY_REFRESH_S = 10.0  # a live call whose words have not changed: its RTP figures, this often
PRUNE_INTERVAL_S = 3600.0

Outcome = Literal[
    "live", "transferred", "caller_hung_up", "agent_hung_up", "operator_hung_up", "shutdown", "failed", "interrupted", "refused",
]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

# The engine's end reasons (engine/calls.py, engine/call.py), by how they begin.
_REASONS: tuple[tuple[str, Outcome], ...] = (
    ("transferred to ", "transferred"),
    ("caller hung up", "caller_hung_up"),
    ("caller left ", "caller_hung_up"),
    ("agent hung up", "agent_hung_up"),
    ("hung up by operator", "operator_hung_up"),
    ("engine shutdown", "shutdown"),
    ("refused: ", "refused"),  # turned away, never a call (engine/refusals.py)
)


def outcome_of(end_reason: str | None) -> Outcome:
    """How a call ended, from the engine's end reason: what it does not name is a failure (setup
    failed, provider error, the media path lost)."""
    if end_reason is None:
        return "live"
    for prefix, outcome in _REASONS:
        if end_reason.startswith(prefix):
            return outcome
    return "failed"


# ---- the record -----------------------------------------------------------------------------


class Line(BaseModel):
    role: Literal["caller", "agent"]
    text: str
    at: float  # wall clock


class TurnRecord(BaseModel):
    """One answered turn, in seconds from the end of the caller's speech: their last voiced frame
    (a turn with none, a fallback flush: the engine's end-of-speech decision). The stages follow one
    another: the end-of-speech wait, then from that decision STT, the LLM, TTS and playout.
    Records written before the wait was kept have no ``endpoint_s``; their figures start at the
    decision."""

    at: float  # wall clock of the end of the caller's speech
    latency_s: float | None  # to the first agent audio out
    # The end-of-speech wait: the caller's last voiced frame to the engine's decision that they had
    # finished (the VAD's hangover, or packets that stopped); the first part of latency_s.
    endpoint_s: float | None = None
    stt_s: float | None = None  # from the end-of-speech decision
    llm_first_sentence_s: float | None = None
    tts_first_audio_s: float | None = None
    playout_s: float | None = None
    hold_s: float | None = None  # the hold line started (latency_s is then the hold line's)
    # Of latency_s, where the engine runs the models (the local pipeline): waiting for a model busy
    # with other calls' work, and the engine's own share (neither in a model nor waiting for one),
    # both from the end-of-speech decision to the audio handed on.
    queued_s: float | None = None
    own_s: float | None = None


class ActionEntry(BaseModel):
    kind: str
    by: str
    reason: str
    department: str = ""
    target: str = ""
    state: str
    detail: str = ""
    at: float


class Quality(BaseModel):
    packets_in: int = 0
    expected: int = 0
    lost: int = 0
    loss_pct: float = 0.0
    jitter_ms: float = 0.0
    late_dropped: int = 0
    malformed: int = 0
    duplicates: int = 0
    ssrc_changes: int = 0
    packets_out: int = 0
    underruns: int = 0
    overruns: int = 0
    max_pacing_error_ms: float = 0.0
    # Datagrams the engine's RTP socket lost to a full buffer while the call was up: every call's,
    # not only this one's (the kernel counts per socket). None: not known.
    kernel_drops: int | None = None


class Silence(BaseModel):
    at: float  # wall clock
    seconds: float


class CallRecord(BaseModel):
    call_id: str
    engine: str = ""  # the engine that took the call (HOST:APP): several may share one history
    started_at: float  # wall clock
    ended_at: float | None = None
    duration_s: float = 0.0
    caller_number: str = ""
    caller_name: str = ""
    dialled: str = ""
    channel: str = ""  # Asterisk's name of the caller's channel (PJSIP/100-0000002a): for its logs and CDRs
    profile: str = ""
    providers: list[str] = []  # in the order the call used them (a fallback comes second)
    provider_errors: int = 0
    last_provider_error: str | None = None
    turns_failed: int = 0  # turns the models could not serve (refused: busy; or lost): the caller got the apology
    outcome: Outcome = "live"
    end_reason: str | None = None
    downstream_mode: str = ""
    barge_ins: int = 0
    barge_in_at: list[float] = []  # wall clock
    silences: list[Silence] = []  # nobody speaking, no answer on the way (QUIET_MIN_S and longer)
    turns: list[TurnRecord] = []
    transcript: list[Line] = []
    actions: list[ActionEntry] = []
    quality: Quality = Quality()
    recording: str | None = None  # the stereo WAV (caller left, agent right) on the engine's host
    recording_started_at: float | None = None  # wall clock of its first sample


def _span(a: float | None, b: float | None) -> float | None:
    return round(b - a, 4) if a is not None and b is not None else None


def _turn(t: TurnTimeline, start: float, wall: float) -> TurnRecord:
    """``start``: the end of the caller's speech (TurnTimeline.voice_end)."""
    return TurnRecord(
        at=round(wall + start, 3),
        latency_s=_span(start, t.first_audio_out),
        endpoint_s=None if t.endpoint_s is None else round(t.endpoint_s, 4),
        stt_s=_span(t.speech_end, t.stt_final),
        llm_first_sentence_s=_span(t.stt_final, t.first_sentence),
        tts_first_audio_s=_span(t.first_sentence, t.tts_first_audio),
        playout_s=_span(t.tts_first_audio, t.first_audio_out) if t.hold is None else None,
        hold_s=_span(start, t.hold),
        queued_s=None if t.queued_s is None else round(t.queued_s, 4),
        own_s=None if t.own_s is None else round(t.own_s, 4),
    )


def _silences(s: CallSession, wall: float, now_mono: float) -> list[Silence]:
    spells = list(s.silences)
    end = s.ended_at - wall if s.ended_at is not None else now_mono
    if s.conversation is ConversationState.LISTENING and end - s.conversation_since >= QUIET_MIN_S:
        spells.append((s.conversation_since, end - s.conversation_since))  # the one going on (or the last)
    return [Silence(at=round(wall + at, 3), seconds=round(n, 2)) for at, n in spells]


def record_of(
    s: CallSession, engine: str, providers: list[str], now_mono: float | None = None, kernel_drops: int | None = None,
) -> CallRecord:
    """The call's record as it stands. The engine's timeline is on the monotonic clock; ``wall``
    turns it into wall-clock times."""
    now_mono = time.monotonic() if now_mono is None else now_mono
    wall = s.created_at - s.created_mono
    rtp, out = s.rtp_in, s.rtp_out
    return CallRecord(
        call_id=s.call_id,
        engine=engine,
        started_at=s.created_at,
        ended_at=s.ended_at,
        duration_s=round((s.ended_at - s.created_at) if s.ended_at is not None else now_mono - s.created_mono, 3),
        caller_number=s.caller_number,
        caller_name=s.caller_name,
        dialled=s.dialled,
        channel=s.caller_channel_name,
        profile=s.profile,
        providers=providers,
        provider_errors=s.provider.errors if s.provider else 0,
        last_provider_error=s.provider.last_error if s.provider else None,
        turns_failed=s.turns_failed,
        outcome=outcome_of(s.end_reason),
        end_reason=s.end_reason,
        downstream_mode=s.downstream_mode,
        barge_ins=s.barge_ins,
        barge_in_at=[round(wall + t, 3) for t in s.barge_in_at],
        recording=s.recording,
        recording_started_at=s.recording_started_at,
        silences=_silences(s, wall, now_mono),
        turns=[_turn(t, start, wall) for t in s.turns if (start := t.voice_end) is not None],
        transcript=[Line(role=t.role, text=t.text, at=round(wall + t.at, 3)) for t in s.transcript],
        actions=[ActionEntry(kind=a.kind, by=a.by, reason=a.reason, department=a.department, target=a.target, state=a.state, detail=a.detail, at=a.at) for a in s.actions],
        quality=Quality(
            packets_in=rtp.packets, expected=rtp.expected, lost=rtp.lost, loss_pct=round(100.0 * rtp.loss_fraction, 3),
            jitter_ms=round(rtp.jitter_ms, 3), late_dropped=s.rtp_in_late, malformed=s.rtp_in_malformed,
            duplicates=rtp.duplicates, ssrc_changes=rtp.ssrc_changes, packets_out=out.packets, underruns=out.underruns,
            overruns=out.overruns, max_pacing_error_ms=round(out.max_pacing_error_ms, 3), kernel_drops=kernel_drops,
        ),
    )


# ---- the database ---------------------------------------------------------------------------

_meta = sa.MetaData()
calls_table = sa.Table(
    "calls",
    _meta,
    sa.Column("call_id", sa.String(128), primary_key=True),
    sa.Column("engine", sa.String(128), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False, index=True),
    sa.Column("ended_at", sa.Float),
    sa.Column("caller_number", sa.String(64), nullable=False, index=True),
    sa.Column("dialled", sa.String(64), nullable=False),
    sa.Column("profile", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(32), nullable=False, index=True),
    sa.Column("turns", sa.Integer, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # CallRecord as JSON
)


# Each engine's last sign of life: a call it left live ended no later than that.
engines_table = sa.Table(
    "engines",
    _meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("heartbeat", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """Which calls a listing shows: ``caller`` is a part of the number, ``text`` a part of what was
    said (either side, case-insensitive), ``since``/``until`` wall-clock start times."""

    caller: str | None = None
    outcome: str | None = None
    profile: str | None = None
    since: float | None = None
    until: float | None = None
    text: str | None = None

    def describe(self) -> str:
        parts = [f"{k} {v}" for k, v in (("caller", self.caller), ("outcome", self.outcome), ("profile", self.profile)) if v]
        parts += [f"{k} {time.strftime('%Y-%m-%d %H:%M', time.localtime(v))}" for k, v in (("since", self.since), ("until", self.until)) if v is not None]
        if self.text:
            parts.append(f"said {self.text!r}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class CallRow:
    """One line of a listing."""

    call_id: str
    started_at: float
    ended_at: float | None
    caller_number: str
    dialled: str
    profile: str
    outcome: str
    turns: int


def database_url(config: AppConfig) -> str:
    """Where the history is: ``history.url``, else the SQLite file ``history.path``, by default
    beside the media directory (/var/lib/aiagent/history.sqlite3)."""
    h = config.history
    return h.url or f"sqlite:///{h.path or config.storage.media_dir.parent / 'history.sqlite3'}"


class HistoryDb:
    """The history's database, used from one thread at a time (the recorder's, or a CLI's)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown_url = shown_url(url)  # for messages: no password
        self._engine: sa.Engine | None = None

    @property
    def engine(self) -> sa.Engine:
        # Made on first use: a URL whose driver is missing fails where the caller reports it.
        if self._engine is None:
            self._engine = sa.create_engine(self.url)
            if self._engine.dialect.name == "sqlite":
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        return self._engine

    def create(self) -> None:
        """The tables, and a SQLite file's directory, if they are not there yet."""
        path = self.engine.url.database if self.engine.dialect.name == "sqlite" else None
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        _meta.create_all(self.engine)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    # -- writing
    def save(self, records: list[CallRecord], heartbeat: tuple[str, float] | None = None) -> None:
        """Inserts or replaces these records and notes the engine's ``heartbeat`` (name, wall
        clock), in one transaction."""
        with self.engine.begin() as conn:
            if records:
                ids = [r.call_id for r in records]
                conn.execute(calls_table.delete().where(calls_table.c.call_id.in_(ids)))
                conn.execute(calls_table.insert(), [_row(r) for r in records])
            if heartbeat is not None:
                name, at = heartbeat
                if not conn.execute(engines_table.update().where(engines_table.c.name == name).values(heartbeat=at)).rowcount:
                    conn.execute(engines_table.insert().values(name=name, heartbeat=at))

    def mark_interrupted(self, engine: str) -> int:
        """Calls left live by this engine when it stopped without ending them (a crash, ``kill -9``);
        other engines' live calls are theirs."""
        c = calls_table.c
        with self.engine.begin() as conn:
            last_alive = conn.execute(sa.select(engines_table.c.heartbeat).where(engines_table.c.name == engine)).scalar()
            rows = conn.execute(sa.select(c.record).where(c.outcome == "live", c.engine == engine)).scalars().all()
            records = [CallRecord.model_validate_json(r) for r in rows]
            for r in records:
                r.outcome = "interrupted"
                r.end_reason = "the engine stopped during the call (crash or kill); it ended within a second of its end time here"
                last = r.started_at + r.duration_s
                r.ended_at = max(last, last_alive) if last_alive is not None else last
                r.duration_s = round(r.ended_at - r.started_at, 3)
                conn.execute(calls_table.update().where(calls_table.c.call_id == r.call_id).values(_row(r)))
            return len(records)

    def prune(self, older_than: float, keep: int) -> int:
        """Deletes ended calls that started before ``older_than`` (wall clock), and the oldest
        beyond the newest ``keep``."""
        with self.engine.begin() as conn:
            n = conn.execute(calls_table.delete().where(calls_table.c.started_at < older_than, calls_table.c.outcome != "live")).rowcount
            cutoff = conn.execute(
                sa.select(calls_table.c.started_at).order_by(calls_table.c.started_at.desc()).offset(keep).limit(1)
            ).scalar()
            if cutoff is not None:
                n += conn.execute(calls_table.delete().where(calls_table.c.started_at <= cutoff, calls_table.c.outcome != "live")).rowcount
            return n

    # -- reading
    def list(self, where: HistoryFilter = HistoryFilter(), limit: int = 50) -> list[CallRow]:
        """The newest calls first, filtered."""
        c = calls_table.c
        needle = where.text.lower() if where.text else None
        columns = [c.call_id, c.started_at, c.ended_at, c.caller_number, c.dialled, c.profile, c.outcome, c.turns]
        q = sa.select(*columns, c.record) if needle else sa.select(*columns)  # the record only to search it
        if where.caller:
            q = q.where(c.caller_number.contains(where.caller, autoescape=True))
        if where.outcome:
            q = q.where(c.outcome == where.outcome)
        if where.profile:
            q = q.where(c.profile == where.profile)
        if where.since is not None:
            q = q.where(c.started_at >= where.since)
        if where.until is not None:
            q = q.where(c.started_at < where.until)
        if needle:
            # The record's JSON holds the transcript; a match anywhere else in it is filtered out below.
            q = q.where(sa.func.lower(c.record).contains(needle, autoescape=True))
        q = q.order_by(c.started_at.desc()).limit(None if needle else limit)
        rows: list[CallRow] = []
        with self.engine.connect() as conn:
            for found in conn.execute(q):
                if needle and not any(needle in line.text.lower() for line in CallRecord.model_validate_json(found[-1]).transcript):
                    continue
                rows.append(CallRow(*found[:8]))
                if len(rows) == limit:
                    break
        return rows

    def get(self, call_id: str) -> CallRecord | None:
        """One call, by its id or a unique beginning of it."""
        c = calls_table.c
        with self.engine.connect() as conn:
            raw = conn.execute(sa.select(c.record).where(c.call_id == call_id)).scalar()
            if raw is None:
                found = conn.execute(sa.select(c.record).where(c.call_id.startswith(call_id, autoescape=True)).limit(2)).scalars().all()
                raw = found[0] if len(found) == 1 else None
        return CallRecord.model_validate_json(raw) if raw is not None else None


def _signature(s: CallSession) -> tuple[object, ...]:
    """What of a live call, changed, must reach the history within a second."""
    p = s.provider
    return (s.state, len(s.transcript), len(s.turns), tuple(a.state for a in s.actions), s.barge_ins, p.name if p else None, p.errors if p else 0)


def _row(r: CallRecord) -> dict[str, object]:
    return {
        "call_id": r.call_id, "engine": r.engine, "started_at": r.started_at, "ended_at": r.ended_at, "caller_number": r.caller_number,
        "dialled": r.dialled, "profile": r.profile, "outcome": r.outcome, "turns": len(r.turns), "record": r.model_dump_json(),
    }


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL: a reader (the CLI, the TUI) never blocks the engine's writes; NORMAL sync is durable
    # across a process crash (what kill -9 is), and costs no fsync per write.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


# ---- the recorder ---------------------------------------------------------------------------


class HistoryRecorder:
    """Writes the store's calls to the history: a supervised task (``run``) and a watcher of the
    store (told of every call as it starts and ends). A failing database loses no call and no
    record it can keep: the failure is reported (``on_error``: counted and shown in /health,
    logged once per interval) and the records are written at the next try."""

    def __init__(
        self, store: SessionStore, db: HistoryDb, engine: str, retention_days: float, max_calls: int,
        on_error: Callable[[str, BaseException], None], kernel_drops: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.db = db
        self._kernel_drops = kernel_drops
        self._drops_before: dict[str, int | None] = {}  # call id -> the socket's drop count at its start
        self.engine = engine
        self.retention_days = retention_days
        self.max_calls = max_calls
        self._on_error = on_error
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history")
        self._providers: dict[str, list[str]] = {}  # call id -> providers in the order used
        self._live: dict[str, CallSession] = {}
        self._ended: dict[str, CallSession] = {}  # not written since they ended (or the write failed)
        self._saved: dict[str, tuple[tuple[object, ...], float]] = {}  # live call -> (what was written, when)
        self._wake = asyncio.Event()
        self.written = 0
        self.interrupted_found = 0
        store.watchers.append(self)

    # ---- SessionWatcher
    def call_added(self, call: CallSession) -> None:
        self._live[call.call_id] = call
        self._drops_before[call.call_id] = self._kernel_drops()
        self._note_provider(call)

    def call_removed(self, call: CallSession) -> None:
        self._live.pop(call.call_id, None)
        self._ended[call.call_id] = call
        self._wake.set()

    def call_amended(self, call: CallSession) -> None:
        self.call_removed(call)

    def call_refused(self, call: CallSession) -> None:
        """A caller turned away (engine/refusals.py): never live, its record goes as an ended call's."""
        self.call_removed(call)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def open(self) -> None:
        """Creates the tables, marks what this engine left live when it last stopped as
        interrupted, prunes. Raises if the database cannot be used (the engine says so at start)."""
        await self._call(self.db.create)
        self.interrupted_found = await self._call(self.db.mark_interrupted, self.engine)
        if self.interrupted_found:
            log.warning("call history: %d call(s) marked interrupted (the engine had stopped during them)", self.interrupted_found)
        await self._prune()

    async def run(self) -> None:
        """Writes an ended call at once, the live ones once a second, prunes hourly."""
        loop = asyncio.get_running_loop()
        next_sync = loop.time()
        next_prune = loop.time() + PRUNE_INTERVAL_S
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 a cancel that comes as the wait ends
            # (the engine stopping right after its last call ended) is lost in wait_for.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_sync - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            sync = loop.time() >= next_sync
            if sync:
                next_sync = loop.time() + SYNC_INTERVAL_S
            await self._write(sync)
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_INTERVAL_S
                await self._prune()

    def _note_provider(self, s: CallSession) -> list[str]:
        used = self._providers.setdefault(s.call_id, [])
        if s.provider is not None and (not used or used[-1] != s.provider.name):
            used.append(s.provider.name)
        return used

    async def _write(self, sync: bool) -> None:
        """Writes the ended calls not yet written and, with ``sync``, the engine's heartbeat and
        the live calls whose words, turns or actions changed (the others' RTP figures every
        QUALITY_REFRESH_S): building a record costs the loop about 50 us, and at 250 calls
        rewriting every one each second would stall it 14 ms at a time."""
        ended = list(self._ended.values())
        now = time.monotonic()
        live: list[tuple[CallSession, tuple[object, ...]]] = []
        if sync:
            for s in self._live.values():
                sig, saved = _signature(s), self._saved.get(s.call_id)
                if saved is None or saved[0] != sig or now - saved[1] >= QUALITY_REFRESH_S:
                    live.append((s, sig))
        drops = self._kernel_drops()
        records = [
            record_of(s, self.engine, list(self._note_provider(s)), kernel_drops=self._drops_during(s.call_id, drops))
            for s in ended + [s for s, _ in live]
        ]
        if not records and not sync:
            return
        try:
            await self._call(self.db.save, records, (self.engine, time.time()) if sync else None)
        except Exception as e:  # the database is down, full, locked: retried at the next write
            self._on_error("history", e)
            return
        self.written += len(records)
        for s, sig in live:
            self._saved[s.call_id] = (sig, now)
        for s in ended:
            self._ended.pop(s.call_id, None)
            self._providers.pop(s.call_id, None)
            self._saved.pop(s.call_id, None)
            self._drops_before.pop(s.call_id, None)

    def _drops_during(self, call_id: str, now: int | None) -> int | None:
        before = self._drops_before.get(call_id)
        return now - before if now is not None and before is not None else None

    async def _prune(self) -> None:
        older = time.time() - self.retention_days * 86400
        try:
            n = await self._call(self.db.prune, older, self.max_calls)
        except Exception as e:
            self._on_error("history", e)
            return
        if n:
            log.info("call history: %d old call(s) pruned", n)

    async def close(self) -> None:
        """Writes every call as it stands (the engine is stopping), then closes the database."""
        try:
            await self._write(sync=True)
        finally:
            await self._call(self.db.close)
            self._io.shutdown(wait=True)
