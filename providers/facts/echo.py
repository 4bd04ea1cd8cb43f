"""Keeps the local LLM's answers to what the facts say.

Measured with bench/answers.py, the default 0.5B model answers a question the facts do not cover by
echoing it ("Do you sell used cars?" -> "Yes, we sell used cars."), and answers some that they do
cover the same way ("Are you open on Sunday?" -> "Yes, we are open on Sunday." where the facts say
closed; "Can I book a table for two?" -> "Yes, you can book a table for two." where they say six or
more). Telling it not to guess, in any wording tried, cost a fifth of its right answers and stopped
none of the echoes. So the first sentence of an answer is checked before it is spoken: one that
only repeats the question's own words (or the instructions') is replaced by the fact that matches
the question best, or, when no fact does, by the profile's honest line ("I don't know that, shall I
put you through to someone who does?"). An "I don't know" where a fact does answer is replaced by
that fact.
"""

from __future__ import annotations

import re

# Words that carry no claim of their own.
_FILLER = set(
    "a an and or the of to in on at for by is are was were be been do does did done you your yours we our ours us i me my "
    "it its it's this that these those there here yes no not don't doesn't can can't could would will shall should may "
    "have has had get got sure of course certainly absolutely please thank thanks just also so well oh okay ok "
    "dr mr mrs ms what how when where who which why much many any some sorry unfortunately currently "
    "provide provides offer offers service services available".split()
)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_DAYS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "weekday", "weekend"}
_EVERY_DAY = re.compile(r"\b(every day|daily|7 days|seven days)\b", re.I)
_DONT_KNOW = re.compile(r"\b(don't|do not) know\b|\bnot sure\b", re.I)
_LEAK = re.compile(r"offer to put the caller|matching fact|word for word|facts about the business", re.I)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|\n+")


def _stem(word: str) -> str:
    for suffix in ("ings", "ing", "ies", "es", "s", "ed"):
        if len(word) - len(suffix) >= 3 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    return word[:5]


def _content(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in _FILLER}


def fact_sentences(facts: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(facts) if s.strip()]


def best_fact(question: str, facts: str) -> str | None:
    """The fact sentence that shares more than half of the question's own words, the best one."""
    asked = _content(question)
    if not asked:
        return None
    days = {_stem(d) for d in _DAYS} & asked
    best, best_score = None, 0.5
    for sentence in fact_sentences(facts):
        have = _content(sentence)
        if days and _EVERY_DAY.search(sentence):
            have |= days  # "open every day" answers a question about Sunday
        score = len(asked & have) / len(asked)
        if score > best_score:
            best, best_score = sentence, score
    return best


def _name_words(facts: str) -> set[str]:
    """The business's name: the capitalised words of the facts' first sentence ("No, Luigi's
    Pizzeria does not sell beer" tells the caller nothing the question did not)."""
    sentences = fact_sentences(facts)
    names = re.findall(r"\b[A-Z][\w']*", sentences[0]) if sentences else []
    return _content(" ".join(names))


def echo_check(first_sentence: str, question: str, facts: str, honest: str) -> str | None:
    """None if the answer's first sentence may be spoken; else what to say instead."""
    if not facts.strip():
        return None
    if _LEAK.search(first_sentence):
        return best_fact(question, facts) or honest  # the instructions said back: never spoken
    if _DONT_KNOW.search(first_sentence):
        return best_fact(question, facts)  # "I don't know" where a fact does answer: that fact
    if not _content(first_sentence) <= _content(question) | _name_words(facts):
        return None  # it says something the question did not
    return best_fact(question, facts) or honest
