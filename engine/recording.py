"""Call recordings: a profile with ``record = true`` keeps each call's audio as a stereo WAV (left the
caller as the engine received them, right the agent as sent to the caller), named by the call id,
in ``history.recordings_dir`` next to the history, pruned with it.

The audio is gathered on the loop (a copy per packet) and written on a thread of its own once a
second; the WAV header is brought up to date with each write, so a crash leaves a playable file up
to the last second. A recording that cannot be written is reported and dropped: the call goes on.
Only audio goes in the file: no metadata, no provider keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from engine.config import AppConfig
from media.recording import AGENT, CALLER, RATE, StereoTimeline

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
LAG_S = 0.3  # what is written stops this far behind now: the later side may still be on its way
PRUNE_INTERVAL_S = 3600.0


def recordings_dir(config: AppConfig) -> Path:
    return config.history.recordings_dir or config.storage.media_dir.parent / "recordings"


class CallRecording:
    """One call's recording: fed on the loop by the call's media paths, written by Recordings."""

    def __init__(self, call_id: str, path: Path, now: Callable[[], float]) -> None:
        self.call_id = call_id
        self.path = path
        self._now = now
        self._start = now()
        self.timeline = StereoTimeline()
        self.failed = False
        self.ended = False

    def caller(self, pcm16: bytes) -> None:
        self.timeline.add(CALLER, pcm16, self._now() - self._start)

    def agent_ulaw(self, ulaw: bytes, at: float | None = None) -> None:
        """The agent's audio as it went to the caller: a paced frame now, or a bridge playback that
        started at ``at`` (the call's clock)."""
        self.timeline.add_ulaw(AGENT, ulaw, (self._now() if at is None else at) - self._start)

    def agent_stopped(self, at: float) -> None:
        """The bridge stopped (or paused) the agent's playback at ``at``: what was placed after it
        was not heard."""
        self.timeline.cut(AGENT, at - self._start)

    def ready(self) -> bytes:
        return self.timeline.take(None if self.ended else self._now() - self._start - LAG_S)


class Recordings:
    """Every recording of one engine: opened at a call's start, written once a second, closed at its
    end; files older than the history's retention (or beyond its cap) are deleted hourly."""

    def __init__(self, directory: Path, retention_days: float, max_files: int, on_error: Callable[[str, BaseException], None]) -> None:
        self.dir = directory
        self.retention_days = retention_days
        self.max_files = max_files
        self._on_error = on_error
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="recordings")  # in order, off the loop
        self._files: dict[str, wave.Wave_write] = {}  # touched on the writer thread only
        self._live: dict[str, CallRecording] = {}
        self._wake = asyncio.Event()
        self.written = 0  # recordings completed
        self.errors = 0

    def start(self, call_id: str, now: Callable[[], float]) -> CallRecording:
        rec = CallRecording(call_id, self.dir / f"{call_id}.wav", now)
        self._live[call_id] = rec
        return rec

    def finish(self, rec: CallRecording) -> None:
        """The call ended: the rest goes out and the file is closed (by the next flush, at once)."""
        rec.ended = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_prune = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_INTERVAL_S):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if loop.time() >= next_prune:
                next_prune = loop.time() + PRUNE_INTERVAL_S
                await loop.run_in_executor(self._writer, self._prune)

    async def flush(self) -> None:
        batch = []
        for rec in list(self._live.values()):
            if rec.failed:
                self._live.pop(rec.call_id, None)
                continue
            batch.append((rec, rec.ready(), rec.ended))
            if rec.ended:
                self._live.pop(rec.call_id, None)
        if batch:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write, batch)

    async def close(self) -> None:
        for rec in self._live.values():
            rec.ended = True
        await self.flush()
        self._writer.shutdown(wait=True)

    # ---- the writer thread
    def _write(self, batch: list[tuple[CallRecording, bytes, bool]]) -> None:
        for rec, data, ended in batch:
            try:
                w = self._files.get(rec.call_id)
                if w is None:
                    w = self._files[rec.call_id] = self._open(rec.path)
                if data:
                    w.writeframes(data)  # rewrites the header's lengths: the file plays as it stands
                if ended:
                    self._files.pop(rec.call_id).close()
                    self.written += 1
            except Exception as e:
                self.errors += 1
                rec.failed = True
                bad = self._files.pop(rec.call_id, None)
                if bad is not None:
                    with contextlib.suppress(Exception):
                        bad.close()
                self._on_error("recordings", OSError(f"[{rec.call_id}] cannot write {rec.path}: {e}; the call goes on unrecorded"))

    def _open(self, path: Path) -> wave.Wave_write:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        # Callers' voices: readable by the engine's user and group only.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        w = wave.open(os.fdopen(fd, "wb"), "wb")
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        return w

    def _prune(self) -> None:
        try:
            files = sorted(self.dir.glob("*.wav"), key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:
            return
        older = time.time() - self.retention_days * 86400
        doomed = [p for p in files if p.stat().st_mtime < older]
        kept = [p for p in files if p not in doomed and p.stem not in self._files]
        doomed += kept[: max(0, len(kept) - self.max_files)]
        for p in doomed:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        if doomed:
            log.info("recordings: deleted %d past the history's retention", len(doomed))
