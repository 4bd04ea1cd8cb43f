"""One set of thresholds and one verdict for a call, wherever it is shown: the live view's colours
(aiagent_tui/widgets.py), the history list's flag column and outcome colours
(aiagent_tui/screens/history.py, ``aiagent-tui calls list``) and ``calls diagnose``
(engine/diagnosis.py). docs/operations.md has the same table, for operators.

Every measure has two thresholds: over ``warn`` is worse than a good line does, over ``bad`` is
what a caller hears. Where a profile has a norm for the measure (``[profiles.NAME.norms]``), that
norm is its ``warn``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Literal

from providers.profile import Norms

Level = Literal["ok", "warn", "bad"]
LEVELS: tuple[Level, ...] = ("ok", "warn", "bad")  # in order: the worst last

# How the terminal shows each level: the live view's colours, the history's flags.
STYLE: dict[Level, str] = {"ok": "green", "warn": "yellow", "bad": "bold red"}
MARK: dict[Level, str] = {"ok": "", "warn": "!", "bad": "!!"}


def worst(levels: Iterable[Level]) -> Level:
    return max(levels, key=LEVELS.index, default="ok")


@dataclass(frozen=True, slots=True)
class Threshold:
    name: str
    unit: str
    warn: float
    bad: float

    def level(self, value: float) -> Level:
        return "bad" if value > self.bad else "warn" if value > self.warn else "ok"


_DEFAULT = Norms()
# The caller's packets (RTP in): lost ones are gaps speech to text hears; uneven ones come too late to use.
LOSS_PCT = Threshold("loss", "%", _DEFAULT.loss_pct, 5.0)
JITTER_MS = Threshold("jitter", "ms", _DEFAULT.jitter_ms, 60.0)
# A stream transport's caller audio (AudioSocket, WebSocket: TCP loses nothing, so no loss is
# judged there) is judged on its arrival jitter (JITTER_MS) and on the last message's age
# (LAST_PACKET_S). Its gaps (an arrival over 100 ms after the one before, media/stream_stats.py)
# are shown and noted, never coloured: measured on Asterisk 22, a caller's side that sends nothing
# while its caller is quiet (a Local channel, a phone with silence suppression) makes the same gap
# as a stalled connection, on RTP as on a stream, and RTP does not flag its pauses either.
# Nothing from the caller's side this long (the live view only). A DTX phone sends nothing while
# its caller is quiet: only a long gap is worth a colour.
LAST_PACKET_S = Threshold("last packet", "s", 15.0, 60.0)
# The agent's audio (RTP out): packets sent late for their 20 ms beat sound choppy; a stream that
# ran dry while the agent spoke is a gap the caller heard, each time.
PACING_MS = Threshold("pacing error", "ms", 10.0, 40.0)
UNDERRUNS = Threshold("gaps", "", 0, 10)
# Datagrams the engine's RTP socket dropped: every call lost audio then.
KERNEL_DROPS = Threshold("kernel drops", "", 0, 0)
# A live turn waiting for the models (the live view only): the caller hears silence until the
# hold line, at [providers.local] hold_after_ms (2 s by default).
WAITING_S = Threshold("waiting", "s", 2.0, 5.0)


def for_profile(t: Threshold, norms: Norms) -> Threshold:
    """``t`` with the profile's norm as its warn threshold, where the profile has one (never
    above its bad one)."""
    norm = {LOSS_PCT.name: norms.loss_pct, JITTER_MS.name: norms.jitter_ms}.get(t.name)
    return t if norm is None else replace(t, warn=norm, bad=max(t.bad, norm))


def answer_s(norms: Norms) -> Threshold:
    """A turn's answer, from the end of the caller's speech: over the profile's norm is slow, over
    twice it the caller waits in silence."""
    return Threshold("answer", "s", norms.answer_s, 2 * norms.answer_s)


def silence_s(norms: Norms) -> Threshold:
    """Nobody speaking and nothing on the way: over the norm is dead air, over twice it a caller
    wonders whether anyone is there."""
    return Threshold("silence", "s", norms.silence_s, 2 * norms.silence_s)


# How a call ended (engine/history.py's outcomes, from what Asterisk reported): what the caller
# got. ``live`` has no verdict yet.
OUTCOME_LEVEL: dict[str, Level] = {
    "caller_hung_up": "ok",
    "agent_hung_up": "ok",
    "operator_hung_up": "ok",
    "transferred": "ok",
    "brought_in": "ok",
    "shutdown": "warn",  # the engine was stopped: the caller was cut off, on purpose
    "transfer_failed": "bad",  # the PBX dropped the caller instead of putting them through
    "failed": "bad",
    "interrupted": "bad",
    "refused": "bad",
}


def outcome_level(outcome: str) -> Level | None:
    """None while the call is live; an outcome this table does not know is a warning (to look at)."""
    return None if outcome == "live" else OUTCOME_LEVEL.get(outcome, "warn")


def outcome_style(outcome: str) -> str:
    level = outcome_level(outcome)
    return "bold cyan" if level is None else STYLE[level]
