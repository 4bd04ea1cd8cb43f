"""Item 7 of the fault probe: a forged packet from a call's own address, and a flood that fills the
socket's buffer."""

from __future__ import annotations

import asyncio
import socket

from media.rtp import PT_ULAW, build_packet
from pbxsim.script import Pause, Say
from tests.conftest import THANKS, running_engine, wait_for


async def test_one_forged_packet_costs_no_genuine_audio(pbx, tmp_path):
    """Sequence +90 from the call's own address once made 89 genuine packets (1.8 s of speech)
    count as late and get dropped."""
    async with running_engine(pbx, tmp_path, AIAGENT_DOWNSTREAM_MODE="stream") as eng:
        rec = pbx.place_call(script=[Say(str(THANKS)), Pause(0.5)])
        await wait_for(lambda: rec.external_media is not None and eng.store.get(rec.id) is not None
                       and eng.store.get(rec.id).rtp_in.packets > 20)
        ep = pbx.external_endpoints[rec.external_media]
        ep.inject_forged(90)
        ep.inject_forged(30000)
        ep.inject_forged(1, ssrc=ep.ssrc ^ 1)
        session = eng.store.get(rec.id)
        await asyncio.wait_for(rec.finished.wait(), 30)
    assert session.rtp_in_late == 0 and session.rtp_in.lost == 0, session.rtp_in
    assert session.rtp_in.probation_dropped == 3 and session.rtp_in.ssrc_changes == 0
    assert eng.rtp.counters.probation == 3
    # Everything the caller said was passed on: the echo returned all of it.
    report = rec.report(pbx)
    assert report["agent_audio_seconds"] > 5.3, report
    assert report["hangup_clean"] and pbx.leftovers() == ([], [])


async def test_a_flood_that_fills_the_buffer_shows_as_kernel_drops(pbx, tmp_path):
    def small_buffer(cfg):
        cfg.rtp.receive_buffer_bytes = 4096

    async with running_engine(pbx, tmp_path, small_buffer) as eng:
        assert eng.rtp.receive_buffer_bytes <= 8192
        port = eng.rtp.port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            pkt = build_packet(PT_ULAW, 1, 0, 1, b"\xff" * 160)
            for _ in range(2000):  # the loop is ours: nothing is read while we send
                s.sendto(pkt, ("127.0.0.1", port))
        # Every packet is read or counted dropped by the kernel (read at most once a second).
        rtp = await wait_for(lambda: eng.status(detail=False).rtp, until=lambda r: r.foreign_dropped + (r.kernel_drops or 0) == 2000)
        assert rtp.kernel_drops is not None and rtp.kernel_drops > 1000, rtp
        assert "ai_agent_rtp_kernel_drops_total" in eng.metrics.render().decode()


async def test_receive_buffer_is_sized_by_default(pbx, tmp_path):
    async with running_engine(pbx, tmp_path) as eng:
        assert eng.rtp.receive_buffer_bytes >= 4 * 1024 * 1024  # as root: beyond rmem_max
        assert eng.status(detail=False).rtp.kernel_drops == 0
