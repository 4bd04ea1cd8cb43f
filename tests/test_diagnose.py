"""``aiagent-tui calls diagnose``: what went wrong on a call, named from its history record."""

from __future__ import annotations

import asyncio
import json

from aiagent_tui.cli import main as cli
from engine.diagnosis import diagnose
from engine.history import ActionEntry, CallRecord, Quality, Silence, TurnRecord
from pbxsim.server import SimPBX
from pbxsim.script import SayText, WaitAgent, WaitAgentDone
from providers.profile import Norms
from providers.stages import StageFailed
from tests.conftest import history_of, running_engine, wait_for

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
    finally:
        await pbx.stop()

    clean_kinds = {f.kind for f in diagnose(clean_rec, Norms()).findings}
    assert not clean_kinds & {"loss", "provider_error", "failed", "fallback"}, clean_kinds

    d = diagnose(bad_rec, Norms())
    by_kind = {f.kind: f for f in d.findings}
    assert {"loss", "provider_error", "slow_turns"} <= set(by_kind), d
    assert 3.0 < bad_rec.quality.loss_pct < 8.0
    assert "injected" in by_kind["provider_error"].says
    assert "the LLM's first sentence" in by_kind["slow_turns"].says
    assert d.headline.startswith(f"{len(d.problems)} problems: ")

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
    assert d.problems == [] and d.headline == "nothing wrong found: caller hung up, 1 turn(s) answered within 1.5 s"


def test_the_slowest_stage_is_blamed_against_its_own_norm():
    """Speech to text 1.1 s (norm 0.8) and the LLM 1.2 s (norm 1.0): STT is further over its norm."""
    turns = [TurnRecord(at=1_000_010.0 + i, latency_s=2.9, stt_s=1.1, llm_first_sentence_s=1.2, tts_first_audio_s=0.3, playout_s=0.3) for i in range(2)]
    (f,) = diagnose(_record(turns=turns), Norms()).problems
    assert f.kind == "slow_turns" and "2 of 2 answers" in f.says and "speech to text took up to 1.1 s against its norm of 0.8 s" in f.says
    tight = Norms(stt_s=2.0, answer_s=3.0)
    assert diagnose(_record(turns=turns), tight).problems == []  # a profile's own norms decide
    assert not any("busy with other calls" in e for e in f.evidence)
    # A turn that waited behind other calls' model work says so: the machine, not the model, is short.
    turns[0].queued_s = 0.8
    (f,) = diagnose(_record(turns=turns), Norms()).problems
    assert "0.80 s of it waiting for models busy with other calls" in f.evidence[0] and "busy" not in f.evidence[1]


def test_a_long_end_of_speech_wait_is_a_stage_of_its_own_and_counts_behind_a_hold_line():
    """The turn counts from the caller's last voiced frame: a line whose packets stop 1.2 s late
    (norm 0.8 s) makes a 2.0 s answer of quick models, and the wait is what is blamed. Behind a
    hold line, the answer's own time is the wait and its stages."""
    turns = [TurnRecord(at=1_000_010.0, latency_s=2.0, endpoint_s=1.2, stt_s=0.2, llm_first_sentence_s=0.4, tts_first_audio_s=0.15, playout_s=0.05)]
    (f,) = diagnose(_record(turns=turns), Norms()).problems
    assert "the end-of-speech wait took up to 1.2 s against its norm of 0.8 s" in f.says
    assert "the end-of-speech wait 1.20 s, speech to text 0.20 s" in f.evidence[0] and "end_ms" in f.evidence[-1]
    held = [TurnRecord(at=1_000_010.0, latency_s=1.4, hold_s=1.4, endpoint_s=0.6, stt_s=0.2, llm_first_sentence_s=0.9, tts_first_audio_s=0.1)]
    (f,) = diagnose(_record(turns=held), Norms()).problems
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
    kinds = [f.kind for f in diagnose(rec, Norms()).problems]
    assert kinds == ["provider_error", "fallback", "dead_air", "kernel_drops", "barge_in_storm", "action_failed"]
    assert diagnose(rec, Norms(barge_ins_per_minute=10, silence_s=10)).problems[2].kind == "kernel_drops"


def test_a_failed_or_interrupted_call_heads_the_findings_and_a_vanished_profile_is_noted():
    d = diagnose(_record(outcome="failed", end_reason="media path lost: no RTP for 10 s"), Norms(), profile_known=False)
    assert d.findings[0].kind == "norms" and d.problems[0].says == "the call failed: media path lost: no RTP for 10 s"
    assert diagnose(_record(outcome="interrupted", end_reason=None), Norms()).problems[0].kind == "interrupted"
