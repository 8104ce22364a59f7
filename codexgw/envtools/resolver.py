"""
The name resolver (C{envtools.md} §5): environment names → exe ids, from the front-end's resolver
source (C{list()}, §1.3), cached for 10 s on an injected clock.

The cache holds the last successful list and its name → exe id map. It is fresh for 10 s after the
last refresh attempt ended, failed attempts included. Refreshes are single-flight: callers that
arrive while a C{list()} is in flight share its outcome.

Decisions where the spec is silent:
 - An entry is used only when C{exe_id} and C{name} are non-empty strings; C{description} that is not
   a string counts as empty, C{is_default} is true only for C{true}, C{last_seen_at} is kept only when
   it is a string. Entries that are not objects are skipped.
 - When two entries carry the same name, the first in binding order wins.
 - A refresh that failed while the (older) cache lacks the name answers C{refresh: <error>}, as when
   nothing is cached: the name could not be checked, and the error says why.
 - Freshness runs from the end of the attempt (when its outcome is known).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from codexgw.envtools.interfaces import ExecutorEntry, IResolver, IResolverSource, ResolveError

#: Seconds a listing stays fresh (§5, §9).
FRESHNESS: Final = 10.0


def executor_entries(raw: Iterable[Any]) -> list[ExecutorEntry]:
    """
    The usable entries of a resolver source's list, in order (see the module docstring for what is
    skipped).
    """
    entries = []
    for item in raw:
        if not isinstance(item, dict):
            continue
        exe_id = item.get("exe_id")
        name = item.get("name")
        if not isinstance(exe_id, str) or not isinstance(name, str) or not exe_id or not name:
            continue
        description = item.get("description")
        last_seen_at = item.get("last_seen_at")
        entries.append(
            ExecutorEntry(
                exe_id=exe_id,
                name=name,
                description=description if isinstance(description, str) else "",
                is_default=item.get("is_default") is True,
                last_seen_at=last_seen_at if isinstance(last_seen_at, str) else None,
                raw=dict(item),
            )
        )
    return entries


@implementer(IResolver)
class Resolver:
    """
    Environment names → exe ids over an L{IResolverSource}.

    @ivar entries: the last successful listing (usable entries only), or C{None} before the first.
    """

    def __init__(
        self, source: IResolverSource, clock: IReactorTime, freshness: float = FRESHNESS
    ) -> None:
        """
        @param source: the front-end's resolver source.
        @param clock: what freshness is measured on.
        @param freshness: seconds a listing stays fresh.
        """
        self._source = source
        self._clock = clock
        self._freshness = freshness
        self.entries: list[ExecutorEntry] | None = None
        self._names: dict[str, str] = {}
        self._attempted_at: float | None = None
        self._waiters: list[Deferred[list[ExecutorEntry]]] | None = None

    def resolve(self, name: str) -> Deferred[str]:
        """
        See L{IResolver.resolve} and §5.
        """
        return Deferred.fromCoroutine(self._resolve(name))

    async def _resolve(self, name: str) -> str:
        if not name:
            raise ResolveError("env name required")
        if self._fresh() and name in self._names:
            return self._names[name]
        try:
            await self.refresh()
        except CancelledError:
            raise
        except Exception as e:
            if name in self._names:
                return self._names[name]
            raise ResolveError(f"refresh: {e}") from None
        if name in self._names:
            return self._names[name]
        raise ResolveError(
            f'no environment named "{name}" (run list_environments to see what\'s available)'
        )

    def refresh(self) -> Deferred[list[ExecutorEntry]]:
        """
        See L{IResolver.refresh}: joins the listing in flight, else starts one.
        """
        first = self._waiters is None
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters

        def cancel(d: Deferred[list[ExecutorEntry]]) -> None:
            if d in waiters:
                waiters.remove(d)

        waiter: Deferred[list[ExecutorEntry]] = Deferred(cancel)
        waiters.append(waiter)
        if first:
            maybeDeferred(self._source.list).addCallbacks(self._listed, self._list_failed)
        return waiter

    def _fresh(self) -> bool:
        return (
            self._attempted_at is not None
            and self._clock.seconds() - self._attempted_at < self._freshness
        )

    def _listed(self, raw: Any) -> None:
        try:
            entries = executor_entries(raw)
        except TypeError as e:  # not a list at all
            self._list_failed(Failure(e))
            return
        names: dict[str, str] = {}
        for entry in entries:
            names.setdefault(entry.name, entry.exe_id)
        self.entries = entries
        self._names = names
        self._attempted_at = self._clock.seconds()
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.callback(list(entries))

    def _list_failed(self, failure: Failure) -> None:
        self._attempted_at = self._clock.seconds()
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            waiter.errback(failure.value)
