"""Prometheus metrics, collected from engine state at scrape time.

Nothing on the media hot path touches a metric object: counters live in plain attributes and
this collector reads them when /metrics is scraped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, generate_latest
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
        for reason, n in c.malformed.items():
            dropped.add_metric([f"malformed_{reason}"], n)
        yield dropped
        yield CounterMetricFamily("ai_agent_rtp_send_errors", "RTP send failures", value=c.send_errors)
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
        ready = GaugeMetricFamily("ai_agent_provider_ready", "1 when the provider can take calls", labels=["provider"])
        for name, r in e.provider_readiness().items():
            ready.add_metric([name], int(r.ready))
        yield ready


def build_registry(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
