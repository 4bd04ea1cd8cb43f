"""Call recordings: a profile with record = true keeps each call as a stereo WAV next to the history."""

from __future__ import annotations

import os
import time
import wave

import numpy as np
import pytest

from engine.recording import Recordings
from media.audio import ulaw_to_pcm16
from media.recording import RATE, StereoTimeline
from pbxsim.server import SimPBX
from pbxsim.script import SayText, WaitAgent, WaitAgentDone
from tests.conftest import history_of, running_engine, wait_for

FRAME = RATE // 50


def _frames(pcm: np.ndarray) -> np.ndarray:
    """dBFS per 20 ms frame."""
    n = len(pcm) // FRAME
    x = pcm[: n * FRAME].astype(np.float64).reshape(n, FRAME)
    return 20 * np.log10(np.sqrt((x**2).mean(axis=1)) / 32768 + 1e-9)


@pytest.mark.parametrize("mode", ["stream", "file"])
async def test_a_recorded_call_is_a_stereo_wav_with_the_caller_left_and_the_agent_right_in_step(tmp_path, mode):
    """The caller waits for the greeting, asks a question, hears the answer and hangs up. The WAV
    next to the history: 8 kHz stereo as long as the call; the agent's side holds about as much
    audio as the caller heard; the caller's speech starts on the left after the greeting ended on
    the right, as it did on the line; the record names the file; only the engine's group may read it."""
    pbx = SimPBX(seed=11)
    await pbx.start(port=0)

    def record(cfg):
        cfg.profiles["default"].record = True

    try:
        async with running_engine(pbx, tmp_path, record, AIAGENT_PROVIDER="local", AIAGENT_DOWNSTREAM_MODE=mode) as eng:
            script = [WaitAgentDone(0.8, 30.0), SayText("What are your opening hours?"), WaitAgent(1.0, 40.0), WaitAgentDone(1.0, 60.0)]
            call = pbx.place_call(script=script, caller_number="5550142")
            await wait_for(call.finished.is_set, timeout=120)
            rec = await history_of(eng, call.id)
            # The agent's audio as the caller heard it, measured as the recording is below.
            heard_s = np.count_nonzero(_frames(np.frombuffer(ulaw_to_pcm16(call.media.agent_audio()), dtype=np.int16)) > -60) / 50
            # On the line, as the caller's phone timed it: the greeting's last voiced frame heard,
            # then the caller's voice (its onset) after.
            first_said, onset = call.media.said[0]
            line_greeting_end = max(t for t, payload in call.media.agent_frames
                                    if t < first_said and _frames(np.frombuffer(ulaw_to_pcm16(payload), dtype=np.int16))[0] > -60)
            line_gap = onset - line_greeting_end
            path = tmp_path / "recordings" / f"{call.id}.wav"
            await wait_for(lambda: eng.recordings.written >= 1)
    finally:
        await pbx.stop()

    assert rec.recording == str(path)
    assert os.stat(path).st_mode & 0o777 == 0o640
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (2, 2, RATE)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).reshape(-1, 2)
    assert abs(len(pcm) / RATE - rec.duration_s) < 1.5
    caller, agent = _frames(pcm[:, 0]), _frames(pcm[:, 1])
    agent_s = np.count_nonzero(agent > -60) / 50
    assert heard_s * 0.85 < agent_s < heard_s * 1.15 + 0.3, (agent_s, heard_s)
    # The greeting is the agent's first run of audio; the caller speaks some 0.8 s after its end.
    voiced = np.flatnonzero(agent > -60)
    greeting_end = voiced[np.flatnonzero(np.diff(voiced) > 25)[0]] / 50  # the first pause over half a second
    speech_start = np.flatnonzero(caller > -35)[0] / 50
    # The caller waits for 0.8 s after the agent's last packet (the greeting's trailing silence,
    # under -60 dBFS here, comes first), then the simulator synthesizes the question (Piper, at
    # that moment: 1-2 s, more on a loaded machine), then its voice's 0.26 s breath. The recording
    # keeps that gap as it was on the line, whatever it was.
    assert greeting_end + 0.4 < speech_start, (greeting_end, speech_start)
    assert abs((speech_start - greeting_end) - line_gap) < 0.3, (greeting_end, speech_start, line_gap)


def test_the_two_sides_stay_in_step_across_pauses_and_late_packets():
    t = StereoTimeline()
    one = np.full(FRAME, 1000, dtype=np.int16).tobytes()
    two = np.full(FRAME, -2000, dtype=np.int16).tobytes()
    for i in range(50):  # a second of the caller, packets 20 ms apart with jitter under RESYNC_S
        t.add(0, one, i * 0.02 + (0.03 if i % 7 == 0 else 0.0))
    for i in range(10):  # the agent starts 3 s in: the silence before it is kept
        t.add(1, two, 3.0 + i * 0.02)
    out = np.frombuffer(t.take(), dtype=np.int16).reshape(-1, 2)
    assert len(out) == int(3.2 * RATE)
    assert (out[:RATE, 0] == 1000).all() and (out[RATE:, 0] == 0).all()
    assert (out[: 3 * RATE, 1] == 0).all() and (out[3 * RATE :, 1] == -2000).all()
    # What is taken is forgotten; a side that had nothing is silence up to the mark.
    t.add(0, one, 3.5)
    assert np.frombuffer(t.take(3.3), dtype=np.int16).reshape(-1, 2).tolist() == [[0, 0]] * int(0.1 * RATE)


def test_a_file_placed_ahead_of_time_is_cut_where_it_stopped():
    """File mode places a bridge playback whole when it starts; a barge-in (or a pause) stops it
    midway: what was placed after that is forgotten, what was already taken stays."""
    def agent_heard(stopped_at: float) -> np.ndarray:
        t = StereoTimeline()
        t.add(1, np.full(RATE, 3000, dtype=np.int16).tobytes(), 1.0)  # a 1 s file from 1 s on
        first = np.frombuffer(t.take(1.2), dtype=np.int16).reshape(-1, 2)
        t.cut(1, stopped_at)
        rest = np.frombuffer(t.take(2.5), dtype=np.int16).reshape(-1, 2)
        return np.concatenate([first[:, 1], rest[:, 1]])

    half = agent_heard(1.5)  # stopped half-way
    assert np.count_nonzero(half) == int(0.5 * RATE) and (half[RATE : int(1.5 * RATE)] == 3000).all()
    assert np.count_nonzero(agent_heard(1.1)) == int(0.2 * RATE)  # what was taken already stays


async def test_recordings_past_the_retention_or_the_cap_are_deleted_and_a_write_failure_loses_no_call(tmp_path):
    errors = []
    recs = Recordings(tmp_path / "rec", retention_days=1, max_files=2, on_error=lambda n, e: errors.append(str(e)))
    (tmp_path / "rec").mkdir()
    for i, age_days in enumerate([3, 0.5, 0.2, 0.1]):
        p = tmp_path / "rec" / f"old{i}.wav"
        p.write_bytes(b"RIFF")
        os.utime(p, (time.time() - age_days * 86400,) * 2)
    recs._prune()
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["old2.wav", "old3.wav"]

    await recs.close()
    (tmp_path / "afile").write_text("")  # where the directory should be: no file can go there
    recs = Recordings(tmp_path / "afile" / "rec", 1, 2, on_error=lambda n, e: errors.append(str(e)))
    clock = [0.0]
    rec = recs.start("c1", lambda: clock[0])
    rec.caller(b"\x00\x01" * 160)
    clock[0] = 2.0
    recs.finish(rec)
    await recs.flush()
    assert rec.failed and "cannot write" in errors[0] and "the call goes on unrecorded" in errors[0]
    await recs.close()


class FakeCard:
    """A sound card for machines without one: pulls audio from PortAudio's kind of callback on a
    thread of its own, four times faster than real time (what it plays is kept)."""

    device = "test card"

    def __init__(self, callback) -> None:
        import threading

        self.played: list[np.ndarray] = []
        self._stop = threading.Event()

        def run() -> None:
            while not self._stop.wait(0.025):
                out = np.zeros((800, 1), dtype=np.int16)
                callback(out, 800, None, None)
                self.played.append(out[:, 0].copy())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _recorded_call(tmp_path) -> tuple[str, str]:
    """A history with one recorded call: the agent's greeting for 1 s, the caller from 1.5 s, the
    agent's answer from 3 s; 4 s of WAV (agent 440 Hz on the right, caller 220 Hz on the left)."""
    from engine.history import CallRecord, HistoryDb, Line

    t0 = time.time() - 60
    wav = tmp_path / "rec" / "c1.wav"
    wav.parent.mkdir()
    t = np.arange(4 * RATE) / RATE
    left = np.where((t >= 1.5) & (t < 2.5), 8000 * np.sin(2 * np.pi * 220 * t), 0)
    right = np.where((t < 1.0) | (t >= 3.0), 8000 * np.sin(2 * np.pi * 440 * t), 0)
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.stack([left, right], axis=1).astype(np.int16).tobytes())
    url = f"sqlite:///{tmp_path / 'history.sqlite3'}"
    db = HistoryDb(url)
    db.create()
    lines = [Line(role="agent", text="Hello, how can I help?", at=t0), Line(role="caller", text="When are you open?", at=t0 + 1.5),
             Line(role="agent", text="From nine to five.", at=t0 + 3.0)]
    db.save([CallRecord(call_id="c1", started_at=t0 - 0.2, ended_at=t0 + 4, duration_s=4.2, caller_number="5550142", outcome="caller_hung_up",
                        end_reason="caller hung up", transcript=lines, recording=str(wav), recording_started_at=t0),
             CallRecord(call_id="c2", started_at=t0, ended_at=t0 + 4, duration_s=4.0, outcome="caller_hung_up", end_reason="caller hung up")])
    db.close()
    return url, str(wav)


async def test_replay_plays_the_recording_with_the_transcript_following(tmp_path):
    """In a call's detail, p plays its recording on the sound card (both sides mixed): the line being
    said is highlighted as the audio reaches it; space pauses; it stops at the end."""
    from aiagent_tui.app import AiAgentApp
    from aiagent_tui.screens.call_detail import CallDetailScreen
    from tests.scripted_engine import ScriptedEngine, ScriptedRuntime
    from tests.conftest import until

    url, _ = _recorded_call(tmp_path)
    cards: list[FakeCard] = []
    app = AiAgentApp(ScriptedRuntime(ScriptedEngine.two_calls()), history_url=url)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.engine is not None)
        detail = CallDetailScreen(url, "c1", open_output=lambda cb: cards.append(FakeCard(cb)) or cards[-1])
        app.push_screen(detail)
        await until(pilot, lambda: detail.record is not None)
        await pilot.press("p")
        await until(pilot, lambda: detail.current_line == 1)  # the caller's line, 1.5 s in
        shown = str(detail.query_one("#detail").content)
        assert "▶ recording playing" in shown and "on test card" in shown
        await pilot.press("space")
        await until(pilot, lambda: detail.replay.paused and "recording paused" in str(detail.query_one("#detail").content))
        at = detail.replay.position_s
        await pilot.pause(0.3)  # time that a paused replay must not play on
        assert detail.replay.position_s == at
        await pilot.press("space")
        await until(pilot, lambda: detail.replay is None)  # played to the end
        # notify() posts a message to the app: the toast is there once the app has handled it.
        await until(pilot, lambda: any("played to the end" in str(n.message) for n in app._notifications), timeout=2)
        played = np.concatenate(cards[0].played)
        assert np.abs(played).max() > 7000 and len(played) >= 4 * RATE  # both tones reached the card
        assert cards[0]._stop.is_set()

        # A call that was not recorded says so; with no sound card the replay says why.
        app.pop_screen()
        other = CallDetailScreen(url, "c2")
        app.push_screen(other)
        await until(pilot, lambda: other.record is not None)
        await pilot.press("p")
        await until(pilot, lambda: any("not recorded" in str(n.message) for n in app._notifications))
        app.pop_screen()
        nocard = CallDetailScreen(url, "c1")
        app.push_screen(nocard)
        await until(pilot, lambda: nocard.record is not None)
        await pilot.press("p")
        await until(pilot, lambda: nocard.replay is not None or any("cannot play the recording" in str(n.message) for n in app._notifications))
        if nocard.replay is None:
            said = [str(n.message) for n in app._notifications if "cannot play the recording" in str(n.message)]
            assert any("no sound device on this machine: play the recording on one that has" in m or "PortAudio library" in m for m in said)
            assert not any("Error querying" in m for m in said)
        else:  # a machine with a sound card plays it
            await pilot.press("p")
