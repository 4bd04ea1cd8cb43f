"""End to end over loopback: simulated Asterisk + the engine + the echo provider + real speech."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from media.audio import ulaw_to_pcm16
from pbxsim.media import load_wav_ulaw
from tests.conftest import AGENT_PASS, HELLO, wait_for


def best_correlation(sent_ulaw: bytes, got_ulaw: bytes) -> float:
    """Peak normalized cross-correlation of two u-law signals over all lags."""
    a = np.frombuffer(ulaw_to_pcm16(sent_ulaw), dtype=np.int16).astype(np.float64)
    b = np.frombuffer(ulaw_to_pcm16(got_ulaw), dtype=np.int16).astype(np.float64)
    n = len(a) + len(b)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    return float(np.max(np.abs(corr)) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("downstream_mode", ["stream", "file"])
async def test_five_concurrent_echo_calls_answered_bridged_echoed_and_cleaned(pbx, engine, tmp_path, downstream_mode):
    # Each caller stays 2.5 s after speaking: the echo's tail (500 ms late, later as files on a
    # loaded machine) is heard before the hangup (1 s was short under two busy loops).
    calls = [pbx.place_call(str(AGENT_PASS), hold_s=2.5, caller_number=f"20{i}") for i in range(5)]
    for rec in calls:
        await asyncio.wait_for(rec.finished.wait(), 60)

    sent = load_wav_ulaw(AGENT_PASS)
    for rec in calls:
        r = rec.report(pbx)
        assert r["answered"] and r["bridged"] and r["external_media"], r
        assert r["ended_by"] == "caller" and r["hangup_clean"], r
        assert r["caller_frames_sent"] == len(sent) // 160 + 1
        if downstream_mode == "stream":
            # RTP both ways: every caller frame reached the engine, the echo came back.
            assert r["rtp_sent"] == r["caller_frames_sent"]
            assert r["rtp_received"] >= r["rtp_sent"] - 5
        else:
            # Files played on the bridge: softmix sends the engine a frame every 20 ms meanwhile.
            assert r["rtp_sent"] >= r["caller_frames_sent"] and r["rtp_received"] == 0
        assert r["agent_audio_seconds"] > 3.0
        # The echo is the caller's own speech (through 8->16->8 kHz resampling and u-law twice). Played
        # as files, one after another, its parts can be spaced apart on a loaded machine, and one
        # lag fits them all less well (0.79 seen under two busy loops).
        assert best_correlation(sent, rec.media.agent_audio()) > (0.9 if downstream_mode == "stream" else 0.75)

    # Each call had its own source port and SSRC on the engine's one socket.
    assert len({r.report(pbx)["external_media_channel"] for r in calls}) == 5
    await wait_for(lambda: len(engine.store) == 0)
    assert pbx.leftovers() == ([], [])
    assert engine.rtp.routes == {}
    assert engine.calls.calls == {}
    assert list((tmp_path / "media").iterdir()) == []
    assert engine.rtp.counters.foreign == 0 and sum(engine.rtp.counters.malformed.values()) == 0


@pytest.mark.parametrize("downstream_mode", ["stream"])
async def test_echo_delay_is_what_the_config_says(pbx, engine):
    rec = pbx.place_call(str(HELLO), hold_s=1.0)
    await asyncio.wait_for(rec.finished.wait(), 30)
    # Timed by the caller's phone (its first frame sent, the first agent frame heard), not by this
    # test's polling, which a loaded machine would delay.
    delay = rec.media.agent_frames[0][0] - rec.media.said[0][0]
    assert 0.45 < delay < 0.7, delay  # 500 ms echo delay + at most a few frames of path


def _from_package(task: asyncio.Task, packages: tuple[str, ...]) -> bool:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    return code is not None and any(f"/{p}/" in code.co_filename for p in packages)


async def test_no_tasks_left_after_engine_stop(pbx, engine):
    rec = pbx.place_call(str(HELLO), hold_s=5.0)
    await wait_for(lambda: rec.bridged)
    await engine.stop()  # hangs the live call up
    # The fixture's stop is then a no-op; what the engine started must all be finished.
    ours = [t for t in asyncio.all_tasks() if not t.done() and _from_package(t, ("engine", "providers"))]
    assert ours == []
    await asyncio.wait_for(rec.finished.wait(), 10)
    assert rec.ended_by == "ari"
    assert pbx.leftovers() == ([], [])
