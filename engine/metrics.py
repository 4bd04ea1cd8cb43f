"""Prometheus metrics, collected from the engine's status at scrape time.

Nothing on the media hot path touches a metric object: counters live in plain attributes, the
engine gathers them into an ``EngineStatus`` when /metrics is scraped, and this collector turns
that into series. Labels are bounded (reason, component, provider, model, outcome): per-call
detail is in /health and the app, not in series that grow with every call.
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from engine.sessions import TurnTimeline
from engine.status import EngineStatus
from providers.stages import Priority


class EngineCollector:
    def __init__(self, status: Callable[[], EngineStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        st = self._status()
        s = st.summary
        r = st.rtp
        yield GaugeMetricFamily("ai_agent_active_calls", "Calls currently handled", value=s.active_calls)
        yield CounterMetricFamily("ai_agent_calls", "Calls taken since start", value=s.calls_total)
        yield CounterMetricFamily("ai_agent_calls_rejected_over_capacity", "Calls refused at max_calls", value=s.calls_rejected_over_capacity)
        yield CounterMetricFamily("ai_agent_calls_failed", "Calls whose setup failed", value=s.calls_failed)
        yield CounterMetricFamily("ai_agent_calls_refused_model_capacity", "Calls turned away because this machine's models were at capacity",
                                  value=s.calls_refused_model_capacity)
        yield CounterMetricFamily("ai_agent_turns_failed", "Caller turns the models could not serve (refused or lost): answered with the apology",
                                  value=s.turns_failed)
        if s.model_capacity is not None:
            yield GaugeMetricFamily("ai_agent_model_capacity_calls", "Calls this machine's models serve at once (measured, or providers.local.max_active_calls)",
                                    value=s.model_capacity)
            yield GaugeMetricFamily("ai_agent_model_calls", "Calls up on providers that use this machine's models", value=s.model_calls)
        yield GaugeMetricFamily("ai_agent_ari_connected", "1 while the ARI events WebSocket is up", value=int(s.ari_connected))
        reload = s.last_reload
        yield GaugeMetricFamily("ai_agent_config_reload_refused", "1 while the last config reload was refused (the running config stays)",
                                value=int(reload is not None and reload.refused is not None))
        yield GaugeMetricFamily("ai_agent_config_restart_pending", "Changed settings that wait for a restart",
                                value=len(reload.restart) if reload is not None else 0)
        if (h := s.history) is not None:
            yield GaugeMetricFamily("ai_agent_history_failing", "1 while the call history cannot be written (a failed write, or one not back in a second)",
                                    value=int(h.failing))
            yield CounterMetricFamily("ai_agent_history_write_errors", "Failed writes to the call history", value=h.write_errors)
            yield GaugeMetricFamily("ai_agent_history_records_held", "Ended calls' records held in memory for the call history", value=h.records_held)
            yield CounterMetricFamily("ai_agent_history_records_lost", "Call records never written (refused, beyond what memory holds, or at shutdown)",
                                      value=h.records_lost)
        yield CounterMetricFamily("ai_agent_ari_reconnects", "ARI events WebSocket reconnects", value=s.ari_reconnects)
        yield GaugeMetricFamily("ai_agent_rtp_server_running", "1 while the RTP socket is open", value=int(s.rtp_server_running))
        yield CounterMetricFamily("ai_agent_rtp_packets_in", "RTP datagrams received", value=r.packets_in)
        yield CounterMetricFamily("ai_agent_rtp_packets_out", "RTP packets sent", value=r.packets_out)
        dropped = CounterMetricFamily("ai_agent_rtp_dropped", "Datagrams dropped, by reason", labels=["reason"])
        dropped.add_metric(["foreign"], r.foreign_dropped)
        dropped.add_metric(["after_end"], r.after_end_dropped)
        dropped.add_metric(["unsupported_payload"], r.unsupported_payload_dropped)
        dropped.add_metric(["duplicate"], r.duplicates)
        dropped.add_metric(["late"], r.late_dropped)
        dropped.add_metric(["probation"], r.probation_dropped)
        for reason, n in r.malformed_dropped.items():
            dropped.add_metric([f"malformed_{reason}"], n)
        yield dropped
        if r.kernel_drops is not None:
            yield CounterMetricFamily("ai_agent_rtp_kernel_drops", "Datagrams the kernel dropped on a full socket buffer", value=r.kernel_drops)
        yield CounterMetricFamily("ai_agent_rtp_send_errors", "RTP send failures", value=r.send_errors)
        yield CounterMetricFamily("ai_agent_internal_errors", "Packets or pacer ticks lost to a failure in the engine's code", value=r.internal_errors)
        yield from _transport_metrics(st)
        comp = GaugeMetricFamily("ai_agent_component_up", "1 while an engine component or model worker runs", labels=["component"])
        restarts = CounterMetricFamily("ai_agent_component_restarts", "Restarts of an engine component or model worker", labels=["component"])
        latency = GaugeMetricFamily("ai_agent_model_server_latency_seconds", "A model server's last answer time (a probe or a job)", labels=["component"])
        errors = CounterMetricFamily("ai_agent_component_errors", "Failures an engine component, model worker or model server had", labels=["component"])
        for co in st.components:
            comp.add_metric([co.name], int(co.ok))
            restarts.add_metric([co.name], co.restarts)
            errors.add_metric([co.name], co.errors)
            if co.latency_ms is not None:
                latency.add_metric([co.name], co.latency_ms / 1000)
        yield comp
        yield restarts
        yield errors
        yield latency
        a = st.aggregates
        yield GaugeMetricFamily("ai_agent_rtp_worst_loss_ratio", "Inbound RTP loss of the live call that loses most", value=a.worst_loss_ratio)
        yield GaugeMetricFamily("ai_agent_rtp_worst_jitter_ms", "Inbound RTP interarrival jitter of the live call with the most", value=a.worst_jitter_ms)
        pacing = GaugeMetricFamily("ai_agent_rtp_pacing_error_ms", "Outbound pacing error over recent packets", labels=["quantile"])
        pacing.add_metric(["0.5"], r.pacing_error_p50_ms)
        pacing.add_metric(["0.99"], r.pacing_error_p99_ms)
        yield pacing
        yield GaugeMetricFamily("ai_agent_calls_gated", "Calls whose capture is muted while the agent speaks", value=a.gated)
        yield GaugeMetricFamily("ai_agent_calls_capturing", "Calls whose caller audio reaches the provider", value=a.capturing)
        cc = st.conversation
        yield CounterMetricFamily("ai_agent_barge_in_events", "Barge-ins (caller or operator stopped the agent)", value=cc.barge_ins)
        yield CounterMetricFamily("ai_agent_barge_in_attempts", "Caller sound during agent speech too short to stop it", value=cc.barge_in_attempts)
        yield CounterMetricFamily("ai_agent_barge_in_forced", "Barge-ins forced by the operator", value=cc.barge_ins_forced)
        yield CounterMetricFamily("ai_agent_barge_in_pauses", "Times the agent paused on caller sound (stream mode)", value=cc.barge_in_pauses)
        yield CounterMetricFamily("ai_agent_barge_in_false_pauses", "Pauses that resumed: not the caller talking", value=cc.false_pauses)
        yield CounterMetricFamily("ai_agent_turns_ended_early", "Caller turns ended at a pause on a complete transcript, before the VAD's hangover", value=cc.early_ends)
        ea = CounterMetricFamily("ai_agent_early_answers", "Answers begun at the caller's pause: used by the turn, or dropped (the caller said more)", labels=["outcome"])
        ea.add_metric(["used"], cc.early_answers_used)
        ea.add_metric(["dropped"], cc.early_answers_dropped)
        yield ea
        yield CounterMetricFamily("ai_agent_fallback_flushes", "Utterances handed over by the fallback timer (VAD heard nothing)", value=cc.fallback_flushes)
        pc = st.playback
        pb = CounterMetricFamily("ai_agent_playbacks", "File playbacks on bridges, by outcome", labels=["outcome"])
        pb.add_metric(["started"], pc.files_started)
        pb.add_metric(["finished"], pc.files_finished)
        pb.add_metric(["failed"], pc.files_failed)
        pb.add_metric(["timed_out"], pc.files_timed_out)
        pb.add_metric(["stopped"], pc.files_stopped)
        yield pb
        yield CounterMetricFamily("ai_agent_stream_fallbacks", "Calls whose stream playback fell back to files", value=pc.stream_fallbacks)
        yield CounterMetricFamily("ai_agent_stream_underruns", "Outbound RTP streams that ran dry mid-speech", value=a.stream_underruns)
        yield CounterMetricFamily("ai_agent_stream_overruns", "Outbound frames dropped on a full queue", value=a.stream_overruns)
        actions = CounterMetricFamily("ai_agent_actions", "Actions on calls (transfer, hangup, still_there; an operator's say, instruct, take_over, hand_back), by outcome", labels=["action", "outcome"])
        for kind, outcome, n in st.actions:
            actions.add_metric([kind, outcome], n)
        yield actions
        depth = GaugeMetricFamily("ai_agent_model_queue_depth", "Model jobs waiting or running, per model stage", labels=["model"])
        oldest = GaugeMetricFamily("ai_agent_model_oldest_wait_seconds", "How long the model job waiting longest has waited", labels=["model"])
        for q in s.model_queues:
            depth.add_metric([q.model], q.depth)
            oldest.add_metric([q.model], q.oldest_wait_s)
        yield depth
        yield oldest
        ready = GaugeMetricFamily("ai_agent_provider_ready", "1 when the provider can take calls", labels=["provider"])
        for name, readiness in s.providers.items():
            ready.add_metric([name], int(readiness.ready))
        yield ready


# Each transport's counters (engine/status.py TransportStatus): (metric, help, field, counter?).
_TRANSPORT_SERIES = (
    ("ai_agent_transport_connections", "Media connections open now (RTP: calls routed)", "connections", False),
    ("ai_agent_transport_connections_opened", "Media connections accepted or made since start", "connections_total", True),
    ("ai_agent_transport_messages_in", "Media messages received (RTP: datagrams)", "messages_in", True),
    ("ai_agent_transport_messages_out", "Media messages sent (RTP: packets)", "messages_out", True),
    ("ai_agent_transport_bytes_in", "Media bytes received", "bytes_in", True),
    ("ai_agent_transport_bytes_out", "Media bytes sent", "bytes_out", True),
    ("ai_agent_transport_malformed", "Media messages that could not be read", "malformed", True),
    ("ai_agent_transport_oversize", "Media frames over the size limit", "oversize", True),
    ("ai_agent_transport_unknown", "Media connections (RTP: datagrams) that matched no call", "unknown", True),
    ("ai_agent_transport_cut", "Media connections that ended before their call did", "cut", True),
    ("ai_agent_transport_slow_reader", "Frames dropped because the peer did not read them in time", "slow_reader", True),
)


def _transport_metrics(st: EngineStatus) -> Iterator[Metric]:
    """Every transport the engine has, labelled ``transport`` (a bounded set: rtp, audiosocket,
    websocket); the live calls on each."""
    running = GaugeMetricFamily("ai_agent_transport_running", "1 while the media transport's server runs (or it is ready to connect)", labels=["transport"])
    for t in st.transports:
        running.add_metric([t.name], int(t.running))
    yield running
    for name, help_, attr, counter in _TRANSPORT_SERIES:
        family = CounterMetricFamily(name, help_, labels=["transport"]) if counter else GaugeMetricFamily(name, help_, labels=["transport"])
        for t in st.transports:
            family.add_metric([t.name], getattr(t, attr))
        yield family
    calls = GaugeMetricFamily("ai_agent_active_calls_by_transport", "Calls currently handled, by their media transport", labels=["transport"])
    for name in sorted({t.name for t in st.transports} | set(st.calls_by_transport)):
        calls.add_metric([name], st.calls_by_transport.get(name, 0))
    yield calls


class EngineMetrics:
    """The engine's registry: the scrape-time collector plus the few metrics that are events."""

    def __init__(self, status: Callable[[], EngineStatus]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(status))
        self.turn_latency = Histogram(
            "ai_agent_turn_latency_seconds",
            "The caller's last voiced frame to the first agent audio out (the end-of-speech wait included)",
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=self.registry,
        )
        self.end_of_speech_wait = Histogram(
            "ai_agent_turn_end_of_speech_wait_seconds",
            "Of the turn latency: the caller's last voiced frame to the engine's decision that they had finished (the VAD's hangover)",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.0, 5.0),
            registry=self.registry,
        )

        self._model_wait = Histogram(
            "ai_agent_model_wait_seconds",
            "Time an in-process model job waited for its worker, by model and priority (now: what a caller waits on)",
            labelnames=["model", "priority"],
            buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )

    def observe_turn(self, t: TurnTimeline) -> None:
        """An answered turn: its latency, and the end-of-speech wait it began with."""
        if t.latency_s is not None:
            self.turn_latency.observe(t.latency_s)
        if t.endpoint_s is not None and t.first_audio_out is not None:
            self.end_of_speech_wait.observe(t.endpoint_s)

    def model_wait(self, model: str, priority: Priority, seconds: float) -> None:
        self._model_wait.labels(model, priority.name.lower()).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
