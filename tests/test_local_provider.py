"""The local provider with its real models (Whisper tiny.en, SmolLM2-135M, Piper joe-medium)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import wave
from pathlib import Path

import jiwer
import numpy as np
import pytest

from media.audio import Resampler, rms_dbfs, ulaw_to_pcm16
from providers.base import ModelWork, model_work
from providers.config import LocalProviderConfig, ProvidersConfig
from providers.profile import AgentProfile
from engine.engine import EngineStartError
from engine.sessions import BargeIn, TranscriptAdded, TurnCompleted
from pbxsim.script import Pause, Say, SayText, WaitAgent, WaitAgentDone
from pbxsim.voice import speak
from providers.local.models import ModelNotFound
from providers.local.stt import build_stt
from providers.local.wire import Answer, Slice, Synthesize, Transcribe
from providers.pipeline import PipelineProvider, SpeechCache, StagePool, history_window
from providers.stages import Speech
from providers.local.sentences import SentenceSplitter, reads_complete
from tests.conftest import AGENT_PASS, running_engine, wait_for

ROOT = Path(__file__).resolve().parent.parent
NORM = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])


def wer(ref: str, hyp: str) -> float:
    return jiwer.wer(NORM(ref), NORM(hyp) or "<nothing>")


@pytest.fixture(scope="module")
def whisper():
    """Whisper in this process, to check what the caller heard."""
    return build_stt(LocalProviderConfig())


def local_engine(pbx, tmp_path, mode="file", configure=None, **env):
    return running_engine(pbx, tmp_path, configure, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode, **env)


@pytest.mark.parametrize("downstream_mode", ["file", "stream"])
async def test_a_caller_gets_understood_and_a_spoken_answer(pbx, tmp_path, whisper, downstream_mode):
    async with local_engine(pbx, tmp_path, downstream_mode) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4), Say(str(AGENT_PASS)), WaitAgent(0.5), WaitAgentDone(0.8)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
    report = rec.report(pbx)
    # What the caller said, as the provider understood it, is in the report.
    assert wer("Please enter your password followed by the pound key.", report["transcript"] or "") < 0.2
    agent_lines = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final]
    assert agent_lines[0] == AgentProfile().greeting and len(agent_lines) >= 2
    # The answer was spoken: the caller heard speech after the greeting, and it says what the LLM wrote.
    greeting_end = rec.media.said[0][0]
    answer = b"".join(p for t, p in rec.media.agent_frames if t > greeting_end)
    assert len(answer) / 8000 > 1.0
    pcm16k = Resampler(8000, 16000).process(ulaw_to_pcm16(answer))
    heard = whisper.transcribe(pcm16k)
    assert wer(" ".join(agent_lines[1:]), heard) < 0.5, (agent_lines, heard)
    # The turn says where its time went: first the end-of-speech wait (the caller's last voiced
    # frame to the VAD's decision), then, from that decision, most of it in the call's own model
    # jobs (not another call's: there is none), the engine's own share the rest. The turn's latency
    # counts from that frame, so the shares are measured against the part after the decision.
    turn = next(e.turn for e in events if isinstance(e, TurnCompleted) and e.turn.stt_final is not None)
    assert turn.latency_s is not None and turn.in_models_s is not None and turn.queued_s is not None and turn.own_s is not None
    assert turn.last_voice_in is not None and turn.speech_end is not None and turn.endpoint_s is not None and 0 < turn.endpoint_s < 1.0
    after_decision = turn.latency_s - turn.endpoint_s
    assert after_decision == pytest.approx(turn.first_audio_out - turn.speech_end)
    assert turn.in_models_s + turn.queued_s > after_decision / 2, turn
    assert 0 <= turn.own_s < after_decision / 2, turn


async def test_a_slow_answer_is_announced_by_the_hold_line_not_silence(pbx, tmp_path):
    """More callers than the models keep up with: the answer has not started ``hold_after_ms``
    after the caller stopped, so the caller hears the hold line (pinned: no model work), then the
    answer."""
    def impatient(cfg):
        # No answer begun at the caller's pause (with the IQ4_NL model it is ready before the turn
        # ends), and a wait shorter than the first sentence's generation and synthesis.
        cfg.providers.local.answer_at_pause = False
        cfg.providers.local.hold_after_ms = 50

    async with local_engine(pbx, tmp_path, "stream", impatient) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[WaitAgentDone(0.4), Say(str(AGENT_PASS)), WaitAgent(0.3), WaitAgentDone(1.0)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
    hold = LocalProviderConfig().hold_line
    agent_lines = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final]
    assert agent_lines[0] == AgentProfile().greeting and agent_lines[1] == hold and len(agent_lines) >= 3, agent_lines
    assert rec.media.agent_heard_s() > 1.0 + 0.8 + 1.0  # greeting, hold line, answer


async def test_barge_in_cancels_generation_and_speech(pbx, tmp_path):
    def chatty(cfg):
        cfg.profiles["default"].persona = "You are a storyteller. Always answer with a long story of many sentences."
        cfg.providers.local.llm_max_tokens = 300
        cfg.profiles["default"].greeting = ""
        # A slow answer on a loaded machine would get the hold line first: the barge-in must cut
        # the story, not the hold line (whose turn has spoken nothing yet).
        cfg.providers.local.hold_after_ms = 60000

    async with local_engine(pbx, tmp_path, "stream", chatty) as eng:
        sub = eng.store.subscribe()
        # A question the storyteller answers at length (to the prompt "agent pass" it says one short
        # sentence, which a slow poll can let play out before the barge-in).
        rec = pbx.place_call(script=[SayText("Tell me a long story about a brave dragon, please."), WaitAgent(1.5), Pause(3.0)])
        await wait_for(lambda: rec.media.agent_heard_s() >= 1.5, timeout=30)
        pcall = eng.calls.calls[rec.id].provider_call
        assert eng.barge_in(rec.id)
        t_barge = asyncio.get_running_loop().time()
        await wait_for(lambda: eng.stages.queues()["local-llm-worker"].depth == 0, timeout=2)  # generation stopped
        # The caller listens 3 s more and hangs up: nothing more of the story reaches them.
        await asyncio.wait_for(rec.finished.wait(), 15)
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
        barge_at = next(i for i, e in enumerate(events) if isinstance(e, BargeIn))
        later_agent = [e for e in events[barge_at:] if isinstance(e, TranscriptAdded) and e.turn.role == "agent"]
        assert later_agent == []
        assert rec.media.agent_stopped_after(t_barge - 0.05) is not None
        # The history keeps what the caller heard (a few words), not every sentence generated.
        spoken = " ".join(e.turn.text for e in events[:barge_at] if isinstance(e, TranscriptAdded) and e.turn.role == "agent")
        history = pcall.history
        assert [m["role"] for m in history] == ["user", "assistant"]
        heard = history[-1]["content"]
        assert heard.endswith("...") and spoken.startswith(heard[:-3]), (heard, spoken)
        assert 0 < len(heard.split()) < len(spoken.split())


def trimmed(ulaw: bytes) -> bytes:
    """Speech without the quiet before and after it (frames under -50 dBFS)."""
    frames = [ulaw[i : i + 160] for i in range(0, len(ulaw) - 159, 160)]
    loud = [i for i, f in enumerate(frames) if rms_dbfs(ulaw_to_pcm16(f)) > -50]
    return b"".join(frames[loud[0] : loud[-1] + 1])


def two_phrases(path: Path, first: str, pause_ms: int, second: str) -> str:
    """A WAV of ``first``, ``pause_ms`` of silence and ``second``, as a caller says them."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ulaw_to_pcm16(trimmed(speak(first)) + b"\xff" * (pause_ms * 8) + trimmed(speak(second))))
    return str(path)


async def test_a_whole_sentence_ends_the_turn_at_the_pause_and_a_half_one_does_not(pbx, tmp_path):
    """A question that reads complete at the caller's 200 ms pause ends the turn there, not after
    the VAD's hangover (a long one here, as a site with noisy lines sets it, so that the pause's
    transcription always finishes first); a caller pausing after "My name is" is waited for, and
    both halves are one turn."""
    def long_hangover(cfg):
        cfg.vad.end_ms = 1200
        # Shorter than the pause (200 ms) and its transcription: the turn ends the moment the
        # transcript reads complete, and takes over the answer begun on it (one LLM job, not two).
        cfg.providers.local.complete_end_ms = 150

    async with local_engine(pbx, tmp_path, "stream", long_hangover) as eng:
        sub = eng.store.subscribe()
        cc = eng.calls.conversation_counters
        rec = pbx.place_call(script=[WaitAgentDone(0.4), SayText("What are your opening hours?"), WaitAgent(0.5), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        assert cc.early_ends == 1 and cc.turns == 1
        assert (cc.early_answers_used, cc.early_answers_dropped) == (1, 0)
        # A 300 ms pause mid-sentence: longer than the 200 ms that trigger the pause transcript,
        # shorter than any hangover.
        wav = two_phrases(tmp_path / "pause.wav", "My name is", 300, "John and I need help with my bill.")
        rec = pbx.place_call(script=[WaitAgentDone(0.4), Say(wav), WaitAgent(0.5), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
    said = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller" and e.turn.final and e.call_id == rec.id]
    assert len(said) == 1 and "name" in said[0].lower() and "bill" in said[0].lower(), said
    assert cc.turns == 2


async def test_the_answer_begins_at_the_pause_and_is_dropped_if_the_caller_goes_on(pbx, tmp_path):
    """A question that reads complete at the caller's 200 ms pause gets its answer begun there:
    when the VAD ends the turn (a long hangover here, so that the LLM is surely done), the first
    words are already generated. A caller who goes on after such a sentence gets one answer, to
    all they said."""

    def long_hangover(cfg):
        cfg.vad.end_ms = 1200

    async with local_engine(pbx, tmp_path, "stream", long_hangover) as eng:
        sub = eng.store.subscribe()
        cc = eng.calls.conversation_counters
        rec = pbx.place_call(script=[WaitAgentDone(0.4), SayText("What are your opening hours?"), WaitAgent(0.5), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec.finished.wait(), 60)
        assert (cc.early_answers_used, cc.early_answers_dropped) == (1, 0)
        wav = two_phrases(tmp_path / "goes_on.wav", "I need help with my bill.", 900, "My name is John Smith.")
        rec2 = pbx.place_call(script=[WaitAgentDone(0.4), Say(wav), WaitAgent(0.5), WaitAgentDone(0.5)])
        await asyncio.wait_for(rec2.finished.wait(), 60)
        # The answer to "I need help with my bill." was begun at the pause and dropped (the whole
        # utterance's answer is begun at the last pause too, if Whisper ends it with a full stop).
        assert cc.early_answers_dropped == 1 and cc.early_answers_used in (1, 2)
        url = f"http://127.0.0.1:{eng.health_server.port}/metrics"
        metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=2).read().decode())
        assert 'ai_agent_early_answers_total{outcome="dropped"} 1.0' in metrics
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
    (turn,) = [e.turn for e in events if isinstance(e, TurnCompleted) and e.call_id == rec.id and e.turn.stt_final is not None]
    # Without the early answer the first token comes an LLM's first-token time after the
    # transcript (tens to hundreds of ms); with it, at once.
    assert turn.llm_first_token is not None and turn.llm_first_token - turn.stt_final < 0.03, turn
    said = [e.turn.text for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller" and e.turn.final and e.call_id == rec2.id]
    assert len(said) == 1 and "bill" in said[0].lower() and "john" in said[0].lower(), said
    answers = [e.turn for e in events if isinstance(e, TurnCompleted) and e.call_id == rec2.id and e.turn.stt_final is not None]
    assert len(answers) == 1 and answers[0].first_audio_out is not None


def _slow_end(cfg):
    cfg.profiles["default"].greeting = ""
    cfg.vad.end_ms = 1200


async def _talk_while_stt_busy(pbx, eng, wav: str, depths: list[float]):
    """The caller says ``wav`` while the STT process is busy with another call's pass (stopped
    behind it, as a loaded one would be); ``depths``: the STT queue's depths to see in turn (a
    float: seconds to wait) before it is let go. Returns the call and the Whisper passes it took."""
    stt = eng.providers["local"].models.stt.worker
    os.kill(stt.pid, signal.SIGSTOP)
    try:
        busy = asyncio.ensure_future(stt.run(Transcribe(bytes(32000), "")))
        await wait_for(lambda: stt.depth == 1)
        given = stt.jobs
        rec = pbx.place_call(script=[Say(wav), WaitAgent(0.5, 30), WaitAgentDone(0.5, 30)])
        for depth in depths:
            if isinstance(depth, float):
                await asyncio.sleep(depth)
            else:
                await wait_for(lambda d=depth: stt.depth == d, timeout=10, interval=0.005)
    finally:
        os.kill(stt.pid, signal.SIGCONT)
    await busy
    await asyncio.wait_for(rec.finished.wait(), 60)
    return rec, stt.jobs - given


def _caller_said(events, rec) -> list[str]:
    return [e.turn.text.lower() for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "caller" and e.turn.final and e.call_id == rec.id]


async def test_a_pause_transcript_still_waiting_when_the_caller_goes_on_is_dropped(pbx, tmp_path):
    """Under load a pause's transcript waits for Whisper behind other calls' work; if the caller
    speaks again meanwhile it could only be stale, so it is dropped before it takes a pass: the
    utterance costs one Whisper pass, not two. One that the turn waits for (the caller spoke
    again after their turn ended) is the turn's transcript, and kept."""
    async with local_engine(pbx, tmp_path, "stream", _slow_end) as eng:
        sub = eng.store.subscribe()
        stt = eng.providers["local"].models.stt.worker
        # The first pause's transcript waits (2), the caller goes on and it is dropped (1), the
        # last pause's waits (2): one Whisper pass for the whole utterance.
        wav = two_phrases(tmp_path / "goes_on.wav", "I need help with my bill.", 800, "My name is John Smith.")
        rec, passes = await _talk_while_stt_busy(pbx, eng, wav, [2, 1, 2])
        assert passes == 1
        # 1.5 s apart: the turn ends on the first sentence (1.2 s of quiet) with its pause's
        # transcript still waiting (2); the caller goes on (1.3 s after the pause was seen), and it
        # stays: it is the turn's. Let go while they speak, its answer waits for them (not spoken
        # over them) and gives way to the second sentence's turn, which answers both.
        wav = two_phrases(tmp_path / "two_turns.wav", "I need help with my bill.", 1500, "My name is John Smith.")
        rec2, _ = await _talk_while_stt_busy(pbx, eng, wav, [2, 1.6, 2])
        assert stt.depth == 0
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)

    said = _caller_said(events, rec)
    assert len(said) == 1 and "bill" in said[0] and "john" in said[0], said
    said = _caller_said(events, rec2)
    assert len(said) == 2 and "bill" in said[0] and "john" in said[1], said
    lines = [(e.turn.role, e.turn.text.lower()) for e in events if isinstance(e, TranscriptAdded) and e.turn.final and e.call_id == rec2.id]
    assert [r for r, _ in lines[:2]] == ["caller", "caller"], lines  # no answer between, over the caller
    assert rec.report(pbx)["agent_audio_seconds"] > 0.5


async def test_a_caller_who_speaks_again_before_their_transcript_comes_is_answered_on_both(pbx, tmp_path):
    """The caller's turn ends, its transcript waits behind other calls' work, and they say more
    (and end that too) before it comes: the new turn answers both utterances' words, in order;
    the first is not lost with the turn the second one replaced."""
    async with local_engine(pbx, tmp_path, "stream", _slow_end) as eng:
        sub = eng.store.subscribe()
        wav = two_phrases(tmp_path / "two_turns.wav", "I need help with my bill.", 1500, "My name is John Smith.")
        # Turn one's transcript waits (2); the caller goes on and ends turn two, whose own
        # transcription queues behind it (3).
        rec, passes = await _talk_while_stt_busy(pbx, eng, wav, [2, 1.6, 3])
        assert passes == 2
        events = []
        while (e := sub.get_nowait()) is not None:
            events.append(e)
    said = _caller_said(events, rec)
    assert len(said) == 1 and said[0].index("bill") < said[0].index("john"), said
    answers = [e.turn for e in events if isinstance(e, TurnCompleted) and e.call_id == rec.id and e.turn.first_audio_out is not None]
    assert len(answers) == 1, answers
    assert rec.report(pbx)["agent_audio_seconds"] > 0.5


def test_whisper_reads_a_window_of_the_utterance_not_30_s(whisper, monkeypatch):
    """The encoder's cost is its window's: a 3 s prompt is read in the 15 s minimum window, a
    long utterance in its own length and a second more, with the same words."""
    import faster_whisper.transcribe as fw

    shapes: list[tuple[int, ...]] = []
    to_ct2 = fw.get_ctranslate2_storage
    monkeypatch.setattr(fw, "get_ctranslate2_storage", lambda a: shapes.append(a.shape) or to_ct2(a))
    with wave.open(str(AGENT_PASS)) as w:
        prompt = Resampler(8000, 16000).process(w.readframes(w.getnframes()))
    said = "Please enter your password followed by the pound key."
    assert wer(said, whisper.transcribe(prompt)) < 0.2
    assert shapes == [(1, 80, 1500)]
    shapes.clear()
    # 21 s: the prompt, 15 s of silence, the prompt again: the encoder sees all of it.
    long = prompt + bytes(15 * 32000) + prompt
    assert wer(f"{said} {said}", whisper.transcribe(long)) < 0.2
    assert shapes and shapes[0][2] == len(long) // 320 + 1 + 100 < 3000


def test_a_whisper_pass_cancelled_while_its_encoder_runs_is_not_decoded(whisper, monkeypatch):
    """A pause's transcript made stale by the caller's next words is cancelled while Whisper's
    encoder runs: the pass stops there instead of decoding text nobody reads."""
    import threading

    import faster_whisper.transcribe as fw

    class Decoder:
        """The CTranslate2 model, its decoding counted."""

        def __init__(self, model: object) -> None:
            self.model = model
            self.decoded = 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.model, name)

        def generate(self, *args: object, **kwargs: object) -> object:
            self.decoded += 1
            return self.model.generate(*args, **kwargs)

    decoder = Decoder(whisper.model.model)
    monkeypatch.setattr(whisper.model, "model", decoder)
    cancelled = threading.Event()
    encoded: list[int] = []
    to_ct2 = fw.get_ctranslate2_storage

    def encoder_starts(a):  # type: ignore[no-untyped-def]
        encoded.append(1)
        if cancel_in_encoder:
            cancelled.set()  # the cancel arrives while the encoder runs
        return to_ct2(a)

    monkeypatch.setattr(fw, "get_ctranslate2_storage", encoder_starts)
    with wave.open(str(AGENT_PASS)) as w:
        prompt = Resampler(8000, 16000).process(w.readframes(w.getnframes()))
    cancel_in_encoder = False
    assert wer("Please enter your password followed by the pound key.", whisper.transcribe(prompt, "", cancelled)) < 0.2
    assert (len(encoded), decoder.decoded) == (1, 1)
    cancel_in_encoder = True
    assert whisper.transcribe(prompt, "", cancelled) == ""
    assert (len(encoded), decoder.decoded) == (2, 1)  # encoded, not decoded
    assert whisper.transcribe(prompt, "", cancelled) == ""  # cancelled before it began: not even encoded
    assert (len(encoded), decoder.decoded) == (2, 1)


@pytest.mark.parametrize("kind", ["stt", "tts"])
async def test_a_job_in_a_one_thread_worker_takes_one_core_not_two(kind):
    """stt_threads = 1 and tts_threads = 1 are one core each. For Whisper, numpy's OpenBLAS
    (faster-whisper's mel filterbank) would start a thread per core that spins after each call, so
    that each pass cost twice its time in CPU; for Piper, onnxruntime's pool would run its
    operators on every core."""
    import psutil

    from providers.local.workers import ModelWorker

    with wave.open(str(AGENT_PASS)) as w:
        prompt = Resampler(8000, 16000).process(w.readframes(w.getnframes()))
    job = Transcribe(prompt, "") if kind == "stt" else Synthesize("We are open Monday to Friday from 8 am to 6 pm.")
    worker = ModelWorker(kind, LocalProviderConfig(stt_threads=1, tts_threads=1).model_dump(mode="json"), max_queue=4)
    await worker.start()
    try:
        assert worker.pid is not None
        proc = psutil.Process(worker.pid)
        first = await worker.run(job)
        assert "please enter your password" in first.lower() if kind == "stt" else len(first) > 22050
        cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
        for _ in range(8):
            await worker.run(job)
        cpu, wall = sum(proc.cpu_times()[:2]) - cpu0, time.perf_counter() - t0
    finally:
        await worker.close()
    assert cpu < 1.4 * wall, f"{cpu:.2f} CPU-s in {wall:.2f} s"


async def test_missing_model_is_a_startup_error_naming_setting_and_path(pbx, tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(EngineStartError) as e:
        async with local_engine(pbx, tmp_path, LOCAL_LLM_MODEL_PATH=str(missing)):
            pass
    assert "providers.local.llm_model_path" in str(e.value) and str(missing) in str(e.value)


def test_missing_voice_via_cli(tmp_path):
    env = {**os.environ, "AIAGENT_PROVIDER": "local", "LOCAL_TTS_VOICE_PATH": str(tmp_path / "voice.onnx"),
           "AIAGENT_MEDIA_DIR": str(tmp_path / "m"), "RTP_PORT": "0", "HEALTH_PORT": "0"}
    r = subprocess.run([Path(sys.executable).parent / "aiagent-tui", "--no-ui"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 1
    assert "providers.local.tts_voice_path" in r.stderr and str(tmp_path / "voice.onnx") in r.stderr and "Traceback" not in r.stderr


def test_sigterm_to_the_engines_group_stops_the_model_workers_with_the_engine(tmp_path):
    """Ctrl-C in a terminal, ``timeout`` or a cgroup stopped all at once signal every process of
    the group: the model workers are the engine's to stop (their own session), so none of them is
    logged as crashed or restarted while the engine shuts down, and none outlives it."""
    from tests.conftest import get_json, wait_until
    from tests.conftest import free_port

    health_port = free_port()
    env = {**os.environ, "AIAGENT_PROVIDER": "local", "AIAGENT_MEDIA_DIR": str(tmp_path / "m"), "RTP_PORT": "0",
           "HEALTH_PORT": str(health_port), "ASTERISK_ARI_PORT": str(free_port())}
    eng = subprocess.Popen([Path(sys.executable).parent / "aiagent-tui", "--no-ui"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{health_port}/health"
        wait_until(lambda: get_json(url)[1]["providers"]["local"]["ready"], timeout=120)
        workers = [c["pid"] for c in get_json(url)[1]["components"] if c.get("pid")]
        assert len(workers) >= 3  # STT, LLM, TTS (and the HTTP process)
        os.killpg(eng.pid, signal.SIGTERM)
        assert eng.wait(30) == 0
    finally:
        if eng.poll() is None:
            eng.kill()
            eng.wait()
    out = eng.stdout.read() if eng.stdout else ""
    assert "ERROR" not in out and "Traceback" not in out, out
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


class local_pipeline:
    """The built-in local pipeline on its own (its stage pool closed with it)."""

    def __init__(self, cfg: LocalProviderConfig) -> None:
        self.pool = StagePool(ProvidersConfig(local=cfg))
        self.provider = PipelineProvider("local", self.pool.config, self.pool)

    async def __aenter__(self) -> PipelineProvider:
        try:
            await self.provider.load()
        except BaseException:
            await self.pool.close()
            raise
        return self.provider

    async def __aexit__(self, *exc) -> None:
        await self.pool.close()


async def test_default_models_come_from_their_packages():
    async with local_pipeline(LocalProviderConfig()) as p:
        assert p.readiness().ready
        assert "qwen2.5-coder-0.5b-instruct-iq4_nl.gguf" in p.readiness().detail  # made by the setup
    async with local_pipeline(LocalProviderConfig(llm_model="smollm2-135m")) as smol:
        assert "SmolLM2-135M-Instruct" in smol.readiness().detail
    with pytest.raises(ModelNotFound, match="providers.local.stt_model_path"):
        async with local_pipeline(LocalProviderConfig(stt_model_path="/nonexistent/whisper")):
            pass


async def test_tts_cache_makes_repeats_free():
    async with local_pipeline(LocalProviderConfig(tts_cache_size=4)) as p:
        m = p.models
        assert m is not None
        text = "Thank you for calling, goodbye."
        first = await m.synthesize(text)
        jobs = m.voice.tts.status().jobs
        again = await m.synthesize("thank you for calling,   goodbye.")
        assert again is first and m.voice.tts.status().jobs == jobs  # served from the cache, no TTS job
        assert first.seconds > 1.0  # about two seconds of speech
        assert np.abs(np.frombuffer(first.pcm16, dtype=np.int16)).max() > 3000  # not silence
        for i in range(5):
            await m.synthesize(f"Sentence number {i}.")
        assert m.cache.get(text) is None  # evicted, least recently used first
        assert m.cache.get(LocalProviderConfig().apology) is not None  # pinned at load


async def test_model_work_is_served_by_priority_and_partials_give_way():
    """The worker's queue: what a caller waits on (NOW) before the rest of answers (LATER), in
    arrival order within a priority; a partial transcript (IF_IDLE) is refused while others wait;
    a queued job that is cancelled never reaches the model."""
    from providers.stages import Priority, StageBusy

    async with local_pipeline(LocalProviderConfig(tts_cache_size=0)) as p:
        tts, stt = p.models.voice.tts, p.models.stt
        worker = tts.worker
        done: list[str] = []

        async def say(name: str, priority: Priority) -> None:
            await tts.synthesize(f"This is sentence {name}, spoken for the test.", priority)
            done.append(name)

        dispatched: list[Priority] = []
        worker.on_wait = lambda model, priority, waited: dispatched.append(priority)
        running = asyncio.create_task(say("running", Priority.LATER))
        await wait_for(lambda: worker._running is not None, timeout=10, interval=0.001)
        later = [asyncio.create_task(say(f"later{i}", Priority.LATER)) for i in range(2)]
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(say("cancelled", Priority.NOW))
        now = asyncio.create_task(say("now", Priority.NOW))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(StageBusy):  # others wait
            await worker.run(Synthesize("A partial."), priority=Priority.IF_IDLE)
        assert await stt.transcribe(b"\0" * 32000, "", Priority.IF_IDLE) == ""  # nothing waits on the STT worker
        await asyncio.gather(running, *later, now, cancelled, return_exceptions=True)
        assert done == ["running", "now", "later0", "later1"]
        assert worker.depth == 0
        assert dispatched == [Priority.LATER, Priority.NOW, Priority.LATER, Priority.LATER]  # the cancelled one never reached the model


async def test_a_calls_model_time_counts_its_own_jobs_where_they_ran_and_waited():
    """A job records, in the call's ModelWork, how long it waited behind another call's job and
    when the model process worked on it (the process's own stamps): what is left of the caller's
    wait is the engine's (here: handing the job over and back)."""
    async with local_pipeline(LocalProviderConfig(tts_cache_size=0)) as p:
        tts = p.models.voice.tts
        loop = asyncio.get_running_loop()
        mine, theirs = ModelWork(), ModelWork()

        async def say(work: ModelWork, text: str) -> tuple[float, float]:
            model_work.set(work)  # this task's context only
            began = loop.time()
            await tts.synthesize(text)
            return began, loop.time()

        first = asyncio.create_task(say(theirs, "Another caller's answer, a sentence long enough to wait for."))
        await wait_for(lambda: tts.worker._running is not None, timeout=10, interval=0.001)
        (a0, a1), (b0, b1) = await asyncio.gather(first, say(mine, "Mine, after it."))
    share = mine.share(b0, b1)
    assert share.queued_s > 0.05 and share.inside_s > 0.02, share
    assert abs(share.queued_s - (a1 - b0)) < 0.05, (share, a1 - b0)  # it waited until the other's was done
    assert 0 <= (b1 - b0) - share.inside_s - share.queued_s < 0.05, share
    assert theirs.share(b0, b1).queued_s == 0 and len(theirs.runs) == len(mine.runs) == 1


@pytest.mark.parametrize("spans, waits, expect", [
    ([(1.0, 2.0)], [], (1.0, 0.0)),
    ([(1.0, 2.0), (1.5, 3.0)], [], (2.0, 0.0)),  # two models at once count once
    ([(0.0, 1.5)], [], (0.5, 0.0)),  # clipped to the stretch
    ([(2.0, None)], [(1.0, 2.0)], (2.0, 1.0)),  # still running: to the stretch's end
    ([(2.0, 2.5)], [(1.5, 2.2), (3.5, 9.0)], (0.5, 1.0)),  # a wait overlapping a run counts as the run
])
def test_model_share_of_a_stretch(spans, waits, expect):
    w = ModelWork()
    for a, b in spans:
        w.running(a).end = b
    for a, b in waits:
        w.waited(a, b)
    share = w.share(1.0, 4.0)
    assert (round(share.inside_s, 6), round(share.queued_s, 6)) == expect


def test_speech_cache_pins_survive_eviction():
    c = SpeechCache(1)
    a, b, cc = (Speech(x, 8000) for x in (b"a", b"b", b"c"))
    c.put("Sorry.", a, pin=True)
    c.put("One.", b)
    c.put("Two.", cc)
    assert c.get("sorry.") == a and c.get("One.") is None and c.get("two.") == cc


@pytest.mark.parametrize(
    "pieces, sentences, rest",
    [
        (["Hello", " there.", " How are", " you?", " Fine"], ["Hello there.", "How are you?"], "Fine"),
        (["Call Dr. Smith at 3.5 past", " noon. OK"], ["Call Dr. Smith at 3.5 past noon."], "OK"),
        (["Sure, I can help with that, and I will look up your account right now, one moment"], ["Sure, I can help with that, and I will look up your account right now,"], "one moment"),
        (["Wait!! Really?! Yes."], ["Wait!!", "Really?!"], "Yes."),
    ],
)
def test_sentence_splitter(pieces, sentences, rest):
    s = SentenceSplitter()
    got = []
    for p in pieces:
        got += s.feed(p)
    assert got == sentences
    assert s.flush() == rest


@pytest.mark.parametrize(
    "text, complete",
    [
        ("What are your opening hours?", True), ("Please enter your password followed by the pound key.", True),
        ("Thanks!", True), ("I would like to.", False), ("My account number is.", False), ("I want to pay my", False),
        ("Hello...", False), ("Um.", False), ("So,", False), ("", False),
    ],
)
def test_a_transcript_reads_complete_only_as_a_finished_sentence(text, complete):
    assert reads_complete(text) is complete


def test_a_model_in_parts_is_kept_only_with_its_published_hash(tmp_path):
    """The setup joins a model's parts in order and refuses the result unless its sha256 is the
    published one: nothing is left behind that the engine could load."""
    import hashlib

    from providers.local.models import AssembledModel

    parts = {f"m{i}": tmp_path / f"part{i}.bin" for i in range(3)}
    for i, p in enumerate(parts.values()):
        p.write_bytes(bytes([i]) * 1000)
    whole = b"".join(p.read_bytes() for p in parts.values())
    locate = lambda module, relative: parts.get(module)  # noqa: E731
    spec = dict(name="m", parts=tuple((m, "x") for m in parts), size=len(whole), filename="m.gguf", directory=tmp_path / "models")
    bad = AssembledModel(sha256="0" * 64, **spec)
    with pytest.raises(ModelNotFound, match="refused"):
        bad.assemble(locate)
    assert not bad.ready() and list((tmp_path / "models").iterdir()) == []
    good = AssembledModel(sha256=hashlib.sha256(whole).hexdigest(), **spec)
    assert good.assemble(locate).read_bytes() == whole and good.ready()
    reordered = AssembledModel(sha256=good.sha256, **{**spec, "parts": tuple(reversed(spec["parts"])), "filename": "r.gguf"})
    with pytest.raises(ModelNotFound):
        reordered.assemble(locate)


def test_a_requantized_model_is_the_same_bytes_every_time_and_kept_only_with_its_hash(tmp_path):
    """The setup makes the default LLM with llama.cpp's own quantizer from a verified model: the
    quantizer gives the same bytes every time (so the result has a published sha256 to check), and
    a result with another hash is refused, nothing left behind."""
    import hashlib
    import re

    from providers.local.models import SMOLLM2, AssembledModel, QuantizedModel, resolve

    packaged = resolve(SMOLLM2, "")
    digest = hashlib.sha256(packaged.read_bytes()).hexdigest()
    source = AssembledModel(name="smol", parts=(("smol", "x"),), size=packaged.stat().st_size, sha256=digest, filename="smol.gguf", directory=tmp_path / "source")
    locate = lambda module, relative: packaged  # noqa: E731
    spec = dict(name="smol-q4_0", source=source, ftype=2, output_type=None, filename="q.gguf")  # 2: LLAMA_FTYPE_MOSTLY_Q4_0
    bad = QuantizedModel(size=1, sha256="0" * 64, directory=tmp_path / "a", **spec)
    with pytest.raises(ModelNotFound, match="refused") as refused:
        bad.assemble(locate)
    assert not bad.ready() and list((tmp_path / "a").iterdir()) == []
    found = re.search(r"\((\d+) bytes, sha256 ([0-9a-f]{64});", str(refused.value))
    assert found is not None and found[2] != digest
    good = QuantizedModel(size=int(found[1]), sha256=found[2], directory=tmp_path / "b", **spec)
    path = good.assemble(locate)  # made again, in another place: the same bytes
    assert good.ready() and hashlib.sha256(path.read_bytes()).hexdigest() == found[2]

    from llama_cpp import Llama

    assert Llama(model_path=str(path), n_ctx=64, verbose=False).metadata["general.file_type"] == "2"  # it loads, as Q4_0


@pytest.mark.parametrize("turns", [0, 1, 4, 6])
def test_the_history_window_keeps_the_last_exchanges_and_moves_half_of_them_at_a_time(turns):
    history: list[dict[str, str]] = []
    starts = []
    for k in range(1, 30):
        history += [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": f"a{k}"}]
        window = history_window(history, turns)
        assert len(window) <= 2 * turns and window == history[len(history) - len(window) :]
        assert len(window) > 2 * (turns - max(1, turns // 2)) or len(history) <= 2 * turns
        starts.append(len(history) - len(window))
    moves = [k for k in range(1, len(starts)) if starts[k] != starts[k - 1]]
    assert all(b - a >= max(1, turns // 2) for a, b in zip(moves, moves[1:], strict=False))


def test_a_long_calls_later_turns_cost_the_llm_only_their_new_words():
    """Once a call has more exchanges than its prompt keeps, the oldest leave half the window at a
    time (turns 5, 7 and 9 here), and the LLM cuts them out of the conversation's cached state
    instead of reading the whole conversation again: no turn after the first evaluates most of
    its prompt. (Before, the window slid on by one exchange every turn and turns 5 to 9 each
    evaluated all of theirs.)"""
    import threading

    import llama_cpp

    from providers.local.llm import ChatModel
    from providers.local.models import resolve_llm

    model = ChatModel(resolve_llm("smollm2-135m", ""), 2048, 2, "")
    ctx = model.llm._ctx.ctx
    system = {"role": "system", "content": AgentProfile().instructions()}
    history: list[dict[str, str]] = []
    whole, cuts = [], []
    for turn in range(10):
        question = {"role": "user", "content": f"Question {turn}: are you open on the {turn + 1}th of May?"}
        messages = [system, *history_window(history, 4), question]
        prompt = model.prompt_tokens(messages)
        llama_cpp.llama_perf_context_reset(ctx)
        before = model.cache.cuts
        answer = model.generate(messages, 12, 0.0, lambda _: None, threading.Event(), conversation=1)
        assert answer.strip()
        if llama_cpp.llama_perf_context(ctx).n_p_eval > len(prompt) / 2:
            whole.append(turn)
        if model.cache.cuts > before:
            cuts.append(turn)
        history += [question, {"role": "assistant", "content": answer}]
    assert whole == [0]
    assert cuts == [5, 7, 9]


def two_calls_exchanges() -> tuple[dict[str, str], list[dict[str, str]], list[dict[str, str]], dict[str, str]]:
    """(system prompt, an exchange only one call had, an exchange both had, the next question)."""
    said = [
        {"role": "user", "content": "My account number is 4471 and my name is Jane Doe."},
        {"role": "assistant", "content": "Thank you, Jane, I have noted your account number."},
    ]
    common = [
        {"role": "user", "content": "What are your opening hours on a Saturday morning, please?"},
        {"role": "assistant", "content": "We are open from nine in the morning until one in the afternoon on Saturdays."},
    ]
    return {"role": "system", "content": AgentProfile().instructions()}, said, common, {"role": "user", "content": "And on Sunday?"}


def test_the_llm_cuts_only_a_calls_own_state():
    """The values kept after a cut were computed with the cut exchanges before them: another call
    whose prompt holds the same later exchanges gets the shared prefix only, not a cut of this
    call's state."""
    import threading

    from providers.local.llm import ChatModel
    from providers.local.models import resolve_llm

    model = ChatModel(resolve_llm("smollm2-135m", ""), 2048, 2, "")
    system, said, common, question = two_calls_exchanges()
    model.generate([system, *said, *common, question], 8, 0.0, lambda _: None, threading.Event(), conversation=1)
    model.generate([system, *common, question], 8, 0.0, lambda _: None, threading.Event(), conversation=2)
    assert model.cache.cuts == 0
    model.generate([system, *said, *common, question], 8, 0.0, lambda _: None, threading.Event(), conversation=1)
    model.generate([system, *common, question], 8, 0.0, lambda _: None, threading.Event(), conversation=1)
    assert model.cache.cuts == 1


def test_the_llm_worker_cuts_a_state_only_for_the_call_its_jobs_name():
    """The worker process hands each answer job's call number on to the model: the same
    conversation asked by a call has its state cut when its oldest exchanges leave the prompt, and
    asked by no call (answers read ahead for a profile) it never has."""
    import threading

    from providers.local.worker_process import _Model

    model = _Model("llm", LocalProviderConfig(llm_model="smollm2-135m"))
    assert model.llm is not None
    system, said, common, question = two_calls_exchanges()

    def ask(messages: list[dict[str, str]], conversation: int | None) -> None:
        part = model.serve(Answer(messages, None, 8, 0.0, conversation), lambda _: None, threading.Event())
        assert isinstance(part, Slice) and part.generated > 0 and part.tokens

    ask([system, *said, *common, question], None)
    ask([system, *common, question], None)
    assert model.llm.cache.cuts == 0
    later = {"role": "user", "content": "And on Monday?"}
    ask([system, *said, *common, later], 7)
    ask([system, *common, later], 7)
    assert model.llm.cache.cuts == 1


async def test_a_calls_answers_reach_the_llm_worker_with_its_number():
    """The LLM worker cuts a state only for the call that made it: each answer's job carries the
    number of the call whose task asks (``model_work``), slice after slice; a profile read ahead
    belongs to no call."""
    from providers.local.worker_stages import WorkerLlm

    class Worker:
        name, detail, depth = "llm", "", 0
        jobs: list[Answer] = []

        async def run(self, job, on_chunk=None, priority=None):
            self.jobs.append(job)
            first = job.tokens is None
            return Slice([1, 2, 3], "One. " if first else "Two.", 2, not first)

    llm = WorkerLlm(Worker())  # type: ignore[arg-type]
    calls = [ModelWork(), ModelWork()]

    async def answer(work: ModelWork) -> None:
        model_work.set(work)
        await llm.generate([{"role": "user", "content": "hi"}], 20, 0.0, lambda _: None)

    await asyncio.gather(*(asyncio.create_task(answer(w)) for w in calls))
    await llm.prime("You answer the phone.")
    numbers = [job.conversation for job in Worker.jobs]
    assert calls[0].conversation != calls[1].conversation
    assert sorted(numbers[:4]) == sorted([calls[0].conversation] * 2 + [calls[1].conversation] * 2)
    assert numbers[4] is None
