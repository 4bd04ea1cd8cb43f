"""VAD timing on real speech, and removal of the agent's playback from the capture stream."""

from __future__ import annotations

import numpy as np
import pytest

from media.audio import pcm16_to_ulaw, rms_dbfs, ulaw_to_pcm16
from media.playback_reference import PlaybackReference
from media.frames import packet_frames
from media.vad import VoiceActivity
from pbxsim.media import load_wav_ulaw, mix_ulaw, speech_onset_s
from tests.conftest import AGENT_PASS, HELLO


def frames_of(ulaw: bytes) -> list[bytes]:
    return [ulaw_to_pcm16(ulaw[i : i + 160]) for i in range(0, len(ulaw) - 159, 160)]


def test_vad_finds_start_and_end_of_a_real_prompt():
    speech = load_wav_ulaw(HELLO)
    silence = b"\xff" * 160 * 50  # 1 s
    vad = VoiceActivity(aggressiveness=2, start_ms=60, end_ms=500, min_level_dbfs=-50)
    edges = [(i, e) for i, f in enumerate(frames_of(silence + speech + silence)) if (e := vad.update(f))]
    assert [e for _, e in edges] == ["start", "end"]
    start_s = edges[0][0] * 0.02 - 1.0
    onset = speech_onset_s(speech)
    assert onset <= start_s <= onset + 0.2  # found within the start run of the true onset
    end_s = edges[1][0] * 0.02 - 1.0
    assert len(speech) / 8000 <= end_s + 0.1 <= len(speech) / 8000 + 0.7  # hangover after the last word


def test_vad_ignores_quiet_frames_and_meters_levels():
    vad = VoiceActivity(aggressiveness=2, start_ms=60, end_ms=500, min_level_dbfs=-30)
    quiet = (np.sin(np.arange(160) / 3) * 300).astype(np.int16).tobytes()  # about -43 dBFS
    for _ in range(20):
        assert vad.update(quiet) is None
    assert not vad.speaking
    assert -45 < vad.level_dbfs < -40
    assert rms_dbfs(b"\x00\x00" * 160) == -96.0


def test_packet_frames_keep_packet_boundaries():
    assert packet_frames(b"\x01\x00" * 160) == [b"\x01\x00" * 160]
    short = packet_frames(b"\x01\x00" * 6)  # a 12-byte u-law packet, decoded
    assert len(short) == 1 and short[0] == b"\x01\x00" * 6 + bytes(308)
    assert len(packet_frames(b"\x00" * 640)) == 2


@pytest.mark.parametrize("lag_frames", [-2, -1, 0, 1, 3, 5])
def test_reference_takes_the_agents_playback_out_of_the_mix(lag_frames):
    """Capture = caller + agent playback (summed as softmix does), the playback delayed by
    ``lag_frames``. The agent talks alone for 200 ms, then the caller talks over it (a barge-in):
    the residual must be the caller, with the agent 25 dB down or more."""
    caller = b"\xff" * 160 * 10 + load_wav_ulaw(HELLO)[: 160 * 50]
    agent = load_wav_ulaw(AGENT_PASS)[160 * 20 : 160 * 80]
    ref = PlaybackReference()
    delayed = b"\xff" * 160 * max(lag_frames, 0) + agent[160 * max(-lag_frames, 0) :]
    ref.add(agent)
    residual_err, agent_energy = 0.0, 0.0
    for i in range(50):
        c = caller[i * 160 : (i + 1) * 160]
        a = delayed[i * 160 : (i + 1) * 160].ljust(160, b"\xff")
        out = np.frombuffer(ref.residual(ulaw_to_pcm16(mix_ulaw([c, a]))), dtype=np.int16).astype(float)
        want = np.frombuffer(ulaw_to_pcm16(c), dtype=np.int16).astype(float)
        if i >= 6:  # after the lag window has filled
            residual_err += float(np.sum((out - want) ** 2))
            agent_energy += float(np.sum(np.frombuffer(ulaw_to_pcm16(a), dtype=np.int16).astype(float) ** 2))
    assert 10 * np.log10(agent_energy / residual_err) > 25


def test_reference_leaves_the_caller_alone_when_nothing_plays():
    ref = PlaybackReference()
    frame = ulaw_to_pcm16(pcm16_to_ulaw((np.sin(np.arange(160)) * 8000).astype(np.int16).tobytes()))
    assert not ref.active
    assert ref.residual(frame) == frame
