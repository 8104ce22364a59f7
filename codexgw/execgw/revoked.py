"""
The revoked turns (C{exec-gateway.md} §7.3): a bounded FIFO of C{turn_id → exp}.

A revoked turn's cap tokens are refused on C{/bridge} (§4.3 step 4). The set is bounded so that a
flood of revocations cannot exhaust memory; when full, the oldest entry by insertion order goes, and
L{RevokedSet.add} reports whether that entry was still live (its tokens become usable again until they
expire, which the caller logs as C{revoke.evicted_live}).

Times are whole Unix seconds of the injected clock (§3 "Clock"): C{now = int(clock.seconds())}.

Decisions where the spec is silent:
 - Re-adding a present turn keeps the exp given last, even if it is earlier than the stored one: the
   caller's newest word wins, as "update C{exp}" reads.
 - L{RevokedSet.prune} returns how many entries it removed, for logs and tests.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from twisted.internet.interfaces import IReactorTime

#: Entries kept at most (§9.1).
DEFAULT_CAPACITY: Final = 10_000


class RevokedSet:
    """
    Revoked turn ids with their expiry, oldest first; O(1) L{add} and L{contains}.
    """

    def __init__(self, clock: IReactorTime, capacity: int = DEFAULT_CAPACITY) -> None:
        """
        @param clock: the source of C{now} for L{add}'s liveness check and L{prune}.
        @param capacity: the most entries kept; at least 1.
        """
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._clock = clock
        self.capacity = capacity
        # Insertion order is eviction order; move_to_end makes a re-added turn the newest.
        self._entries: OrderedDict[str, int] = OrderedDict()

    def _now(self) -> int:
        return int(self._clock.seconds())

    def add(self, turn_id: str, exp: int) -> bool:
        """
        Revoke C{turn_id} until C{exp} (Unix seconds).

        A present turn gets the new C{exp} and becomes the newest entry. Otherwise, while the set is
        full, the oldest entry is evicted, then the turn is appended.

        @return: C{True} if an evicted entry was still live (C{exp > now}); C{False} otherwise,
            including for a turn that was already present.
        """
        if turn_id in self._entries:
            self._entries[turn_id] = exp
            self._entries.move_to_end(turn_id)
            return False
        evicted_live = False
        if len(self._entries) >= self.capacity:
            now = self._now()
            while len(self._entries) >= self.capacity:
                _, evicted_exp = self._entries.popitem(last=False)
                evicted_live = evicted_live or evicted_exp > now
        self._entries[turn_id] = exp
        return evicted_live

    def contains(self, turn_id: str) -> bool:
        """
        Return whether C{turn_id} is revoked, whatever its C{exp} (expired entries wait for L{prune}).
        """
        return turn_id in self._entries

    __contains__ = contains

    def prune(self) -> int:
        """
        Remove the entries with C{exp < now}; the gateway runs this every 60 s.

        @return: how many entries were removed.
        """
        now = self._now()
        stale = [turn_id for turn_id, exp in self._entries.items() if exp < now]
        for turn_id in stale:
            del self._entries[turn_id]
        return len(stale)

    def __len__(self) -> int:
        return len(self._entries)
