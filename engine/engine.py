"""The Engine: everything that answers calls, in one object that runs inside any asyncio loop.

The headless service (``aiagent-tui --no-ui``) and the terminal app run this same object (started
by aiagent_tui/runtime.py); they read its state through ``store`` (events and snapshots),
``summary()`` and ``status()`` (engine/status.py), and steer it with its command methods
(engine/api.py names what a front end may use).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections import Counter
from typing import Any

from engine.ari.client import AriClient
from engine.ari.events import AriEventStream
from engine.api import AudioTap, BringIn
from engine.call import Call
from engine.calls import CallController
from engine.capacity import ModelCapacity
from engine.config import AppConfig, ConfigError, plan_reload
from engine.health import HealthServer
from engine.history import HistoryDb, HistoryRecorder, database_url
from engine.metrics import EngineMetrics
from engine.recording import Recordings, recordings_dir
from engine.audiosocket import AudioSocketTransport
from engine.pacer import Outbound
from engine.rtp_server import RtpServer
from engine.transports import RtpTransport, Transports
from engine.ws_media import WebSocketTransport
from runtime.clock import LoopClock
from engine.sessions import SessionStore
from engine.status import (
    AriCounters,
    CallAggregates,
    EngineStatus,
    EngineSummary,
    ModelQueue,
    ReloadResult,
    RtpCounters,
)
from engine.supervisor import Supervisor
from providers.base import ActionRequest, ComponentStatus, Provider, Readiness
from providers.pipeline import StagePool
from providers.registry import build_provider

log = logging.getLogger(__name__)


class EngineStartError(Exception):
    """The engine cannot start; the message says what to fix."""


class ProviderNotReady(Exception):
    """An operator chose a provider that cannot take calls now."""


class Engine:
    def __init__(self, config: AppConfig) -> None:
        self.config = config
        self.store = SessionStore()
        self.supervisor = Supervisor(self._fatal)
        self.fatal_error: str | None = None  # set when a component keeps failing: the process must exit
        self.fatal_exit_code = 1
        self.fatal = asyncio.Event()
        self.rtp = RtpServer(
            config.rtp.host, config.rtp.port, on_error=self.supervisor.report, receive_buffer_bytes=config.rtp.receive_buffer_bytes,
        )
        clock = LoopClock()
        self.outbound = Outbound(clock, timings=self.rtp.timings, on_error=self.supervisor.report)
        self.transports = Transports([
            RtpTransport(config, self.rtp), AudioSocketTransport(config, clock), WebSocketTransport(config, clock),
        ])
        self.ari = AriClient(config.asterisk)
        self.providers: dict[str, Provider] = {}
        self.default_provider = config.providers.default
        self.metrics = EngineMetrics(lambda: self.status(detail=False))
        self.stages = StagePool(config.providers, self.metrics.model_wait)  # the model stages the pipelines share
        h = config.history
        self.recordings = Recordings(recordings_dir(config), h.retention_days, h.max_calls, self.supervisor.report)
        self.calls = CallController(
            config=config, ari=self.ari, store=self.store, transports=self.transports, outbound=self.outbound, clock=clock, provider_for_new_call=self.provider_for_new_call,
            get_provider=self.get_provider, observe_turn=self.metrics.observe_turn, ready_for_calls=self.takes_new_calls,
            recordings=self.recordings, model_capacity=lambda: self.capacity.estimate(),
        )
        local = config.providers.local
        # How many calls this machine's models serve at once: new calls beyond it are turned away.
        self.capacity = ModelCapacity(
            self.calls.services.clock, self.stages.model_busy_s, self.calls.model_calls,
            {"stt": local.stt_threads, "llm": local.llm_threads, "tts": local.tts_threads}, override=local.max_active_calls,
        )
        self.events = AriEventStream(
            self.ari, config.asterisk.app, self.calls.on_event, self.calls.reconcile, on_refused=lambda why: self._fatal(why, config_error=True),
        )
        self.health_server = HealthServer(self.status, self.metrics.render, config.health.host, config.health.port)
        self.history = HistoryRecorder(
            self.store, HistoryDb(database_url(config)), h.engine_name or f"{socket.gethostname()}:{config.asterisk.app}",
            h.retention_days, h.max_calls, kernel_drops=self.rtp.kernel_drops,
        ) if h.enabled else None
        if self.history is not None:
            self.calls.refusals.record = self.history.call_refused  # "who was turned away at 09:00"
        self._provider_locks: dict[str, asyncio.Lock] = {}
        self._load_errors: dict[str, str] = {}  # a provider that could not load -> why (in /health, not "not loaded")
        self.asterisk_version: str | None = None
        self.last_reload: ReloadResult | None = None
        self.started = False

    # ---- lifecycle
    async def start(self) -> None:
        """Bind sockets, load the default provider, connect to ARI. Fails fast on what an operator
        must fix (a port in use, a provider that cannot load); a missing Asterisk is not fatal:
        the event stream keeps retrying with backoff."""
        _check_media_dir(self.config)
        try:
            await self.rtp.start()
        except OSError as e:
            raise EngineStartError(f"cannot bind the RTP socket on {self.config.rtp.host}:{self.config.rtp.port}/udp: {e.strerror or e}; set rtp.port (RTP_PORT) to a free port") from e
        try:
            await self._start_transports()
            self.health_server.bind()
        except OSError as e:
            await self._stop_transports()
            raise EngineStartError(f"cannot serve health on {self.config.health.host}:{self.config.health.port}/tcp: {e.strerror or e}; set health.port (HEALTH_PORT) to a free port") from e
        fallback = self.config.providers.fallback_for(self.default_provider)
        try:
            provider = await self.get_provider(self.default_provider)
            ready = provider.readiness()
            if not ready.ready:
                log.warning("provider %s is not ready (%s); new calls go to %s", self.default_provider, ready.detail, fallback or "nobody: they will be refused")
        except Exception as e:
            await self._close_providers()
            await self.health_server.stop()
            await self._stop_transports()
            raise EngineStartError(f"provider {self.default_provider} cannot start: {e}") from e
        # Loaded now: the fallback, so that it can take new calls the moment the default fails, and
        # the providers profiles name, so that their first call does not wait for a model load.
        profiled = [p.provider for p in self.config.profiles.values()]
        fallbacks = [self.config.providers.fallback_for(name) for name in (self.default_provider, *profiled) if name]
        for name in dict.fromkeys([*fallbacks, *profiled]):
            if name and name != self.default_provider:
                try:
                    await self.get_provider(name)
                except Exception as e:
                    log.warning("provider %s cannot start: %s", name, e)
        for name in ("rtp-receive", "pacer"):
            self.supervisor.register(name)
        if self.history is not None:
            # A history that cannot be opened (a damaged file, a database down or hung) must not
            # keep calls from being answered: the engine starts, /health says so, ``run`` retries.
            # Opened before ARI connects when it answers at once (the usual case): the first calls are written.
            self.supervisor.start("history", self.history.run)
            if not await self.history.wait_open(1.0) and self.history.failing_since is None:  # a failure logs itself; a hang does not
                log.error(
                    "call history at %s has not answered in 1 s: calls are answered and their records held until it does; "
                    "check history.path or history.url (AIAGENT_HISTORY_PATH, AIAGENT_HISTORY_URL)", self.history.db.shown_url,
                )
        self.supervisor.start("ari-events", self.events.run)
        self.supervisor.start("health-http", self.health_server.run)
        self.supervisor.start("recordings", self.recordings.run)
        self.capacity.start()
        self.started = True
        log.info(
            "engine started: app %s, ARI %s, RTP %s:%d, provider %s",
            self.config.asterisk.app,
            self.config.asterisk.base_url,
            self.config.rtp.host,
            self.rtp.port,
            self.default_provider,
        )


    def _used_transports(self) -> list[str]:
        """The transports besides RTP whose servers run: the default's, and those profiles name."""
        names = {self.config.media.transport, *(p.transport for p in self.config.profiles.values())}
        if self.config.audiosocket.dialplan_calls:  # the site's dialplan connects to it by itself
            names.add("audiosocket")
        return [t.name for t in self.transports if t.name != "rtp" and t.name in names]

    async def _start_transports(self) -> None:
        for name in self._used_transports():
            t = self.transports[name]
            try:
                await t.start()
            except OSError as e:
                raise OSError(e.errno, f"{name} transport: {e.strerror or e}") from e

    async def _stop_transports(self) -> None:
        for t in self.transports:
            if t.running:
                try:
                    await t.stop()
                except Exception as e:
                    log.error("stopping the %s transport failed: %s", t.name, e, exc_info=e)

    def _fatal(self, why: str, config_error: bool = False) -> None:
        """A component failed for good: whoever runs the engine stops it and exits non-zero (2 for a
        configuration error such as refused ARI credentials, which a restart cannot fix: the unit's
        RestartPreventExitStatus)."""
        if self.fatal_error is None:
            self.fatal_error = why
            self.fatal_exit_code = 2 if config_error else 1
            then = "fix the configuration, then start it again" if config_error else "so that the service manager restarts it"
            self.store.log(None, logging.CRITICAL, f"engine cannot go on: {why}; exiting: {then}")
        self.fatal.set()

    async def wait_ari_connected(self, timeout: float) -> bool:
        return await self.events.wait_connected(timeout)

    async def stop(self) -> None:
        """Hang up every call cleanly, then close everything."""
        if not self.started:
            return
        self.started = False
        self.capacity.close()
        await self.calls.shutdown()
        await self.supervisor.stop()
        await self.recordings.close()
        if self.history is not None:
            await self.history.close()
        await self._close_providers()
        await self.health_server.stop()
        self.outbound.stop()
        await self._stop_transports()
        await self.ari.close()
        log.info("engine stopped")

    # ---- providers
    async def _close_providers(self) -> None:
        for p in self.providers.values():
            try:
                await p.close()
            except Exception as e:
                log.warning("provider %s close failed: %s", p.name, e)
        await self.stages.close()

    async def get_provider(self, name: str) -> Provider:
        """The named provider, built and loaded once (concurrent first calls share one load)."""
        if name in self.providers:
            return self.providers[name]
        lock = self._provider_locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self.providers:
                provider = build_provider(name, self.config.providers, self.stages, tuple(self.config.profiles.values()))
                try:
                    await provider.load()
                except Exception as e:
                    self._load_errors[name] = f"cannot start: {e}"
                    raise
                self._load_errors.pop(name, None)
                self.providers[name] = provider
        return self.providers[name]

    def provider_for_new_call(self, preferred: str = "") -> str:
        """``preferred`` (the call's profile's provider) or the default, or the fallback while
        that one is not ready."""
        name = preferred or self.default_provider
        p = self.providers.get(name)
        fallback = self.config.providers.fallback_for(name)
        if (p is None and preferred) or (p is not None and not p.readiness().ready):
            if fallback and fallback in self.providers:
                return fallback
        return name

    def takes_new_calls(self) -> bool:
        """A new call would get a provider that is ready (its default's or its fallback)."""
        p = self.providers.get(self.provider_for_new_call())
        return p is not None and p.readiness().ready

    def provider_readiness(self) -> dict[str, Readiness]:
        out = {}
        for name in sorted(self.config.providers.names):
            p = self.providers.get(name)
            out[name] = p.readiness() if p is not None else Readiness(False, self._load_errors.get(name, "not loaded"))
        return out

    # ---- reload
    async def reload(self, new: AppConfig, overridden: tuple[str, ...] = ()) -> ReloadResult:
        """Applies what can change while calls are up (config.LIVE_SECTIONS) to the calls that come
        in from now on; names what waits for a restart, the profiles removed, and the settings
        ``overridden`` by the environment (config.reload_config). Raises ConfigError, changing
        nothing, when the result would not work (a profile naming a provider that is not
        configured, file mode without a writable media directory)."""
        plan = plan_reload(self.config, new)
        if plan.config.playback.downstream_mode == "file" and self.config.playback.downstream_mode != "file":
            try:
                _check_media_dir(plan.config)
            except EngineStartError as e:
                raise ConfigError(str(e)) from None
        failed: list[str] = []
        self.config = plan.config
        self.calls.reconfigure(plan.config)
        if "logging.level" in plan.applied:  # only when the file changed it: --log-level stays otherwise
            logging.getLogger().setLevel(plan.config.logging.level)
        if plan.config.providers.default != self.default_provider:
            try:
                await self.set_default_provider(plan.config.providers.default)
            except Exception as e:  # not ready, or cannot load: new calls stay where they were
                failed.append(f"providers.default: {e}")
                kept = self.config.providers.model_copy(update={"default": self.default_provider})
                self.config = self.config.model_copy(update={"providers": kept})  # the next reload tries again
                self.calls.reconfigure(self.config)
        profiles = tuple(plan.config.profiles.values())
        for name in dict.fromkeys(p.provider for p in profiles):
            if name and name not in self.providers:
                try:
                    await self.get_provider(name)
                except Exception as e:
                    failed.append(f"provider {name} (a profile's) cannot start: {e}")
        for provider in list(self.providers.values()):
            await provider.prepare(profiles)
        result = ReloadResult(at=time.time(), applied=plan.applied, restart=plan.restart, failed=tuple(failed), removed_profiles=plan.removed_profiles, overridden=overridden)
        self.last_reload = result
        self.store.log(None, logging.WARNING if result.warns else logging.INFO, f"config reloaded: {result.describe()}")
        return result

    def _reload_problems(self) -> tuple[str, ...]:
        r = self.last_reload
        if r is None:
            return ()
        if r.refused is not None:
            return (f"config reload refused (the running config stays): {r.refused}",)
        return (f"config: {', '.join(r.restart)} changed: restart to apply",) if r.restart else ()

    def reload_refused(self, error: str) -> ReloadResult:
        """A reload that could not be read or would not work: the running config stays."""
        result = ReloadResult(at=time.time(), applied=(), restart=(), failed=(), refused=error)
        self.last_reload = result
        self.store.log(None, logging.ERROR, f"config reload refused, the running config stays: {error}")
        return result

    # ---- commands (the terminal app's keys call these)
    async def set_default_provider(self, name: str) -> None:
        """Provider for new calls; loads it first, and refuses one that is not ready, so that a bad
        choice fails here and visibly, not on every new call."""
        ready = (await self.get_provider(name)).readiness()
        if not ready.ready:
            raise ProviderNotReady(f"{name} is not ready ({ready.detail}); new calls stay on {self.default_provider}")
        self.default_provider = name
        self.store.log(None, logging.INFO, f"new calls use provider {name}")

    async def set_call_provider(self, call_id: str, name: str) -> bool:
        """Moves a live call to another provider (from its next turn)."""
        call = self.calls.calls.get(call_id)
        if call is None:
            return False
        await call.switch_provider(name, "operator's choice")
        return True

    def set_audio_tap(self, call_id: str, tap: AudioTap | None, *, key: str) -> bool:
        """``key`` listens in on a call: ``tap(source, pcm16, rate)`` gets the caller's audio as it
        arrives and the agent's as the provider produces it, beside the call's other listeners.
        ``None`` stops ``key`` listening."""
        call = self.calls.calls.get(call_id)
        return call is not None and call.set_tap(key, tap)

    # ---- the operator in the loop: each is the call's (engine/call.py); False, with a line in the
    # call's log, when refused. docs/operations.md ("The operator in the loop") says what each does.
    def _operator_call(self, call_id: str, what: str, by: str) -> Call | None:
        call = self.calls.calls.get(call_id)
        if call is None:
            self.store.log(None, logging.WARNING, f"{what} by {by} refused: no call {call_id}")
        return call

    def operator_say(self, call_id: str, text: str, by: str) -> bool:
        call = self._operator_call(call_id, "a line for the agent", by)
        return call is not None and call.operator.say(text, by)

    def operator_instruct(self, call_id: str, text: str, by: str) -> bool:
        call = self._operator_call(call_id, "an instruction", by)
        return call is not None and call.operator.instruct(text, by)

    def take_over(self, call_id: str, by: str) -> bool:
        call = self._operator_call(call_id, "take over", by)
        return call is not None and call.operator.take_over(by)

    def hand_back(self, call_id: str, by: str) -> bool:
        call = self._operator_call(call_id, "hand back", by)
        return call is not None and call.operator.hand_back(by)

    def operator_audio(self, call_id: str, pcm16: bytes, rate: int) -> None:
        call = self.calls.calls.get(call_id)  # 50 times a second: a call that went is simply not spoken to
        if call is not None:
            call.operator.audio(pcm16, rate)

    def bring_in(self, call_id: str, department: str, how: BringIn, by: str) -> bool:
        """A person of one of the call's departments is called in (engine/handoff.py): after the
        agent's introduction, straight into the call, or listening in on a snoop channel. True
        when it is under way; its outcome is the call's action (history, log)."""
        call = self._operator_call(call_id, f"bringing in {department}", by)
        return call is not None and call.actions.bring_in(department, how, by)

    def barge_in(self, call_id: str) -> bool:
        """Stop the agent on this call now, as if the caller had talked over it; False if there is
        no such call or its agent is not speaking."""
        call = self.calls.calls.get(call_id)
        return call is not None and call.barge_in()

    def transfer(self, call_id: str, department: str) -> bool:
        """The operator puts the caller through to one of its profile's departments (the agent
        announces it first, as for any transfer)."""
        call = self.calls.calls.get(call_id)
        return call is not None and call.actions.request(ActionRequest("transfer", department, "operator's choice"), by="operator")

    def departments(self, call_id: str) -> dict[str, str]:
        """Where the call's profile may transfer it: department -> target."""
        call = self.calls.calls.get(call_id)
        return {name: d.target for name, d in call.profile.departments.items()} if call is not None else {}

    async def hangup(self, call_id: str) -> bool:
        call = self.calls.calls.get(call_id)
        if call is None:
            return False
        await self.calls.begin_teardown(call, "hung up by operator", hangup_caller=True)
        return True

    # ---- state for consumers
    @property
    def ari_connected(self) -> bool:
        return self.events.connected and not self.calls.replaced

    def summary(self, components: list[ComponentStatus] | None = None) -> EngineSummary:
        """The engine's state without any per-call detail (for a header refreshed 10 times a second)."""
        if components is None:
            components = self.components()
        readiness = self.provider_readiness()
        queues = tuple(ModelQueue(name, q.depth, q.oldest_wait_s) for name, q in self.stages.queues().items())
        limit = self.config.health.max_model_wait_s
        overloaded = tuple(
            f"{q.model}: a job has waited {q.oldest_wait_s:.1f} s for its model ({q.depth} queued; health.max_model_wait_s {limit:g})"
            for q in queues if q.oldest_wait_s > limit
        )
        # Callers turned away (at max_calls, at the models' capacity), turns refused: recently, in words.
        capacity = self.capacity.estimate()
        overloaded += self.calls.overload.problems(capacity) + self.calls.refusals.problems()
        overloaded += self.history.problems() if self.history is not None else ()  # failing now, or a file it had to replace
        used = ("rtp", *self._used_transports())
        # A transport the config sends calls to whose server is not up: those calls cannot have audio.
        overloaded += tuple(
            f"the {t} media transport is not running ({self.transports[t].status().listening or 'no server'}): calls on it get no audio"
            for t in used if not self.transports[t].running
        )
        ok = (
            # Calls still go to the fallback while the default is not ready, but an operator must know.
            self.ari_connected and all(self.transports[t].running for t in used) and readiness[self.default_provider].ready
            and self.supervisor.healthy and self.fatal_error is None and not overloaded
        )
        store = self.store
        base = f"http://{self.config.health.host}:{self.health_server.port}"
        return EngineSummary(
            status="ok" if ok else "degraded",
            fatal_error=self.fatal_error,
            ari_connected=self.ari_connected,
            ari_url=self.config.asterisk.base_url,
            ari_app=self.config.asterisk.app,
            ari_last_error=self.events.last_error,
            ari_reconnects=max(0, self.events.connects - 1),
            rtp_server_running=self.rtp.running,
            rtp_address=f"{self.config.rtp.host}:{self.rtp.port}",
            audio_transport="externalmedia",
            active_calls=len(store),
            max_calls=self.config.rtp.max_calls,
            calls_total=store.calls_total,
            calls_rejected_over_capacity=store.calls_rejected_over_capacity,
            calls_failed=store.calls_failed,
            default_provider=self.default_provider,
            new_calls_provider=self.provider_for_new_call(),
            providers=readiness,
            downstream_mode=self.config.playback.downstream_mode,
            # What an operator must look at now: components and model workers that are not running.
            problems=tuple(
                f"{c.name} {c.state}" + (f": {c.last_error}" if c.last_error else "")
                for c in components if not c.ok
            ) + overloaded + self._reload_problems(),
            model_queues=queues,
            health_url=f"{base}/health",
            metrics_url=f"{base}/metrics",
            last_reload=self.last_reload,
            model_capacity=capacity.calls,
            model_capacity_basis=capacity.basis,
            model_calls=self.calls.model_calls(),
            calls_refused_model_capacity=store.calls_refused_model_capacity,
            turns_failed=store.turns_failed,
            history=self.history.status() if self.history is not None else None,
            media_transports=used,
        )

    def components(self) -> list[ComponentStatus]:
        """Every long-lived part of the engine and its model stages (worker processes, model
        servers), with their failures."""
        return self.supervisor.status() + self.stages.statuses()

    def status(self, detail: bool = True) -> EngineStatus:
        """Everything /health and /metrics show; ``detail`` adds a snapshot of every call."""
        c = self.rtp.counters
        pacing = self.rtp.timings.pacing_error
        store = self.store
        live = list(store)
        components = self.components()
        return EngineStatus(
            summary=self.summary(components),
            components=tuple(components),
            ari=AriCounters(self.events.malformed_events, self.events.handler_errors, self.calls.task_errors),
            rtp=RtpCounters(
                packets_in=c.packets_in,
                packets_out=c.packets_out,
                foreign_dropped=c.foreign,
                after_end_dropped=c.after_end,
                malformed_dropped=dict(c.malformed),
                unsupported_payload_dropped=c.unsupported_payload,
                duplicates=c.duplicates,
                late_dropped=c.late,
                probation_dropped=c.probation,
                kernel_drops=self.rtp.kernel_drops(),
                receive_buffer_bytes=self.rtp.receive_buffer_bytes,
                send_errors=c.send_errors,
                internal_errors=c.internal_errors + self.outbound.counters.internal_errors,
                late_ticks=self.outbound.counters.late_ticks,
                pacing_error_p50_ms=pacing.percentile_ms(50),
                pacing_error_p99_ms=pacing.percentile_ms(99),
            ),
            aggregates=CallAggregates(
                worst_loss_ratio=max((s.rtp_in.loss_fraction for s in live), default=0.0),
                # A stream transport's arrival jitter counts as RTP's does (engine/verdicts.py judges both alike).
                worst_jitter_ms=max((s.rtp_in.jitter_ms if s.transport == "rtp" else s.stream_in.jitter_ms for s in live), default=0.0),
                gated=sum(1 for s in live if s.playbacks),
                capturing=sum(1 for s in live if s.capture_enabled),
                stream_underruns=sum(s.rtp_out.underruns for s in live) + store.ended_underruns,
                stream_overruns=sum(s.rtp_out.overruns for s in live) + store.ended_overruns,
            ),
            conversation=dataclasses.replace(self.calls.conversation_counters),
            playback=dataclasses.replace(self.calls.playback_counters),
            actions=tuple((k, o, n) for (k, o), n in sorted(self.calls.action_counters.counts.items())),
            calls=tuple(store.snapshots()) if detail else (),
            transports=self.transports.status(),
            calls_by_transport=dict(Counter(s.transport for s in live)),
        )

    def health(self) -> dict[str, Any]:
        """The /health document."""
        return self.status().as_json()


def _check_media_dir(config: AppConfig) -> None:
    """File mode needs a directory the engine writes and Asterisk reads: say so now, not on the
    first call."""
    if config.playback.downstream_mode != "file":
        return
    d = config.storage.media_dir
    try:
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        probe = d / ".aiagent-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise EngineStartError(
            f"storage.media_dir {d} is not writable ({e.strerror or e}); create it "
            "(e.g. install -d -g asterisk -m 0755 DIR) or set AIAGENT_MEDIA_DIR"
        ) from e
