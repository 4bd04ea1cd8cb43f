"""The local answers' facts check (providers/facts/echo.py): an answer that only echoes the
question is replaced by the matching fact, or by the honest line."""

from __future__ import annotations

import pytest

from providers.facts.echo import echo_check as check

DENTIST = """Northside Dental, 14 Harbour Street, Springfield.
Open Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm, closed on Sunday and public holidays.
Dentists: Dr. Maria Lopez and Dr. James Chen. Children are welcome from the age of three."""
PIZZA = """Luigi's Pizzeria, 220 Oak Avenue.
Open every day from 11 am to 11 pm. Table bookings for 6 or more people only."""
HONEST = "I don't know that. Shall I put you through to someone who does?"


@pytest.mark.parametrize(("facts", "question", "answer", "spoken"), [
    # Answers that bring something from the facts are spoken as they are.
    (DENTIST, "Where are you located?", "We are at 14 Harbour Street, Springfield.", None),
    (DENTIST, "Which dentists work there?", "Dr. Maria Lopez and Dr. James Chen.", None),
    (DENTIST, "Hello?", "Hello! How can I help you today?", None),
    (DENTIST, "Do you do teeth whitening?", "I'm sorry, I don't know.", None),
    # "I don't know" where a fact does answer: the fact.
    (DENTIST, "What time do you open on Saturday?", "I'm sorry, but I don't know the exact time for Saturday.",
     "Open Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm, closed on Sunday and public holidays."),
    # Echoes: replaced by the fact that answers, ...
    (DENTIST, "Are you open on Sunday?", "Yes, we are open on Sunday.",
     "Open Monday to Friday 8 am to 6 pm, Saturday 9 am to 1 pm, closed on Sunday and public holidays."),
    (PIZZA, "Are you open on Sunday?", "Yes, we are open on Sunday.", "Open every day from 11 am to 11 pm."),
    (PIZZA, "Can I book a table for two?", "Yes, you can book a table for two.", "Table bookings for 6 or more people only."),
    # ... or by the honest line when no fact does.
    (DENTIST, "Is Dr. Lopez married?", "Yes, Dr. Lopez is married.", HONEST),
    (PIZZA, "Do you sell beer?", "No, Luigi's Pizzeria does not sell beer.", HONEST),
    (DENTIST, "Do you do teeth whitening?", "No, we do not provide teeth whitening services.", HONEST),
    # The instructions parroted back are never spoken.
    (DENTIST, "Can I bring my two year old?", "You do not know and offer to put the caller through to someone who does.", HONEST),
])
def test_first_sentence_against_the_facts(facts, question, answer, spoken):
    assert check(answer, question, facts, HONEST) == spoken


def test_no_facts_no_check():
    assert check("Yes, we sell used cars.", "Do you sell used cars?", "", HONEST) is None
