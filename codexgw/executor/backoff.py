"""
The executor's reconnect backoff (C{executor.md} §2): initial 1 s, factor 1.5, at most 60 s, ±10 %
jitter, reset after a connection that lived at least 30 s.

Decision where the spec is silent: the jitter is applied to the capped delay and the result is capped
again, so no wait ever exceeds the 60 s maximum (at the cap, waits fall between 54 and 60 s).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

#: First delay, in seconds.
INITIAL_DELAY: Final = 1.0
#: Growth of the delay per consecutive attempt.
FACTOR: Final = 1.5
#: Longest delay, in seconds.
MAX_DELAY: Final = 60.0
#: Relative jitter: each delay is multiplied by a factor drawn from [1 - JITTER, 1 + JITTER].
JITTER: Final = 0.1
#: A connection that lived at least this many seconds resets the backoff.
STABLE_CONNECTION: Final = 30.0


class Backoff:
    """
    Delays between connection attempts.

    @ivar attempts: delays handed out since the last reset.
    """

    def __init__(
        self,
        initial: float = INITIAL_DELAY,
        factor: float = FACTOR,
        maximum: float = MAX_DELAY,
        jitter: float = JITTER,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        """
        @param uniform: draws the jitter factor; C{random.uniform} by default, injectable for tests.
        """
        self._initial = initial
        self._factor = factor
        self._maximum = maximum
        self._jitter = jitter
        self._uniform = uniform
        self.attempts = 0

    def base_delay(self, attempts: int) -> float:
        """
        The delay before jitter after C{attempts} earlier delays: C{min(maximum, initial·factor^n)}.
        """
        delay = self._initial
        for _ in range(attempts):
            delay *= self._factor
            if delay >= self._maximum:
                # Stop multiplying: after a long outage the count grows without bound.
                return self._maximum
        return min(delay, self._maximum)

    def next_delay(self) -> float:
        """
        The next delay, with jitter; each call counts as one more attempt.
        """
        base = self.base_delay(self.attempts)
        self.attempts += 1
        jittered = base * self._uniform(1.0 - self._jitter, 1.0 + self._jitter)
        return min(jittered, self._maximum)

    def reset(self) -> None:
        """
        Start again from the initial delay (after a connection that lived long enough).
        """
        self.attempts = 0
