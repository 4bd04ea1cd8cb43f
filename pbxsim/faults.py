"""The simulated PBX's fault knobs: what a hostile PBX or a flaky network does, on demand (tests set
them on ``SimPBX.faults``; bench/faults.py over POST /sim/faults)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(kw_only=True)
class Faults:
    """Keys are api-docs operation keys, e.g. ``channels.externalMedia``, ``bridges.destroy``."""

    # op -> (HTTP status, raw body, how many times): answer with this instead of the real reply
    # (the operation is still carried out, as when a proxy mangles Asterisk's answer).
    bad_replies: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    # op -> seconds: once the operation is answered, close every events WebSocket and refuse new
    # ones for that long (what is emitted meanwhile is lost, as on a real Asterisk).
    drop_ws_after: dict[str, float] = field(default_factory=dict)
    drop_ws_count: dict[str, int] = field(default_factory=dict)  # op -> how many more times (absent: always)
    # op -> seconds to wait before answering.
    delays: dict[str, float] = field(default_factory=dict)
    # The network loses every Nth RTP packet on the way to the engine (0: none), on ExternalMedia
    # channels created from then on.
    rtp_loss_every: int = 0
    # Bytes of a text frame sent first on every events WebSocket (0: none): more than a client
    # takes in one message (aiohttp's limit is 4 MiB), as a broken proxy or ARI might send.
    oversize_frame_bytes: int = 0

    def configure(self, data: dict[str, Any]) -> None:
        """Sets the knobs from POST /sim/faults' JSON; the ones it does not name are cleared
        (in place: the ARI router, events and ExternalMedia all hold this object)."""
        fresh = Faults()
        for op, spec in data.get("bad_replies", {}).items():
            fresh.bad_replies[op] = (int(spec["status"]), str(spec["body"]), int(spec.get("count", 1)))
        for op, spec in data.get("drop_ws_after", {}).items():
            fresh.drop_ws_after[op] = float(spec["block_s"])
            if "count" in spec:
                fresh.drop_ws_count[op] = int(spec["count"])
        fresh.delays.update({op: float(v) for op, v in data.get("delays", {}).items()})
        fresh.rtp_loss_every = int(data.get("rtp_loss_every", 0))
        fresh.oversize_frame_bytes = int(data.get("oversize_frame_bytes", 0))
        for f in fields(self):
            setattr(self, f.name, getattr(fresh, f.name))

    def take_bad_reply(self, op: str) -> tuple[int, str] | None:
        spec = self.bad_replies.get(op)
        if spec is None:
            return None
        status, body, n = spec
        if n <= 1:
            del self.bad_replies[op]
        else:
            self.bad_replies[op] = (status, body, n - 1)
        return status, body

    def take_drop(self, op: str) -> float | None:
        seconds = self.drop_ws_after.get(op)
        if seconds is None:
            return None
        left = self.drop_ws_count.get(op)
        if left is not None:
            if left <= 1:
                del self.drop_ws_after[op], self.drop_ws_count[op]
            else:
                self.drop_ws_count[op] = left - 1
        return seconds
