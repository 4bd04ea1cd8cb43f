"""Answers from a business's facts as data: what a caller asks about hours, opening on a day or
now, the address, phone numbers, people, prices and the FAQ, answered from the structure (right
for today's date and time in the business's zone), without the LLM. A question the data does not
answer is left to the LLM (None)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from providers.facts.schema import Business


@dataclass(frozen=True)
class Asked:
    """What a question asked about, kept for the follow-up that leans on it ("and on Saturday?",
    "what about a filling?")."""

    topic: str  # hours, open, opens, closes, open_now, address, directions, phone, people, price, faq
    subject: str = ""  # the day or date, the service, the role, the phone's purpose


@dataclass(frozen=True)
class FactAnswer:
    text: str  # what to say (digits and symbols: providers/local/spoken.py reads them aloud)
    asked: Asked


def answer(question: str, business: Business, now: dt.datetime, previous: Asked | None = None) -> FactAnswer | None:
    """The answer to ``question`` from ``business`` at ``now`` (aware), or None if the data does not
    hold it (or the question is not about it)."""
    return None
