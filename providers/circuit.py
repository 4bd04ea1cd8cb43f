"""A circuit breaker for a remote provider: while it is known to be down, new calls go straight
to the fallback instead of waiting for it to fail again; a half-open probe finds out when it is back.

  closed     calls use the provider; a failed connect opens the circuit
  open       known down: not ready; after ``open_s`` the owner runs one probe (half-open)
  half_open  the probe decides: success closes, failure opens again for twice as long
"""

from __future__ import annotations

from runtime.clock import Clock, LoopClock


class CircuitBreaker:
    def __init__(self, *, open_s: float = 10.0, max_open_s: float = 120.0, clock: Clock | None = None) -> None:
        self.base_open_s = open_s
        self.max_open_s = max_open_s
        self._clock = clock or LoopClock()
        self.state = "closed"
        self.open_for_s = open_s
        self.opened_at = 0.0
        self.failures = 0  # in a row
        self.successes = 0
        self.last_error: str | None = None

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def success(self) -> None:
        self.state = "closed"
        self.failures = 0
        self.successes += 1
        self.open_for_s = self.base_open_s

    def failure(self, why: str) -> None:
        self.failures += 1
        self.last_error = why
        if self.state == "half_open":
            self.open_for_s = min(self.open_for_s * 2, self.max_open_s)
        self.state = "open"
        self.opened_at = self._clock.now()

    def probe_due(self) -> bool:
        """True once the open circuit has waited long enough; the state is then half-open."""
        if self.state == "open" and self._clock.now() - self.opened_at >= self.open_for_s:
            self.state = "half_open"
            return True
        return False

    def seconds_to_probe(self) -> float:
        return max(0.0, self.open_for_s - (self._clock.now() - self.opened_at)) if self.state == "open" else 0.0
