"""Exponential backoff with jitter that honors the server's retry delay.

Spec, "Establishing Connection" and "Throttling": retry with exponential
backoff and jitter; when the server says how long to wait (RetryInfo in an
UNAVAILABLE error, or HTTP Retry-After with 429/503), wait at least that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from profiler.opamp.transport import MAX_RETRY_AFTER_S


@dataclass
class Backoff:
    initial: float = 1.0
    maximum: float = 300.0
    multiplier: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next(self, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt (and count this one)."""
        ceiling = min(self.maximum, self.initial * self.multiplier**self.attempts)
        self.attempts += 1
        # "Equal jitter": never less than half the step, so waits still grow.
        delay = ceiling / 2 + self.rng.random() * ceiling / 2
        if retry_after is not None:
            wish = min(max(retry_after, 0.0), MAX_RETRY_AFTER_S)
            # Never earlier than asked; a little later so agents told the
            # same delay do not all return at once.
            delay = max(delay, wish * (1 + 0.1 * self.rng.random()))
        return delay

    def reset(self) -> None:
        self.attempts = 0
