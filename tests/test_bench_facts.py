"""bench/facts.py: its businesses and questions load and validate, and its scorer puts heard
answers in the right category (no models: the scorer reads text)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import facts  # noqa: E402


@pytest.fixture(scope="module")
def profiles():
    return facts.load_profiles()


@pytest.fixture(scope="module")
def cases(profiles):
    return facts.load_part("tune", profiles) + facts.load_part("heldout", profiles)


def test_the_businesses_load_as_profiles_in_every_form(profiles):
    assert len(profiles) >= 5
    structured = [n for n, p in profiles.items() if p.business.hours and not p.facts]
    free_text = [n for n, p in profiles.items() if p.facts and not p.business.hours]
    both = [n for n, p in profiles.items() if p.facts and p.business.hours]
    assert len(structured) >= 2 and len(free_text) >= 2 and both
    assert any(p.business.timezone != "UTC" for p in profiles.values())


def test_the_parts_hold_enough_questions_of_every_kind(cases, profiles):
    tune = [c for c in cases if c.part == "tune"]
    held = [c for c in cases if c.part == "heldout"]
    assert len(cases) >= 150
    assert 0.25 <= len(held) / len(cases) <= 0.4
    for part in (tune, held):
        assert {c.q.business for c in part} == set(profiles)  # every business in both parts
        assert any(c.q.after for c in part)
        assert any(c.q.topic == "now" for c in part)
    assert 0.15 <= sum(c.q.unanswerable for c in cases) / len(cases) <= 0.3
    # Held-out phrasings are not tune's.
    assert not {c.q.text.lower() for c in tune} & {c.q.text.lower() for c in held}
    for c in cases:
        assert c.now.tzinfo is not None


def test_a_question_needs_expect_or_unanswerable():
    with pytest.raises(ValueError, match="expect or unanswerable"):
        facts.Question(business="dental", text="Are you open?", topic="now")
    with pytest.raises(ValueError, match="topic"):
        facts.Question(business="dental", text="Are you open?", topic="weather", expect=[["yes"]])


def test_normalising_reads_number_words_times_prices_and_phone_numbers():
    assert facts.normalise("We open at nine a.m. and close at five thirty p.m.") == [
        ["we", "open", "at", "9", "am", "and", "close", "at", "5:30", "pm"]]
    assert facts.normalise("The fee is twelve pounds fifty pence.") == [["the", "fee", "is", "12.50", "pounds"]]
    assert facts.normalise("It costs $12.50.") == [["it", "costs", "12.50", "dollars"]]
    assert facts.normalise("Call eight four seven, five five five, zero one four eight.") == [["call", "8475550148"]]
    assert facts.normalise("Call 847-555-0148") == [["call", "8475550148"]]
    assert facts.normalise("We close at noon on Saturdays") == [["we", "close", "at", "12", "pm", "on", "saturday"]]
    assert facts.normalise("one hundred and fifty dollars") == [["150", "dollars"]]
    assert facts.normalise("open until 1230pm") == [["open", "until", "12:30", "pm"]]


@pytest.fixture(scope="module")
def dental(profiles):
    return facts.business_numbers(profiles["dental"])


def question(**kw) -> facts.Question:
    return facts.Question(business="dental", text="a question", **kw)


@pytest.mark.parametrize(
    "q, heard, category",
    [
        # a closed day
        (dict(topic="open_day", expect=[["no"], ["closed"], ["not open"]], forbid=["yes"]), "No, we're closed on Saturdays.", "right"),
        (dict(topic="open_day", expect=[["no"], ["closed"], ["not open"]], forbid=["yes"]), "We aren't open on Saturdays.", "right"),
        (dict(topic="open_day", expect=[["no"], ["closed"], ["not open"]], forbid=["yes"]), "Yes, we're open on Saturday.", "wrong"),
        # a time, in words or digits; another day's time is wrong
        (dict(topic="hours", expect=[["1 pm"]], forbid=["5:30"]), "On Fridays we close at one p.m.", "right"),
        (dict(topic="hours", expect=[["1 pm"]], forbid=["5:30"]), "We close at 5:30 PM.", "wrong"),
        (dict(topic="hours", expect=[["1 pm"]], forbid=["5:30"]),
         "Monday to Thursday we close at 5:30 pm, on Wednesday at 7 pm and on Friday at 1 pm.", "right"),
        # a time, price or phone number written nowhere is wrong, whatever the question expects
        (dict(topic="hours", expect=[["8"]]), "We open at 8 am and close at 4 pm.", "wrong"),
        (dict(topic="price", expect=[["120"]]), "A cleaning is 120 dollars, an x-ray 45 dollars.", "wrong"),
        (dict(topic="phone", expect=[["0199"]]), "Call 847 555 0199.", "right"),
        (dict(topic="phone", expect=[["0199"]]), "Call 847 555 0198.", "wrong"),
        # honest: the answerable one is a don't-know, the unanswerable one right
        (dict(topic="price", expect=[["120"]]), "I'm sorry, I don't know that. Shall I put you through to someone who does?", "dont_know"),
        (dict(topic="unknown", unanswerable=True), "I'm sorry, I don't know that. Shall I put you through to someone who does?", "right"),
        (dict(topic="open_day", expect=[["yes"]], forbid=["no"]), "No, I don't know that, shall I put you through?", "dont_know"),
        (dict(topic="unknown", unanswerable=True, forbid=["yes"]), "Yes, we do implants.", "wrong"),
        (dict(topic="unknown", unanswerable=True), "Our dentist is Dr. Priya Raman.", "no_answer"),
        (dict(topic="people", expect=[["raman"]]), "We have two lovely dentists.", "no_answer"),
    ],
)
def test_the_scorer_categorises_heard_answers(q, heard, category, dental):
    assert facts.score(question(**q), heard, dental).category == category


def test_the_caller_may_hear_their_own_numbers_back(dental):
    q = question(topic="hours", expect=[["no"]], forbid=["yes"])
    heard = "No, we're not open at 9 pm on Thursday; we close at 5:30."
    assert facts.score(q, heard, dental).category == "wrong"  # 9 pm: written nowhere
    asked = facts.numbers_in(facts.normalise("Are you open at nine pm on Thursday?"), bare_times=True)
    assert facts.score(q, heard, dental | asked).category == "right"  # the caller's own words


def test_the_callers_ear_is_primed_with_names_never_numbers(profiles):
    for profile in profiles.values():
        names = facts.names_of(profile)
        assert not any(ch.isdigit() for ch in names)
        for person in profile.business.people:
            assert person.name.split()[-1] in names
    assert "Sione Taufa" in facts.names_of(profiles["shop"])  # a name in the free text
