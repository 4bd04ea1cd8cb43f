"""Bringing a person into a call on the real Asterisk 22 (../shared/asterisk/): the engine originates
the department's Local/EXT@people channel (pbxsim/asterisk_etc/extensions.conf: 301 answers and
plays a long prompt, 302 never answers, 303 is busy, 305 rings 3 s then answers and plays the
prompt, 999 does not exist). What each side hears is
taken at the caller's phone and recorded by MixMonitor on the person's; nothing is left on the PBX
afterwards (the ``callers`` fixture)."""

from __future__ import annotations

import asyncio
import time
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest

from engine.actions import bring_in_line
from engine.sessions import ActionChanged, TranscriptAdded
from pbxsim.asterisk import AsteriskCallers, AsteriskInstance, RealCall
from pbxsim.script import Pause, Say
from providers.profile import AgentProfile, Department
from media.audio import pcm16_to_ulaw, ulaw_to_pcm16
from tests.conftest import HELLO, history_of, running_engine, wait_for
from tests.test_bring_in import ringing

pytestmark = pytest.mark.asterisk

BY = "tester (local)"


def people(ext: str, ring_s: int = 30):
    def configure(cfg) -> None:
        cfg.profiles["default"] = AgentProfile(departments={"billing": Department(description="invoices", context="people", extension=ext)}, greeting="Hello.")
        cfg.actions.bring_in_ring_s = ring_s

    return configure


async def person_recording(callers: AsteriskCallers, asterisk: AsteriskInstance) -> Path:
    """The prefix MixMonitor records the next person under (the dialplan reads the global PERSON_REC)."""
    prefix = asterisk.recordings / f"person-{uuid.uuid4().hex[:8]}"
    await callers.ari.request("POST", "/asterisk/variable", variable="PERSON_REC", value=str(prefix))
    return prefix


async def voiced_s(wav_path: Path, since_s: float = 0.0) -> float:
    """Seconds of voice (20 ms frames louder than -50 dBFS) in a MixMonitor file, once written
    (at the channel's hangup)."""
    await wait_for(lambda: wav_path.exists() and wav_path.stat().st_size > 44, what=f"{wav_path.name} written")
    with wave.open(str(wav_path)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)
    n = rate // 50
    x = x[int(since_s * rate):]
    frames = x[: len(x) // n * n].reshape(-1, n)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    return float(np.sum(rms > 32768 * 10 ** (-50 / 20)) / 50)


def heard_s(call: RealCall, start: float, end: float = float("inf")) -> float:
    """Seconds the caller heard, the ringback left out."""
    return sum(len(p) for t, p in call.agent_frames if start <= t < end and not ringing(p)) / 8000


async def heard_frames(wav_path: Path) -> list[bytes]:
    """A MixMonitor file (8 kHz) once written, as 20 ms u-law frames."""
    await wait_for(lambda: wav_path.exists() and wav_path.stat().st_size > 44, what=f"{wav_path.name} written")
    with wave.open(str(wav_path)) as w:
        assert w.getframerate() == 8000
        ulaw = pcm16_to_ulaw(w.readframes(w.getnframes()))
    return [ulaw[i : i + 160] for i in range(0, len(ulaw) - 159, 160)]


async def bridged(eng, call: RealCall) -> None:
    await wait_for(lambda: (s := eng.store.get(call.far_channel)) is not None and s.bridged_at is not None, what="the caller bridged with the agent")


async def engine_channels(callers: AsteriskCallers) -> list[str]:
    return [c["name"] for c in await callers.ari.channels() if not c["id"].startswith("caller-")]


async def test_bridge_the_caller_and_the_person_hear_each_other_and_the_agent_leaves(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path, people("301")) as eng:
        prefix = await person_recording(callers, asterisk)
        call = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(2.5), Say(str(HELLO)), Pause(8.0)], caller_number="4101", record=True)
        await bridged(eng, call)
        assert eng.bring_in(call.far_channel, "billing", "bridge", BY)
        await wait_for(lambda: call.far_channel not in eng.calls.calls, what="the agent's part ended")
        left = time.monotonic()
        # Only the person's Local channel is left of the engine's: the ExternalMedia channel went.
        names = await engine_channels(callers)
        assert not [n for n in names if n.startswith("UnicastRTP/")], names
        assert any(n.startswith("Local/301@people") for n in names), names
        # The caller hears the person (their prompt) through the call's bridge.
        await wait_for(lambda: heard_s(call, left) > 2.0, what="the caller hears the person")
        await asyncio.wait_for(call.finished.wait(), 40)
        assert call.error is None, call.error
        hist = await history_of(eng, call.far_channel)
    assert hist.outcome == "brought_in" and hist.end_reason == "brought in billing (301@people)"
    assert [(a.kind, a.reason, a.state) for a in hist.actions] == [("bring_in", "bridge", "done")]
    # The person heard the caller (the second hello came after the agent had gone).
    assert await voiced_s(Path(f"{prefix}-301-heard.wav")) > 1.0


async def test_snoop_the_person_hears_both_sides_and_whispers_to_the_caller(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path, people("301")) as eng:
        prefix = await person_recording(callers, asterisk)
        call = callers.place_call([Pause(4.0), Say(str(HELLO)), Pause(14.0)], caller_number="4102")
        await bridged(eng, call)
        sub = eng.store.subscribe()
        assert eng.bring_in(call.far_channel, "billing", "snoop", BY)

        def done() -> bool:
            while (e := sub.get_nowait()) is not None:
                if isinstance(e, ActionChanged) and e.action.state in ("done", "failed"):
                    assert e.action.state == "done", e.action
                    return True
            return False

        await wait_for(done, what="the person listening in")
        assert not call.said, "the caller spoke before the person listened in: the test's timing is off"
        await wait_for(lambda: call.said_end, what="the caller's hello said")
        hello_end = call.said_end[0]
        # The agent still answers the caller (echo, 0.5 s late) while the person listens ...
        await wait_for(lambda: heard_s(call, hello_end - 1.0, hello_end + 1.0) > 0.8, what="the caller hears the agent's echo")
        # ... and once the echo is over, the caller hears only the person's whisper (their prompt).
        await wait_for(lambda: heard_s(call, hello_end + 1.5) > 1.5, timeout=30, what="the caller hears the person's whisper")
        assert call.far_channel in eng.calls.calls  # the agent stays on
        names = await engine_channels(callers)
        assert any(n.startswith("Snoop/") for n in names), names
        await asyncio.wait_for(call.finished.wait(), 40)
        hist = await history_of(eng, call.far_channel)
    assert hist.outcome == "caller_hung_up"
    assert [(a.kind, a.reason, a.state) for a in hist.actions] == [("bring_in", "snoop", "done")]
    # Through the snoop the person heard both sides: the caller's hello (1.3 s of voice) and the
    # agent's echo of it, 0.5 s later.
    assert await voiced_s(Path(f"{prefix}-301-heard.wav")) > 1.6


@pytest.mark.parametrize(("ext", "why"), [("303", "busy"), ("999", "no such extension"), ("302", "no answer in 5 s")])
async def test_a_person_not_reached_the_caller_stays_with_the_agent(asterisk, callers, tmp_path, ext, why):
    async with running_engine(asterisk, tmp_path, people(ext, ring_s=5)) as eng:
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(9.0), Say(str(HELLO)), Pause(2.0)], caller_number="4103")
        await bridged(eng, call)
        assert eng.bring_in(call.far_channel, "billing", "bridge", BY)
        got: list = []

        def failed():
            while (e := sub.get_nowait()) is not None:
                if isinstance(e, ActionChanged):
                    got.append(e.action)
            return next((a for a in got if a.state in ("failed", "done")), None)

        rec = await wait_for(failed, timeout=20, what="the bring-in's outcome")
        assert rec.state == "failed" and why in rec.detail, rec
        assert call.far_channel in eng.calls.calls
        assert not [n for n in await engine_channels(callers) if n.startswith("Local/")]
        # The agent (echo) answers the caller again.
        before = heard_s(call, 0)
        await asyncio.wait_for(call.finished.wait(), 30)
        assert heard_s(call, 0) > before + 0.5
        hist = await history_of(eng, call.far_channel)
    assert hist.outcome == "caller_hung_up" and hist.actions[-1].state == "failed"


async def test_a_transfer_to_a_missing_extension_is_recorded_as_failed(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path, people("999")) as eng:
        call = callers.place_call([Pause(10.0)], caller_number="4104")
        await bridged(eng, call)
        assert eng.transfer(call.far_channel, "billing")
        await asyncio.wait_for(call.finished.wait(), 20)
        hist = await history_of(eng, call.far_channel, until=lambda r: r.actions[-1].state != "sent")
    assert hist.outcome == "transfer_failed", hist.outcome
    assert "no such extension" in hist.actions[-1].detail and "999@people" in hist.actions[-1].detail


async def test_introduce_the_person_hears_the_agent_then_the_caller(asterisk, callers, tmp_path):
    async with running_engine(asterisk, tmp_path, people("301"), AIAGENT_PROVIDER="local") as eng:
        prefix = await person_recording(callers, asterisk)
        sub = eng.store.subscribe()
        call = callers.place_call([Pause(1.0), Say(str(HELLO)), Pause(25.0)], caller_number="5550199", record=True)
        await wait_for(lambda: call.said_end and call.far_channel in eng.calls.calls, what="the caller's hello")
        await asyncio.sleep(0)  # noqa: ASYNC110 - one turn of the loop: the transcript of the hello may follow
        asked = time.monotonic()
        assert eng.bring_in(call.far_channel, "billing", "introduce", BY)
        await wait_for(lambda: call.far_channel not in eng.calls.calls, timeout=60, what="the agent's part ended")
        left = time.monotonic()
        # The caller heard the line that they are being put through, not the introduction (they
        # waited out of the bridge while the person heard it).
        line_s = eng.providers["local"].models.cache.get(bring_in_line("billing")).seconds
        assert 0.5 < heard_s(call, asked, left) <= line_s + 0.3, (heard_s(call, asked, left), line_s)
        # Then the person, who is playing a prompt.
        await wait_for(lambda: heard_s(call, left) > 1.0, what="the caller hears the person")
        lines = []
        while (e := sub.get_nowait()) is not None:
            if isinstance(e, TranscriptAdded) and e.turn.role == "agent" and e.turn.final:
                lines.append(e.turn.text)
        intro = next(t for t in lines if t.startswith("Hello, this is the assistant"))
        assert "5 5 5 0 1 9 9," in intro and "billing" in intro, intro
        await callers.hangup(call)
        hist = await history_of(eng, call.far_channel)
    assert hist.outcome == "brought_in"
    # The person heard the agent's introduction.
    assert await voiced_s(Path(f"{prefix}-301-heard.wav")) > 2.0


async def test_the_caller_hears_ringback_while_the_persons_phone_rings_then_the_person(asterisk, callers, tmp_path):
    """tone:ring on the caller's channel (the tone zone of pbxsim/asterisk_etc/indications.conf)
    from the bring-in until the person answers, as recorded at the caller's phone: no silence to
    hang up on, and no ring once the person speaks."""
    async with running_engine(asterisk, tmp_path, people("305")) as eng:
        call = callers.place_call([Pause(25.0)], caller_number="4105", record=True)
        await bridged(eng, call)
        assert eng.bring_in(call.far_channel, "billing", "bridge", BY)
        await wait_for(lambda: call.far_channel not in eng.calls.calls, timeout=20, what="the agent's part ended")
        left = time.monotonic()
        await wait_for(lambda: heard_s(call, left) > 1.0, what="the caller hears the person")
        await callers.hangup(call)
        hist = await history_of(eng, call.far_channel)
    assert hist.outcome == "brought_in"
    assert call.recording is not None
    frames = await heard_frames(Path(f"{call.recording}-heard.wav"))
    rings = [i for i, f in enumerate(frames) if ringing(f)]
    voiced = {i for i, f in enumerate(frames) if np.abs(np.frombuffer(ulaw_to_pcm16(f), np.int16)).max() > 1000}
    assert len(rings) * 0.02 >= 1.5, f"{len(rings) * 0.02:.2f} s of ring tone heard"
    # The person's voice: the first 0.2 s run of voiced frames none of which is the ring tone.
    person = next(i for i in sorted(voiced) if i > rings[0] and all(j in voiced and not ringing(frames[j]) for j in range(i, i + 10)))
    assert rings[-1] < person, "the ring went on over the person"
    # The ring's last 2 s burst ends at most 2 s (its cadence's pause) before the person answers,
    # and their prompt follows their answer by 1 s.
    assert (person - rings[-1]) * 0.02 < 3.5
