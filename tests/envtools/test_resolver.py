"""
Tests for L{codexgw.envtools.resolver}: environment names → exe ids over a resolver source, on a
L{Clock} (C{envtools.md} §5, acceptance criterion 11).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.envtools.interfaces import ExecutorEntry, IResolver, IResolverSource, ResolveError
from codexgw.envtools.resolver import FRESHNESS, Resolver, executor_entries
from codexgw.testing.fakebridge import FakeExecGateway

UNKNOWN = 'no environment named "{}" (run list_environments to see what\'s available)'


class ResolverTests(SynchronousTestCase):
    """
    L{Resolver} over the fake gateway's resolver source.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.gateway = FakeExecGateway()
        self.gateway.add_executor("exe_1", "box", is_default=True)
        self.gateway.add_executor("exe_2", "laptop")
        self.source = self.gateway.resolver_source()
        self.resolver = Resolver(self.source, self.clock)

    def resolved(self, name: str) -> str:
        """
        The exe id C{name} resolves to, at once.
        """
        return self.successResultOf(self.resolver.resolve(name))

    def error(self, name: str) -> str:
        """
        The text C{name} fails to resolve with, at once.
        """
        return str(self.failureResultOf(self.resolver.resolve(name), ResolveError).value)

    def test_provides_interface(self) -> None:
        """
        The resolver provides L{IResolver}; the fake source L{IResolverSource}.
        """
        self.assertTrue(verifyObject(IResolver, self.resolver))
        self.assertTrue(verifyObject(IResolverSource, self.source))

    def test_concurrent_resolves_share_one_list(self) -> None:
        """
        3 concurrent resolves → 1 C{list()}.
        """
        self.source.hold = True
        pending = [self.resolver.resolve(name) for name in ("box", "laptop", "box")]
        self.assertEqual(self.source.calls, 1)
        for d in pending:
            self.assertNoResult(d)
        self.source.release()
        self.assertEqual([self.successResultOf(d) for d in pending], ["exe_1", "exe_2", "exe_1"])
        self.assertEqual(self.source.calls, 1)

    def test_cached_for_10_s(self) -> None:
        """
        Answers stay cached 10 s after the listing; then the next resolve lists again.
        """
        self.assertEqual(FRESHNESS, 10.0)
        self.assertEqual(self.resolved("box"), "exe_1")
        self.clock.advance(9.9)
        self.gateway.add_executor("exe_3", "box-moved")
        self.assertEqual(self.resolved("laptop"), "exe_2")
        self.assertEqual(self.source.calls, 1)
        self.clock.advance(0.1)
        self.gateway.remove_executor("exe_2")
        self.assertEqual(self.error("laptop"), UNKNOWN.format("laptop"))
        self.assertEqual(self.source.calls, 2)

    def test_unknown_name_forces_refresh(self) -> None:
        """
        A name missing from a fresh cache forces a refresh, which may find it.
        """
        self.resolved("box")
        self.gateway.add_executor("exe_3", "new")
        self.assertEqual(self.resolved("new"), "exe_3")
        self.assertEqual(self.source.calls, 2)

    def test_unknown_name(self) -> None:
        """
        A refresh without the name → the exact text.
        """
        self.assertEqual(self.error("nope"), UNKNOWN.format("nope"))
        self.assertEqual(
            self.error("nope"),
            'no environment named "nope" (run list_environments to see what\'s available)',
        )

    def test_empty_name(self) -> None:
        """
        An empty name → C{env name required}, without a listing.
        """
        self.assertEqual(self.error(""), "env name required")
        self.assertEqual(self.source.calls, 0)

    def test_failing_refresh_serves_cache(self) -> None:
        """
        A failing refresh serves the cached value; the failure restarts the 10 s.
        """
        self.resolved("box")
        self.clock.advance(10)
        self.source.error = RuntimeError("HTTP 502: bad gateway")
        self.assertEqual(self.resolved("box"), "exe_1")
        self.assertEqual(self.source.calls, 2)
        self.clock.advance(9.9)
        self.assertEqual(self.resolved("laptop"), "exe_2")
        self.assertEqual(self.source.calls, 2)

    def test_failing_refresh_without_name(self) -> None:
        """
        A failing refresh when the cache lacks the name → C{refresh: <error>}.
        """
        self.resolved("box")
        self.source.error = RuntimeError("HTTP 502: bad gateway")
        self.assertEqual(self.error("other"), "refresh: HTTP 502: bad gateway")

    def test_failure_with_empty_cache(self) -> None:
        """
        A failure with an empty cache → C{refresh: <error>}.
        """
        self.source.error = RuntimeError("decode: not a JSON array")
        self.assertEqual(self.error("box"), "refresh: decode: not a JSON array")

    def test_empty_names_skipped(self) -> None:
        """
        Entries with an empty name are skipped everywhere.
        """
        self.gateway.add_executor("exe_0", "")
        entries = self.successResultOf(self.resolver.refresh())
        self.assertEqual([e.exe_id for e in entries], ["exe_1", "exe_2"])
        self.assertEqual(self.error("nothing"), UNKNOWN.format("nothing"))

    def test_refresh_always_lists(self) -> None:
        """
        C{refresh()} lists even when the cache is fresh, and joins a listing in flight.
        """
        self.successResultOf(self.resolver.refresh())
        self.successResultOf(self.resolver.refresh())
        self.assertEqual(self.source.calls, 2)
        self.source.hold = True
        first = self.resolver.refresh()
        resolving = self.resolver.resolve("laptop")
        second = self.resolver.refresh()
        self.assertEqual(self.source.calls, 3)
        self.source.release()
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.successResultOf(resolving), "exe_2")

    def test_refresh_entries(self) -> None:
        """
        C{refresh()} returns the entries in binding order, with their fields.
        """
        entries = self.successResultOf(self.resolver.refresh())
        self.assertEqual(
            entries[0],
            ExecutorEntry(
                exe_id="exe_1",
                name="box",
                description="",
                is_default=True,
                last_seen_at=None,
                raw={"exe_id": "exe_1", "name": "box", "description": "", "is_default": True},
            ),
        )
        self.assertEqual(self.resolver.entries, entries)

    def test_refresh_failure_is_the_sources(self) -> None:
        """
        C{refresh()} fails with the source's error itself.
        """
        error = RuntimeError("HTTP 500: oops")
        self.source.error = error
        self.assertIs(self.failureResultOf(self.resolver.refresh()).value, error)

    def test_first_name_wins(self) -> None:
        """
        When two entries share a name, the first in binding order wins.
        """
        self.gateway.add_executor("exe_3", "box")
        self.assertEqual(self.resolved("box"), "exe_1")

    def test_source_raising(self) -> None:
        """
        A source that raises instead of failing its Deferred is a failed refresh.
        """

        def raising() -> Deferred[Any]:
            raise RuntimeError("broken")

        self.assertEqual(
            self.error_of(Resolver(StubSource(raising), self.clock), "box"), "refresh: broken"
        )

    def test_failed_source_deferred(self) -> None:
        """
        A source whose Deferred has failed already is a failed refresh too.
        """
        source = StubSource(lambda: fail(ValueError("x")))
        self.assertEqual(self.error_of(Resolver(source, self.clock), "a"), "refresh: x")

    def test_not_a_list(self) -> None:
        """
        A source answering something else than a list is a failed refresh.
        """
        source = StubSource(lambda: succeed(None))
        self.assertTrue(self.error_of(Resolver(source, self.clock), "box").startswith("refresh: "))

    def test_cancelled_resolve(self) -> None:
        """
        A cancelled resolve leaves the listing to the others.
        """
        self.source.hold = True
        first = self.resolver.resolve("box")
        second = self.resolver.resolve("box")
        first.cancel()
        self.failureResultOf(first)
        self.source.release()
        self.assertEqual(self.successResultOf(second), "exe_1")

    def error_of(self, resolver: Resolver, name: str) -> str:
        """
        The text C{name} fails to resolve with on C{resolver}, at once.
        """
        return str(self.failureResultOf(resolver.resolve(name), ResolveError).value)


@implementer(IResolverSource)
class StubSource:
    """
    A resolver source whose C{list()} is the given function.
    """

    def __init__(self, answer: Callable[[], Deferred[Any]]) -> None:
        self.answer = answer

    def list(self) -> Deferred[Any]:
        """
        See L{IResolverSource.list}.
        """
        return self.answer()


class ExecutorEntriesTests(SynchronousTestCase):
    """
    L{executor_entries}: which listed objects are used, and how.
    """

    def test_fields(self) -> None:
        """
        Fields are taken as listed; wrong types count as absent; extra members are kept in C{raw}.
        """
        raw = {
            "exe_id": "exe_1",
            "name": "box",
            "description": "the box",
            "is_default": True,
            "last_seen_at": "2026-05-01T00:00:00Z",
            "extra": 1,
        }
        [entry] = executor_entries([raw])
        self.assertEqual(
            (entry.exe_id, entry.name, entry.description, entry.is_default, entry.last_seen_at),
            ("exe_1", "box", "the box", True, "2026-05-01T00:00:00Z"),
        )
        self.assertEqual(entry.raw, raw)
        [odd] = executor_entries(
            [{"exe_id": "e", "name": "n", "description": 5, "is_default": "yes", "last_seen_at": 7}]
        )
        self.assertEqual((odd.description, odd.is_default, odd.last_seen_at), ("", False, None))

    def test_skipped(self) -> None:
        """
        Non-objects and entries without a non-empty string C{exe_id} and C{name} are skipped.
        """
        entries = executor_entries(
            [
                "x",
                None,
                {"exe_id": "e1", "name": ""},
                {"exe_id": "", "name": "a"},
                {"exe_id": 5, "name": "b"},
                {"name": "c"},
                {"exe_id": "e2", "name": None},
                {"exe_id": "e3", "name": "ok"},
            ]
        )
        self.assertEqual([e.exe_id for e in entries], ["e3"])
