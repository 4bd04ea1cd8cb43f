"""Does the agent state the right fact, and never a wrong one? Callers' questions about five made-up
businesses (bench/facts_data/), asked as a caller would (casual, wordy, with "um", names a phone line
blurs, "today", "now", "tomorrow", follow-ups that lean on the last turn, and questions the facts do
not answer), scored from what the caller hears.

    python bench/facts.py [--path spoken|text] [--answer rules|llm|both] [--part tune|heldout|all]
                          [--business NAME] [--model NAME | --model-path FILE] [--ear names|plain]
                          [--show]

The path (``--path spoken``, the default): the question spoken by the simulated caller's voice
(pbxsim.voice: Piper, 8 kHz u-law), transcribed by the pipeline's Whisper (primed with the profile's
stt_prompt, as a call's is), answered; the answer read by spoken() and synthesized sentence by
sentence by the agent's Piper voice, through 8 kHz u-law, transcribed by Whisper (the caller's ear)
primed with the business's names only (``--ear names``: a caller knows whom and where they call, and
Whisper tiny.en writes "Sione Taufa" as "Sioni Toffo" unprimed; never the facts' numbers, so a time,
price or phone number survives the line or not on its own; ``--ear plain``: no prompt): that
transcript is what is scored. ``--path text`` skips the audio both ways. Both sides' audio and
transcripts are cached by text under ~/.cache/aiagent-tui/bench-facts (--cache), so a re-run costs
only the answers.

The answer (``--answer``): ``rules`` FactGuard.answer, or the profile's unknown_answer line; ``llm``
the model alone with the profile's instructions and the conversation so far, as the pipeline builds
them (Dialogue.messages), nothing checked; ``both`` the pipeline's path: the data's answer first,
else the model with every sentence checked by FactGuard.check (a replaced sentence is said instead
and the rest of the answer dropped).

Each answer falls in one category:
  right       it contains what the question expects (an unanswerable one: it says it does not know
              or offers to put the caller through)
  wrong       it contains a forbidden item (the wrong day, time, yes/no), or a time, price or phone
              number that neither the business's facts nor the caller's words hold: this bench's own
              extraction of numbers, not providers/facts/verify.py's, so that the checker is not
              graded with itself
  dont_know   an answerable question answered "I don't know" / "shall I put you through"
  no_answer   none of these
The questions are in two parts: tune (for iterating) and heldout (report it; never tune to it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import re
import sys
import time
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from providers.facts.verify import FactGuard  # noqa: E402
from providers.profile import AgentProfile  # noqa: E402

if TYPE_CHECKING:
    from providers.config import LocalProviderConfig
    from providers.local.llm import ChatModel
    from providers.local.tts import PiperTts

DATA = Path(__file__).resolve().parent / "facts_data"
PARTS = ("tune", "heldout")
Category = Literal["right", "wrong", "dont_know", "no_answer"]
CATEGORIES: tuple[Category, ...] = ("right", "wrong", "dont_know", "no_answer")
TOPICS = ("hours", "open_day", "now", "special_day", "address", "phone", "people", "price", "faq", "other", "unknown")


# ---- the data

class Question(BaseModel):
    """One question of a part's file (``[[question]]``)."""

    model_config = ConfigDict(extra="forbid")

    business: str
    text: str = Field(min_length=3)
    topic: str  # one of TOPICS: the table's row
    expect: list[list[str]] = []  # alternatives; every item of one must be in the answer
    forbid: list[str] = []  # any of these in the answer: a wrong fact
    unanswerable: bool = False  # the facts do not answer it: an honest "don't know" is right
    after: list[str] = []  # asked first, in the same conversation
    now: dt.datetime | None = None  # the moment it is asked (local time of the business if naive)

    @model_validator(mode="after")
    def _consistent(self) -> Question:
        if self.topic not in TOPICS:
            raise ValueError(f"{self.text!r}: topic {self.topic!r} is not one of {', '.join(TOPICS)}")
        if self.unanswerable == bool(self.expect):
            raise ValueError(f"{self.text!r}: give either expect or unanswerable = true")
        if (self.topic == "unknown") != self.unanswerable:
            raise ValueError(f"{self.text!r}: topic 'unknown' is for the unanswerable questions, and only for them")
        if any(not alt or not all(item.strip() for item in alt) for alt in self.expect):
            raise ValueError(f"{self.text!r}: an empty expect alternative")
        return self


class PartFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    now: dict[str, dt.datetime]  # each business's moment of asking (local time if naive)
    question: list[Question]


@dataclass(frozen=True)
class Case:
    part: str
    q: Question
    now: dt.datetime  # aware

    @property
    def key(self) -> str:
        return f"{self.q.business}: {' / '.join([*self.q.after, self.q.text])}"


def load_profiles(path: Path = DATA / "businesses.toml") -> dict[str, AgentProfile]:
    with path.open("rb") as f:
        tables = tomllib.load(f)
    return {name: AgentProfile.model_validate(table) for name, table in tables.items()}


def aware(moment: dt.datetime, profile: AgentProfile) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(profile.known.timezone))


def load_part(part: str, profiles: dict[str, AgentProfile]) -> list[Case]:
    with (DATA / f"{part}.toml").open("rb") as f:
        data = PartFile.model_validate(tomllib.load(f))
    cases = []
    for q in data.question:
        if q.business not in profiles:
            raise ValueError(f"{part}: {q.text!r}: no business {q.business!r}")
        moment = q.now or data.now.get(q.business)
        if moment is None:
            raise ValueError(f"{part}: {q.text!r}: no now for {q.business!r}")
        cases.append(Case(part, q, aware(moment, profiles[q.business])))
    return cases


# ---- what the caller heard, normalised: number words as digits, "a.m." as "am", "$5" as "5 dollars"

_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_TEENS = {w: i + 10 for i, w in enumerate("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: (i + 2) * 10 for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_CURRENCY_WORDS = {"dollar": "dollars", "dollars": "dollars", "bucks": "dollars", "buck": "dollars", "euro": "euros",
                   "euros": "euros", "pound": "pounds", "pounds": "pounds", "quid": "pounds"}
_MONEY_WORDS = set(_CURRENCY_WORDS.values())
_SYMBOLS = {"$": "dollars", "€": "euros", "£": "pounds"}
_NEGATIONS = {"not", "never", "no", "nor", "neither", "without"}
_YES_NO = {"yes", "yeah", "yep", "no", "nope"}
_FILLERS = {"oh", "well", "um", "uh", "sorry", "so", "i", "am", "afraid", "okay", "ok"}
_UNIT_AFTER = {"minute", "minutes", "hour", "hours", "day", "days", "week", "weeks", "month", "months", "year", "years",
               "mile", "miles", "people", "guests", "items", "percent", "kids", "children", "bottles", "cars"} | _MONEY_WORDS
_TIME_BEFORE = {"at", "from", "until", "till", "til", "between", "opens", "closes", "by", "after", "before"}
_ORDINALS = {w: f"{i + 1}{'st' if i % 10 == 0 and i != 10 else 'nd' if i % 10 == 1 and i != 11 else 'rd' if i % 10 == 2 and i != 12 else 'th'}"
             for i, w in enumerate(("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
                                    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth").split())}


def _number_words(words: list[str]) -> list[str]:
    """``twenty five`` 25, ``one hundred and fifty`` 150, ``five five five`` 5 5 5 (digit by
    digit stays digit by digit), ``oh`` between digits 0."""
    out: list[str] = []
    i = 0

    def num(w: str) -> bool:
        return w in _UNITS or w in _TEENS or w in _TENS

    while i < len(words):
        w = words[i]
        if w == "oh" and out and out[-1].isdigit() and i + 1 < len(words) and (num(words[i + 1]) or words[i + 1].isdigit()):
            out.append("0")
            i += 1
            continue
        if w == "a" and i + 1 < len(words) and words[i + 1] in ("hundred", "thousand"):
            w = "one"
        if not num(w):
            out.append(w)
            i += 1
            continue
        value = 0
        current = _UNITS.get(w, _TEENS.get(w, _TENS.get(w, 0)))
        i += 1
        if w in _TENS and i < len(words) and words[i] in _UNITS and words[i] != "zero":
            current += _UNITS[words[i]]
            i += 1
        while i < len(words) and words[i] in ("hundred", "thousand"):
            current *= 100 if words[i] == "hundred" else 1000
            i += 1
            j = i + 1 if i < len(words) and words[i] == "and" else i
            if j < len(words) and num(words[j]) and words[j] != "zero":
                w2 = words[j]
                part = _UNITS.get(w2, _TEENS.get(w2, _TENS.get(w2, 0)))
                j += 1
                if w2 in _TENS and j < len(words) and words[j] in _UNITS and words[j] != "zero":
                    part += _UNITS[words[j]]
                    j += 1
                if current >= 1000 and j < len(words) and words[j] == "hundred":
                    part *= 100
                    j += 1
                current += part
                i = j
        value += current
        out.append(str(value))
    return out


def _sentence_tokens(sentence: str) -> list[str]:
    t = sentence
    t = re.sub(r"\b(1[0-2]|0?[1-9])([0-5]\d)\s*(am|pm)\b", r"\1:\2 \3", t)  # Whisper's "1230pm"
    t = re.sub(r"\b(\d+)\s*(am|pm)\b", r"\1 \2", t)
    t = re.sub(r"([$€£])\s?(\d[\d,]*(?:\.\d+)?)", lambda m: f"{m.group(2).replace(',', '')} {_SYMBOLS[m.group(1)]}", t)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # 12,000
    t = t.replace("'", "'").replace("’", "'")
    t = re.sub(r"\bcan't\b", "can not", t)
    t = re.sub(r"\bwon't\b", "will not", t)
    t = re.sub(r"n't\b", " not", t)
    t = re.sub(r"\bcannot\b", "can not", t)
    t = re.sub(r"'re\b", " are", t)
    t = re.sub(r"\bi'm\b", "i am", t)
    t = re.sub(r"'ll\b", " will", t)
    t = re.sub(r"'ve\b", " have", t)
    t = re.sub(r"\bo'clock\b", "", t)
    t = re.sub(r"\bno one\b", "nobody", t)
    t = re.sub(r"\b12 noon\b|\bnoon\b|\bmidday\b", "12 pm", t)
    t = re.sub(r"\b12 midnight\b|\bmidnight\b", "12 am", t)
    # Words and numbers: keep ":" and "." inside numbers (5:30, 12.50), the rest is a separator.
    t = re.sub(r"(?<!\d)[:.]|[:.](?!\d)", " ", t)
    t = re.sub(r"[^\w:.\s]", " ", t)
    t = re.sub(r"\b(monday|tuesday|wednesday|thursday|friday|saturday|sunday)s\b", r"\1", t)
    words = [_ORDINALS.get(w, w) for w in _number_words(t.split())]
    # Whisper's "9 30 am", "9.30 am"; "5:00 pm" is "5 pm"
    out: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else ""
        after = words[i + 2] if i + 2 < len(words) else ""
        if re.fullmatch(r"\d{1,2}\.\d{2}", w) and (nxt in ("am", "pm") or (out and out[-1] in _TIME_BEFORE)):
            w = w.replace(".", ":")
        if (w.isdigit() and int(w) <= 12 and re.fullmatch(r"[0-5]\d|[1-5]\d", nxt) and len(nxt) == 2
                and (after in ("am", "pm") or (out and out[-1] in _TIME_BEFORE | {"to", "and"})) and not after.isdigit()):
            w, i = f"{w}:{nxt}", i + 1
        elif w.isdigit() and nxt == "0" and after.isdigit() and len(after) == 1 and words[i + 3: i + 4] in (["am"], ["pm"]):
            w, i = f"{w}:0{after}", i + 2  # "9 oh 5 am"
        w = re.sub(r"^(\d{1,2}):00$", r"\1", w)
        out.append(w)
        i += 1
    # "12 dollars 50 cents", "12 dollars and 50 cents"
    merged: list[str] = []
    i = 0
    while i < len(out):
        w = out[i]
        if w.isdigit() and i + 1 < len(out) and out[i + 1] in _CURRENCY_WORDS:
            rest = out[i + 2:i + 5]
            if rest[:1] == ["and"]:
                rest = rest[1:]
            money = _CURRENCY_WORDS[out[i + 1]]
            if len(rest) >= 2 and rest[0].isdigit() and rest[1] in ("cents", "cent", "pence", "p"):
                merged += [f"{w}.{int(rest[0]):02d}", money]
                i += 2 + (3 if out[i + 2] == "and" else 2)
                continue
            merged += [w, money]
            i += 2
            continue
        merged.append(w)
        i += 1
    # A phone number read in groups ("847 555 0148", "8 4 7 5 5 5"): one token of its digits.
    joined: list[str] = []
    i = 0
    while i < len(merged):
        j = i
        while j < len(merged) and merged[j].isdigit():
            j += 1
        if j - i >= 2 and sum(len(w) for w in merged[i:j]) >= 7:
            joined.append("".join(merged[i:j]))
            i = j
        elif j > i:
            joined += merged[i:j]
            i = j
        else:
            joined.append(merged[i])
            i += 1
    return joined


def normalise(text: str) -> list[list[str]]:
    """The text as sentences of tokens."""
    t = text.lower().replace("\u2019", "'")
    t = re.sub(r"\b([ap])\.\s?m\b\.?", r"\1m", t)
    t = re.sub(r"(?<=\d)\s?([ap])\s(?=m\b)", r" \1", t)  # "9 a m"
    t = re.sub(r"\b([ap]) m\b", r"\1m", t)
    t = re.sub(r"\b(dr|mr|mrs|ms|st|prof)\.", r"\1", t)
    sentences = re.split(r"[!?;]|\.(?!\d)", t)
    return [toks for s in sentences if (toks := _sentence_tokens(s))]


def phrase(item: str) -> list[str]:
    """An expect or forbid item as tokens (one sentence)."""
    return [t for s in normalise(item) for t in s]


def _find(tokens: list[str], want: list[str]) -> list[int]:
    n = len(want)
    return [i for i in range(len(tokens) - n + 1) if tokens[i:i + n] == want]


_DONT_KNOW = [phrase(p) for p in (
    "do not know", "not sure", "no information", "do not have that information", "do not have information",
    "do not have any information", "do not have the information", "do not have details", "can not answer", "can not tell",
    "can not say", "can not help with", "can not confirm", "unable to", "not able to", "i am afraid i do not",
    "not something i know", "no idea",
)]
_OFFER = [phrase(p) for p in (
    "put you through", "transfer you", "connect you", "someone who", "somebody who", "check with", "pass you to",
    "front desk", "shall i put", "can put you",
)]


def _says(sentences: list[list[str]], phrases: list[list[str]]) -> bool:
    return any(_find(tokens, p) for tokens in sentences for p in phrases)


def contains(sentences: list[list[str]], item: str) -> bool:
    """``item`` said as such: a yes or no only as a sentence's answer (its first word, and not in a
    sentence that says it does not know: "no, I don't know"), a phrase not negated by one of the
    three words before it ("we are not open"), a long number also as part of a phone number heard."""
    want = phrase(item)
    if not want:
        return False
    for tokens in sentences:
        if want[0] in _YES_NO and len(want) == 1:
            lead = 0
            while lead < len(tokens) and tokens[lead] in _FILLERS:
                lead += 1
            if tokens[lead:lead + 1] == want and not _says([tokens], _DONT_KNOW):
                return True
            continue
        if len(want) == 1 and want[0].isdigit() and len(want[0]) >= 4:
            if any(t.isdigit() and len(t) >= 7 and want[0] in t for t in tokens):
                return True
        for i in _find(tokens, want):
            # A sentence's leading "no" answers the question; it does not negate what follows.
            negated = any(tokens[j] in _NEGATIONS and not (j == 0 and tokens[j] == "no") for j in range(max(0, i - 3), i))
            if not negated or any(t in _NEGATIONS for t in want):
                return True
    return False


# ---- the numbers an answer states

@dataclass(frozen=True)
class Numbers:
    times: frozenset[tuple[int, int]]  # (hour mod 12, minute)
    prices: frozenset[float]
    phones: frozenset[str]  # digits

    def __or__(self, other: Numbers) -> Numbers:
        return Numbers(self.times | other.times, self.prices | other.prices, self.phones | other.phones)


def numbers_in(sentences: list[list[str]], *, bare_times: bool = False) -> Numbers:
    """Times (``9 am``, ``5:30``, ``from 8``; ``bare_times``: every number to 24 may be an hour, for
    the business's own text), prices (``25 dollars``) and phone numbers (7 digits or more)."""
    times: set[tuple[int, int]] = set()
    prices: set[float] = set()
    phones: set[str] = set()
    for tokens in sentences:
        for i, w in enumerate(tokens):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            prev = tokens[i - 1] if i else ""
            m = re.fullmatch(r"(\d{1,2}):(\d{2})", w)
            if m and int(m.group(1)) <= 24:
                times.add((int(m.group(1)) % 12, int(m.group(2))))
                continue
            if re.fullmatch(r"\d+(\.\d+)?", w) and nxt in _MONEY_WORDS:
                prices.add(float(w))
                continue
            if not w.isdigit():
                continue
            if len(w) >= 7:
                phones.add(w)
                continue
            n = int(w)
            if n > 24:
                continue
            later = tokens[i + 2] if i + 2 < len(tokens) else ""
            range_partner = ((prev in ("to", "and", "till", "until") and i >= 2 and re.fullmatch(r"\d{1,2}(:\d{2})?", tokens[i - 2]))
                             or (nxt in ("to", "till", "until") and re.fullmatch(r"\d{1,2}(:\d{2})?", later)
                                 and tokens[i + 3: i + 4] != [] and tokens[i + 3] not in _UNIT_AFTER)
                             or (nxt in ("to", "till", "until") and re.fullmatch(r"\d{1,2}(:\d{2})?", later) and i + 3 >= len(tokens)))
            if nxt in ("am", "pm") or bare_times or ((prev in _TIME_BEFORE or range_partner) and nxt not in _UNIT_AFTER):
                if not (nxt in _UNIT_AFTER and bare_times and nxt not in ("am", "pm")):
                    times.add((n % 12, 0))
    return Numbers(frozenset(times), frozenset(prices), frozenset(phones))


def names_of(profile: AgentProfile) -> str:
    """The business's proper names (capitalised words of its facts, people, address), no numbers:
    the caller's ear's prompt."""
    b = profile.business
    texts = [profile.facts, b.name, b.address, b.directions, *(p.name for p in b.people), *(f.answer for f in b.faq)]
    skip = {"The", "A", "An", "We", "Our", "Open", "Closed", "Please", "You", "Free", "Two", "Main", "General", "Lost", "Happy",
            "Private", "Reservations", "Repairs", "Returns", "Test", "State", "Tire", "Brake", "Bus", "Dr"}
    names = []
    for text in texts:
        for run in re.findall(r"\b[A-Z][\w'&-]*(?: [A-Z][\w'&-]*)*", text):
            words = run.split(" ")
            while words and words[0] in skip | {d.capitalize() for d in _WEEKDAYS}:
                words = words[1:]
            if words:
                names.append(" ".join(words))
    return ", ".join(dict.fromkeys(names))


def business_numbers(profile: AgentProfile) -> Numbers:
    """Every time, price and phone number the profile's facts hold, in any form: its business table
    and its free text as written (not as providers/facts/text.py reads it: the bench does not grade
    the engine's reading with itself)."""
    b = profile.business
    written = [profile.facts, profile.persona, profile.greeting, b.name, b.address, b.directions, *b.phones.values(), b.email,
               *(f.answer for f in b.faq), *(p.note for p in b.people), *(s.note for s in b.services),
               *(d.note + " " + d.hours for d in b.special_days), *b.hours.values()]
    ranges = re.compile(r"\b(\d{1,2}(?::\d{2})?)\s*[-–]\s*(\d{1,2}(?::\d{2})?)\b")  # "8:00-12:00", not "555-0148"
    from_text = numbers_in([t for text in written for t in normalise(ranges.sub(r"\1 to \2", text))])
    # The structured data's times, prices and numbers as values (hours as written: "13:00" is 1 pm).
    times = {(m // 60 % 12, m % 60) for m in b.all_times()}
    prices = {float(p) for p in b.prices()}
    phones = {re.sub(r"\D", "", n) for n in b.phones.values()}
    return from_text | Numbers(frozenset(times), frozenset(prices), frozenset(phones))


def unknown_numbers(heard: Numbers, known: Numbers) -> list[str]:
    """What the answer states that the facts (or the caller) do not hold."""
    out = [f"{h or 12}:{m:02d}" for h, m in sorted(heard.times - known.times)]
    out += [f"price {p:g}" for p in sorted(heard.prices - known.prices)]
    out += [f"phone {p}" for p in sorted(heard.phones) if not any(p in k or k in p for k in known.phones if len(k) >= 7)]
    return out


# ---- scoring

_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _recital(sentences: list[list[str]]) -> bool:
    """The week's hours read out: three days or more named. Other days' times and names are in it
    rightly, so a forbidden time or day ("5:30" when Friday's is asked) does not count there; a
    time written nowhere still does."""
    return len({t for tokens in sentences for t in tokens if t in _WEEKDAYS}) >= 3


def _of_a_day(item: str) -> bool:
    """A forbidden time or weekday (not a yes, no or phrase)."""
    return any(ch.isdigit() for ch in item) or item.lower() in _WEEKDAYS


@dataclass(frozen=True)
class Verdict:
    category: Category
    why: str = ""


def score(q: Question, heard: str, known: Numbers) -> Verdict:
    """The category of ``heard`` (what the caller heard) as an answer to ``q``; ``known``: the
    business's numbers and the caller's own."""
    sentences = normalise(heard)
    forbidden = [f for f in q.forbid if contains(sentences, f) and not (_recital(sentences) and _of_a_day(f))]
    if forbidden:
        return Verdict("wrong", f"says {', '.join(map(repr, forbidden))}")
    invented = unknown_numbers(numbers_in(sentences), known)
    if invented:
        return Verdict("wrong", f"not in the facts: {', '.join(invented)}")
    dont_know = _says(sentences, _DONT_KNOW)
    offer = _says(sentences, _OFFER)
    if q.unanswerable:
        return Verdict("right") if dont_know or offer else Verdict("no_answer")
    if any(all(contains(sentences, item) for item in alt) for alt in q.expect) and not dont_know:
        return Verdict("right")
    if dont_know or offer:
        return Verdict("dont_know")
    return Verdict("no_answer")


# ---- the answers

@dataclass
class Said:
    text: str
    first_s: float  # to the first sentence
    by: Literal["rules", "llm"]
    llm_cpu_s: float = 0.0


class Answerer:
    """One mode's answers (rules, llm, both) for one conversation at a time."""

    def __init__(self, mode: str, model: ChatModel | None, max_tokens: int, temperature: float) -> None:
        self.mode = mode
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature

    def respond(self, profile: AgentProfile, guard: FactGuard, messages: list[dict[str, str]], question: str, now: dt.datetime) -> Said:
        t0 = time.perf_counter()
        if self.mode in ("rules", "both"):
            found = guard.answer(question, now)
            if found is not None:
                return Said(found.text, time.perf_counter() - t0, "rules")
            if self.mode == "rules":
                return Said(profile.unknown_answer, time.perf_counter() - t0, "rules")
        return self._llm(guard if self.mode == "both" else None, messages, question, now, t0)

    def _llm(self, guard: FactGuard | None, messages: list[dict[str, str]], question: str, now: dt.datetime, t0: float) -> Said:
        import threading

        from providers.local.sentences import SentenceSplitter

        splitter = SentenceSplitter()
        out: list[str] = []
        first: list[float] = []
        stop = threading.Event()
        replaced = False

        def deliver(sentence: str) -> None:
            nonlocal replaced
            if replaced:
                return
            instead = guard.check(sentence, question, now, first=not out) if guard is not None else None
            if not first:
                first.append(time.perf_counter() - t0)
            if instead is not None:
                replaced = True
                out.append(instead)
                stop.set()  # the pipeline cancels the rest of a replaced answer
                return
            out.append(sentence)

        def on_text(piece: str) -> None:
            for sentence in splitter.feed(piece):
                deliver(sentence)

        assert self.model is not None
        c0 = time.process_time()
        self.model.generate(messages, self.max_tokens, self.temperature, on_text, stop)
        cpu = time.process_time() - c0
        rest = splitter.flush()
        if rest:
            deliver(rest)
        if not first:
            first.append(time.perf_counter() - t0)
        return Said(" ".join(out), first[0], "llm", cpu)


# ---- the audio both ways

class Line:
    """The phone line: the caller's voice to the pipeline's Whisper, the agent's Piper voice to the
    caller's ear (Whisper again), through 8 kHz u-law; everything cached by text."""

    def __init__(self, cache: Path, cfg: LocalProviderConfig) -> None:
        from providers.local.models import JOE_VOICE, resolve
        from providers.local.stt import build_stt

        self.cfg = cfg
        self.cache = cache
        cache.mkdir(parents=True, exist_ok=True)
        self._stt = build_stt(self.cfg)
        self._voice_path = resolve(JOE_VOICE, self.cfg.tts_voice_path)
        self._tts: PiperTts | None = None
        self._stt_id = f"{self.cfg.stt_engine}:{self.cfg.stt_model_path}:{self.cfg.stt_compute_type}:{self.cfg.stt_beam_size}:{self.cfg.stt_window_s}"

    def _key(self, *parts: str) -> str:
        return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]

    def _cached(self, name: str, make: Callable[[], bytes]) -> bytes:
        path = self.cache / name
        if path.is_file():
            return path.read_bytes()
        data = make()
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return data

    def _transcribe(self, ulaw: bytes, prompt: str) -> str:
        from media.audio import Resampler, ulaw_to_pcm16

        up = Resampler(8000, 16000)  # as the engine hands the line's audio to STT, 20 ms at a time
        pcm = b"".join(up.process(ulaw_to_pcm16(ulaw[i:i + 160])) for i in range(0, len(ulaw), 160))
        return self._stt.transcribe(pcm, prompt).strip()

    def caller(self, text: str, profile: AgentProfile) -> str:
        """What the pipeline's Whisper makes of the caller saying ``text``."""
        from pbxsim.voice import speak

        audio = self._cached(f"caller-{self._key(text)}.ulaw", lambda: speak(text))
        prompt = profile.stt_prompt()
        key = self._key("caller", text, prompt, self._stt_id)
        return self._cached(f"caller-{key}.txt", lambda: self._transcribe(audio, prompt).encode()).decode()

    def agent(self, said: str, names: str) -> str:
        """What the caller hears of the agent saying ``said``: spoken() and Piper, sentence by
        sentence as the pipeline speaks it, u-law at 8 kHz, Whisper primed with ``names``."""
        key = self._key("agent", said, names, str(self._voice_path), self._stt_id)
        return self._cached(f"agent-{key}.txt", lambda: self._transcribe(self._agent_audio(said), names).encode()).decode()

    def _agent_audio(self, said: str) -> bytes:
        from media.audio import UlawEncoder
        from providers.local.sentences import SentenceSplitter
        from providers.local.spoken import spoken

        from providers.local.tts import PiperTts

        if self._tts is None:
            self._tts = PiperTts(self._voice_path, self.cfg.tts_threads)
        splitter = SentenceSplitter()
        sentences = [*splitter.feed(said + " ")]
        rest = splitter.flush()
        if rest:
            sentences.append(rest)
        encoder = UlawEncoder()
        gap = b"\xff" * 1600  # 200 ms of u-law silence (0xff) between sentences, as before the first
        audio = [gap]
        for sentence in sentences:
            text = spoken(sentence)
            if text:
                audio += [encoder.encode(self._tts.synthesize(text), self._tts.sample_rate), gap]
        return b"".join(audio)


# ---- the run

@dataclass
class Outcome:
    case: Case
    asked: str  # what the pipeline heard the caller ask
    said: Said
    heard: str  # what the caller heard
    verdict: Verdict


@dataclass
class Tally:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, o: Outcome) -> None:
        kind = "u" if o.case.q.unanswerable else "a"
        self.counts[kind] += 1
        self.counts[f"{kind}_{o.verdict.category}"] += 1

    def row(self) -> str:
        c = self.counts
        a, u = c["a"], c["u"]
        ans = f"{c['a_right']:3d}/{a:<3d} {100 * c['a_right'] / a:5.1f}%" if a else f"{'-':>14s}"
        unk = f"{c['u_right']:3d}/{u:<3d} {100 * c['u_right'] / u:5.1f}%" if u else f"{'-':>14s}"
        wrong = c["a_wrong"] + c["u_wrong"]
        return f"{ans}  {wrong:5d}  {c['a_dont_know']:9d}  {c['a_no_answer'] + c['u_no_answer']:9d}  {unk}"


HEADER = f"{'':22s} {'answerable right':>14s}  {'wrong':>5s}  {'dont_know':>9s}  {'no_answer':>9s}  {'unanswerable honest':>14s}"


def report(outcomes: list[Outcome], show: bool) -> None:
    for part in PARTS:
        mine = [o for o in outcomes if o.case.part == part]
        if not mine:
            continue
        print(f"\n{part}: {len(mine)} questions ({sum(o.case.q.unanswerable for o in mine)} unanswerable, "
              f"{sum(bool(o.case.q.after) for o in mine)} follow-ups)")
        print(HEADER)
        for label, key in (("business", lambda o: o.case.q.business), ("topic", lambda o: o.case.q.topic)):
            groups: dict[str, Tally] = defaultdict(Tally)
            for o in mine:
                groups[key(o)].add(o)
            for name in sorted(groups):
                print(f"  {label[0]}:{name:19s} {groups[name].row()}")
        total = Tally()
        for o in mine:
            total.add(o)
        print(f"  {'total':21s} {total.row()}")
    all_ = Tally()
    for o in outcomes:
        all_.add(o)
    c = all_.counts
    print(f"\ntotal: answerable right {100 * c['a_right'] / max(1, c['a']):.1f}% ({c['a_right']}/{c['a']}), "
          f"wrong facts {c['a_wrong'] + c['u_wrong']}, unanswerable honest {100 * c['u_right'] / max(1, c['u']):.1f}% ({c['u_right']}/{c['u']})")
    for by in ("rules", "llm"):
        firsts = sorted(o.said.first_s for o in outcomes if o.said.by == by)
        if firsts:
            cpu = [o.said.llm_cpu_s for o in outcomes if o.said.by == by]
            extra = f", LLM CPU {sum(cpu) / len(cpu):.2f} s an answer" if by == "llm" else ""
            print(f"  answered by {by:5s} {len(firsts):4d}: to the first sentence p50 {_pct(firsts, 50) * 1000:6.1f} ms, "
                  f"p90 {_pct(firsts, 90) * 1000:6.1f} ms{extra}")
    if show:
        print("\nnot right:")
        for o in outcomes:
            if o.verdict.category != "right":
                asked = "" if o.asked == o.case.q.text else f" (heard as {o.asked!r})"
                print(f"  [{o.case.part} {o.verdict.category}{': ' + o.verdict.why if o.verdict.why else ''}] {o.case.key!r}{asked}\n"
                      f"      -> {o.heard!r}" + ("" if o.heard == o.said.text else f"\n      (said {o.said.text!r})"))


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main() -> int:
    from engine.config import load_config
    from providers.local.models import LLM_MODELS
    from providers.pipeline import Dialogue

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--path", choices=["spoken", "text"], default="spoken")
    ap.add_argument("--answer", choices=["rules", "llm", "both"], default="both")
    ap.add_argument("--part", choices=["tune", "heldout", "all"], default="all")
    ap.add_argument("--business", help="only this business's questions")
    ap.add_argument("--model", choices=list(LLM_MODELS), help="the LLM (default: config.toml's providers.local.llm_model)")
    ap.add_argument("--model-path", help="any GGUF file instead")
    ap.add_argument("--ear", choices=["names", "plain"], default="names", help="the caller's Whisper: primed with the business's names, or not")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "aiagent-tui" / "bench-facts")
    ap.add_argument("--show", action="store_true", help="print every answer that is not right")
    args = ap.parse_args()

    cfg = load_config(ROOT / "config.toml").providers.local
    profiles = load_profiles()
    if args.business and args.business not in profiles:
        ap.error(f"--business: one of {', '.join(profiles)}")
    cases = [c for part in PARTS if args.part in (part, "all") for c in load_part(part, profiles)
             if not args.business or c.q.business == args.business]
    model = None
    label = "rules"
    if args.answer != "rules":
        from providers.local.llm import ChatModel
        from providers.local.models import resolve_llm

        name = args.model or cfg.llm_model
        path = Path(args.model_path) if args.model_path else resolve_llm(name, "" if args.model else cfg.llm_model_path)
        model = ChatModel(path, cfg.llm_context, cfg.llm_threads, cfg.llm_chat_format)
        label = path.name
    answerer = Answerer(args.answer, model, cfg.llm_max_tokens, cfg.llm_temperature)
    line = Line(args.cache, cfg) if args.path == "spoken" else None
    known = {name: business_numbers(p) for name, p in profiles.items()}
    ear = {name: names_of(p) if args.ear == "names" else "" for name, p in profiles.items()}
    print(f"facts: {len(cases)} questions, --path {args.path}, --answer {args.answer}, {label}, {cfg.llm_threads} LLM thread(s)", flush=True)

    outcomes = []
    for n, case in enumerate(cases, 1):
        profile = profiles[case.q.business]
        guard = FactGuard(profile.known, facts_text=profile.facts, unknown=profile.unknown_answer)
        dialogue = Dialogue(profile, cfg.history_turns)
        local = case.now.astimezone(ZoneInfo(profile.known.timezone))
        # The caller's own numbers, and the time it is, may be said back.
        caller_numbers = Numbers(frozenset({(local.hour % 12, local.minute)}), frozenset(), frozenset())
        for text in [*case.q.after, case.q.text]:
            asked = line.caller(text, profile) if line else text
            caller_numbers = caller_numbers | numbers_in(normalise(text), bare_times=True) | numbers_in(normalise(asked), bare_times=True)
            said = answerer.respond(profile, guard, dialogue.messages(asked), asked, case.now)
            dialogue.asked(asked)
            dialogue.said(said.text)
        heard = line.agent(said.text, ear[case.q.business]) if line else said.text
        verdict = score(case.q, heard, known[case.q.business] | caller_numbers)
        outcomes.append(Outcome(case, asked, said, heard, verdict))
        if n % 25 == 0:
            print(f"  {n}/{len(cases)}", flush=True)
    report(outcomes, args.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
