"""Prometheus metrics, collected from engine state at scrape time.

Nothing on the media hot path touches a metric object: counters live in plain attributes and
this collector reads them when /metrics is scraped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from engine.engine import Engine


class EngineCollector:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        store = e.store
        c = e.rtp.counters
        yield GaugeMetricFamily("ai_agent_active_calls", "Calls currently handled", value=len(store))
        yield CounterMetricFamily("ai_agent_calls", "Calls taken since start", value=store.calls_total)
        yield CounterMetricFamily("ai_agent_calls_rejected_over_capacity", "Calls refused at max_calls", value=store.calls_rejected_over_capacity)
        yield CounterMetricFamily("ai_agent_calls_failed", "Calls whose setup failed", value=store.calls_failed)
        yield GaugeMetricFamily("ai_agent_ari_connected", "1 while the ARI events WebSocket is up", value=int(e.ari_connected))
        yield CounterMetricFamily("ai_agent_ari_reconnects", "ARI events WebSocket reconnects", value=max(0, e.events.connects - 1))
        yield GaugeMetricFamily("ai_agent_rtp_server_running", "1 while the RTP socket is open", value=int(e.rtp.running))
        yield CounterMetricFamily("ai_agent_rtp_packets_in", "RTP datagrams received", value=c.packets_in)
        yield CounterMetricFamily("ai_agent_rtp_packets_out", "RTP packets sent", value=c.packets_out)
        dropped = CounterMetricFamily("ai_agent_rtp_dropped", "Datagrams dropped, by reason", labels=["reason"])
        dropped.add_metric(["foreign"], c.foreign)
        dropped.add_metric(["unsupported_payload"], c.unsupported_payload)
        dropped.add_metric(["duplicate"], c.duplicates)
        dropped.add_metric(["late"], c.late)
        dropped.add_metric(["probation"], c.probation)
        for reason, n in c.malformed.items():
            dropped.add_metric([f"malformed_{reason}"], n)
        yield dropped
        kernel = e.rtp.kernel_drops()
        if kernel is not None:
            yield CounterMetricFamily("ai_agent_rtp_kernel_drops", "Datagrams the kernel dropped on a full socket buffer", value=kernel)
        yield CounterMetricFamily("ai_agent_rtp_send_errors", "RTP send failures", value=c.send_errors)
        yield CounterMetricFamily("ai_agent_internal_errors", "Packets or pacer ticks lost to a failure in the engine's code", value=c.internal_errors)
        comp = GaugeMetricFamily("ai_agent_component_up", "1 while an engine component or model worker runs", labels=["component"])
        restarts = CounterMetricFamily("ai_agent_component_restarts", "Restarts of an engine component or model worker", labels=["component"])
        for co in e.components():
            comp.add_metric([co.name], int(co.ok))
            restarts.add_metric([co.name], co.restarts)
        yield comp
        yield restarts
        loss = GaugeMetricFamily("ai_agent_rtp_loss_ratio", "Inbound RTP loss per call", labels=["call_id"])
        jitter = GaugeMetricFamily("ai_agent_rtp_jitter_ms", "Inbound RTP interarrival jitter per call", labels=["call_id"])
        for call in store:
            loss.add_metric([call.call_id], call.rtp_in.loss_fraction)
            jitter.add_metric([call.call_id], call.rtp_in.jitter_ms)
        yield loss
        yield jitter
        p = e.rtp.timings.pacing_error
        pacing = GaugeMetricFamily("ai_agent_rtp_pacing_error_ms", "Outbound pacing error over recent packets", labels=["quantile"])
        pacing.add_metric(["0.5"], p.percentile_ms(50))
        pacing.add_metric(["0.99"], p.percentile_ms(99))
        yield pacing
        gating = GaugeMetricFamily("ai_agent_tts_gating_active", "1 while the agent speaks and capture is gated", labels=["call_id"])
        capture = GaugeMetricFamily("ai_agent_audio_capture_enabled", "1 while caller audio reaches the provider", labels=["call_id"])
        for call in store:
            gating.add_metric([call.call_id], int(bool(call.playbacks)))
            capture.add_metric([call.call_id], int(call.capture_enabled))
        yield gating
        yield capture
        cc = e.calls.conversation_counters
        yield CounterMetricFamily("ai_agent_barge_in_events", "Barge-ins (caller or operator stopped the agent)", value=cc.barge_ins)
        yield CounterMetricFamily("ai_agent_barge_in_attempts", "Caller sound during agent speech too short to stop it", value=cc.barge_in_attempts)
        yield CounterMetricFamily("ai_agent_barge_in_forced", "Barge-ins forced by the operator", value=cc.barge_ins_forced)
        yield CounterMetricFamily("ai_agent_fallback_flushes", "Utterances handed over by the fallback timer (VAD heard nothing)", value=cc.fallback_flushes)
        pc = e.calls.playback_counters
        pb = CounterMetricFamily("ai_agent_playbacks", "File playbacks on bridges, by outcome", labels=["outcome"])
        pb.add_metric(["started"], pc.files_started)
        pb.add_metric(["finished"], pc.files_finished)
        pb.add_metric(["failed"], pc.files_failed)
        pb.add_metric(["timed_out"], pc.files_timed_out)
        pb.add_metric(["stopped"], pc.files_stopped)
        yield pb
        yield CounterMetricFamily("ai_agent_stream_fallbacks", "Calls whose stream playback fell back to files", value=pc.stream_fallbacks)
        yield CounterMetricFamily("ai_agent_stream_underruns", "Outbound RTP streams that ran dry mid-speech", value=sum(c.rtp_out.underruns for c in store) + e.store.ended_underruns)
        yield CounterMetricFamily("ai_agent_stream_overruns", "Outbound frames dropped on a full queue", value=sum(c.rtp_out.overruns for c in store) + e.store.ended_overruns)
        depth = GaugeMetricFamily("ai_agent_model_queue_depth", "Model jobs waiting or running", labels=["provider", "model"])
        for name, provider in e.providers.items():
            for model, n in provider.queue_depths().items():
                depth.add_metric([name, model], n)
        yield depth
        ready = GaugeMetricFamily("ai_agent_provider_ready", "1 when the provider can take calls", labels=["provider"])
        for name, r in e.provider_readiness().items():
            ready.add_metric([name], int(r.ready))
        yield ready


class EngineMetrics:
    """The engine's registry: the scrape-time collector plus the few metrics that are events."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(engine))  # type: ignore[arg-type]
        self.turn_latency = Histogram(
            "ai_agent_turn_latency_seconds",
            "Caller speech end to first agent audio out",
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=self.registry,
        )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
