"""The providers' timing decisions on the manual clock: the circuit breaker, a model server's probe
interval, the model worker's hang watchdog; and the model worker's wire (typed frames)."""

from __future__ import annotations

import asyncio
import io

from providers.circuit import CircuitBreaker
from providers.config import ModelServerConfig
from providers.local.wire import Answer, Cancel, Done, Load, Run, Slice, Synthesize, encode, read_frame
from providers.local.workers import ModelWorker
from providers.remote.server import ModelServer
from runtime.clock import ManualClock
from tests.conftest import wait_for


def test_an_open_circuit_is_probed_after_its_time_and_backs_off_while_the_probe_fails():
    clock = ManualClock()
    c = CircuitBreaker(open_s=10.0, max_open_s=25.0, clock=clock)
    assert c.closed and not c.probe_due()
    c.failure("refused")
    assert c.state == "open" and c.last_error == "refused"
    clock.advance(9.5)
    assert not c.probe_due() and c.seconds_to_probe() == 0.5
    clock.advance(0.5)
    assert c.probe_due() and c.state == "half_open"
    assert not c.probe_due()  # one probe at a time
    c.failure("still refused")  # the probe failed: open for twice as long
    assert c.state == "open" and c.open_for_s == 20.0
    clock.advance(19.0)
    assert not c.probe_due()
    clock.advance(1.0)
    assert c.probe_due()
    c.failure("refused again")
    assert c.open_for_s == 25.0  # capped
    clock.advance(25.0)
    assert c.probe_due()
    c.success()
    assert c.closed and c.open_for_s == 10.0 and c.failures == 0 and c.successes == 1


class _Server(ModelServer):
    def __init__(self, clock: ManualClock) -> None:
        super().__init__("fake", ModelServerConfig(api="openai", url="http://127.0.0.1:9/v1", probe_interval_s=5.0), clock=clock)
        self.up = False
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise ConnectionRefusedError("refused")


async def test_a_server_down_at_start_is_probed_every_interval_of_its_clock_and_found_back():
    clock = ManualClock()
    server = _Server(clock)
    await server.start()
    try:
        assert server.probes == 1 and not server.circuit.closed and server.status().state == "down"
        await asyncio.sleep(0)  # the probe loop starts, and waits on the clock
        clock.advance(4.9)
        assert server.probes == 1
        clock.advance(0.1)
        await wait_for(lambda: server.probes == 2)
        assert not server.circuit.closed
        server.up = True
        clock.advance(5.0)
        await wait_for(lambda: server.circuit.closed)
        assert server.probes == 3 and server.status().state == "running"
    finally:
        await server.close()


class _Proc:
    """What the watchdog sees of a worker process."""

    pid = 4242
    returncode: int | None = None

    def __init__(self) -> None:
        self.killed = 0

    def kill(self) -> None:
        self.killed += 1


def _worker(clock: ManualClock, proc: _Proc, state: str) -> ModelWorker:
    worker = ModelWorker("tts", {}, max_queue=4, hang_timeout_s=2.0, load_timeout_s=30.0, clock=clock)
    worker._proc = proc  # type: ignore[assignment]
    worker.state = state
    worker._watch_hang(proc, clock.now())  # type: ignore[arg-type]
    return worker


def test_a_worker_with_a_job_and_no_progress_for_the_hang_timeout_is_killed():
    clock, proc = ManualClock(), _Proc()
    worker = _worker(clock, proc, "running")
    worker._running, worker._last_progress = 1, clock.now()
    clock.advance(2.0)
    assert proc.killed == 0  # no progress for exactly the timeout: not yet
    worker._last_progress = clock.now()  # a chunk came
    clock.advance(2.0)
    assert proc.killed == 0
    clock.advance(0.5)
    assert proc.killed == 1 and worker.last_error == "hung: no progress for 2 s, killed"
    clock.advance(60.0)
    assert proc.killed == 1  # the watchdog has done its part; the supervisor restarts it


def test_an_idle_worker_is_never_hung_and_a_loading_one_is_after_the_load_timeout():
    clock = ManualClock()
    idle, loading = _Proc(), _Proc()
    _worker(clock, idle, "running")
    worker = _worker(clock, loading, "starting")
    clock.advance(29.5)
    assert (idle.killed, loading.killed) == (0, 0)
    clock.advance(1.0)
    assert (idle.killed, loading.killed) == (0, 1) and worker.last_error == "hung: not loaded after 30 s, killed"
    clock.advance(600.0)
    assert idle.killed == 0


def test_the_worker_wire_carries_typed_frames():
    frames = [
        Load("llm", {"llm_threads": 1}),
        Run(3, Answer([{"role": "user", "content": "hi"}], None, 20, 0.2, 7)),
        Run(4, Synthesize("Hello.")),
        Cancel(4),
        Done(3, Slice([1, 2], "Hi.", 1, True), 10.0, 10.5),
    ]
    stream = io.BytesIO(b"".join(encode(f) for f in frames))
    got = []
    while (frame := read_frame(stream)) is not None:
        got.append(frame)
    assert got == frames
    truncated = io.BytesIO(encode(Cancel(1))[:-1])
    assert read_frame(truncated) is None  # a process that died mid-frame
