"""The operator's keys on a live call (w whisper, k take over / hand back, i bring in, m listen),
driven with Textual's Pilot on the scripted engine, which records what the app asks of it. The
sound devices are fakes (this machine has none: the plain refusal is tested too)."""

from __future__ import annotations

import getpass
import threading

import numpy as np
import pytest
from textual.widgets import OptionList, RadioSet

from aiagent_tui.app import AiAgentApp
from aiagent_tui.monitor import Callback
from aiagent_tui.screens.operator import BringInScreen, ListenScreen, OperatorBanner, WhisperScreen
from engine.sessions import TranscriptTurn
from tests.conftest import until
from tests.scripted_engine import ScriptedEngine, ScriptedRuntime

BY = f"{getpass.getuser()} (local)"


class FakeCard:
    """An output device: the test pulls what would be played."""

    device = "test speaker"

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.closed = False

    def pull(self, frames: int = 160) -> np.ndarray:
        out = np.zeros((frames, 1), dtype=np.int16)
        self.callback(out, frames, None, None)
        return out[:, 0]

    def close(self) -> None:
        self.closed = True


class FakeMic:
    """An input device: the test speaks into it, from another thread as PortAudio would."""

    device = "test microphone"

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.closed = False

    def speak(self, pcm: np.ndarray) -> None:
        t = threading.Thread(target=self.callback, args=(pcm.reshape(-1, 1), len(pcm), None, None))
        t.start()
        t.join()

    def close(self) -> None:
        self.closed = True


def tone(hz: float = 1000.0, n: int = 160, amplitude: int = 8000, start: int = 0) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * (start + np.arange(n)) / 8000)).astype(np.int16)


def power_at(pcm: np.ndarray, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    return float(spectrum[np.abs(np.fft.rfftfreq(len(pcm), 1 / 8000) - hz) < 60].sum() / spectrum.sum())


def notices(app: AiAgentApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


@pytest.fixture
def devices(monkeypatch):
    """The app's sound devices, replaced: what each open made."""
    from aiagent_tui.screens.calls import CallsScreen

    opened: dict[str, list] = {"output": [], "input": []}

    def card(callback: Callback) -> FakeCard:
        opened["output"].append(FakeCard(callback))
        return opened["output"][-1]

    def mic(callback: Callback) -> FakeMic:
        opened["input"].append(FakeMic(callback))
        return opened["input"][-1]

    monkeypatch.setattr(CallsScreen, "open_output", staticmethod(card))
    monkeypatch.setattr(CallsScreen, "open_input", staticmethod(mic))
    return opened


async def started(pilot, app: AiAgentApp) -> str:
    await until(pilot, lambda: app.live.calls.selected is not None)
    return app.live.calls.selected


async def test_w_sends_a_line_for_the_agent_or_an_instruction():
    eng = ScriptedEngine.two_calls()
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        cid = await started(pilot, app)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WhisperScreen))
        assert "5550142" in str(app.screen.query_one("#whisper-title").content)
        await pilot.press("enter")  # nothing typed: said, and the dialog stays
        await until(pilot, lambda: any("nothing to send" in n for n in notices(app)))
        assert isinstance(app.screen, WhisperScreen)
        await pilot.press(*"the doctor is running 10 minutes late", "enter")
        await until(pilot, lambda: not isinstance(app.screen, WhisperScreen))
        assert eng.commands[-1] == ("say", cid, "the doctor is running 10 minutes late", BY)
        await until(pilot, lambda: any("line for the agent sent" in n for n in notices(app)))

        # ctrl+t: an instruction for the rest of the call instead.
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WhisperScreen))
        await pilot.press("ctrl+t")
        await until(pilot, lambda: "instruction for the rest of the call" in str(app.screen.query_one("#whisper-mode-label").content))
        await pilot.press(*"offer the 4 pm slot", "enter")
        await until(pilot, lambda: not isinstance(app.screen, WhisperScreen))
        assert eng.commands[-1] == ("instruct", cid, "offer the 4 pm slot", BY)

        # escape: nothing is sent.
        sent = len(eng.commands)
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, WhisperScreen))
        await pilot.press("x", "escape")
        await until(pilot, lambda: not isinstance(app.screen, WhisperScreen))
        assert len(eng.commands) == sent

        # A refusal is said as one.
        eng.refuse.add("say")
        await pilot.press("w", "h", "i", "enter")
        await until(pilot, lambda: any("line for the agent refused" in n for n in notices(app)))
        await pilot.press("q", "y")


async def test_k_takes_the_call_over_with_the_microphone_and_hands_it_back(devices):
    eng = ScriptedEngine.two_calls()
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        cid = await started(pilot, app)
        await pilot.press("k")
        await until(pilot, lambda: app.live.query(OperatorBanner))
        assert ("take_over", cid, BY) in eng.commands
        assert "you have the call from 5550142" in app.export_screenshot().replace("&#160;", " ")
        # The operator hears both sides of the call while they have it ...
        assert eng.taps[cid] is not None and app.live.monitor is not None and app.live.monitor.side == "both"
        # ... and what they say goes to the engine, on its loop, as 8 kHz PCM16.
        mic = devices["input"][-1]
        mic.speak(tone())
        await until(pilot, lambda: eng.operator_frames)
        assert eng.operator_frames[0] == (cid, tone().tobytes(), 8000)
        # The caller's words reach the operator's speaker; their own voice is not played back to them.
        eng.taps[cid]("operator", tone(1000).tobytes(), 8000)
        assert np.abs(devices["output"][-1].pull()).max() == 0
        eng.taps[cid]("caller", tone(500).tobytes(), 8000)
        assert np.abs(devices["output"][-1].pull()).max() > 4000

        # k on another call: this operator already has one.
        await pilot.press("down")
        await until(pilot, lambda: app.live.calls.selected != cid)
        await pilot.press("k")
        await until(pilot, lambda: any("select it and press k to hand it back" in n for n in notices(app)))
        await pilot.press("up")
        await until(pilot, lambda: app.live.calls.selected == cid)

        # k again: handed back; the microphone closes, the banner goes, the listening stays.
        await pilot.press("k")
        await until(pilot, lambda: not app.live.query(OperatorBanner))
        assert eng.commands[-1] == ("hand_back", cid, BY) and mic.closed and app.live.mic is None
        assert app.live.monitor is not None

        # Taken over again; the engine ends the take-over itself (an action on the call): the
        # microphone closes and the operator is told.
        await pilot.press("k")
        await until(pilot, lambda: app.live.query(OperatorBanner))
        await pilot.pause(0.6)  # the engine's yes seen
        eng.store.get(cid).operator = ""
        await until(pilot, lambda: not app.live.query(OperatorBanner))
        assert app.live.mic is None and any("the agent has the call" in n for n in notices(app))

        # Taken over again, then the call ends: the devices close, the operator is told.
        await pilot.press("k")
        await until(pilot, lambda: app.live.query(OperatorBanner))
        eng.store.remove(eng.store.get(cid), "caller hung up")
        await until(pilot, lambda: not app.live.query(OperatorBanner))
        assert devices["input"][-1].closed and app.live.monitor is None and devices["output"][-1].closed
        await until(pilot, lambda: any("the call you had" in n for n in notices(app)))
        await pilot.press("q", "y")


async def test_k_whose_take_over_the_engine_never_confirms_is_undone(devices):
    """Attached, k's post is answered later: if the engine's view never shows the call taken over
    (refused: the log says why), the microphone closes and the banner goes."""
    eng = ScriptedEngine.two_calls()
    eng.take_over = lambda call_id, by: True  # type: ignore[method-assign]  (posted, never done)
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        await started(pilot, app)
        await pilot.press("k")
        await until(pilot, lambda: app.live.query(OperatorBanner))
        await until(pilot, lambda: not app.live.query(OperatorBanner), timeout=10)
        assert devices["input"][-1].closed and any("take over refused" in n for n in notices(app))
        await pilot.press("q", "y")


async def test_k_and_m_on_a_machine_with_no_sound_device_say_so_plainly():
    """No microphone or speaker here (the usual PBX): not PortAudio's 'Error querying device -1'."""
    eng = ScriptedEngine.two_calls()
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        await started(pilot, app)
        await pilot.press("k")
        await until(pilot, lambda: any("cannot take over" in n for n in notices(app)))
        await pilot.press("m")
        await until(pilot, lambda: any("cannot monitor" in n for n in notices(app)))
        said = [n for n in notices(app) if n.startswith("cannot")]
        assert "no microphone on this machine: take the call over from a laptop with `aiagent-tui attach`" in said[0]
        assert "no sound device on this machine: listen from a laptop with `aiagent-tui attach` over SSH port forwarding" in said[1]
        assert not any("Error querying" in n or "-1" in n for n in said)
        assert not any(c[0] == "take_over" for c in eng.commands)  # nothing taken over without a microphone
        await pilot.press("q", "y")


async def test_i_brings_a_person_in_from_a_department_and_how(devices):
    eng = ScriptedEngine.two_calls()
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        cid = await started(pilot, app)
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, BringInScreen))
        screen = app.export_screenshot().replace("&#160;", " ")
        assert "billing  →  201@from-internal" in screen and "snoop" in screen
        # tab to how, down to bridge and pick it; back to the departments, down to operator, enter.
        await pilot.press("tab")
        await until(pilot, lambda: app.screen.query_one(RadioSet).has_focus)
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.screen.how == "bridge")
        await pilot.press("shift+tab")
        await until(pilot, lambda: app.screen.query_one(OptionList).has_focus)
        await pilot.press("down", "enter")
        await until(pilot, lambda: not isinstance(app.screen, BringInScreen))
        assert eng.commands[-1] == ("bring_in", cid, "operator", "bridge", BY)
        await until(pilot, lambda: any("bringing operator into" in n for n in notices(app)))
        # escape: nobody is brought in.
        await pilot.press("i")
        await until(pilot, lambda: isinstance(app.screen, BringInScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, BringInScreen))
        assert eng.commands[-1][0] == "bring_in" and len([c for c in eng.commands if c[0] == "bring_in"]) == 1
        await pilot.press("q", "y")


async def test_m_listens_to_both_sides_or_one_and_stops(devices):
    eng = ScriptedEngine.two_calls()
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        cid = await started(pilot, app)
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, ListenScreen))
        assert "test speaker" in app.export_screenshot().replace("&#160;", " ")
        await pilot.press("down", "enter")  # the caller alone
        await until(pilot, lambda: cid in eng.taps)
        card = devices["output"][-1]
        eng.taps[cid]("agent", tone(700).tobytes(), 8000)
        assert np.abs(card.pull()).max() == 0  # the agent is not played
        eng.taps[cid]("caller", tone(500).tobytes(), 8000)
        assert np.abs(card.pull()).max() > 4000
        await until(pilot, lambda: any("the caller alone" in n for n in notices(app)))

        # m again: off, the engine's tap removed.
        await pilot.press("m")
        await until(pilot, lambda: cid not in eng.taps)
        assert card.closed and ("tap", cid, "off") in eng.commands

        # Both sides: the agent at 16 kHz is played too (resampled to 8 kHz).
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, ListenScreen))
        await pilot.press("enter")
        await until(pilot, lambda: cid in eng.taps)
        eng.taps[cid]("agent", tone(700, n=3200).tobytes(), 16000)
        assert np.abs(devices["output"][-1].pull(800)[400:]).max() > 4000
        # An operator who took the call over (another console) is heard on the agent's side.
        devices["output"][-1].pull(800)  # the rest of the agent's
        eng.taps[cid]("operator", tone(1000).tobytes(), 8000)
        assert power_at(devices["output"][-1].pull(), 1000) > 0.9
        # escape in the chooser: nothing starts (and the device opened for it closes).
        await pilot.press("m")  # off
        await until(pilot, lambda: cid not in eng.taps)
        await pilot.press("m")
        await until(pilot, lambda: isinstance(app.screen, ListenScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ListenScreen))
        assert devices["output"][-1].closed and cid not in eng.taps and app.live.monitor is None
        await pilot.press("q", "y")


async def test_the_live_transcript_shows_the_operators_lines_as_theirs():
    from textual.widgets import Static

    eng = ScriptedEngine.two_calls()
    call = next(iter(eng.store))
    call.transcript.append(TranscriptTurn("agent", "The doctor is running 10 minutes late.", True, 0.0, by="alice (attached)"))
    call.transcript.append(TranscriptTurn("note", "offer the 4 pm slot", True, 0.0, by="alice (attached)"))
    app = AiAgentApp(ScriptedRuntime(eng))
    async with app.run_test(size=(120, 40)) as pilot:
        await started(pilot, app)
        await until(pilot, lambda: "10 minutes late" in str(app.live.query_one("#transcript", Static).content))
        shown = str(app.live.query_one("#transcript", Static).content)
        assert "The doctor is running 10 minutes late.  [operator: alice (attached)]" in shown
        assert "note   offer the 4 pm slot  [operator: alice (attached)]" in shown
        # Wrapped in the pane, the transcript keeps its newest line in sight (the oldest go).
        call.transcript.append(TranscriptTurn("note", "an operator took the call over", True, 0.0, by="alice (attached)"))
        call.transcript.append(TranscriptTurn("caller", "Oh hello, is this a real person now? I only wanted to know where to park.", True, 0.0))
        await until(pilot, lambda: "where to park." in app.export_screenshot().replace("&#160;", " "))
        assert "Hello, thanks for calling" not in app.export_screenshot().replace("&#160;", " ")
        await pilot.press("q", "y")



async def test_attached_m_and_k_hear_the_call_and_speak_to_the_caller(tmp_path, devices):
    """The app attached to an engine (here the headless service's Runtime in this process) over
    its console socket: m plays the call on this machine's (fake) speaker, k sends its (fake)
    microphone to the caller; the engine records the socket's user."""
    import asyncio
    import os
    import pwd
    import time
    from pathlib import Path

    from aiagent_tui.attach import AttachRuntime
    from aiagent_tui.runtime import Runtime
    from media.audio import ulaw_to_pcm16
    from pbxsim.media import load_wav_ulaw
    from pbxsim.script import Pause
    from tests.conftest import HELLO
    from tests.test_tui import app_config

    cfg = app_config(tmp_path)
    rt = Runtime(cfg, sim=True, demo_interval_s=None)
    eng = await rt.start()
    try:
        assert await eng.wait_ari_connected(10) and rt.pbx is not None
        rec = rt.pbx.place_call(script=[Pause(60.0)], caller_number="5550142")
        app = AiAgentApp(AttachRuntime(Path(cfg.console.socket)))
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.live.calls.selected == rec.id and eng.store.get(rec.id).bridged_at is not None)
            await until(pilot, lambda: app.engine.store.snapshot(rec.id) is not None)  # the attached view has it
            call = eng.store.get(rec.id)
            await pilot.press("m")
            await until(pilot, lambda: isinstance(app.screen, ListenScreen))
            await pilot.press("enter")  # both sides
            await until(pilot, lambda: app.live.monitor is not None)
            rec.media.say(load_wav_ulaw(HELLO))
            card = devices["output"][-1]
            played: list[np.ndarray] = []

            def loud() -> bool:
                played.append(card.pull(800))
                return bool(np.abs(played[-1]).max() > 2000)

            await until(pilot, loud, what="the caller's voice on the attached operator's speaker")

            await pilot.press("k")
            who = f"{pwd.getpwuid(os.geteuid()).pw_name} (attached)"
            await until(pilot, lambda: call.operator == who)
            assert app.live.query(OperatorBanner)
            mic = devices["input"][-1]
            since = time.monotonic()
            for i in range(75):  # 1.5 s of the operator, in real time
                mic.speak(tone(1000, start=160 * i))
                await asyncio.sleep(0.02)

            def caller_heard() -> np.ndarray:
                return np.frombuffer(ulaw_to_pcm16(b"".join(p for t, p in rec.media.agent_frames if t >= since)), np.int16)

            await until(pilot, lambda: len(caller_heard()) >= 8000, what="a second of the operator at the caller")
            spectrum = np.abs(np.fft.rfft(caller_heard().astype(float))) ** 2
            freqs = np.fft.rfftfreq(len(caller_heard()), 1 / 8000)
            assert spectrum[np.abs(freqs - 1000) < 30].sum() / spectrum.sum() > 0.5

            await pilot.press("k")
            await until(pilot, lambda: call.operator == "" and not app.live.query(OperatorBanner))
            assert [(a.kind, a.by) for a in call.actions if a.kind in ("take_over", "hand_back")] == [("take_over", who), ("hand_back", who)]

            # The call ends while the operator listens: the listening stops, and says why.
            card = devices["output"][-1]
            await pilot.press("h", "y")
            await until(pilot, lambda: app.live.monitor is None and card.closed)
            await until(pilot, lambda: any("the call's audio stopped: the call ended" in line.plain for line in app.log_lines))
            await pilot.press("q")
    finally:
        await rt.stop()
