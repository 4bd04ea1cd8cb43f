"""Text as a person would say it, for Piper: no markup or emoji, and numbers read the way a
receptionist reads them. Measured with the voice's own phonemizer (espeak-ng): unchanged, "$14"
is read "dollar fourteen", "555 0199" "five hundred fifty-five zero one nine nine", "10:00 pm" "ten
zero zero p m", "17:30" "seventeen thirty", "**Yes**" "asterisk asterisk yes", "9-5" "nine dash
five", "9 am-1 pm" "nine a m one p m" (the dash is silent), "Oak Ave." "oak ah-vay", "Rd." "r d",
and "St." or "Dr." with a period end the sentence there ("saint. | Mary's").

What stays as written because espeak reads it right: "9 am" ("nine a m": spelling it "a m" makes
the "a" an article, "nine uh m"), whole numbers ("1250" is "one thousand two hundred fifty").
What espeak reads right but the phone line blurs, measured by tests/test_spoken_line.py (Piper →
8 kHz u-law → Whisper): 13-19 ("four-teen"), the cents after a pause ("12 euros, 50 cents"), a
unit's letter ("Suite 3 B, at the back")."""

from __future__ import annotations

import re
import unicodedata

from providers.facts.schema import clock_text

_DAYS = {"mon": "Monday", "tue": "Tuesday", "tues": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "thur": "Thursday",
         "thurs": "Thursday", "fri": "Friday", "sat": "Saturday", "sun": "Sunday"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence")}

_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_MARKS = re.compile(r"(\*\*|__|\*|`+|~~)")
_HEADING = re.compile(r"^\s*#{1,6}\s+", re.M)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.M)
_MONEY = re.compile(r"([$€£])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{2}))?")
# Phone numbers: 555 0199, 555-0142, (555) 123-4567, +49 151 1234567. Spoken digit by digit.
_PHONE = re.compile(r"(?<![\w.])(\+?\(?\d{1,5}\)?(?:[ .-]\d{2,8}){1,4})(?!\w|[.,]\d)")
# "9 a.m.", "9AM", "9 P.M": one form, "9 am", which espeak reads "nine a m"; a period that also
# ends the sentence stays.
_HALF = re.compile(r"(?<=\d)\s?([AaPp])\.?\s?([Mm])\b(\.?)(?=(\s+[A-Z]|\s*$)?)")
# A clock time with no am/pm after it; 24-hour when its hour is 13-24, 0 or written 08, or in a
# range of such times ("08:00-12:00, 13:00-18:00", as hours are written in the profile).
_CLOCK = r"(?<![\d:.])(\d{1,2}):([0-5]\d)(?![\d:]|\s?[AaPp]\.?[Mm]\b)"
_CLOCK_RANGE = re.compile(rf"{_CLOCK}\s*[-–]\s*{_CLOCK}")
_CLOCK_24 = re.compile(_CLOCK)
_TIME_OCLOCK = re.compile(r"\b(\d{1,2}):00\b")
_TIME_OH = re.compile(r"\b(\d{1,2}):0(\d)\b")
_DAY = r"(Mon|Tue|Tues|Wed|Thu|Thur|Thurs|Fri|Sat|Sun)\.?"
_DAY_RANGE = re.compile(rf"\b{_DAY}\s*(?:[-–]|\bto\b|\bthrough\b)\s*{_DAY}(?!\w)")
_DAY_HOURS = re.compile(rf"\b{_DAY}(?=:?\s*\d)")  # "Sat 10-12", "Sun: 9 am": a day, not "sat" or the sun
# A range: "9-5", "9 am - 1 pm", "11:30-noon". Said "to" (espeak says "dash", or nothing).
_RANGE = re.compile(r"(\d|\b[ap]m|\bnoon|\bmidnight)\s*[-–]\s*(?=\d|noon\b|midnight\b)")
# 13-19 alone: espeak stresses "FOURteen" as it does "FORty", and over the line Whisper heard
# "14 Harbour Street" wrong in 5 renditions of 6 ("Fording Harbor Street"), "14 dollars" in 2
# ("$40", "$1"); "four-teen" (both stressed, as a person says it to be understood) in none. Not a
# clock's minutes: "11 fif-teen am and" lost its "am" in 3 of 3.
_TEEN = re.compile(r"(?<![\w.,:])(1[3-9])(?!\w|[.,:]\d)")
_TEENS = {"13": "thir-teen", "14": "four-teen", "15": "fif-teen", "16": "six-teen", "17": "seven-teen", "18": "eigh-teen",
          "19": "nine-teen"}
# A unit's letter ("Suite 3B at the back") runs into the next word: "three beat at".
_UNIT_LETTER = re.compile(r"\b((?:Suite|Unit|Apartment|Room|Flat|Building|Office|Bay|Gate|Booth) \d+)([A-Z])\b(?= [a-z])")

# Abbreviations in addresses. A street type after the street's name ("14 Harbour St.", "Oak
# Ave."): the word, and the period only where it also ends the sentence.
_STREET_TYPES = {"st": "Street", "ave": "Avenue", "av": "Avenue", "rd": "Road", "blvd": "Boulevard", "dr": "Drive",
                 "ln": "Lane", "hwy": "Highway", "ct": "Court", "sq": "Square", "pkwy": "Parkway", "pl": "Place"}
_NAME = r"(?:[A-Z][\w'’-]*|\d+(?:st|nd|rd|th))"  # a capitalized word or an ordinal ("5th")
_STREET = re.compile(rf"\b({_NAME}) ({'|'.join(k.capitalize() for k in _STREET_TYPES)})\b(\.)?(,)?")
# "St." and "Dr." before a name are "Saint" and "Doctor" ("St. Mary's Rd.", "Dr. Patel"), unless a
# street's name comes before them ("14 Main St. We open at 9").
_TITLE = re.compile(r"\b(St|Dr)\b\.?(?= [A-Z])")
_TITLES = {"St": "Saint", "Dr": "Doctor"}
_LABELS = [  # before a number only: "Ste 200", "Apt 4", "No. 5", "ext. 12"
    (re.compile(r"\bSte\.?(?= ?\d)"), "Suite"),
    (re.compile(r"\bApt\.?(?= ?\d)"), "Apartment"),
    (re.compile(r"\b[Nn]o\.(?= ?\d)"), "number"),
    (re.compile(r"\b[Ee]xt\.?(?= ?\d)"), "extension"),
]


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    cents = int(m.group(3) or 0)
    words = [f"{whole} {one if whole == 1 else many}"] if whole or not cents else []
    if cents:
        words.append(f"{cents} {sub_one if cents == 1 else sub_many}")
    # "12 euros, 50 cents": with no pause after it Whisper heard "euros" as "years" over the line
    # in 3 renditions of 6, with "and" in 1, with the comma in none.
    return ", ".join(words)


def _phone(m: re.Match[str]) -> str:
    raw = m.group(1)
    digits = re.sub(r"\D", "", raw)
    if len(digits) < 7:
        return raw  # a range or a plain number, not a phone number
    groups = [g for g in re.split(r"[^\d+]+", raw) if g.strip("+")]
    spoken = ", ".join(" ".join(g.lstrip("+")) for g in groups)
    return ("plus " if raw.startswith("+") else "") + spoken


def _half(m: re.Match[str]) -> str:
    ends = m.group(3) and m.group(4) is not None
    return f" {m.group(1).lower()}m" + ("." if ends else "")


def _is_24h(hour: str) -> bool:
    return int(hour) >= 13 or int(hour) == 0 or hour.startswith("0")


def _clock(hour: str, minute: str) -> str:
    return clock_text(int(hour) * 60 + int(minute))


def _clock_range(m: re.Match[str]) -> str:
    h1, m1, h2, m2 = m.groups()
    if not (_is_24h(h1) or _is_24h(h2)):
        return m.group(0)  # "9:00-11:30": could be either clock; left as it is
    return f"{_clock(h1, m1)} to {_clock(h2, m2)}"


def _clock_24(m: re.Match[str]) -> str:
    return _clock(m.group(1), m.group(2)) if _is_24h(m.group(1)) else m.group(0)


def _street(m: re.Match[str]) -> str:
    name, kind, period, comma = m.groups()
    rest = m.string[m.end():]
    if kind in _TITLES and not comma and re.match(r" [A-Z]", rest):
        # "Ask Dr. Patel", "Call Dr Patel": the word before opens the sentence, so it is no street's
        # name; a title, for _TITLE.
        before = m.string[: m.start(1)]
        if not before.strip() or re.search(r"[.!?:]\s*$", before):
            return m.group(0)
    ends = period and not comma and (not rest.strip() or re.match(r"\s+[A-Z]", rest))
    return f"{name} {_STREET_TYPES[kind.lower()]}" + ("." if ends else "") + (comma or "")


def _abbreviations(t: str) -> str:
    for pattern, word in _LABELS:
        t = pattern.sub(word, t)
    t = _STREET.sub(_street, t)
    return _TITLE.sub(lambda m: _TITLES[m.group(1)], t)


def _not_symbol(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return not (cat in ("So", "Sk", "Cs", "Co") or ch in "\u200d\ufe0f\ufe0e")


def spoken(text: str) -> str:
    """``text`` as it should be read aloud."""
    t = _LINK.sub(r"\1", text)
    t = _URL.sub("our website", t)
    t = _HEADING.sub("", t)
    t = _BULLET.sub("", t)
    t = _MARKS.sub("", t)
    # Lines (a list the model wrote anyway) become sentences.
    t = re.sub(r"(?<![.!?,:;])\s*\n+\s*", ". ", t.strip())
    t = "".join(ch for ch in t if _not_symbol(ch))
    t = _abbreviations(t)
    t = _MONEY.sub(_money, t)
    t = _HALF.sub(_half, t)
    t = _CLOCK_RANGE.sub(_clock_range, t)
    t = _CLOCK_24.sub(_clock_24, t)
    t = _PHONE.sub(_phone, t)
    t = _TIME_OCLOCK.sub(r"\1", t)
    t = _TIME_OH.sub(r"\1 oh \2", t)
    t = _DAY_RANGE.sub(lambda m: f"{_DAYS[m.group(1).lower()]} to {_DAYS[m.group(2).lower()]}", t)
    t = _DAY_HOURS.sub(lambda m: _DAYS[m.group(1).lower()], t)
    t = _RANGE.sub(r"\1 to ", t)
    t = _TEEN.sub(lambda m: _TEENS[m.group(1)], t)
    t = _UNIT_LETTER.sub(r"\1 \2,", t)
    t = t.replace("24/7", "24 7").replace("&", " and ").replace("#", " number ")
    return re.sub(r"\s+", " ", t).strip()
