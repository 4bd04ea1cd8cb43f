"""The call history: each call's record in a database, kept across calls, restarts and crashes.

``HistoryRecorder`` follows the session store: a call's row is written when the call starts,
brought up to date once a second while it runs (a crash or ``kill -9`` loses at most that second),
and completed when it ends; at the next start, rows still marked live are marked interrupted.
``HistoryDb`` is the database: SQLite by default (one file, WAL), or any database URL SQLAlchemy
knows (``postgresql+psycopg://...``: several engines sharing one history). Each row has the
columns that lists filter on and the whole record as JSON (``CallRecord``). Every statement runs
on one thread of the recorder's own, never on the event loop.

A history fault never stops or delays call answering: the engine starts without its history and
opens it as soon as it can; a failing write (a full disk, a read-only file, a database server down
or hung) marks the history failing in /health within a second, keeps the records in memory
(bounded) and writes them when it works again. A SQLite file deleted under the engine is made
again from the deleted file's still open copy; a damaged one is moved aside
(``NAME.corrupt-TIMESTAMP``, never deleted) and a new one started. A record the database refuses
(a value it will not store) is dropped alone, never holding up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import sqlite3
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel

from engine.config import AppConfig
from runtime.ratelimit import RateLimitedLog, RateLimitFilter
from engine.status import HistoryStatus
from engine.sessions import QUIET_MIN_S, CallSession, ConversationState, SessionStore, TurnTimeline
from providers.redact import clean_text, shown_url

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log)

T = TypeVar("T")
SYNC_INTERVAL_S = 0.5  # what a crash can lose (a live call's words and turns, when it ended), and how soon a failing history is seen
QUALITY_REFRESH_S = 10.0  # a live call whose words have not changed: its RTP figures, this often
PRUNE_INTERVAL_S = 3600.0
SLOW_WRITE_S = 0.5  # a write (or the opening) not back after this long: the history is failing (a hung server)
ABANDON_S = 15.0  # a statement not back after this long is left to its thread: a new thread and connection go on
CLOSE_TIMEOUT_S = 3.0  # at shutdown, what is still held gets this long to be written; a hung server is then left behind
MAX_HELD = 10_000  # ended calls' records kept in memory while the database fails; beyond, the oldest are lost
INCIDENT_S = 600.0  # a file deleted or moved aside stays in /health's problems this long after it was dealt with
ADOPT_WINDOW_S = 600.0  # a call interrupted by the last stop is continued if its caller is taken up within this

Outcome = Literal[
    "live", "transferred", "caller_hung_up", "agent_hung_up", "operator_hung_up", "shutdown", "failed", "interrupted", "refused",
    "transfer_failed", "brought_in",
]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

# The engine's end reasons (engine/calls.py, engine/call.py), by how they begin.
_REASONS: tuple[tuple[str, Outcome], ...] = (
    ("transferred to ", "transferred"),
    ("brought in ", "brought_in"),  # a person was brought in and the agent left (engine/actions.py)
    ("caller hung up", "caller_hung_up"),
    ("caller left ", "caller_hung_up"),
    ("agent hung up", "agent_hung_up"),
    ("hung up by operator", "operator_hung_up"),
    ("engine shutdown", "shutdown"),
    ("refused: ", "refused"),  # turned away, never a call (engine/refusals.py)
)


class _Acted(Protocol):
    kind: str
    state: str


def outcome_of(end_reason: str | None, actions: Sequence[_Acted] = ()) -> Outcome:
    """How a call ended, from the engine's end reason and what Asterisk reported of its last
    transfer: a caller the PBX dropped instead of putting through (a target the dialplan lacks) is
    "transfer_failed", not "transferred". What the reason does not name is a failure (setup failed,
    provider error, the media path lost)."""
    if end_reason is None:
        return "live"
    for prefix, outcome in _REASONS:
        if end_reason.startswith(prefix):
            if outcome == "transferred" and next((a.state for a in reversed(actions) if a.kind == "transfer"), "") == "failed":
                return "transfer_failed"
            return outcome
    return "failed"


# ---- the record -----------------------------------------------------------------------------


class Line(BaseModel):
    role: Literal["caller", "agent", "note"]  # note: not spoken (an operator's instruction or take-over)
    text: str
    at: float  # wall clock
    by: str = ""  # an operator's doing (a line they had the agent say, a note): who


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
    text: str = ""  # an operator's line or instruction
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
    # A stream transport's (AudioSocket, WebSocket): packets_in counts its audio messages, nothing
    # is lost, jitter_ms is the arrival jitter; these say when the caller's audio stalled.
    gaps: int = 0
    max_gap_ms: float = 0.0


class Silence(BaseModel):
    at: float  # wall clock
    seconds: float


class Interruption(BaseModel):
    """The engine stopped during the call (a crash, ``kill -9``) and, if the caller was still
    there, an engine took the call up again: the record goes on from where it was."""

    at: float  # wall clock: the engine's last sign of life before it stopped
    resumed_at: float | None = None  # wall clock: the caller taken up again (None: the call ended there)
    by: str = ""  # the engine that took it up


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
    # How Asterisk handed the call's audio over (docs/transports.md), and the far end of that link.
    # Records written before there was a choice have neither: they were all RTP.
    transport: str = "rtp"
    media_remote: str = ""
    barge_ins: int = 0
    barge_in_at: list[float] = []  # wall clock
    silences: list[Silence] = []  # nobody speaking, no answer on the way (QUIET_MIN_S and longer)
    turns: list[TurnRecord] = []
    transcript: list[Line] = []
    actions: list[ActionEntry] = []
    quality: Quality = Quality()
    recording: str | None = None  # the stereo WAV (caller left, agent right) on the engine's host
    recording_started_at: float | None = None  # wall clock of its first sample
    interruptions: list[Interruption] = []


# What the columns hold at most (VARCHAR sizes): a longer value is cut, so that no database refuses it.
_SIZES = {"call_id": 128, "engine": 128, "caller_number": 64, "dialled": 64, "profile": 64, "outcome": 32}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(r: CallRecord) -> CallRecord:
    """The record with what the caller chose (caller ID, dialled number) bounded and cleaned."""
    fixed = {k: c for k in ("call_id", "engine", "caller_number", "caller_name", "dialled", "channel", "profile")
             if (c := clean_text(v := getattr(r, k), _SIZES.get(k, 256))) != v}
    return r.model_copy(update=fixed) if fixed else r


def _json(r: CallRecord) -> str:
    try:
        return r.model_dump_json()
    except ValueError:  # a lone surrogate deeper in the record (a transcript): replaced everywhere
        def fix(v: Any) -> Any:
            if isinstance(v, str):
                return _SURROGATE.sub("\ufffd", v)
            if isinstance(v, dict):
                return {k: fix(x) for k, x in v.items()}
            if isinstance(v, list):
                return [fix(x) for x in v]
            return v
        return CallRecord.model_validate(fix(r.model_dump())).model_dump_json()


def continued(first: CallRecord, now: CallRecord) -> CallRecord:
    """An adopted call's record: ``first``, the part before the engine stopped (marked
    interrupted), then ``now``, the part since an engine took the caller up again."""
    cut = first.interruptions[-1] if first.interruptions else Interruption(at=first.ended_at or now.started_at)
    q1, q2 = first.quality, now.quality
    expected = q1.expected + q2.expected
    lost = q1.lost + q2.lost
    return now.model_copy(update={
        "started_at": first.started_at,
        "duration_s": round(now.started_at - first.started_at + now.duration_s, 3),
        **{k: getattr(now, k) or getattr(first, k) for k in ("caller_number", "caller_name", "dialled", "channel", "profile", "recording", "recording_started_at")},
        "providers": first.providers + now.providers,
        "provider_errors": first.provider_errors + now.provider_errors,
        "last_provider_error": now.last_provider_error or first.last_provider_error,
        "turns_failed": first.turns_failed + now.turns_failed,
        "barge_ins": first.barge_ins + now.barge_ins,
        "barge_in_at": first.barge_in_at + now.barge_in_at,
        "silences": first.silences + now.silences,
        "turns": first.turns + now.turns,
        "transcript": first.transcript + now.transcript,
        "actions": first.actions + now.actions,
        "quality": Quality(
            packets_in=q1.packets_in + q2.packets_in, expected=expected, lost=lost, loss_pct=round(100.0 * lost / expected, 3) if expected else 0.0,
            jitter_ms=max(q1.jitter_ms, q2.jitter_ms), late_dropped=q1.late_dropped + q2.late_dropped, malformed=q1.malformed + q2.malformed,
            duplicates=q1.duplicates + q2.duplicates, ssrc_changes=q1.ssrc_changes + q2.ssrc_changes, packets_out=q1.packets_out + q2.packets_out,
            underruns=q1.underruns + q2.underruns, overruns=q1.overruns + q2.overruns,
            max_pacing_error_ms=max(q1.max_pacing_error_ms, q2.max_pacing_error_ms), kernel_drops=q2.kernel_drops,
            gaps=q1.gaps + q2.gaps, max_gap_ms=max(q1.max_gap_ms, q2.max_gap_ms),
        ),
        "interruptions": first.interruptions[:-1] + [cut.model_copy(update={"resumed_at": now.started_at, "by": now.engine})],
    })


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
        outcome=outcome_of(s.end_reason, s.actions),
        end_reason=s.end_reason,
        downstream_mode=s.downstream_mode,
        barge_ins=s.barge_ins,
        barge_in_at=[round(wall + t, 3) for t in s.barge_in_at],
        recording=s.recording,
        recording_started_at=s.recording_started_at,
        silences=_silences(s, wall, now_mono),
        turns=[_turn(t, start, wall) for t in s.turns if (start := t.voice_end) is not None],
        transcript=[Line(role=t.role, text=t.text, at=round(wall + t.at, 3), by=t.by) for t in s.transcript],
        actions=[
            ActionEntry(kind=a.kind, by=a.by, reason=a.reason, department=a.department, target=a.target, state=a.state, detail=a.detail, text=a.text, at=a.at)
            for a in s.actions
        ],
        transport=s.transport,
        media_remote=s.media_remote,
        quality=_quality(s, kernel_drops),
    )


def _quality(s: CallSession, kernel_drops: int | None) -> Quality:
    """The call's media figures as its transport counts them: RTP's sequence numbers, or a stream's
    messages and gaps (no loss on TCP; the RTP socket's kernel drops are not this call's)."""
    out = s.rtp_out
    common: dict[str, Any] = dict(
        packets_out=out.packets, underruns=out.underruns, overruns=out.overruns, max_pacing_error_ms=round(out.max_pacing_error_ms, 3),
    )
    if s.transport != "rtp":
        t = s.stream_in
        return Quality(
            packets_in=t.messages, expected=t.messages, jitter_ms=round(t.jitter_ms, 3), malformed=t.malformed,
            gaps=t.gaps, max_gap_ms=round(t.max_gap_ms, 1), **common,
        )
    rtp = s.rtp_in
    return Quality(
        packets_in=rtp.packets, expected=rtp.expected, lost=rtp.lost, loss_pct=round(100.0 * rtp.loss_fraction, 3),
        jitter_ms=round(rtp.jitter_ms, 3), late_dropped=s.rtp_in_late, malformed=s.rtp_in_malformed,
        duplicates=rtp.duplicates, ssrc_changes=rtp.ssrc_changes, kernel_drops=kernel_drops, **common,
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


@dataclass(frozen=True, slots=True, kw_only=True)
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


@dataclass(frozen=True, slots=True, kw_only=True)
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


# PostgreSQL: a server that does not answer (a dead network path, a hung host) fails a connect in
# 5 s, a statement in 5 s (lock waits in 3 s), and a connection whose peer is gone within ~10 s.
_PG_CONNECT = {
    "connect_timeout": 5,
    "options": "-c statement_timeout=5000 -c lock_timeout=3000 -c idle_in_transaction_session_timeout=10000",
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2, "tcp_user_timeout": 10000,
}
# SQLite's result codes for a damaged file: SQLITE_CORRUPT, SQLITE_NOTADB.
_SQLITE_DAMAGED = (11, 26)


class HistoryDb:
    """The history's database, used from one thread at a time (the recorder's, or a CLI's).

    ``before_write``: a fault-injection hook (tests, bench/faults.py): called with the connection
    at the start of every write transaction; it may raise (``sqlite3.OperationalError("database or
    disk is full")``), block (a hung server), or run a statement (``PRAGMA query_only = 1``: a
    read-only file)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown_url = shown_url(url)  # for messages: no password
        self._engine: sa.Engine | None = None
        self.before_write: Callable[[sa.Connection], None] | None = None
        self._file_id: tuple[int, int] | None = None  # the SQLite file written into (device, inode)
        self.incident: tuple[float, str] | None = None  # the last file deleted or moved aside: (wall clock, what was done)

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite file (None: another database, or one in memory)."""
        u = sa.engine.make_url(self.url)
        return Path(u.database) if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" else None

    @property
    def engine(self) -> sa.Engine:
        # Made on first use: a URL whose driver is missing fails where the caller reports it.
        if self._engine is None:
            pg = sa.engine.make_url(self.url).get_backend_name() == "postgresql"
            if pg and not any(isinstance(f, RateLimitFilter) for f in logging.getLogger("psycopg").filters):
                # psycopg warns of each batch the server refused ("error ignored terminating ...
                # pipeline aborted"): once per interval, the count after.
                logging.getLogger("psycopg").addFilter(RateLimitFilter())
            self._engine = sa.create_engine(self.url, pool_pre_ping=True, **({"connect_args": dict(_PG_CONNECT)} if pg else {}))
            if self._engine.dialect.name == "sqlite":
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        return self._engine

    def create(self) -> None:
        """The tables, and a SQLite file's directory, if they are not there yet."""
        path = self.sqlite_path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        _meta.create_all(self.engine)
        self._file_id = _file_id(path) if path is not None else None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def abandon(self) -> None:
        """Leaves the connections to a thread stuck on them (a hung server); the next use makes new ones."""
        if self._engine is not None:
            self._engine.dispose(close=False)
            self._engine = None

    def is_damaged(self, e: BaseException) -> bool:
        """A SQLite file that is not a database, or has a corrupt page: trying again cannot help."""
        orig = getattr(e, "orig", e)
        return self.sqlite_path is not None and isinstance(orig, sqlite3.DatabaseError) and (getattr(orig, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_DAMAGED

    def set_aside(self) -> Path:
        """Moves a damaged SQLite file (and its WAL) aside to ``NAME.corrupt-TIMESTAMP``, never
        deleting it (``sqlite3 NAME.corrupt-... .recover`` may still get calls out of it); the next
        ``create`` starts a new one. Returns where it went."""
        path = self.sqlite_path
        assert path is not None
        self.close()
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        self._file_id = None
        self.incident = (time.time(), f"call history file {path} was damaged: moved aside to {aside}, a new one started")
        log.error("call history: %s is damaged; it is moved aside to %s (kept: sqlite3 can recover calls from it) and a new history is started", path, aside)
        return aside

    def _follow_file(self) -> None:
        """A SQLite file deleted (or replaced) while the engine writes into it: the writes would go
        on into the unlinked file and be lost with it. A deleted file (or an empty one that a
        reader made in its place) is made again with what the deleted one held, copied from its
        still open connection; a history put in its place is the operator's: written from now on."""
        path = self.sqlite_path
        if path is None or self._file_id is None:
            return
        now = _file_id(path)
        if now == self._file_id:
            return
        engine, copied = self._engine, False
        tmp = path.with_name(path.name + ".restoring")
        if (now is None or not _holds_calls(path)) and engine is not None and engine.pool.checkedin():  # type: ignore[attr-defined]
            raw = engine.raw_connection()  # a pooled connection: to the deleted file
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                dst = sqlite3.connect(tmp)
                try:
                    raw.driver_connection.backup(dst)  # type: ignore[union-attr]
                finally:
                    dst.close()
                copied = True
            finally:
                raw.close()
        self.close()  # the deleted file's connections go
        if copied:
            for suffix in ("-wal", "-shm"):  # the deleted file's, if left: they would be applied to the copy
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")
            os.replace(tmp, path)
            what = "made again with every call the deleted one held"
        else:
            what = "a new file started" if now is None else "the history now there is written from now on"
        self.create()
        self.incident = (time.time(), f"call history file {path} was deleted or replaced while the engine ran: {what}")
        log.error("call history: %s was deleted or replaced while the engine was writing to it: %s", path, what)

    # -- writing
    def save(self, records: list[CallRecord], heartbeat: tuple[str, float] | None = None) -> dict[str, str]:
        """Inserts or replaces these records and notes the engine's ``heartbeat`` (name, wall
        clock), in one transaction. A batch the database refuses for its data (a value too long, a
        constraint) is written record by record: returns those it refused alone (call id -> why).
        Raises when the database cannot be written at all."""
        self._follow_file()
        refused: dict[str, str] = {}
        rows: list[dict[str, object]] = []
        for r in records:
            try:
                rows.append(_row(r))
            except ValueError as e:  # cannot be put in a row at all
                refused[r.call_id] = db_error(e)
        try:
            self._save(rows, heartbeat)
            return refused
        except Exception as e:
            if not rows or not _refused_data(e):
                raise
        self._save([], heartbeat)  # the database works (this raises if it does not): which record is it?
        for row in rows:
            try:
                self._save([row], None)
            except Exception as e:
                if not _refused_data(e):
                    raise
                refused[str(row["call_id"])] = db_error(e)
        return refused

    def _save(self, rows: list[dict[str, object]], heartbeat: tuple[str, float] | None) -> None:
        with self.engine.begin() as conn:
            if self.before_write is not None:
                self.before_write(conn)
            if rows:
                ids = [r["call_id"] for r in rows]
                conn.execute(calls_table.delete().where(calls_table.c.call_id.in_(ids)))
                conn.execute(calls_table.insert(), rows)
            if heartbeat is not None:
                name, at = heartbeat
                if not conn.execute(engines_table.update().where(engines_table.c.name == name).values(heartbeat=at)).rowcount:
                    conn.execute(engines_table.insert().values(name=name, heartbeat=at))

    def mark_interrupted(self, engine: str) -> list[CallRecord]:
        """Calls left live by this engine when it stopped without ending them (a crash, ``kill -9``);
        other engines' live calls are theirs. Returns them as marked."""
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
                r.interruptions = [*r.interruptions, Interruption(at=r.ended_at)]
                conn.execute(calls_table.update().where(calls_table.c.call_id == r.call_id).values(_row(r)))
            return records

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
                rows.append(CallRow(**{col.name: found._mapping[col] for col in columns}))  # by column name
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

    def records(self, call_ids: tuple[str, ...]) -> tuple[CallRecord, ...]:
        """The records of these calls (those still in the history), for a listing's verdicts."""
        c = calls_table.c
        out: tuple[CallRecord, ...] = ()
        with self.engine.connect() as conn:
            for i in range(0, len(call_ids), 500):  # under every database's limit of bound parameters
                rows = conn.execute(sa.select(c.record).where(c.call_id.in_(call_ids[i:i + 500]))).scalars()
                out += tuple(CallRecord.model_validate_json(raw) for raw in rows)
        return out


def _signature(s: CallSession) -> tuple[object, ...]:
    """What of a live call, changed, must reach the history within a second."""
    p = s.provider
    return (s.state, len(s.transcript), len(s.turns), tuple(a.state for a in s.actions), s.barge_ins, p.name if p else None, p.errors if p else 0)


def _row(r: CallRecord) -> dict[str, object]:
    r = _clean(r)
    return {
        "call_id": r.call_id, "engine": r.engine, "started_at": r.started_at, "ended_at": r.ended_at, "caller_number": r.caller_number,
        "dialled": r.dialled, "profile": r.profile, "outcome": r.outcome, "turns": len(r.turns), "record": _json(r),
    }


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _holds_calls(path: Path) -> bool:
    """A SQLite history is at ``path`` (not an empty file a reader made)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as c:
            return c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'calls'").fetchone() is not None
    except sqlite3.Error:
        return True  # a file of someone's that we cannot read: not ours to overwrite
    except FileNotFoundError:
        return False


def _refused_data(e: BaseException) -> bool:
    """The database refused what was in the batch (not: it cannot be reached or written)."""
    return isinstance(e, (sa.exc.DataError, sa.exc.IntegrityError, ValueError)) or (
        isinstance(e, sa.exc.StatementError) and not isinstance(e, sa.exc.DBAPIError)
    )


def db_error(e: BaseException) -> str:
    """One line: the driver's error, not SQLAlchemy's wrapping with the statement and its values."""
    orig = getattr(e, "orig", None) or e
    text = " ".join(str(orig).split("\n")[0].split())
    return f"{orig.__class__.__name__}: {text[:200]}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL: a reader (the CLI, the TUI) never blocks the engine's writes; NORMAL sync is durable
    # across a process crash (what kill -9 is), and costs no fsync per write.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


# ---- the recorder ---------------------------------------------------------------------------


class _Worker:
    """The recorder's one thread. A daemon: a statement stuck on a hung server must not keep the
    process from exiting (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None  # started with the first job

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="history", daemon=True)
            self._thread.start()
        fut: Future[T] = Future()
        self._jobs.put((fut, fn, args))
        return fut

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fut, fn, args = job
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args))
                except BaseException as e:
                    fut.set_exception(e)

    def stop(self) -> None:
        self._jobs.put(None)


class HistoryRecorder:
    """Writes the store's calls to the history: a supervised task (``run``) and a watcher of the
    store (told of every call as it starts and ends). A failing database loses no call and no
    record it can keep: it is shown in /health (``status``, ``problems``) from the first failed
    write until one succeeds, logged once as it starts failing and once when it works again, and
    the records are held in memory (up to MAX_HELD ended calls) and written at the next try."""

    def __init__(
        self, store: SessionStore, db: HistoryDb, engine: str, retention_days: float, max_calls: int,
        *, kernel_drops: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.db = db
        self._kernel_drops = kernel_drops
        self._drops_before: dict[str, int | None] = {}  # call id -> the socket's drop count at its start
        self.engine = engine
        self.retention_days = retention_days
        self.max_calls = max_calls
        self._io = _Worker()
        self._providers: dict[str, list[str]] = {}  # call id -> providers in the order used
        self._live: dict[str, CallSession] = {}
        self._ended: dict[str, CallSession] = {}  # not written since they ended (or the write failed)
        self._saved: dict[str, tuple[tuple[object, ...], float]] = {}  # live call -> (what was written, when)
        self._earlier: dict[str, tuple[CallRecord, float]] = {}  # interrupted at the last stop -> (record, when found)
        self._refused: set[str] = set()  # calls whose record the database refused (logged once each)
        self._wake = asyncio.Event()
        self._opened = asyncio.Event()
        self._tried = asyncio.Event()  # the first opening has succeeded or failed
        self._busy_since: float | None = None  # monotonic: a statement in flight since
        self.failing_since: float | None = None  # wall clock: the first failure of the spell going on
        self.last_error: str | None = None
        self.write_errors = 0
        self.written = 0
        self.lost = 0  # records never written: refused, beyond MAX_HELD, or still held at shutdown
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
        if len(self._ended) > MAX_HELD:  # the database has failed for long: the oldest go
            oldest = next(iter(self._ended))
            self._forget(oldest)
            self.lost += 1
            _rl.error("history-overflow", f"call history: more than {MAX_HELD} call records held while {self.db.shown_url} fails: the oldest are lost ({self.lost} so far)")
        self._wake.set()

    def call_amended(self, call: CallSession) -> None:
        self.call_removed(call)

    def call_refused(self, call: CallSession) -> None:
        """A caller turned away (engine/refusals.py): never live, its record goes as an ended call's."""
        self.call_removed(call)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        started = self._busy_since = time.monotonic()
        fut = self._io.submit(fn, *args)

        def done(_: Future[T]) -> None:  # in the thread; also when the awaiting task gave up on it
            if self._busy_since == started:
                self._busy_since = None

        fut.add_done_callback(done)
        try:
            async with asyncio.timeout(ABANDON_S):
                return await asyncio.wrap_future(fut)
        except TimeoutError:
            # Stuck on a connection nothing answers on (keepalives cannot see a peer whose kernel
            # still acknowledges): that thread and connection are left behind, new ones go on.
            self._io.stop()
            self._io = _Worker()
            self._busy_since = None
            self.db.abandon()
            raise TimeoutError(f"no answer in {ABANDON_S:g} s") from None

    # ---- state for /health
    @property
    def failing(self) -> bool:
        slow = self._busy_since is not None and time.monotonic() - self._busy_since > SLOW_WRITE_S
        return self.failing_since is not None or slow

    def status(self) -> HistoryStatus:
        busy = time.monotonic() - self._busy_since if self._busy_since is not None else None
        incident = self.db.incident
        return HistoryStatus(
            url=self.db.shown_url, opened=self._opened.is_set(), failing=self.failing, failing_since=self.failing_since,
            last_error=self.last_error, write_s=round(busy, 1) if busy is not None else None, write_errors=self.write_errors,
            records_written=self.written, records_held=len(self._ended), records_lost=self.lost,
            incident=incident[1] if incident is not None and time.time() - incident[0] < INCIDENT_S else None,
        )

    def problems(self) -> tuple[str, ...]:
        """What the operator must know, in words: the history failing now, a file it had to deal with."""
        st = self.status()
        out: list[str] = []
        if st.failing_since is not None:
            out.append(f"call history failing since {time.strftime('%H:%M:%S', time.localtime(st.failing_since))} ({st.last_error}); "
                       f"{st.records_held} ended call(s) held in memory")
        elif st.failing:
            out.append(f"call history: {self.db.shown_url} has not answered for {st.write_s:.0f} s")
        if st.incident is not None:
            out.append(st.incident)
        return tuple(out)

    # ---- the work
    async def wait_open(self, timeout: float) -> bool:
        """Waits for ``run``'s first try to open the history (at most ``timeout``); True if it is open."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._tried.wait()
        return self._opened.is_set()

    async def open(self) -> bool:
        """Creates the tables, marks what this engine left live when it last stopped as
        interrupted (kept, to be continued if the caller is taken up again), prunes. False if the
        database cannot be used yet (shown in /health; ``run`` tries again)."""
        try:
            await self._call(self.db.create)
            earlier = await self._call(self.db.mark_interrupted, self.engine)
        except Exception as e:
            await self._failed(e)
            return False
        finally:
            self._tried.set()
        now = time.monotonic()
        self._earlier = {r.call_id: (r, now) for r in earlier}
        self.interrupted_found = len(earlier)
        if earlier:
            log.warning("call history: %d call(s) marked interrupted (the engine had stopped during them)", len(earlier))
        self._opened.set()
        await self._prune()
        return True

    async def run(self) -> None:
        """Opens the history (again and again until it can), then writes an ended call at once, the
        live ones once a second, prunes hourly."""
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
            if not self._opened.is_set():
                if sync and await self.open():
                    await self._write(True)
                continue
            await self._write(sync)
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_INTERVAL_S
                await self._prune()

    def _note_provider(self, s: CallSession) -> list[str]:
        used = self._providers.setdefault(s.call_id, [])
        if s.provider is not None and (not used or used[-1] != s.provider.name):
            used.append(s.provider.name)
        return used

    def _record(self, s: CallSession, drops: int | None) -> CallRecord:
        r = record_of(s, self.engine, list(self._note_provider(s)), kernel_drops=self._drops_during(s.call_id, drops))
        earlier = self._earlier.get(s.call_id)
        # The caller of a call interrupted by the last stop, taken up again: the record goes on.
        return continued(earlier[0], r) if earlier is not None else r

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
            self._earlier = {k: v for k, v in self._earlier.items() if k in self._live or k in self._ended or now - v[1] < ADOPT_WINDOW_S}
        drops = self._kernel_drops()
        records = [self._record(s, drops) for s in ended + [s for s, _ in live]]
        if not records and not sync:
            return
        try:
            refused = await self._call(self.db.save, records, (self.engine, time.time()) if sync else None)
        except Exception as e:  # the database is down, full, locked: retried at the next write
            await self._failed(e)
            return
        self._recovered(len(ended))
        self.written += len(records) - len(refused)
        for call_id, why in refused.items():
            if call_id not in self._refused:
                self._refused.add(call_id)
                log.error("call history: the database refused call %s's record (%s); the other calls' records are written", call_id, why)
        for s, sig in live:
            self._saved[s.call_id] = (sig, now)
        for s in ended:
            if s.call_id in refused:
                self.lost += 1
            self._forget(s.call_id)

    def _forget(self, call_id: str) -> None:
        for held in (self._ended, self._providers, self._saved, self._drops_before, self._earlier):
            held.pop(call_id, None)
        self._refused.discard(call_id)

    async def _failed(self, e: BaseException) -> None:
        """A write (or the opening) failed: shown in /health from now until one succeeds. A
        damaged SQLite file is moved aside and a new one started at the next try."""
        self.write_errors += 1
        self.last_error = db_error(e)
        if self.failing_since is None:
            self.failing_since = time.time()
            first = (f"call history: cannot write to {self.db.shown_url} ({self.last_error}); call records are held in memory "
                     f"(up to {MAX_HELD} ended calls) and written when it works again")
            if not _rl.error("history-failing", first):  # the "still failing" lines count from this one
                log.error(first)
        else:
            _rl.error("history-failing", f"call history: still failing ({self.last_error}); {len(self._ended)} ended call(s) held")
        if self.db.is_damaged(e):
            try:
                await self._call(self.db.set_aside)
            except OSError as moved:  # a read-only directory: it stays failing
                _rl.error("history-aside", f"call history: cannot move the damaged file aside: {moved}")
            else:
                self._opened.clear()  # a new file: opened (and written) at the next sync

    def _recovered(self, held: int) -> None:
        if self.failing_since is not None:
            log.warning("call history: writing to %s again after %.0f s failing; %d held call record(s) written",
                        self.db.shown_url, time.time() - self.failing_since, held)
            self.failing_since = None

    def _drops_during(self, call_id: str, now: int | None) -> int | None:
        before = self._drops_before.get(call_id)
        return now - before if now is not None and before is not None else None

    async def _prune(self) -> None:
        older = time.time() - self.retention_days * 86400
        try:
            n = await self._call(self.db.prune, older, self.max_calls)
        except Exception as e:
            await self._failed(e)
            return
        if n:
            log.info("call history: %d old call(s) pruned", n)

    async def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Writes every call as it stands (the engine is stopping), then closes the database. At
        most ``timeout``: a hung database is left behind, and what it did not get is said."""
        try:
            async with asyncio.timeout(timeout):
                if self._opened.is_set() or await self.open():
                    await self._write(sync=True)
        except TimeoutError:
            self.last_error = f"no answer in {timeout:g} s"
        held = len(self._ended)
        if held:
            self.lost += held
            log.error("call history: %d ended call record(s) not written at shutdown: lost (%s: %s)", held, self.db.shown_url, self.last_error)
        if self._busy_since is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._call(self.db.close), 1.0)
        self._io.stop()  # a thread stuck on a hung server is left behind (a daemon)
