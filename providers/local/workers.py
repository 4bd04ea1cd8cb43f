"""Model work in supervised worker processes: one process per model, jobs served by priority.

A model (a llama.cpp context, a Whisper model, a Piper voice) loads once in its own process and is
shared by every call. A crash (SIGSEGV, SIGILL, abort) or a hang in its native code ends that
process only: the jobs it held fail with ``WorkerCrashed`` (the provider apologises for that turn),
the worker is restarted with backoff, and ``status()`` says so for /health. A worker that shows no
progress for ``hang_timeout_s`` while it has work is killed and restarted the same way. The queue is
bounded so that a flood of turns fails fast instead of piling up minutes of work.

Jobs wait here, not in the process: it is given one at a time, the most urgent first
(``Priority``: what a caller waits on, then the rest of answers, then partial transcripts, which
are refused when anything else waits), in arrival order within a priority. A queued job that is
cancelled (barge-in, hangup) never reaches the process.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import pickle
import signal
import sys
from dataclasses import KW_ONLY, dataclass, field
from typing import Callable, TypeVar, cast

from providers.base import ComponentStatus, ModelWork, Span, model_work
from providers.local.wire import HEADER_SIZE, Cancel, Chunk, Done, Failed, Job, Load, LoadFailed, Ready, Run, body_size, encode
from providers.stages import Priority, StageBusy, StageFailed
from runtime.clock import Clock, LoopClock, Timer, sleep
from runtime.tasks import OwnedTasks

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 30.0)  # after 1, 2, 3, 4, 5+ failures in a row
FAILED_AFTER = 5  # failures in a row without a job done: shown as failed (the provider is not ready)


def worker_env() -> dict[str, str]:
    """A worker's environment: numpy's OpenBLAS on one thread (unless set otherwise). Its other
    threads spin after each call, and faster-whisper's mel filterbank is one: Whisper took twice
    its wall time in CPU (bench/cpu.py: 3.8 % of a core a call for STT, 1.6-1.9 % with one thread)."""
    return {"OPENBLAS_NUM_THREADS": "1", **os.environ}


WaitObserver = Callable[[str, Priority, float], None]  # (model kind, priority, seconds waited)
R = TypeVar("R")


class QueueFull(StageBusy):
    pass


class WorkerCrashed(StageFailed):
    """The model process died or hung while this job was queued or running."""


@dataclass(kw_only=True)
class _Job:
    future: asyncio.Future
    on_chunk: Callable[[str], None] | None
    message: bytes  # the job's frame for the process
    priority: Priority
    queued_at: float
    work: ModelWork | None  # the call's record of its model time, if it keeps one
    span: Span | None = None  # its time in the process, once given to it


@dataclass
class ModelWorker:
    name: str  # "stt", "llm", "tts": the model kind the process loads
    config: dict  # LocalProviderConfig, as data for the process
    max_queue: int
    hang_timeout_s: float = 60.0
    _: KW_ONLY
    on_wait: WaitObserver | None = None  # told how long each job waited before the process took it
    load_timeout_s: float = 300.0
    clock: Clock = field(default_factory=LoopClock)  # the job's waits, the hang watchdog, the restart backoff
    state: str = field(default="starting", init=False)  # starting | running | restarting | failed | stopped
    detail: str = field(default="", init=False)  # what the process reported when it loaded
    restarts: int = field(default=0, init=False)
    jobs: int = field(default=0, init=False)  # given to the process (not those dropped while they waited)
    last_error: str | None = field(default=None, init=False)
    load_error: str | None = field(default=None, init=False)  # what the process said when its model did not load
    _proc: asyncio.subprocess.Process | None = field(default=None, init=False)
    _pending: dict[int, _Job] = field(default_factory=dict, init=False)  # queued and running
    _queue: list[tuple[int, int]] = field(default_factory=list, init=False)  # heap of (priority, id) waiting here
    _running: int | None = field(default=None, init=False)  # the job the process has
    _ids: itertools.count = field(default_factory=itertools.count, init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _tasks: OwnedTasks = field(init=False)  # the supervisor
    _watchdog: Timer | None = field(default=None, init=False)
    _last_progress: float = field(default=0.0, init=False)
    _failures: int = field(default=0, init=False)  # restarts in a row without a job done
    _busy_s: float = field(default=0.0, init=False)  # the process's time on jobs, those done (busy_seconds adds the one it has)
    _busy_since: float | None = field(default=None, init=False)  # when it was given the job it has

    def __post_init__(self) -> None:
        self._tasks = OwnedTasks(f"{self.name} model worker")

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return len(self._pending)

    def oldest_wait_s(self, now: float) -> float:
        """How long the job that has waited longest for the process has been waiting."""
        waiting = [j.queued_at for i, j in self._pending.items() if i != self._running]
        return now - min(waiting) if waiting else 0.0

    def busy_seconds(self, now: float) -> float:
        """Seconds (the clock's) the process has had a job since the worker started: the model's
        share of the calls' time, from which the engine measures its capacity (engine/capacity.py)."""
        return self._busy_s + (now - self._busy_since if self._busy_since is not None else 0.0)

    def _set_running(self, job_id: int | None, now: float) -> None:
        if self._busy_since is not None:
            self._busy_s += max(0.0, now - self._busy_since)
        self._running = job_id
        self._busy_since = now if job_id is not None else None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def status(self) -> ComponentStatus:
        return ComponentStatus(
            name=self.name, state=self.state, restarts=self.restarts, errors=self.restarts, last_error=self.last_error,
            pid=self.pid, jobs=self.jobs, depth=self.depth,
        )

    # ---- lifecycle
    async def start(self) -> None:
        """Starts the process and waits until its model is loaded; raises if it cannot load (the
        watchdog kills one not loaded in ``load_timeout_s``, which ends the supervisor)."""
        supervisor = self._tasks.spawn(self._supervise())
        ready = self._tasks.spawn(self._ready.wait())
        await asyncio.wait([ready, supervisor], return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            await self.close()
            # The process's own account names the file and why; else how it ended.
            raise RuntimeError(self.load_error or f"{self.name} model worker did not start: {self.last_error or 'timed out loading'}")

    async def close(self) -> None:
        self.state = "stopped"
        await self._tasks.cancel()
        if self._proc is not None:
            self._kill()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)  # reaped before the loop goes
            except TimeoutError:
                log.warning("%s model worker (pid %d) did not exit after SIGKILL", self.name, self._proc.pid)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass

    async def _supervise(self) -> None:
        """Owns the process: starts it, reads its replies, restarts it when it dies."""
        while True:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                self._fail_pending("model worker stopped")
                raise
            except Exception as e:  # our own bug: same treatment as a crash, with the traceback
                log.exception("%s model worker supervisor error", self.name)
                self.last_error = f"{e.__class__.__name__}: {e}"
                self._kill()
            self._fail_pending(f"{self.name} model worker died ({self.last_error})")
            if not self._ready.is_set():  # never loaded: starting again will not help
                self.state = "failed"
                return
            self._failures += 1
            self.restarts += 1
            # Still restarted after that, slowly: a half-open probe of whether the model works again.
            self.state = "failed" if self._failures >= FAILED_AFTER else "restarting"
            await sleep(self.clock, RESTART_BACKOFF_S[min(self._failures, len(RESTART_BACKOFF_S)) - 1])

    async def _run_once(self) -> None:
        # Its own session: a signal to the engine's process group (Ctrl-C in a terminal, `timeout`,
        # `kill -- -PGID`, an SSH hangup) is the engine's to act on. The engine stops it by closing
        # its stdin once the calls are hung up; killed with the engine, it would be logged as a
        # crash and restarted while the engine shuts down.
        proc = self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "providers.local.worker_process",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=worker_env(), start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(encode(Load(self.name, self.config)))
        self._watch_hang(proc, self.clock.now())
        try:
            await self._read(proc.stdout)  # until its stdout closes: it ended, or is ending
        except BaseException:
            self._kill()
            raise
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                self._watchdog = None
        # No kill() for a process that is exiting: Popen's kill polls first, and that poll could
        # reap the child before asyncio's watcher does (which then reports status 255).
        try:
            code = await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:  # closed its stdout but lives on
            self._kill()
            code = await proc.wait()
        if self.load_error is not None:
            self.last_error = self.load_error
            log.error("%s model worker (pid %d) could not load its model: %s", self.name, proc.pid, self.load_error)
            return
        if self.last_error is None or not self.last_error.startswith("hung"):
            self.last_error = _describe_exit(code)
        log.error("%s model worker (pid %d) ended: %s; %d job(s) lost, restarting", self.name, proc.pid, self.last_error, self.depth)

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while True:
            try:
                head = await stdout.readexactly(HEADER_SIZE)
                frame = pickle.loads(await stdout.readexactly(body_size(head)))
            except asyncio.IncompleteReadError:
                return  # the process ended
            self._last_progress = self.clock.now()
            match frame:
                case Ready(detail):
                    self.detail = detail
                    self.state = "running"
                    self.load_error = None
                    self._ready.set()
                    log.info("%s model worker up (pid %s): %s", self.name, self.pid, self.detail)
                case LoadFailed(error):
                    self.load_error = error
                case Chunk(job_id, text):
                    job = self._pending.get(job_id)
                    if job is not None and job.on_chunk is not None:
                        job.on_chunk(text)
                case Done(job_id) | Failed(job_id):
                    if job_id == self._running:
                        self._set_running(None, self.clock.now())
                        self._failures = 0
                        self._dispatch()
                    self._finish(job_id, frame)

    def _finish(self, job_id: int, reply: Done | Failed) -> None:
        job = self._pending.pop(job_id, None)
        if job is None or job.future.done():
            return  # a cancelled job's late reply
        match reply:
            case Done(_, result, started, ended):
                if job.span is not None:
                    job.span.start, job.span.end = started, ended
                job.future.set_result(result)
            case Failed(_, error):
                job.future.set_exception(RuntimeError(f"{self.name} model: {error}"))

    def _watch_hang(self, proc: asyncio.subprocess.Process, started: float) -> None:
        """Kills a process that has work and shows no progress, or that does not finish loading:
        a look every quarter of ``hang_timeout_s`` (at most a second), on the clock."""
        now = self.clock.now()
        if self.state != "running":
            hung = now - started > self.load_timeout_s
            why = f"hung: not loaded after {self.load_timeout_s:.0f} s, killed"
        else:
            hung = self._running is not None and now - self._last_progress > self.hang_timeout_s
            why = f"hung: no progress for {self.hang_timeout_s:.0f} s, killed"
        if hung:
            self.last_error = why
            log.error("%s model worker (pid %d) %s", self.name, proc.pid, why)
            self._kill()
            return
        if self._running is None:
            self._last_progress = now
        self._watchdog = self.clock.call_later(min(1.0, self.hang_timeout_s / 4), self._watch_hang, proc, started)

    def _fail_pending(self, why: str) -> None:
        pending, self._pending = self._pending, {}
        self._queue.clear()
        self._set_running(None, self.clock.now())
        for job in pending.values():
            if not job.future.done():
                job.future.set_exception(WorkerCrashed(why))

    # ---- jobs
    async def run(self, job: Job[R], *, on_chunk: Callable[[str], None] | None = None, priority: Priority = Priority.NOW) -> R:
        """Runs ``job`` in the worker; ``on_chunk`` gets an answer's pieces as they come (on this
        loop). Cancelling the caller cancels the job (before it reaches the worker, or in it: it
        stops at its next step). A partial transcript (``IF_IDLE``) is refused with StageBusy when
        other jobs wait."""
        if self.depth >= self.max_queue:
            raise QueueFull(f"{self.name}: {self.depth} jobs already queued")
        if priority is Priority.IF_IDLE and self._queue:
            raise StageBusy(f"{self.name}: {len(self._queue)} jobs waiting; a partial transcript can wait for the final one")
        if self.state != "running" or self._proc is None or self._proc.stdin is None:
            raise WorkerCrashed(f"{self.name} model worker is {self.state} ({self.last_error or 'no detail'})")
        job_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        queued = self._pending[job_id] = _Job(
            future=fut, on_chunk=on_chunk, message=encode(Run(job_id, job)), priority=priority, queued_at=self.clock.now(), work=model_work.get(),
        )
        heapq.heappush(self._queue, (priority, job_id))
        self._dispatch()
        try:
            return cast(R, await fut)  # Done's result is what a Job[R] answers
        except asyncio.CancelledError:
            if self._pending.pop(job_id, None) is not None and job_id == self._running:
                self._send(encode(Cancel(job_id)))  # its late Done frees the process
            raise
        finally:
            if queued.span is not None and queued.span.end is None:  # cancelled, failed, lost with the process
                queued.span.end = self.clock.now()

    def _dispatch(self) -> None:
        """Gives the process the most urgent waiting job, if it has none."""
        while self._running is None and self._queue:
            _, job_id = heapq.heappop(self._queue)
            job = self._pending.get(job_id)
            if job is None:
                continue  # cancelled while it waited
            now = self.clock.now()
            if self.on_wait is not None:
                self.on_wait(self.name, job.priority, now - job.queued_at)
            if job.work is not None:
                job.work.waited(job.queued_at, now)
                job.span = job.work.running(now)
            self._set_running(job_id, now)
            self.jobs += 1
            self._last_progress = now
            if not self._send(job.message):
                self._set_running(None, now)
                del self._pending[job_id]
                if not job.future.done():
                    job.future.set_exception(WorkerCrashed(f"{self.name} model worker is gone"))

    def _send(self, data: bytes) -> bool:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is None or stdin.is_closing():
            return False
        try:
            stdin.write(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"
