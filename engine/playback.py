"""Agent audio out to the caller: file mode (Asterisk plays u-law files on the bridge) and stream
mode (RTP through the engine's socket, paced by the RtpServer).

Both keep gating tokens in the call's session (``session.playbacks``): capture is muted while any
token is held, so the agent's own voice, which a bridge playback mixes back into the
ExternalMedia stream, never reaches STT.
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from engine.ari.client import AriClient, AriError, AriUnavailable
from runtime.clock import Clock, Timer
from engine.config import PlaybackConfig
from engine.media import CallMedia
from runtime.ratelimit import RateLimitedLog
from runtime.tasks import Spawn
from engine.recording import CallRecording
from engine.pacer import Outbound
from engine.sessions import CallSession, PlaybackRef
from engine.status import PlaybackCounters
from media.audio import UlawEncoder
from media.frames import FRAME_S, RATE, ULAW_FRAME_BYTES, ULAW_SILENCE
from media.playback_reference import PlaybackReference

log = logging.getLogger(__name__)
_rl = RateLimitedLog(log)  # a full disk fails every file of every call: one line per interval

STREAM_TOKEN = "stream"
IDLE_FLUSH_S = 0.1  # agent audio that stops without an end-of-speech mark is flushed after this
ULAW_BYTES_PER_S = RATE  # one byte per sample


class Downstream(ABC):
    """What the call needs of a playback path; each path answers the news that concerns it and
    ignores the rest (a file path has no RTP stream, a stream no ARI playbacks)."""

    @abstractmethod
    def add(self, pcm16: bytes, sample_rate: int) -> None: ...

    @abstractmethod
    def finish(self) -> None:
        """The end of an agent utterance: what is buffered goes out."""

    @abstractmethod
    def stop(self) -> float:
        """Barge-in: stop what plays, drop what is queued; returns the seconds of agent audio
        the caller will now not hear."""

    @abstractmethod
    def pause(self, paused: bool) -> bool:
        """Holds the agent's audio where it is (True) or goes on from there (False); False if
        nothing is held (a file still queued in Asterisk cannot be paused)."""

    @abstractmethod
    def close(self) -> None: ...

    def bridged(self) -> None:
        """The ExternalMedia channel joined the bridge: the agent's audio may go out (a greeting
        is often ready before). Before, a stream would not reach the caller, and a file would, but
        its first frames would be missing from the capture stream, throwing the echo reference off
        by as many frames: the greeting's own echo would barge in on it."""

    def stream_started(self, at: float) -> None:
        """The pacer sent the first frame after a pause (the call's RTP stream)."""

    def drained(self) -> None:
        """The pacer sent the last queued frame."""

    def playback_event(self, playback_id: str, started: bool, state: str) -> None:
        """ARI's PlaybackStarted (``started``) or PlaybackFinished (its ``state``) on the call's bridge."""

    def send_failed(self) -> bytes | None:
        """RTP sends to Asterisk keep failing: the u-law still queued, if this path gives way to
        files now; None if the call's sends are not this path's (files play inside Asterisk)."""
        return None


class FilePlayback(Downstream):
    """Agent audio as u-law files played on the call's bridge, in order, each with its own id."""

    def __init__(
        self,
        *,
        ari: AriClient,
        session: CallSession,
        token: str,
        media_dir: Path,
        config: PlaybackConfig,
        counters: PlaybackCounters,
        spawn: Spawn,
        on_tokens_changed: Callable[[], None],
        on_first_audio: Callable[[float, float | None], None],  # a playback started, and when it was asked for (the turn's first counts)
        reference: PlaybackReference,
        clock: Clock,
        recording: CallRecording | None = None,
    ) -> None:
        self.ari = ari
        self.session = session
        self.token = token
        self.media_dir = media_dir
        self.config = config
        self.counters = counters
        self._spawn = spawn
        self._on_tokens_changed = on_tokens_changed
        self._on_first_audio = on_first_audio
        self.reference = reference
        self._clock = clock
        self._recording = recording
        self._encoder = UlawEncoder()
        self._buf = bytearray()
        self._seq = 0
        self._chunk_bytes = config.file_chunk_ms * ULAW_BYTES_PER_S // 1000
        self._idle: Timer | None = None
        self._timeouts: dict[str, tuple[float, Timer]] = {}  # playback id -> (deadline, its timer)
        self._audio: dict[str, bytes] = {}  # playback id -> its u-law, for the reference
        self._posts: asyncio.Queue[str] = asyncio.Queue()
        self._bridged = asyncio.Event()
        if session.bridged_at is not None:  # a stream that failed over to files mid-call
            self._bridged.set()
        self._expected_end = 0.0  # when the last queued playback should end
        self._paused: tuple[str, float] | None = None  # (playback id, since) while the agent is held
        self._poster = spawn(self._post_loop())
        session.downstream_mode = "file"

    # ---- in
    def add(self, pcm16: bytes, sample_rate: int) -> None:
        self._buf += self._encoder.encode(pcm16, sample_rate)
        if len(self._buf) >= self._chunk_bytes:
            self._flush(whole_frames=True)
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self._clock.call_later(IDLE_FLUSH_S, self._flush)

    def finish(self) -> None:
        self._flush()

    def _flush(self, whole_frames: bool = False) -> None:
        """Writes and queues what is buffered. Files are whole 20 ms frames (Asterisk drops the
        partial last frame of a queue and plays queued files back to back: whole frames keep
        the echo on the reference's frame grid): mid-speech the remainder waits for more audio,
        at the end of speech it is padded with silence."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if whole_frames:
            cut = len(self._buf) - len(self._buf) % ULAW_FRAME_BYTES
            data = bytes(self._buf[:cut])
            del self._buf[:cut]
        else:
            data = bytes(self._buf) + bytes([ULAW_SILENCE]) * (-len(self._buf) % ULAW_FRAME_BYTES)
            self._buf.clear()
        if not data:
            return
        self._seq += 1
        # Names come from the call's random token and a counter: no caller-controlled text.
        pid = f"{self.token}-{self._seq:05d}"
        path = self.media_dir / pid
        try:
            self.media_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_suffix(".ulaw"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError as e:
            self.counters.files_failed += 1
            _rl.error(f"write-{e.errno}", f"[{self.session.call_id}] cannot write playback file {path}: {e.strerror or e}")
            return
        duration = len(data) / ULAW_BYTES_PER_S
        self.session.playbacks[pid] = PlaybackRef(pid, str(path), duration)
        self._audio[pid] = data
        self._on_tokens_changed()
        self._posts.put_nowait(pid)

    def bridged(self) -> None:
        self._bridged.set()

    async def _post_loop(self) -> None:
        # One poster per call keeps the POSTs, and so Asterisk's playback queue, in order.
        await self._bridged.wait()
        while True:
            pid = await self._posts.get()
            if pid not in self.session.playbacks:
                continue  # stopped before it was posted
            ref = self.session.playbacks[pid]
            assert self.session.bridge_id is not None
            now = self._clock.now()
            self._expected_end = max(now, self._expected_end) + ref.duration_s
            # Overdue after the queue ahead of it and itself have played, plus a margin.
            self._set_timeout(pid, self._expected_end + self.config.timeout_margin_ms / 1000)
            # The echo of this file follows the audio posted before it, counted from this POST.
            self.reference.posted(self._audio.get(pid, b""))
            ref.posted_at = now
            try:
                await self.ari.play_on_bridge(self.session.bridge_id, pid, f"sound:{ref.path}")
            except (AriError, AriUnavailable) as e:
                log.warning("[%s] playback %s not started: %s", self.session.call_id, pid, e)
                self.counters.files_failed += 1
                self._release(pid)

    def _set_timeout(self, pid: str, deadline: float) -> None:
        self._timeouts[pid] = (deadline, self._clock.call_at(deadline, self._timed_out, pid))

    # ---- ARI events
    def playback_event(self, playback_id: str, started: bool, state: str) -> None:
        if started:
            self._on_started(playback_id)
        else:
            self._on_finished(playback_id, state)

    def _on_started(self, pid: str) -> None:
        ref = self.session.playbacks.get(pid)
        if ref is None or ref.started_at is not None:
            return  # not ours, or the PlaybackStarted that Asterisk sends again on unpause
        ref.started_at = self._clock.now()
        if self._paused is not None and self._paused[0] != pid:
            # The pause reached Asterisk after the file before this one had ended: hold this one.
            self._paused = (pid, self._paused[1])
            self._spawn(self._control(pid, "pause"))
        if self._recording is not None:
            self._recording.agent_ulaw(self._audio.get(pid, b""), ref.started_at)
        self.counters.files_started += 1
        self._on_first_audio(ref.started_at, ref.posted_at)

    def _on_finished(self, pid: str, state: str) -> None:
        if pid not in self.session.playbacks:
            return
        if state == "failed":
            self.counters.files_failed += 1
            log.warning("[%s] playback %s failed in Asterisk", self.session.call_id, pid)
        else:
            self.counters.files_finished += 1
        self._release(pid, played=state != "failed")

    def _timed_out(self, pid: str) -> None:
        if pid not in self.session.playbacks:
            return
        self.counters.files_timed_out += 1
        log.warning("[%s] no PlaybackFinished for %s in time: cleaning it up", self.session.call_id, pid)
        self._spawn(self._stop_remote(pid))
        self._release(pid)

    # ---- out
    def stop(self) -> float:
        now = self._clock.now()
        unplayed = len(self._buf) / ULAW_BYTES_PER_S
        for ref in self.session.playbacks.values():
            played = now - ref.started_at if ref.started_at is not None else 0.0
            unplayed += max(0.0, ref.duration_s - played)
        self._buf.clear()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._paused = None
        self.reference.hold(False)
        if self._recording is not None:
            self._recording.agent_stopped(now)
        pids = list(self.session.playbacks)
        for pid in pids:
            self.counters.files_stopped += 1
            # Every queued playback must be deleted: stopping one lets the next one play.
            self._spawn(self._stop_remote(pid))
            self._release(pid, notify=False)
        self._expected_end = 0.0
        self._on_tokens_changed()
        return unplayed

    def pause(self, paused: bool) -> bool:
        """Holds the playing file where it is (ARI playback control), the echo reference with it;
        on resume, the files' timeouts move on by the time held."""
        now = self._clock.now()
        if paused:
            playing = next((p for p, ref in self.session.playbacks.items() if ref.started_at is not None), None)
            if playing is None or self._paused is not None:
                return False
            self._paused = (playing, now)
            self.reference.hold(True)
            if self._recording is not None:
                self._recording.agent_stopped(now)
            self._spawn(self._control(playing, "pause"))
            return True
        if self._paused is None:
            return False
        pid, since = self._paused
        self._paused = None
        held = now - since
        self.reference.hold(False)
        self._spawn(self._control(pid, "unpause"))
        ref = self.session.playbacks.get(pid)
        if ref is not None and ref.started_at is not None:
            if self._recording is not None:
                played = int((since - ref.started_at) * ULAW_BYTES_PER_S)
                self._recording.agent_ulaw(self._audio.get(pid, b"")[played:], now)
            ref.started_at += held  # what is left of it plays from now
        self._expected_end += held
        for p, (deadline, timer) in list(self._timeouts.items()):
            timer.cancel()
            self._set_timeout(p, deadline + held)
        return True

    async def _control(self, pid: str, operation: str) -> None:
        try:
            await self.ari.control_playback(pid, operation)
        except AriError as e:
            # 404 or 409: it ended (or was stopped) before the request arrived; nothing is held.
            if e.status not in (404, 409):
                log.warning("[%s] %s playback %s: %s", self.session.call_id, operation, pid, e)
        except AriUnavailable as e:
            log.warning("[%s] %s playback %s: %s", self.session.call_id, operation, pid, e)

    async def _stop_remote(self, pid: str) -> None:
        try:
            await self.ari.stop_playback(pid)
        except AriError as e:
            if e.status != 404:
                log.warning("[%s] stopping playback %s: %s", self.session.call_id, pid, e)
        except AriUnavailable as e:
            log.warning("[%s] stopping playback %s: %s", self.session.call_id, pid, e)

    def _release(self, pid: str, notify: bool = True, played: bool = False) -> None:
        """``played``: it finished playing, so its whole echo is coming (perhaps behind RTP that a
        busy loop has not read yet); else it was stopped or lost, and little more of it comes."""
        ref = self.session.playbacks.pop(pid, None)
        self._audio.pop(pid, None)
        t = self._timeouts.pop(pid, None)
        if t is not None:
            t[1].cancel()
        if ref is not None:
            try:
                Path(ref.path).with_suffix(".ulaw").unlink(missing_ok=True)
            except OSError as e:
                log.warning("[%s] cannot delete %s: %s", self.session.call_id, ref.path, e)
        if not self.session.playbacks:
            self._expected_end = 0.0
            self.reference.run_ended(played)  # Asterisk's queue is empty: the next file starts a new run
        if notify:
            self._on_tokens_changed()

    def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        for _, t in self._timeouts.values():
            t.cancel()
        self._poster.cancel()
        for pid in list(self.session.playbacks):
            self._release(pid, notify=False)


class StreamPlayback(Downstream):
    """Agent audio as frames over the call's media link (paced and jitter-buffered by Outbound)."""

    def __init__(
        self,
        *,
        outbound: Outbound,
        media: CallMedia,
        on_tokens_changed: Callable[[], None],
        on_first_audio: Callable[[float], None],  # a frame went out after a pause (the turn's first counts)
    ) -> None:
        self.outbound = outbound
        self.media = media
        self._on_tokens_changed = on_tokens_changed
        self._on_first_audio = on_first_audio
        media.session.downstream_mode = "stream"

    def add(self, pcm16: bytes, sample_rate: int) -> None:
        session = self.media.session
        if STREAM_TOKEN not in session.playbacks:
            session.playbacks[STREAM_TOKEN] = PlaybackRef(STREAM_TOKEN, "", 0.0, started_at=None)
            self._on_tokens_changed()
        self.outbound.agent_audio(self.media, pcm16, sample_rate)

    def finish(self) -> None:
        self.outbound.finish_agent_audio(self.media)

    def stream_started(self, at: float) -> None:
        self._on_first_audio(at)

    def drained(self) -> None:
        if self.media.session.playbacks.pop(STREAM_TOKEN, None) is not None:
            self._on_tokens_changed()

    def stop(self) -> float:
        n = self.media.flush_outbound()
        self.drained()
        return n * FRAME_S

    def close(self) -> None:
        self.media.flush_outbound()
        self.media.session.playbacks.pop(STREAM_TOKEN, None)

    def bridged(self) -> None:
        self.media.bridged = True
        if self.media.out_frames:
            self.outbound.wake(self.media)

    def send_failed(self) -> bytes | None:
        return b"".join(self.media.out_frames)

    def pause(self, paused: bool) -> bool:
        self.media.paused = paused
        if not paused and self.media.out_frames:
            self.outbound.wake(self.media)
        return True
