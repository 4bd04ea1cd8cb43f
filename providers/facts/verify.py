"""Every sentence the LLM says about the business is checked against its facts before it is
spoken: a day, time, price, phone number, name or yes/no about opening that contradicts the data
is never said; the sentence is replaced by the right fact, or by the profile's "I don't know" line.
``FactGuard`` is one call's: it answers from the data first (rules.py) and remembers what the last
question asked, for the follow-up that leans on it.

A claim is held to the data (``Business``: the profile's ``business`` table and what its free-text
``facts`` state) and to the words of the profile's own texts (facts, FAQ answers, notes): a time,
price or number the operator wrote anywhere may be said; one written nowhere may not (a small
model invents "9 am to 5 pm" for a business it knows nothing of)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass

from providers.facts.echo import echo_check, fact_sentences
from providers.facts.question import read_when
from providers.facts.rules import Asked, FactAnswer, answer
from providers.facts.schema import WEEKDAYS, Business, parse_range
from providers.facts.words import content, normalise, same_word

log = logging.getLogger(__name__)

_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?\s?m\b\.?|\b(\d{1,2}):(\d{2})\b|\b(noon|midday|midnight)\b", re.I)
_MONEY = re.compile(r"([$€£])\s?(\d+(?:,\d{3})*(?:\.\d{1,2})?)|\b(\d+(?:\.\d{1,2})?)\s*(dollars?|euros?|pounds?|bucks)\b", re.I)
_PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d ().-]{5,}\d(?!\w)")
_TITLED = re.compile(r"\b(?:Dr|Doctor|Mr|Mrs|Ms|Miss|Prof|Professor)\.?\s+([A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?)")
# Short forms only where they are not words of their own ("sat", "sun").
_DAY_WORDS = {d: d for d in WEEKDAYS} | {d + "s": d for d in WEEKDAYS} | {d[:3]: d for d in WEEKDAYS[:5]} | {"tues": "tuesday", "thurs": "thursday"}
_DAY_RANGE = re.compile(r"\b([a-z]+?)s?\s*(?:to|through|thru|-|–)\s*([a-z]+?)s?\b", re.I)
_EVERY_DAY = re.compile(r"\b(every day|daily|seven days a week|7 days a week|all week)\b", re.I)
_WEEKEND = re.compile(r"\bweekends?\b", re.I)
_WEEKDAYS = re.compile(r"\bweekdays?\b|\bmonday (?:to|through|thru|-) friday\b", re.I)
_CLOSED = re.compile(r"\b(closed|not open|aren't open|are not open|shut)\b", re.I)
_OPEN = re.compile(r"\b(open|opens|opening hours|hours are)\b", re.I)
_HOUR_ALONE = re.compile(r"\b(?:until|till|til|at|from|by)\s+(\d{1,2})(?::(\d{2}))?(?:\s*o'?clock)?\b(?!\s*(?:[ap]\.?\s?m\b|%|dollars|euros|pounds|minutes|mins|hours|people|miles|years|percent))", re.I)
_STREET = re.compile(r"\b(\d{1,5})\s+((?:[A-Z][a-z]+\s+){1,3})(?:Street|St|Avenue|Ave|Road|Rd|Lane|Ln|Boulevard|Blvd|Drive|Way|Place|Square|Court|Parkway)\b\.?")
_YES = re.compile(r"^\W*(yes|yeah|yep|sure|of course|absolutely|certainly|definitely|we are|we're|you can|you're welcome to)\b", re.I)
_NO = re.compile(r"^\W*(no|nope|unfortunately|sorry|i'm sorry|i am sorry|we're not|we are not|we aren't)\b|\b(not|n't|closed)\b", re.I)
_VISIT = re.compile(r"\b(open|come|coming|visit|stop by|drop by|drop in|pop in|walk in|book|appointment|available|working|in on)\b", re.I)
_NOW = re.compile(r"\b(now|right now|at the moment|currently|still open|this minute)\b", re.I)
_PEOPLE_Q = re.compile(r"\b(who|whose|name|names|dentists?|doctors?|staff|owner|manager|hygienists?|mechanics?|chef|works? there|employees?)\b", re.I)
_NOT_NAMES = {*(d.capitalize() for d in WEEKDAYS), "January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December", "I", "I'm", "I'll", "I'd", "OK", "Okay", "Christmas", "Easter", "Thanksgiving", "New", "Year"}
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
          "eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NUMBER_WORDS = re.compile(rf"\b({'|'.join(_TENS)})(?:[- ]({'|'.join(_UNITS[1:10])}))?\b|\b({'|'.join(_UNITS)})\b", re.I)
_YES_NO_Q = re.compile(r"^\W*(?:(?:um|uh|hi|hello|yes|so|and|oh|hey)\W+)*(do|does|can|could|is|are|will|would|have)\s+(you|ya|u|y'all|i|we|they|there)\b", re.I)
# Words of a yes-no question that say nothing of what is asked about.
_GENERIC = set("do does can could is are will would have has you ya u i we they there offer offers provide sell sells take takes "
               "accept accepts get make need want bring come book any some kind sort also guy guys please actually maybe "
               "still ever really here place business".split())
# The instructions said back ("You do not know and offer to put the caller through..."): never spoken.
_LEAK = re.compile(r"offer to put the caller|matching fact|word for word|facts about the business|you do not know and offer", re.I)
_HOLIDAY = re.compile(r"\b(easter|holiday|holidays|christmas|xmas|thanksgiving|new year'?s?|boxing day|good friday|whitsun|memorial day|labou?r day|independence day)\b", re.I)
_MONTHS = "january february march april may june july august september october november december".split()
_DATE = re.compile(rf"\b({'|'.join(_MONTHS)})\s+(\d{{1,2}})(?:st|nd|rd|th)?\b|\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({'|'.join(_MONTHS)})\b", re.I)
_NEGATION = re.compile(r"\b(no|not|never|don't|doesn't|cannot|can't|isn't|aren't|won't)\b|n't\b", re.I)
_BUSINESS_TOPIC = re.compile(
    r"\b(hours?|open|opens|closed?|closes|address|located|location|directions|parking|price|prices|cost|costs|charge|"
    r"fee|fees|phone|number|call us|appointment|staff|owner|manager|doctor|dentist)\b",
    re.I,
)


@dataclass(frozen=True)
class Claim:
    kind: str  # time, open_day, closed_day, every_day, price, phone, name
    value: str


class FactGuard:
    """One call's facts: answers from the data, and checks of the LLM's sentences."""

    def __init__(self, business: Business, *, facts_text: str = "", unknown: str) -> None:
        self.business = business
        self.facts_text = facts_text  # the profile's free text (the echo check matches it)
        self.unknown = unknown  # the profile's "I don't know" line
        self.previous: Asked | None = None  # what the last question asked (for "and on Saturday?")
        self._written = " ".join([facts_text, *(f.answer for f in business.faq), *(p.note for p in business.people),
                                  *(s.note + " " + s.price_note for s in business.services), business.directions,
                                  *(d.note for d in business.special_days)])
        self._written_times = _written_times(self._written)
        self._times = business.all_times() | self._written_times
        self._prices = business.prices() | _prices_in(_digits(self._written))
        self._digits = business.phone_digits() | {re.sub(r"\D", "", m) for m in _PHONE.findall(self._written)}
        self._names = " ".join([business.name, *(p.name for p in business.people), self._written]).lower()
        self._empty = business.is_empty() and not facts_text.strip()
        self._name_words = set(content(business.name))
        # Every word the profile has: a "yes, we do" must be about something among them.
        self._vocabulary = set(content(" ".join([
            self._written, business.name, business.address, *(p.name + " " + p.role for p in business.people),
            *(" ".join(sv.names()) for sv in business.services), *(" ".join(f.questions) for f in business.faq), *business.phones,
        ])))

    def answer(self, question: str, now: dt.datetime, *, remember: bool = True) -> FactAnswer | None:
        """The answer from the data, if it holds one (no LLM needed); ``remember``: the question is
        the call's last (not a look ahead at words the caller may go on from)."""
        found = answer(question, self.business, now, self.previous)
        if remember:
            self.previous = found.asked if found is not None else None
        return found

    def check(self, sentence: str, question: str, now: dt.datetime, *, first: bool = True) -> str | None:
        """None if ``sentence`` (the LLM's, answering ``question``) may be spoken; else what to say
        instead. ``first``: the answer's first sentence (an echo of the question is checked too)."""
        if _LEAK.search(sentence):
            return self._instead(Claim("leak", ""), question, now)
        for claim in [*claims(sentence, question), *self._answers(sentence, question, now)]:
            if not self._holds(claim, sentence, question, now):
                # Worth a line: the operator sees where the LLM was overruled, and why.
                log.info("facts check: not said %r (%s %s against the data)", sentence, claim.kind, claim.value)
                return self._instead(claim, question, now)
        if self._empty:
            # No facts at all: nothing about the business may be stated, only that it is not known.
            return self.unknown if _BUSINESS_TOPIC.search(question) and _BUSINESS_TOPIC.search(sentence) and not _honest(sentence) else None
        if first and self.facts_text.strip():
            return echo_check(sentence, question, self.facts_text, self.unknown)
        return None

    def _answers(self, sentence: str, question: str, now: dt.datetime) -> list[Claim]:
        """What a yes or no to the question claims: opening on the day it names (a date or a
        holiday as the rules read it), or that the business has what it asks about."""
        said_yes = bool(_YES.search(sentence)) and not _NO.search(sentence)
        said_no = bool(_NO.search(sentence)) and not _YES.search(sentence)
        out: list[Claim] = []
        if (said_yes or said_no or _OPEN.search(sentence) or _CLOSED.search(sentence)) and _VISIT.search(question):
            when = read_when(normalise(question), self.business.local(now).date(), self.business)
            if when is None or (_HOLIDAY.search(question) and not any(d.date and self.business.special(d.date) for d in when.days)):
                # a holiday the data gives no hours for: its weekday's hours may not hold on it
                out.append(Claim("unknown_day", question))  # "Easter Monday": a day the data cannot pin down
            elif when.days and (said_yes or said_no) and not (when.minutes or when.part):
                for day in when.days:
                    key = day.date.isoformat() if day.date else WEEKDAYS[day.weekday]
                    out.append(Claim("open_date" if said_yes else "closed_date", key))
        if (said_yes or said_no) and _YES_NO_Q.search(question) and not (_VISIT.search(question) or _CLOSED.search(question)):
            # The business's own name is in every question about it ("do you do dental implants?")
            asked = [w for w in content(question) if w not in _GENERIC and not w.isdigit() and w not in _DAY_WORDS and w not in self._name_words]
            known = [w for w in asked if any(same_word(w, k) for k in self._vocabulary)]
            if asked and 2 * len(known) < len(asked):
                # "Do you do sedation?" "Yes!" (or "No."), and the profile has no word of sedation
                out.append(Claim("has" if said_yes else "denies", " ".join(asked)))
            elif said_no:
                # "Do you see children?" "No": a no about something the profile speaks of must be its
                # own no (a sentence of the facts with a negation in it).
                told = [t for t in fact_sentences(self._written) if any(same_word(w, k) for w in asked for k in content(t))]
                if told and not any(_NEGATION.search(t) for t in told):
                    out.append(Claim("denies", " ".join(asked)))
        return out

    # ---- one claim against the data
    def _holds(self, claim: Claim, sentence: str, question: str, now: dt.datetime) -> bool:
        b = self.business
        if claim.kind == "time":
            minute = int(claim.value)
            days = _days(sentence, now, b) or _days(question, now, b)
            if days:
                known = [b.hours_on(d) for d in days]
                if all(spans is not None for spans in known):
                    # Said of a day whose hours are known: one of that day's own opening or closing times
                    # (or a time the operator's texts give, like a kitchen's last order).
                    edges = {e % (24 * 60) for spans in known if spans for s in spans for e in (s.opens, s.closes)}
                    return minute in edges or minute in self._written_times
            return minute in self._times
        if claim.kind in ("open_day", "closed_day"):
            date = _date_of(claim.value, now, b)
            spans = b.hours_on(date)
            if spans is None:
                return not self._only_written_claims()
            return bool(spans) == (claim.kind == "open_day")
        if claim.kind == "hour":
            # "until 6": 6 am or 6 pm, whichever the data bears out
            m = int(claim.value)
            return any(self._holds(Claim("time", str(x)), sentence, question, now) for x in (m, m + 12 * 60) if x < 24 * 60)
        if claim.kind in ("open_now", "closed_now"):
            is_open = b.open_at(now)
            return is_open is None or is_open == (claim.kind == "open_now")
        if claim.kind == "address":
            number, street = claim.value.split(" ", 1)
            text = f"{b.address} {self._written}".lower()
            return re.search(rf"\b{number}\b", text) is not None and street.lower().split()[0] in text
        if claim.kind in ("open_date", "closed_date"):
            spans = b.weekly(claim.value) if claim.value in WEEKDAYS else b.hours_on(dt.date.fromisoformat(claim.value))
            return spans is not None and bool(spans) == (claim.kind == "open_date")
        if claim.kind == "date":
            month, day = claim.value.split()
            dates = {(d.date.month, d.date.day) for d in b.special_days}
            return (_MONTHS.index(month) + 1, int(day)) in dates or any(
                (m.group(1) or m.group(4) or "").lower() == month and int(m.group(2) or m.group(3)) == int(day) for m in _DATE.finditer(self._written))
        if claim.kind in ("unknown_day", "has", "bad_time", "denies", "leak"):
            return False
        if claim.kind == "every_day":
            week = [b.weekly(d) for d in WEEKDAYS]
            return all(w for w in week) if all(w is not None for w in week) else not self._only_written_claims()
        if claim.kind == "price":
            named = [sv.price for sv in b.services if sv.price is not None and any(_says(sentence, n) for n in sv.names())]
            if len(named) == 1:
                return float(claim.value) == named[0]  # "a cleaning is $65": the check-up's price
            return float(claim.value) in self._prices
        if claim.kind == "phone":
            return claim.value in self._digits or any(claim.value in d or d in claim.value for d in self._digits if len(d) >= 7)
        if claim.kind == "name":
            return all(part.lower() in self._names for part in claim.value.split())
        return True

    def _only_written_claims(self) -> bool:
        # With no hours as data, a day's opening is held to the free text only if it states none
        # (an opening claim cannot be read out of words the reader did not understand).
        return not self.business.hours and not self.facts_text.strip()

    def _instead(self, claim: Claim, question: str, now: dt.datetime) -> str:
        """The right fact for what the wrong claim was about, else the honest line."""
        right = answer(question, self.business, now, self.previous)
        if right is None and claim.kind in ("open_day", "closed_day"):
            right = answer(f"Are you open on {claim.value}?", self.business, now, None)
        if right is None and claim.kind == "time":
            right = answer("What are your opening hours?", self.business, now, None)
        return right.text if right is not None else self.unknown


def _digits(text: str) -> str:
    """Number words as digits ("nine thirty a.m." -> "9:30 a.m.", "ninety dollars" -> "90 dollars"):
    a model that writes its numbers out is held to the same data."""

    def number(m: re.Match[str]) -> str:
        if m.group(3):
            return str(_UNITS.index(m.group(3).lower()))
        return str(10 * (_TENS.index(m.group(1).lower()) + 2) + (_UNITS.index(m.group(2).lower()) if m.group(2) else 0))

    t = _NUMBER_WORDS.sub(number, text)
    t = re.sub(r"\b(\d{1,2}) (15|30|45)\b(?=\s*(?:[ap]\.?\s?m\b|o'?clock))", r"\1:\2", t, flags=re.I)
    return re.sub(r"\b(\d{1,2}) o'?clock\b", r"\1:00", t, flags=re.I)


def claims(sentence: str, question: str = "") -> list[Claim]:
    """What ``sentence`` (answering ``question``) states that the data can refute."""
    sentence = _digits(sentence)
    out: list[Claim] = []
    for at in sorted(_times_in(sentence)):
        out.append(Claim("time", str(at)))
    for m in _TIME.finditer(sentence):
        hour, minute = m.group(1) or m.group(4), m.group(2) or m.group(5) or "0"
        if hour and (int(minute) >= 60 or int(hour) > (12 if m.group(1) else 24)):
            out.append(Claim("bad_time", m.group(0)))  # "15 pm": no time at all
    for m in _DATE.finditer(sentence):
        out.append(Claim("date", f"{(m.group(1) or m.group(4)).lower()} {m.group(2) or m.group(3)}"))
    for amount in sorted(_prices_in(sentence)):
        out.append(Claim("price", f"{amount:g}"))
    for m in _PHONE.finditer(sentence):
        digits = re.sub(r"\D", "", m.group(0))
        if len(digits) >= 7:
            out.append(Claim("phone", digits))
    for m in _TITLED.finditer(sentence):
        out.append(Claim("name", m.group(1)))
    if _PEOPLE_Q.search(question):
        # Asked who: every name said is one the facts give (not only the titled ones).
        words = re.findall(r"(?<![.!?]\s)(?<!^)\b([A-Z][a-z'-]+)", sentence)
        out.extend(Claim("name", w) for w in words if w not in _NOT_NAMES and not w.endswith("'s"))
    for m in _STREET.finditer(sentence):
        out.append(Claim("address", f"{m.group(1)} {m.group(2).strip()}"))
    if _OPEN.search(sentence) or _CLOSED.search(sentence) or re.search(r"\bclos(e|es|ing)\b", sentence, re.I):
        for m in _HOUR_ALONE.finditer(sentence):
            out.append(Claim("hour", f"{int(m.group(1)) * 60 + int(m.group(2) or 0)}"))
    # Opening claims clause by clause ("open Monday to Friday, closed on Sunday"); a clause that
    # names days without saying open or closed keeps the one before's ("and Saturday 9 to 1").
    polarity = ""
    for clause in re.split(r"[,;]|\bbut\b|\band\b(?!\s+(?:public|bank)\b)", sentence):
        closed, opened = bool(_CLOSED.search(clause)), bool(_OPEN.search(clause))
        if closed != opened:
            polarity = "closed_day" if closed else "open_day"
        if polarity:
            out.extend(Claim(polarity, day) for day in _named_days(clause))
        if opened and not closed and _EVERY_DAY.search(clause):
            out.append(Claim("every_day", ""))
    if question and not any(c.kind in ("open_day", "closed_day") for c in out) and _VISIT.search(question):
        # "Can I come in on Sunday?" "Sure!": the yes or no is about the question's day, or now.
        said = "yes" if _YES.search(sentence) and not _NO.search(sentence) else "no" if _NO.search(sentence) and not _YES.search(sentence) else ""
        if said:
            days = _named_days(question)
            out.extend(Claim("open_day" if said == "yes" else "closed_day", d) for d in days)
            if not days and _NOW.search(question):
                out.append(Claim("open_now" if said == "yes" else "closed_now", ""))
    return out


def _times_in(text: str) -> set[int]:
    out: set[int] = set()
    for m in _TIME.finditer(text):
        if m.group(6):
            word = m.group(6).lower()
            out.add(0 if word == "midnight" else 12 * 60)
            continue
        try:
            if m.group(1):
                span = parse_range(f"{m.group(1)}:{m.group(2) or '00'} {m.group(3)}m-{m.group(1)}:{m.group(2) or '00'} {m.group(3)}m")
            else:
                span = parse_range(f"{m.group(4)}:{m.group(5)}-{m.group(4)}:{m.group(5)}")
        except ValueError:
            continue
        out.add(span.opens % (24 * 60))
    # "9 to 5", "8-6" beside an opening word: the bare numbers are times too
    for m in re.finditer(r"\b(\d{1,2})(?::(\d{2}))?\s*(?:-|–|to|until|till)\s*(\d{1,2})(?::(\d{2}))?\b(?!\s*(?:[ap]\.?\s?m|%|dollars|euros|minutes|mins|hours|people|miles|years))", text, re.I):
        if _OPEN.search(text) or _CLOSED.search(text):
            try:
                span = parse_range(m.group(0))
            except ValueError:
                continue
            out |= {span.opens % (24 * 60), span.closes % (24 * 60)}
    return out


def _written_times(text: str) -> set[int]:
    """The times of day the operator's texts give, in digits or words, with or without am/pm."""
    t = _digits(text)
    hours = {int(m.group(1)) * 60 + int(m.group(2) or 0) for m in _HOUR_ALONE.finditer(t)}
    return _times_in(t) | hours | {h + 12 * 60 for h in hours if h < 12 * 60}


def _prices_in(text: str) -> set[float]:
    out: set[float] = set()
    for m in _MONEY.finditer(text):
        raw = m.group(2) or m.group(3)
        out.add(float(raw.replace(",", "")))
    return out


def _named_days(text: str) -> list[str]:
    lower = text.lower()
    days: list[str] = []
    for m in _DAY_RANGE.finditer(lower):
        a, b = _DAY_WORDS.get(m.group(1)), _DAY_WORDS.get(m.group(2))
        if a and b:
            i, j = WEEKDAYS.index(a), WEEKDAYS.index(b)
            days += [WEEKDAYS[(i + k) % 7] for k in range((j - i) % 7 + 1)]
    days += [_DAY_WORDS[w] for w in re.findall(r"[a-z]+", lower) if w in _DAY_WORDS]
    if _WEEKEND.search(text):
        days += ["saturday", "sunday"]
    if _WEEKDAYS.search(text):
        days += list(WEEKDAYS[:5])
    if re.search(r"\btoday\b|\btonight\b", text, re.I):
        days.append("today")
    if re.search(r"\btomorrow\b", text, re.I):
        days.append("tomorrow")
    return list(dict.fromkeys(days))


def _date_of(day: str, now: dt.datetime, b: Business) -> dt.date:
    today = b.local(now).date()
    if day == "today":
        return today
    if day == "tomorrow":
        return today + dt.timedelta(days=1)
    ahead = (WEEKDAYS.index(day) - today.weekday()) % 7
    return today + dt.timedelta(days=ahead)


def _days(text: str, now: dt.datetime, b: Business) -> list[dt.date]:
    return [_date_of(d, now, b) for d in _named_days(text)]


def _says(sentence: str, name: str) -> bool:
    return re.search(rf"\b{re.escape(name.lower())}(?:s|es)?\b", sentence.lower()) is not None


def _honest(sentence: str) -> bool:
    return bool(re.search(r"\b(don't|do not|can't|cannot) (know|say|answer|tell)|\bnot sure\b|\bput you through\b", sentence, re.I))
