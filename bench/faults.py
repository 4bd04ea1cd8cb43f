"""Every fault of the fault probe, with live calls: what the engine lost and how fast it recovered.

The engine runs in this process; the simulated PBX in its own process (so that its work does not
stall the engine's loop), with its fault knobs set over its /sim API. The call history's faults
each get an engine of their own (in this process, on their own history and Stasis app), kill -9
and the config reload an engine process (``aiagent-tui --no-ui``). For each fault: calls are live
before it, the fault is injected, then a new call must be answered; the table says

  fault | calls before | calls lost | records lost | /health degraded after | recovery | leftovers | note

"calls lost": calls that were live or placed during the fault and did not end the way their
caller ended them (setup failed, or the engine hung up; for a reload, also a call answered with
the wrong profile). "records lost": of the calls the scenario placed, those whose record is not
in the history, as ended, once the engine has stopped (after the fault was cleared where it can
be: the disk freed, the filesystem writable again, PostgreSQL back); "—" where the history is not
what is measured. "/health degraded after": from the fault to the first /health (over HTTP) that
says ``degraded`` with the history among its ``problems``. "recovery": from the end of the fault
(a history fault: from the fault itself, for those do not end) to the first new call that is
answered and bridged. "leftovers": channels and bridges of the engine's still in the PBX once
every call is over.

The history faults that need a filesystem of their own (full, read-only) mount a small tmpfs:
run as root. PostgreSQL is Debian's package, a throwaway cluster (pbxsim/postgres.py).

  .venv/bin/python bench/faults.py            # every fault (loads the local models once)
  .venv/bin/python bench/faults.py --only http,rtp
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Mapping, Sequence

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, scratch_media  # noqa: E402
from engine.config import AppConfig, load_config  # noqa: E402
from engine.engine import Engine, EngineStartError  # noqa: E402
from engine.history import CallRecord, HistoryDb  # noqa: E402
from pbxsim.postgres import PostgresCluster, PostgresNotFound  # noqa: E402
from providers.local.worker_stages import WorkerLlm  # noqa: E402
from providers.pipeline import PipelineProvider  # noqa: E402

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
THANKS = str(SOUNDS / "demo-thanks.wav")  # 5.5 s
HELLO = str(SOUNDS / "hello-world.wav")
AGENT_PASS = str(SOUNDS / "agent-pass.wav")
SHORT: list[dict[str, object]] = [{"say": HELLO}, {"pause": 0.5}]  # a call of 2 s

BAD_FRAMES = ["[1,2,3]", "null", "42", '"x"', "true", '{"type":[]}', "not json", '{"type": "StasisStart"}']
FAULT_HELD_S = 4.0  # how long a history fault that can be cleared lasts


@dataclass
class Row:
    fault: str
    before: int
    lost: int
    recovery_s: float | None
    leftovers: int
    note: str = ""
    records: tuple[int, int] | None = None  # (lost, of): None where the history is not measured
    degraded_s: float | None = None  # from the fault to /health degraded (history faults)
    degraded_measured: bool = False
    history_failed: bool = True  # a write failed: the history was failing (else "not failing")
    recovery_measured: bool = True


class LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1


SCRATCH: Path | None = None  # the run's directory: every engine's media, history and log; deleted at the end


def scratch(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))


def not_run(fault: str, why: str) -> Row:
    return Row(fault, 0, 0, None, 0, why, recovery_measured=False)


def engine_config(ari_port: int, **env: str) -> AppConfig:
    """An echo engine's config for the simulator on ``ari_port``; ``env`` as the environment."""
    base = {"ASTERISK_ARI_PORT": str(ari_port), "RTP_PORT": "0", "HEALTH_PORT": "0", "AIAGENT_PROVIDER": "echo",
            "AIAGENT_MEDIA_DIR": scratch_media(str(scratch("aiagent-bench-")))}
    cfg = load_config(None, env={**base, **env})
    cfg.asterisk.reconnect_initial_s = 0.05
    cfg.asterisk.reconnect_max_s = 0.5
    return cfg


@contextlib.contextmanager
def tmpfs(size_kb: int) -> Iterator[Path]:
    """A filesystem of its own (a tmpfs of ``size_kb``): to fill up, or to make read-only."""
    d = scratch("aiagent-bench-fs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(d)], check=True, capture_output=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
        d.rmdir()


def remount(d: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(d)], check=True, capture_output=True)


def fill(d: Path) -> Path:
    """Writes a file into ``d`` until its filesystem is full."""
    filler = d / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)
    return filler


def read_records(url: str, ids: Sequence[str]) -> tuple[dict[str, CallRecord], str]:
    """The records of ``ids`` in the history at ``url``, as the CLI reads them (ended calls only),
    and why none could be read ("" when the history could be read)."""
    db = HistoryDb(url)
    try:
        found = {i: r for i in ids if (r := db.get(i)) is not None and r.outcome != "live"}
        return found, ""
    except Exception as e:
        return {}, f"{e.__class__.__name__}: {str(e).splitlines()[0][:80]}"
    finally:
        db.close()


def history_errors(health: dict[str, Any]) -> tuple[int, str]:
    """The history's failed writes so far, and the last error, from /health (its ``history``; an
    engine without it counts them in the ``history`` component)."""
    h: dict[str, Any] = health.get("history") or next((c for c in health.get("components", []) if c.get("name") == "history"), {})
    return int(h.get("write_errors", h.get("errors")) or 0), str(h.get("last_error") or "")


class Bench:
    """Drives calls on the simulator for one engine: ``eng`` in this process, or an engine
    process (``proc``) whose calls are followed through the simulator and its /health."""

    def __init__(self, sim_url: str, eng: Engine | None, http: aiohttp.ClientSession | None = None, app: str = "aiagent",
                 proc: EngineProcess | None = None) -> None:
        self.sim = sim_url
        self.ari_port = int(sim_url.rsplit(":", 1)[1])
        self._eng = eng
        self.proc = proc
        self.http = http or aiohttp.ClientSession()
        self.app = app
        self.placed: list[str] = []
        self.pg: PostgresCluster | None = None
        self.databases = 0

    @property
    def eng(self) -> Engine:
        assert self._eng is not None, "an engine in this process"
        return self._eng

    async def post(self, path: str, data: dict) -> dict:
        async with self.http.post(self.sim + path, json=data) as r:
            return await r.json()

    async def get(self, path: str) -> dict:
        async with self.http.get(self.sim + path) as r:
            return await r.json()

    async def call(self, script: Sequence[Mapping[str, object]], number: str = "", dialled: str = "s") -> str:
        cid = (await self.post("/sim/calls", {"script": script, "caller_number": number, "app": self.app, "dialled": dialled}))["id"]
        self.placed.append(cid)
        return cid

    async def live_calls(self, n: int, seconds: float = 8.0) -> list[str]:
        script: list[dict[str, object]] = [{"say": THANKS}, {"pause": seconds}]
        ids = [await self.call(script, f"55500{i:02d}") for i in range(n)]
        if self._eng is None:
            await self.until_async(lambda: self.all_bridged(ids), 15)
        else:
            await self.until(lambda: sum(1 for s in self.eng.store if s.state.value == "streaming") >= n, 15)
        return ids

    async def all_bridged(self, ids: Sequence[str]) -> bool:
        return all([(await self.get(f"/sim/calls/{i}"))["bridged"] for i in ids])

    async def until(self, pred, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.02)
        return True

    async def until_async(self, pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while not await pred():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(interval)
        return True

    async def answered(self, cid: str, timeout: float) -> bool:
        if self._eng is None:
            return await self.until_async(lambda: self.all_bridged([cid]), timeout, 0.02)
        return await self.until(lambda: (s := self.eng.store.get(cid)) is not None and s.state.value == "streaming", timeout)

    async def recovery(self, since: float, timeout: float = 30.0) -> float | None:
        """Time from ``since`` until a new call is answered and bridged."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            cid = await self.call([{"say": HELLO}, {"pause": 0.3}])
            if await self.answered(cid, 5):
                return time.monotonic() - since
            await asyncio.sleep(0.1)
        return None

    async def outcome(self, ids: list[str], timeout: float = 40.0) -> tuple[int, int]:
        """(calls lost, leftovers) once every call of ``ids`` is over."""
        end = time.monotonic() + timeout
        reports = []
        while time.monotonic() < end:
            reports = [await self.get(f"/sim/calls/{i}") for i in ids]
            if all(r["done"] for r in reports) and (self._eng is None or len(self.eng.store) == 0):
                break
            await asyncio.sleep(0.2)
        lost = sum(1 for r in reports if not r["done"] or r["ended_by"] != "caller" or not r["bridged"])
        await asyncio.sleep(0.3)
        st = await self.get("/sim/state")
        return lost, len(st["leftover_channels"]) + len(st["leftover_bridges"])

    async def faults(self, **knobs) -> None:
        await self.post("/sim/faults", knobs)

    # ---- the engine's /health, as an operator's monitoring reads it
    @property
    def health_url(self) -> str:
        port = self.proc.health_port if self.proc is not None else self.eng.health_server.port
        return f"http://127.0.0.1:{port}/health"

    async def health(self) -> dict[str, Any]:
        try:
            async with self.http.get(self.health_url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                return await r.json()
        except (aiohttp.ClientError, TimeoutError):
            return {}

    async def degraded_after(self, t0: float, timeout: float = 15.0) -> float | None:
        """From ``t0`` to the first /health that is degraded with the history among its problems."""
        end = t0 + timeout
        while time.monotonic() < end:
            h = await self.health()
            if h.get("status") == "degraded" and any("histor" in p.lower() for p in h.get("problems", [])):
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None

    async def ok_after(self, t0: float, timeout: float = 15.0) -> float | None:
        """From ``t0`` (the fault being cleared) to the first /health with no history problem."""
        end = t0 + timeout
        while time.monotonic() < end:
            h = await self.health()
            if h and not any("histor" in p.lower() for p in h.get("problems", [])):
                return time.monotonic() - t0
            await asyncio.sleep(0.05)
        return None

    async def cleared_after(self, held_s: float, clear: Callable[[], Any], watch: asyncio.Task[float | None], note: list[str]) -> None:
        """Clears the fault after ``held_s``; notes how soon /health said so (if it had said it)."""
        await asyncio.sleep(held_s)
        t = time.monotonic()  # from the start of clearing: PostgreSQL answers before pg_ctl returns
        await asyncio.to_thread(clear)
        if watch.done() and watch.result() is not None:
            ok = await self.ok_after(t)
            note.append(f"history problem gone from /health {ok:.2f} s after the clearing began" if ok is not None
                        else "/health still shows the history problem 15 s after the clearing began")

    # ---- engines of their own
    @contextlib.asynccontextmanager
    async def engine_for(self, app: str, **env: str) -> AsyncIterator[Bench]:
        """An echo engine in this process for app ``app`` (its own history, as ``env`` says), and a
        Bench placing calls to it; stopped on exit unless the scenario stopped it."""
        eng = Engine(engine_config(self.ari_port, ARI_APP=app, **env))
        await eng.start()
        try:
            assert await eng.wait_ari_connected(10)
            yield Bench(self.sim, eng, self.http, app)
        finally:
            await eng.stop()

    def postgres_database(self) -> str:
        """A new database on the bench's PostgreSQL (started the first time)."""
        if self.pg is None:
            self.pg = PostgresCluster()
            self.pg.start()
        self.databases += 1
        return self.pg.create_database(f"bench{self.databases}")

    async def history_row(self, fault: str, b: Bench, url: str, before: int, watch: asyncio.Task[float | None] | None,
                          rec: float | None, note: list[str]) -> Row:
        """The row of a history fault, once every call of ``b`` is over and its engine stopped."""
        lost, left = await b.outcome(b.placed)
        errors, last_error = history_errors(await b.health())
        if errors:
            note.append(f"failed writes {errors} (last: {last_error[:90]})")
        degraded = None
        if watch is not None:
            if watch.done():
                degraded = watch.result()
            else:
                watch.cancel()
        await b.eng.stop()
        ids = list(b.placed)
        found, unreadable = await asyncio.to_thread(read_records, url, ids)
        if unreadable:
            note.append(f"history unreadable afterwards: {unreadable}")
        return Row(fault, before, lost, rec, left, "; ".join(note), records=(len(ids) - len(found), len(ids)),
                   degraded_s=degraded, degraded_measured=watch is not None, history_failed=errors > 0)

    # ---- the faults
    async def bad_frames(self) -> Row:
        ids = await self.live_calls(3)
        t0 = time.monotonic()
        for _ in range(1000):
            await self.post("/sim/events/raw", {"frames": BAD_FRAMES})
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        return Row(f"bad ARI frames ({1000 * len(BAD_FRAMES)})", 3, lost, rec, left,
                   f"{self.eng.events.malformed_events} skipped in {time.monotonic() - t0:.1f} s, events task restarts 0")

    async def bad_replies(self) -> Row:
        eng = self.eng
        eng.config.rtp.max_calls = 3
        ids = await self.live_calls(3, seconds=1.0)
        body = {"status": 200, "body": "<html>bad gateway</html>", "count": 100}
        await self.faults(bad_replies={"bridges.destroy": body, "channels.hangup": body, "bridges.addChannel": body})
        refused, failed = eng.store.calls_rejected_over_capacity, eng.store.calls_failed
        for _ in range(3):  # while the 3 slots are taken: turned away
            await self.call(SHORT)
        # The live calls' teardowns get the bad replies: their slots must be freed all the same.
        freed = await self.until(lambda: len(eng.store) == 0 and eng.store.calls_rejected_over_capacity - refused >= 3, 30)
        more = [await self.call(SHORT) for _ in range(3)]  # in the freed slots, the bad replies still on
        more_lost, _ = await self.outcome(more)
        freed &= len(eng.store) == 0
        await self.faults()
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        eng.config.rtp.max_calls = 40
        return Row("non-JSON 2xx replies (max_calls=3)", 3, lost, rec, left,
                   f"{eng.store.calls_rejected_over_capacity - refused} calls turned away while the 3 slots were taken; of 3 placed "
                   f"once they were free, {3 - more_lost} ended by their caller, {eng.store.calls_failed - failed} failed their setup; "
                   + ("every slot freed" if freed else "slots NOT freed within 30 s"))

    async def ws_blips(self) -> Row:
        await self.faults(drop_ws_after={"channels.externalMedia": {"block_s": 0.2}})
        ids = []
        for _ in range(40):
            # As on Asterisk, a call dialled while no socket is registered is refused by the PBX
            # itself: dial once the app is back (that is what the engine controls).
            for _ in range(100):
                if "aiagent" in (await self.get("/sim/state"))["apps"]:
                    break
                await asyncio.sleep(0.05)
            ids.append(await self.call([{"say": HELLO}, {"pause": 0.5}]))
            await asyncio.sleep(0.3)
        await self.faults()
        rec = await self.recovery(time.monotonic())
        failed_before = self.eng.store.calls_failed
        lost, left = await self.outcome(ids)
        return Row("WebSocket drop at each ExternalMedia (40 calls)", 0, lost, rec, left,
                   f"setups failed {failed_before}, reconnects {self.eng.events.connects - 1}")

    async def http_burst(self) -> Row:
        self.eng.config.playback.downstream_mode = "stream"
        ids = await self.live_calls(10, seconds=6.0)
        await asyncio.sleep(1.0)  # agent audio (the echo) flowing on every call
        timings = self.eng.rtp.timings
        timings.pacing_error.clear()
        await asyncio.sleep(1.0)
        quiet = timings.pacing_error.values()
        timings.pacing_error.clear()
        underruns = sum(s.rtp_out.underruns for s in self.eng.store)
        ctx = mp.get_context("spawn")
        statuses: dict[str, int] = {}
        during_parts = []
        burst_s = 0.0
        for _ in range(3):  # three bursts, pooled: one is too few ticks for a steady p99
            q = ctx.Queue()
            proc = ctx.Process(target=_burst, args=(f"http://127.0.0.1:{self.eng.health_server.port}/health", 1000, q))
            proc.start()
            await asyncio.sleep(0.3)  # the client process starting up
            timings.pacing_error.clear()
            t0 = time.monotonic()
            while proc.is_alive():
                await asyncio.sleep(0.05)
            burst_s += time.monotonic() - t0
            during_parts.append(timings.pacing_error.values())
            for k, v in q.get().items():
                statuses[k] = statuses.get(k, 0) + v
        during = np.concatenate(during_parts)
        underruns = sum(s.rtp_out.underruns for s in self.eng.store) - underruns
        problems = (await self.health()).get("problems") or []
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        self.eng.config.playback.downstream_mode = "file"
        return Row("1,000 concurrent /health requests, 3 times", 10, lost, rec, left,
                   f"pacing p99 {np.percentile(quiet, 99) * 1000:.1f} ms quiet, {np.percentile(during, 99) * 1000:.1f} ms "
                   f"during the bursts ({burst_s:.1f} s, {len(during)} frames, max {during.max() * 1000:.1f} ms); "
                   f"underruns {underruns}; answers {statuses}" + (f" (degraded: {'; '.join(problems)[:100]})" if problems else ""))

    async def rtp_forged(self) -> Row:
        ids = await self.live_calls(3)
        await asyncio.sleep(0.5)
        for i in ids:
            await self.post(f"/sim/calls/{i}/forge", {"seq_ahead": 90})
        late = sum(s.rtp_in_late for s in self.eng.store)
        await asyncio.sleep(2.5)
        late = sum(s.rtp_in_late for s in self.eng.store) - late
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        return Row("forged RTP packet, sequence +90", 3, lost, rec, left,
                   f"genuine packets dropped as late: {late}; held on probation {self.eng.rtp.counters.probation}")

    async def rtp_flood(self) -> Row:
        ids = await self.live_calls(3)
        import socket

        before = self.eng.rtp.kernel_drops() or 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            pkt = bytes([0x80, 0]) + bytes(10) + b"\xff" * 160
            end = time.monotonic() + 2.0
            n = 0
            while time.monotonic() < end:
                for _ in range(200):
                    s.sendto(pkt, ("127.0.0.1", self.eng.rtp.port))
                n += 200
                await asyncio.sleep(0)
        await asyncio.sleep(1.2)
        drops = (self.eng.rtp.kernel_drops() or 0) - before
        sessions = [self.eng.store.get(i) for i in ids]
        expected = sum(x.rtp_in.expected for x in sessions if x)
        lost_pkts = sum(x.rtp_in.lost for x in sessions if x)
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids)
        return Row("junk RTP flood (2 s)", 3, lost, rec, left, f"{n} junk datagrams sent; kernel drops shown in /health: {drops}; "
                   f"genuine packets lost meanwhile {lost_pkts} of {expected}")

    async def deepgram_down(self) -> Row:
        """Deepgram unreachable (its URL is a port nobody listens on), the local provider as fallback."""
        eng = self.eng
        os.environ["DEEPGRAM_API_KEY"] = "bench-key"
        eng.config.providers.deepgram.agent_url = f"ws://127.0.0.1:{free_port()}"
        eng.config.providers.fallback = "local"
        await eng.get_provider("local")
        await eng.set_default_provider("deepgram")
        greet = [{"wait_agent": 0.5, "timeout_s": 10}, {"pause": 0.3}]
        first = await self.call(greet)
        await self.until(lambda: not eng.providers["deepgram"].readiness().ready, 10)
        second = await self.call(greet)
        lost, left = await self.outcome([first, second])
        heard = [(await self.get(f"/sim/calls/{i}"))["first_agent_audio_s"] for i in (first, second)]
        fmt = ["never" if h is None else f"{h:.2f} s" for h in heard]
        rec = await self.recovery(time.monotonic())
        eng.default_provider = "echo"
        eng.config.providers.fallback = ""
        return Row("Deepgram unreachable (fallback: local)", 0, lost, rec, left,
                   f"dialling to the fallback's greeting: first call {fmt[0]}, next call {fmt[1]} (circuit open)")

    async def model_worker_kill(self) -> Row:
        eng = self.eng
        if "local" not in eng.providers:
            await eng.get_provider("local")
        await eng.set_default_provider("local")
        local = eng.providers["local"]
        assert isinstance(local, PipelineProvider) and local.models is not None and isinstance(local.models.llm, WorkerLlm)
        llm = local.models.llm.worker
        turns_failed = eng.summary().turns_failed
        ids = [await self.call([{"wait_agent_done": 0.4}, {"say": AGENT_PASS}, {"wait_agent": 0.3, "timeout_s": 30},
                                {"wait_agent_done": 0.8, "timeout_s": 30}, {"say": HELLO}, {"wait_agent": 0.3, "timeout_s": 30},
                                {"wait_agent_done": 0.8, "timeout_s": 30}])]
        await self.until(lambda: llm.depth == 1, 30)
        assert llm.pid is not None
        os.kill(llm.pid, signal.SIGKILL)
        t0 = time.monotonic()
        await self.until(lambda: llm.state == "running" and llm.restarts == 1, 60)
        restart_s = time.monotonic() - t0
        rec = await self.recovery(time.monotonic())
        lost, left = await self.outcome(ids, 90)
        await eng.set_default_provider("echo")
        return Row("LLM worker SIGKILL mid-answer", 1, lost, rec, left,
                   f"worker back in {restart_s:.1f} s; turns answered with the apology: {eng.summary().turns_failed - turns_failed}")

    # ---- a provider that fails while calls are being set up
    async def provider_burst(self) -> Row:
        """Deepgram unreachable (a port nobody listens on) but not known to be yet, the echo provider
        as its fallback, 10 calls at once: the circuit opens while their setups are under way."""
        eng = self.eng
        os.environ["DEEPGRAM_API_KEY"] = "bench-key"
        if "deepgram" in eng.providers:  # a fresh one: its circuit closed, it looks ready
            await eng.providers.pop("deepgram").close()
        eng.config.providers.deepgram.agent_url = f"ws://127.0.0.1:{free_port()}"
        eng.config.providers.fallback = "echo"
        await eng.set_default_provider("deepgram")
        failed = eng.store.calls_failed
        ids = list(await asyncio.gather(*(self.call(SHORT, f"55502{i:02d}") for i in range(10))))
        lost, left = await self.outcome(ids)
        heard = sum([1 for i in ids if (await self.get(f"/sim/calls/{i}"))["first_agent_audio_s"] is not None])
        t0 = time.monotonic()
        rec = await self.recovery(t0)
        eng.default_provider = "echo"
        eng.config.providers.fallback = ""
        return Row("Deepgram down during a burst of 10 calls (fallback: echo)", 0, lost, rec, left,
                   f"{heard} of 10 callers heard the agent; setups failed {eng.store.calls_failed - failed}")

    # ---- the call history
    async def _history_fault(self, fault: str, app: str, url: str, env: Mapping[str, str], inject: Callable[[], Any],
                             clear: Callable[[], Any] | None, note: list[str]) -> Row:
        """3 calls live, the fault, 3 more calls and one to time the answer; the fault cleared after
        FAULT_HELD_S (when it can be)."""
        async with self.engine_for(app, **env) as b:
            before = await b.live_calls(3)
            # Their live records are in the history before the fault: it has something to lose.
            await b.until_async(lambda: asyncio.to_thread(records_in, url, before), 5, 0.2)
            await asyncio.to_thread(inject)
            t0 = time.monotonic()
            watch = asyncio.create_task(b.degraded_after(t0))
            rec = await b.recovery(t0)
            for i in range(3):
                await b.call(SHORT, f"55504{i:02d}")
            if clear is not None:
                await b.cleared_after(FAULT_HELD_S, clear, watch, note)
            return await self.history_row(fault, b, url, 3, watch, rec, note)

    async def _not_started(self, fault: str, app: str, e: Exception) -> Row:
        """The engine did not start: the calls placed meanwhile are refused by the PBX."""
        b = Bench(self.sim, None, self.http, app)
        ids = [await b.call(SHORT) for _ in range(3)]
        lost, left = await b.outcome(ids)
        return Row(fault, 0, lost, None, left, f"the engine did not start: {str(e).splitlines()[0][:160]}", records=(3, 3), degraded_measured=True)

    async def _history_at_start(self, fault: str, app: str, url: str, env: Mapping[str, str], clear: Callable[[], Any] | None,
                                note: list[str]) -> Row:
        """The engine starts on a history that is already failing; 3 calls and one to time the answer
        (its recovery and /health are timed from the engine's start)."""
        note.append("timed from the engine's start")
        t0 = time.monotonic()
        try:
            async with self.engine_for(app, **env) as b:
                watch = asyncio.create_task(b.degraded_after(t0))
                rec = await b.recovery(t0)
                for i in range(3):
                    await b.call(SHORT, f"55505{i:02d}")
                if clear is not None:
                    await b.cleared_after(FAULT_HELD_S, clear, watch, note)
                return await self.history_row(fault, b, url, 0, watch, rec, note)
        except EngineStartError as e:
            return await self._not_started(fault, app, e)

    async def history_deleted(self) -> Row:
        d = scratch("aiagent-bench-hist-")
        path = d / "history.sqlite3"

        def delete() -> None:  # a careless cleanup: rm history.sqlite3*
            for p in d.glob("history.sqlite3*"):
                p.unlink()

        return await self._history_fault("history file deleted (rm history.sqlite3*)", "aiagent-deleted", f"sqlite:///{path}",
                                         {"AIAGENT_HISTORY_PATH": str(path)}, delete, None, ["records read from the path afterwards"])

    async def history_corrupt(self) -> Row:
        d = scratch("aiagent-bench-hist-")
        path = d / "history.sqlite3"
        url = f"sqlite:///{path}"
        db = HistoryDb(url)
        db.create()
        db.close()
        with path.open("r+b") as f:
            f.write(b"\xa5" * 100)  # the 100-byte header: "SQLite format 3", page size, ...
        return await self._history_at_start("history file's header corrupt, at start", "aiagent-corrupt", url,
                                            {"AIAGENT_HISTORY_PATH": str(path)}, None, [])

    async def history_pages_corrupt(self) -> Row:
        d = scratch("aiagent-bench-hist-")
        path = d / "history.sqlite3"

        def corrupt() -> None:  # every page after the header's: the tables' and indexes' pages
            con = sqlite3.connect(path)
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the calls so far into the file itself
            con.close()
            page = int.from_bytes(path.read_bytes()[16:18], "big")
            with path.open("r+b") as f:
                f.seek(page)
                f.write(b"\xa5" * (path.stat().st_size - page))

        return await self._history_fault("history file's pages overwritten while running", "aiagent-pages", f"sqlite:///{path}",
                                         {"AIAGENT_HISTORY_PATH": str(path)}, corrupt, None, [])

    async def history_full(self) -> Row:
        try:
            mount = tmpfs(2048)
            d = mount.__enter__()
        except (OSError, subprocess.CalledProcessError) as e:
            return not_run("history's disk full", f"not run: a tmpfs mount needs root ({e})")
        try:
            path = d / "history.sqlite3"
            filler: list[Path] = []
            return await self._history_fault("history's disk full (tmpfs), freed after 4 s", "aiagent-full", f"sqlite:///{path}",
                                             {"AIAGENT_HISTORY_PATH": str(path)}, lambda: filler.append(fill(d)),
                                             lambda: filler[0].unlink(), [])
        finally:
            mount.__exit__(None, None, None)

    async def history_readonly(self) -> Row:
        # A filesystem with the history open for writing cannot be remounted read-only: it is
        # read-only from the engine's start, and made writable again after FAULT_HELD_S.
        try:
            mount = tmpfs(4096)
            d = mount.__enter__()
        except (OSError, subprocess.CalledProcessError) as e:
            return not_run("history read-only", f"not run: a tmpfs mount needs root ({e})")
        try:
            path = d / "history.sqlite3"
            url = f"sqlite:///{path}"
            db = HistoryDb(url)
            db.create()
            db.close()
            remount(d, "ro")
            return await self._history_at_start("history read-only at start, writable after 4 s", "aiagent-readonly", url,
                                                {"AIAGENT_HISTORY_PATH": str(path)}, lambda: remount(d, "rw"), [])
        finally:
            mount.__exit__(None, None, None)

    async def postgres_stopped(self) -> Row:
        try:
            url = await asyncio.to_thread(self.postgres_database)
        except PostgresNotFound as e:
            return not_run("PostgreSQL stopped", f"not run: {e}")
        pg = self.pg
        assert pg is not None
        return await self._history_fault("PostgreSQL stopped, started after 4 s", "aiagent-pgstop", url, {"AIAGENT_HISTORY_URL": url},
                                         pg.stop, pg.start, [])

    async def postgres_hung(self) -> Row:
        try:
            url = await asyncio.to_thread(self.postgres_database)
        except PostgresNotFound as e:
            return not_run("PostgreSQL hung", f"not run: {e}")
        pg = self.pg
        assert pg is not None
        row = await self._history_fault("PostgreSQL hung (SIGSTOP), resumed after 4 s", "aiagent-pghung", url, {"AIAGENT_HISTORY_URL": url},
                                        pg.pause, pg.resume, [])
        # Stopping (SIGTERM) while it hangs, with a call up: how long it takes.
        url = await asyncio.to_thread(self.postgres_database)
        async with self.engine_for("aiagent-pghung2", AIAGENT_HISTORY_URL=url) as b:
            await b.live_calls(1)
            pg.pause()
            t0 = time.monotonic()
            stop = asyncio.create_task(b.eng.stop())
            done, _ = await asyncio.wait({stop}, timeout=30)
            stop_s = time.monotonic() - t0
            pg.resume()
            await stop
        row.note += "; " + (f"the engine stopped in {stop_s:.1f} s while it hung" if done else "the engine's stop did not end in 30 s while it hung")
        return row

    async def _caller_id(self, fault: str, app: str, url: str, env: Mapping[str, str], number: str) -> Row:
        async with self.engine_for(app, **env) as b:
            for i in range(2):
                await b.call(SHORT, f"55506{i:02d}")
            t0 = time.monotonic()
            watch = asyncio.create_task(b.degraded_after(t0))
            odd = await b.call(SHORT, number)
            for i in range(2):
                await b.call(SHORT, f"55507{i:02d}")
            rec = await b.recovery(t0)
            await b.outcome(b.placed)
            await asyncio.sleep(2.5)  # two history writes after the last call ended
            row = await self.history_row(fault, b, url, 0, watch, rec, [])
        found, _ = await asyncio.to_thread(read_records, url, [odd])
        if odd in found:
            number = found[odd].caller_number
            shown = f"{repr(number)[:32]}{'…' if len(repr(number)) > 32 else ''} ({len(number)} characters)"
        else:
            shown = "no record"
        row.note = f"its caller ID in the history: {shown}" + ("; " + row.note if row.note else "")
        return row

    async def postgres_caller_id(self) -> Row:
        try:
            url = await asyncio.to_thread(self.postgres_database)
        except PostgresNotFound as e:
            return not_run("an 80-character caller ID, PostgreSQL", f"not run: {e}")
        return await self._caller_id("an 80-character caller ID, PostgreSQL history", "aiagent-pgcid", url, {"AIAGENT_HISTORY_URL": url}, "1" * 80)

    async def sqlite_caller_id(self) -> Row:
        path = scratch("aiagent-bench-hist-") / "history.sqlite3"
        return await self._caller_id("a caller ID with \\udcff, ESC and a newline, SQLite", "aiagent-sqlcid", f"sqlite:///{path}",
                                     {"AIAGENT_HISTORY_PATH": str(path)}, "555\udcff\x1b[2J\nERROR forged log line")

    # ---- the operator
    async def _engine_process(self, app: str, config: str = '[logging]\nlevel = "INFO"\n') -> tuple[EngineProcess, Bench]:
        ep = EngineProcess(self.ari_port, app, scratch("aiagent-bench-engine-"), config)
        b = Bench(self.sim, None, self.http, app, proc=ep)
        await ep.start_and_wait(b)
        return ep, b

    async def kill_restart(self) -> Row:
        """kill -9 of an engine with 3 calls up, started again at once (as systemd's Restart= does)."""
        ep, b = await self._engine_process("aiagent-kill")
        try:
            ids = await b.live_calls(3, seconds=9.0)
            await b.until_async(lambda: asyncio.to_thread(records_in, ep.history_url, ids), 5, 0.2)
            first = await asyncio.to_thread(read_any, ep.history_url, ids)
            ext = {i: (await self.get(f"/sim/calls/{i}"))["external_media_channel"] for i in ids}
            ep.proc_kill()
            t0 = time.monotonic()
            await ep.start_and_wait(b)
            up_s = time.monotonic() - t0

            async def adopted() -> bool:
                return all([(r := await self.get(f"/sim/calls/{i}"))["external_media_channel"] != ext[i] and r["bridged"] for i in ids])

            adopt_s = time.monotonic() - t0 if await b.until_async(adopted, 15, 0.1) else None
            rec = await b.recovery(t0)
            lost, left = await b.outcome(ids)
            not_adopted = sum([1 for i in ids if (await self.get(f"/sim/calls/{i}"))["external_media_channel"] == ext[i]])
        finally:
            await ep.stop()
        found, _ = await asyncio.to_thread(read_records, ep.history_url, ids)
        # Kept: the record still starts when the call did, and says where the engine was gone.
        kept = [i for i in ids if i in found and abs(found[i].started_at - first[i].started_at) < 0.5 and found[i].interruptions]
        outcomes = sorted({found[i].outcome for i in found})
        adopt = f"{adopt_s:.2f} s" if adopt_s is not None else "never"
        note = (f"engine answering again {up_s:.1f} s after the kill, its 3 callers adopted at {adopt}"
                f" ({not_adopted} not); records kept from the call's start, the interruption marked: {len(kept)} of 3, outcomes {', '.join(outcomes) or 'none'}")
        return Row("kill -9 of the engine, restarted at once", 3, lost + not_adopted, rec, left, note + ep.log_note(),
                   records=(3 - len(kept), 3))

    async def empty_reload(self) -> Row:
        """A config with a profile for number 700; the file emptied, then moved away, each followed by
        SIGHUP (systemctl reload) and a call to 700. A call that does not get its profile is lost."""
        config = '[logging]\nlevel = "INFO"\n\n[profiles.sales]\nmatch = ["700"]\ngreeting = "Sales, hello."\n'
        ep, b = await self._engine_process("aiagent-reload", config)
        results: list[str] = []
        wrong = 0
        try:
            async def call_700() -> str:
                cid = await b.call(SHORT, dialled="700")
                await b.outcome([cid])
                await b.until_async(lambda: asyncio.to_thread(records_in, ep.history_url, [cid], True), 5, 0.2)
                rec = (await asyncio.to_thread(read_any, ep.history_url, [cid])).get(cid)
                return rec.profile if rec is not None else "no record"

            profile = await call_700()
            for what, act in (("emptied", lambda: ep.config.write_text("")), ("moved away", lambda: ep.config.rename(ep.config.with_suffix(".moved")))):
                act()
                last = (await b.health()).get("last_reload")
                ep.proc_signal(signal.SIGHUP)
                await b.until_async(functools.partial(_changed, b, last), 10, 0.1)
                reload = (await b.health()).get("last_reload") or {}
                profile = await call_700()
                wrong += profile != "sales"
                refused = str(reload.get("refused") or "").replace(f"{ep.config}: ", "")  # the run's temporary path
                said = f"refused ({refused[:60]})" if refused else f"applied {len(reload.get('applied', []))} setting(s)"
                results.append(f"{what}: reload {said}; next call's profile {profile}")
                if what == "emptied":  # back to the good file before the next fault
                    last = (await b.health()).get("last_reload")
                    ep.config.write_text(config)
                    ep.proc_signal(signal.SIGHUP)
                    await b.until_async(functools.partial(_changed, b, last), 10, 0.1)
            lost, left = await b.outcome(b.placed)
        finally:
            await ep.stop()
        return Row("config file emptied, then moved away; SIGHUP each time", 0, lost + wrong, None, left,
                   "; ".join(results) + ep.log_note(), recovery_measured=False)



def records_in(url: str, ids: Sequence[str], ended: bool = False) -> bool:
    """Every call of ``ids`` has a record in the history (``ended``: written as ended)."""
    found = read_any(url, ids)
    return len(found) == len(ids) and (not ended or all(r.outcome != "live" for r in found.values()))


def read_any(url: str, ids: Sequence[str]) -> dict[str, CallRecord]:
    db = HistoryDb(url)
    try:
        return {i: r for i in ids if (r := db.get(i)) is not None}
    except Exception:
        return {}
    finally:
        db.close()


async def _changed(b: Bench, last: object) -> bool:
    return (await b.health()).get("last_reload") != last


class EngineProcess:
    """``aiagent-tui --no-ui`` in a process of its own (echo provider) against the simulator, with
    its config file, history (beside its media directory) and log in ``work``."""

    def __init__(self, ari_port: int, app: str, work: Path, config: str) -> None:
        self.work = work
        self.config = work / "config.toml"
        self.config.write_text(config)
        (work / "media").mkdir()
        self.health_port = free_port()
        self.history_url = f"sqlite:///{work / 'history.sqlite3'}"
        self.env = {**os.environ, "ASTERISK_ARI_PORT": str(ari_port), "ARI_APP": app, "RTP_PORT": "0", "HEALTH_PORT": str(self.health_port),
                    "AIAGENT_PROVIDER": "echo", "AIAGENT_MEDIA_DIR": str(work / "media"), "AIAGENT_CONSOLE_SOCKET": str(work / "console.sock"),
                    "PYTHONPATH": str(ROOT)}  # this tree's code, whichever the venv installed
        self.log = work / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "aiagent_tui.cli", "--no-ui", "--config", str(self.config)],
                                         cwd=self.work, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

    async def start_and_wait(self, b: Bench, timeout: float = 60.0) -> None:
        """Started, and again when it exits before it is connected (as systemd's Restart= does),
        until its /health says it is connected to ARI."""
        self._start()
        end = time.monotonic() + timeout
        while not (await b.health()).get("ari_connected"):
            assert self.proc is not None
            if self.proc.poll() is not None:
                await asyncio.sleep(0.5)
                self._start()
            if time.monotonic() > end:
                raise RuntimeError(f"the engine process did not connect in {timeout:.0f} s: {self.log.read_text()[-1500:]}")
            await asyncio.sleep(0.05)

    def proc_kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def proc_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 60)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def log_note(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        warned = sum(1 for line in lines if any(f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL")))
        again = f"; started {self.starts} times" if self.starts > 2 else ""
        return f"{again}; {warned} warning lines logged"



def _burst(url: str, n: int, q) -> None:
    """``n`` concurrent GETs of /health; the answers counted by HTTP status and the body's status
    (a 503 is a degraded engine's answer, or "busy": too many requests in flight)."""
    async def main() -> dict[str, int]:
        out: dict[str, int] = {}
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
            async def one() -> None:
                try:
                    async with s.get(url) as r:
                        body = await r.json(content_type=None)
                        key = f"{r.status} {body.get('status')}"
                except Exception:
                    key = "no answer"
                out[key] = out.get(key, 0) + 1

            await asyncio.gather(*(one() for _ in range(n)))
        return out

    q.put(asyncio.run(main()))


SCENARIOS = {
    "frames": Bench.bad_frames, "replies": Bench.bad_replies, "blips": Bench.ws_blips, "http": Bench.http_burst,
    "rtp": Bench.rtp_forged, "flood": Bench.rtp_flood, "deepgram": Bench.deepgram_down, "worker": Bench.model_worker_kill,
    "burst": Bench.provider_burst,
    "deleted": Bench.history_deleted, "corrupt": Bench.history_corrupt, "pages": Bench.history_pages_corrupt,
    "full": Bench.history_full,
    "readonly": Bench.history_readonly, "pgstop": Bench.postgres_stopped, "pghang": Bench.postgres_hung,
    "pgcallerid": Bench.postgres_caller_id, "callerid": Bench.sqlite_caller_id,
    "kill9": Bench.kill_restart, "reload": Bench.empty_reload,
}


async def main_async(only: list[str]) -> None:
    global SCRATCH
    SCRATCH = Path(tempfile.mkdtemp(prefix="aiagent-bench-faults-"))
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "pbxsim.cli", "serve", "--port", str(port)], cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    eng = Engine(engine_config(port))
    counter = LogCounter()
    logging.getLogger().addHandler(counter)
    rows: list[Row] = []
    b: Bench | None = None
    try:
        await asyncio.sleep(0.8)
        await eng.start()
        assert await eng.wait_ari_connected(10)
        b = Bench(f"http://127.0.0.1:{port}", eng)
        for name in only:
            logged = counter.n
            row = await SCENARIOS[name](b)
            if "warning lines logged" not in row.note:  # an engine process counts its own
                row.note = "; ".join(p for p in (row.note, f"{counter.n - logged} warning lines logged") if p)
            rows.append(row)
            print(f"  {row.fault}: done", flush=True)
    finally:
        if b is not None:
            await b.http.close()
            if b.pg is not None:
                b.pg.close()
        await eng.stop()
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print()
    print(table(rows))


def table(rows: Sequence[Row]) -> str:
    out = ["| fault | calls before | calls lost | records lost | /health degraded after | recovery | leftovers | note |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        rec = f"{r.recovery_s:.2f} s" if r.recovery_s is not None else "never" if r.recovery_measured else "—"
        records = f"{r.records[0]} of {r.records[1]}" if r.records is not None else "—"
        if r.degraded_s is not None:
            degraded = f"{r.degraded_s:.2f} s"
        else:
            degraded = ("never" if r.history_failed else "not failing") if r.degraded_measured else "—"
        note = " ".join(r.note.split()).replace("|", "/")  # an error's text: one line, no cell breaks
        out.append(f"| {r.fault} | {r.before} | {r.lost} | {records} | {degraded} | {rec} | {r.leftovers} | {note} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated, of: {', '.join(SCENARIOS)}")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.ERROR)  # warnings are counted, not printed
    asyncio.run(main_async([s for s in args.only.split(",") if s]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
