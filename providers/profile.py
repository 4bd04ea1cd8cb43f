"""Agent profiles: who the agent is on a call, what it knows, where it may send the caller.

A profile is a ``[profiles.NAME]`` table of config.toml. Call control picks one per call (by the
Stasis argument or the dialled extension); the provider speaks and answers as it says, and the
engine carries out the actions it allows (transfer to one of its departments, hangup).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from providers.config import ConfigSection
from providers.facts.schema import Business
from providers.facts.text import read_facts

DEFAULT_PROFILE = "default"
STT_PROMPT_CHARS = 600  # about 150 tokens: Whisper keeps at most 223 of a prompt
OPERATOR = "operator"  # the department "0" and "operator" go to


class Department(ConfigSection):
    """Where a transfer sends the caller: a dialplan context/extension (ARI ``continue``, works for
    every kind of caller) or an endpoint (ARI ``redirect``, the channel driver's own transfer:
    SIP REFER, IAX2 transfer; it does nothing on Local channels)."""

    description: str = ""  # what it handles, in the caller's words (the LLM reads it)
    digit: str = Field("", pattern=r"^[0-9*#]?$")  # a DTMF key that transfers at once
    context: str = ""
    extension: str = ""
    priority: int = Field(1, ge=1)
    endpoint: str = Field("", pattern=r"^$|^[A-Za-z0-9]+/.+$")  # TECH/resource, e.g. PJSIP/200
    announce: str = ""  # said before the transfer; empty: "Putting you through to NAME now."

    @model_validator(mode="after")
    def _one_target(self) -> Department:
        dialplan = bool(self.context or self.extension)
        if dialplan and not (self.context and self.extension):
            raise ValueError("a dialplan target needs both context and extension")
        if dialplan == bool(self.endpoint):
            raise ValueError("give either context and extension, or endpoint")
        return self

    @property
    def target(self) -> str:
        return self.endpoint or f"{self.extension}@{self.context}"


class Norms(ConfigSection):
    """What a good call of this profile looks like: ``aiagent-tui calls diagnose`` measures a call's
    record against these. Turn figures are seconds from the end of the caller's speech (their last
    voiced frame); the stages follow one another from there."""

    answer_s: float = Field(1.5, gt=0)  # to the first agent audio the caller hears
    endpoint_s: float = Field(0.8, gt=0)  # the end-of-speech wait: to the engine's decision that the caller had finished
    stt_s: float = Field(0.8, gt=0)  # from that decision to the final transcription
    llm_first_sentence_s: float = Field(1.0, gt=0)  # from the transcription to the first sentence
    tts_first_audio_s: float = Field(0.4, gt=0)  # from that sentence to its first audio
    playout_s: float = Field(0.3, gt=0)  # from that audio to the caller (file mode: the playback's start)
    silence_s: float = Field(6.0, gt=0)  # nobody speaking and nothing being answered this long: dead air
    loss_pct: float = Field(1.0, ge=0)  # caller packets lost on the way in
    jitter_ms: float = Field(30.0, ge=0)
    barge_ins_per_minute: float = Field(4.0, gt=0)  # more: a storm (echo, line noise, a talkative caller)


class AgentProfile(ConfigSection):
    # Dialled extensions or Stasis arguments (Stasis(aiagent,ARG)) that select this profile.
    match: list[str] = []
    provider: str = ""  # empty: providers.default (or what the operator picked in the app)
    # empty: media.transport; else this profile's calls use "rtp", "audiosocket" or "websocket"
    transport: Literal["", "rtp", "audiosocket", "websocket"] = ""
    persona: str = (
        "You are a friendly receptionist answering a phone call. Reply in one or two short "
        "sentences of plain spoken English, with no lists, markup or emoji."
    )
    greeting: str = "Hello! Thanks for calling. How can I help you today?"
    # What callers may ask about, as data (hours, closed days, address, phones, people, prices, FAQ):
    # answered from it, and every answer checked against it.
    business: Business = Business()
    facts: str = ""  # the rest, free text (what it states about hours, prices, numbers and names is read too)
    # Text with the words speech recognition should expect (names, streets, products); empty:
    # the facts.
    vocabulary: str = ""
    departments: dict[str, Department] = {}
    closing: str = "Thank you for calling. Goodbye!"  # said before the agent hangs up
    # false: the agent answers only from the business's data, and says unknown_answer to the rest
    # (never a wrong fact, fewer answers: docs/benchmarks.md, "Business facts").
    llm_answers: bool = True
    # Said when the facts do not answer a question (a "yes" to it transfers to the operator).
    unknown_answer: str = "I'm sorry, I don't know that. Shall I put you through to someone who does?"
    still_there: str = "Are you still there?"
    # The caller says nothing this long: "still_there"; then this much longer: closing and hangup.
    silence_prompt_s: float = Field(10.0, ge=0)  # 0: no silence watchdog
    silence_hangup_s: float = Field(8.0, gt=0)
    norms: Norms = Norms()
    # Keep each call's audio (caller left, agent right) in history.recordings_dir: tell callers.
    record: bool = False
    _read: Business = PrivateAttr(default_factory=Business)
    _known: Business = PrivateAttr(default_factory=Business)

    @model_validator(mode="after")
    def _digits_unique(self) -> AgentProfile:
        seen: dict[str, str] = {}
        for name, d in self.departments.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
                raise ValueError(f"department name {name!r}: lower-case letters, digits, - and _")
            if d.digit and d.digit in seen:
                raise ValueError(f"departments {seen[d.digit]!r} and {name!r} both use digit {d.digit}")
            seen[d.digit] = name
        return self

    @model_validator(mode="after")
    def _read_facts(self) -> AgentProfile:
        self._read = read_facts(self.facts)
        self._known = self.business.merged(self._read)
        return self

    @property
    def facts_read(self) -> Business:
        """What the free-text ``facts`` were read as (check-config shows it for the operator)."""
        return self._read

    @property
    def known(self) -> Business:
        """The business's facts as data: ``business``, and what the free-text ``facts`` state where
        it says nothing."""
        return self._known

    def instructions(self) -> str:
        """The LLM's instructions: the persona, and the business's facts to answer from."""
        facts = "\n".join(t for t in (self.business.describe(), self.facts.strip()) if t)
        if not facts:
            # Nothing to answer from: a small model would make up hours and prices (every sentence
            # is checked too: providers/facts/verify.py).
            return (
                f"{self.persona}\n\nYou know nothing about the business: no opening hours, address, prices or names. "
                "If the caller asks about any of them, say you cannot answer questions about the business and offer "
                "to put them through to someone who can."
            )
        # The facts first and the rule last: small models follow what they read last. (Measured with
        # bench/answers.py: one fact a line, or examples in the rule, scored lower.)
        return (
            f"{self.persona}\n\nFacts about the business you answer for:\n{facts}\n\n"
            "Answer the caller's question with the matching fact, word for word where you can (names, "
            "numbers, times, prices). Only if no fact answers it, say you do not know and offer to put "
            "the caller through to someone who does."
        )

    def department_for_digit(self, digit: str) -> str | None:
        for name, d in self.departments.items():
            if d.digit == digit or (not d.digit and digit == "0" and name == OPERATOR):
                return name
        return None

    def announcement(self, department: str) -> str:
        d = self.departments[department]
        return d.announce or f"Putting you through to {department.replace('_', ' ')} now."

    def fixed_phrases(self) -> tuple[str, ...]:
        """What this profile always says the same way: greeting, closing, announcements..."""
        return (self.greeting, self.closing, self.still_there, self.unknown_answer, *(self.announcement(d) for d in self.departments))

    def stt_prompt(self) -> str:
        """What Whisper is primed with (its initial prompt): the business's own words. The facts
        themselves did better than a list of their names (bench/stt_wer.py --profiles)."""
        if self.vocabulary:
            return " ".join(self.vocabulary.split())[:STT_PROMPT_CHARS]
        b = self.business
        # The names callers say (people, roles, services, streets) before the free text: Whisper
        # hears "hygienist" as "high genius" and a surname as noise without them.
        names = [b.name, *(f"{p.name}, {p.role}." for p in b.people), *(", ".join(sv.names()) + "." for sv in b.services), b.address]
        return " ".join(" ".join([*names, self.facts]).split())[:STT_PROMPT_CHARS]


ActionKind = Literal["transfer", "hangup"]
