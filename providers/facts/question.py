"""A caller's question as the rules read it: its words, and the days and times it is about ("on
Saturday", "sundays", "tomorrow", "this weekend", "on the 25th", "Christmas", "now", "at 7 pm"),
resolved against today's date in the business's zone. A day that cannot be resolved for certain
(a movable holiday the data does not date, a fixed one it says nothing about, "yesterday") makes
the whole question unknown. Also the records an answer is made of."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from providers.facts.schema import WEEKDAYS, Business
from providers.facts.words import ORDINALS, STOP, content, normalise, stem

_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october", "november", "december"]
_MONTH_ABBR = {m[:3]: i + 1 for i, m in enumerate(_MONTHS)} | {"sept": 9}
_MONTH_NO = {m: i + 1 for i, m in enumerate(_MONTHS)} | _MONTH_ABBR
_MONTH = "(" + "|".join(sorted(_MONTH_NO, key=len, reverse=True)) + ")"
_NTH = r"(\d{1,2})(?:st|nd|rd|th)?"
_ORD = "(" + "|".join(sorted(ORDINALS, key=len, reverse=True)) + ")"
_DAY_NAMES = {d: i for i, d in enumerate(WEEKDAYS)} | {"tues": 1, "weds": 2, "thur": 3, "thurs": 3}
_DAY_NAME = "(" + "|".join(_DAY_NAMES) + ")"
_WEEKDAY = re.compile(rf"\b(?:(this|next|coming) )?{_DAY_NAME}(s)?\b")
_DAY_RANGE = re.compile(rf"\b(?:from )?{_DAY_NAME}s? (?:to|through|thru) {_DAY_NAME}s?\b")
# Dates with a fixed day every year, which a business may well keep other hours on: asked about one
# the data does not list, the answer is not known (its weekday's hours may not hold).
_HOLIDAYS = {r"christmas eve": (12, 24), r"(?:christmas|xmas)": (12, 25), r"boxing": (12, 26), r"new year'?s? eve": (12, 31),
             r"new year'?s?": (1, 1), r"independence": (7, 4), r"(?:the )?(?:fourth|4th) of july|july (?:the )?(?:fourth|4th)": (7, 4), r"halloween": (10, 31),
             r"valentine'?s?": (2, 14), r"veterans": (11, 11)}
# Of those, the ones nearly every business keeps other hours on: a date asked as a number ("the
# 25th", "today") falling on one the data does not list is not known either.
_CLOSING_HOLIDAYS = {(12, 25), (1, 1)}
_MOVABLE = re.compile(r"\b(thanksgiving|easter|memorial day|labou?r day|good friday|holidays?|bank holiday|vacation|summer|winter|"
                      r"yesterday|last week|next week|next month)\b")
_NOW = re.compile(r"\b(right now|now|currently|at the moment|at this hour|at this time|still|yet|anymore)\b")
_TIME = re.compile(r"\b(?:(?:at|after|around|about|past|until) (\d{1,2})(?::(\d{2}))?(?: (am|pm|oclock))?|(\d{1,2})(?::(\d{2}))? (am|pm))\b")
_HALF_HINT = re.compile(r"\b(in the (morning|afternoon|evening)|at night|tonight|this (morning|afternoon|evening))\b")
# A part of the day asked about ("on Saturday morning", "tonight"): the hours it spans.
# (Their core: a clinic open 9 to 1 is open on Saturday morning.)
_PARTS = {"morning": (9 * 60, 12 * 60), "afternoon": (13 * 60, 17 * 60), "evening": (18 * 60, 21 * 60), "night": (18 * 60, 21 * 60)}
_PART = re.compile(r"\b(?:in the |at )?(morning|afternoon|evening|night)s?\b|\bto(night)\b")


@dataclass(frozen=True)
class Asked:
    """What a question asked about, kept for the follow-up that leans on it ("and on Saturday?",
    "what about a filling?")."""

    topic: str  # hours, open, closed, opens, closes, open_now, breaks, address, directions, phone, email, website, people, price, faq
    subject: str = ""  # the day or date, the service, the role, the phone's purpose


@dataclass(frozen=True)
class FactAnswer:
    text: str  # what to say (digits and symbols: providers/local/spoken.py reads them aloud)
    asked: Asked


@dataclass(frozen=True)
class Day:
    """A day asked about: a date (today, the 25th, this Saturday when it has special hours), or a
    weekday every week ("on Sundays")."""

    weekday: int  # 0: Monday
    date: dt.date | None = None
    label: str = ""  # how an answer names it: "today", "tomorrow, Tuesday", "on Sundays", "on Christmas Day, Friday, December 25th"

    @property
    def key(self) -> str:
        return self.date.isoformat() if self.date else WEEKDAYS[self.weekday]

    @property
    def name(self) -> str:
        """The day in a list of days: "Monday", "tomorrow, Tuesday", "Christmas Day, Friday, December 25th"."""
        return self.label.removeprefix("on ") if self.date else WEEKDAYS[self.weekday].capitalize()


@dataclass(frozen=True)
class When:
    days: tuple[Day, ...] = ()  # in the order of the week; empty: no day said
    now: bool = False  # "now", "still", "at the moment"
    minutes: tuple[int, ...] = ()  # a time of day asked about ("at 8": 8 am and 8 pm, unless the question says which)
    part: tuple[int, int] | None = None  # a part of the day asked about ("morning": 6 am to noon)
    rest: str = ""  # the question without the words read here

    @property
    def timed(self) -> bool:
        """A day, a time or a part of the day was asked about (which only hours and notes answer)."""
        return bool(self.days or self.minutes or self.part)


def nth(day: int) -> str:
    return f"{day}{'th' if 10 <= day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def date_label(date: dt.date, today: dt.date, business: Business) -> str:
    special = business.special(date)
    # A note that names the day ("Christmas Day") names it in the answer; "staff training" does not.
    named = special is not None and special.note and all(w[0].isupper() or w in ("of", "the", "and") for w in special.note.split())
    note = f"{special.note}, " if special is not None and named else ""
    if date == today:
        return f"today, {note[:-2]}" if note else "today"
    if date == today + dt.timedelta(days=1):
        return f"tomorrow, {note}{WEEKDAYS[date.weekday()].capitalize()}"
    return f"on {note}{WEEKDAYS[date.weekday()].capitalize()}, {_MONTHS[date.month - 1].capitalize()} {nth(date.day)}"


def _dated(date: dt.date, today: dt.date, business: Business) -> Day:
    return Day(date.weekday(), date, date_label(date, today, business))


def _weekly(weekday: int, plural: bool) -> Day:
    return Day(weekday, None, f"on {WEEKDAYS[weekday].capitalize()}{'s' if plural else ''}")


def days_of(subject: str, today: dt.date, business: Business) -> tuple[Day, ...]:
    """The days an earlier answer was about, from its ``Asked.subject`` ("saturday,2026-12-24")."""
    days = []
    for key in subject.split(","):
        if key in WEEKDAYS:
            days.append(_weekly(WEEKDAYS.index(key), False))
        elif re.fullmatch(r"\d{4}-\d\d-\d\d", key):
            days.append(_dated(dt.date.fromisoformat(key), today, business))
    return tuple(days)


def _next_weekday(weekday: int, today: dt.date, business: Business, *, plural: bool, skip_week: bool = False) -> Day:
    """A weekday said once ("on Friday") is its next date when that date has other hours than the
    week's (so "are you open Friday" before Christmas gets Christmas's), else the weekday."""
    date = today + dt.timedelta(days=(weekday - today.weekday()) % 7 + (7 if skip_week and weekday == today.weekday() else 0))
    if not plural and business.special(date) is not None:
        return _dated(date, today, business)
    return _weekly(weekday, plural)


def _year_date(month: int, day: int, today: dt.date) -> dt.date | None:
    for year in (today.year, today.year + 1):
        try:
            date = dt.date(year, month, day)
        except ValueError:
            return None
        if date >= today:
            return date
    return None


def _month_date(day: int, today: dt.date) -> dt.date | None:
    """"On the 25th": this month's, or next month's once it is past."""
    month, year = today.month, today.year
    if day < today.day:
        month, year = (1, year + 1) if month == 12 else (month + 1, year)
    try:
        return dt.date(year, month, day)
    except ValueError:
        return None


class _Reader:
    def __init__(self, text: str, today: dt.date, business: Business) -> None:
        self.text, self.today, self.business = text, today, business
        self.dates: list[dt.date] = []
        self.days: list[Day] = []
        self.unknown = False

    def take(self, pattern: str | re.Pattern[str]) -> list[re.Match[str]]:
        found = list(re.finditer(pattern, self.text))
        self.text = re.sub(pattern, " ", self.text)
        return found

    def add_date(self, date: dt.date | None, named_holiday: bool = False) -> None:
        if date is None:
            self.unknown = True
        elif named_holiday and self.business.special(date) is None:
            self.unknown = True  # the data does not say what happens on that holiday
        elif (date.month, date.day) in _CLOSING_HOLIDAYS and self.business.special(date) is None:
            self.unknown = True
        else:
            self.dates.append(date)


def read_when(question: str, today: dt.date, business: Business) -> When | None:
    """What ``question`` (normalised) says about days and times; None: a day it names is not
    known for certain."""
    hint = _HALF_HINT.findall(question)
    evening = None if not hint else not any("morning" in h[0] for h in hint)
    question = re.sub(r"\bgood (morning|afternoon|evening)\b", " ", question)  # a greeting
    parts = {m.group(1) or m.group(2) for m in _PART.finditer(question)}
    r = _Reader(question, today, business)
    # A special day by its note ("Christmas Eve" before "Christmas Day": the longer name first).
    notes = [([w for w in normalise(s.note).split() if w not in STOP | {"day"}], s.date) for s in business.special_days]
    for core, date in sorted(notes, key=lambda n: -len(n[0])):
        if core and r.take(r"\b" + " ".join(re.escape(w.removesuffix("'s")) + "(?:'?s)?" for w in core) + r"(?: day)?\b"):
            r.add_date(date)
    if r.take(_MOVABLE):
        return None  # a movable feast the data gives no date for
    for name, (h_month, h_day) in _HOLIDAYS.items():
        if r.take(rf"\b{name}(?: day)?\b"):
            r.add_date(_year_date(h_month, h_day, today), named_holiday=True)
    for m in r.take(rf"\b(?:the )?{_NTH} (?:of )?{_MONTH}\b|\b{_MONTH} (?:the )?{_NTH}\b"):
        month, number = (m.group(2), m.group(1)) if m.group(1) else (m.group(3), m.group(4))
        r.add_date(_year_date(_MONTH_NO[month], int(number), today))
    for m in r.take(rf"\b(?:the )?{_ORD}(?: of)? {_MONTH}\b|\b{_MONTH} (?:the )?{_ORD}\b"):
        month, word = (m.group(2), m.group(1)) if m.group(1) else (m.group(3), m.group(4))
        r.add_date(_year_date(_MONTH_NO[month], ORDINALS[word], today))
    for m in r.take(rf"\bthe (?:(\d{{1,2}})(?:st|nd|rd|th)|{_ORD})\b|\b(\d{{1,2}})(?:st|nd|rd|th)\b"):
        number = m.group(1) or m.group(3)
        r.add_date(_month_date(int(number) if number else ORDINALS[m.group(2)], today))
    if r.take(r"\bday after tomorrow\b"):
        r.add_date(today + dt.timedelta(days=2))
    if r.take(r"\b(today|tonight|this (morning|afternoon|evening))\b"):
        r.add_date(today)
    if r.take(r"\btomorrow( (morning|afternoon|evening|night))?\b"):
        r.add_date(today + dt.timedelta(days=1))
    if found := r.take(r"\b(?:(this|the|on|over) )?(?:the )?weekends?\b"):
        plural = not found[0].group(1) or found[0].group(0).endswith("s")
        r.days += [_next_weekday(d, today, business, plural=plural) for d in (5, 6)]
    if r.take(r"\b(weekdays|during the week)\b"):
        r.days += [_weekly(d, True) for d in range(5)]
    for m in r.take(_DAY_RANGE):  # "Tuesday through Thursday": every day of it
        first, last = _DAY_NAMES[m.group(1)], _DAY_NAMES[m.group(2)]
        r.days += [_weekly((first + i) % 7, True) for i in range((last - first) % 7 + 1)]
    if r.take(r"\b(every ?day|daily|(seven|7) days a week|all week)\b"):
        r.days += [_weekly(d, True) for d in range(7)]
    for m in r.take(_WEEKDAY):
        r.days.append(_next_weekday(_DAY_NAMES[m.group(2)], today, business, plural=bool(m.group(3)), skip_week=m.group(1) == "next"))
    if r.unknown:
        return None
    if r.dates and r.days:  # "Monday the 14th": one day, if the weekday is the date's
        if {d.weekday for d in r.days} - {d.weekday() for d in r.dates}:
            return None
        r.days = []
    days = [_dated(d, today, business) for d in dict.fromkeys(r.dates)] + r.days
    now = bool(r.take(_NOW))
    minutes = _minutes(r, evening)
    r.take(_PART)
    if len(parts) > 1:
        return None
    return When(tuple(days), now, minutes, part=_PARTS[parts.pop()] if parts else None, rest=" ".join(r.text.split()))


def _minutes(r: _Reader, evening: bool | None) -> tuple[int, ...]:
    """The times of day asked about; an hour without am or pm, both unless ``evening`` says which."""
    r.take(_HALF_HINT)
    out: list[int] = []
    for m in r.take(_TIME):
        hour, minute, half = int(m.group(1) or m.group(4)), int(m.group(2) or m.group(5) or 0), m.group(3) or m.group(6)
        if hour > 24 or minute >= 60:
            continue
        if half in ("am", "pm") and 1 <= hour <= 12:
            out.append((hour % 12 + (12 if half == "pm" else 0)) * 60 + minute)
        elif hour == 0 or hour >= 13 or hour == 12:
            out.append(hour % 24 * 60 + minute)
        elif evening is not None:
            out.append((hour + (12 if evening else 0)) * 60 + minute)
        else:
            out += [hour * 60 + minute, (hour + 12) * 60 + minute]
    return tuple(out)


# Words naming the business itself, which any topic understands ("is the clinic open").
_PLACE = frozenset(stem(w) for w in ("office", "clinic", "practice", "shop", "store", "place", "business"))


@dataclass(frozen=True)
class Question:
    text: str  # normalised
    when: When
    local: dt.datetime  # now, in the business's zone
    business: Business
    previous: Asked | None = None

    def rest(self, *understood: str) -> list[str]:
        """The meaningful words left once the days and times and the topic's words (regex
        alternatives) are taken out: what the rules did not understand."""
        t = self.when.rest
        for pattern in understood:
            t = re.sub(rf"\b(?:{pattern})\b", " ", t)
        own = {stem(w) for w in content(self.business.name)} | _PLACE
        return [w for w in t.split() if w not in STOP and stem(w) not in own]
