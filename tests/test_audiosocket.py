"""AudioSocket end to end over loopback: the simulated Asterisk's chan_audiosocket channel
(pbxsim/audiosocket.py) connected to the engine's AudioSocket server (engine/audiosocket.py), the
echo and tone providers; the faults a TCP media connection can have; and the message framing
(media/audiosocket.py) on its own."""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest

from engine.audiosocket import AudioSocketTransport
from engine.sessions import BargeIn, CallLog, TranscriptAdded
from media import audiosocket as proto
from pbxsim.audiosocket import AudioSocketEndpoint
from pbxsim.media import load_wav_ulaw
from pbxsim.script import Dtmf, Pause, Say, WaitAgent, WaitAgentDone
from providers.profile import AgentProfile, Department
from tests.conftest import AGENT_PASS, HELLO, THANKS, running_engine, wait_for
from tests.test_e2e_echo import best_correlation

MODES = pytest.mark.parametrize("mode", ["stream", "file"])


def audiosocket(form: str = "channel", fmt: str = "slin", provider: str = "echo", tone_ms: int = 2000, profile: AgentProfile | None = None):
    def configure(cfg) -> None:
        cfg.media.transport = "audiosocket"
        cfg.audiosocket.port = 0
        cfg.audiosocket.form = form
        cfg.audiosocket.format = fmt
        cfg.audiosocket.connect_timeout_s = 2.0
        cfg.providers.default = provider
        cfg.providers.tone.duration_ms = tone_ms
        if profile is not None:
            cfg.profiles["default"] = profile

    return configure


def transport(eng) -> AudioSocketTransport:
    t = eng.transports["audiosocket"]
    assert isinstance(t, AudioSocketTransport)
    return t


def drain(sub) -> list:
    out = []
    while (e := sub.get_nowait()) is not None:
        out.append(e)
    return out


def endpoint(pbx, rec) -> AudioSocketEndpoint:
    ep = pbx.external_endpoints[rec.external_media]
    assert isinstance(ep, AudioSocketEndpoint)
    return ep


async def nothing_left(pbx, eng) -> None:
    await wait_for(lambda: len(eng.store) == 0 and eng.calls.calls == {})
    await wait_for(lambda: pbx.leftovers() == ([], []), what="no channel or bridge left on the PBX")
    t = transport(eng)
    await wait_for(lambda: not t.conns and not t.links and not t._waiting, what="no AudioSocket connection left")


# ---- the line: echo, both playback modes, both wire formats

# File playback with slin16 is left out: the bridge's echo of the files then comes back through
# the 8 -> 16 -> 8 kHz path of the channel, which the echo reference does not model for this
# channel (it does for a 16 kHz caller), and the echo provider echoes its own echo.
@pytest.mark.parametrize(("mode", "fmt"), [("stream", "slin"), ("stream", "slin16"), ("file", "slin")])
async def test_echo_over_audiosocket_heard_counted_and_cleaned(pbx, tmp_path, mode, fmt):
    async with running_engine(pbx, tmp_path, audiosocket(fmt=fmt), AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        rec = pbx.place_call(str(AGENT_PASS), hold_s=2.5)
        await wait_for(lambda: eng.store.get(rec.id) is not None and eng.store.get(rec.id).bridged_at is not None)
        ep = endpoint(pbx, rec)
        name = pbx.channel_table.by_id[rec.external_media].name
        session = eng.store.get(rec.id)
        await wait_for(lambda: session.stream_in.frames > 100)
        snap = eng.store.snapshot(rec.id)
        await asyncio.wait_for(rec.finished.wait(), 30)
        r = rec.report(pbx)
        assert r["answered"] and r["bridged"] and r["ended_by"] == "caller" and r["hangup_clean"], r
        # The channel as chan_audiosocket names it; its first message was the UUID the engine waited for.
        assert name == f"AudioSocket/127.0.0.1:{transport(eng).port}-{ep.uuid}"
        assert ep.tx_log[0][1:] == (proto.KIND_UUID, 16)
        kind = proto.KIND_FOR_FORMAT[fmt]
        assert {k for _, k, _ in ep.tx_log[1:]} == {kind}
        # The engine's snapshot: its transport and the stream's counters (messages at the wire's rate).
        assert snap is not None and snap.transport == "audiosocket" and snap.rtp.transport == "audiosocket"
        assert snap.media_remote.endswith("/tcp")
        assert snap.rtp.packets_in > 100 and snap.rtp.gaps == 0 and snap.rtp.malformed == 0
        assert session.stream_in.bytes == session.stream_in.messages * (640 if fmt == "slin16" else 320)
        if mode == "stream":
            # The echo came back over the socket as audio messages of the wire's format, 20 ms each.
            # (and a hangup message as the call ends: the engine's, before ARI deletes the channel)
            assert set(ep.kinds_in) <= {kind, proto.KIND_HANGUP} and ep.kinds_in[kind] > 100
            assert set(ep.sizes_in) == {640 if fmt == "slin16" else 320}
            assert ep.packets_received >= ep.packets_sent - 10
        else:
            # Files on the bridge; over the link only the first frame of silence (chan_audiosocket's
            # read waits for a message once the channel's ANSWER wakes it) and the hangup.
            assert ep.packets_received == 1 and set(ep.kinds_in) <= {kind, proto.KIND_HANGUP}
        sent = load_wav_ulaw(AGENT_PASS)
        assert rec.media.agent_audio_seconds > 3.0
        assert best_correlation(sent, rec.media.agent_audio()) > (0.85 if mode == "stream" else 0.75)
        await nothing_left(pbx, eng)
        st = transport(eng).status()
        assert st.connections_total == 1 and st.malformed == 0 and st.unknown == 0 and st.cut == 0
    assert not any((tmp_path / "media").iterdir())


@MODES
async def test_tone_answers_and_barge_in_over_audiosocket(pbx, tmp_path, mode):
    async with running_engine(pbx, tmp_path, audiosocket(provider="tone", tone_ms=6000), AIAGENT_DOWNSTREAM_MODE=mode) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.6), Say(str(AGENT_PASS)), WaitAgentDone(quiet_s=1.0)])
        await asyncio.wait_for(rec.finished.wait(), 40)
        events = drain(sub)
        media = rec.media
        onset = media.said[1][1]
        stopped = media.agent_stopped_after(onset)
        assert stopped is not None and -0.03 < stopped - onset < 0.2, stopped - onset
        assert len([e for e in events if isinstance(e, BargeIn)]) == 1
        # The barge-in utterance got its own answer.
        assert len([e for e in events if isinstance(e, TranscriptAdded) and e.turn.role == "agent"]) == 2
        await nothing_left(pbx, eng)


async def test_engine_hangs_up_the_call(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, audiosocket()) as eng:
        rec = pbx.place_call(script=[Pause(20)])
        await wait_for(lambda: eng.store.get(rec.id) is not None and eng.store.get(rec.id).bridged_at is not None)
        ep = endpoint(pbx, rec)
        assert await eng.hangup(rec.id)
        await asyncio.wait_for(rec.finished.wait(), 10)
        assert rec.ended_by == "ari"
        # The engine said goodbye on the socket before closing it (as close() does), after the channel went.
        await wait_for(lambda: ep.closed_by is not None)
        await nothing_left(pbx, eng)
        assert transport(eng).status().cut == 0


async def test_keypad_transfer_over_audiosocket(pbx, tmp_path):
    billing = Department(description="invoices", digit="1", context="from-internal", extension="201")
    profile = AgentProfile(departments={"billing": billing}, greeting="")
    async with running_engine(pbx, tmp_path, audiosocket(profile=profile)) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(1.0), Dtmf("1"), Pause(5.0)])
        await asyncio.wait_for(rec.finished.wait(), 30)
        r = rec.report(pbx)
        assert r["left_stasis"] == "continue to 201@from-internal" and r["transferred_to"] == "201@from-internal"
        assert r["hangup_clean"] and r["ended_by"] == "caller"
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog)]
        # One transfer, from ARI's DTMF event (the socket's copy of the digit is not acted on twice).
        assert sum(m.startswith("DTMF 1") for m in logs) == 1
        await nothing_left(pbx, eng)


# ---- faults

async def test_connection_cut_mid_call_ends_that_call_only(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, audiosocket()) as eng:
        sub = eng.store.subscribe()
        a = pbx.place_call(script=[Pause(3), Say(str(THANKS)), Pause(1.0)], caller_number="701")
        b = pbx.place_call(script=[Pause(3), Say(str(THANKS)), Pause(1.0)], caller_number="702")
        await wait_for(lambda: all(eng.store.get(r.id) is not None and eng.store.get(r.id).bridged_at is not None for r in (a, b)))
        endpoint(pbx, a).tcp.abort()  # the TCP connection is reset under the call
        await asyncio.wait_for(a.finished.wait(), 10)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == a.id]
        assert any("media lost" in m and "AudioSocket" in m for m in logs), logs
        assert transport(eng).status().cut == 1
        # The other call went on: the echo of its speech came back whole.
        await asyncio.wait_for(b.finished.wait(), 30)
        assert b.ended_by == "caller" and b.media.agent_audio_seconds > 4.0
        await nothing_left(pbx, eng)


@pytest.mark.parametrize("junk", ["garbage", "unknown_kind", "zero_length"])
async def test_garbage_on_a_connection_closes_it_and_ends_its_call_only(pbx, tmp_path, junk, caplog):
    data = {"garbage": b"GET / HTTP/1.1\r\n\r\n", "unknown_kind": proto.encode(0x42, b"\x00" * 320), "zero_length": b"\x10\x00\x00"}[junk]
    async with running_engine(pbx, tmp_path, audiosocket()) as eng:
        sub = eng.store.subscribe()
        a = pbx.place_call(script=[Pause(20)], caller_number="711")
        b = pbx.place_call(script=[Pause(2), Say(str(HELLO)), Pause(1.5)], caller_number="712")
        await wait_for(lambda: all(eng.store.get(r.id) is not None and eng.store.get(r.id).bridged_at is not None for r in (a, b)))
        session = eng.store.get(a.id)
        endpoint(pbx, a).tcp.write(data)
        await asyncio.wait_for(a.finished.wait(), 10)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == a.id]
        assert any("malformed AudioSocket stream" in m for m in logs), logs
        assert session.stream_in.malformed == 1
        assert transport(eng).status().malformed == 1
        assert "malformed stream" in caplog.text
        await asyncio.wait_for(b.finished.wait(), 20)
        assert b.ended_by == "caller" and b.media.agent_audio_seconds > 1.0
        await nothing_left(pbx, eng)


async def test_a_flood_of_junk_is_never_buffered(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, audiosocket()) as eng:
        a = pbx.place_call(script=[Pause(20)], caller_number="721")
        await wait_for(lambda: eng.store.get(a.id) is not None and eng.store.get(a.id).bridged_at is not None)
        ep = endpoint(pbx, a)
        tcp = ep.tcp
        chunk = bytes(range(0x20, 0x80)) * (1 << 14)  # 1.5 MiB of junk (kind 0x20 is none)
        sent = 0
        while sent < 100 * 1024 * 1024 and not tcp.is_closing() and tcp.get_write_buffer_size() < 8 * len(chunk):
            tcp.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        await asyncio.wait_for(a.finished.wait(), 10)
        t = transport(eng)
        # Refused at its first header: the engine read a few socket reads' worth, no more.
        assert t.status().malformed == 1
        assert t.counters.bytes_in < 4 * 1024 * 1024, t.counters.bytes_in
        await nothing_left(pbx, eng)


async def test_a_peer_that_stops_reading_stalls_neither_the_loop_nor_other_calls(pbx, tmp_path, monkeypatch):
    monkeypatch.setattr(AudioSocketEndpoint, "receive_buffer", 4096)
    async with running_engine(pbx, tmp_path, audiosocket(provider="tone", tone_ms=8000), AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        slow = pbx.place_call(script=[Say(str(HELLO)), Pause(12)], caller_number="731")
        fine = pbx.place_call(script=[Say(str(HELLO)), WaitAgent(0.5), WaitAgentDone(1.0)], caller_number="732")
        await wait_for(lambda: all(eng.store.get(r.id) is not None and eng.store.get(r.id).bridged_at is not None for r in (slow, fine)))
        endpoint(pbx, slow).tcp.pause_reading()  # Asterisk stuck: reads nothing more from the engine
        t = transport(eng)
        await wait_for(lambda: t.status().slow_reader > 0, timeout=20, what="frames to the stuck peer dropped")
        # The engine never held more than the bound for it.
        link = next(lk for lk in t.links if lk.call_id == slow.id)
        assert link.conn.unsent <= t.slow_bytes + 700
        await asyncio.wait_for(fine.finished.wait(), 30)
        # The other call heard its whole 8 s answer at its cadence: no gap in what it was sent.
        frames = [ft for ft, _ in fine.media.agent_frames]
        assert fine.media.agent_heard_s() > 7.5
        assert max(b - a for a, b in zip(frames, frames[1:], strict=False)) < 0.1
        await pbx_hangup(pbx, slow)
        await nothing_left(pbx, eng)


async def pbx_hangup(pbx, rec) -> None:
    ch = pbx.channel_table.by_id.get(rec.id)
    if ch is not None:
        pbx.hangup_channel(ch, "caller")
    await asyncio.wait_for(rec.finished.wait(), 10)


async def test_a_connection_with_an_unknown_uuid_is_refused(pbx, tmp_path, caplog):
    async with running_engine(pbx, tmp_path, audiosocket()) as eng:
        t = transport(eng)
        reader, writer = await asyncio.open_connection("127.0.0.1", t.port)
        stranger = str(uuid.uuid4())
        writer.write(proto.encode_uuid(stranger) + proto.encode_audio(b"\x00" * 320))
        await writer.drain()
        got = await asyncio.wait_for(reader.read(), 5)  # the engine closes it
        assert got in (b"", proto.encode_hangup())
        writer.close()
        assert t.status().unknown == 1
        assert stranger in caplog.text and "no call waits for it" in caplog.text
        await wait_for(lambda: not t.conns)


async def test_asterisk_never_connecting_fails_the_setup_with_the_reason(pbx, tmp_path, monkeypatch):
    monkeypatch.setattr(AudioSocketEndpoint, "send_uuid", False)  # connects, never says who it is
    async with running_engine(pbx, tmp_path, audiosocket()) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(10)])
        await asyncio.wait_for(rec.finished.wait(), 15)
        assert rec.ended_by == "ari"
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == rec.id]
        assert any("call setup failed" in m and "did not connect to the AudioSocket server" in m for m in logs), logs
        assert eng.store.calls_failed == 1
        await nothing_left(pbx, eng)


async def test_a_refused_connection_fails_the_setup(pbx, tmp_path):
    def elsewhere(cfg) -> None:
        audiosocket()(cfg)
        cfg.audiosocket.advertise_host = "127.0.0.2"  # nothing listens there for Asterisk

    async with running_engine(pbx, tmp_path, elsewhere) as eng:
        sub = eng.store.subscribe()
        rec = pbx.place_call(script=[Pause(10)])
        await asyncio.wait_for(rec.finished.wait(), 15)
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == rec.id]
        assert any("call setup failed" in m for m in logs), logs
        await nothing_left(pbx, eng)


# ---- the framing

def test_parser_frames_messages_across_any_split():
    uid = str(uuid.uuid4())
    stream = proto.encode_uuid(uid) + proto.encode_audio(b"\x01\x02" * 160) + proto.encode_dtmf("5") + proto.encode(0x12, b"\x00" * 640) + proto.encode_hangup()
    for step in (1, 2, 3, 7, 64, len(stream)):
        p = proto.Parser()
        got = []
        for i in range(0, len(stream), step):
            got += p.feed(stream[i : i + step])
        assert [(m.kind, len(m.payload)) for m in got] == [(0x01, 16), (0x10, 320), (0x03, 1), (0x12, 640), (0x00, 0)]
        assert got[0].uuid() == uid and got[2].payload == b"5" and got[3].rate == 16000
        assert p.buffered == 0


@pytest.mark.parametrize("bad", [b"\x42\x00\x01x", b"\x10\x00\x00", b"\x01\x00\x05hello", b"GET / HTTP/1.1"])
def test_parser_says_malformed_at_the_header(bad):
    with pytest.raises(proto.Malformed):
        proto.Parser().feed(bad)


def test_parser_never_holds_more_than_one_message():
    p = proto.Parser()
    big = proto.encode(0x10, b"\x00" * proto.MAX_PAYLOAD)
    assert p.feed(big[:-1]) == [] and p.buffered == len(big) - 1 <= proto.HEADER + proto.MAX_PAYLOAD
    assert [len(m.payload) for m in p.feed(big[-1:] + big)] == [proto.MAX_PAYLOAD, proto.MAX_PAYLOAD]
    with pytest.raises(ValueError):
        proto.encode(0x10, b"\x00" * (proto.MAX_PAYLOAD + 1))


def test_all_audio_kinds_and_the_header_layout():
    assert proto.encode(0x10, b"ab") == b"\x10\x00\x02ab"
    assert struct.unpack(">BH", proto.encode_hangup()) == (0, 0)
    assert [proto.AUDIO_RATES[k] for k in range(0x10, 0x19)] == [8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000]
    m = proto.Parser().feed(proto.encode(0xFF, b"\x01"))
    assert m[0].kind == proto.KIND_ERROR and not m[0].is_audio



# ---- the transport on its own: the UUID before or after the ARI reply

class _FakeAri:
    """POST /channels/externalMedia as Asterisk may answer it: the AudioSocket connection and its
    UUID message sent before the reply (``early``) or after it."""

    def __init__(self, early: bool) -> None:
        self.early = early
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.StreamReader] = []

    async def external_media(self, channel_id: str, app: str, external_host: str, fmt: str, **extra: str):
        from engine.ari.models import Channel

        host, _, port = external_host.rpartition(":")
        r, w = await asyncio.open_connection(host, int(port))
        self.writers.append(w)
        self.readers.append(r)
        hello = proto.encode_uuid(extra["data"])
        if self.early:
            w.write(hello)
            await w.drain()
            await asyncio.sleep(0.05)  # the engine has read it before the reply comes
        else:
            asyncio.get_running_loop().call_later(0.05, w.write, hello)
        return Channel.model_validate({"id": channel_id, "name": f"AudioSocket/{external_host}-{extra['data']}", "state": "Down"})


@pytest.mark.parametrize("early", [True, False])
async def test_the_connection_matches_its_call_whichever_comes_first(tmp_path, early):
    from engine.config import load_config
    from runtime.clock import LoopClock

    cfg = load_config(None, env={"AIAGENT_MEDIA_DIR": str(tmp_path)})
    audiosocket()(cfg)
    t = AudioSocketTransport(cfg, LoopClock())
    await t.start()
    try:
        ari = _FakeAri(early)
        ch, link = await t.open(ari, "em-1", "aiagent", "tok")  # type: ignore[arg-type]
        assert ch.id == "em-1" and link.uuid in ch.name and link.where.endswith("/tcp")
        assert t.status().connections == 1 and t.status().unknown == 0
        link.close()
        link.close()  # idempotent
        # Asterisk is told: a frame of silence at once (its channel's read waits for a message
        # once its ANSWER wakes it), then at the end a hangup message, then the socket closes.
        silence = proto.encode(proto.KIND_SLIN, bytes(320))
        assert await asyncio.wait_for(ari.readers[0].read(), 5) == silence + proto.encode_hangup()
        await wait_for(lambda: not t.conns)
    finally:
        for w in ari.writers:
            w.close()
        await t.stop()
