"""The facts an agent's sentence states survive the phone line: spoken() → the agent's Piper voice
→ 8 kHz u-law (as engine/playback.py sends it) → back to 16 kHz → Whisper (the pipeline's own
model, no vocabulary). What Whisper writes is normalised ("9 a.m.", "9am", "nine AM" are all
9 am; "five five five" is 555) and each fact of the sentence must be in it.

Whisper stands in for the caller's ear: where it hears a fact wrong, a person on a bad line may
too. Each sentence is synthesized with a session seeded by its text, so a run hears the same
audio whatever ran before."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import Callable

import pytest

from media.audio import Resampler, UlawEncoder, ulaw_to_pcm16
from media.frames import RATE
from providers.config import LocalProviderConfig
from providers.local.models import JOE_VOICE, resolve
from providers.local.spoken import spoken
from providers.local.stt import SAMPLE_RATE, SttModel, build_stt
from providers.local.tts import PiperTts


@dataclass(frozen=True)
class Fact:
    """One sentence and what a caller must take from it: times (minutes after midnight), prices
    (amount and currency), digit strings (phone numbers) and phrases (a regular expression over
    the normalised transcript)."""

    text: str
    times: tuple[int, ...] = ()
    prices: tuple[tuple[float, str], ...] = ()
    digits: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()


def _hm(h: int, m: int = 0) -> int:
    return h * 60 + m


FACTS: list[Fact] = [
    # Times
    Fact("We open at 9 am and close at 5:30 pm.", times=(_hm(9), _hm(17, 30))),
    Fact("On Saturdays we open at 7:30 am.", times=(_hm(7, 30),)),
    Fact("We close for lunch at noon.", times=(_hm(12),)),
    Fact("The kitchen opens again at 12:30 pm.", times=(_hm(12, 30),)),
    Fact("The last appointment is at 17:30.", times=(_hm(17, 30),)),
    Fact("We're open 8-6 on weekdays.", phrases=(r"\b8 to 6\b",)),
    Fact("Today we're open 9 am - 1 pm.", times=(_hm(9), _hm(13))),
    Fact("We're open from 10:00 am to 10:00 pm.", times=(_hm(10), _hm(22))),
    Fact("Pickup is between 11:15 am and 11:45 am.", times=(_hm(11, 15), _hm(11, 45))),
    Fact("Tomorrow we open at 8:05 am.", times=(_hm(8, 5),)),
    Fact("On Sunday the hours are 13:00-18:00.", times=(_hm(13), _hm(18))),
    # Prices
    Fact("An oil change is $90.", prices=((90, "$"),)),
    Fact("A haircut costs $14.", prices=((14, "$"),)),
    Fact("The inspection is $49.99.", prices=((49.99, "$"),)),
    Fact("The lunch menu is €12.50.", prices=((12.5, "€"),)),
    Fact("A full service is £45.", prices=((45, "£"),)),
    Fact("Brake repairs start from $120.", prices=((120, "$"),)),
    Fact("The deposit is $1,250.", prices=((1250, "$"),)),
    Fact("Parking costs $2.50 an hour.", prices=((2.5, "$"),)),
    # Phone numbers
    Fact("For emergencies call 555 0199.", digits=("5550199",)),
    Fact("Our office number is (555) 123-4567.", digits=("5551234567",)),
    Fact("The London office is +44 20 7946 0958.", digits=("442079460958",)),
    Fact("Call us free on 0800 123 456.", digits=("0800123456",)),
    Fact("Towing is 555-0142.", digits=("5550142",)),
    # Addresses
    Fact("We're at 14 Harbour Street.", phrases=(r"\b14 harbou?r street\b",)),
    Fact("Find us at 220 Park Ave.", phrases=(r"\b220 park avenue\b",)),
    Fact("The shop is at 18 Elm Street.", phrases=(r"\b18 elm street\b",)),
    Fact("We're in Suite 3B at the back.", phrases=(r"\b(suite|sweet) 3 ?b\b",)),  # "suite" is said "sweet"
    Fact("The clinic is at 5 St. Mary's Rd.", phrases=(r"\b5 (saint|st) mary'?s road\b",)),
    Fact("Our shop is at 31 Main St., next to the bank.", phrases=(r"\b31 main street\b",)),
    # Day ranges
    Fact("We're open Mon-Fri 9 am to 5 pm.", times=(_hm(9), _hm(17)), phrases=(r"\bmonday (to|through) friday\b",)),
    Fact("On Sat-Sun we open at 10 am.", times=(_hm(10),), phrases=(r"\bsaturday (to|through|and) sunday\b",)),
    Fact("Tue–Thu we close at 7 pm.", times=(_hm(19),), phrases=(r"\btuesday (to|through) thursday\b",)),
]

# Heard wrong whatever spoken() does: the voice runs "Oak Avenue" together, and Whisper wrote
# "Find us at 220 O-Cabinet" in 6 renditions of 6 ("We're at 220 Oak Avenue": 2 of 6). A pause,
# "Oak, Avenue", would cure it (0 of 3) at the cost of every street name's flow.
HARD: list[Fact] = [
    Fact("Find us at 220 Oak Ave.", phrases=(r"\b220 oak avenue\b",)),
]


# --- What a transcript says, normalised ---------------------------------------------------------

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)}
_SCALES = {"hundred": 100, "thousand": 1000}
_TOKEN = re.compile(r"[a-z']+|\d+(?:[.,:]\d+)*|[^\sa-z\d]")


def _number_word(tok: str, prev: str | None, nxt: str | None) -> bool:
    def numeric(t: str | None) -> bool:
        return t is not None and (t[0].isdigit() or t in _UNITS or t in _TENS)

    # "oh" is a zero only between numbers ("nine oh five").
    return tok in _UNITS or tok in _TENS or tok in _SCALES or (tok == "oh" and numeric(prev) and numeric(nxt))


def words_to_digits(text: str) -> str:
    """Number words as digits, the way they were said: "five five five" is "5 5 5", "forty nine
    ninety nine" "49 99", "one hundred twenty" "120", "nine oh five" "9 0 5"."""
    toks = _TOKEN.findall(text)
    out: list[str] = []
    value: int | None = None
    open_to = 0  # what the number being read can still take: 10 after a tens word, 100 after a scale

    def flush() -> None:
        nonlocal value, open_to
        if value is not None:
            out.append(str(value))
        value, open_to = None, 0

    for i, tok in enumerate(toks):
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if tok == "and" and value is not None and open_to == 100 and nxt is not None and _number_word(nxt, tok, None):
            continue  # "one hundred and twenty"
        if not _number_word(tok, prev, nxt):
            flush()
            out.append(tok)
            continue
        n = 0 if tok == "oh" else _UNITS.get(tok, _TENS.get(tok))
        if tok in _SCALES:
            value = (value or 1) * _SCALES[tok] if tok == "hundred" or value is None else value * 1000
            open_to = 100
        elif n is not None and value is not None and n < open_to:
            value += n
            open_to = 10 if tok in _TENS and open_to == 100 else 0
        else:
            flush()
            value = n
            open_to = 10 if tok in _TENS else 0
    flush()
    return " ".join(out)


_CURRENCY_WORDS = {"dollar": "$", "dollars": "$", "bucks": "$", "euro": "€", "euros": "€", "pound": "£", "pounds": "£", "quid": "£"}


@dataclass
class Heard:
    """The facts in a transcript."""

    text: str  # normalised: lower case, digits, "am"/"pm", no punctuation but apostrophes
    times: set[int] = field(default_factory=set)
    prices: set[tuple[float, str]] = field(default_factory=set)
    digits: str = ""


def heard(transcript: str) -> Heard:
    t = transcript.lower()
    t = re.sub(r"\b([ap])\.?\s?m\b\.?", r"\1m", t)
    # A dash between numbers or days, or standing apart, is a range ("8-6", "Monday-Friday");
    # within words it joins them ("31-Main Street", "forty-nine").
    t = re.sub(r"(?<=\d)\s*[-–]\s*(?=\d)|(?<=day)[-–](?=\w+day\b)|\s[-–]\s", " to ", t)
    t = re.sub(r"[-–]", " ", t)
    t = words_to_digits(t)
    t = re.sub(r"\b(\d{1,2}) 0 (\d)(?= ?[ap]m\b)", r"\1:0\2", t)  # "eight oh five am"
    h = Heard(text="")
    # "5:30 pm", "5.30pm", "5 30 pm", "530 pm"
    for m in re.finditer(r"(?<![\d.])(\d{1,2})(?:\s?[:.]\s?(\d{2})|\s?(\d{2}))?\s?(am|pm)\b", t):
        hour, minute = int(m.group(1)) % 12, int(m.group(2) or m.group(3) or 0)
        h.times.add((hour + (12 if m.group(4) == "pm" else 0)) * 60 + minute)
    for m in re.finditer(r"(?<![\d.:])(\d{1,2}):(\d{2})\b(?! ?(?:am|pm))", t):
        if int(m.group(1)) >= 13:  # a 24-hour clock, said or written
            h.times.add(int(m.group(1)) * 60 + int(m.group(2)))
    if re.search(r"\b(12 )?noon\b", t):
        h.times.add(12 * 60)
    for m in re.finditer(r"([$€£]) ?(\d+(?:,\d{3})*)(?:\.(\d{1,2}))?", t):
        h.prices.add((int(m.group(2).replace(",", "")) + int(m.group(3) or 0) / 100, m.group(1)))
    cur = "|".join(_CURRENCY_WORDS)
    for m in re.finditer(rf"(\d+)(?:\.(\d{{2}})| (\d{{2}}))? ({cur})\b(?: ?,? (?:and )?(\d{{1,2}})(?= ?(?:cents?|pence|p)\b| ?[.,!?]|$))?", t):
        cents = m.group(2) or m.group(3) or m.group(5) or 0
        h.prices.add((int(m.group(1)) + int(cents) / 100, _CURRENCY_WORDS[m.group(4)]))
    h.digits = "".join(re.findall(r"\d", t))
    t = re.sub(r"[^\w\s'$€£]", " ", t)
    h.text = re.sub(r"\s+", " ", t).strip()
    return h


def missing(fact: Fact, transcript: str) -> list[str]:
    """The fact's parts the transcript lacks ([] when the caller got it all)."""
    h = heard(transcript)
    lost = [f"time {m // 60}:{m % 60:02d}" for m in fact.times if m not in h.times]
    lost += [f"price {c}{a:.2f}" for a, c in fact.prices if not any(abs(a - b) < 0.005 and c == d for b, d in h.prices)]
    lost += [f"digits {d}" for d in fact.digits if d not in h.digits]
    lost += [f"phrase /{p}/" for p in fact.phrases if not re.search(p, h.text)]
    return lost


@pytest.mark.parametrize(("transcript", "times", "prices", "digits"), [
    ("We open at 9 a.m. and close at 5.30 p.m.", {540, 1050}, set(), "9530"),
    ("We open at nine AM, close at five thirty PM.", {540, 1050}, set(), "9530"),
    ("open at 9am until 12 noon", {540, 720}, set(), "912"),
    ("tomorrow we open at eight oh five a m", {485}, set(), "805"),
    ("the last is at 17:30, or 730 AM", {1050, 450}, set(), "1730730"),
    ("It's forty-nine dollars and ninety-nine cents.", set(), {(49.99, "$")}, "4999"),
    ("It's $1,250 or twelve euros fifty, or €12.50, or one hundred and twenty pounds.", set(),
     {(1250, "$"), (12.5, "€"), (120, "£")}, "125012501250120"),
    ("Call five five five, zero one nine nine.", set(), set(), "5550199"),
    ("Call 555-0199 or (555) 123-4567.", set(), set(), "55501995551234567"),
])
def test_transcripts_are_read_for_their_facts(transcript, times, prices, digits):
    h = heard(transcript)
    assert (h.times, h.prices, h.digits) == (times, prices, digits)


def test_a_fact_heard_otherwise_is_missing():
    fact = Fact("Open 9 am to 5:30 pm at 14 Harbour Street, $49.99.", times=(540, 1050), prices=((49.99, "$"),),
                phrases=(r"\b14 harbou?r street\b",))
    assert missing(fact, "Open nine a.m. to five thirty p.m. at 14-Harbor Street, $49.99.") == []
    assert missing(fact, "Open 9 p.m. to 5.30 p.m. at 40 Harbor Street, $49.90.") == [
        "time 9:00", "price $49.99", "phrase /\\b14 harbou?r street\\b/"]


# --- Through the line ---------------------------------------------------------------------------

def over_the_line(tts_pcm: bytes, tts_rate: int) -> bytes:
    """The agent's audio as the caller's side has it, back at Whisper's 16 kHz: resampled to 8 kHz
    and u-law coded as engine/playback.py does, then decoded."""
    line = UlawEncoder().encode(tts_pcm, tts_rate)
    up = Resampler(RATE, SAMPLE_RATE)
    return up.process(ulaw_to_pcm16(line)) + up.flush()


def say(text: str, rendition: int = 0) -> tuple[bytes, int]:
    """``text`` in the agent's voice (PiperTts as the TTS worker runs it), its noise seeded by the
    text and ``rendition``."""
    import onnxruntime

    onnxruntime.set_seed(zlib.crc32(f"{rendition}:{text}".encode()))
    tts = PiperTts(resolve(JOE_VOICE, ""), threads=1)
    return tts.synthesize(text), tts.sample_rate


def through_the_line(text: str, whisper: SttModel, rendition: int = 0, read: Callable[[str], str] = spoken) -> str:
    """What Whisper writes for the agent saying ``text`` over the phone, read by ``read``."""
    return whisper.transcribe(over_the_line(*say(read(text), rendition)))


@pytest.fixture(scope="module")
def whisper() -> SttModel:
    return build_stt(LocalProviderConfig())


@pytest.mark.parametrize("fact", [
    *FACTS, *(pytest.param(f, marks=pytest.mark.xfail(reason="the voice runs the words together", strict=False)) for f in HARD),
], ids=[f.text for f in [*FACTS, *HARD]])
def test_the_fact_survives_the_phone_line(fact, whisper):
    transcript = through_the_line(fact.text, whisper)
    assert missing(fact, transcript) == [], f"{spoken(fact.text)!r} was heard as {transcript!r}"


def main() -> None:
    """How many of the sentences survive the line, over several renditions each, with this
    spoken() or the one of a git revision (to compare):
    ``python -m tests.test_spoken_line --renditions 3 [--rev REV]``."""
    import argparse
    import subprocess
    import types

    ap = argparse.ArgumentParser()
    ap.add_argument("--renditions", type=int, default=3)
    ap.add_argument("--rev", help="read with providers/local/spoken.py as of this git revision")
    args = ap.parse_args()
    read = spoken
    if args.rev:
        source = subprocess.run(["git", "show", f"{args.rev}:providers/local/spoken.py"], check=True, capture_output=True, text=True).stdout
        module = types.ModuleType("spoken_then")
        exec(compile(source, f"{args.rev}:providers/local/spoken.py", "exec"), module.__dict__)
        read = module.spoken
    whisper = build_stt(LocalProviderConfig())
    survived = total = 0
    for fact in [*FACTS, *HARD]:
        for rendition in range(args.renditions):
            transcript = through_the_line(fact.text, whisper, rendition, read)
            lost = missing(fact, transcript)
            survived, total = survived + (not lost), total + 1
            print(f"{'ok  ' if not lost else 'LOST'} {rendition} {read(fact.text)!r} heard {transcript!r} {', '.join(lost)}", flush=True)
    print(f"{survived}/{total} survive ({len(FACTS) + len(HARD)} sentences, {args.renditions} renditions each)")


if __name__ == "__main__":
    main()
