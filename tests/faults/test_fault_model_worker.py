"""Item 0 of the fault probe: a crash or hang in native model code costs a turn, never the call."""

from __future__ import annotations

import asyncio
import os
import signal

from providers.config import LocalProviderConfig
from providers.local.wire import Crash, Synthesize
from engine.sessions import TranscriptAdded
from pbxsim.script import Say, WaitAgent, WaitAgentDone
from tests.conftest import AGENT_PASS, HELLO, running_engine, wait_for

APOLOGY = LocalProviderConfig().apology


def chatty(cfg):
    cfg.profiles["default"].persona = "You are a storyteller. Always answer with a long story of many sentences."
    cfg.providers.local.llm_max_tokens = 300
    cfg.profiles["default"].greeting = ""


def agent_lines(sub) -> list[str]:
    lines = []
    while (e := sub.get_nowait()) is not None:
        if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final:
            lines.append(e.turn.text)
    return lines


def worker(eng, name: str) -> dict:
    return next(c for c in eng.health()["components"] if c["name"] == f"local-{name}-worker")


async def test_llm_worker_killed_mid_answer_the_call_carries_on(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, chatty, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        llm = eng.providers["local"].models.llm.worker
        first_pid = llm.pid
        rec = pbx.place_call(script=[
            Say(str(AGENT_PASS)), WaitAgent(0.3, 30), WaitAgentDone(0.8, 30),  # the apology
            Say(str(HELLO)), WaitAgent(0.5, 30), WaitAgentDone(0.8, 30),
        ])
        await wait_for(lambda: llm.depth == 1, timeout=30, interval=0.005)  # the answer is being generated
        os.kill(first_pid, signal.SIGKILL)
        await wait_for(lambda: llm.state == "running" and llm.pid != first_pid, timeout=60)
        w = worker(eng, "llm")
        assert w["restarts"] == 1 and w["last_error"] == "killed by SIGKILL" and w["state"] == "running"
        await asyncio.wait_for(rec.finished.wait(), 90)
        lines = agent_lines(sub)
    assert APOLOGY in lines, lines
    after = lines[lines.index(APOLOGY) + 1 :]
    assert after and all(line != APOLOGY for line in after), lines  # the next question got a real answer
    report = rec.report(pbx)
    assert report["ended_by"] == "caller" and report["hangup_clean"]
    assert pbx.leftovers() == ([], [])


async def test_hung_worker_is_killed_and_restarted(pbx, tmp_path):
    def hang_fast(cfg):
        cfg.profiles["default"].greeting = ""
        cfg.providers.local.worker_hang_timeout_s = 2.0
        cfg.providers.local.stt_at_pause = False  # the turn's one transcription meets the hang

    async with running_engine(pbx, tmp_path, hang_fast, AIAGENT_PROVIDER="local") as eng:
        sub = eng.store.subscribe()
        stt = eng.providers["local"].models.stt.worker
        pid = stt.pid
        os.kill(pid, signal.SIGSTOP)  # the process hangs as native code can: alive, answering nothing
        rec = pbx.place_call(script=[Say(str(AGENT_PASS)), WaitAgent(1.0, 30), WaitAgentDone(0.5, 30)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        lines = agent_lines(sub)
        w = worker(eng, "stt")
        assert w["restarts"] == 1 and w["last_error"].startswith("hung") and stt.pid != pid
        assert eng.health()["status"] == "ok"
    assert APOLOGY in lines
    assert rec.report(pbx)["ended_by"] == "caller"


async def test_worker_that_crashes_at_once_again_is_shown_failed_and_new_calls_fall_back(pbx, tmp_path):
    """A model that kills its worker on every job: restarts back off, the worker is marked
    failed, and the provider is no longer ready, so new calls go to the fallback provider."""
    async with running_engine(pbx, tmp_path, AIAGENT_PROVIDER="local", AIAGENT_FALLBACK_PROVIDER="tone") as eng:
        models = eng.providers["local"].models
        tts = models.voice.tts.worker
        for _ in range(7):
            await wait_for(lambda: tts.state in ("running", "failed"), timeout=60, interval=0.05)
            if tts.state == "failed":
                break
            try:
                await tts.run(Crash())
            except Exception:
                pass
        await wait_for(lambda: tts.state == "failed", timeout=60)
        assert not eng.providers["local"].readiness().ready
        assert eng.provider_for_new_call() == "tone"
        assert eng.health()["status"] == "degraded"
        # The app's header shows this line in red.
        problems = eng.summary().problems
        assert any(p.startswith("local-tts-worker failed: killed by SIGSEGV") for p in problems), problems


def test_llama_cpp_is_a_portable_build():
    """Item 0 (a): the setup's llama.cpp runs on any x86-64 host: its CPU code per x86-64 level, the
    loaded one within what this host reports, no AMX code at all (its path dies with SIGILL on hosts
    that advertise AMX) and AVX-512 only in the variants that need it, checked on the machine code."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "check_llama_build.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "x64" in r.stdout.splitlines()[0] and "haswell" in r.stdout.splitlines()[0], r.stdout
    assert "no AMX instruction anywhere; AVX-512 only in the AVX-512 variants" in r.stdout


async def test_model_work_waiting_past_the_limit_turns_health_degraded_and_says_where(pbx, tmp_path):
    """Overload is visible: jobs queued for a model longer than health.max_model_wait_s make
    /health degraded with the queue named (what the header shows in red); once served, ok again."""
    def strict(cfg):
        cfg.health.max_model_wait_s = 0.3

    async with running_engine(pbx, tmp_path, strict, AIAGENT_PROVIDER="local") as eng:
        tts = eng.providers["local"].models.voice.tts.worker
        text = "This is a long sentence for the voice to read, so that each job takes a while. " * 3
        jobs = asyncio.gather(*(tts.run(Synthesize(text)) for _ in range(4)))
        await wait_for(lambda: eng.health()["status"] == "degraded", timeout=20, interval=0.05)
        problems = eng.summary().problems
        assert any(p.startswith("local-tts-worker: a job has waited") and "health.max_model_wait_s 0.3" in p for p in problems), problems
        await jobs
        assert eng.health()["status"] == "ok" and not eng.summary().problems
