"""A business's facts as data: opening hours per weekday (with breaks), closed days and special
dates in the business's time zone, address and directions, phone numbers by purpose, people and
their roles, services and prices, FAQ entries. ``[profiles.NAME.business]`` in config.toml; the
free-text ``facts`` of a profile are read into the same structure where they can be
(providers/facts/text.py). Answers about what this holds come from it (providers/facts/rules.py),
and whatever the LLM says is checked against it (providers/facts/verify.py)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import dataclass
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from providers.config import ConfigSection

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

# "8:00-12:00, 13:00-18:00", "8am-6pm", "8 am to 6 pm", "7:30 am - 5:30 pm", "18:00-02:00" (past
# midnight), "closed"
_CLOCK = r"(\d{1,2})(?:[:.](\d{2}))?\s*(a\.?m\.?|p\.?m\.?)?"
_RANGE = re.compile(rf"^\s*{_CLOCK}\s*(?:-|–|to|until|till)\s*{_CLOCK}\s*$", re.I)
_CLOSED = {"closed", "close", "shut", "none", "-"}


class HoursError(ValueError):
    pass


@dataclass(frozen=True, order=True)
class Interval:
    """Open from ``opens`` to ``closes`` (minutes after midnight; ``closes`` may pass 24*60: open past
    midnight)."""

    opens: int
    closes: int

    def contains(self, minute: int) -> bool:
        return self.opens <= minute < self.closes

    def __str__(self) -> str:
        return f"{clock_text(self.opens)} to {clock_text(self.closes)}"


def _minutes(hour: str, minute: str | None, half: str | None, *, other_half: str | None = None) -> int:
    h, m = int(hour), int(minute or 0)
    half = (half or other_half or "").lower().replace(".", "")
    if m >= 60 or h > 24 or (half and not 1 <= h <= 12):
        raise HoursError(f"{hour}:{minute or '00'} {half} is not a time of day")
    if half == "pm" and h != 12:
        h += 12
    elif half == "am" and h == 12:
        h = 0
    return h * 60 + m


def parse_range(text: str) -> Interval:
    m = _RANGE.match(text)
    if not m:
        raise HoursError(f"{text.strip()!r} is not a range of hours like 8:00-18:00 or 9am-1pm")
    h1, m1, a1, h2, m2, a2 = m.groups()
    # "9-5pm": the first time takes the second's half when that keeps it before the second
    opens = _minutes(h1, m1, a1)
    closes = _minutes(h2, m2, a2)
    if a1 is None and a2 is not None and a2.lower().startswith("p"):
        as_pm = _minutes(h1, m1, None, other_half=a2)
        if as_pm < closes:
            opens = as_pm
    twelve_hour = not (h1.startswith("0") or h2.startswith("0"))  # "11:00-01:00" is 24-hour: past midnight
    if a2 is None and a1 is None and twelve_hour and closes <= opens and int(h2) <= 12 and closes + 12 * 60 > opens:
        closes += 12 * 60  # "8-6": 8 to 18
    if closes <= opens:
        closes += 24 * 60  # past midnight
    return Interval(opens, closes)


def parse_hours(text: str) -> tuple[Interval, ...]:
    """A day's hours: ``closed`` (no intervals) or ranges separated by commas or ``and``."""
    t = text.strip().lower()
    if t in _CLOSED:
        return ()
    parts = [p for p in re.split(r",|;|\band\b", t) if p.strip()]
    spans = tuple(sorted(parse_range(p) for p in parts))
    for a, b in itertools.pairwise(spans):
        if b.opens < a.closes:
            raise HoursError(f"{text.strip()!r}: the ranges overlap")
    return spans


def hours_text(spans: tuple[Interval, ...]) -> str:
    def end(minute: int) -> str:
        return "24:00" if minute == 24 * 60 else clock_text(minute, hhmm=True)

    return "closed" if not spans else ", ".join(f"{clock_text(s.opens, hhmm=True)}-{end(s.closes)}" for s in spans)


def clock_text(minute: int, *, hhmm: bool = False) -> str:
    """``9 am``, ``5:30 pm``, ``noon``, ``midnight`` (or ``09:00`` with hhmm)."""
    minute %= 24 * 60
    h, m = divmod(minute, 60)
    if hhmm:
        return f"{h:02d}:{m:02d}"
    if minute == 0:
        return "midnight"
    if minute == 12 * 60:
        return "noon"
    half = "am" if h < 12 else "pm"
    h12 = h % 12 or 12
    return f"{h12} {half}" if m == 0 else f"{h12}:{m:02d} {half}"


class SpecialDay(ConfigSection):
    date: dt.date
    hours: str = "closed"  # like a weekday's: "closed" or "10:00-14:00"
    note: str = ""  # "Christmas Day"

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str) -> str:
        parse_hours(v)
        return v

    @property
    def spans(self) -> tuple[Interval, ...]:
        return parse_hours(self.hours)


class Person(ConfigSection):
    name: str = Field(min_length=2)  # "Dr. Maria Lopez"
    role: str = ""  # "dentist"
    note: str = ""  # "works Mondays and Thursdays"


class Service(ConfigSection):
    name: str = Field(min_length=2)  # "cleaning"
    aliases: list[str] = []  # other ways callers say it: "teeth cleaning", "hygiene visit"
    price: float | None = Field(None, ge=0)  # in the business's currency; None: no fixed price
    price_note: str = ""  # "from", "per hour", "plus parts"
    note: str = ""  # "takes about 45 minutes"

    def names(self) -> list[str]:
        return [self.name, *self.aliases]


class Faq(ConfigSection):
    questions: list[str] = Field(min_length=1)  # the ways callers ask it
    answer: str = Field(min_length=1)


class Business(ConfigSection):
    """``[profiles.NAME.business]``: the facts a caller may ask about, as data."""

    name: str = ""
    timezone: str = ""  # IANA zone the hours are in ("America/New_York"); "": this machine's zone
    currency: str = "USD"  # USD, EUR, GBP: how prices are said
    hours: dict[Weekday, str] = {}  # "monday" = "8:00-12:00, 13:00-18:00" or "closed"; a day not given: not known
    special_days: list[SpecialDay] = []  # holidays and dates with other hours
    holidays_closed: bool = False  # closed on public holidays (which ones: special_days)
    address: str = ""
    directions: str = ""  # parking, the entrance, public transport
    phones: dict[str, str] = {}  # purpose -> number: main, emergency, fax, towing...
    email: str = ""
    website: str = ""
    people: list[Person] = []
    services: list[Service] = []
    faq: list[Faq] = []

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if not v:
            return v
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (an IANA name like Europe/Berlin)") from None
        return v

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if v.upper() not in CURRENCIES:
            raise ValueError(f"currency {v!r}: one of {', '.join(CURRENCIES)}")
        return v.upper()

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: dict[str, str]) -> dict[str, str]:
        for day, text in v.items():
            try:
                parse_hours(text)
            except HoursError as e:
                raise ValueError(f"{day}: {e}") from None
        return v

    @field_validator("phones")
    @classmethod
    def _phones(cls, v: dict[str, str]) -> dict[str, str]:
        for purpose, number in v.items():
            if len(re.sub(r"\D", "", number)) < 3:
                raise ValueError(f"{purpose}: {number!r} is not a phone number")
        return v

    @model_validator(mode="after")
    def _dates_unique(self) -> Business:
        seen = [d.date for d in self.special_days]
        if len(seen) != len(set(seen)):
            raise ValueError("special_days: a date is given twice")
        return self

    # ---- questions about the data
    @property
    def zone(self) -> dt.tzinfo:
        # A PBX's own clock is most often set to the site's zone: the default when none is given.
        return ZoneInfo(self.timezone) if self.timezone else dt.datetime.now().astimezone().tzinfo or dt.timezone.utc

    def is_empty(self) -> bool:
        return not (self.name or self.hours or self.special_days or self.address or self.directions or self.phones
                    or self.email or self.website or self.people or self.services or self.faq)

    def weekly(self, day: str) -> tuple[Interval, ...] | None:
        """A weekday's usual hours; None: the data does not say."""
        text = self.hours.get(day)  # type: ignore[call-overload]
        return None if text is None else parse_hours(text)

    def special(self, date: dt.date) -> SpecialDay | None:
        return next((d for d in self.special_days if d.date == date), None)

    def hours_on(self, date: dt.date) -> tuple[Interval, ...] | None:
        """The hours of a date (a special date's, else its weekday's); None: not known."""
        sp = self.special(date)
        if sp is not None:
            return sp.spans
        return self.weekly(WEEKDAYS[date.weekday()])

    def local(self, now: dt.datetime) -> dt.datetime:
        return now.astimezone(self.zone)

    def open_at(self, now: dt.datetime) -> bool | None:
        """Open at ``now`` (aware); None: not known. Counts yesterday's hours past midnight."""
        t = self.local(now)
        minute = t.hour * 60 + t.minute
        today = self.hours_on(t.date())
        yesterday = self.hours_on(t.date() - dt.timedelta(days=1))
        if yesterday and any(s.contains(minute + 24 * 60) for s in yesterday):
            return True
        if today is None:
            return None
        return any(s.contains(minute) for s in today)

    def all_times(self) -> set[int]:
        """Every opening and closing time the data holds (minutes after midnight, mod a day)."""
        out: set[int] = set()
        texts = [*self.hours.values(), *(d.hours for d in self.special_days)]
        for text in texts:
            for s in parse_hours(text):
                out |= {s.opens % (24 * 60), s.closes % (24 * 60)}
        return out

    def prices(self) -> set[float]:
        return {s.price for s in self.services if s.price is not None}

    def phone_digits(self) -> set[str]:
        return {re.sub(r"\D", "", n) for n in self.phones.values()}

    def describe(self) -> str:
        """The data as lines of plain text, for the LLM's instructions (what the rules do not answer
        it phrases from these)."""
        lines = [f"Name: {self.name}"] if self.name else []
        if self.hours:
            days = [f"{d.capitalize()} {_spoken_hours(parse_hours(self.hours[d]))}" for d in WEEKDAYS if d in self.hours]  # type: ignore[index]
            lines.append("Opening hours: " + "; ".join(days) + ".")
        for sd in self.special_days:
            lines.append(f"{sd.date:%B %d, %Y}{' (' + sd.note + ')' if sd.note else ''}: {_spoken_hours(sd.spans)}.")
        if self.holidays_closed:
            lines.append("Closed on public holidays.")
        if self.address:
            lines.append(f"Address: {self.address}.")
        if self.directions:
            lines.append(f"Directions: {self.directions}")
        for purpose, number in self.phones.items():
            lines.append(f"Phone ({purpose}): {number}.")
        if self.email:
            lines.append(f"Email: {self.email}.")
        if self.website:
            lines.append(f"Website: {self.website}.")
        for p in self.people:
            lines.append(f"{p.name}{', ' + p.role if p.role else ''}{' (' + p.note + ')' if p.note else ''}.")
        for sv in self.services:
            price = "free" if sv.price == 0 else (f"{sv.price_note + ' ' if sv.price_note else ''}{money_text(sv.price, self.currency)}" if sv.price is not None else "")
            lines.append(f"{sv.name.capitalize()}{': ' + price if price else ''}{' (' + sv.note + ')' if sv.note else ''}.")
        for f in self.faq:
            lines.append(f"Q: {f.questions[0]} A: {f.answer}")
        return "\n".join(lines)

    def merged(self, other: Business) -> Business:
        """This, with what ``other`` (the facts read from free text) holds where this has nothing."""
        mine = self.model_dump(exclude_defaults=True)
        theirs = other.model_dump(exclude_defaults=True)
        for key, value in theirs.items():
            if key not in mine:
                mine[key] = value
            elif isinstance(value, dict) and isinstance(mine[key], dict):
                mine[key] = value | mine[key]
        return Business.model_validate(mine)


def _spoken_hours(spans: tuple[Interval, ...]) -> str:
    return "closed" if not spans else " and ".join(str(s) for s in spans)


CURRENCIES: dict[str, tuple[str, str, str]] = {
    # code: (symbol, one, many)
    "USD": ("$", "dollar", "dollars"),
    "CAD": ("$", "dollar", "dollars"),
    "AUD": ("$", "dollar", "dollars"),
    "EUR": ("€", "euro", "euros"),
    "GBP": ("£", "pound", "pounds"),
}


def money_text(amount: float, currency: str) -> str:
    symbol, _, _ = CURRENCIES[currency]
    return f"{symbol}{amount:.0f}" if amount == int(amount) else f"{symbol}{amount:.2f}"
