"""audiosocket.dialplan_calls over loopback: the engine on the simulator, and a test client that plays
a site's dialplan AudioSocket() (connect, the UUID, 20 ms slin messages, DTMF, hangup) whose channel
the PBX does not list: the call runs on its socket alone. The form with the caller's channel found
over ARI is tested on the real Asterisk (tests/test_asterisk_audiosocket_direct.py): the simulator's
dialplan model has no channel that runs AudioSocket() by itself."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from engine.audiosocket import AudioSocketTransport
from engine.dialplan_calls import FIND_CHANNEL_S
from engine.engine import Engine
from engine.sessions import ActionChanged, CallLog
from media import audiosocket as proto
from media.audio import audioop, ulaw_to_pcm16
from pbxsim.media import load_wav_ulaw
from providers.profile import AgentProfile
from tests.conftest import HELLO, history_of, running_engine, wait_for
from tests.test_asterisk import BILLING, drain

FRAME = 320  # 20 ms of 8 kHz slin


class DialplanSocket:
    """What app_audiosocket does for ``AudioSocket(UUID,HOST:PORT)``: connects, says the UUID,
    sends the caller's audio, and reads what the engine sends back."""

    def __init__(self) -> None:
        self.uuid = str(uuid.uuid4())
        self.audio_in: list[bytes] = []
        self.kinds_in: list[int] = []
        self.eof = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def connect(self, port: int) -> None:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", port)
        self._writer.write(proto.encode_uuid(self.uuid))
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self._reader is not None
        parser = proto.Parser()
        while data := await self._reader.read(4096):
            for m in parser.feed(data):
                self.kinds_in.append(m.kind)
                if m.is_audio:
                    self.audio_in.append(m.payload)
        self.eof.set()

    async def say(self, pcm: bytes) -> None:
        """Real time, 20 ms a message, as the channel reads it."""
        assert self._writer is not None
        for i in range(0, len(pcm) - FRAME + 1, FRAME):
            self._writer.write(proto.encode_audio(pcm[i:i + FRAME]))
            await asyncio.sleep(0.02)

    def dtmf(self, digit: str) -> None:
        assert self._writer is not None
        self._writer.write(proto.encode_dtmf(digit))

    def audible_s(self) -> float:
        return sum(len(p) for p in self.audio_in if audioop.rms(p, 2) > 100) / 16000

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def transport(eng: Engine) -> AudioSocketTransport:
    t = eng.transports["audiosocket"]
    assert isinstance(t, AudioSocketTransport)
    return t


def dialplan_calls(on: bool = True, profile: AgentProfile | None = None):
    def configure(cfg) -> None:
        cfg.audiosocket.port = 0
        cfg.audiosocket.dialplan_calls = on
        if not on:
            cfg.media.transport = "audiosocket"
        if profile is not None:
            cfg.profiles["default"] = profile

    return configure


async def engine_clean(eng: Engine) -> None:
    t = transport(eng)
    await wait_for(lambda: len(eng.store) == 0 and eng.calls.calls == {} and not eng.calls.dialplan.tokens)
    await wait_for(lambda: not t.conns and not t.links, what="no AudioSocket connection left")


async def test_a_call_on_its_socket_alone_heard_answered_and_hung_up_by_the_agent(pbx, tmp_path):
    profile = AgentProfile(departments={"billing": BILLING}, greeting="")
    async with running_engine(pbx, tmp_path, dialplan_calls(profile=profile), AIAGENT_DOWNSTREAM_MODE="file") as eng:
        sub = eng.store.subscribe()
        sock = DialplanSocket()
        await sock.connect(transport(eng).port)
        await wait_for(lambda: sock.uuid in eng.calls.calls and eng.store.get(sock.uuid).bridged_at is not None, FIND_CHANNEL_S + 10)
        s = eng.store.get(sock.uuid)
        assert s is not None and s.caller_channel_id == sock.uuid and s.caller_number == "" and s.bridge_id is None
        assert s.media_remote.startswith("dialplan AudioSocket()") and s.transport == "audiosocket"
        await sock.say(ulaw_to_pcm16(load_wav_ulaw(HELLO)) + bytes(FRAME * 40))
        # The echo, over the socket although playback.downstream_mode is "file".
        await wait_for(lambda: sock.audible_s() > 0.8, what="the echo back over the socket")
        # A key: the transfer it asks for cannot be done without the caller's channel.
        sock.dtmf("1")
        failed: list = []

        def transfer_failed() -> bool:
            failed.extend(e.action for e in drain(sub) if isinstance(e, ActionChanged) and e.action.state == "failed")
            return bool(failed)

        await wait_for(transfer_failed)
        assert failed[0].kind == "transfer" and "not found over ARI" in failed[0].detail, failed[0]
        assert not eng.bring_in(sock.uuid, "billing", "bridge", "operator")
        assert await eng.hangup(sock.uuid)
        await asyncio.wait_for(sock.eof.wait(), 10)
        assert proto.KIND_HANGUP in sock.kinds_in  # AudioSocket() returns: the dialplan goes on
        await sock.close()
        assert (await history_of(eng, sock.uuid)).outcome == "operator_hung_up"
        await engine_clean(eng)
        assert pbx.leftovers() == ([], [])


async def test_the_socket_closed_is_the_caller_hanging_up(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, dialplan_calls()) as eng:
        sub = eng.store.subscribe()
        sock = DialplanSocket()
        await sock.connect(transport(eng).port)
        await wait_for(lambda: sock.uuid in eng.calls.calls and eng.store.get(sock.uuid).bridged_at is not None, FIND_CHANNEL_S + 10)
        await sock.say(bytes(FRAME * 10))
        await sock.close()
        rec = await history_of(eng, sock.uuid)
        assert rec.outcome == "caller_hung_up", rec.outcome
        logs = [e.message for e in drain(sub) if isinstance(e, CallLog) and e.call_id == sock.uuid]
        assert any("unknown caller" in m and "socket alone" in m for m in logs), logs
        await engine_clean(eng)
        assert transport(eng).status().unknown == 0


async def test_the_caller_gone_while_its_channel_is_looked_up(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, dialplan_calls()) as eng:
        sock = DialplanSocket()
        await sock.connect(transport(eng).port)
        await wait_for(lambda: transport(eng).links, what="the connection taken")
        await sock.close()  # before the call is made (the lookup takes FIND_CHANNEL_S)
        rec = await history_of(eng, sock.uuid)
        assert rec.outcome == "caller_hung_up", rec.outcome
        await engine_clean(eng)


async def test_engine_stop_while_a_channel_is_looked_up(pbx, tmp_path):
    async with running_engine(pbx, tmp_path, dialplan_calls()) as eng:
        sock = DialplanSocket()
        await sock.connect(transport(eng).port)
        await wait_for(lambda: transport(eng).links, what="the connection taken")
    await asyncio.wait_for(sock.eof.wait(), 10)  # the engine stopped: the socket goes with it
    await sock.close()
    assert eng.calls.calls == {} and eng.calls.task_errors == 0


@pytest.mark.parametrize("transport_default", [True, False])
async def test_strangers_refused_without_dialplan_calls(pbx, tmp_path, transport_default):
    def configure(cfg) -> None:
        dialplan_calls(False)(cfg)
        if not transport_default:  # the server runs for a profile's transport only
            cfg.media.transport = "rtp"
            cfg.profiles["default"] = AgentProfile(transport="audiosocket")

    async with running_engine(pbx, tmp_path, configure) as eng:
        sock = DialplanSocket()
        await sock.connect(transport(eng).port)
        await asyncio.wait_for(sock.eof.wait(), 10)
        assert sock.kinds_in == [proto.KIND_HANGUP]
        await sock.close()
        assert eng.calls.calls == {} and transport(eng).status().unknown == 1
