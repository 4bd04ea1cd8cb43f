"""Answers from a business's facts as data: what a caller asks about hours, opening on a day or
now, the address, phone numbers, people, prices and the FAQ, answered from the structure (right
for today's date and time in the business's zone), without the LLM. A question the data does not
answer is left to the LLM (None).

A wrong fact is worse than no answer, so each topic answers only when every word of the question
that carries meaning is understood: "are you open for walk-ins" is not a question about hours, and
"how much is a cleaning for kids" not one about the cleaning's price."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable

from providers.facts.hours import KINDS, answer_hours, hours_of
from providers.facts.question import Asked, FactAnswer, Question, When, read_when
from providers.facts.schema import WEEKDAYS, Business, Person, Service, money_text
from providers.facts.words import STOP, content, matched, normalise, same_word, stem


__all__ = ["Asked", "FactAnswer", "answer"]


def answer(question: str, business: Business, now: dt.datetime, previous: Asked | None = None) -> FactAnswer | None:
    """The answer to ``question`` from ``business`` at ``now`` (aware), or None if the data does not
    hold it (or the question is not about it)."""
    text = normalise(question)
    local = business.local(now)
    when = read_when(text, local.date(), business)
    if not text or when is None:  # a day not known for certain ("on public holidays"): only the FAQ may say
        return _faq(Question(text, When(rest=text), local, business, previous)) if text else None
    q = Question(text, when, local, business, previous)
    if person := _named(q):  # "does Dr. Lopez work on Mondays" is about her, not the opening hours
        return _person(q, person) or _faq(q)
    # Each topic the words point to, in turn ("is parking free": not a price, the directions). On a
    # day or at a time only hours and people answer: "the price on Saturdays" may be another.
    topics = [topic for pattern, topic in _TOPICS if re.search(pattern, text) and (topic in (answer_hours, _people) or not when.timed)]
    if not topics:
        topics = [_people] if _about_people(q) else [_follow_up]
    for topic in topics:
        if found := topic(q):
            return found
    return _faq(q)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---- where, how to reach it

def _address(q: Question) -> FactAnswer | None:
    if not q.business.address or q.rest(r"address|located|location|where|street|whereabouts|find|situated|exactly"):
        return None
    return FactAnswer(f"We're at {q.business.address}.", Asked("address"))


def _directions(q: Question) -> FactAnswer | None:
    d = q.business.directions
    parking = bool(re.search(r"\bpark", q.text))
    # What the directions speak of is understood ("is there free parking" of "Free parking behind").
    said = {stem(w) for w in content(d)}
    if parking:  # the FAQ's own answer about parking first; the directions only if they speak of it
        if (faq := _faq(q)) or not re.search(r"\bpark", d.lower()):
            return faq
        left = q.rest(r"park|parking|where|car|lot|space|spaces|available|nearby|near")
    else:
        left = q.rest(r"directions?|get there|get to you|getting there|find you|bus|train|subway|metro|tram|entrance|transport|transit|reach|way")
    if not d or [w for w in left if stem(w) not in said]:
        return None
    return FactAnswer(d, Asked("directions", "parking" if parking else ""))


# ---- phone numbers, email, website

_MAIN = ("main", "office", "reception", "general", "front desk", "shop", "store")
_PURPOSE_WORDS = {"urgent": "emergency", "emergencies": "emergency", "tow": "towing"}


def _phone(q: Question) -> FactAnswer | None:
    phones = q.business.phones
    if not phones:
        return None
    left = q.rest(r"phone|phones|number|numbers|telephone|hotline|line|reach|contact|dial|ring|text|cell|mobile|landline|best|main|general|front desk")
    said = [_PURPOSE_WORDS.get(w, w) for w in left]
    found = [p for p in phones if p not in _MAIN and matched(p.replace("_", " "), said)]
    if len(found) == 1 and not [w for w in said if not any(same_word(w, k) for k in content(found[0].replace("_", " ")))]:
        return _number(found[0], phones[found[0]])
    if found or said or not re.search(r"\b(phone|telephone|numbers?|hotline)\b", q.text):
        return None  # "is there a line": a queue, not a phone line
    main = next((p for p in phones if p in _MAIN), None) or (next(iter(phones)) if len(phones) == 1 else None)
    if main is not None:
        return _number(main, phones[main])
    listed = "; ".join(f"for {p.replace('_', ' ')}, {n}" for p, n in phones.items())
    return FactAnswer(_cap(listed) + ".", Asked("phone"))


def _number(purpose: str, number: str) -> FactAnswer:
    what = "Our number" if purpose in _MAIN else f"The {purpose.replace('_', ' ')} number"
    return FactAnswer(f"{what} is {number}.", Asked("phone", purpose))


def _email(q: Question) -> FactAnswer | None:
    b = q.business
    if re.search(r"\be ?mail\b", q.text):
        return FactAnswer(f"Our email is {b.email}.", Asked("email")) if b.email and not q.rest(r"e ?mail|address|send|write") else None
    site = re.sub(r"^https?://(www\.)?", "", b.website).rstrip("/")  # as said; a URL would be read "our website"
    return FactAnswer(f"Our website is {site}.", Asked("website")) if site and not q.rest(r"website|web ?site|site|online|web|address") else None


# ---- people

_PEOPLE_WORDS = r"who|staff|team|employees?|people|works?|working|there|here|names?|have|has|anyone|someone|doctors?|physicians?|in charge|available|on duty|see"
_DOCTOR_ROLES = {"doctor", "physician", "dentist", "surgeon", "orthodontist", "pediatrician", "vet", "veterinarian", "gp", "optometrist"}


def _who(p: Person) -> str:
    return f"{p.name}, our {p.role}" if p.role else p.name


def _is_doctor(p: Person) -> bool:
    return bool(re.match(r"(dr\b|doctor\b)", p.name.lower())) or bool({stem(w) for w in content(p.role)} & {stem(r) for r in _DOCTOR_ROLES})


def _named(q: Question) -> Person | None:
    # Not the business's own name ("Miller Auto Repair" is not Bob Miller), nor a word a topic is
    # known by ("where do I park" is not about Linda Park).
    said = [w for w in q.text.split() if w not in STOP and w not in content(q.business.name) and not any(re.search(p, w) for p, _ in _TOPICS)]
    hits = [p for p in q.business.people if any(same_word(w, n) for w in said for n in content(p.name) if n not in ("doctor", "mr", "mrs", "ms", "miss", "prof"))]
    return hits[0] if len(hits) == 1 else None


def _roles(q: Question) -> set[str]:
    return {w for p in q.business.people for w in content(p.role)}


def _about_people(q: Question) -> bool:
    """The question names someone, or a role someone has ("do you have a hygienist")."""
    return _named(q) is not None or any(same_word(w, r) for w in q.text.split() if w not in STOP for r in _roles(q))


def _people(q: Question) -> FactAnswer | None:
    people = q.business.people
    if q.when.timed:
        return None  # who works on a day: the data does not say
    roles = _roles(q)
    if re.search(r"\b(when|what time|where|how(?! many)|is this|am i|are you)\b", q.text):
        return None  # "when is the inspector in", "is this the dentist": not who
    left = q.rest(_PEOPLE_WORDS)
    asked_roles = [w for w in left if any(same_word(w, r) for r in roles)]
    attributes = [w for w in left if w not in asked_roles]
    chosen = [p for p in people if not asked_roles or all(any(same_word(w, r) for r in content(p.role)) for w in asked_roles)]
    if re.search(r"\b(doctors?|physicians?)\b", q.text):
        chosen = [p for p in chosen if _is_doctor(p)]
    if not asked_roles and not attributes and not re.search(r"\b(staff|team|employees?|people|work|works|working|doctors?|physicians?)\b", q.text):
        return None  # "who am I speaking to", "who is this"
    if attributes:
        chosen = [p for p in chosen if all(any(same_word(w, n) for n in content(f"{p.role} {p.note}")) for w in attributes)]
        return FactAnswer(" ".join(f"{_who(p)}: {p.note}." for p in chosen), Asked("people")) if chosen else None
    if not chosen:
        return None
    return FactAnswer(_team(chosen), Asked("people", " ".join(asked_roles)))


def _plural(role: str) -> str:
    return role[:-1] + "ies" if role.endswith("y") else role + ("es" if re.search(r"(s|x|ch|sh)$", role) else "s")


def _team(people: list[Person]) -> str:
    """"Our dentists are Dr. Maria Lopez and Dr. James Chen, and our hygienist is Anna Berg."."""
    by_role: dict[str, list[str]] = {}
    for p in people:
        by_role.setdefault(p.role, []).append(p.name)
    parts = []
    for role, names in by_role.items():
        listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        if not role:
            parts.append(f"{listed} {'work' if len(names) > 1 else 'works'} here")
        else:
            parts.append(f"our {_plural(role)} are {listed}" if len(names) > 1 else f"our {role} is {listed}")
    return _cap(", and ".join(parts)) + "."


def _person(q: Question, p: Person) -> FactAnswer | None:
    """One person by name; about a day only if their note names weekdays ("works Mondays and Thursdays")."""
    said = _who(p)
    if [w for w in q.rest(_PEOPLE_WORDS, r"in|available|today") if not any(same_word(w, n) for n in content(f"{p.name} {p.role}"))]:
        return None  # "what time does Dr. Lopez start": more than who they are
    days = {i for i, d in enumerate(WEEKDAYS) if re.search(rf"\b{d}", p.note.lower())}
    if re.search(r"\b(when|what time|what days|which days|how)\b", q.text):  # "when is Tom in": the days their note gives
        return FactAnswer(f"{said}: {p.note}.", Asked("people", p.name)) if days and not q.when.days else None
    if q.when.timed:
        if not days or len(q.when.days) != 1 or q.when.minutes or q.when.part:
            return None
        day = q.when.days[0]
        if (q.business.hours_on(day.date) if day.date else q.business.weekly(WEEKDAYS[day.weekday])) == ():
            return FactAnswer(f"No, we're closed {day.label}.", Asked("people", p.name))
        simple = not re.search(r"\b(not|except|off|no|never|closed|alternate|other|to|through|until|mornings?|afternoons?|evenings?)\b|-", p.note.lower())
        verdict = ("Yes. " if day.weekday in days else "No. ") if simple else ""
        return FactAnswer(f"{verdict}{said}: {p.note}.", Asked("people", p.name))
    return FactAnswer(f"{said}: {p.note}." if p.note else f"{said}.", Asked("people", p.name))


# ---- prices

_PRICE_WORDS = r"how much|cost|costs|price|prices|pricing|charge|charges|fee|fees|rate|rates|pay|paying|for|free"


def _service(q: Question) -> tuple[Service, list[str]] | None:
    """The service the question names (the longest name said; two said alike: None)."""
    said = q.when.rest.split()  # all the words: a name may hold one that means little alone ("check up")
    if other := _other(q, [s.name for s in q.business.services]):
        return next(s for s in q.business.services if s.name == other), said
    best: list[tuple[int, Service, list[str]]] = []
    for s in q.business.services:
        for name in s.names():
            if (used := matched(name, said)) is not None:
                best.append((len(used), s, used))
    best.sort(key=lambda x: -x[0])
    if not best or (len(best) > 1 and best[1][0] == best[0][0] and best[1][1] is not best[0][1]):
        return None
    return best[0][1], best[0][2]


def _price(q: Question) -> FactAnswer | None:
    found = _service(q)
    if found is None:
        return None
    s, used = found
    if [w for w in q.rest(_PRICE_WORDS) if w not in used and not any(same_word(w, n) for n in content(" ".join(s.names())))]:
        return None  # "a cleaning for kids": more than the service was asked
    asked = Asked("price", s.name)
    name = _cap(s.name)
    if s.price is None:  # said so only when a note says why
        why = s.price_note or (s.note if re.search(r"\b(price|quote|depends|estimate|varies)", s.note.lower()) else "")
        return FactAnswer(f"There's no fixed price for {s.name}: {why}.", asked) if why else None
    if s.price == 0:
        return FactAnswer(f"{name} is free.", asked)
    money = money_text(s.price, q.business.currency)
    note = s.price_note.strip()
    if re.fullmatch(r"from|starting at|starts at|at least|about|around|approximately|up to", note, re.I):
        return FactAnswer(f"{name} costs {note} {money}.", asked)
    return FactAnswer(f"{name} costs {money}{' ' + note if note else ''}.", asked)


# ---- FAQ

def _faq(q: Question) -> FactAnswer | None:
    """The FAQ entry one of whose question variants the caller's words clearly match (most of both
    sides' meaningful words shared, and no other entry close)."""
    said = {stem(w) for w in q.text.split() if w not in STOP}
    scores: list[tuple[float, int]] = []
    for i, f in enumerate(q.business.faq):
        best = 0.0
        for variant in f.questions:
            known = {stem(w) for w in content(variant)}
            shared = len(known & said)
            if known and said and shared >= min(2, len(known)):
                best = max(best, 2 * shared / (len(known) + len(said)))
        scores.append((best, i))
    scores.sort(reverse=True)
    if not scores or scores[0][0] < 0.6 or (len(scores) > 1 and scores[1][0] > scores[0][0] - 0.15):
        return None
    entry = q.business.faq[scores[0][1]]
    return FactAnswer(entry.answer, Asked("faq", entry.questions[0]))


# ---- what a question is about

_TOPICS: list[tuple[str, Callable[[Question], FactAnswer | None]]] = [
    (r"\b(phone|telephone|number|numbers|fax|hotline|line)\b", _phone),
    (r"\b(e ?mail|website|web ?site)\b", _email),
    (r"\b(how much|cost|costs|price|prices|pricing|charge|fee|fees|rate|rates|free)\b", _price),
    (r"\b(directions?|parking|park|get there|get to you|getting there|find you|bus|train|subway|metro|tram|entrance)\b", _directions),
    (r"\b(address|located|location|where|whereabouts|street|find you)\b", _address),
    (r"\b(open|opens|opening|close|closes|closing|closed|shut|hours|how late|how early|lunch|lunchtime|break|breaks|work|working)\b", answer_hours),
    (r"\b(who|staff|team|employees|doctors?|dentists?|physicians?|owner|manager)\b", _people),
]


def _follow_up(q: Question) -> FactAnswer | None:
    """"And on Saturday?", "what about a filling?": the previous question's topic, the new subject."""
    p = q.previous
    if p is None:
        return None
    if p.topic in KINDS and q.when.timed and not q.rest():
        return hours_of("open" if p.topic == "open_now" else p.topic, q)
    if q.when.timed:
        return None
    if p.topic == "price":
        return _price(q)
    if p.topic == "phone":
        other = _other(q, list(q.business.phones))
        return _number(other, q.business.phones[other]) if other else (_phone(q) if q.rest() else None)
    return None


def _other(q: Question, names: list[str]) -> str | None:
    """"The other one": the one of two that the previous question did not ask about."""
    if not re.search(r"\bother one\b|\bthe other\b", q.text) or q.previous is None or len(names) != 2 or q.previous.subject not in names:
        return None
    return names[1 - names.index(q.previous.subject)]
