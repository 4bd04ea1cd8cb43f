"""``aiagent-tui calls diagnose``: what went wrong on a call, named from its history record."""

from __future__ import annotations

import asyncio
import json

from aiagent_tui.cli import main as cli
from aiagent_tui.widgets import _bad
from engine import verdicts
from engine.diagnosis import diagnose
from engine.history import OUTCOMES, ActionEntry, CallRecord, HistoryDb, Line, Quality, Silence, TurnRecord
from pbxsim.server import SimPBX
from pbxsim.script import Pause, SayText, WaitAgent, WaitAgentDone
from providers.profile import AgentProfile, Department, Norms
from providers.stages import StageFailed
from tests.conftest import ROOT, history_of, running_engine, wait_for

QUESTION = [SayText("What are your opening hours?"), WaitAgent(1.0, 40.0), WaitAgentDone(1.0, 60.0)]


async def test_diagnose_names_a_slow_llm_packet_loss_and_a_provider_failure_injected_over_the_simulator(tmp_path, capsys, history_url):
    """Two calls to the local models. The first is clean: diagnose finds none of the faults. On the
    second the network loses every 20th packet to the engine, the LLM fails the first question and
    takes 3 s more over the second: diagnose names all three, from the shell."""
    pbx = SimPBX(seed=5)
    await pbx.start(port=0)
    try:
        async with running_engine(pbx, tmp_path, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="stream", AIAGENT_HISTORY_URL=history_url) as eng:
            clean = pbx.place_call(script=[WaitAgentDone(0.8, 30.0), *QUESTION], caller_number="5550100")
            await wait_for(clean.finished.is_set, timeout=120)
            clean_rec = await history_of(eng, clean.id)

            llm = eng.providers["local"].models.llm
            real_generate, asked = llm.generate, []

            async def faulty_generate(*args, **kwargs):
                asked.append(1)
                if len(asked) == 1:
                    raise StageFailed("llm: worker process died (injected)")
                await asyncio.sleep(3.0)
                return await real_generate(*args, **kwargs)

            llm.generate = faulty_generate
            pbx.faults.rtp_loss_every = 20
            bad = pbx.place_call(script=[WaitAgentDone(0.8, 30.0), *QUESTION, *QUESTION], caller_number="5550199")
            await wait_for(bad.finished.is_set, timeout=180)
            bad_rec = await history_of(eng, bad.id)
            apology = eng.config.providers.local.apology
    finally:
        await pbx.stop()

    clean_kinds = {f.kind for f in diagnose(clean_rec, Norms()).findings}
    assert not clean_kinds & {"loss", "provider_error", "failed", "fallback"}, clean_kinds

    d = diagnose(bad_rec, Norms())
    by_kind = {f.kind: f for f in d.findings}
    assert {"loss", "provider_error", "slow_turns"} <= set(by_kind), d
    assert 3.0 < bad_rec.quality.loss_pct < 8.0
    assert "injected" in by_kind["provider_error"].says
    # The lost turn was answered with the apology: the transcript has it, so the diagnosis says so.
    lost = next(f for f in diagnose(bad_rec, Norms(), apology=apology).findings if f.kind == "turns_failed")
    assert bad_rec.turns_failed == 1 and lost.evidence[0] == "the caller heard the apology 1 time(s)"
    assert "the LLM's first sentence" in by_kind["slow_turns"].says
    assert d.level == "bad" and d.headline.startswith("bad: ") and by_kind["slow_turns"].says in d.headline

    (tmp_path / "cli.toml").write_text(f'[history]\nurl = "{history_url}"\n')
    assert cli(["--config", str(tmp_path / "cli.toml"), "calls", "diagnose", bad.id]) == 0
    out = capsys.readouterr().out
    assert "lost on the way in" in out and "the provider failed" in out and "the LLM's first sentence" in out
    assert cli(["--config", str(tmp_path / "cli.toml"), "calls", "diagnose", bad.id, "--json"]) == 0
    assert {f["kind"] for f in json.loads(capsys.readouterr().out)["findings"]} >= {"loss", "provider_error", "slow_turns"}


def _record(**kw) -> CallRecord:
    base = dict(call_id="c1", started_at=1_000_000.0, ended_at=1_000_060.0, duration_s=60.0, profile="default", providers=["local"],
                outcome="caller_hung_up", end_reason="caller hung up", quality=Quality(packets_in=3000, expected=3000))
    return CallRecord(**(base | kw))


def test_a_call_within_its_norms_has_nothing_wrong():
    turns = [TurnRecord(at=1_000_010.0, latency_s=0.9, stt_s=0.3, llm_first_sentence_s=0.4, tts_first_audio_s=0.15, playout_s=0.05)]
    d = diagnose(_record(turns=turns, silences=[Silence(at=1_000_020.0, seconds=4.0)], barge_in_at=[1_000_030.0]), Norms())
    assert d.flagged == [] and d.level == "ok" and d.headline == "nothing wrong found: caller hung up, 1 turn(s) answered within 1.5 s"


def test_the_slowest_stage_is_blamed_against_its_own_norm():
    """Speech to text 1.1 s (norm 0.8) and the LLM 1.2 s (norm 1.0): STT is further over its norm."""
    turns = [TurnRecord(at=1_000_010.0 + i, latency_s=2.9, stt_s=1.1, llm_first_sentence_s=1.2, tts_first_audio_s=0.3, playout_s=0.3) for i in range(2)]
    (f,) = diagnose(_record(turns=turns), Norms()).flagged
    assert f.kind == "slow_turns" and "2 of 2 answers" in f.says and "speech to text took up to 1.1 s against its norm of 0.8 s" in f.says
    tight = Norms(stt_s=2.0, answer_s=3.0)
    assert diagnose(_record(turns=turns), tight).flagged == []  # a profile's own norms decide
    assert not any("busy with other calls" in e for e in f.evidence)
    # A turn that waited behind other calls' model work says so: the machine, not the model, is short.
    turns[0].queued_s = 0.8
    (f,) = diagnose(_record(turns=turns), Norms()).flagged
    assert "0.80 s of it waiting for models busy with other calls" in f.evidence[0] and "busy" not in f.evidence[1]


def test_a_long_end_of_speech_wait_is_a_stage_of_its_own_and_counts_behind_a_hold_line():
    """The turn counts from the caller's last voiced frame: a line whose packets stop 1.2 s late
    (norm 0.8 s) makes a 2.0 s answer of quick models, and the wait is what is blamed. Behind a
    hold line, the answer's own time is the wait and its stages."""
    turns = [TurnRecord(at=1_000_010.0, latency_s=2.0, endpoint_s=1.2, stt_s=0.2, llm_first_sentence_s=0.4, tts_first_audio_s=0.15, playout_s=0.05)]
    (f,) = diagnose(_record(turns=turns), Norms()).flagged
    assert "the end-of-speech wait took up to 1.2 s against its norm of 0.8 s" in f.says
    assert "the end-of-speech wait 1.20 s, speech to text 0.20 s" in f.evidence[0] and "end_ms" in f.evidence[-1]
    held = [TurnRecord(at=1_000_010.0, latency_s=1.4, hold_s=1.4, endpoint_s=0.6, stt_s=0.2, llm_first_sentence_s=0.9, tts_first_audio_s=0.1)]
    (f,) = diagnose(_record(turns=held), Norms()).flagged
    assert "answered after 1.80 s" in f.evidence[0]  # 0.6 + 0.2 + 0.9 + 0.1: the hold line's 1.4 s is not the answer


def test_dead_air_a_barge_in_storm_a_failed_transfer_and_a_fallback_are_each_named():
    rec = _record(
        providers=["deepgram", "local"], provider_errors=1, last_provider_error="deepgram: connection closed",
        silences=[Silence(at=1_000_005.0, seconds=9.5)],
        barge_in_at=[1_000_010.0 + 5 * i for i in range(6)],
        actions=[ActionEntry(kind="transfer", by="agent", reason="wants sales", department="sales", target="200@from-internal",
                             state="failed", detail="404 Channel not found", at=1_000_040.0)],
        quality=Quality(packets_in=3000, expected=3000, kernel_drops=12),
    )
    d = diagnose(rec, Norms())
    # The worst first: what the caller felt, then what was worse than a good call (9.5 s of silence
    # is over the 6 s norm, not over twice it).
    assert [(f.kind, f.level) for f in d.flagged] == [
        ("kernel_drops", "bad"), ("barge_in_storm", "bad"), ("action_failed", "bad"), ("provider_error", "warn"), ("fallback", "warn"), ("dead_air", "warn"),
    ]
    assert d.headline.startswith("bad: the engine fell behind") and d.headline.endswith("(longest 9.5 s)")
    assert "kernel_drops" not in {f.kind for f in diagnose(rec.model_copy(update={"quality": Quality()}), Norms()).flagged}
    assert "dead_air" not in {f.kind for f in diagnose(rec, Norms(barge_ins_per_minute=10, silence_s=10)).flagged}


def test_a_failed_or_interrupted_call_heads_the_findings_and_a_vanished_profile_is_noted():
    d = diagnose(_record(outcome="failed", end_reason="media path lost: no RTP for 10 s"), Norms(), profile_known=False)
    assert d.findings[0].kind == "norms" and d.flagged[0].says == "the call failed: media path lost: no RTP for 10 s"
    assert diagnose(_record(outcome="interrupted", end_reason=None), Norms()).flagged[0].kind == "interrupted"


def test_a_gap_and_a_pacing_error_the_live_view_colours_red_are_both_in_the_headline():
    """The agent's audio ran dry 3 times and went out up to 239 ms late: the live view colours
    that pacing red (over 40 ms); the diagnosis flags it bad too, the gap beside it, and says
    nothing is wrong only when nothing is flagged."""
    rec = _record(quality=Quality(packets_in=3000, expected=3000, packets_out=2500, underruns=3, max_pacing_error_ms=239.0))
    d = diagnose(rec, Norms())
    assert d.level == "bad" and "nothing wrong" not in d.headline
    assert [(f.kind, f.level) for f in d.flagged] == [("pacing", "bad"), ("underruns", "warn")]
    assert d.headline.startswith("bad: the agent's audio packets went out up to 239 ms late") and "the caller heard a gap" in d.headline
    assert _bad("x", verdicts.PACING_MS.level(rec.quality.max_pacing_error_ms)) == "[bold red]x[/]"  # the live view's colour, from the same level
    # Within what a good line does: nothing flagged, at the live view's own thresholds.
    fine = diagnose(_record(quality=Quality(packets_in=3000, expected=3000, max_pacing_error_ms=9.0)), Norms())
    assert fine.flagged == [] and fine.headline.startswith("nothing wrong found")
    assert diagnose(_record(quality=Quality(packets_in=3000, expected=3000, max_pacing_error_ms=25.0)), Norms()).level == "warn"


def test_the_apology_is_said_only_where_the_transcript_has_it():
    """A provider error that cost no turn claims no apology; a lost turn says whether the caller
    heard the apology from what the transcript records."""
    apology = "Sorry, I lost my train of thought. Could you say that again?"
    quiet = diagnose(_record(provider_errors=1, last_provider_error="deepgram: connection closed"), Norms(), apology=apology)
    assert quiet.level == "warn" and not any("apolog" in e for f in quiet.findings for e in [f.says, *f.evidence])
    assert quiet.flagged[0].evidence == ["no turn lost and no fallback in the record: the call went on"]

    lost = _record(provider_errors=1, last_provider_error="turn lost: llm worker died", turns_failed=1,
                   transcript=[Line(role="agent", text="Hello!", at=1_000_001.0), Line(role="caller", text="What time do you open?", at=1_000_005.0)])
    d = diagnose(lost, Norms(), apology=apology)
    f = next(f for f in d.findings if f.kind == "turns_failed")
    assert f.level == "bad" and f.says == "1 turn(s) got no answer from the models"
    assert f.evidence[0] == "no apology in the transcript: the caller heard nothing for them"
    assert not any("answered with an apology" in e or "heard the apology" in e for g in d.findings for e in [g.says, *g.evidence])

    lost.transcript.append(Line(role="agent", text=apology, at=1_000_007.0))
    f = next(f for f in diagnose(lost, Norms(), apology=apology).findings if f.kind == "turns_failed")
    assert f.evidence[0] == "the caller heard the apology 1 time(s)"
    unknown = next(f for f in diagnose(lost, Norms()).findings if f.kind == "turns_failed")  # the apology's words not known: nothing said of it
    assert not any("apology" in e for e in unknown.evidence)


def test_an_outcome_is_a_success_or_a_failure_from_one_table():
    """How a call ended, as the engine recorded what Asterisk reported: a failure is flagged bad
    in the diagnosis and coloured red in the history; a success green; a live call neither."""
    for outcome in ("caller_hung_up", "agent_hung_up", "operator_hung_up", "transferred"):
        assert verdicts.outcome_level(outcome) == "ok" and verdicts.outcome_style(outcome) == "green"
    for outcome in ("failed", "interrupted", "refused", "transfer_failed"):
        assert verdicts.outcome_level(outcome) == "bad" and verdicts.outcome_style(outcome) == "bold red"
    assert verdicts.outcome_level("live") is None and verdicts.outcome_style("live") == "bold cyan"
    assert set(OUTCOMES) - {"live"} == set(verdicts.OUTCOME_LEVEL)  # every outcome the history writes has its verdict
    d = diagnose(_record(outcome="shutdown", end_reason="engine shutdown"), Norms())
    assert d.level == "warn" and d.flagged[0].says == "the call ended shutdown" and d.flagged[0].evidence[0].endswith(": engine shutdown")
    # A transfer the PBX dropped: the outcome and the failed transfer, both bad, the transfer's own words beside.
    failed = ActionEntry(kind="transfer", by="agent", reason="wants sales", department="sales", target="299@from-internal",
                         state="failed", detail="the PBX dropped the caller: no extension 299", at=1_000_050.0)
    d = diagnose(_record(outcome="transfer_failed", end_reason="transferred to sales (299@from-internal)", actions=[failed]), Norms())
    assert [(f.kind, f.level) for f in d.flagged] == [("outcome", "bad"), ("action_failed", "bad")]
    assert d.headline.startswith("bad: the call ended transfer failed; the transfer to sales (299@from-internal) asked for by agent failed: the PBX dropped")


def test_calls_list_flags_each_call_and_calls_diagnose_prints_levels(tmp_path, capsys):
    """``calls list`` has a flag column (the diagnosis at its worst) and ``--json`` its level;
    ``calls diagnose`` prints each finding's level and the flagged ones in its headline."""
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    db = HistoryDb(url)
    db.create()
    db.save([
        _record(call_id="gap-call", quality=Quality(packets_in=3000, expected=3000, packets_out=2500, underruns=3, max_pacing_error_ms=239.0)),
        _record(call_id="fine-call", started_at=1_000_100.0, ended_at=1_000_160.0),
        _record(call_id="slowish-call", started_at=1_000_200.0, ended_at=1_000_260.0, quality=Quality(packets_in=3000, expected=3000, jitter_ms=45.0)),
    ])
    db.close()
    (tmp_path / "cli.toml").write_text(f'[history]\nurl = "{url}"\n')
    cfg = ["--config", str(tmp_path / "cli.toml"), "calls"]

    assert cli([*cfg, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:7] == ["started", "length", "caller", "dialled", "profile", "outcome", "flag"]
    flag = {line.split()[-1]: line.split()[-4] for line in lines[1:4]}  # ... flag turns via id
    assert flag == {"slowish-call": "warn", "fine-call": "ok", "gap-call": "bad"}
    assert cli([*cfg, "list", "--json"]) == 0
    assert {(o := json.loads(line))["call_id"]: o["level"] for line in capsys.readouterr().out.splitlines()} == flag

    assert cli([*cfg, "diagnose", "gap-call"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("call gap-call: bad: the agent's audio packets went out up to 239 ms late") and "heard a gap" in out[0]
    assert out[1].startswith("  bad   the agent's audio packets") and any(line.startswith("  warn  the agent's audio ran dry 3 time(s)") for line in out)
    assert cli([*cfg, "diagnose", "fine-call", "--json"]) == 0
    fine = json.loads(capsys.readouterr().out)
    assert fine["level"] == "ok" and fine["headline"].startswith("nothing wrong found") and fine["findings"] == []


async def test_a_transfer_the_pbx_dropped_is_flagged_bad_in_the_list_and_the_diagnosis(pbx, tmp_path, capsys, history_url):
    """A transfer to an extension the dialplan lacks, over the simulator: the PBX drops the caller,
    the history says transfer_failed; ``calls list`` flags it bad and ``calls diagnose`` heads with
    the failed ending and the transfer's own words, never "nothing wrong"."""
    def cfg(c):
        c.profiles["default"] = AgentProfile(departments={"billing": Department(context="from-internal", extension="9999")}, greeting="Hello.")

    async with running_engine(pbx, tmp_path, cfg, AIAGENT_HISTORY_URL=history_url) as eng:
        call = pbx.place_call(script=[Pause(5.0)])
        await wait_for(lambda: (s := eng.store.get(call.id)) is not None and s.bridged_at is not None, what="the call bridged with the agent")
        assert eng.transfer(call.id, "billing")
        await asyncio.wait_for(call.finished.wait(), 10)
        rec = await history_of(eng, call.id, until=lambda r: r.outcome != "live" and r.actions[-1].state != "sent")
    assert rec.outcome == "transfer_failed" and verdicts.outcome_style(rec.outcome) == "bold red"
    d = diagnose(rec, Norms())
    assert d.level == "bad" and d.headline.startswith("bad: the call ended transfer failed; the transfer to billing (9999@from-internal)")

    (tmp_path / "cli.toml").write_text(f'[history]\nurl = "{history_url}"\n')
    assert cli(["--config", str(tmp_path / "cli.toml"), "calls", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.endswith(call.id))
    assert row.split()[-5:-3] == ["transfer_failed", "bad"]  # ... outcome flag turns via id


def test_the_thresholds_table_in_the_docs_is_the_one_the_code_uses():
    """docs/operations.md's table of thresholds says what engine/verdicts.py holds."""
    text = (ROOT / "docs" / "operations.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:4]]
            for line in text.split("### Thresholds and verdicts", 1)[1].split("\n\n")[2].splitlines()[2:]}

    def shown(v: float, unit: str) -> str:
        return f"{v:g} {unit}".strip()

    for label, t in (("caller packets lost on the way in", verdicts.LOSS_PCT), ("jitter of the caller's packets", verdicts.JITTER_MS),
                     ("nothing from the caller's side", verdicts.LAST_PACKET_S), ("pacing error: the agent's packets sent late", verdicts.PACING_MS),
                     ("gaps: the agent's audio ran dry while it spoke", verdicts.UNDERRUNS),
                     ("datagrams the engine's RTP socket dropped", verdicts.KERNEL_DROPS),
                     ("a turn waiting for the models (the hold line comes at 2 s)", verdicts.WAITING_S)):
        warn, bad = rows[label]
        assert warn.endswith(f"({shown(t.warn, t.unit)})") or warn == shown(t.warn, t.unit), (label, warn)
        assert bad.startswith(shown(t.bad, t.unit)), (label, bad)
