"""A dental practice's facts, asked about in a human voice over the real Asterisk 22, with the local
models (Whisper, llama.cpp, Piper): what the caller hears after each question, transcribed at the
caller's side by Whisper, states the right fact and no wrong one (issue 49: 0 wrong facts in
real-Asterisk calls). Once with the facts as data (``business``), once as free text only.

The engine's "now" is the wall clock: each expectation is computed from the data for the date the
question names, in the practice's time zone (a Friday can be Christmas Day)."""

from __future__ import annotations

import datetime as dt
import difflib
import re
from dataclasses import dataclass
from typing import Callable

import pytest

from engine.sessions import TranscriptAdded
from pbxsim.asterisk import RealCall
from pbxsim.script import Pause, SayText, Step, WaitAgent, WaitAgentDone
from providers.facts.schema import WEEKDAYS, Business
from providers.profile import AgentProfile
from tests import test_asterisk
from tests.conftest import running_engine
from tests.test_asterisk import _heard_between, _transcribe, drain, ended
from tests.test_facts_verify import DENTAL

pytestmark = pytest.mark.asterisk

whisper = test_asterisk.whisper  # the caller's ear: the same module-scoped Whisper as the other real-Asterisk tests

BUSINESS = DENTAL.business.model_dump(mode="json", exclude_defaults=True)  # the practice of tests/test_facts_verify.py
GREETING = "Hello, Harbor Dental, how can I help you?"
STRUCTURED = AgentProfile.model_validate({"greeting": GREETING, "business": BUSINESS})
# The same practice as a site writes it in a paragraph (the free text is read into the same structure).
FREE_TEXT = AgentProfile(greeting=GREETING, business={"timezone": "America/New_York"}, facts=(
    "Harbor Dental, 14 Harbour Street, Springfield. Open Monday 8 am to 12 pm and 1 pm to 6 pm, Tuesday to Thursday "
    "8 am to 6 pm, Friday 8 am to 4 pm, Saturday 9 am to 1 pm. Closed on Sunday. Closed on Christmas Day. "
    "Our dentists are Dr. Maria Lopez and Dr. James Chen. A cleaning costs 90 dollars and a check-up 65 dollars. "
    "Main phone 555 0100. For dental emergencies call 555 0199."))
# The data both profiles hold, that the expectations are computed from.
DATA = Business.model_validate(BUSINESS)


# ---- what the caller heard, as facts: times, numbers, digit runs, words

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
                                     "fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_HALF = {"am": "am", "pm": "pm", "a.m": "am", "p.m": "pm"}
_PUNCT = (",", ".", ";", "!", "?")


@dataclass(frozen=True)
class Said:
    """A time the caller heard: minutes after midnight, or an hour with no am/pm (``ambiguous``)."""

    minute: int
    ambiguous: bool = False

    def could_be(self, minute: int) -> bool:
        return minute % (24 * 60) in ({self.minute % 720, self.minute % 720 + 720} if self.ambiguous else {self.minute})


@dataclass(frozen=True)
class Heard:
    text: str  # Whisper's transcript
    words: tuple[str, ...]  # lower case; number words as digits; "p.m." and "p m" as "pm"
    times: tuple[Said, ...]
    numbers: tuple[int, ...]
    digit_runs: tuple[str, ...]  # numbers said one after another ("555, 0199" -> "5550199")

    @property
    def plain(self) -> str:
        return " ".join(self.words)

    def has(self, pattern: str) -> bool:
        return re.search(pattern, self.plain) is not None

    def clauses(self) -> list[str]:
        return [c.strip() for c in re.split(r"[,;.!?]| but | and | while ", self.plain) if c.strip()]


def heard(text: str) -> Heard:
    """Whisper's transcript read for facts, whichever way it wrote them: "9 a.m.", "nine am",
    "9:00 AM", "$90", "ninety dollars", "555-0199", "five five five, oh one nine nine"."""
    t = text.lower().replace("’", "'")
    t = re.sub(r"\b([ap])\.?\s?m\b\.?", r" \1m ", t)  # a.m. / a m / am
    t = re.sub(r"(?<=[a-z])-(?=[a-z])|(?<=\d)-(?=\d)", " ", t)  # five-five-five, ninety-nine, 555-0199
    t = re.sub(r"\$\s?(\d+(?:\.\d+)?)", r"\1 dollars", t)
    raw = re.findall(r"\d+:\d{2}|\d+(?:\.\d+)?|[a-z']+|[,;.!?]", t)
    # Number words to numbers: "ninety nine" -> 99, "five hundred fifty five" -> 555, "five five five" stays three.
    words: list[str] = []
    i = 0
    while i < len(raw):
        w = raw[i]
        if w == "double" and i + 1 < len(raw) and raw[i + 1] in _UNITS and _UNITS[raw[i + 1]] < 10:
            words += [str(_UNITS[raw[i + 1]])] * 2
            i += 2
            continue
        prev = next((x for x in reversed(words) if x not in _PUNCT), "")
        nxt = next((x for x in raw[i + 1:] if x not in _PUNCT), "")
        if w == "oh" and prev.isdigit() and (nxt in _UNITS or nxt.isdigit()):
            words.append("0")  # "five five five oh one": a zero between digits, not an exclamation
            i += 1
            continue
        if w in _TENS:
            n = _TENS[w]
            if i + 1 < len(raw) and raw[i + 1] in _UNITS and 0 < _UNITS[raw[i + 1]] < 10:
                n += _UNITS[raw[i + 1]]
                i += 1
            words.append(str(n))
        elif w in _UNITS:
            n = _UNITS[w]
            if i + 1 < len(raw) and raw[i + 1] == "hundred":
                n *= 100
                i += 1
                rest = raw[i + 1] if i + 1 < len(raw) else ""
                if rest == "and":
                    i += 1
                    rest = raw[i + 1] if i + 1 < len(raw) else ""
                if rest in _TENS or rest in _UNITS:
                    sub = _TENS.get(rest, _UNITS.get(rest, 0))
                    i += 1
                    if rest in _TENS and i + 1 < len(raw) and raw[i + 1] in _UNITS and 0 < _UNITS[raw[i + 1]] < 10:
                        sub += _UNITS[raw[i + 1]]
                        i += 1
                    n += sub
            words.append(str(n))
        elif w in ("noon", "midday"):
            words += ["12:00", "pm"]
        else:
            words.append(w)
        i += 1
    # Times: H, H:MM, "H MM" ("eight thirty"), then am/pm or "in the morning/afternoon/evening", or "o'clock".
    times: list[Said] = []
    for j, w in enumerate(words):
        nxt = words[j + 1] if j + 1 < len(words) else ""
        m = re.fullmatch(r"(\d{1,2})(?::?(\d{2}))?" if nxt in _HALF else r"(\d{1,2})(?::(\d{2}))?", w)  # Whisper's "1230pm" is 12:30 pm
        if not m or int(m.group(1)) > 24:
            continue
        h, mm, k = int(m.group(1)), int(m.group(2) or 0), j + 1
        if m.group(2) is None and k < len(words) and re.fullmatch(r"[1-5]\d", words[k]) and k + 1 < len(words) and words[k + 1] in _HALF:
            mm, k = int(words[k]), k + 1
        after = " ".join(words[k:k + 3])
        half = _HALF.get(words[k]) if k < len(words) else None
        if half is None and after.startswith("in the morning"):
            half = "am"
        elif half is None and re.match(r"in the (afternoon|evening)", after):
            half = "pm"
        before = words[j - 1] if j else ""
        if half is not None and 1 <= h <= 12:
            times.append(Said((h % 12 + (12 if half == "pm" else 0)) * 60 + mm))
        elif m.group(2) is not None and h > 12:
            times.append(Said(h * 60 + mm))  # 16:00
        elif after.startswith("o'clock") or before in ("at", "until", "till", "til", "from", "to") and 1 <= h <= 12 and m.group(2) is None:
            times.append(Said(h * 60 + mm, ambiguous=True))
        elif m.group(2) is not None:
            times.append(Said(h * 60 + mm, ambiguous=h <= 12))
    numbers = tuple(int(w.split(":")[0]) if ":" in w else int(float(w)) for w in words if re.fullmatch(r"\d+(?::\d{2}|\.\d+)?", w))
    runs: list[str] = []
    current = ""
    for w in words:
        if w.isdigit():
            current += w
        elif w not in _PUNCT[:3] and current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return Heard(text, tuple(words), tuple(times), numbers, tuple(runs))


# ---- the questions, and what the data says their answers are (for ``now``, in the practice's zone)

NEGATION = r"\b(not|no|n't|never|closed|aren't|isn't|don't|doesn't|unfortunately)\b|n't\b"
HONEST = r"(don't|do not|not sure|can't|cannot|unable to) (know|say|tell|answer|help|find|confirm)|no information|not have (that|any) information|" \
         r"put you through|connect you|transfer you|someone who|check with|not something i know"


@dataclass(frozen=True)
class Verdict:
    right: bool
    wrong: str  # the wrong fact the caller heard; empty: none


@dataclass(frozen=True)
class Question:
    ask: str
    expected: str  # the fact, in words, for the failure message
    judge: Callable[[Heard], Verdict]


def _next(day: str, now: dt.datetime) -> dt.date:
    today = DATA.local(now).date()
    return today + dt.timedelta(days=(WEEKDAYS.index(day) - today.weekday()) % 7)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def open_on_sunday(h: Heard) -> Verdict:
    assert DATA.weekly("sunday") == ()  # the question's answer is "closed" whatever today is
    # "Open" said of Sunday, of every day, or as the answer's first words ("we're open from 9").
    says_open = [c for i, c in enumerate(h.clauses()) if re.search(r"\bopen\b", c) and not re.search(NEGATION, c)
                 and (re.search(r"\b(sundays?|weekends?|every day|daily|7 days)\b", c) or (i == 0 and not re.search(r"day|weekend", c)))]
    wrong = "yes" if re.match(r"\W*(yes|yeah|sure)\b", h.plain) else ("open: " + says_open[0] if says_open else "")
    return Verdict(h.has(r"\bclosed\b|\bnot open\b|\b(aren't|are not|we're not|is not|isn't) open\b|\bno\b"), wrong)


def friday_closing(now: dt.datetime) -> Question:
    date = _next("friday", now)
    spans = DATA.hours_on(date)
    weekly = DATA.weekly("friday")
    assert spans is not None and weekly
    closes = weekly[-1].closes
    edges = {e for s in weekly for e in (s.opens, s.closes)}
    # The coming Friday may be a special day (Christmas): "closed" that day, or the usual Friday hours, are both right.
    special = DATA.special(date) is not None

    def judge(h: Heard) -> Verdict:
        other_days = [d for d in WEEKDAYS if d != "friday" and h.has(rf"\b{d}s?\b")]
        allowed = DATA.all_times() if other_days else edges  # a time said of Friday alone is one of Friday's
        stray = [t for t in h.times if not any(t.could_be(e) for e in allowed)]
        right = any(t.could_be(closes) for t in h.times) or (special and h.has(r"\bclosed\b"))
        if not other_days and not special and h.has(r"\bclosed\b") and not any(t.could_be(closes) for t in h.times):
            return Verdict(right, "closed on Friday")
        return Verdict(right, ", ".join(f"time {_hhmm(t.minute)}{' (no am/pm)' if t.ambiguous else ''}" for t in stray))

    return Question("When do you close on Friday?", f"closes at {_hhmm(closes)}" + (f" (or closed: {date} is a special day)" if special else ""), judge)


def open_now(now: dt.datetime) -> Question:
    # The question is asked a minute or so into the call: either state is right if the hours change
    # over the next few minutes (the lunch break begins, the practice closes).
    known = [DATA.open_at(now + dt.timedelta(minutes=m)) for m in range(0, 6)]
    assert None not in known
    states = {bool(k) for k in known}

    def judge(h: Heard) -> Verdict:
        first = h.clauses()[0] if h.clauses() else ""
        said = False if re.search(r"\b(no|closed|not open|aren't open|are not open)\b", first) else True if re.search(r"\b(yes|yeah|open)\b", first) else None
        stray = [t for t in h.times if not any(t.could_be(e) for e in DATA.all_times())]
        wrong = [*(["open" if said else "closed"] if said is not None and said not in states else []), *(f"time {_hhmm(t.minute)}" for t in stray)]
        return Verdict(said in states, ", ".join(wrong))

    return Question("Are you open right now?", " or ".join("open" if s else "closed" for s in sorted(states)) + f" at {DATA.local(now):%A %H:%M}", judge)


def address(h: Heard) -> Verdict:
    number, street = re.match(r"(\d+) (\w+)", DATA.address).groups()  # type: ignore[union-attr]
    stray = [n for n in h.numbers if n != int(number)]
    return Verdict(int(number) in h.numbers and max((_ratio(street, w) for w in h.words), default=0.0) >= 0.75,
                   ", ".join(f"number {n}" for n in stray))


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, _letters(a), _letters(b)).ratio()


def _name_heard(text: str, name: str) -> bool:
    """Whisper at 8 kHz writes a name as it heard it ("Marie-Alopas" for Maria Lopez): the full
    name as the closest stretch of about its length, or the surname as a word of its own that
    starts as it does ("Chan" for Chen)."""
    h, n = _letters(text), _letters(name)
    spans = (h[i:i + k] for k in range(len(n) - 2, len(n) + 3) for i in range(max(1, len(h) - k + 1)))
    surname = name.split()[-1]
    return max((_ratio(s, n) for s in spans), default=0.0) >= 0.7 or any(
        w[0] == surname[0].lower() and _ratio(w, surname) >= 0.75 for w in re.findall(r"[a-z]+", text.lower()))


def dentists(h: Heard) -> Verdict:
    people = [p.name.removeprefix("Dr. ") for p in DATA.people]
    forms = [f for p in people for f in (p, p.split()[-1])]
    # A doctor whose name (one word or two after the title) is like none of the practice's: an invented person.
    titled = re.findall(r"\b(?:dr|doctor)\s+([a-z'-]+)(?:\s+([a-z'-]+))?", re.sub(r"[^a-z' -]", " ", h.text.lower()))
    strangers = [" ".join(t).strip() for t in titled if max(_ratio(c, f) for c in (t[0], " ".join(t)) for f in forms) < 0.6]
    return Verdict(all(_name_heard(h.text, p) for p in people), ", ".join(f"doctor {s}" for s in strangers))


def cleaning_price(h: Heard) -> Verdict:
    price = next(s.price for s in DATA.services if s.name == "cleaning")
    others = {s.price for s in DATA.services} - {price}
    said = price in h.numbers
    # An amount the data does not hold, or another service's price said instead of this one's.
    wrong = [n for n in h.numbers if n != price and ((n in others and not said) or (n not in others and re.search(rf"\b{n} (dollars?|bucks)\b", h.plain)))]
    return Verdict(said, ", ".join(f"{n} dollars" for n in wrong))


def emergency_number(h: Heard) -> Verdict:
    want = re.sub(r"\D", "", DATA.phones["emergency"])
    known = DATA.phone_digits()
    invented = [r for r in h.digit_runs if len(r) >= 7 and not any(r in k or k in r for k in known)]
    return Verdict(any(want in r for r in h.digit_runs), ", ".join(f"number {r}" for r in invented))


def whitening(h: Heard) -> Verdict:
    # The facts say nothing of whitening: a yes or a no to it is made up, as is a price for it.
    claims = [c for c in h.clauses() if re.search(r"^(yes|yeah|sure)\b|\bwe (do|offer|provide|have|can do)\b.*whiten|\bwe (do not|don't)\b.*\b(do|offer|provide|have)\b.*whiten"
                                                  r"|whiten.*\b(available|offered|not available)\b", c)]
    priced = [n for n in h.numbers if re.search(rf"\b{n} (dollars?|bucks)\b", h.plain)]
    wrong = "; ".join([*(f"made up: {c}" for c in claims), *(f"price {n} dollars" for n in priced)])
    return Verdict(h.has(HONEST), wrong)


def questions(now: dt.datetime) -> list[Question]:
    # The one the facts do not answer last: its honest line offers a transfer that the next question would answer.
    return [
        Question("Are you open on Sunday?", "closed on Sunday", open_on_sunday),
        friday_closing(now),
        open_now(now),
        Question("Who are the dentists?", "Dr. Maria Lopez and Dr. James Chen", dentists),
        Question("How much is a cleaning?", "90 dollars", cleaning_price),
        Question("What's the emergency number?", "555 0199", emergency_number),
        Question("What's your address?", DATA.address, address),
        Question("Do you do teeth whitening?", "the honest line (don't know / put you through)", whitening),
    ]


def script(asked: list[Question]) -> list[Step]:
    steps: list[Step] = [WaitAgentDone(1.0, timeout_s=30)]  # the greeting
    for q in asked:
        # An answer's sentences come one after another; 2 s of quiet is the answer's end, not a pause in it.
        steps += [SayText(q.ask), WaitAgent(0.5, timeout_s=40), WaitAgentDone(2.0, timeout_s=60)]
    return [*steps, Pause(0.3)]


def answers_heard(call: RealCall, n: int) -> list[bytes]:
    """What the caller heard after each of its ``n`` questions, until it spoke again (or hung up)."""
    assert len(call.said) == n and len(call.said_end) == n, call.report()
    ends = [start for start, _ in call.said[1:]] + [call.ended_at or float("inf")]
    return [_heard_between(call, call.said_end[i], ends[i]) for i in range(n)]


# ---- the reading of transcripts itself (no PBX, no models)

@pytest.mark.parametrize(("text", "minutes"), [
    ("We close at 4 p.m. on Fridays.", [16 * 60]),
    ("On Friday we're open from eight a m to four p m.", [8 * 60, 16 * 60]),
    ("Friday, 8:00 AM to 4:00 PM.", [8 * 60, 16 * 60]),
    ("We're open nine thirty am until noon.", [9 * 60 + 30, 12 * 60]),
    ("Until 16:00.", [16 * 60]),
    ("From 8am until 1230pm.", [8 * 60, 12 * 60 + 30]),
])
def test_times_are_read_however_whisper_writes_them(text: str, minutes: list[int]) -> None:
    assert [t.minute for t in heard(text).times if not t.ambiguous] == minutes


@pytest.mark.parametrize("text", ["For emergencies call 555-0199.", "five five five, zero one nine nine", "Five, five, five, oh, one, nine, nine.",
                                  "555 01 99", "five hundred fifty-five zero one ninety-nine"])
def test_a_phone_number_is_read_as_its_digits(text: str) -> None:
    assert "5550199" in heard(text).digit_runs, heard(text)


def test_a_wrong_fact_is_caught_and_a_right_one_passes() -> None:
    now = dt.datetime(2026, 12, 7, 10, 0, tzinfo=DATA.zone)
    friday = friday_closing(now).judge
    assert friday(heard("We close at 4 pm on Friday.")) == Verdict(True, "")
    assert friday(heard("On Friday we close at 6 pm.")).wrong
    assert open_on_sunday(heard("No, we're closed on Sundays.")) == Verdict(True, "")
    assert open_on_sunday(heard("Yes, we are open on Sunday.")).wrong
    assert open_on_sunday(heard("We're closed on Sunday, but open Monday to Saturday.")).wrong == ""
    assert cleaning_price(heard("A cleaning is ninety dollars.")) == Verdict(True, "")
    assert cleaning_price(heard("A cleaning costs $65.")).wrong
    assert dentists(heard("Our dentists are Doctor Maria Lopez and Doctor James Chen.")) == Verdict(True, "")
    assert dentists(heard("The dentist or doctor, Marie-Alopas and doctor, James Chen.")) == Verdict(True, "")  # as Whisper heard it
    assert dentists(heard("Dr. Smith and Dr. Lopez.")).wrong
    assert not dentists(heard("Our dentist is Dr. James Chen.")).right
    assert emergency_number(heard("Call 555 0198 any time.")).wrong
    assert whitening(heard("I'm sorry, I don't know that. Shall I put you through to someone who does?")) == Verdict(True, "")
    assert whitening(heard("Yes, we do teeth whitening for 200 dollars.")).wrong
    assert open_now(now).judge(heard("Yes, we're open until 12 pm.")) == Verdict(True, "")  # Monday 10:00
    assert open_now(now).judge(heard("No, we're closed right now.")).wrong
    assert address(heard("We're at 14 Harbor Street in Springfield.")) == Verdict(True, "")
    assert address(heard("We're at 41 Harbor Street.")).wrong
    assert whitening(heard("One moment, please. We do not have teeth whitening services.")).wrong


# ---- the calls

@pytest.mark.timeout(480)
@pytest.mark.parametrize(("profile", "mode"), [(STRUCTURED, "stream"), (FREE_TEXT, "file")], ids=["data-stream", "free_text-file"])
async def test_questions_in_a_human_voice_are_answered_with_the_right_facts(asterisk, callers, tmp_path, whisper, profile, mode):
    def configure(cfg):
        cfg.profiles["default"] = profile

    asked = questions(dt.datetime.now(dt.timezone.utc))
    async with running_engine(asterisk, tmp_path, configure, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call(script(asked))
        await ended(call, 420)
        events = drain(sub)
    said = [f"{e.turn.role}: {e.turn.text}" for e in events if isinstance(e, TranscriptAdded) and e.turn.final]
    results = []
    for q, audio in zip(asked, answers_heard(call, len(asked)), strict=True):
        h = heard(_transcribe(whisper, audio))
        results.append((q, h, q.judge(h)))
    report = "\n".join(f"{'OK   ' if v.right and not v.wrong else 'WRONG' if v.wrong else 'MISS '} {q.ask!r}: expected {q.expected}; "
                       f"heard {h.text!r}{'; wrong: ' + v.wrong if v.wrong else ''}" for q, h, v in results)
    report += "\nthe engine's transcript:\n" + "\n".join(said)
    # No wrong fact at all (the goal), and every answerable fact heard.
    assert not [q for q, _, v in results if v.wrong], report
    assert all(v.right for _, _, v in results), report
