"""
Tests for L{codexgw.execgw.revoked}: the bounded FIFO of revoked turns of C{exec-gateway.md} §7.3
(acceptance item 59), against a reference model.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codexgw.execgw.revoked import DEFAULT_CAPACITY, RevokedSet

NOW = 1_779_148_800


def clock_at(seconds: float) -> Clock:
    """
    Return a fake clock reading C{seconds}.
    """
    clock = Clock()
    clock.advance(seconds)
    return clock


class ReferenceModel:
    """
    The §7.3 rules written as plainly as possible: a list of C{[turn_id, exp]}, oldest first.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: list[tuple[str, int]] = []

    def add(self, turn_id: str, exp: int, now: int) -> bool:
        """
        Apply C{add} and return C{evicted_live}.
        """
        if any(t == turn_id for t, _ in self.entries):
            self.entries = [(t, e) for t, e in self.entries if t != turn_id] + [(turn_id, exp)]
            return False
        evicted_live = False
        while len(self.entries) >= self.capacity:
            _, evicted_exp = self.entries.pop(0)
            evicted_live = evicted_live or evicted_exp > now
        self.entries.append((turn_id, exp))
        return evicted_live

    def prune(self, now: int) -> None:
        """
        Apply C{prune}.
        """
        self.entries = [(t, e) for t, e in self.entries if not e < now]


class RevokedSetTests(SynchronousTestCase):
    """
    The examples of acceptance item 59.
    """

    def test_defaultCapacity(self) -> None:
        """
        The default capacity is 10 000 entries.
        """
        self.assertEqual(DEFAULT_CAPACITY, 10_000)
        self.assertEqual(RevokedSet(Clock()).capacity, 10_000)

    def test_addContains(self) -> None:
        """
        An added turn is contained; others are not.
        """
        revoked = RevokedSet(clock_at(NOW))
        self.assertFalse(revoked.add("trn_1", NOW + 60))
        self.assertTrue(revoked.contains("trn_1"))
        self.assertIn("trn_1", revoked)
        self.assertFalse(revoked.contains("trn_2"))
        self.assertEqual(len(revoked), 1)

    def test_containsRegardlessOfExp(self) -> None:
        """
        An expired entry is still contained until it is pruned.
        """
        revoked = RevokedSet(clock_at(NOW))
        revoked.add("trn_old", NOW - 100)
        self.assertTrue(revoked.contains("trn_old"))

    def test_capacityKeepsNewest(self) -> None:
        """
        Capacity 3 and a 4th add: size 3, the oldest gone, the newest kept.
        """
        revoked = RevokedSet(clock_at(NOW), capacity=3)
        for i in range(4):
            revoked.add(f"trn_{i}", NOW - 1)
        self.assertEqual(len(revoked), 3)
        self.assertFalse(revoked.contains("trn_0"))
        for i in (1, 2, 3):
            self.assertTrue(revoked.contains(f"trn_{i}"))

    def test_evictedLive(self) -> None:
        """
        Evicting an entry with C{exp > now} returns true; one with C{exp <= now} returns false.
        """
        revoked = RevokedSet(clock_at(NOW), capacity=1)
        revoked.add("live", NOW + 1)
        self.assertTrue(revoked.add("next", NOW))
        self.assertFalse(revoked.add("after", NOW + 5), "exp == now is not live")
        self.assertTrue(revoked.add("last", NOW - 5))

    def test_readdRefreshesPosition(self) -> None:
        """
        Re-adding a present turn updates its exp, returns false and makes it the newest, so the
        next eviction takes another entry.
        """
        revoked = RevokedSet(clock_at(NOW), capacity=3)
        revoked.add("a", NOW + 10)
        revoked.add("b", NOW + 10)
        revoked.add("c", NOW + 10)
        self.assertFalse(revoked.add("a", NOW - 10))
        self.assertEqual(len(revoked), 3)
        self.assertTrue(revoked.add("d", NOW + 10), "b was live")
        self.assertFalse(revoked.contains("b"))
        self.assertTrue(revoked.contains("a"))
        self.assertTrue(revoked.add("e", NOW + 10), "c was live")
        self.assertFalse(revoked.contains("c"))
        self.assertFalse(revoked.add("f", NOW + 10), "a now carries an expired exp")
        self.assertFalse(revoked.contains("a"))

    def test_prune(self) -> None:
        """
        Prune removes exactly the entries with C{exp < now}, using the clock's current whole second.
        """
        clock = clock_at(NOW)
        revoked = RevokedSet(clock)
        revoked.add("past", NOW - 1)
        revoked.add("now", NOW)
        revoked.add("future", NOW + 1)
        self.assertEqual(revoked.prune(), 1)
        self.assertEqual([t for t in ("past", "now", "future") if t in revoked], ["now", "future"])
        clock.advance(1.9)  # still second NOW + 1
        self.assertEqual(revoked.prune(), 1)
        self.assertEqual([t for t in ("now", "future") if t in revoked], ["future"])

    def test_wholeSeconds(self) -> None:
        """
        Liveness uses whole seconds: at C{now = exp + 0.9} the entry is not live.
        """
        revoked = RevokedSet(clock_at(NOW + 0.9), capacity=1)
        revoked.add("a", NOW)
        self.assertFalse(revoked.add("b", NOW))

    def test_badCapacity(self) -> None:
        """
        A capacity below 1 is refused.
        """
        self.assertRaises(ValueError, RevokedSet, Clock(), 0)


turn_ids = st.sampled_from([f"trn_{i}" for i in range(8)])
exps = st.integers(NOW - 5, NOW + 5)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), turn_ids, exps),
        st.tuples(st.just("advance"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("prune"), st.just(""), st.just(0)),
    ),
    max_size=60,
)


class RevokedSetPropertyTests(SynchronousTestCase):
    """
    Properties over arbitrary operation sequences.
    """

    @given(capacity=st.integers(1, 5), ops=operations)
    def test_matchesReferenceModel(self, capacity: int, ops: list[tuple[str, str | int, int]]) -> None:
        """
        After every operation the set holds exactly the model's turns, never more than the capacity,
        an added turn is contained, and C{evicted_live} equals the model's.
        """
        clock = clock_at(NOW)
        revoked = RevokedSet(clock, capacity)
        model = ReferenceModel(capacity)
        for op, arg, exp in ops:
            now = int(clock.seconds())
            if op == "add":
                assert isinstance(arg, str)
                self.assertEqual(revoked.add(arg, exp), model.add(arg, exp, now))
                self.assertTrue(revoked.contains(arg))
            elif op == "advance":
                assert isinstance(arg, int)
                clock.advance(arg)
            else:
                revoked.prune()
                model.prune(now)
            self.assertLessEqual(len(revoked), capacity)
            self.assertEqual(len(revoked), len(model.entries))
            for turn_id in (f"trn_{i}" for i in range(8)):
                self.assertEqual(revoked.contains(turn_id), any(t == turn_id for t, _ in model.entries))

    @given(turns=st.lists(turn_ids, min_size=1, max_size=30, unique=True), capacity=st.integers(1, 5))
    def test_evictionByInsertionOrder(self, turns: list[str], capacity: int) -> None:
        """
        Adding distinct turns keeps exactly the last C{capacity} of them.
        """
        revoked = RevokedSet(clock_at(NOW), capacity)
        for turn_id in turns:
            revoked.add(turn_id, NOW)
        kept = [t for t in turns if revoked.contains(t)]
        self.assertEqual(kept, turns[-capacity:])


class RevokedMachine(RuleBasedStateMachine):
    """
    Revocations, clock steps and prunes interleaved, checked against L{ReferenceModel}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = clock_at(NOW)
        self.revoked = RevokedSet(self.clock, capacity=4)
        self.model = ReferenceModel(4)

    @rule(turn_id=turn_ids, exp=exps)
    def add(self, turn_id: str, exp: int) -> None:
        """
        Revoke a turn; C{evicted_live} agrees with the model.
        """
        now = int(self.clock.seconds())
        assert self.revoked.add(turn_id, exp) == self.model.add(turn_id, exp, now)

    @rule(seconds=st.floats(0, 3))
    def advance(self, seconds: float) -> None:
        """
        Time passes.
        """
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.revoked) > 0)
    @rule()
    def prune(self) -> None:
        """
        The pruner runs.
        """
        now = int(self.clock.seconds())
        before = len(self.model.entries)
        self.model.prune(now)
        assert self.revoked.prune() == before - len(self.model.entries)

    @invariant()
    def same_entries(self) -> None:
        """
        The set and the model agree on size and membership, within capacity.
        """
        assert len(self.revoked) == len(self.model.entries) <= 4
        for turn_id, _ in self.model.entries:
            assert self.revoked.contains(turn_id)


class RevokedMachineTests(SynchronousTestCase):
    """
    Runs L{RevokedMachine}.
    """

    def test_stateMachine(self) -> None:
        """
        Interleaved adds, clock steps and prunes keep the invariants of §7.3.
        """
        run_state_machine_as_test(RevokedMachine, settings=settings(max_examples=150, deadline=None))
