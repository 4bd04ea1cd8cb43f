"""The outbound pacer on a manual clock: one frame per call per 20 ms tick at its deadline, the
prebuffer, no burst after a late tick (the RTP timestamp follows the wall clock instead), and the
stream's news reported to the call that owns it. No socket, no sleeping."""

from __future__ import annotations

import pytest

from runtime.clock import ManualClock
from engine.media import CallMedia
from engine.pacer import Outbound
from engine.rtp_server import RtpServer
from engine.sessions import CallSession
from media.frames import FRAME_S, FRAME_SAMPLES, ULAW_FRAME_BYTES
from media.pacing import FrameGrid, next_rtp_timestamp
from media.rtp import RtpPacket


class Wire:
    """Stands for the UDP transport: keeps what was sent, on the clock's time."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, RtpPacket]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((self.clock.now(), RtpPacket.parse(data)))

    def is_closing(self) -> bool:
        return False


class Owner:
    def __init__(self) -> None:
        self.news: list[str] = []

    def caller_audio(self, pcm8: bytes) -> None:
        self.news.append("audio")

    def stream_started(self, at: float) -> None:
        self.news.append(f"started@{at:.3f}")

    def stream_drained(self) -> None:
        self.news.append("drained")

    def stream_send_failed(self) -> None:
        self.news.append("send failed")


def rig() -> tuple[ManualClock, Outbound, Wire, CallMedia, Owner]:
    clock = ManualClock(start=100.0)
    server = RtpServer("127.0.0.1", 0, clock=clock)
    wire = Wire(clock)
    server.transport = wire  # type: ignore[assignment]
    owner = Owner()
    link = server.link(("127.0.0.1", 4000))
    media = CallMedia(CallSession(call_id="c", caller_channel_id="c"), link, owner)
    link.attach(media)
    media.bridged = True  # the ExternalMedia channel is in the bridge
    return clock, Outbound(clock), wire, media, owner


def speech(frames: int) -> bytes:
    return bytes(range(256)) * (frames * ULAW_FRAME_BYTES * 2 // 256) + bytes(frames * ULAW_FRAME_BYTES * 2 % 256)


def test_frames_leave_one_per_tick_on_the_grid():
    clock, server, wire, media, owner = rig()
    server.agent_audio(media, speech(10), 8000)
    clock.advance(0.5)
    times = [t for t, _ in wire.sent]
    assert len(times) == 10
    assert times == pytest.approx([100.0 + i * FRAME_S for i in range(10)])
    seqs = [p.sequence for _, p in wire.sent]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(10)]
    stamps = [p.timestamp for _, p in wire.sent]
    assert stamps == [(stamps[0] + i * FRAME_SAMPLES) & 0xFFFFFFFF for i in range(10)]
    assert owner.news == ["started@100.000", "drained"]
    assert media.session.rtp_out.packets == 10 and server.counters.late_ticks == 0


def test_a_stream_waits_for_its_prebuffer_or_40_ms():
    clock, server, wire, media, _ = rig()
    server.agent_audio(media, speech(1), 8000)  # one frame: below the 2-frame prebuffer
    clock.advance(0.03)
    assert wire.sent == []
    clock.advance(0.02)  # the first frame has now waited 40 ms
    assert len(wire.sent) == 1


def test_an_underrun_grows_that_streams_prebuffer():
    """A provider delivering in real time (echo, a voice agent) whose audio comes late: the stream
    runs dry, counts an underrun, and restarts with one more frame in hand than before."""
    clock, server, wire, media, owner = rig()
    for _ in range(5):
        server.agent_audio(media, speech(1), 8000)
        clock.advance(FRAME_S)
    clock.advance(3 * FRAME_S)  # the provider is 60 ms late: the stream runs dry
    assert not media.out_frames and owner.news[-1] == "drained" and media.session.rtp_out.underruns == 0
    late_at = clock.now()
    for _ in range(3):
        server.agent_audio(media, speech(1), 8000)
        clock.advance(FRAME_S)
    assert media.session.rtp_out.underruns == 1 and media.prebuffer == 3
    assert owner.news[-1] == f"started@{late_at + 2 * FRAME_S:.3f}"  # once the third frame is in hand
    clock.advance(1.0)
    assert len(wire.sent) == 8  # nothing lost


def test_a_late_tick_sends_one_frame_not_a_burst_and_the_timestamp_follows_the_clock():
    clock, server, wire, media, _ = rig()
    server.agent_audio(media, speech(20), 8000)
    clock.advance(0.05)  # ticks 0, 1, 2
    assert len(wire.sent) == 3
    # The loop stalls for 90 ms: the due tick runs late and the grid skips what is past.
    clock.stall(0.09)
    clock.advance(0.0)
    # The late tick and the one due now: 2 frames, not the 5 a catch-up would send.
    assert len(wire.sent) == 5
    clock.advance(0.02)
    assert len(wire.sent) == 6 and wire.sent[5][0] == pytest.approx(100.16)  # back on the grid
    (_, p3), (_, p4) = wire.sent[3], wire.sent[4]
    assert server.counters.late_ticks == 1
    assert p4.timestamp - p3.timestamp == 4 * FRAME_SAMPLES  # ticks 4-6 were skipped: RTP time counts them


def test_frame_grid_arithmetic():
    g = FrameGrid()
    assert g.resume(10.0) == 10.0
    assert not g.advance(10.001) and g.tick == 1
    assert g.advance(10.075) and g.tick == 3  # ticks 1 and 2 are past: skip to the current one
    g.idle()
    assert g.resume(11.0) == pytest.approx(11.0) and g.tick == 50
    assert next_rtp_timestamp(0xFFFFFF00, 10, 12) == (0xFFFFFF00 + 320) & 0xFFFFFFFF
