"""Beyond what the models serve, nobody is left in silence: the capacity is measured from the
models' own work (engine/capacity.py), new calls beyond it are turned away at once, a turn the
models refuse gets the apology and counts as failed, and the operator sees both."""

from __future__ import annotations

import asyncio
import logging

from engine.capacity import MIN_CALL_S, RECENT_S, START_PER_CORE, TARGET_BUSY, ModelCapacity, Overload
from runtime.clock import ManualClock
from engine.sessions import CallLog, CallSession, SessionStore, TranscriptAdded
from pbxsim.script import Pause, Say, WaitAgent, WaitAgentDone
from providers.config import LocalProviderConfig
from tests.conftest import AGENT_PASS, HELLO, history_of, running_engine, wait_for

APOLOGY = LocalProviderConfig().apology
THREADS = {"stt": 1, "llm": 1, "tts": 1}


class Models:
    """What a meter reads of the model workers: each model's seconds of work so far."""

    def __init__(self) -> None:
        self.busy = {"stt": 0.0, "llm": 0.0, "tts": 0.0}
        self.calls = 0

    def run(self, clock: ManualClock, seconds: int, calls: int, need: dict[str, float]) -> None:
        """``calls`` calls up for ``seconds``, each needing ``need[kind]`` seconds of a model per
        second of call; a model works at most the whole second (beyond, turns queue)."""
        self.calls = calls
        for _ in range(seconds):
            for kind, per_call in need.items():
                self.busy[kind] += min(1.0, per_call * calls)
            clock.advance(1.0)


def meter(clock: ManualClock, models: Models, cores: int = 2, override: int = 0) -> ModelCapacity:
    m = ModelCapacity(clock, lambda: models.busy, lambda: models.calls, THREADS, cores=cores, override=override)
    m.start()
    return m


NEED = {"stt": 0.02, "llm": 0.06, "tts": 0.02}  # seconds of work per second of call


def test_the_capacity_is_the_start_value_until_enough_call_time_is_measured_then_what_was_measured():
    clock, models = ManualClock(), Models()
    m = meter(clock, models)
    assert m.estimate().calls == START_PER_CORE * 2 and "start value" in m.estimate().basis
    models.run(clock, 120, 0, NEED)  # no call: nothing learnt
    assert m.observed_call_s == 0 and m.estimate().calls == START_PER_CORE * 2
    models.run(clock, int(MIN_CALL_S / 4) - 1, 4, NEED)
    assert "start value" in m.estimate().basis
    models.run(clock, 2, 4, NEED)
    est = m.estimate()
    # (The first second of calls counts half: the calls are sampled at both its ends.)
    assert est.basis.startswith("measured") and abs(m.per_call()["llm"] - 0.06) < 0.003, m.per_call()
    # The LLM is the busiest: 0.7 / 0.06 = 11.7 calls; the cores allow 0.7 * 2 / 0.10 = 14.
    assert est.calls == 11 == int(TARGET_BUSY / NEED["llm"])
    assert "llm 0.06" in est.basis and "2 cores" in est.basis


def test_the_cores_bound_the_capacity_when_the_models_together_need_more_than_them():
    clock, models = ManualClock(), Models()
    m = meter(clock, models, cores=1)
    models.run(clock, 40, 2, {"stt": 0.05, "llm": 0.05, "tts": 0.05})
    # Each model alone would serve 0.7 / 0.05 = 14 calls; together they need 0.15 of a core a call.
    assert m.estimate().calls == 4 == int(TARGET_BUSY * 1 / 0.15)


def test_overload_brings_the_measured_capacity_down_to_what_fits():
    """Beyond capacity a model works all the time and a call's share looks smaller than its need;
    the capacity comes out at most TARGET_BUSY times the calls then, and admitting only that many
    brings it down to what the calls need."""
    clock, models = ManualClock(), Models()
    m = meter(clock, models)
    need = {"stt": 0.05, "llm": 0.2, "tts": 0.05}  # the LLM serves 0.7 / 0.2 = 3.5 calls
    calls = 12
    models.run(clock, 60, calls, need)  # the LLM busy all the time
    first = m.estimate().calls
    assert first is not None and first <= TARGET_BUSY * calls
    for _ in range(20):  # calls end and new ones are admitted up to the capacity
        calls = min(calls, m.estimate().calls or calls)
        models.run(clock, 60, calls, need)
    assert m.estimate().calls == 3


def test_the_setting_overrides_the_measure_and_no_local_model_means_no_limit():
    clock, models = ManualClock(), Models()
    m = meter(clock, models, override=5)
    models.run(clock, 60, 4, NEED)
    assert m.estimate().calls == 5 and "max_active_calls" in m.estimate().basis
    none = ModelCapacity(clock, dict, lambda: 3, THREADS, cores=2)
    none.start()
    assert none.estimate().calls is None and none.limit is None


def test_turned_away_callers_and_refused_turns_are_counted_logged_once_a_while_and_a_problem_for_a_minute():
    clock, store = ManualClock(), SessionStore()
    sub = store.subscribe()
    over = Overload(clock, store)
    calls = [CallSession(call_id=f"c{i}", caller_channel_id=f"c{i}") for i in range(5)]
    m = meter(clock, Models(), override=3)
    assert over.problems(m.estimate()) == ()
    over.call_refused()
    over.call_refused()
    for c in calls:
        over.turn_failed(c, "models busy: stt: 16 jobs already queued", busy=True)
    over.turn_failed(calls[0], "turn lost: llm model worker died", busy=False)  # a crash: the worker's problem, not overload
    assert store.calls_refused_model_capacity == 2 and store.turns_failed == 6
    assert [c.turns_failed for c in calls] == [2, 1, 1, 1, 1]
    problems = over.problems(m.estimate())
    assert problems[0].startswith("models at capacity: 2 caller(s) turned away in the last 60 s (3 calls at once, set by providers.local.max_active_calls)")
    assert problems[1].startswith("models busy: 5 turn(s) refused in the last 60 s, the callers got the apology (last: models busy: stt: 16 jobs")
    clock.advance(11)
    over.turn_failed(calls[1], "models busy: llm: 16 jobs already queued", busy=True)
    lines = []
    while (e := sub.get_nowait()) is not None:
        if isinstance(e, CallLog):
            lines.append((e.level, e.message))
    assert lines == [
        (logging.WARNING, "turn not served, models busy: stt: 16 jobs already queued: the caller gets the apology"),
        (logging.WARNING, "turn not served, models busy: llm: 16 jobs already queued: the caller gets the apology (4 more like this in the last 11 s not logged)"),
    ]
    clock.advance(RECENT_S - 10)
    assert len(over.problems(m.estimate())) == 1  # the refusals are over a minute old; one turn is not
    clock.advance(11)
    assert over.problems(m.estimate()) == ()


def test_the_header_shows_the_models_capacity_the_callers_turned_away_and_the_failed_turns():
    import dataclasses

    from aiagent_tui.widgets import HeaderBar
    from tests.scripted_engine import ScriptedEngine

    summary = ScriptedEngine.two_calls().summary()
    shown: list = []
    bar = HeaderBar()
    bar.show_content = shown.append  # type: ignore[method-assign]
    bar.show(summary)
    assert "model calls" not in shown[0].renderables[1].plain and "turns failed" not in shown[0].renderables[1].plain  # none measured, none failed
    bar.show(dataclasses.replace(summary, model_capacity=2, model_calls=2, calls_refused_model_capacity=3, turns_failed=4))
    line = shown[1].renderables[1].plain
    assert "  model calls 2/2  " in line and "  refused 3 (3 at model capacity)  failed " in line and "  turns failed 4  " in line, line


# ---- end to end: the engine with its real models, the simulated PBX's callers


def agent_lines(sub) -> list[str]:
    lines = []
    while (e := sub.get_nowait()) is not None:
        if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final:
            lines.append(e.turn.text)
    return lines


async def test_a_turn_refused_because_the_models_queue_is_full_gets_the_apology_and_counts_as_failed(pbx, tmp_path):
    def no_greeting(cfg):
        cfg.profiles["default"].greeting = ""

    async with running_engine(pbx, tmp_path, no_greeting, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        sub = eng.store.subscribe()
        # The fault: the LLM's queue is full, so the worker refuses the answer's job at once
        # (QueueFull), as it does with max_queue jobs waiting.
        eng.providers["local"].models.llm.worker.max_queue = 0
        rec = pbx.place_call(script=[Say(str(AGENT_PASS)), WaitAgent(1.0, 30), WaitAgentDone(0.8, 30)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        lines = agent_lines(sub)
        assert lines and all(line == APOLOGY for line in lines), lines  # one a turn (the VAD may hear the prompt as two)
        failed = len(lines)
        assert rec.media.turn_latencies() and rec.media.agent_heard_s() > 2.0  # the caller heard it: no silence
        assert eng.store.turns_failed == failed
        summary = eng.summary()
        assert summary.turns_failed == failed and summary.status == "degraded"
        busy = f"models busy: {failed} turn(s) refused in the last 60 s, the callers got the apology (last: models busy: llm: 0 jobs already queued)"
        assert busy in summary.problems, summary.problems
        assert f"ai_agent_turns_failed_total {failed}.0" in eng.metrics.render().decode()
        record = await history_of(eng, rec.id)
        assert record.turns_failed == failed
        assert eng.capacity.per_call()["stt"] > 0  # the call's transcription was measured as the models' work
    assert rec.report(pbx)["ended_by"] == "caller"


async def test_calls_beyond_the_models_capacity_get_the_over_capacity_path_at_once_and_health_shows_it(pbx, tmp_path):
    def one_call(cfg):
        cfg.providers.local.max_active_calls = 1

    async with running_engine(pbx, tmp_path, one_call, AIAGENT_PROVIDER="local") as eng:
        assert eng.summary().model_capacity == 1 and eng.summary().status == "ok"
        first = pbx.place_call(script=[WaitAgentDone(0.4, 30), Pause(30)])
        await wait_for(lambda: first.bridged)
        loop = asyncio.get_running_loop()
        placed = loop.time()
        second = pbx.place_call(str(HELLO), hold_s=1.0)
        await asyncio.wait_for(second.finished.wait(), 10)
        assert loop.time() - placed < 2.0  # at once (a few ms: never answered, never bridged)
        assert not second.answered and not second.bridged and second.ended_by == "ari" and second.hangup_cause == 17  # busy
        summary = eng.summary()
        assert summary.status == "degraded" and summary.calls_refused_model_capacity == 1 and summary.calls_rejected_over_capacity == 0
        assert summary.model_capacity == 1 and summary.model_calls == 1
        assert any(p.startswith("models at capacity: 1 caller(s) turned away in the last 60 s (1 calls at once, set by providers.local.max_active_calls)")
                   for p in summary.problems), summary.problems
        metrics = eng.metrics.render().decode()
        assert "ai_agent_calls_refused_model_capacity_total 1.0" in metrics and "ai_agent_model_capacity_calls 1.0" in metrics
        # Or back to the dialplan (a queue, voicemail), as at max_calls.
        eng.calls.config.asterisk.over_capacity = "dialplan"
        third = pbx.place_call(str(HELLO), hold_s=1.0)
        await asyncio.wait_for(third.finished.wait(), 10)
        assert not third.bridged and third.ended_by == "dialplan"
        assert ("channels.continueInDialplan", f"/channels/{third.id}/continue") in pbx.requests
        assert eng.store.calls_refused_model_capacity == 2
        assert first.bridged and not first.finished.is_set()  # the call being served is untouched
        await eng.hangup(first.id)
