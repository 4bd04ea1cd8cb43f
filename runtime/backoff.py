"""Capped exponential backoff with full jitter (so many engines do not reconnect in lockstep)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float, maximum: float, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.factor**self.attempt)
        self.attempt += 1
        # Never below half the ceiling: a reconnect storm against a restarting Asterisk helps no one.
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
