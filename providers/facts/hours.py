"""Answers about opening hours from the data: open or closed on a day, a date, now or at a time,
when the business opens and closes, its hours in general, its breaks. Each answer names the day it
is about ("today", "tomorrow, Tuesday", "on Christmas Day, Friday, December 25th"), so that it is
true as said even when the caller meant another day."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

from providers.facts.question import Asked, Day, FactAnswer, Question, date_label, days_of
from providers.facts.schema import WEEKDAYS, Business, Interval, clock_text
from providers.facts.words import content, same_word

T = TypeVar("T")
KINDS = ("hours", "open", "closed", "opens", "closes", "open_now", "breaks")
# The words a question about hours may hold besides days and times (regex alternatives).
_WORDS = (r"open|opens|opening|close|closes|closing|closed|shut|hours?|what time|when|how late|how early|late|early|until|"
          r"work|working|operate|operating|days?|time|times|of operation|be|stay|lunch|lunchtime|break|breaks|take|taking")
_LUNCH = (12 * 60, 13 * 60)  # lunchtime: a break that overlaps it is a lunch break


def answer_hours(q: Question) -> FactAnswer | None:
    t, p = q.text, q.previous
    if q.rest(_WORDS):
        return None
    if p and p.topic in KINDS and re.match(r"(and|so|then|okay)\b", t) and not (q.when.days or q.when.minutes or q.when.now or q.when.part):
        # "Are you open on Saturday?" "And what time do you close?": on Saturday
        q = replace(q, when=replace(q.when, days=days_of(p.subject, q.local.date(), q.business)))
    if re.search(r"\b(lunch|lunchtime|break|breaks)\b", t):
        return breaks(q)
    if re.search(r"\b(what|which) days\b|\bhours\b|\b(when|what time) (are|is) (you|it|the \w+|your \w+)( guys)? open\b(?!.*until)", t) and not q.when.now:
        kind = "hours"
    elif re.search(r"\b(close|closes|closing|shut|how late|late|until)\b", t):
        kind = "closes"
    elif re.search(r"\b(opening time|how early|early)\b|\b(when|what time)\b.*\bopen\b", t):
        kind = "opens"
    else:
        kind = "closed" if re.search(r"\bclosed\b", t) else "open"
    return hours_of(kind, q)


def hours_of(kind: str, q: Question) -> FactAnswer | None:
    """The answer of ``kind`` (open, closed, opens, closes, hours) for the days ``q`` asks about."""
    b, when = q.business, q.when
    if kind == "breaks":
        return breaks(q)
    if not when.days and kind in ("open", "closed", "open_now") and not when.minutes and not when.part:
        return _now(q, asked=kind)
    if not when.days and kind in ("opens", "closes"):
        return _open_close_today(q, kind)
    if not when.days and kind == "hours":
        text = _week(b, q.local.date())
        return FactAnswer(text, Asked("hours")) if text else None
    days = list(when.days) or [Day(q.local.weekday(), q.local.date(), "today")]
    spans = [_spans(b, d) for d in days]
    subject = ",".join(d.key for d in days)
    if not all(s is not None for s in spans):
        return None
    known = [s or () for s in spans]
    if len(days) > 1:
        return FactAnswer(_several(kind, days, known), Asked(kind, subject)) if not when.part else None
    if when.minutes and kind in ("open", "closed"):
        return FactAnswer(_at_time(kind, q, days[0], known[0]), Asked(kind, subject))
    if when.part and kind in ("open", "closed"):
        return FactAnswer(_in_part(kind, days[0], known[0], when.part), Asked(kind, subject))
    return FactAnswer(_one_day(kind, q, days[0], known[0]), Asked(kind, subject))


def _spans(b: Business, day: Day) -> tuple[Interval, ...] | None:
    return b.hours_on(day.date) if day.date else b.weekly(WEEKDAYS[day.weekday])


def _ranges(spans: Sequence[Interval]) -> str:
    return " and ".join(str(s) for s in spans)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _minute(local: dt.datetime) -> int:
    return local.hour * 60 + local.minute


def _one_day(kind: str, q: Question, day: Day, spans: tuple[Interval, ...]) -> str:
    label, today = day.label, day.date == q.local.date()
    if not spans:
        again = _next_opening(q.business, q.local) if today else None
        closed = f"we're closed {label}{'; ' + again if again else ''}."
        return f"{'Yes' if kind == 'closed' else 'No'}, {closed}" if kind in ("open", "closed") else _cap(closed)
    if kind == "opens":
        return f"{_cap(label)}, we open{'ed' if today and _minute(q.local) >= spans[0].opens else ''} at {clock_text(spans[0].opens)}."
    if kind == "closes":
        return f"{_cap(label)}, we close{'d' if today and _minute(q.local) >= spans[-1].closes else ''} at {clock_text(spans[-1].closes)}."
    if today and _minute(q.local) >= spans[-1].closes:
        again = _next_opening(q.business, q.local)
        return f"Today we were open from {_ranges(spans)}; we're closed now{'; ' + again if again else ''}."
    if kind == "hours":
        return f"{_cap(label)}, we're open from {_ranges(spans)}."
    return f"{'Yes' if kind == 'open' else 'No'}, we're open {label}, from {_ranges(spans)}."


def _at_time(kind: str, q: Question, day: Day, spans: tuple[Interval, ...]) -> str:
    """Open at a time of day ("at 8": whichever of 8 am and 8 pm the business is open at, said)."""
    b = q.business
    before = b.hours_on(day.date - dt.timedelta(days=1)) if day.date else b.weekly(WEEKDAYS[day.weekday - 1])
    late = [Interval(s.opens - 24 * 60, s.closes - 24 * 60) for s in before or ()]  # the night before, past midnight
    hit = next(((m, s) for m in q.when.minutes for s in (*late, *spans) if s.contains(m)), None)
    # "1 am on Saturday" may be the night of Saturday too: when that reading answers otherwise, no yes or no
    night = [m for m in ([hit[0]] if hit else q.when.minutes) if m < 6 * 60]
    if any((hit is None) == any(s.contains(m + 24 * 60) for s in spans) or before is None for m in night):
        return f"{_cap(day.label)}, we're open from {_ranges(spans)}." if spans else f"We're closed {day.label}."
    if hit is None:
        hours = f"{day.label}, we're open from {_ranges(spans)}" if spans else f"we're closed {day.label}"
        return f"{'Yes' if kind == 'closed' else 'No'}, {hours}."
    minute, span = hit
    return f"{'Yes' if kind == 'open' else 'No'}, we're open at {clock_text(minute)} {day.label}, until {clock_text(span.closes)}."


def _in_part(kind: str, day: Day, spans: tuple[Interval, ...], part: tuple[int, int]) -> str:
    """Open in a part of the day ("Saturday morning"): yes if all of it, no if none of it, else the
    hours alone (open only part of the afternoon is neither)."""
    start, end = part
    covered = sum(max(0, min(s.closes, end) - max(s.opens, start)) for s in spans)
    if not spans:
        return f"{'Yes' if kind == 'closed' else 'No'}, we're closed {day.label}."
    hours = f"we're open {day.label}, from {_ranges(spans)}."
    if covered == end - start:
        return f"{'Yes' if kind == 'open' else 'No'}, {hours}"
    if covered == 0:
        return f"{'No' if kind == 'open' else 'Yes'}, {day.label}, we're open from {_ranges(spans)}."
    return _cap(hours)


def _several(kind: str, days: list[Day], spans: list[tuple[Interval, ...]]) -> str:
    """Several days at once ("this weekend", "weekdays"): grouped where the hours are the same."""
    def what(s: tuple[Interval, ...]) -> str:
        if not s:
            return "we're closed"
        if kind in ("opens", "closes"):
            return f"we open at {clock_text(s[0].opens)}" if kind == "opens" else f"we close at {clock_text(s[-1].closes)}"
        return f"we're open from {_ranges(s)}"

    text = "; ".join(f"{names}, {what(s)}" for names, s in _groups(days, spans)) + "."
    if kind in ("open", "closed") and (all(spans) or not any(spans)):
        return f"{'Yes' if all(spans) == (kind == 'open') else 'No'}: {text}"
    return _cap(text)


def _groups(days: Sequence[Day], values: Sequence[T]) -> list[tuple[str, T]]:
    """Weekdays next to each other with the same value, named together: "Monday to Friday"."""
    runs: list[tuple[list[Day], T]] = []
    for day, value in zip(days, values, strict=True):
        last = runs[-1][0][-1] if runs else None
        if last and runs[-1][1] == value and day.date is None and last.date is None and day.weekday == last.weekday + 1:
            runs[-1][0].append(day)
        else:
            runs.append(([day], value))
    return [(run[0].name if len(run) == 1 else f"{run[0].name} {'and' if len(run) == 2 else 'to'} {run[-1].name}", value) for run, value in runs]


def _week(b: Business, today: dt.date) -> str | None:
    """The hours in general ("We're open Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm, and
    closed on Sunday."), and any special date of the coming week."""
    days = [Day(i) for i in range(7) if b.weekly(WEEKDAYS[i]) is not None]
    if not days:
        return None
    groups = _groups(days, [b.weekly(WEEKDAYS[d.weekday]) or () for d in days])
    opened = [f"{names} {_ranges(s)}" for names, s in groups if s]
    closed = [names for names, s in groups if not s]
    shut = f"closed on {' and '.join(closed)}" if closed else ""
    if not opened:
        text = f"We're {shut}."
    else:
        listed = ", ".join(opened[:-1]) + ", and " + opened[-1] if len(opened) > 1 else opened[0]
        text = f"We're open {listed}{'; we are ' + shut if shut else ''}."
    for sd in sorted(b.special_days, key=lambda s: s.date):
        if today <= sd.date < today + dt.timedelta(days=7):
            label = date_label(sd.date, today, b)
            text += f" {_cap(label)}, we're open from {_ranges(sd.spans)}." if sd.spans else f" We're closed {label}."
    return text


def _current(b: Business, local: dt.datetime) -> Interval | None:
    """The opening ``local`` falls in, on today's clock (one from last night starts before 0)."""
    minute = _minute(local)
    for s in b.hours_on(local.date() - dt.timedelta(days=1)) or ():
        if s.contains(minute + 24 * 60):
            return Interval(s.opens - 24 * 60, s.closes - 24 * 60)
    return next((s for s in b.hours_on(local.date()) or () if s.contains(minute)), None)


def _next_opening(b: Business, local: dt.datetime) -> str | None:
    """When the business next opens after ``local``: "we open again tomorrow, Tuesday, at 8 am"."""
    for ahead in range(8):
        date = local.date() + dt.timedelta(days=ahead)
        spans = b.hours_on(date)
        if spans is None:
            return None  # a day the data does not know comes first
        for i, s in enumerate(spans):
            if ahead or s.opens > _minute(local):
                label = date_label(date, local.date(), b)
                if ahead > 1 and not b.special(date):
                    label = f"on {WEEKDAYS[date.weekday()].capitalize()}"
                if not ahead:
                    return f"we open {'again ' if i else ''}today at {clock_text(s.opens)}"
                return f"we open again {label}, at {clock_text(s.opens)}"
    return None


def _now_text(b: Business, local: dt.datetime) -> tuple[bool, str] | None:
    """Open now (with until when), or closed (with when it opens next); None: not known."""
    opened = b.open_at(local)
    if opened is None:
        return None
    if not opened:
        again = _next_opening(b, local)
        return False, f"we're closed right now{'; ' + again if again else ''}."
    span = _current(b, local)
    assert span is not None
    later = [s for s in b.hours_on(local.date()) or () if s.opens >= span.closes] if span.opens >= 0 else []  # not after last night's
    return True, f"we're open now until {clock_text(span.closes)}" + (f", then again from {_ranges(later)}." if later else ".")


def _now(q: Question, asked: str) -> FactAnswer | None:
    now = _now_text(q.business, q.local)
    if now is None:
        return None
    opened, text = now
    return FactAnswer(f"{'Yes' if opened == (asked != 'closed') else 'No'}, {text}", Asked("open_now", "now"))


def _open_close_today(q: Question, kind: str) -> FactAnswer | None:
    """"What time do you close?" with no day: the opening we are in, else today's, else the next."""
    b, local = q.business, q.local
    now, spans = _now_text(b, local), b.hours_on(local.date())
    if now is None or spans is None:
        return None
    opened, text = now
    if not opened and not spans:
        again = _next_opening(b, local)
        return FactAnswer(f"We're closed today{'; ' + again if again else ''}.", Asked(kind, "now"))
    if opened or kind == "opens" or _minute(local) >= spans[-1].closes:
        return FactAnswer(_cap(text), Asked(kind, "now"))
    return FactAnswer(_one_day(kind, q, Day(local.weekday(), local.date(), "today"), spans), Asked(kind, local.date().isoformat()))


def _gaps(spans: tuple[Interval, ...], lunch: bool) -> tuple[Interval, ...]:
    gaps = tuple(Interval(a.closes, b.opens) for a, b in zip(spans, spans[1:], strict=False))
    return tuple(g for g in gaps if g.opens < _LUNCH[1] and g.closes > _LUNCH[0]) if lunch else gaps


def breaks(q: Question) -> FactAnswer | None:
    """A break in the day ("do you close for lunch", "are you open at lunchtime", "any breaks on Saturday")."""
    b, lunch = q.business, bool(re.search(r"\blunch", q.text))
    if not lunch and any(same_word("break", w) for s in b.services for n in s.names() for w in content(n)):
        return None  # "do you do breaks": a garage's brakes, as Whisper writes them
    days = list(q.when.days) or [Day(i) for i in range(7) if b.weekly(WEEKDAYS[i])]
    spans = [_spans(b, d) for d in days]
    if not days or not all(s is not None for s in spans):
        return None
    opened = [(d, s) for d, s in zip(days, spans, strict=True) if s]
    subject = ",".join(d.key for d in q.when.days)
    if not opened:
        return hours_of("hours", q)
    gaps = [_gaps(s, lunch) for _, s in opened]
    # open through lunch means open all of it, not closing at noon without a break
    through = all(any(s.opens <= _LUNCH[0] and s.closes >= _LUNCH[1] for s in spans) for _, spans in opened)
    asked_open = lunch and bool(re.search(r"\bopen\b", q.text))
    where = f" {days[0].label}" if len(q.when.days) == 1 else ""
    if len(set(gaps)) == 1 and len(opened) == len(days):
        if gaps[0]:
            return FactAnswer(f"{'No' if asked_open else 'Yes'}, we close from {_ranges(gaps[0])}{where}.", Asked("breaks", subject))
        if not asked_open:
            text = "we don't close for lunch" if lunch else "we're open straight through, with no break"
            return FactAnswer(f"No, {text}{where}.", Asked("breaks", subject))
        if through:
            return FactAnswer(f"Yes, we're open through lunch{where}.", Asked("breaks", subject))
    values = [(True, g) if g else (False, s) for g, (_, s) in zip(gaps, opened, strict=True)]
    parts = [f"{names}, we close from {_ranges(v)}" if has_gap else f"{names}, we're open from {_ranges(v)}"
             for names, (has_gap, v) in _groups([d for d, _ in opened], values)]
    return FactAnswer(_cap("; ".join(parts)) + ".", Asked("breaks", subject))
