"""
Tests for L{codexgw.executor.backoff}: the reconnect delays of C{executor.md} §2.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw.executor.backoff import FACTOR, INITIAL_DELAY, JITTER, MAX_DELAY, STABLE_CONNECTION, Backoff


def no_jitter(low: float, high: float) -> float:
    """
    The middle of the jitter range: a factor of exactly 1.
    """
    return (low + high) / 2


class BackoffTests(SynchronousTestCase):
    """
    Initial 1 s, factor 1.5, at most 60 s, ±10 % jitter, reset.
    """

    def test_constants(self) -> None:
        """
        The spec's numbers: 1 s, ×1.5, 60 s, 10 %, and 30 s for a connection that resets the backoff.
        """
        self.assertEqual(
            (INITIAL_DELAY, FACTOR, MAX_DELAY, JITTER, STABLE_CONNECTION), (1.0, 1.5, 60.0, 0.1, 30.0)
        )

    def test_sequence(self) -> None:
        """
        Without jitter the delays are 1, 1.5, 2.25, 3.375, … up to 60, and stay at 60.
        """
        backoff = Backoff(uniform=no_jitter)
        delays = [backoff.next_delay() for _ in range(15)]
        expected = [min(60.0, 1.5**n) for n in range(15)]
        for got, want in zip(delays, expected, strict=True):
            self.assertAlmostEqual(got, want)
        self.assertEqual(delays[-4:], [60.0] * 4)
        self.assertEqual(backoff.attempts, 15)

    def test_reset(self) -> None:
        """
        After C{reset} the next delay is the initial one again.
        """
        backoff = Backoff(uniform=no_jitter)
        for _ in range(5):
            backoff.next_delay()
        backoff.reset()
        self.assertEqual(backoff.next_delay(), 1.0)

    def test_jitter_range(self) -> None:
        """
        The jitter factor is drawn from [0.9, 1.1]; at the cap the jittered delay never passes 60 s.
        """
        ranges: list[tuple[float, float]] = []

        def lowest(low: float, high: float) -> float:
            ranges.append((low, high))
            return low

        backoff = Backoff(uniform=lowest)
        self.assertAlmostEqual(backoff.next_delay(), 0.9)
        self.assertEqual(ranges, [(0.9, 1.1)])
        highest = Backoff(uniform=lambda low, high: high)
        self.assertAlmostEqual(highest.next_delay(), 1.1)
        highest.attempts = 100
        self.assertEqual(highest.next_delay(), 60.0)
        lowest_at_cap = Backoff(uniform=lambda low, high: low)
        lowest_at_cap.attempts = 100
        self.assertAlmostEqual(lowest_at_cap.next_delay(), 54.0)

    def test_long_outage(self) -> None:
        """
        A huge number of attempts still gives the capped delay (no overflow).
        """
        backoff = Backoff(uniform=no_jitter)
        backoff.attempts = 10**6
        self.assertEqual(backoff.next_delay(), 60.0)

    @given(st.integers(0, 200))
    def test_random_delays_in_bounds(self, attempts: int) -> None:
        """
        With the real random jitter, every delay is within ±10 % of the base and at most 60 s.
        """
        backoff = Backoff()
        backoff.attempts = attempts
        base = backoff.base_delay(attempts)
        delay = backoff.next_delay()
        self.assertGreaterEqual(delay, base * 0.9 - 1e-9)
        self.assertLessEqual(delay, min(60.0, base * 1.1) + 1e-9)
