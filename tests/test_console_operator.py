"""The operator's side of the console socket (engine/console.py) and of ``aiagent-tui attach``
(aiagent_tui/attach.py): whisper, take over, hand back and bring in done by the socket's user, and
the call's audio both ways over its WebSocket. First on the scripted engine (what reaches the
engine, exactly), then on the real Engine with the simulator (what the caller hears of the
operator, what the operator hears of the caller, and the transcript)."""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import tempfile
from pathlib import Path

import aiohttp
import numpy as np

from aiagent_tui.attach import AttachedEngine
from engine.console import AUDIO_BACKLOG, CLOSE_REPLACED, AudioFrame, ConsoleServer
from engine.sessions import CallLog
from tests.conftest import wait_for
from tests.scripted_engine import ScriptedEngine

ATTACHED = f"{pwd.getpwuid(os.geteuid()).pw_name} (attached)"


def socket_path() -> Path:
    # A Unix socket's name has room for about 100 bytes: pytest's tmp_path may be longer.
    return Path(tempfile.mkdtemp(prefix="aiagent-console-")) / "engine.sock"


def tone(hz: float, n: int, rate: int = 8000, amplitude: int = 8000, start: int = 0) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * (start + np.arange(n)) / rate)).astype(np.int16)


def power_at(pcm: np.ndarray, hz: float, rate: int = 8000) -> float:
    """The share of the signal's power near ``hz`` (0..1)."""
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / rate)
    total = spectrum.sum()
    return float(spectrum[np.abs(freqs - hz) < 30].sum() / total) if total else 0.0


class Console:
    """A ConsoleServer on a scripted engine, and a client session on its socket."""

    def __init__(self) -> None:
        self.engine = ScriptedEngine.two_calls()
        self.server = ConsoleServer(self.engine, socket_path())
        self.cid = next(iter(self.engine.store)).call_id

    async def __aenter__(self) -> Console:
        await self.server.start()
        self.http = aiohttp.ClientSession(base_url="http://console", connector=aiohttp.UnixConnector(path=str(self.server.path)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        await self.server.stop()


async def test_operator_actions_over_the_socket_are_the_attached_users():
    async with Console() as c:
        attached = AttachedEngine(c.server.path)
        await attached.connect()
        try:
            cid = c.cid
            # The app's own name for the operator is not what the engine records: the socket's peer is.
            assert attached.operator_say(cid, "the doctor is running 10 minutes late", "mallory (local)")
            assert attached.operator_instruct(cid, "offer the 4 pm slot", "mallory (local)")
            assert attached.take_over(cid, "mallory (local)")
            await wait_for(lambda: c.engine.store.get(cid).operator, what="the call taken over")
            assert attached.hand_back(cid, "mallory (local)")
            assert attached.bring_in(cid, "billing", "snoop", "mallory (local)")
            await wait_for(lambda: len(c.engine.commands) >= 5, what="five operator commands")
            assert c.engine.commands == [
                ("say", cid, "the doctor is running 10 minutes late", ATTACHED),
                ("instruct", cid, "offer the 4 pm slot", ATTACHED),
                ("take_over", cid, ATTACHED),
                ("hand_back", cid, ATTACHED),
                ("bring_in", cid, "billing", "snoop", ATTACHED),
            ]
            # A refusal reaches the attached app's log.
            c.engine.refuse.add("say")
            log = attached.store.subscribe()
            attached.operator_say(cid, "hello", "")
            said = await wait_for(log.get_nowait, until=lambda ev: isinstance(ev, CallLog) and f"/calls/{cid}/say refused" in ev.message, what="the refusal in the log")
            assert said.level == logging.WARNING
        finally:
            await attached.close()
        # What the engine cannot act on is refused with why, and nothing is done.
        for path, body, error in [
            (f"/calls/{c.cid}/say", {"text": "  "}, "text is missing"),
            (f"/calls/{c.cid}/instruct", {}, "text is missing"),
            (f"/calls/{c.cid}/bring-in", {"department": "billing", "how": "teleport"}, "how is 'teleport': one of introduce, bridge, snoop"),
        ]:
            async with c.http.post(path, json=body) as r:
                assert r.status == 400 and error in (await r.json())["error"]
        async with c.http.post("/calls/nope/take-over") as r:
            assert r.status == 404
        assert len(c.engine.commands) == 6


async def test_the_audio_socket_streams_the_sides_asked_for_and_takes_the_operators_microphone():
    async with Console() as c:
        cid, eng = c.cid, c.engine
        async with c.http.get(f"/calls/{cid}/audio", params={"side": "sideways"}) as r:
            assert r.status == 400
        async with c.http.get("/calls/nope/audio") as r:
            assert r.status == 404
        bad = c.server.bad_requests  # the side above
        async with c.http.ws_connect(f"/calls/{cid}/audio", params={"side": "caller"}) as ws:
            await wait_for(lambda: cid in eng.taps, what="the engine's tap set")
            eng.taps[cid]("agent", tone(700, 480).tobytes(), 8000)
            eng.taps[cid]("caller", tone(500, 500).tobytes(), 8000)  # 62.5 ms: three frames, the rest waits
            frames = [AudioFrame.decode((await ws.receive_bytes(timeout=5))) for _ in range(3)]
            assert {(f.side, f.rate, len(f.pcm16)) for f in frames} == {("caller", 8000, 320)}
            assert np.array_equal(np.frombuffer(b"".join(f.pcm16 for f in frames), np.int16), tone(500, 480))
            # The operator's microphone, at any rate, reaches operator_audio as it was sent.
            await ws.send_bytes(AudioFrame("operator", 16000, tone(1000, 320, 16000).tobytes()).encode())
            await ws.send_bytes(b"\x01")  # not a frame: dropped, counted
            await wait_for(lambda: eng.operator_frames, what="the operator's audio at the engine")
            assert eng.operator_frames == [(cid, tone(1000, 320, 16000).tobytes(), 16000)]
            await wait_for(lambda: c.server.bad_requests == bad + 1, what="the bad frame counted")
        await wait_for(lambda: cid not in eng.taps, what="the tap removed when the console closed")

        # Both sides: the agent's 24 kHz audio comes as 8 kHz frames.
        async with c.http.ws_connect(f"/calls/{cid}/audio") as ws:
            await wait_for(lambda: cid in eng.taps, what="the engine's tap set")
            for i in range(10):
                eng.taps[cid]("agent", tone(700, 480, 24000, start=480 * i).tobytes(), 24000)
            frames = []
            while sum(len(f.pcm16) for f in frames) < 320 * 8:
                frames.append(AudioFrame.decode(await ws.receive_bytes(timeout=5)))
            pcm = np.frombuffer(b"".join(f.pcm16 for f in frames), np.int16)
            assert {(f.side, f.rate, len(f.pcm16)) for f in frames} == {("agent", 8000, 320)}
            assert power_at(pcm[320:], 700) > 0.9

            # The same console listening again: the newer listener takes the place of the older.
            async with c.http.ws_connect(f"/calls/{cid}/audio", params={"side": "agent"}) as second:
                while (msg := await ws.receive(timeout=5)).type is aiohttp.WSMsgType.BINARY:
                    pass  # the frames sent before
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == CLOSE_REPLACED
                # The agent's side is what the caller hears: the agent, or an operator who has the call.
                eng.taps[cid]("caller", tone(500, 160).tobytes(), 8000)
                eng.taps[cid]("agent", tone(700, 160).tobytes(), 8000)
                eng.taps[cid]("operator", tone(1000, 160).tobytes(), 8000)
                assert [AudioFrame.decode(await second.receive_bytes(timeout=5)).side for _ in range(2)] == ["agent", "operator"]

                # The call ends: the console is told why, and the tap goes.
                eng.store.remove(eng.store.get(cid), "caller hung up")
                msg = await second.receive(timeout=5)
                assert msg.type is aiohttp.WSMsgType.CLOSE and msg.extra == "the call ended"
        await wait_for(lambda: not c.server._audio, what="no listener left")


async def test_a_console_that_does_not_read_loses_audio_and_the_engine_goes_on():
    async with Console() as c:
        cid, eng = c.cid, c.engine
        async with c.http.ws_connect(f"/calls/{cid}/audio", params={"side": "caller"}) as ws:
            await wait_for(lambda: cid in eng.taps, what="the engine's tap set")
            # A minute of the caller at once (the console reads nothing meanwhile): the tap returns
            # each time; what the console gets is the newest, no more than the backlog.
            for i in range(3000):
                eng.taps[cid]("caller", np.full(160, i % 30000, np.int16).tobytes(), 8000)
            listener = next(iter(c.server._audio[cid].listeners.values()))
            assert listener.dropped >= 3000 - AUDIO_BACKLOG
            got = []
            while not got or got[-1] != 2999:
                got.append(int(np.frombuffer(AudioFrame.decode(await ws.receive_bytes(timeout=5)).pcm16, np.int16)[0]))
            assert len(got) <= AUDIO_BACKLOG and got == list(range(3000 - len(got), 3000))


async def test_a_console_that_goes_away_with_a_call_taken_over_hands_it_back():
    async with Console() as c:
        cid, eng = c.cid, c.engine
        attached = AttachedEngine(c.server.path)
        await attached.connect()
        attached.take_over(cid, "")
        await wait_for(lambda: eng.store.get(cid).operator == ATTACHED, what="the call taken over")
        await attached.close()  # the operator's SSH session dropped
        await wait_for(lambda: eng.commands[-1] == ("hand_back", cid, ATTACHED), what="the call handed back")
        assert eng.store.get(cid).operator == ""


async def test_an_attached_operator_takes_a_real_call_over_and_each_hears_the_other(tmp_path):
    """The real Engine with the simulator, over the console socket as ``aiagent-tui attach`` does:
    the operator's microphone (a 1 kHz tone) reaches the caller; the caller's words reach the
    operator's speaker and the transcript; the history names the attached user."""
    import time

    from aiagent_tui.runtime import Runtime
    from media.audio import ulaw_to_pcm16
    from pbxsim.media import load_wav_ulaw
    from pbxsim.script import Pause
    from tests.conftest import HELLO
    from tests.test_tui import app_config

    cfg = app_config(tmp_path)  # the tone provider: a beep after each utterance, and holds its answers when told
    rt = Runtime(cfg, sim=True, demo_interval_s=None)
    eng = await rt.start()
    attached = AttachedEngine(Path(cfg.console.socket))
    try:
        assert await eng.wait_ari_connected(10) and rt.pbx is not None
        rec = rt.pbx.place_call(script=[Pause(60.0)], caller_number="5550142")
        call = await wait_for(lambda: eng.store.get(rec.id), until=lambda c: c is not None and c.bridged_at is not None, what="the call bridged")
        cid = rec.id
        await attached.connect()
        await wait_for(lambda: any(c.call_id == cid for c in attached.store.calls), what="the call in the attached view")
        heard: list[tuple[str, bytes, int]] = []
        assert attached.set_audio_tap(cid, lambda side, pcm16, rate: heard.append((side, pcm16, rate)), key="test")

        attached.take_over(cid, "")
        await wait_for(lambda: call.operator, until=lambda who: who == ATTACHED, what="the call taken over by the attached user")
        taken_at = len(call.transcript)

        # The operator speaks (20 ms frames in real time, as a microphone gives them).
        since = time.monotonic()
        for i in range(75):
            attached.operator_audio(cid, tone(1000, 160, start=160 * i).tobytes(), 8000)
            await asyncio.sleep(0.02)
        assert rec.media is not None

        def caller_heard() -> np.ndarray:
            return np.frombuffer(ulaw_to_pcm16(b"".join(p for t, p in rec.media.agent_frames if t >= since)), np.int16)

        got = await wait_for(caller_heard, until=lambda pcm: len(pcm) >= 8000, what="a second of the operator heard by the caller")
        assert power_at(got, 1000) > 0.5, "the caller hears the operator's tone"

        # The caller speaks: the operator hears it, and the transcript has it; the agent stays silent.
        rec.media.say(load_wav_ulaw(HELLO))
        await wait_for(lambda: [p for side, p, _ in heard if side == "caller"], until=lambda ps: any(np.abs(np.frombuffer(p, np.int16)).max() > 2000 for p in ps),
                       what="the caller's voice at the attached listener")
        assert {(side, rate, len(p)) for side, p, rate in heard if side == "caller"} == {("caller", 8000, 320)}
        await wait_for(lambda: [t for t in call.transcript[taken_at:] if t.role == "caller"], what="the caller's words in the transcript")

        attached.hand_back(cid, "")
        await wait_for(lambda: call.operator, until=lambda who: who == "", what="the call handed back")
        assert not [t for t in call.transcript[taken_at:] if t.role == "agent" and not t.by], "the agent said nothing while the operator had the call"
        assert [(a.kind, a.by) for a in call.actions if a.kind in ("take_over", "hand_back")] == [("take_over", ATTACHED), ("hand_back", ATTACHED)]
    finally:
        await attached.close()
        await rt.stop()


async def test_a_local_listener_and_an_attached_console_hear_the_same_call_and_each_stops_alone(engine, pbx):
    """The terminal app running the engine listens (its monitor's tap) while an attached console
    listens to the same call: both get the caller's voice; either stopping leaves the other listening."""
    from aiagent_tui.monitor import TAP_KEY
    from engine.console import TAP_KEY as CONSOLE_KEY
    from pbxsim.media import load_wav_ulaw
    from pbxsim.script import Pause
    from tests.conftest import HELLO

    server = ConsoleServer(engine, socket_path())
    await server.start()
    attached = AttachedEngine(server.path)
    try:
        rec = pbx.place_call(script=[Pause(60.0)])
        cid = rec.id
        await wait_for(lambda: (s := engine.store.get(cid)) is not None and s.bridged_at is not None and rec.media is not None, what="the call bridged")
        await attached.connect()
        await wait_for(lambda: any(c.call_id == cid for c in attached.store.calls), what="the call in the attached view")
        local: list[bytes] = []
        console: list[bytes] = []

        def heard(into: list[bytes]):
            return lambda side, pcm16, rate: into.append(pcm16) if side == "caller" else None

        def voiced(frames: list[bytes]) -> int:
            return sum(1 for p in frames if np.abs(np.frombuffer(p, np.int16)).max() > 2000)

        async def caller_speaks(*listeners: list[bytes]) -> None:
            for frames in (local, console):
                frames.clear()
            rec.media.say(load_wav_ulaw(HELLO))
            await wait_for(lambda: all(voiced(frames) >= 25 for frames in listeners), what="half a second of the caller's voice at each listener")

        assert engine.set_audio_tap(cid, heard(local), key=TAP_KEY)
        assert attached.set_audio_tap(cid, heard(console), key=TAP_KEY)
        await wait_for(lambda: cid in server._audio, what="the console listening")
        await caller_speaks(local, console)

        # The console stops: the app goes on listening.
        assert attached.set_audio_tap(cid, None, key=TAP_KEY)
        await wait_for(lambda: cid not in server._audio, what="the console's tap gone")
        await caller_speaks(local)
        assert console == []

        # The console again; the app stops: the console goes on listening.
        assert attached.set_audio_tap(cid, heard(console), key=TAP_KEY)
        await wait_for(lambda: cid in server._audio, what="the console listening again")
        assert engine.set_audio_tap(cid, None, key=TAP_KEY)
        await caller_speaks(console)
        assert local == []
        assert engine.calls.calls[cid].conversation is not None and CONSOLE_KEY in engine.calls.calls[cid].conversation.taps
    finally:
        await attached.close()
        await server.stop()
