"""
Tests for L{codexgw.execgw.store} (C{exec-gateway.md} §8; acceptance items 3, 5–8, 92, 93).

 - L{StoreTestsMixin}: the one shared L{IStore} suite, run against SQLite (file and C{:memory:}),
   PostgreSQL (the harness's throwaway cluster, a fresh database per test) and L{FakeStore}.
 - L{MigrationTestsMixin}: migrations on both engines (fresh database, re-run, unknown version, the
   002 backfill, NULL storage, index names).
 - URL parsing, redaction, timestamps and statement splitting (pure functions).
 - SQLite specifics (file and directory modes, WAL, timestamp text, worker thread).
 - PostgreSQL connection handling, through a TCP proxy on 127.0.0.1 that can blackhole or drop
   connections: closed port, blackholed server, dropped and terminated connections, cancellation.
 - A property test: the real SQLite SQL and the fake agree with a model of the registry.

The store's clock is a L{Clock}; the PostgreSQL and SQLite stores do their I/O on the real reactor,
and every test that uses it is bounded by the class's C{timeout} and by explicit deadlines.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import stat
import threading
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from txpostgres.psycopg2_impl import psycopg2
from zope.interface.verify import verifyObject

from codexgw.config import ConfigError
from codexgw.execgw import dburl
from codexgw.execgw.store import (
    DEFAULT_DATABASE_URL,
    MEMORY,
    BindConflict,
    DatabaseURL,
    DuplicateExecutor,
    ExecutorRecord,
    IStore,
    StoreError,
    StoreUnavailable,
    UnknownMigration,
    WorkspaceExecutor,
    open_store,
    parse_database_url,
    utc_now,
)
from codexgw.execgw.store.migrations import Engine, load_migrations
from codexgw.execgw.store.postgres import (
    PoolState,
    PostgresStore,
    open_postgres_store,
    reconnect_delays,
    redact,
)
from codexgw.execgw.store.sqlite import (
    SQLiteDatabase,
    SQLiteStore,
    format_timestamp,
    parse_timestamp,
    split_statements,
)
from codexgw.testing.fakestore import FakeStore
from tests.support import postgres_dsn

reactor = cast(IReactorTime, _reactor)

# The mixins below call TestCase methods; only the type checker needs to know it.
if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object

#: The store clock's start: 2026-05-20T00:00:00Z plus a fraction with six significant digits.
T0 = 1_779_235_200.123456

#: Both migration versions, in order.
VERSIONS = ["001_executors.sql", "002_workspace_executor_name.sql"]


def at(seconds: float) -> datetime:
    """
    The UTC datetime C{seconds} after the epoch.
    """
    return datetime.fromtimestamp(seconds, UTC)


def record(exe_id: str, **changes: Any) -> ExecutorRecord:
    """
    An executor record registered at L{T0}, with C{changes} applied.
    """
    fields: dict[str, Any] = {
        "exe_id": exe_id,
        "user_id": "usr_1",
        "display_name": "laptop",
        "description": "my laptop",
        "default_cwd": "/home/me",
        "registered_at": at(T0),
        "last_seen_at": None,
    }
    fields.update(changes)
    return ExecutorRecord(**fields)


def capture_events(case: TestCase) -> list[LogEvent]:
    """
    Collect every event logged until C{case} ends.
    """
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


def names(bindings: list[WorkspaceExecutor]) -> list[str]:
    """
    The C{exe_id}s of C{bindings}, in order.
    """
    return [binding.exe_id for binding in bindings]


# -------------------------------------------------------------------------------------------------
# The shared IStore suite


class StoreTestsMixin(_Base):
    """
    The interface tests every L{IStore} passes. Subclasses implement L{make_store}.
    """

    clock: Clock

    def setUp(self) -> None:
        """
        Start the store clock at L{T0}.
        """
        self.clock = Clock()
        self.clock.advance(T0)

    async def make_store(self) -> IStore:
        """
        Open an empty store whose clock is C{self.clock}, closed again when the test ends.
        """
        raise NotImplementedError

    async def store_with(self, *exe_ids: str) -> IStore:
        """
        Open a store holding executors C{exe_ids}.
        """
        store = await self.make_store()
        for exe_id in exe_ids:
            await store.create_executor(record(exe_id), f"hash-{exe_id}")
        return store

    async def test_provides_interface(self) -> None:
        """
        The store provides L{IStore}.
        """
        store = await self.make_store()
        self.assertTrue(verifyObject(IStore, store))

    async def test_absent_executor(self) -> None:
        """
        An unknown executor reads as C{None}, and so does its token hash.
        """
        store = await self.make_store()
        self.assertIsNone(await store.get_executor("exe_nope"))
        self.assertIsNone(await store.get_registration_token_hash("exe_nope"))

    async def test_create_and_get(self) -> None:
        """
        A created executor reads back equal, its datetimes in UTC with microseconds, whatever zone
        they were given in; the token hash is stored.
        """
        store = await self.make_store()
        plus_two = timezone(timedelta(hours=2))
        registered = datetime(2026, 5, 20, 12, 30, 45, 123456, tzinfo=plus_two)
        seen = datetime(2026, 5, 20, 13, 0, 0, 654321, tzinfo=plus_two)
        await store.create_executor(
            record("exe_1", registered_at=registered, last_seen_at=seen), "$2b$10$hash"
        )
        got = await store.get_executor("exe_1")
        self.assertEqual(
            got,
            record("exe_1", registered_at=registered.astimezone(UTC), last_seen_at=seen.astimezone(UTC)),
        )
        assert got is not None
        self.assertEqual(got.registered_at.utcoffset(), timedelta(0))
        self.assertEqual(got.registered_at.microsecond, 123456)
        assert got.last_seen_at is not None
        self.assertEqual(got.last_seen_at.utcoffset(), timedelta(0))
        self.assertEqual(await store.get_registration_token_hash("exe_1"), "$2b$10$hash")

    async def test_empty_text_fields(self) -> None:
        """
        Empty display name, description and default cwd read back as C{""}.
        """
        store = await self.make_store()
        await store.create_executor(
            record("exe_1", display_name="", description="", default_cwd=""), "h"
        )
        got = await store.get_executor("exe_1")
        assert got is not None
        self.assertEqual((got.display_name, got.description, got.default_cwd), ("", "", ""))

    async def test_duplicate_executor(self) -> None:
        """
        Creating an existing C{exe_id} fails with L{DuplicateExecutor} and changes nothing.
        """
        store = await self.store_with("exe_1")
        await self.assertFailure(
            store.create_executor(record("exe_1", user_id="usr_2"), "other"), DuplicateExecutor
        )
        got = await store.get_executor("exe_1")
        assert got is not None
        self.assertEqual(got.user_id, "usr_1")
        self.assertEqual(await store.get_registration_token_hash("exe_1"), "hash-exe_1")

    async def test_naive_datetime_refused(self) -> None:
        """
        A naive C{registered_at} fails the call with L{ValueError}; nothing is stored.
        """
        store = await self.make_store()
        naive = datetime(2026, 5, 20, 12, 0, 0)
        await self.assertFailure(
            store.create_executor(record("exe_1", registered_at=naive), "h"), ValueError
        )
        self.assertIsNone(await store.get_executor("exe_1"))

    async def test_update_last_seen(self) -> None:
        """
        C{update_last_seen} stores the store clock's now, to the microsecond; listings show it.
        """
        store = await self.store_with("exe_1")
        await store.bind_workspace_executor("w", "exe_1", "one", "", False)
        self.clock.advance(1.000002)
        await store.update_last_seen("exe_1")
        expected = utc_now(self.clock)
        got = await store.get_executor("exe_1")
        assert got is not None
        self.assertEqual(got.last_seen_at, expected)
        [binding] = await store.list_workspace_executors("w")
        self.assertEqual(binding.last_seen_at, expected)

    async def test_update_last_seen_absent(self) -> None:
        """
        C{update_last_seen} of an unknown executor is a silent no-op.
        """
        store = await self.make_store()
        await store.update_last_seen("exe_nope")
        self.assertIsNone(await store.get_executor("exe_nope"))

    async def test_delete_cascades(self) -> None:
        """
        Deleting an executor removes it and, by cascade, all its bindings; other executors stay.
        """
        store = await self.store_with("exe_1", "exe_2")
        await store.bind_workspace_executor("w1", "exe_1", "one", "", True)
        await store.bind_workspace_executor("w2", "exe_1", "one", "", False)
        await store.bind_workspace_executor("w1", "exe_2", "two", "", False)
        await store.delete_executor("exe_1")
        self.assertIsNone(await store.get_executor("exe_1"))
        self.assertIsNone(await store.get_registration_token_hash("exe_1"))
        self.assertEqual(names(await store.list_workspace_executors("w1")), ["exe_2"])
        self.assertEqual(await store.list_workspace_executors("w2"), [])
        self.assertFalse(await store.owns_executor("w1", "exe_1"))

    async def test_delete_absent_is_noop(self) -> None:
        """
        Deleting an unknown executor, or the same one twice, is a no-op.
        """
        store = await self.store_with("exe_1")
        await store.delete_executor("exe_nope")
        await store.delete_executor("exe_1")
        await store.delete_executor("exe_1")
        self.assertIsNone(await store.get_executor("exe_1"))

    async def test_bind_and_list(self) -> None:
        """
        A binding lists with its name, description, default flag and the executor's last seen.
        """
        store = await self.store_with("exe_1")
        await store.bind_workspace_executor("w", "exe_1", "laptop", "the laptop", True)
        self.assertEqual(
            await store.list_workspace_executors("w"),
            [WorkspaceExecutor("exe_1", "laptop", "the laptop", True, None)],
        )

    async def test_list_empty(self) -> None:
        """
        A workspace without bindings lists as C{[]}.
        """
        store = await self.store_with("exe_1")
        self.assertEqual(await store.list_workspace_executors("w"), [])

    async def test_list_ordered_by_creation(self) -> None:
        """
        Bindings list in the order they were created (store clock), not by id or name.
        """
        store = await self.store_with("exe_a", "exe_b", "exe_c")
        for exe_id, name in (("exe_c", "a"), ("exe_a", "c"), ("exe_b", "b")):
            await store.bind_workspace_executor("w", exe_id, name, "", False)
            self.clock.advance(0.000001)
        self.assertEqual(names(await store.list_workspace_executors("w")), ["exe_c", "exe_a", "exe_b"])

    async def test_list_ties_by_exe_id(self) -> None:
        """
        Bindings created at the same instant list by C{exe_id} in code point order, whatever the
        database's collation (upper case before lower case, ASCII before accented letters).
        """
        ids = ["exe_é", "exe_b", "exe_B", "exe_a"]
        store = await self.store_with(*ids)
        for index, exe_id in enumerate(ids):
            await store.bind_workspace_executor("w", exe_id, f"n{index}", "", False)
        self.assertEqual(
            names(await store.list_workspace_executors("w")), ["exe_B", "exe_a", "exe_b", "exe_é"]
        )

    async def test_rebind_updates_in_place(self) -> None:
        """
        Binding an already bound executor updates name, description and default flag and keeps its
        creation time, so its position in the listing.
        """
        store = await self.store_with("exe_1", "exe_2")
        await store.bind_workspace_executor("w", "exe_1", "one", "first", False)
        self.clock.advance(1)
        await store.bind_workspace_executor("w", "exe_2", "two", "", False)
        self.clock.advance(1)
        await store.bind_workspace_executor("w", "exe_1", "uno", "renamed", True)
        self.assertEqual(
            await store.list_workspace_executors("w"),
            [
                WorkspaceExecutor("exe_1", "uno", "renamed", True, None),
                WorkspaceExecutor("exe_2", "two", "", False, None),
            ],
        )

    async def test_rebind_same_name(self) -> None:
        """
        Re-binding an executor under its own current name is not a conflict.
        """
        store = await self.store_with("exe_1")
        await store.bind_workspace_executor("w", "exe_1", "one", "", False)
        await store.bind_workspace_executor("w", "exe_1", "one", "again", False)
        [binding] = await store.list_workspace_executors("w")
        self.assertEqual(binding.description, "again")

    async def test_name_conflict(self) -> None:
        """
        A name already used by another executor of the workspace is a L{BindConflict} (for a new
        binding and for a rename); the same name in another workspace is fine.
        """
        store = await self.store_with("exe_1", "exe_2")
        await store.bind_workspace_executor("w", "exe_1", "shared", "", False)
        await self.assertFailure(
            store.bind_workspace_executor("w", "exe_2", "shared", "", False), BindConflict
        )
        await store.bind_workspace_executor("w", "exe_2", "other", "", False)
        await self.assertFailure(
            store.bind_workspace_executor("w", "exe_2", "shared", "", False), BindConflict
        )
        await store.bind_workspace_executor("w2", "exe_2", "shared", "", False)
        self.assertEqual(
            [(b.exe_id, b.name) for b in await store.list_workspace_executors("w")],
            [("exe_1", "shared"), ("exe_2", "other")],
        )

    async def test_bind_unknown_executor(self) -> None:
        """
        Binding an executor that does not exist is a L{BindConflict}; nothing is bound.
        """
        store = await self.make_store()
        await self.assertFailure(
            store.bind_workspace_executor("w", "exe_nope", "x", "", False), BindConflict
        )
        self.assertFalse(await store.owns_executor("w", "exe_nope"))
        self.assertEqual(await store.list_workspace_executors("w"), [])

    async def test_several_defaults(self) -> None:
        """
        Nothing enforces a single default binding per workspace.
        """
        store = await self.store_with("exe_1", "exe_2")
        await store.bind_workspace_executor("w", "exe_1", "one", "", True)
        await store.bind_workspace_executor("w", "exe_2", "two", "", True)
        self.assertEqual([b.is_default for b in await store.list_workspace_executors("w")], [True, True])

    async def test_unbind(self) -> None:
        """
        Unbinding removes the binding only (the executor stays); unbinding again is a no-op.
        """
        store = await self.store_with("exe_1")
        await store.bind_workspace_executor("w", "exe_1", "one", "", False)
        await store.unbind_workspace_executor("w", "exe_1")
        await store.unbind_workspace_executor("w", "exe_1")
        await store.unbind_workspace_executor("w", "exe_nope")
        self.assertEqual(await store.list_workspace_executors("w"), [])
        self.assertIsNotNone(await store.get_executor("exe_1"))

    async def test_owns_executor(self) -> None:
        """
        C{owns_executor} is true exactly for existing bindings.
        """
        store = await self.store_with("exe_1", "exe_2")
        await store.bind_workspace_executor("w", "exe_1", "one", "", False)
        self.assertTrue(await store.owns_executor("w", "exe_1"))
        self.assertFalse(await store.owns_executor("w", "exe_2"))
        self.assertFalse(await store.owns_executor("w2", "exe_1"))

    async def test_connected_intersection(self) -> None:
        """
        C{connected_executors_for_workspace} keeps the bindings whose executor is connected, in
        binding order; no connected executor, or no binding, gives C{[]}.
        """
        store = await self.store_with("exe_1", "exe_2", "exe_3")
        for exe_id in ("exe_3", "exe_1", "exe_2"):
            await store.bind_workspace_executor("w", exe_id, exe_id, "", False)
            self.clock.advance(1)
        connected = ["exe_2", "exe_9", "exe_3"]
        self.assertEqual(
            names(await store.connected_executors_for_workspace("w", connected)), ["exe_3", "exe_2"]
        )
        self.assertEqual(
            names(await store.connected_executors_for_workspace("w", frozenset(connected))),
            ["exe_3", "exe_2"],
        )
        self.assertEqual(await store.connected_executors_for_workspace("w", []), [])
        self.assertEqual(await store.connected_executors_for_workspace("w9", connected), [])

    async def test_ping(self) -> None:
        """
        C{ping} succeeds on a working store.
        """
        store = await self.make_store()
        await store.ping()

    async def test_close(self) -> None:
        """
        C{close} is idempotent; calls after it fail with L{StoreUnavailable}.
        """
        store = await self.make_store()
        await store.close()
        await store.close()
        await self.assertFailure(store.get_executor("exe_1"), StoreUnavailable)
        await self.assertFailure(store.ping(), StoreUnavailable)

    async def test_cancellation_leaves_store_usable(self) -> None:
        """
        Cancelling calls (reads and writes) right after issuing them fails them with
        L{StoreUnavailable} unless they had already finished; the store keeps working afterwards.
        """
        store = await self.store_with("exe_1")
        calls: list[Deferred[Any]] = [
            store.list_workspace_executors("w"),
            store.bind_workspace_executor("w", "exe_1", "one", "", False),
            store.ping(),
            store.get_executor("exe_1"),
            store.update_last_seen("exe_1"),
        ]
        for call in calls:
            call.cancel()
        for call in calls:
            # (not `from contextlib import suppress`: trial reads a module's `suppress` name)
            with contextlib.suppress(StoreUnavailable):
                await call
        await store.bind_workspace_executor("w", "exe_1", "one", "", False)
        self.assertEqual(names(await store.list_workspace_executors("w")), ["exe_1"])
        await store.ping()


class FakeStoreTests(StoreTestsMixin, TestCase):
    """
    The shared suite against L{FakeStore}.
    """

    async def make_store(self) -> IStore:
        """
        A fresh L{FakeStore}.
        """
        return FakeStore(self.clock)


class FakeStoreScriptingTests(SynchronousTestCase):
    """
    The fake's scripting knobs, which the gateway's unit tests rely on.
    """

    def test_calls_recorded(self) -> None:
        """
        Every call is recorded by method name, in order.
        """
        store = FakeStore(Clock())
        store.ping()
        store.get_executor("exe_1")
        store.close()
        self.assertEqual(store.calls, ["ping", "get_executor", "close"])

    def test_failure(self) -> None:
        """
        With C{failure} set, every call fails with it; clearing it restores service.
        """
        store = FakeStore(Clock())
        store.failure = StoreUnavailable("database down")
        self.assertIs(self.failureResultOf(store.ping(), StoreUnavailable).value, store.failure)
        store.failure = None
        self.assertIsNone(self.successResultOf(store.ping()))

    def test_stalled_until_cancelled(self) -> None:
        """
        Stalled calls wait; cancelling one fails it with L{StoreUnavailable}.
        """
        store = FakeStore(Clock())
        store.stalled = True
        call = store.owns_executor("w", "exe_1")
        self.assertNoResult(call)
        call.cancel()
        self.failureResultOf(call, StoreUnavailable)

    def test_stalled_until_resumed(self) -> None:
        """
        C{resume} runs the stalled calls in order; close fails the ones still stalled.
        """
        store = FakeStore(Clock())
        store.stalled = True
        created = store.create_executor(record("exe_1"), "h")
        got = store.get_executor("exe_1")
        store.resume()
        self.assertIsNone(self.successResultOf(created))
        self.assertEqual(self.successResultOf(got), record("exe_1"))
        store.stalled = True
        later = store.ping()
        store.close()
        self.failureResultOf(later, StoreUnavailable)


class SQLiteMemoryStoreTests(StoreTestsMixin, TestCase):
    """
    The shared suite against an in-memory SQLite store.
    """

    timeout = 20

    async def make_store(self) -> IStore:
        """
        A fresh C{sqlite:///:memory:} store.
        """
        store = await open_store("sqlite:///:memory:", 1, reactor, self.clock)
        self.addCleanup(store.close)
        return store


class SQLiteFileStoreTests(StoreTestsMixin, TestCase):
    """
    The shared suite against a SQLite file store.
    """

    timeout = 20

    async def make_store(self) -> IStore:
        """
        A fresh store in a new file under a new directory (relative path).
        """
        store = await open_store(f"sqlite:///{self.mktemp()}/exec.sqlite3", 1, reactor, self.clock)
        self.addCleanup(store.close)
        return store


def admin_connection() -> Any:
    """
    A synchronous autocommit psycopg2 connection to the harness cluster's C{postgres} database.
    """
    connection = psycopg2.connect(postgres_dsn(), connect_timeout=10)
    connection.autocommit = True
    return connection


def fresh_database(case: TestCase) -> str:
    """
    Create an empty database on the harness cluster, dropped when C{case} ends; return its URL.
    """
    name = f"t_{secrets.token_hex(8)}"
    with closing(admin_connection()) as admin:
        admin.cursor().execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with closing(admin_connection()) as admin:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    case.addCleanup(drop)
    return urlsplit(postgres_dsn())._replace(path=f"/{name}").geturl()


def database_name(dsn: str) -> str:
    """
    The database named by the URL C{dsn}.
    """
    return urlsplit(dsn).path.lstrip("/")


class PostgresStoreTests(StoreTestsMixin, TestCase):
    """
    The shared suite against PostgreSQL (a fresh database per test, a pool of two connections).
    """

    timeout = 30

    async def make_store(self) -> IStore:
        """
        A store on a fresh database.
        """
        store = await open_store(fresh_database(self), 2, reactor, self.clock)
        self.addCleanup(store.close)
        return store


# -------------------------------------------------------------------------------------------------
# Migrations, on both engines


class MigrationTestsMixin(_Base):
    """
    Migration tests for an engine. Subclasses give access to one empty database, through the store
    and through a raw synchronous connection.
    """

    clock: Clock

    #: How this engine's C{schema_migrations} table is created.
    schema_migrations_ddl: str

    def setUp(self) -> None:
        """
        Start the store clock at L{T0}.
        """
        self.clock = Clock()
        self.clock.advance(T0)

    def url(self) -> str:
        """
        The C{CXG_DATABASE_URL} of this test's database.
        """
        raise NotImplementedError

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """
        Run C{sql} on a raw connection (committed); return its rows (C{[]} when it returns none).
        """
        raise NotImplementedError

    def engine(self) -> Engine:
        """
        The engine's migration directory name.
        """
        raise NotImplementedError

    async def opened(self) -> IStore:
        """
        Open the store (running the migrations); closed when the test ends.
        """
        store = await open_store(self.url(), 1, reactor, self.clock)
        self.addCleanup(store.close)
        return store

    def versions(self) -> list[str]:
        """
        The versions recorded in C{schema_migrations}, sorted.
        """
        return sorted(str(row[0]) for row in self.raw("SELECT version FROM schema_migrations"))

    async def test_fresh_database(self) -> None:
        """
        A fresh database gets both migrations, recorded with the store clock's time, and logs
        C{store.migration_applied} for each.
        """
        events = capture_events(self)
        await self.opened()
        self.assertEqual(self.versions(), VERSIONS)
        self.assertEqual(
            [e["version"] for e in events if e.get("event") == "store.migration_applied"], VERSIONS
        )
        applied_at = {str(row[0]) for row in self.raw("SELECT applied_at FROM schema_migrations")}
        self.assertEqual(len(applied_at), 1)

    async def test_second_run_applies_nothing(self) -> None:
        """
        Running the migrations again, or opening the database again, applies nothing.
        """
        store = await self.opened()
        assert isinstance(store, SQLiteStore | PostgresStore)
        self.assertEqual(await store.migrate(), [])
        await store.close()
        again = await self.opened()
        assert isinstance(again, SQLiteStore | PostgresStore)
        self.assertEqual(await again.migrate(), [])
        self.assertEqual(self.versions(), VERSIONS)

    async def test_unknown_version(self) -> None:
        """
        A version in C{schema_migrations} that this build does not ship fails the open with
        L{UnknownMigration} and the spec's message.
        """
        store = await self.opened()
        await store.close()
        self.raw(
            "INSERT INTO schema_migrations (version, applied_at)"
            " VALUES ('003_from_the_future.sql', '2026-05-20T00:00:00.000000Z')"
        )
        error = await self.assertFailure(
            open_store(self.url(), 1, reactor, self.clock), UnknownMigration
        )
        self.assertEqual(str(error), "database has unknown migration 003_from_the_future.sql")

    async def test_backfill(self) -> None:
        """
        A binding created under migration 001 only gets the name C{executor-} plus the 8 characters
        after C{exe_}, and an empty description, when 002 runs.
        """
        self.raw(load_migrations(self.engine())[0].sql)
        self.raw(self.schema_migrations_ddl)
        self.raw(
            "INSERT INTO schema_migrations VALUES ('001_executors.sql', '2026-05-20T00:00:00.000000Z')"
        )
        self.raw(
            "INSERT INTO executors (exe_id, user_id, registration_token_hash, registered_at)"
            " VALUES ('exe_0123abcd-4567-4890-abcd-ef0123456789', 'u', 'h',"
            " '2026-05-20T00:00:00.000000Z')"
        )
        self.raw(
            "INSERT INTO workspace_executors (workspace_id, exe_id, is_default, created_at)"
            " VALUES ('w', 'exe_0123abcd-4567-4890-abcd-ef0123456789', TRUE,"
            " '2026-05-20T00:00:00.000000Z')"
        )
        store = await self.opened()
        self.assertEqual(
            await store.list_workspace_executors("w"),
            [
                WorkspaceExecutor(
                    "exe_0123abcd-4567-4890-abcd-ef0123456789", "executor-0123abcd", "", True, None
                )
            ],
        )
        self.assertEqual(self.versions(), VERSIONS)

    async def test_empty_text_stored_as_null(self) -> None:
        """
        Empty display name, description and default cwd are stored as NULL.
        """
        store = await self.opened()
        await store.create_executor(
            record("exe_1", display_name="", description="", default_cwd=""), "h"
        )
        self.assertEqual(
            self.raw("SELECT display_name, description, default_cwd FROM executors"),
            [(None, None, None)],
        )

    async def test_index_names(self) -> None:
        """
        The indexes carry the names of the spec on both engines.
        """
        await self.opened()
        self.assertEqual(
            set(self.index_names()),
            {
                "idx_executors_user",
                "idx_workspace_executors_workspace",
                "uniq_workspace_executors_name",
            },
        )

    def index_names(self) -> list[str]:
        """
        The names of the explicitly created indexes.
        """
        raise NotImplementedError


class SQLiteMigrationTests(MigrationTestsMixin, TestCase):
    """
    Migrations on a SQLite file.
    """

    timeout = 20
    schema_migrations_ddl = (
        "CREATE TABLE schema_migrations (version TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
    )

    def setUp(self) -> None:
        """
        Choose the database file.
        """
        super().setUp()
        self.path = os.path.abspath(self.mktemp())

    def url(self) -> str:
        """
        The absolute form, with four slashes.
        """
        return f"sqlite:///{self.path}"

    def engine(self) -> Engine:
        """
        SQLite.
        """
        return "sqlite"

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """
        Run C{sql} on a separate SQLite connection.
        """
        with closing(sqlite3.connect(self.path, isolation_level=None)) as connection:
            if sql.count(";") > 1:
                connection.executescript(sql)
                return []
            return connection.execute(sql).fetchall()

    def index_names(self) -> list[str]:
        """
        From C{sqlite_master}, without SQLite's automatic indexes.
        """
        rows = self.raw(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
        )
        return [str(row[0]) for row in rows]

    async def test_timestamps_as_text(self) -> None:
        """
        SQLite stores timestamps as C{YYYY-MM-DDTHH:MM:SS.ffffffZ}.
        """
        store = await self.opened()
        await store.create_executor(record("exe_1"), "h")
        await store.bind_workspace_executor("w", "exe_1", "one", "", False)
        self.assertEqual(
            self.raw("SELECT registered_at FROM executors"), [("2026-05-20T00:00:00.123456Z",)]
        )
        self.assertEqual(
            self.raw("SELECT created_at FROM workspace_executors"), [("2026-05-20T00:00:00.123456Z",)]
        )


class PostgresMigrationTests(MigrationTestsMixin, TestCase):
    """
    Migrations on PostgreSQL, plus the advisory lock.
    """

    timeout = 30
    schema_migrations_ddl = (
        "CREATE TABLE schema_migrations"
        " (version TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())"
    )

    def setUp(self) -> None:
        """
        Create this test's database.
        """
        super().setUp()
        self.dsn = fresh_database(self)

    def url(self) -> str:
        """
        The fresh database.
        """
        return self.dsn

    def engine(self) -> Engine:
        """
        PostgreSQL.
        """
        return "postgres"

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """
        Run C{sql} on a synchronous psycopg2 connection in autocommit mode.
        """
        with closing(psycopg2.connect(self.dsn, connect_timeout=10)) as connection:
            connection.autocommit = True
            cursor = connection.cursor()
            cursor.execute(sql)
            return list(cursor.fetchall()) if cursor.description else []

    def index_names(self) -> list[str]:
        """
        From C{pg_indexes}, without the primary keys.
        """
        rows = self.raw(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
            " AND indexname NOT LIKE '%_pkey'"
        )
        return [str(row[0]) for row in rows]

    async def test_concurrent_migrations(self) -> None:
        """
        Two stores opening a fresh database at once both succeed: the advisory lock serializes the
        runs and the second applies nothing.
        """
        opening = [open_store(self.dsn, 1, reactor, self.clock) for _ in range(2)]
        for pending in opening:
            store = await pending
            self.addCleanup(store.close)
        self.assertEqual(self.versions(), VERSIONS)

    async def test_applied_at_is_store_clock(self) -> None:
        """
        C{applied_at} is the store clock's time.
        """
        await self.opened()
        self.assertEqual(self.raw("SELECT DISTINCT applied_at FROM schema_migrations"), [(at(T0),)])


# -------------------------------------------------------------------------------------------------
# Pure functions


class DatabaseURLTests(SynchronousTestCase):
    """
    L{parse_database_url}: the C{CXG_DATABASE_URL} row of C{exec-gateway.md} §2.
    """

    def test_default(self) -> None:
        """
        An empty value means the default, a SQLite file under C{var/}.
        """
        self.assertEqual(parse_database_url(""), DatabaseURL("sqlite", "var/exec-gateway.sqlite3"))
        self.assertEqual(parse_database_url(DEFAULT_DATABASE_URL), parse_database_url(""))

    def test_sqlite_paths(self) -> None:
        """
        Three slashes and a relative path, four for an absolute one, C{:memory:} for in-memory.
        """
        self.assertEqual(parse_database_url("sqlite:///var/x.db").path_or_dsn, "var/x.db")
        self.assertEqual(
            parse_database_url("sqlite:////srv/exec.sqlite3").path_or_dsn, "/srv/exec.sqlite3"
        )
        self.assertEqual(parse_database_url("sqlite:///:memory:").path_or_dsn, MEMORY)

    def test_sqlite_needs_path(self) -> None:
        """
        A SQLite URL without a path gets the spec's message.
        """
        for raw in ("sqlite://", "sqlite:///", "sqlite://host/x", "sqlite:x.db"):
            with self.assertRaises(ConfigError) as caught:
                parse_database_url(raw)
            self.assertEqual(
                str(caught.exception), "CXG_DATABASE_URL: sqlite URL needs a path (sqlite:///PATH)"
            )

    def test_postgres_unchanged(self) -> None:
        """
        Both PostgreSQL schemes give the URL unchanged; the C{repr} hides it.
        """
        for raw in ("postgres://u:pw-secret@h:5432/d?sslmode=disable", "postgresql://h/d"):
            url = parse_database_url(raw)
            self.assertEqual((url.engine, url.path_or_dsn), ("postgres", raw))
            self.assertNotIn("pw-secret", repr(url))

    def test_unsupported_scheme(self) -> None:
        """
        Another scheme gets the spec's message, echoing only the scheme, never the password.
        """
        cases = {
            "mysql://u:pw-secret@h/d": "mysql",
            "POSTGRES://u:pw-secret@h/d": "POSTGRES",
            "postgres:pw-secret@h": "postgres",
            "pw-secret@h/d": "",
            "/var/db.sqlite3": "",
        }
        for raw, scheme in cases.items():
            with self.assertRaises(ConfigError) as caught:
                parse_database_url(raw)
            self.assertEqual(
                str(caught.exception),
                f'CXG_DATABASE_URL: unsupported scheme "{scheme}" (want sqlite, postgres or postgresql)',
            )
            self.assertNotIn("pw-secret", str(caught.exception))

    def test_open_store_bad_url(self) -> None:
        """
        L{open_store} with a bad URL fails with the L{ConfigError}.
        """
        failure = self.failureResultOf(open_store("mysql://h/d", 1, Clock()), ConfigError)
        self.assertIn('unsupported scheme "mysql"', str(failure.value))


class RedactTests(SynchronousTestCase):
    """
    L{redact}: PostgreSQL error messages never show the password.
    """

    def test_userinfo_password(self) -> None:
        """
        The password of the user info is removed, as written and percent-decoded.
        """
        dsn = "postgresql://me:p%40ss-word@h/d"
        self.assertEqual(redact("bad p%40ss-word and p@ss-word\n\there", dsn), "bad *** and *** here")

    def test_query_password(self) -> None:
        """
        A C{password} query parameter is removed too.
        """
        dsn = "postgres://h/d?sslmode=disable&password=q-secret"
        self.assertEqual(redact("x q-secret y", dsn), "x *** y")

    def test_whole_url(self) -> None:
        """
        The URL itself is replaced when a message quotes it.
        """
        dsn = "postgresql://me:s3cret@h/d"
        self.assertEqual(redact(f'invalid "{dsn}"', dsn), 'invalid "<database url>"')

    def test_no_password(self) -> None:
        """
        Without a password only white space is normalized.
        """
        self.assertEqual(redact("a\n\tb", "postgres://h/d"), "a b")


class BackoffTests(SynchronousTestCase):
    """
    L{reconnect_delays}: at once, then 0.5 s doubling to 10 s.
    """

    def test_delays(self) -> None:
        """
        The first nine delays.
        """
        delays = reconnect_delays()
        self.assertEqual(
            [next(delays) for _ in range(9)], [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
        )


class TimestampTests(SynchronousTestCase):
    """
    SQLite's timestamp text.
    """

    def test_format(self) -> None:
        """
        UTC, six fraction digits, C{Z}, four-digit years; any zone is converted.
        """
        self.assertEqual(format_timestamp(at(T0)), "2026-05-20T00:00:00.123456Z")
        self.assertEqual(
            format_timestamp(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)), "0005-01-02T03:04:05.000000Z"
        )
        plus_one = timezone(timedelta(hours=1))
        self.assertEqual(
            format_timestamp(datetime(2026, 1, 1, 0, 30, tzinfo=plus_one)),
            "2025-12-31T23:30:00.000000Z",
        )

    def test_round_trip(self) -> None:
        """
        Parsing gives back the instant, in UTC.
        """
        value = parse_timestamp(format_timestamp(at(T0)))
        self.assertEqual(value, at(T0))
        self.assertEqual(value.tzinfo, UTC)

    def test_naive(self) -> None:
        """
        A naive datetime is refused.
        """
        self.assertRaises(ValueError, format_timestamp, datetime(2026, 1, 1))

    @given(st.datetimes(timezones=st.just(UTC)), st.datetimes(timezones=st.just(UTC)))
    def test_text_order_is_time_order(self, a: datetime, b: datetime) -> None:
        """
        Comparing the texts compares the instants.
        """
        self.assertEqual(format_timestamp(a) < format_timestamp(b), a < b)


class SplitStatementsTests(SynchronousTestCase):
    """
    L{split_statements}.
    """

    def test_split(self) -> None:
        """
        Statements split at C{;}, not inside literals or comments; a trailing comment is kept.
        """
        sql = "-- a; comment\nCREATE TABLE t (x TEXT DEFAULT 'a;b');\nINSERT INTO t VALUES ('c');\n"
        self.assertEqual(
            split_statements(sql),
            [
                "-- a; comment\nCREATE TABLE t (x TEXT DEFAULT 'a;b');",
                "INSERT INTO t VALUES ('c');",
            ],
        )
        self.assertEqual(split_statements("SELECT 1;\n-- end\n"), ["SELECT 1;", "-- end"])

    def test_migrations_split(self) -> None:
        """
        The SQLite migrations split into their statements.
        """
        first, second = load_migrations("sqlite")
        self.assertEqual(len(split_statements(first.sql)), 4)
        self.assertEqual(len(split_statements(second.sql)), 6)

    def test_migration_files(self) -> None:
        """
        Both engines ship the same versions, in file-name order.
        """
        for engine in ("sqlite", "postgres"):
            migrations = load_migrations(engine)
            self.assertEqual([m.version for m in migrations], VERSIONS)


# -------------------------------------------------------------------------------------------------
# SQLite specifics


class SQLiteFileTests(TestCase):
    """
    What only a SQLite file store does: modes, WAL, the worker thread, open failures.
    """

    timeout = 20

    async def test_modes_and_wal(self) -> None:
        """
        Missing parent directories are created with mode 0700, the file with mode 0600, and the
        database is in WAL mode.
        """
        base = os.path.abspath(self.mktemp())
        os.mkdir(base)
        path = os.path.join(base, "a", "b", "exec.sqlite3")
        store = await open_store(f"sqlite:///{path}", 1, reactor, Clock())
        self.addCleanup(store.close)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        for directory in (os.path.join(base, "a"), os.path.join(base, "a", "b")):
            self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        with closing(sqlite3.connect(path)) as raw:
            self.assertEqual(raw.execute("PRAGMA journal_mode").fetchone(), ("wal",))

    async def test_worker_thread_stops(self) -> None:
        """
        The store runs on a dedicated thread that exists while it is open and stops on close.
        """
        path = os.path.abspath(self.mktemp())
        store = await open_store(f"sqlite:///{path}", 1, reactor, Clock())

        def workers() -> list[str]:
            return [t.name for t in threading.enumerate() if path in t.name]

        await store.ping()
        self.assertEqual(len(workers()), 1)
        await store.close()
        self.assertEqual(workers(), [])

    async def test_cannot_open(self) -> None:
        """
        A path below a regular file cannot be created: the open fails with L{StoreUnavailable}.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w"):
            pass
        error = await self.assertFailure(
            open_store(f"sqlite:///{blocker}/db.sqlite3", 1, reactor, Clock()), StoreUnavailable
        )
        self.assertIn("cannot open database", str(error))

    async def test_open_store_accepts_parsed_url(self) -> None:
        """
        L{open_store} takes a parsed URL, from this module or from the configuration's parser.
        """
        for url in (
            parse_database_url("sqlite:///:memory:"),
            dburl.parse_database_url("sqlite:///:memory:"),
        ):
            store = await open_store(url, 1, reactor, Clock())
            await store.ping()
            await store.close()


# -------------------------------------------------------------------------------------------------
# PostgreSQL connection handling


def _abort(protocol: Protocol) -> None:
    """
    Abort C{protocol}'s TCP connection, if it has one.
    """
    if protocol.transport is not None:
        cast(ITCPTransport, protocol.transport).abortConnection()


class _ProxyFront(Protocol):
    """
    The client-facing side of one proxied connection.
    """

    def __init__(self, proxy: TCPProxy) -> None:
        self.proxy = proxy
        self.frozen = False
        self.closed = False
        self.back: _ProxyBack | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        self.proxy.fronts.add(self)
        if self.proxy.mode == "drop":
            _abort(self)
            return
        self.frozen = self.proxy.mode == "blackhole"
        if self.frozen:
            return
        endpoint = TCP4ClientEndpoint(cast(IReactorTCP, _reactor), "127.0.0.1", self.proxy.backend_port)
        connecting = endpoint.connect(Factory.forProtocol(lambda: _ProxyBack(self)))
        connecting.addErrback(lambda _: _abort(self))

    def attached(self, back: _ProxyBack) -> None:
        if self.closed:
            _abort(back)
            return
        self.back = back
        assert back.transport is not None
        for data in self.pending:
            back.transport.write(data)
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        if self.frozen:
            return
        if self.back is None or self.back.transport is None:
            self.pending.append(data)
        else:
            self.back.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.proxy.fronts.discard(self)
        if self.back is not None:
            _abort(self.back)


class _ProxyBack(Protocol):
    """
    The server-facing side of one proxied connection.
    """

    def __init__(self, front: _ProxyFront) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.attached(self)

    def dataReceived(self, data: bytes) -> None:
        if not self.front.frozen and self.front.transport is not None:
            self.front.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _abort(self.front)


class TCPProxy(ServerFactory):
    """
    A TCP proxy on 127.0.0.1 in front of the test PostgreSQL server.

    Modes: C{normal} forwards; C{blackhole} freezes every connection (accepted, never answered, data
    dropped both ways); C{drop} aborts every connection and each new one at once.
    """

    def __init__(self, backend_port: int) -> None:
        self.backend_port = backend_port
        self.mode = "normal"
        self.fronts: set[_ProxyFront] = set()
        self.port: IListeningPort | None = None

    def buildProtocol(self, addr: Any) -> _ProxyFront:
        return _ProxyFront(self)

    def listen(self, case: TestCase) -> int:
        """
        Listen on an ephemeral port of 127.0.0.1 until C{case} ends; return the port.
        """
        self.port = cast(IReactorTCP, _reactor).listenTCP(0, self, interface="127.0.0.1")
        case.addCleanup(self.stop)
        return int(self.port.getHost().port)  # type: ignore[attr-defined]

    def blackhole(self) -> None:
        """
        Freeze every connection, existing and new.
        """
        self.mode = "blackhole"
        for front in self.fronts:
            front.frozen = True

    def drop(self) -> None:
        """
        Abort every connection, and each new one.
        """
        self.mode = "drop"
        for front in list(self.fronts):
            _abort(front)

    def restore(self) -> None:
        """
        Forward new connections again (frozen ones stay frozen).
        """
        self.mode = "normal"

    def stop(self) -> Deferred[None] | None:
        """
        Stop listening and abort every connection.
        """
        for front in list(self.fronts):
            _abort(front)
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()


def with_password(dsn: str, port: int, password: str) -> str:
    """
    C{dsn} pointed at 127.0.0.1:C{port}, with C{password} in its user info.
    """
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    return parts._replace(netloc=f"{user}:{password}@127.0.0.1:{port}").geturl()


def closed_port() -> int:
    """
    A port of 127.0.0.1 that nothing listens on (bound and released).
    """
    with closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class PostgresConnectionTests(TestCase):
    """
    The PostgreSQL store's connection handling against a real server, directly and through
    L{TCPProxy}.
    """

    timeout = 40

    def setUp(self) -> None:
        """
        A fresh database and a store clock.
        """
        self.clock = Clock()
        self.clock.advance(T0)
        self.dsn = fresh_database(self)
        self.events = capture_events(self)

    def logged_text(self) -> str:
        """
        Everything logged during the test, formatted, with the events' C{error} fields.
        """
        return "\n".join(f"{formatEvent(e)} {e.get('error', '')}" for e in self.events)

    def proxy(self) -> tuple[TCPProxy, str]:
        """
        A proxy to the test server and the test database's URL through it, with a password.
        """
        backend = urlsplit(self.dsn).port
        assert backend is not None
        proxy = TCPProxy(backend)
        port = proxy.listen(self)
        return proxy, with_password(self.dsn, port, "pw-secret-42")

    async def open(self, dsn: str, pool_size: int = 2, **timeouts: float) -> PostgresStore:
        """
        Open a store on C{dsn}, closed when the test ends.
        """
        store = await open_postgres_store(dsn, pool_size, reactor, self.clock, **timeouts)
        self.addCleanup(store.close)
        return store

    async def when(
        self, store: PostgresStore, predicate: Callable[[PoolState], bool], deadline: float = 15
    ) -> PoolState:
        """
        Wait, at most C{deadline} seconds, until the pool's state satisfies C{predicate}.
        """
        return await store.when_pool(predicate).addTimeout(deadline, reactor)

    async def test_closed_port(self) -> None:
        """
        A server that refuses connections fails the open at once with C{cannot connect: ...},
        without the password.
        """
        dsn = with_password(self.dsn, closed_port(), "pw-secret-42")
        started = reactor.seconds()
        error = await self.assertFailure(
            open_store(dsn, 2, reactor, self.clock).addTimeout(5, reactor), StoreUnavailable
        )
        self.assertLess(reactor.seconds() - started, 2)
        self.assertTrue(str(error).startswith("cannot connect: "), str(error))
        self.assertNotIn("pw-secret-42", str(error))

    async def test_bad_url_redacted(self) -> None:
        """
        A URL libpq rejects (and quotes) fails the open without showing the password.
        """
        dsn = f"postgresql://u:se%zzcret@127.0.0.1:{closed_port()}/d"
        error = await self.assertFailure(
            open_store(dsn, 1, reactor, self.clock).addTimeout(5, reactor), StoreUnavailable
        )
        self.assertTrue(str(error).startswith("cannot connect: "), str(error))
        self.assertNotIn("se%zzcret", str(error))

    async def test_blackholed_at_open(self) -> None:
        """
        A server that accepts and never answers fails the open after the connect limit.
        """
        proxy, dsn = self.proxy()
        proxy.blackhole()
        started = reactor.seconds()
        error = await self.assertFailure(
            open_postgres_store(dsn, 2, reactor, self.clock, connect_timeout=0.5).addTimeout(5, reactor),
            StoreUnavailable,
        )
        self.assertLess(reactor.seconds() - started, 2)
        self.assertEqual(str(error), "cannot connect: connection timed out after 0.5s")

    async def test_blackholed_after_open(self) -> None:
        """
        When the server stops answering, calls fail within their deadline (the caller's, or the
        store's own), then fail at once once every connection is known down; when the server
        answers again the pool reconnects and calls succeed, without reopening the store.
        """
        proxy, dsn = self.proxy()
        store = await self.open(dsn, connect_timeout=0.5, call_timeout=1.0)
        await store.create_executor(record("exe_1"), "h")
        proxy.blackhole()

        started = reactor.seconds()
        await self.assertFailure(store.ping().addTimeout(0.3, reactor), StoreUnavailable)
        self.assertLess(reactor.seconds() - started, 1.0)
        started = reactor.seconds()
        error = await self.assertFailure(store.get_executor("exe_1"), StoreUnavailable)
        self.assertEqual(str(error), "store call timed out after 1s")
        self.assertLess(reactor.seconds() - started, 2.0)

        await self.when(store, lambda state: state.down == 2)
        call = store.ping()
        self.failureResultOf(call, StoreUnavailable)

        proxy.restore()
        await self.when(store, lambda state: state.live == 2)
        got = await store.get_executor("exe_1")
        self.assertIsNotNone(got)
        self.assertNotIn("pw-secret-42", self.logged_text())

    async def test_server_drops_connections(self) -> None:
        """
        When the server goes away (every connection dropped, new ones refused) the connections are
        detected dead, calls fail at once with L{StoreUnavailable}, and after the server returns
        the pool reconnects by itself.
        """
        proxy, dsn = self.proxy()
        store = await self.open(dsn)
        await store.create_executor(record("exe_1"), "h")
        proxy.drop()
        await self.when(store, lambda state: state.down == 2)
        self.failureResultOf(store.ping(), StoreUnavailable)
        self.failureResultOf(store.get_executor("exe_1"), StoreUnavailable)
        self.assertIn("store.error", [e.get("event") for e in self.events])

        proxy.restore()
        await self.when(store, lambda state: state.live == 2)
        self.assertIsNotNone(await store.get_executor("exe_1"))
        self.assertNotIn("pw-secret-42", self.logged_text())

    async def test_terminated_backends_replaced(self) -> None:
        """
        Backends terminated by the server are detected without a query and replaced.
        """
        store = await self.open(self.dsn)
        await store.create_executor(record("exe_1"), "h")
        with closing(admin_connection()) as admin:
            cursor = admin.cursor()
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database_name(self.dsn),),
            )
            self.assertGreaterEqual(len(cursor.fetchall()), 2)
        await self.when(store, lambda state: state.recoveries == 2 and state.live == 2)
        self.assertIsNotNone(await store.get_executor("exe_1"))

    async def test_cancel_replaces_connection(self) -> None:
        """
        Cancelling a call discards its connection; the next call waits for the replacement
        (instead of failing) and succeeds on it.
        """
        store = await self.open(self.dsn, pool_size=1)
        call = store.ping()
        call.cancel()
        error = self.failureResultOf(call, StoreUnavailable)
        self.assertEqual(str(error.value), "store call cancelled")
        self.assertEqual(store.pool_state, PoolState(live=0, connecting=1, down=0, recoveries=0))
        await store.ping()
        self.assertEqual(store.pool_state, PoolState(live=1, connecting=0, down=0, recoveries=1))

    async def test_calls_queue_for_busy_connections(self) -> None:
        """
        More concurrent calls than connections wait for a free one and all succeed.
        """
        store = await self.open(self.dsn, pool_size=2)
        await store.create_executor(record("exe_1"), "h")
        calls = [store.get_executor("exe_1") for _ in range(10)]
        results = [await call for call in calls]
        self.assertEqual(results, [record("exe_1")] * 10)

    async def test_close_fails_calls_in_flight(self) -> None:
        """
        Closing the store fails the calls still running with L{StoreUnavailable}.
        """
        store = await self.open(self.dsn, pool_size=1)
        running = store.ping()
        waiting = store.ping()
        await store.close()
        self.failureResultOf(running, StoreUnavailable)
        self.failureResultOf(waiting, StoreUnavailable)

    async def test_no_logged_errors(self) -> None:
        """
        Losing connections logs C{store.error} warnings, not unhandled errors.
        """
        proxy, dsn = self.proxy()
        store = await self.open(dsn)
        proxy.drop()
        await self.when(store, lambda state: state.down == 2)
        self.assertEqual([e for e in self.events if e.get("log_failure")], [])
        self.assertEqual(
            {e.get("op") for e in self.events if e.get("event") == "store.error"},
            {"connection", "reconnect"},
        )


# -------------------------------------------------------------------------------------------------
# Property test: the real SQLite SQL and the fake against a model


EXE_IDS = ["exe_a", "exe_B", "exe_c"]
WORKSPACES = ["w1", "w2"]
BINDING_NAMES = ["n1", "n2", "n3"]

_binds = st.tuples(
    st.just("bind"),
    st.sampled_from(WORKSPACES),
    st.sampled_from(EXE_IDS),
    st.sampled_from(BINDING_NAMES),
    st.booleans(),
)

#: One registry operation, preceded by a clock step of 0 or 1 µs (so creation times both tie and
#: differ); binds are the most frequent.
operations = st.tuples(
    st.integers(min_value=0, max_value=1),
    st.one_of(
        _binds,
        _binds,
        st.tuples(st.just("create"), st.sampled_from(EXE_IDS)),
        st.tuples(st.just("unbind"), st.sampled_from(WORKSPACES), st.sampled_from(EXE_IDS)),
        st.tuples(st.just("delete"), st.sampled_from(EXE_IDS)),
        st.tuples(st.just("seen"), st.sampled_from(EXE_IDS)),
    ),
)


class _Model:
    """
    The registry as plain data: what every store must agree with.
    """

    def __init__(self) -> None:
        self.seen: dict[str, datetime | None] = {}
        self.bindings: dict[tuple[str, str], tuple[str, bool, datetime]] = {}

    def expected_error(self, operation: tuple[Any, ...]) -> type[StoreError] | None:
        kind = operation[0]
        if kind == "create" and operation[1] in self.seen:
            return DuplicateExecutor
        if kind == "bind":
            _, workspace, exe_id, name, _ = operation
            if exe_id not in self.seen:
                return BindConflict
            for (other_ws, other), (other_name, _, _) in self.bindings.items():
                if other_ws == workspace and other != exe_id and other_name == name:
                    return BindConflict
        return None

    def apply(self, operation: tuple[Any, ...], now: datetime) -> None:
        kind = operation[0]
        if kind == "create":
            self.seen[operation[1]] = None
        elif kind == "bind":
            _, workspace, exe_id, name, default = operation
            old = self.bindings.get((workspace, exe_id))
            self.bindings[(workspace, exe_id)] = (name, default, now if old is None else old[2])
        elif kind == "unbind":
            self.bindings.pop((operation[1], operation[2]), None)
        elif kind == "delete":
            self.seen.pop(operation[1], None)
            for key in [key for key in self.bindings if key[1] == operation[1]]:
                del self.bindings[key]
        elif kind == "seen" and operation[1] in self.seen:
            self.seen[operation[1]] = now

    def listing(self, workspace: str) -> list[WorkspaceExecutor]:
        rows = sorted(
            (created, exe_id, name, default)
            for (ws, exe_id), (name, default, created) in self.bindings.items()
            if ws == workspace
        )
        return [
            WorkspaceExecutor(exe_id, name, "", default, self.seen[exe_id])
            for _, exe_id, name, default in rows
        ]


def _sqlite_runner(database: SQLiteDatabase) -> Callable[[tuple[Any, ...], datetime], None]:
    def run(operation: tuple[Any, ...], now: datetime) -> None:
        kind = operation[0]
        if kind == "create":
            database.create_executor(record(operation[1]), "h")
        elif kind == "bind":
            _, workspace, exe_id, name, default = operation
            database.bind_workspace_executor(workspace, exe_id, name, "", default, now=now)
        elif kind == "unbind":
            database.unbind_workspace_executor(operation[1], operation[2])
        elif kind == "delete":
            database.delete_executor(operation[1])
        elif kind == "seen":
            database.update_last_seen(operation[1], now)

    return run


class RegistryPropertyTests(SynchronousTestCase):
    """
    Random sequences of registry operations give the same results and listings on the real SQLite
    SQL (run synchronously on an in-memory database), on L{FakeStore}, and in a plain model: list
    order is binding creation order (injected clock), then C{exe_id}.
    """

    def migrated_memory_database(self, clock: Clock) -> SQLiteDatabase:
        """
        An in-memory database with the migrations applied.
        """
        database = SQLiteDatabase.open(MEMORY)
        database.applied_versions()
        for migration in load_migrations("sqlite"):
            database.apply_migration(migration, utc_now(clock))
        return database

    @settings(deadline=None, max_examples=400)
    @given(st.lists(operations, max_size=30))
    def test_stores_agree_with_model(self, script: list[tuple[int, tuple[Any, ...]]]) -> None:
        """
        After every operation both stores report the model's outcome and listings.
        """
        clock = Clock()
        clock.advance(T0)
        model = _Model()
        fake = FakeStore(clock)
        with closing(self.migrated_memory_database(clock)) as database:
            run_sqlite = _sqlite_runner(database)
            # Every executor exists at first, so most bindings succeed and orders get interesting.
            for step, operation in [(0, ("create", exe_id)) for exe_id in EXE_IDS] + script:
                clock.advance(step / 1_000_000)
                now = utc_now(clock)
                expected = model.expected_error(operation)
                outcomes = [
                    self._error_of(run_sqlite, operation, now),
                    self._error_of(self._run_fake, fake, operation),
                ]
                self.assertEqual(outcomes, [expected, expected], operation)
                if expected is None:
                    model.apply(operation, now)
                for workspace in WORKSPACES:
                    listing = model.listing(workspace)
                    self.assertEqual(database.list_workspace_executors(workspace), listing)
                    self.assertEqual(
                        self.successResultOf(fake.list_workspace_executors(workspace)), listing
                    )

    def _error_of(self, action: Callable[..., None], *args: Any) -> type[StoreError] | None:
        try:
            action(*args)
        except StoreError as e:
            return type(e)
        return None

    def _run_fake(self, fake: FakeStore, operation: tuple[Any, ...]) -> None:
        kind = operation[0]
        if kind == "create":
            d = fake.create_executor(record(operation[1]), "h")
        elif kind == "bind":
            _, workspace, exe_id, name, default = operation
            d = fake.bind_workspace_executor(workspace, exe_id, name, "", default)
        elif kind == "unbind":
            d = fake.unbind_workspace_executor(operation[1], operation[2])
        elif kind == "delete":
            d = fake.delete_executor(operation[1])
        else:
            d = fake.update_last_seen(operation[1])
        results: list[object] = []
        d.addBoth(results.append)
        [result] = results
        if isinstance(result, Failure):
            result.raiseException()
