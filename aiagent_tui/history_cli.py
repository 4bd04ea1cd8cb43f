"""``aiagent-tui calls list|show|diagnose|export``: the call history from a shell (scripts, SSH one-liners)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from datetime import datetime
from functools import partial
from typing import Callable, TextIO

import sqlalchemy as sa

from engine.config import AppConfig
from engine.diagnosis import Diagnosis, diagnose_in
from engine.history import OUTCOMES, CallRecord, CallRow, HistoryDb, HistoryFilter, database_url, db_error
from engine.sessions import action_words
from providers.redact import clean_text

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    calls = sub.add_parser("calls", help="the call history: list, show, diagnose, export")
    csub = calls.add_subparsers(dest="calls_command", required=True)
    ls = csub.add_parser("list", help="the newest calls first, each with its diagnosis's verdict (ok, warn, bad)")
    ls.add_argument("--caller", help="part of the caller's number")
    ls.add_argument("--outcome", choices=[o for o in OUTCOMES])
    ls.add_argument("--profile")
    ls.add_argument("--since", help="start time: 2026-11-30T02:00, 02:00 (today), or 30m / 2h / 7d ago")
    ls.add_argument("--until", help="end time, as --since")
    ls.add_argument("--search", help="words said on the call (either side)")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = csub.add_parser("show", help="one call: transcript, turns, actions, quality")
    show.add_argument("id", help="the call's id (or a unique beginning of it)")
    dg = csub.add_parser("diagnose", help="what went wrong on a call, measured against its profile's norms")
    dg.add_argument("id")
    dg.add_argument("--json", action="store_true")
    ex = csub.add_parser("export", help="one call's whole record")
    ex.add_argument("id")
    ex.add_argument("--format", choices=["json"], default="json")


def parse_when(text: str, now: float | None = None) -> float:
    """A time as an operator types it: ISO date-time, a clock time today, or an age (2h = 2 hours ago)."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", text.strip()):
            today = datetime.fromtimestamp(now).date().isoformat()
            return datetime.fromisoformat(f"{today}T{text.strip()}").timestamp()
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a time: give 2026-11-30T02:00, 02:00, or 30m / 2h / 7d") from None


_KEYS = ("caller", "outcome", "profile", "since", "until")


def parse_filters(text: str, now: float | None = None) -> HistoryFilter:
    """The console's filter line: ``caller:0142 outcome:failed profile:dental since:2h until:02:30``
    and any other words, which must have been said on the call."""
    found: dict[str, str] = {}
    words: list[str] = []
    for token in text.split():
        key, sep, value = token.partition(":")
        if sep and key in _KEYS and value:
            found[key] = value
        else:
            words.append(token)
    outcome = found.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}: one of {', '.join(OUTCOMES)}")
    return HistoryFilter(
        caller=found.get("caller"), outcome=outcome, profile=found.get("profile"),
        since=parse_when(found["since"], now) if "since" in found else None,
        until=parse_when(found["until"], now) if "until" in found else None,
        text=" ".join(words) or None,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """A listed call's diagnosis, kept while its row says the same (an ended call's never changes)."""

    ended_at: float | None
    outcome: str
    diagnosis: Diagnosis
    transport: str = "rtp"  # the call's media transport, from its record (the table has no column for it)


def verdicts(db: HistoryDb, rows: list[CallRow], diagnose: Callable[[CallRecord], Diagnosis],
             known: dict[str, Verdict] | None = None) -> dict[str, Verdict]:
    """Each listed call's diagnosis (``calls list``, the history screen): those ``known`` whose row
    has not changed are reused, the others (live calls, new ones) read and diagnosed."""
    known = known or {}
    out = {r.call_id: v for r in rows if (v := known.get(r.call_id)) is not None and r.ended_at is not None
           and (v.ended_at, v.outcome) == (r.ended_at, r.outcome)}
    for rec in db.records(tuple(r.call_id for r in rows if r.call_id not in out)):
        out[rec.call_id] = Verdict(rec.ended_at, rec.outcome, diagnose(rec), rec.transport)
    return out


def main(config: AppConfig, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    db = HistoryDb(database_url(config))
    path = db.sqlite_path
    if path is not None and not path.exists():  # never made here: an empty new file would hide a deleted one
        print(f"aiagent-tui calls: no call history at {path}: the file does not exist (the engine makes it at its start; "
              "see history.path, AIAGENT_HISTORY_PATH)", file=sys.stderr)
        return 1
    try:
        return _run(config, args, db, out)
    except (sa.exc.SQLAlchemyError, OSError, ValueError) as e:  # a damaged file, a database down: one line, no traceback
        print(f"aiagent-tui calls: cannot read the call history at {db.shown_url}: {db_error(e)}", file=sys.stderr)
        return 1
    finally:
        db.close()


def _run(config: AppConfig, args: argparse.Namespace, db: HistoryDb, out: TextIO) -> int:
    url = db.shown_url
    db.create()  # the tables, on a database (or a file the engine has just made) with no call yet
    if args.calls_command == "list":
        try:
            where = HistoryFilter(
                caller=args.caller, outcome=args.outcome, profile=args.profile, since=parse_when(args.since) if args.since else None,
                until=parse_when(args.until) if args.until else None, text=args.search,
            )
        except ValueError as e:
            print(f"aiagent-tui calls list: {e}", file=sys.stderr)
            return 2
        rows = db.list(where, args.limit)
        found = verdicts(db, rows, partial(diagnose_in, config))
        level = {r.call_id: v.diagnosis.level if (v := found.get(r.call_id)) else "-" for r in rows}  # "-": pruned meanwhile
        via = {r.call_id: clean_text(v.transport) if (v := found.get(r.call_id)) else "-" for r in rows}
        if args.json:
            for r in rows:
                print(json.dumps({"call_id": r.call_id, "started_at": r.started_at, "ended_at": r.ended_at, "caller_number": r.caller_number,
                                  "dialled": r.dialled, "profile": r.profile, "outcome": r.outcome, "turns": r.turns,
                                  "level": level[r.call_id], "transport": via[r.call_id]}), file=out)
            return 0
        if not rows:
            print(f"no calls in {url}" + (f" match: {where.describe()}" if where.describe() else ""), file=out)
            return 0
        print(f"{'started':19s}  {'length':>7s}  {'caller':16s}  {'dialled':8s}  {'profile':10s}  {'outcome':16s}  {'flag':4s}  {'turns':>5s}  {'via':11s}  id", file=out)
        for r in rows:
            length = f"{r.ended_at - r.started_at:.0f} s" if r.ended_at is not None else "-"
            print(f"{_clock(r.started_at):19s}  {length:>7s}  {clean_text(r.caller_number):16s}  {clean_text(r.dialled):8s}  {clean_text(r.profile):10s}"
                  f"  {r.outcome:16s}  {level[r.call_id]:4s}  {r.turns:5d}  {via[r.call_id]:11s}  {clean_text(r.call_id)}", file=out)
        return 0
    rec = db.get(args.id)
    if rec is None:
        print(f"aiagent-tui calls: no call {args.id!r} in {url} (or more than one begins so)", file=sys.stderr)
        return 1
    if args.calls_command == "export":
        print(rec.model_dump_json(indent=2), file=out)
    elif args.calls_command == "diagnose":
        d = diagnose_in(config, rec)
        if args.json:
            print(json.dumps(dataclasses.asdict(d), indent=2), file=out)
        else:
            print_diagnosis(d, out)
    else:
        show(rec, out)
    return 0


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _s(v: float | None) -> str:
    return f"{v:.2f}" if v is not None else "-"


def show(r: CallRecord, out: TextIO) -> None:
    p = lambda text="": print(text, file=out)  # noqa: E731
    name = f" ({clean_text(r.caller_name)})" if r.caller_name else ""
    p(f"call {clean_text(r.call_id)} from {clean_text(r.caller_number) or 'unknown'}{name} to {clean_text(r.dialled) or '-'}, "
      f"profile {clean_text(r.profile)}, engine {r.engine}")
    if r.channel:
        p(f"  channel {clean_text(r.channel)}")
    ended = f"ended {_clock(r.ended_at)}" if r.ended_at is not None else "still live"
    length = r.duration_s if r.ended_at is not None else time.time() - r.started_at  # a live call's row has no length yet
    p(f"  started {_clock(r.started_at)}, {length:.1f} s, {ended}: {r.outcome}" + (f" ({r.end_reason})" if r.end_reason else ""))
    errors = f", {r.provider_errors} provider error(s), last: {r.last_provider_error}" if r.provider_errors else ""
    errors += f", {r.turns_failed} turn(s) failed (answered with the apology)" if r.turns_failed else ""
    p(f"  providers: {' then '.join(r.providers) or '-'}{errors}; audio to the caller as {r.downstream_mode}; barge-ins {r.barge_ins}")
    q = r.quality
    p(f"  media: {r.transport}" + (f" from {clean_text(r.media_remote)}" if r.media_remote else ""))
    if r.transport == "rtp":
        p(f"  RTP in: {q.packets_in} packets, {q.lost} lost ({q.loss_pct:.1f} %), jitter {q.jitter_ms:.1f} ms, {q.late_dropped} late, {q.malformed} malformed, {q.ssrc_changes} SSRC changes")
        p(f"  RTP out: {q.packets_out} packets, {q.underruns} underruns, {q.overruns} overruns, pacing error up to {q.max_pacing_error_ms:.1f} ms")
    else:  # a stream over TCP: nothing lost or reordered; what can go wrong is a stall
        p(f"  in: {q.packets_in} messages, {q.gaps} gaps over 100 ms (longest {q.max_gap_ms:.0f} ms), arrival jitter {q.jitter_ms:.1f} ms, {q.malformed} malformed")
        p(f"  out: {q.packets_out} messages, {q.underruns} underruns, {q.overruns} overruns, pacing error up to {q.max_pacing_error_ms:.1f} ms")
    if r.recording:
        p(f"  recording: {r.recording} (caller left, agent right)")
    for gap in r.interruptions:
        p(f"  the engine stopped at {_clock(gap.at)} during the call: "
          + (f"taken up again at {_clock(gap.resumed_at)} by {gap.by}" if gap.resumed_at is not None else "the call ended there"))
    p()
    p("transcript")
    for line in r.transcript:
        mark = f"  [operator: {clean_text(line.by)}]" if line.by else ""
        p(f"  {datetime.fromtimestamp(line.at).strftime('%H:%M:%S.%f')[:-4]}  {line.role:6s}  {clean_text(line.text)}{mark}")
    if not r.transcript:
        p("  (nothing said)")
    if r.turns:
        p()
        p("turns (seconds from the caller's last voiced frame; eos: until the engine decided they had finished)")
        p(f"  {'at':11s}  {'to answer':>9s}  {'eos':>5s}  {'stt':>5s}  {'llm':>5s}  {'tts':>5s}  {'playout':>7s}  {'queued':>6s}  {'engine':>6s}")
        for t in r.turns:
            p(f"  {datetime.fromtimestamp(t.at).strftime('%H:%M:%S.%f')[:-4]}  {_s(t.latency_s):>9s}  {_s(t.endpoint_s):>5s}  {_s(t.stt_s):>5s}  {_s(t.llm_first_sentence_s):>5s}"
              f"  {_s(t.tts_first_audio_s):>5s}  {_s(t.playout_s):>7s}  {_s(t.queued_s):>6s}  {_s(t.own_s):>6s}"
              + (f"  (the hold line at {t.hold_s:.2f}: 'to answer' is its)" if t.hold_s is not None else ""))
    if r.actions:
        p()
        p("actions")
        for a in r.actions:
            what = action_words(a.kind, a.department, a.target, clean_text(a.text))
            p(f"  {datetime.fromtimestamp(a.at).strftime('%H:%M:%S')}  {what} by {a.by}: {a.state}" + (f" - {a.detail}" if a.detail else "") + (f"; reason: {a.reason}" if a.reason else ""))


def print_diagnosis(d: Diagnosis, out: TextIO) -> None:
    print(f"call {d.call_id}: {d.headline}", file=out)
    for f in d.findings:
        print(f"  {f.level:4s}  {f.says}", file=out)
        for e in f.evidence:
            print(f"        - {e}", file=out)
