"""What a caller's words ask the agent to do, for a pipeline whose LLM cannot decide it reliably.

Measured with the default 0.5B model (docs/profiles.md, "Who decides"): told about the departments and the
action words in its prompt, it stated the asked fact in 13 of 37 answers instead of 31 (it answered
"TRANSFER" to questions); asked separately through a grammar that allows only the actions, it chose
right in 24 of 46 and cost 131 ms a turn. These rules get every case of bench/answers.py right in
microseconds, and they can only name the profile's own departments.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jellyfish

from providers.base import ActionRequest
from providers.profile import OPERATOR, AgentProfile

_WORD = re.compile(r"[a-z0-9']+")
_TOKEN = re.compile(r"[a-z0-9']+|[,.;:!?]")  # words and the punctuation that ends a clause
# Asking to be put through (the verbs), and asking for a person rather than a department.
# "Put me to the billing": how Whisper wrote one rendition in 37 of "put me through to billing".
_TRANSFER = re.compile(
    r"\b(transfer|put me (?:through|thru|on ?to|over to|to)|put through|through to|connect me|speak (?:to|with)|talk (?:to|with)|"
    r"get me|send me (?:\w+ )?(?:over |through )?to|forward me|pass me (?:on |over )?to|redirect me)\b"
)
_CAN_I_HAVE = r"(?:can|could|may) i (?:have|get)"
# Asking for the department alone ("Can I get billing, please?", which Whisper writes "Can I get Bill
# and please?"): what is asked for is then the name, as Whisper may have written it.
_ASK_FOR = re.compile(_CAN_I_HAVE + r" (?:the )?([a-z' ]+?),? ?(?:please)?[.?!]*")
# Doing something a department does ("I need to change my appointment"): enough with its name.
_DOES = re.compile(r"\b(change|cancel|book|reschedule)\b")
# Wanting the department itself ("Can I have billing?", "I need a refund"): enough with its name when
# that is what is wanted, not a word for another thing ("Can I have the billing address?").
_WANTS = re.compile(rf"\b(i need|i want|i'd like|i would like|{_CAN_I_HAVE})\b")
# What may follow the wanted department (or its word) in the same clause: it ends the thing wanted.
_AFTER_WANTED = frozenset({
    "please", "thanks", "thank", "now", "today", "again", "too", "then", "right", "and", "or", "but", "so", "because",
    "since", "as", "if", "when", "with", "for", "about", "regarding", "on", "to", "in", "at", "from", "by", "of", "i",
    "i'm", "my", "me", "someone", "somebody", "person", "line",
})
_UNIT = frozenset({"department", "dept", "team", "desk", "office"})  # part of the name: "the billing department"
_PERSON = {"operator", "person", "human", "someone", "somebody", "receptionist", "anyone", "anybody", "agent"}
_GOODBYE = re.compile(
    r"\b(good ?bye|bye(?: bye)?|that's (?:all|it|everything)|that is (?:all|it|everything)|nothing else|"
    r"have a (?:nice|good|great) (?:day|evening|one)|hang up)\b"
)
_YES = {"yes", "yeah", "yep", "sure", "please", "okay", "ok", "alright", "go", "ahead", "do", "it", "that", "would", "be", "great", "thanks", "thank", "you"}
_OFFER = re.compile(r"\b(transfer you|put you through|connect you)\b")
_STOP = {"and", "the", "for", "with", "about", "your", "from", "that", "this", "have", "other", "questions", "anything", "else"}


def _stem(word: str) -> str:
    word = word.removesuffix("'s")  # "the appointment's desk": Whisper's possessive
    return word[:-1] if len(word) > 4 and word.endswith("s") else word


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("-", " "))


def _name_words(department: str) -> list[str]:
    return _words(department.replace("_", " "))


def _sounds(word: str) -> str:
    letters = re.sub(r"[^a-z]", "", word)
    return jellyfish.metaphone(letters) if letters else ""


def _sounds_like(said: str, name_word: str) -> bool:
    """Whisper tiny.en writes a department's name as words that sound like it: "billing" comes out
    "the building", "Billin" or "Bill and" (bench/stt_wer.py --departments). Same first letter,
    and the sound codes (metaphone) one edit apart at most; or its start ("transfer me to bill"),
    in letters or in sound (a long name cut short: "a point" for "appointments")."""
    if len(said) >= 4 and name_word.startswith(said):
        return True
    want, heard = _sounds(name_word), _sounds(said)
    if said[:1] != name_word[:1] or len(want) < 3:
        return False
    return jellyfish.levenshtein_distance(want, heard) <= 1 or (len(heard) >= 4 and want.startswith(heard))


class _Mention(NamedTuple):
    department: str
    words: frozenset[str]  # the stems that named it: its name's, or its description's


def _department_mentioned(words: list[str], profile: AgentProfile, sound_alike: bool = False) -> _Mention | None:
    stems = {_stem(w) for w in words}
    for name in profile.departments:
        if (named := frozenset(_stem(w) for w in _name_words(name))) <= stems:
            return _Mention(name, named)
    for name, d in profile.departments.items():
        keys = {_stem(w) for w in _words(d.description) if len(w) >= 4 and w not in _STOP}
        if keys & stems:
            return _Mention(name, frozenset(keys & stems))
    if sound_alike:
        # Each word, and each pair of words written as one ("bill and" for "billing").
        said = [*words, *(a + b for a, b in zip(words, words[1:], strict=False))]
        for name in profile.departments:
            if all(any(_sounds_like(w, n) for w in said) for n in _name_words(name)):
                return _Mention(name, frozenset())
    return None


def _wanted(text: str, named: frozenset[str]) -> bool:
    """Whether a word that named the department stands for what the caller wants ("I need billing,
    please", "a refund for my order") rather than describing the next word ("the billing address",
    "the refund policy")."""
    tokens = _TOKEN.findall(text.lower().replace("-", " "))
    for i, token in enumerate(tokens):
        if _stem(token) not in named:
            continue
        j = i + 1
        while j < len(tokens) and (_stem(tokens[j]) in named or _stem(tokens[j]) in _UNIT):
            j += 1
        if j == len(tokens) or not tokens[j][0].isalnum() or tokens[j] in _AFTER_WANTED:
            return True
    return False


def _name_alone(words: list[str], profile: AgentProfile) -> str | None:
    """The department whose name ``words`` are: one word, or two that run together ("bill and")."""
    if not 1 <= len(words) <= 2:
        return None
    said = "".join(words)
    for name in profile.departments:
        name_words = _name_words(name)
        if len(name_words) == 1 and _sounds_like(said, name_words[0]):
            return name
    return None


def offered_department(agent_text: str, profile: AgentProfile) -> str | None:
    """The department the agent's answer offered to put the caller through to (an answer that
    does not know, or that names one), if any."""
    if not _OFFER.search(agent_text.lower()):
        return None
    if mention := _department_mentioned(_words(agent_text), profile):
        return mention.department
    return OPERATOR if OPERATOR in profile.departments else None


def decide(text: str, profile: AgentProfile, offered: str | None = None) -> ActionRequest | None:
    """The action the caller's utterance asks for, or None (the LLM answers it). ``offered``: the
    department the agent offered in its last answer ("shall I put you through?")."""
    lowered = text.lower()
    words = _words(text)
    if not words:
        return None
    if offered and len(words) <= 6 and words[0] in _YES and set(words) <= _YES | set(_words(offered)):
        return ActionRequest("transfer", offered, f"caller accepted the offer: {text!r}")
    asks = bool(_TRANSFER.search(lowered))
    direct = asks or len(words) <= 3  # asks to be put through, or says little else ("Billing, please.")
    # There a name that only sounds like a department's counts too ("Bill and, please.").
    dept = None
    if mention := _department_mentioned(words, profile, sound_alike=direct):
        if direct or _DOES.search(lowered) or (_WANTS.search(lowered) and _wanted(text, mention.words)):
            dept = mention.department
    elif ask := _ASK_FOR.fullmatch(lowered.strip()):
        dept = _name_alone(_words(ask.group(1)), profile)
    if dept is not None:
        return ActionRequest("transfer", dept, f"caller asked: {text!r}")
    if OPERATOR in profile.departments and direct and _PERSON & set(words):
        return ActionRequest("transfer", OPERATOR, f"caller asked for a person: {text!r}")
    if _GOODBYE.search(lowered) and "?" not in text:
        return ActionRequest("hangup", reason=f"caller said goodbye: {text!r}")
    return None
