"""What a profile's free-text facts state about hours, days, prices, phone numbers and names, read
into the same structure as ``[profiles.NAME.business]`` (shown by check-config for the operator to
confirm) so that answers are held to it too.

Best effort, never wrong: a wrong read would have the checker enforce a wrong fact, so whatever is
ambiguous (a day given two different ways, "until 8 on Thursdays", "6 to 10" without am or pm, a
price with a condition) is left out, and stays with the LLM as free text."""

from __future__ import annotations

import datetime as dt
import re
from typing import Callable
from dataclasses import dataclass, field

from providers.facts.schema import WEEKDAYS, Business, HoursError, Interval, Person, Service, hours_text, parse_hours, parse_range

# A sentence ends at . ! ? before a capital, or at a line break; not after a title or a day's abbreviation.
_SENTENCE_END = re.compile(r"(?<!\bDr)(?<!\bMr)(?<!\bMs)(?<!\bMrs)(?<!\bSt)(?<!\bProf)(?<!\bMon)(?<!\bTue)(?<!\bWed)(?<!\bThu)"
                           r"(?<!\bFri)(?<!\bSat)(?<!\bSun)(?<!\bTues)(?<!\bThurs)[.!?]+\s+(?=[A-Z\"'(])|\s*\n\s*")

# ---- hours: each sentence about them is read as a stream of tokens (days, ranges, "closed"...)
_DAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday|mon|tues|tue|wed|thurs|thur|thu|fri|sat|sun)s?\b\.?"
_DAY_ITEM = rf"{_DAY}(?:\s*(?:-|–|—|to|through|thru|till|until)\s*{_DAY})?"
_DAYS = (rf"m\s*[-–]\s*f\b|(?:on\s+)?{_DAY_ITEM}(?:\s*(?:,\s*and|,|and|&|\+)\s*(?:on\s+)?{_DAY_ITEM})*"
         r"|every\s*day|daily|(?:7|seven)\s+days\s+a\s+week|all\s+week|(?:every\s+|on\s+)?weekdays?|(?:on\s+|at\s+)?(?:the\s+)?weekends?")
_CLK = r"(?:12\s*noon|noon|midday|midnight|\d{1,2}(?:[:.]\d{2})?(?:\s*[ap]\.?m\b\.?)?)"
_STRICT_CLK = r"(?:noon|midnight|\d{1,2}(?::\d{2}\s*(?:[ap]\.?m\b\.?)?|\s*[ap]\.?m\b\.?|\s+o'clock))"
_MONTHS = "january|february|march|april|may|june|july|august|september|october|november|december"
# "30 to 40 minutes", "3 to 12 years", "1 to 14 August": numbers, not hours
_UNITS = rf"(?:minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|miles?|km|people|persons|guests|percent|dollars?|euros?|pounds?|{_MONTHS})\b|%"
_RANGE_ENDS = re.compile(rf"(?:between\s+)?(?:from\s+)?({_CLK})\s*(?:-|–|—|to|until|till|til|and)\s*({_CLK})", re.I)
# Something else's hours: what follows it in the sentence is not when the business is open.
_OTHER = (r"deliver(?:y|ies|s)?|kitchen|bar|happy\s+hour|breakfast|brunch|lunch|dinner|tow(?:ing)?|emergenc(?:y|ies)|phones?|"
          r"call(?:s|ing)?|works?|working|available|visit(?:s|ing)?|pick-?ups?|collections?|drive-?thr(?:u|ough)|appointments?|branch")
_TOKEN = re.compile(
    r"(?P<brk>\b(?:lunch|midday)\s*break|\b(?:closed|shut)\s+(?:for|at|over|during)\s+lunch(?:time)?)"
    r"|(?P<hol>\b(?:public|bank|national|federal|statutory|legal)\s+holidays?\b|(?<=and )holidays\b|(?<=& )holidays\b)"
    r"|(?P<allweek>\b24/7)|(?P<allday>\bopen\s+24\s*(?:hours|hrs|h)\b)"
    r"|(?P<closed>\b(?:closed|shut)\b)"
    r"|(?P<except>\b(?:except|excluding|apart\s+from|other\s+than|besides)\b)"
    r"|(?P<irregular>\b(?:every\s+(?:other|second|third)|alternate|first|second|third|fourth|last)\b)"
    rf"|(?P<other>\b(?:{_OTHER})\b)"
    r"|(?P<open>\bopen(?:s|ing)?\b|\bhours\b|\bopening\s+times\b)"
    rf"|(?P<days>\b(?:{_DAYS}))"
    rf"|(?P<range>(?<![\d$€£:.,])(?:(?:from\s+)?{_CLK}\s*(?:-|–|—|to|until|till|til)\s*{_CLK}|between\s+{_CLK}\s+and\s+{_CLK})"
    rf"(?!\s*(?:{_UNITS}))(?![\d:.]?\d))"
    rf"|(?P<time>(?<![\d$€£:.,])(?:(?:until|till|til)\s+{_CLK}|(?:(?:from|after|before|at)\s+)?{_STRICT_CLK}))",
    re.I)

# Hours for a season, a month or a while: the weekly hours the rest states may not hold all year.
_SEASONAL = re.compile(rf"\b(?:{_MONTHS.replace('may|', '')}|summer|winter|spring|autumn|season\w*|christmas|easter|school\s+holidays|term|"
                       r"temporar\w*)\b", re.I)
# Closed on named days of the year: not hours of a season; the weekdays beside them still count
# ("Closed on Sunday, on the 4th of July and on Thanksgiving Day").
_CLOSED_ON = re.compile(r"^\W*(?:we\s+are\s+|we're\s+)?closed\b(?![^.]*\d\s*(?:am|pm|:\d\d))", re.I)
_HOLIDAY_NAMES = re.compile(
    r"\b(?:on\s+)?(?:the\s+)?(?:christmas(?:\s+(?:day|eve))?|new\s+year'?s?(?:\s+(?:day|eve))?|thanksgiving(?:\s+day)?|"
    r"easter(?:\s+(?:sunday|monday))?|good\s+friday|boxing\s+day|independence\s+day|labou?r\s+day|memorial\s+day|"
    r"\d{1,2}(?:st|nd|rd|th)?\s+of\s+[a-z]+|(?:january|february|march|april|june|july|august|september|october|november|december)\s+\d{1,2}(?:st|nd|rd|th)?)\b",
    re.I,
)
# A sentence that opens with days or a range ("Mon-Fri 8-6", "9-5 weekdays") is about the hours.
_STARTS_WITH_HOURS = re.compile(rf"[\W_]*(?:{_DAYS}|(?:from\s+)?{_CLK}\s*(?:-|–|—|to)\s*{_CLK})\b", re.I)


@dataclass
class _Hours:
    """What the hours sentences say, before it is settled per day."""

    assigned: list[tuple[frozenset[int], tuple[Interval, ...]]] = field(default_factory=list)  # () = closed
    unsure: set[int] = field(default_factory=set)  # days said in a way that is not read
    breaks: list[tuple[Interval, frozenset[int] | None]] = field(default_factory=list)  # None: every open day
    holidays_closed: bool = False


def _day_set(text: str) -> set[int]:
    t = text.lower()
    if re.search(r"every\s*day|daily|days\s+a\s+week|all\s+week", t):
        return set(range(7))
    if "weekend" in t:
        return {5, 6}
    if "weekday" in t or re.fullmatch(r"m\s*[-–]\s*f", t):
        return set(range(5))
    out: set[int] = set()
    for item in re.finditer(_DAY_ITEM, t):
        ends = [_DAY_INDEX[d[:2]] for d in re.findall(_DAY, item[0])]
        out |= {(ends[0] + i) % 7 for i in range((ends[-1] - ends[0]) % 7 + 1)}  # "Friday to Monday" wraps
    return out


_DAY_INDEX = {d[:2]: i for i, d in enumerate(WEEKDAYS)}


def _range(text: str) -> tuple[Interval, bool] | None:
    """A range of hours, and whether it is bare ("8-12": no am/pm, not 24-hour style)."""
    m = _RANGE_ENDS.search(text)
    if not m:
        return None
    ends = [re.sub(r"12\s*noon|noon|midday", "12pm", re.sub("midnight", "12am", e, flags=re.I), flags=re.I) for e in m.groups()]
    try:
        span = parse_range(f"{ends[0]} to {ends[1]}")
    except HoursError:
        return None
    hours = re.findall(r"(?<![:.\d])\d{1,2}", " ".join(ends))
    bare = not re.search(r"[ap]\.?m", " ".join(ends), re.I) and all(not h.startswith("0") and int(h) <= 12 for h in hours)
    return span, bare


def _spans(ranges: list[tuple[Interval, bool]]) -> tuple[Interval, ...] | None:
    """A day's intervals from its ranges as written; None where the writing leaves it open."""
    out: list[Interval] = []
    for span, bare in ranges:
        if bare and span.opens < 6 * 60:  # "1 to 6": nobody opens at 1 in the morning without saying so
            span = Interval(span.opens + 12 * 60, span.closes + 12 * 60)
        elif bare and span.opens < 7 * 60 and span.closes <= 12 * 60:  # "6 to 10": morning or evening?
            return None
        if span.closes - span.opens > 16 * 60 and span != Interval(0, 24 * 60):  # "9am-5": 20 hours? more likely a slip
            return None
        out.append(span)
    out.sort()
    if any(b.opens < a.closes for a, b in zip(out, out[1:], strict=False)):
        return None
    return tuple(out)


def _tokens(sentence: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    end = 0
    for m in _TOKEN.finditer(sentence):
        kind = m.lastgroup or ""
        if kind == "other":  # what follows is about deliveries, the kitchen, a person's days...
            if out and re.fullmatch(r"[\s(–—-]*(?:(?:by|for|with|only)\s+)*", sentence[end:m.start()], re.I):
                out.append(("qualified", m[0]))  # "Saturday 10-2 (by appointment only)": and so are those hours
            break
        end = m.end()
        if kind == "allweek":
            out += [("days", "every day"), ("range", "0:00-24:00")]
        elif kind == "allday":
            out += [("open", ""), ("range", "0:00-24:00")]
        else:
            out.append((kind, m[0]))
    return out


def _read_hours_sentence(sentence: str, h: _Hours) -> None:
    tokens = _tokens(sentence)
    about_hours = {k for k, _ in tokens} & {"open", "closed", "brk"}
    if not about_hours and not _STARTS_WITH_HOURS.match(sentence):
        # not the opening hours ("ages 3 to 12"); but a day with a time ("Late night Thursday until 9") may change that day's
        if {k for k, _ in tokens} & {"range", "time"}:
            h.unsure.update(*(_day_set(text) for kind, text in tokens if kind == "days"))
        return
    if _CLOSED_ON.match(sentence):
        sentence = _HOLIDAY_NAMES.sub(" ", sentence)
        tokens = _tokens(sentence)
    if _SEASONAL.search(sentence):
        h.unsure |= set(range(7))  # "Summer hours: ...", "closed in August", "temporarily closed"
        return
    if "?" in sentence or re.search(r"\b(?:not|never|no)\b|n't\b", sentence, re.I):
        for kind, text in tokens:  # "not open on Sundays", a quoted question: what it says of a day is not read
            h.unsure |= _day_set(text) if kind == "days" else set()
        return
    group: set[int] | None = None  # days-first: "Monday to Friday 8-6, Saturday 9-1"
    ranges: list[tuple[Interval, bool]] = []
    group_hol = False  # "Sundays and public holidays closed"
    pending: list[tuple[Interval, bool]] = []  # range-first: "9am to 5pm Monday to Friday"
    closing = breaking = unsure_next = except_next = False
    paired: set[int] = set()  # days given the ranges before them
    last_break: Interval | None = None
    recent: set[int] = set()  # the days last named

    def close_group() -> None:
        nonlocal group, ranges, group_hol
        if group is not None:
            spans = _spans(ranges) if ranges else None
            if spans is None:
                h.unsure |= group  # days without hours of their own: "except Wednesday", "Saturday mornings"
            else:
                h.assigned.append((frozenset(group), spans))
        group, ranges, group_hol = None, [], False

    for kind, text in tokens:
        after_break, last_break = last_break, None
        if kind == "days":
            days = _day_set(text)
            recent = set(days)
            if unsure_next or except_next:
                h.unsure |= days
                unsure_next = except_next = False
            if closing:  # "closed on Sunday"
                h.assigned.append((frozenset(days), ()))
            elif after_break is not None:  # "lunch break 12 to 1 on weekdays"
                h.breaks[-1] = (after_break, frozenset(days))
            elif pending:
                spans = _spans(pending)
                h.assigned += [(frozenset(days), spans)] if spans else []
                h.unsure |= set() if spans else days
                paired |= days
                pending = []
            elif group is not None and not ranges:
                group |= days  # "Saturday, Sunday closed"
            else:
                close_group()
                group = days
        elif kind == "hol":
            if closing:
                h.holidays_closed = True
            else:  # "Sundays and bank holidays closed"; "Sun 10-1, bank holidays 2-4": that range is no weekday's
                if group is None or ranges:
                    close_group()
                    group = set()
                group_hol = True
        elif kind == "closed":
            if group is not None and not ranges:  # "Sunday closed"
                h.assigned.append((frozenset(group), ()))
                h.holidays_closed |= group_hol
                group, group_hol = None, False
            else:
                closing = True
            continue
        elif kind == "brk":
            breaking = True
        elif kind == "range":
            read = _range(text)
            if read is None:
                h.unsure |= group or set()
            elif breaking or closing:  # "lunch break 12 to 1", "closed 12-1"
                span = _spans([read])
                if span and span[0].closes - span[0].opens <= 2 * 60:
                    h.breaks.append((span[0], None))
                    last_break = span[0]
                breaking = False
            elif group is not None:
                ranges.append(read)
            else:
                pending.append(read)
        elif kind == "except":  # "weekdays except Wednesday": not with the others' hours
            except_next = True
        elif kind == "irregular":  # "every other Saturday", "the first Monday of the month"
            unsure_next = True
        elif kind == "qualified":
            h.unsure |= recent
        elif kind == "time":  # "until 8 pm on Thursdays": that day's hours are not all said
            if group is not None and not ranges:
                h.unsure |= group
            else:
                unsure_next = True
        closing = closing and kind in ("days", "hol")
    if unsure_next and group is not None:
        h.unsure |= group  # "Monday to Friday 9-5 (until 8 pm)"
    if pending:  # "[?] 7-6, Sat 8-2": the ranges were the days' before them, not after
        h.unsure |= paired
    close_group()


def _day_text(spans: tuple[Interval, ...]) -> str | None:
    """The schema's text for a day's intervals, one that reads back the same: "11:00-00:00" reads
    as 11 to noon, so midnight is 24:00, and "11:00-01:00" is said with am and pm."""
    def ampm(minute: int) -> str:
        hour, m = divmod(minute % (24 * 60), 60)
        return f"{hour % 12 or 12}:{m:02d}{'am' if hour < 12 else 'pm'}"

    hhmm = hours_text(spans)
    for text in (hhmm, hhmm.replace("-00:00", "-24:00"), ", ".join(f"{ampm(s.opens)}-{ampm(s.closes)}" for s in spans)):
        if parse_hours(text) == spans:
            return text
    return None


def _settle(h: _Hours) -> dict[str, str]:
    """Per day: the narrowest statement wins ("every day 11-11" then "closed Mondays"); two
    different ones as narrow leave the day out."""
    out: dict[str, str] = {}
    for day in range(7):
        said = [(len(days), spans) for days, spans in h.assigned if day in days]
        if not said or day in h.unsure:
            continue
        narrowest = min(n for n, _ in said)
        values = {spans for n, spans in said if n == narrowest}
        if len(values) != 1:
            continue
        spans = values.pop()
        for brk, days in h.breaks:  # a break splits an open day's hours it falls inside
            if days is not None and day not in days:
                continue
            inside = [s for s in spans if s.opens < brk.opens and brk.closes < s.closes]
            if inside:
                s = inside[0]
                spans = tuple(sorted({*spans} - {s} | {Interval(s.opens, brk.opens), Interval(brk.closes, s.closes)}))
        text = _day_text(spans)
        if text is not None:
            out[WEEKDAYS[day]] = text
    return out


# ---- the address: a number and capitalised words ending in a street word, then maybe a town
_STREET = (r"(?:Street|St\.?|Road|Rd\.?|Avenue|Ave\.?|Lane|Drive|Boulevard|Blvd\.?|Way|Place|Square|Court|Parkway|Highway|Terrace|Close|"
           r"Crescent|Row|Plaza|Walk|Gardens|Parade|Mews|Grove|Circle|Broadway|Hill)")
_NOT_TOWN = r"(?!(?:Open|Closed|Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|We|Our|Call|Phone|Tel)\b)"
_TOWN = rf"(?:,\s*(?:\d{{4,5}}\s+)?{_NOT_TOWN}[A-Z][a-z]+(?:\s+[A-Z][a-z]+){{0,2}}(?:,?\s+(?:[A-Z]{{2}}\s+\d{{5}}|[A-Z]{{1,2}}\d[A-Z\d]?\s*\d[A-Z]{{2}}))?)?"
_ADDRESS = re.compile(rf"\b\d{{1,5}}[A-Za-z]?\s+(?:(?:[A-Z][\w'’-]*|\d+(?:st|nd|rd|th))\s+){{0,4}}{_STREET}(?![\w])\.?{_TOWN}"
                      rf"|\b[A-Z][a-zäöü]+(?:straße|strasse|weg|platz|gasse|allee)\s+\d{{1,4}}[a-z]?{_TOWN}")


# Elsewhere than the first sentence, an address is the business's only where the words say so
# ("Free parking at 12 Back Lane" is the car park's).
_ADDRESS_CUE = re.compile(r"\b(?:located|address|find\s+us|we\s+are|we're|visit\s+us|based|our\s+\w+\s+is)\b[^.;]*$", re.I)


def _address(sentences: list[str]) -> str:
    found = [m[0].rstrip(". ") for i, s in enumerate(sentences) for m in _ADDRESS.finditer(s) if i == 0 or _ADDRESS_CUE.search(s[:m.start()])]
    found = list(dict.fromkeys(found))
    return found[0] if len(found) == 1 else ""  # two: branches? which one is asked about is not known


# ---- the business's name: the first sentence's leading capitalised words, before a comma or alone
_NAME = re.compile(r"^(?P<welcome>Welcome\s+to\s+)?(?P<name>[A-Z0-9][\w'’.&-]*(?:\s+(?:[A-Z0-9][\w'’.&-]*|&|and|of|the|de))*?)"
                   r"\s*(?P<end>,|$|\s+[-–—]\s+|\s+is\s+(?:a|an|the|your)\b)")
_NOT_NAME = {"open", "opening", "closed", "we", "we're", "our", "hours", "call", "free", "parking", "address", "phone", "tel", "please", "dr",
             "dr.", "mr", "mrs", "ms", "hello", "hi", "note", "with", "in", "at", "on", "for", "from", "by", "to", "as", "if", "when", "after",
             "before", "since", "this", "these", "it", "all", "each", "yes", "no", *WEEKDAYS}


def _name(first: str) -> str:
    """Said before the address, after "Welcome to", before "is a...", or alone in a short plain
    sentence; not a slogan ("Great Food, Great Prices!", "BEST PIZZA IN TOWN")."""
    m = _NAME.match(first.strip().rstrip(".!"))
    if not m:
        return ""
    words, end = m["name"].split(), m["end"].strip()
    if words[0].lower().strip(":.") in _NOT_NAME or any(w.lower() in WEEKDAYS for w in words) or re.search(r"\d{3}", m["name"]):
        return ""
    if end == ",":
        return m["name"] if _ADDRESS.match(first.strip()[m.end():].lstrip()) else ""
    if m["welcome"] or (end.startswith("is") and len(words) > 1):
        return m["name"]
    slogan = "!" in first or sum(len(w) > 2 and w.isupper() for w in words) > 1
    return m["name"] if 1 < len(words) <= 5 and not slogan else ""


# ---- phone numbers, and what for: the words around each (up to the next "or", comma or number)
_PHONE = re.compile(r"(?<![\w$€£.,:/+-])\+?(?:\(\d{1,5}\)\s?)?\d(?:[ .-]?\d){5,14}(?![\w/:%-]|[.,]\d)(?!\s*(?:dollars|euros|pounds|[$€£]))")
_PURPOSES = (  # the first that the words name wins; "" is not a phone number
    ("", r"\b(?:vat|tax|account|iban|sort\s+code|registration|licen[cs]e|reference|order\s+number|company\s+number)\b"),
    ("emergency", r"emergenc|urgent"), ("towing", r"\btow|breakdown"), ("fax", r"\bfax"),
    ("after hours", r"after[- ]hours|out[- ]of[- ]hours|outside\s+(?:of\s+)?(?:our\s+)?(?:opening|office|business)\s+hours"),
    ("booking", r"\bbook|reservation|appointment"), ("orders", r"\border|deliver|takeaway|take-away"),
)
_DATE = re.compile(r"\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d{4}[-./]\d{1,2}[-./]\d{1,2}")
_PHONE_WORDS = re.compile(r"\b(?:call|phone|telephone|tel|ring|dial|number|contact|reach|mobile|cell|text|whatsapp)\b")
_CLAUSE_BREAK = r"\b(?:or|and)\b|[,;]"


def _phones(sentences: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in sentences:
        found = [m for m in _PHONE.finditer(s) if 7 <= len(re.sub(r"\D", "", m[0])) <= 15 and not _DATE.fullmatch(m[0])]
        for i, m in enumerate(found):
            before = s[found[i - 1].end() if i else 0:m.start()]
            before = re.split(_CLAUSE_BREAK, before)[-1] if i else before
            after = re.split(_CLAUSE_BREAK, s[m.end():found[i + 1].start() if i + 1 < len(found) else len(s)])[0]
            words = f"{before} {after}".lower()
            purpose = next((p for p, pattern in _PURPOSES if re.search(pattern, words)), "main")
            if purpose == "main" and not re.search(r"[ ()+-]", m[0]) and not _PHONE_WORDS.search(words):
                continue  # "4194304": a bare run of digits is a phone number only where the words say so
            key, n = purpose, 1
            while key in out and out[key] != m[0]:
                n += 1
                key = f"{purpose} {n}"
            if purpose:
                out[key] = m[0]
    return out


# ---- people: "Dentists: Dr. Maria Lopez and Dr. James Chen", "The owner is Luigi Russo", "Tom Baker, our service manager"
_ROLE = (r"(?i:(?:(?:head|senior|junior|practice|service|office|store|shop|general|sales|parts|town|dental|deputy|chief|lead|assistant)\s+)?"
         r"(?:dentist|doctor|physician|hygienist|nurse|receptionist|manager|owner|co-owner|proprietor|chef|cook|mechanic|technician|pharmacist|"
         r"vet|veterinarian|therapist|physiotherapist|optician|optometrist|clerk|mayor|secretary|director|partner|assistant|surgeon|"
         r"orthodontist|stylist|barber|baker|accountant|lawyer|solicitor|attorney|registrar|officer|treasurer|administrator|host|sommelier|"
         r"butcher|engineer|electrician|plumber|advisor|adviser|consultant|practitioner|midwife|psychologist|trainer|instructor|teacher)s?)\b")
_TITLE = r"(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+)"
_PNAME = rf"{_TITLE}?[A-Z][a-zA-Z'’-]+(?:\s+[A-Z][a-zA-Z'’-]+){{0,2}}"
_PNAMES = rf"{_PNAME}(?:\s*(?:,\s*and|,|and|&)\s*{_PNAME})*"
_PEOPLE = (
    re.compile(rf"\b(?P<role>{_ROLE})\s*:\s*(?P<names>{_PNAMES})"),  # "Hygienist: Anna Berg"
    re.compile(rf"\b(?i:the|our)\s+(?P<role>{_ROLE})\s+(?i:is|are)\s+(?P<names>{_PNAMES})"),  # "The owner is Luigi Russo"
    re.compile(rf"(?P<names>{_PNAMES})(?:\s*,\s*|\s+(?i:is|are)\s+)(?i:the|our)\s+(?P<role>{_ROLE})"),  # "Luigi Russo is the owner"
    re.compile(r"(?P<names>\b(?:Dr|Prof)\.?\s+[A-Z][a-zA-Z'’-]+(?:\s+[A-Z][a-zA-Z'’-]+)?)"),  # "Dr. Patel": a person, the role unsaid
)
_NOT_PERSON = {"the", "our", "ask", "who", "what", "which", "where", "when", "how", "is", "are", "yes", "no", "call", "contact", "meet",
               "please", "open", "closed", "street", "road", "avenue", *WEEKDAYS, *_MONTHS.split("|")}


def _people(text: str) -> list[Person]:
    found: dict[str, Person] = {}
    for pattern in _PEOPLE:
        for m in pattern.finditer(text):
            role = re.sub(r"(?<=[^s])s$", "", (m.groupdict().get("role") or "").lower())  # "Dentists" -> "dentist"
            for name in re.split(r"\s*(?:,\s*and|,|\band\b|&)\s*", m["names"]):
                words = re.sub(r"['’]s$", "", name).split()  # "Dr. Patel's surgery"
                while words and words[0].lower() in _NOT_PERSON:
                    words.pop(0)  # "Call Luigi, our owner"
                name = " ".join(words)
                if not words or any(w.lower().strip(".") in _NOT_PERSON for w in words):
                    continue
                if pattern is _PEOPLE[0] and len(words) < 2:
                    continue  # "Parking: Free" is not a person; "Hygienist: Anna Berg" is
                known = next((k for k in found if name in k or k in name), None)
                if known is None:
                    found[name] = Person(name=name, role=role)
                elif role and not found[known].role:
                    found[known] = Person(name=known, role=role)
    return list(found.values())


# ---- prices: a clause "SERVICE costs|is|: PRICE" or "PRICE for a SERVICE", with nothing else said
_AMOUNT = r"\d{1,3}(?:,\d{3})+(?:\.\d{2})?|\d+(?:[.,]\d{1,2})?"
_MONEY = rf"(?:(?P<sym>[$€£])\s?(?P<a1>{_AMOUNT})|(?P<a2>{_AMOUNT})\s?(?P<word>dollars?|bucks|usd|euros?|eur|€|pounds?|quid|gbp|£))"
_PRICE_NOTE = r"(?P<note>\s+(?:per|an?)\s+(?:hour|person|night|day|visit|session|week|month|year)|\s+each|\s+plus\s+(?:parts|vat|tax))?"
_SVC = r"(?P<svc>[a-z][\w'’/-]*(?:\s+[\w'’/&-]+){0,4}?)"
_PRICES = (
    re.compile(rf"^(?:(?:and|but|also|plus)\s+)?(?:prices?\s*:\s*)?(?:(?:a|an|the|our|one)\s+)?(?:(?:price|cost|fee|charge)\s+(?:of|for)\s+"
               rf"(?:(?:a|an|the)\s+)?)?{_SVC}(?P<verb>\s+(?:costs?|is|are|comes\s+to)\s+(?:only\s+|just\s+)?|\s*[:=–—-]\s*|\s+)"
               rf"(?P<from>from\s+|(?:starting|starts?)\s+(?:at|from)\s+)?(?:{_MONEY}|(?P<free>free(?:\s+of\s+charge)?|no\s+charge)){_PRICE_NOTE}$", re.I),
    re.compile(rf"^(?:(?:and|but|also)\s+)?(?:we\s+charge\s+)?(?P<from>from\s+)?{_MONEY}\s+for\s+(?:(?:a|an|the|one)\s+)?{_SVC}$", re.I),
)
_CURRENCY = {"$": "USD", "dollar": "USD", "buck": "USD", "usd": "USD", "€": "EUR", "euro": "EUR", "eur": "EUR",
             "£": "GBP", "pound": "GBP", "quid": "GBP", "gbp": "GBP"}
# Words that make a clause a condition ("free for orders over 25 dollars") or not about a service;
# and what is not a service though it may be free (the FAQ's matters).
_NOT_SERVICE = {"for", "over", "under", "above", "below", "with", "within", "if", "than", "when", "while", "more", "less", "up", "minimum",
                "least", "per", "order", "orders", "spend", "total", "about", "around", "approximately", "usually", "it", "this", "that",
                "everything", "there", "we", "you", "they", "which", "what", *WEEKDAYS}
_NOT_PRICED = {"parking", "delivery", "wifi", "wi-fi", "fee", "price", "prices", "cost", "costs", "charge", "everything", "all"}


@dataclass(frozen=True)
class _Price:
    service: str
    price: float
    note: str
    currency: str | None  # None: free


def _price(clause: str) -> _Price | None:
    for pattern in _PRICES:
        m = pattern.match(clause.strip())
        if not m:
            continue
        svc = m["svc"]
        if any(w.lower() in _NOT_SERVICE for w in svc.split()) or svc.lower() in _NOT_PRICED or re.search(r"\d", svc):
            return None
        if m.groupdict().get("free") and not m["verb"].strip():
            return None  # "coffee free": not a sentence about a price
        svc = svc[0].lower() + svc[1:] if svc[1:2].islower() else svc  # "Oil change: £49"; "MOT: £45" stays
        if m.groupdict().get("free"):
            return _Price(svc, 0.0, "", None)
        amount = m["a1"] or m["a2"]
        amount = amount.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d{2})?", amount) else amount.replace(",", ".")
        unit = m["sym"] or m["word"].lower().rstrip("s")  # "Euros" -> "euro"
        note = "from" if m["from"] else re.sub(r"^an?\s", "per ", (m.groupdict().get("note") or "").strip())
        return _Price(svc, float(amount), note, _CURRENCY[unit])
    return None


def _services(sentences: list[str]) -> tuple[list[Service], str | None]:
    """The services with a price, and the currency they are in (None: not said)."""
    prices = [p for s in sentences for c in re.split(r";|,(?!\d)|\bbut\b|\band\b(?=\s+(?:a|an|the)\s)", s) if (p := _price(c.strip(" .")))]
    currencies = {p.currency for p in prices if p.currency}
    currency = next(iter(currencies)) if len(currencies) == 1 else None
    by_name: dict[str, set[_Price]] = {}
    for p in prices:
        by_name.setdefault(p.service.lower(), set()).add(p)
    out = []
    for same in by_name.values():
        p = next(iter(same))
        if len({(q.price, q.note) for q in same}) == 1 and (p.currency is None or p.currency == currency):
            out.append(Service(name=p.service, price=p.price, price_note=p.note))  # said twice differently, or in two currencies: left out
    return out, currency


# Holidays on a date a year's calendar gives: "Closed on Christmas Day" is closed on that date, this
# year and next (a movable feast such as Easter is left out: its date is not computed here).
_FIXED_HOLIDAYS: dict[str, Callable[[int], dt.date]] = {
    r"christmas\s+eve": lambda y: dt.date(y, 12, 24),
    r"christmas(?:\s+day)?": lambda y: dt.date(y, 12, 25),
    r"boxing\s+day": lambda y: dt.date(y, 12, 26),
    r"new\s+year'?s?\s+eve": lambda y: dt.date(y, 12, 31),
    r"new\s+year'?s?(?:\s+day)?": lambda y: dt.date(y, 1, 1),
    r"(?:independence\s+day|(?:the\s+)?4th\s+of\s+july|july\s+4(?:th)?)": lambda y: dt.date(y, 7, 4),
    # the fourth Thursday of November
    r"thanksgiving(?:\s+day)?": lambda y: dt.date(y, 11, 22 + (3 - dt.date(y, 11, 1).weekday()) % 7),
}


def _closed_holidays(sentences: list[str], today: dt.date) -> list[dict[str, str]]:
    out: dict[dt.date, str] = {}
    for sentence in sentences:
        if not _CLOSED_ON.match(sentence):
            continue
        for pattern, date_of in _FIXED_HOLIDAYS.items():
            m = re.search(rf"\b{pattern}\b", sentence, re.I)
            if m:
                sentence = sentence[: m.start()] + " " + sentence[m.end():]  # "Christmas Eve" is not Christmas Day too
                for year in (today.year, today.year + 1):
                    out.setdefault(date_of(year), m.group(0))
    return [{"date": d.isoformat(), "hours": "closed", "note": note} for d, note in sorted(out.items())]


def read_facts(text: str) -> Business:
    """The structure ``text`` states (best effort: what is not recognised stays free text)."""
    sentences = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    if not sentences:
        return Business()
    hours = _Hours()
    for sentence in sentences:
        _read_hours_sentence(sentence, hours)
    services, currency = _services(sentences)
    email = re.search(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", text)
    website = re.search(r"\b(?:https?://|www\.)[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}\b(?:/[\w./-]*\w)?", text)
    fields = dict(name=_name(sentences[0]), address=_address(sentences), hours=_settle(hours), holidays_closed=hours.holidays_closed,
                  special_days=_closed_holidays(sentences, dt.date.today()),
                  phones=_phones(sentences), people=_people(text), services=services, currency=currency,
                  email=email[0] if email else "", website=website[0] if website else "")
    return Business.model_validate({k: v for k, v in fields.items() if v})
