"""What went wrong on a call, from its history record: ``aiagent-tui calls diagnose ID``.

The record is measured against the profile's norms (``[profiles.NAME.norms]``) and the thresholds
of engine/verdicts.py, the same the live view colours by and the history list flags with. Each
finding says what happened in the operator's words, with the figures that show it and, where there
is one, what to look at next; it says only what the record shows. Its level: ``bad``, what a
caller felt (a long wait, dead air, a lost turn, broken audio, a call that failed); ``warn``, worse
than a good call but mild; ``ok``, worth knowing but felt by nobody. The headline is the flagged
findings, the worst first; "nothing wrong found" only when none is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from engine import verdicts
from engine.config import AppConfig
from engine.history import CallRecord, TurnRecord
from engine.verdicts import LEVELS, Level
from providers.profile import DEFAULT_PROFILE, Norms

# The stages of a turn as the record has them, in order from the caller's last voiced frame; each
# is measured against the norm of the same name.
_STAGES: tuple[tuple[str, str], ...] = (
    ("endpoint_s", "the end-of-speech wait"),
    ("stt_s", "speech to text"),
    ("llm_first_sentence_s", "the LLM's first sentence"),
    ("tts_first_audio_s", "text to speech's first audio"),
    ("playout_s", "getting the audio to the caller"),
)
_STAGE_HINT = {
    "endpoint_s": "the engine waits [vad] end_ms of quiet after the caller's last voiced frame (more where the line's packets stop late, "
                  "or its noise sounds like voice): a shorter end_ms, or [providers.local] complete_end_ms, ends a turn sooner",
    "stt_s": "the STT model or its server is slow (a bigger model, a busy GPU, a CPU with too many calls)",
    "llm_first_sentence_s": "the LLM is slow to start answering (model size, context length, a busy server)",
    "tts_first_audio_s": "the TTS voice is slow to synthesise its first sentence",
    "playout_s": "the engine held the audio back (file mode waits for a whole sentence; stream mode for its pacer)",
}
MIN_STORM = 3  # barge-ins: fewer is never a storm, whatever the norm
QUEUED_NOTE_S = 0.1  # a slow turn's wait for models busy with other calls: named from this long


@dataclass(slots=True)
class Finding:
    kind: str  # failed | interrupted | refused | outcome | provider_error | turns_failed | fallback | slow_turns | dead_air | loss | stream_gaps | jitter | kernel_drops | pacing | underruns | barge_in_storm | action_failed | ...
    level: Level
    says: str
    evidence: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Diagnosis:
    call_id: str
    level: Level  # the worst finding's
    headline: str
    findings: list[Finding]

    @property
    def flagged(self) -> list[Finding]:
        """The findings at warn or bad, the worst first."""
        return sorted((f for f in self.findings if f.level != "ok"), key=lambda f: -LEVELS.index(f.level))


def _clock(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


def _offset(rec: CallRecord, t: float) -> str:
    return f"{_clock(t)} ({max(0.0, t - rec.started_at):.0f} s in)"  # a spell from the start is stamped a little before it


def diagnose(rec: CallRecord, norms: Norms, profile_known: bool = True, apology: str | None = None) -> Diagnosis:
    """``apology``: the line a lost turn is answered with ([providers.local] apology), to tell from
    the transcript whether the caller heard it; None: not known, nothing said about it."""
    found: list[Finding] = []
    if not profile_known:
        found.append(Finding("norms", "ok", f"profile {rec.profile!r} is no longer in the config: measured against the default norms"))
    _ending(rec, found)
    _providers(rec, found, apology)
    _turns(rec, norms, found)
    _silences(rec, norms, found)
    _audio(rec, norms, found)
    _barge_ins(rec, norms, found)
    _actions(rec, found)
    d = Diagnosis(rec.call_id, verdicts.worst(f.level for f in found), "", found)
    if flagged := d.flagged:
        d.headline = f"{d.level}: " + "; ".join(f.says for f in flagged)
    else:
        turns = [t.latency_s for t in rec.turns if t.latency_s is not None]
        answered = f", {len(turns)} turn(s) answered within {norms.answer_s:.1f} s" if turns else ""
        d.headline = f"nothing wrong found: {rec.outcome.replace('_', ' ')}{answered}"
    return d


def diagnose_in(config: AppConfig, rec: CallRecord) -> Diagnosis:
    """Against the norms of the call's profile as the config has it now."""
    profile = config.profiles.get(rec.profile)
    return diagnose(rec, (profile or config.profiles[DEFAULT_PROFILE]).norms, profile is not None, config.providers.local.apology)


def _ending(rec: CallRecord, found: list[Finding]) -> None:
    if rec.outcome == "failed":
        found.append(Finding("failed", "bad", f"the call failed: {rec.end_reason}", [f"ended {_offset(rec, rec.ended_at or rec.started_at)}"]))
    elif rec.outcome == "interrupted":
        found.append(Finding(
            "interrupted", "bad", "the engine stopped during the call (killed or crashed): its record ends where it stopped",
            ["look at the engine's log and the service manager's journal around " + _clock(rec.ended_at or rec.started_at)],
        ))
    elif rec.outcome == "refused":
        found.append(Finding(
            "refused", "bad", f"the caller was turned away: {(rec.end_reason or '').removeprefix('refused: ')}",
            ["at max_calls: more engines, or a higher rtp.max_calls if Asterisk's RTP ports allow; at the models' capacity: more cores or a model server"],
        ))
    elif (level := verdicts.outcome_level(rec.outcome)) not in (None, "ok"):  # as Asterisk reported it (a transfer that failed...)
        found.append(Finding(
            "outcome", level, f"the call ended {rec.outcome.replace('_', ' ')}",
            [f"ended {_offset(rec, rec.ended_at or rec.started_at)}" + (f": {rec.end_reason}" if rec.end_reason else "")],
        ))


def _providers(rec: CallRecord, found: list[Finding], apology: str | None) -> None:
    # Only what the record shows: what the error cost (lost turns, a fallback, the call's end).
    if rec.provider_errors:
        cost = [f"{rec.turns_failed} turn(s) lost: see below"] if rec.turns_failed else []
        if len(rec.providers) > 1:
            cost.append(f"the call went on with {' then '.join(rec.providers[1:])}")
        elif (rec.end_reason or "").startswith("provider error"):
            cost.append("the call ended on it")
        found.append(Finding(
            "provider_error", "warn",
            f"the provider failed {rec.provider_errors} time(s)" + (f": {rec.last_provider_error}" if rec.last_provider_error else ""),
            cost or ["no turn lost and no fallback in the record: the call went on"],
        ))
    if rec.turns_failed:
        evidence = ["the models refused them (their queue was full: more callers than they serve; see /health's model_capacity) "
                    "or lost them (a model process crashed or hung: the provider's error says so)"]
        if apology is not None:
            heard = sum(1 for line in rec.transcript if line.role == "agent" and line.text.strip() == apology.strip())
            evidence.insert(0, f"the caller heard the apology {heard} time(s)" if heard
                            else "no apology in the transcript: the caller heard nothing for them")
        found.append(Finding("turns_failed", "bad", f"{rec.turns_failed} turn(s) got no answer from the models", evidence))
    if len(rec.providers) > 1:
        found.append(Finding("fallback", "warn", f"the call fell back from {rec.providers[0]} to {' then '.join(rec.providers[1:])}"))


def answered_after(t: TurnRecord) -> float | None:
    """When the caller heard the answer, from the end of their speech (their last voiced frame).
    Behind a hold line the turn's latency is the hold line's: the answer's own is its stages (its
    playout not known), the end-of-speech wait first (none in a record from before it was kept)."""
    if t.hold_s is None:
        return t.latency_s
    stages = [t.stt_s, t.llm_first_sentence_s, t.tts_first_audio_s]
    return round((t.endpoint_s or 0.0) + sum(x for x in stages if x is not None), 4) if None not in stages else t.latency_s


def _turns(rec: CallRecord, norms: Norms, found: list[Finding]) -> None:
    slow = [t for t in rec.turns if (a := answered_after(t)) is not None and a > norms.answer_s]
    unanswered = [t for t in rec.turns if t.latency_s is None and t.stt_s is not None]
    if unanswered:
        found.append(Finding(
            "unanswered", "ok", f"{len(unanswered)} turn(s) heard but never answered with audio (a lost turn, a barge-in, or the call ended)",
            [f"caller stopped speaking at {_offset(rec, t.at)}" for t in unanswered[:5]],
        ))
    if not slow:
        return
    # The stage to blame is the one most over its own norm, over all the slow turns.
    excess: dict[str, list[float]] = {}
    evidence = []
    for t in slow:
        worst = _worst_stage(t, norms)
        stages = ", ".join(f"{label} {getattr(t, name):.2f} s" for name, label in _STAGES if getattr(t, name) is not None)
        held = f"; the hold line played after {t.hold_s:.2f} s" if t.hold_s is not None else ""
        if t.queued_s is not None and t.queued_s >= QUEUED_NOTE_S:
            held += f"; {t.queued_s:.2f} s of it waiting for models busy with other calls"
        evidence.append(f"{_offset(rec, t.at)}: answered after {answered_after(t):.2f} s ({stages}{held})")
        if worst is not None:
            excess.setdefault(worst, []).append(getattr(t, worst))
    answered = sum(1 for t in rec.turns if t.latency_s is not None)
    longest = max(answered_after(t) or 0 for t in slow)
    says = f"{len(slow)} of {answered} answers took longer than {norms.answer_s:.1f} s (worst {longest:.1f} s)"
    if excess:
        name = max(excess, key=lambda n: len(excess[n]) * 100 + max(excess[n]) - getattr(norms, n))
        label = dict(_STAGES)[name]
        values = excess[name]
        norm = getattr(norms, name)
        says += f": {label} took up to {max(values):.1f} s against its norm of {norm:.1f} s (+{max(values) - norm:.1f} s)"
        evidence.append(f"likely cause: {_STAGE_HINT[name]}")
    found.append(Finding("slow_turns", verdicts.answer_s(norms).level(longest), says, evidence))


def _worst_stage(t: TurnRecord, norms: Norms) -> str | None:
    over = [(getattr(t, name) - getattr(norms, name), name) for name, _ in _STAGES if getattr(t, name) is not None]
    over = [(x, n) for x, n in over if x > 0]
    return max(over)[1] if over else None


def _silences(rec: CallRecord, norms: Norms, found: list[Finding]) -> None:
    limit = verdicts.silence_s(norms)
    long = [s for s in rec.silences if limit.level(s.seconds) != "ok"]
    watchdog = [a for a in rec.actions if a.by == "silence"]
    if long:
        longest = max(s.seconds for s in long)
        found.append(Finding(
            "dead_air", limit.level(longest),
            f"{len(long)} silence(s) over {norms.silence_s:.0f} s with nobody speaking (longest {longest:.1f} s)",
            [f"{_offset(rec, s.at)}: {s.seconds:.1f} s" for s in long[:5]]
            + ["a caller who says nothing may not hear the agent: compare RTP out and the agent's lines in the transcript"],
        ))
    for a in watchdog:
        found.append(Finding("silence_watchdog", "ok", f"the silence watchdog ended the call: {a.reason}", [f"at {_offset(rec, a.at)}"]))


def _stream_audio(rec: CallRecord, jitter: verdicts.Threshold, found: list[Finding]) -> None:
    """A stream transport's caller audio (AudioSocket, WebSocket), judged on what it has: the arrival
    jitter; its gaps are noted (a stall, or a caller's side that sent nothing while they were quiet:
    engine/verdicts.py says why they are not judged)."""
    q = rec.quality
    if q.gaps:
        found.append(Finding(
            "stream_gaps", "ok", f"the caller's audio paused {q.gaps} time(s) on the {rec.transport} connection (longest {q.max_gap_ms:.0f} ms)",
            [f"{q.packets_in} messages in", "a caller's side that sends nothing while they are quiet, or a connection that held the audio back"],
        ))
    if (level := jitter.level(q.jitter_ms)) != "ok":
        found.append(Finding(
            "jitter", level, f"the caller's audio arrived unevenly on the {rec.transport} connection: jitter {q.jitter_ms:.0f} ms ({_over(jitter, level)})",
            ["a busy PBX or engine, or a congested path: TCP holds audio back rather than lose it"],
        ))


def _audio(rec: CallRecord, norms: Norms, found: list[Finding]) -> None:
    q = rec.quality
    loss, jitter = verdicts.for_profile(verdicts.LOSS_PCT, norms), verdicts.for_profile(verdicts.JITTER_MS, norms)
    if rec.transport != "rtp":  # a stream (TCP): nothing is lost or reordered; its audio can stall
        _stream_audio(rec, jitter, found)
    elif (level := loss.level(q.loss_pct)) != "ok":
        found.append(Finding(
            "loss", level, f"{q.loss_pct:.1f} % of the caller's packets were lost on the way in ({_over(loss, level)})",
            [f"{q.lost} of {q.expected} packets lost", "the network between Asterisk and the engine: speech to text hears gaps"],
        ))
    if rec.transport == "rtp" and (level := jitter.level(q.jitter_ms)) != "ok":
        found.append(Finding(
            "jitter", level, f"the caller's packets arrived unevenly: jitter {q.jitter_ms:.0f} ms ({_over(jitter, level)})",
            [f"{q.late_dropped} packet(s) came too late to use"],
        ))
    if q.kernel_drops and (level := verdicts.KERNEL_DROPS.level(q.kernel_drops)) != "ok":
        found.append(Finding(
            "kernel_drops", level, f"the engine fell behind: its RTP socket dropped {q.kernel_drops} datagram(s) while the call was up",
            ["every call on the engine lost audio then; raise [rtp] receive_buffer_bytes or take fewer calls per engine"],
        ))
    if q.ssrc_changes:
        found.append(Finding("ssrc", "ok", f"the caller's stream changed source {q.ssrc_changes} time(s) (a re-INVITE, a transfer, or a media server change)"))
    if q.malformed:
        what = "RTP packet(s)" if rec.transport == "rtp" else f"{rec.transport} message(s)"
        found.append(Finding("malformed", "ok", f"{q.malformed} malformed {what} from the caller's side were dropped"))
    if (level := verdicts.PACING_MS.level(q.max_pacing_error_ms)) != "ok":
        found.append(Finding(
            "pacing", level, f"the agent's audio packets went out up to {q.max_pacing_error_ms:.0f} ms late (pacing error, {_over(verdicts.PACING_MS, level)})",
            ["likely cause: the engine's loop was held up (a busy CPU, swapping, a slow step on the loop): the caller hears the agent choppy"],
        ))
    if (level := verdicts.UNDERRUNS.level(q.underruns)) != "ok":
        found.append(Finding(
            "underruns", level, f"the agent's audio ran dry {q.underruns} time(s) while it spoke (the caller heard a gap each time)",
            [f"{q.packets_out} packets out", "likely cause: the text to speech fell behind playback, or the engine's loop was held up"],
        ))


def _barge_ins(rec: CallRecord, norms: Norms, found: list[Finding]) -> None:
    times = sorted(rec.barge_in_at)
    allowed = max(MIN_STORM - 1, int(norms.barge_ins_per_minute))
    worst, start = 0, 0
    for i, t in enumerate(times):
        while t - times[start] > 60.0:
            start += 1
        worst = max(worst, i - start + 1)
    if worst > allowed:
        found.append(Finding(
            "barge_in_storm", "bad", f"{worst} barge-ins within a minute cut the agent off (norm {norms.barge_ins_per_minute:.0f} a minute)",
            [f"{rec.barge_ins} barge-ins in all", "echo of the agent's own voice, a noisy line, or a VAD too eager: look at [vad] and the caller's level"],
        ))


def _actions(rec: CallRecord, found: list[Finding]) -> None:
    for a in rec.actions:
        if a.state in ("failed", "refused"):
            what = f"transfer to {a.department}" + (f" ({a.target})" if a.target else "") if a.kind == "transfer" else a.kind
            found.append(Finding("action_" + a.state, "bad", f"the {what} asked for by {a.by} {a.state}: {a.detail or 'no detail'}", [f"at {_offset(rec, a.at)}"]))


def _over(t: verdicts.Threshold, level: Level) -> str:
    """Which threshold the figure is over, as the operator reads it."""
    limit = t.bad if level == "bad" else t.warn
    return f"{level} over {limit:g}{' ' + t.unit if t.unit else ''}"
