"""Text as a person would say it, for Piper: no markup or emoji, and numbers read the way a
receptionist reads them. Measured with the voice's own phonemizer (espeak-ng): unchanged, "$14"
is read "dollar fourteen", "555 0199" "five hundred fifty-five zero one nine nine", "10:00 pm" "ten
zero zero p m", "**Yes**" "asterisk asterisk yes", "9-5" "nine dash five"."""

from __future__ import annotations

import re
import unicodedata

_DAYS = {"mon": "Monday", "tue": "Tuesday", "tues": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "thurs": "Thursday",
         "fri": "Friday", "sat": "Saturday", "sun": "Sunday"}
_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "€": ("euro", "euros", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence")}

_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_MARKS = re.compile(r"(\*\*|__|\*|`+|~~)")
_HEADING = re.compile(r"^\s*#{1,6}\s+", re.M)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.M)
_MONEY = re.compile(r"([$€£])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{2}))?")
# Phone numbers: 555 0199, 555-0142, (555) 123-4567, +49 151 1234567. Spoken digit by digit.
_PHONE = re.compile(r"(?<![\w.])(\+?\(?\d{1,4}\)?(?:[ .-]\d{2,8}){1,4})(?!\w|[.,]\d)")
_TIME_OCLOCK = re.compile(r"\b(\d{1,2}):00\b")
_TIME_OH = re.compile(r"\b(\d{1,2}):0(\d)\b")
_DAY_RANGE = re.compile(r"\b(Mon|Tues?|Wed|Thu(?:rs)?|Fri|Sat|Sun)\s*[-–]\s*(Mon|Tues?|Wed|Thu(?:rs)?|Fri|Sat|Sun)\b")
_NUM_RANGE = re.compile(r"(\d)\s*[-–]\s*(\d)")


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    whole = m.group(2).replace(",", "")
    words = f"{whole} {one if whole == '1' else many}"
    cents = m.group(3)
    if cents and cents != "00":
        n = int(cents)
        words += f" {n} {sub_one if n == 1 else sub_many}"
    return words


def _phone(m: re.Match[str]) -> str:
    raw = m.group(1)
    digits = re.sub(r"\D", "", raw)
    if len(digits) < 7:
        return raw  # a range or a plain number, not a phone number
    groups = [g for g in re.split(r"[^\d+]+", raw) if g.strip("+")]
    spoken = ", ".join(" ".join(g.lstrip("+")) for g in groups)
    return ("plus " if raw.startswith("+") else "") + spoken


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
    t = _MONEY.sub(_money, t)
    t = _PHONE.sub(_phone, t)
    t = _TIME_OCLOCK.sub(r"\1", t)
    t = _TIME_OH.sub(r"\1 oh \2", t)
    t = _DAY_RANGE.sub(lambda m: f"{_DAYS[m.group(1).lower()]} to {_DAYS[m.group(2).lower()]}", t)
    t = _NUM_RANGE.sub(r"\1 to \2", t)
    t = t.replace("24/7", "24 7").replace("&", " and ").replace("#", " number ")
    return re.sub(r"\s+", " ", t).strip()
