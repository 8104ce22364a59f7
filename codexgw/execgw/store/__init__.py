"""
The exec gateway's store of executors and workspace bindings (C{exec-gateway.md} §8).

L{IStore} is the interface the gateway codes against; L{ExecutorRecord} and L{WorkspaceExecutor} are
the records it exchanges; L{StoreError} and its subclasses are the failures it reports. L{open_store}
opens the store named by C{CXG_DATABASE_URL} (parsed by L{parse_database_url}), applies the migrations
(L{codexgw.execgw.store.migrations}) and hands back a ready L{IStore}: SQLite
(L{codexgw.execgw.store.sqlite}) or PostgreSQL (L{codexgw.execgw.store.postgres}).
L{codexgw.testing.fakestore} holds the in-memory twin; all of them pass the same interface tests.

Every message of a L{StoreError} raised by L{open_store} is written to follow C{store: }, which is how
the service and C{codexgw migrate} print it; none of them ever contains a database password.

Decisions where the spec is silent:
 - A cancelled call fails with L{StoreUnavailable} (C{store call cancelled}) rather than
   L{CancelledError <twisted.internet.defer.CancelledError>}: the spec files cancellation under
   L{StoreUnavailable}, so callers catch one family of errors. A call made after L{IStore.close} fails
   with L{StoreUnavailable} (C{store is closed}).
 - Records carry timezone-aware datetimes; a naive one handed to the store is a programming error and
   fails the call with L{ValueError}. Values come back in UTC, rounded to the microsecond.
 - C{create_executor} also stores the record's C{last_seen_at} (normally C{None}), so a created record
   reads back unchanged.
 - Bindings that share C{created_at} are ordered by C{exe_id} in code point order on every engine
   (binary collation on SQLite, C{COLLATE "C"} on PostgreSQL), whatever the database's locale.
 - L{parse_database_url} is the configuration's parser (L{codexgw.execgw.dburl}) with the default
   substituted for an empty value (the spec's "empty is the same as unset").
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from zope.interface import Interface

from codexgw.config import ConfigError
from codexgw.execgw.dburl import DatabaseURL as DatabaseURL
from codexgw.execgw.dburl import parse_database_url as _parse_database_url

#: The configuration variable naming the database.
DATABASE_URL_VAR: Final = "CXG_DATABASE_URL"

#: C{CXG_DATABASE_URL} when unset or empty.
DEFAULT_DATABASE_URL: Final = "sqlite:///var/exec-gateway.sqlite3"

#: The configuration variable sizing the PostgreSQL connection pool, its default and bounds.
POOL_SIZE_VAR: Final = "CXG_DATABASE_POOL_SIZE"
DEFAULT_POOL_SIZE: Final = 4
MIN_POOL_SIZE: Final = 1
MAX_POOL_SIZE: Final = 64

#: The SQLite path that means an in-memory database.
MEMORY: Final = ":memory:"


# -------------------------------------------------------------------------------------------------
# Errors


class StoreError(Exception):
    """
    A store call failed. Messages never contain a password or a registration token.
    """


class StoreUnavailable(StoreError):
    """
    The database cannot be reached: connection problems, a deadline that passed, a cancelled call, a
    closed store.
    """


class DuplicateExecutor(StoreError):
    """
    C{create_executor} was given an C{exe_id} that already exists.
    """


class BindConflict(StoreError):
    """
    C{bind_workspace_executor} failed: the name is used by another executor of the workspace, or the
    executor does not exist.
    """


class UnknownMigration(StoreError):
    """
    The database records a migration that this build does not know (it was migrated by a newer build).

    @ivar version: the unknown version (a migration file name).
    """

    def __init__(self, version: str) -> None:
        """
        @param version: the version found in C{schema_migrations} and unknown to this build.
        """
        super().__init__(f"database has unknown migration {version}")
        self.version = version


# -------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class ExecutorRecord:
    """
    One registered executor.

    Text fields are C{""} where the column is NULL. Datetimes are timezone-aware; the store returns
    them in UTC with microsecond precision.

    @ivar exe_id: the executor's id (C{exe_<uuid>}).
    @ivar user_id: the user who registered it.
    @ivar display_name: free text, C{""} when unset.
    @ivar description: free text, C{""} when unset.
    @ivar default_cwd: free text, C{""} when unset.
    @ivar registered_at: when it was registered.
    @ivar last_seen_at: when its inbound websocket last connected, or C{None}.
    """

    exe_id: str
    user_id: str
    display_name: str
    description: str
    default_cwd: str
    registered_at: datetime
    last_seen_at: datetime | None


@dataclass(frozen=True)
class WorkspaceExecutor:
    """
    One binding of an executor to a workspace, joined with the executor's C{last_seen_at}.

    @ivar exe_id: the bound executor.
    @ivar name: its name in the workspace (unique within the workspace).
    @ivar description: free text, possibly C{""}.
    @ivar is_default: whether the binding is marked default (nothing enforces a single default).
    @ivar last_seen_at: the executor's C{last_seen_at}, in UTC, or C{None}.
    """

    exe_id: str
    name: str
    description: str
    is_default: bool
    last_seen_at: datetime | None


# -------------------------------------------------------------------------------------------------
# The interface


class IStore(Interface):
    """
    The store of executors and workspace bindings (C{exec-gateway.md} §8.1).

    Every method returns a L{Deferred} and never blocks the reactor. Callers apply deadlines by
    cancelling the L{Deferred}; a cancelled call fails with L{StoreUnavailable} and leaves the store
    usable. "Now" is the store's injected clock, in UTC.
    """

    def create_executor(record: ExecutorRecord, token_hash: str) -> Deferred[None]:
        """
        Insert C{record} with its registration token hash. Empty C{display_name}, C{description} and
        C{default_cwd} are stored as NULL; C{registered_at} comes from the record.

        @raise DuplicateExecutor: (as a failure) when C{record.exe_id} already exists.
        """

    def get_executor(exe_id: str) -> Deferred[ExecutorRecord | None]:
        """
        Return the executor C{exe_id}, or C{None} when absent.
        """

    def get_registration_token_hash(exe_id: str) -> Deferred[str | None]:
        """
        Return the registration token hash of C{exe_id}, or C{None} when absent.
        """

    def update_last_seen(exe_id: str) -> Deferred[None]:
        """
        Set C{last_seen_at} of C{exe_id} to now; an absent executor is a silent no-op.
        """

    def delete_executor(exe_id: str) -> Deferred[None]:
        """
        Delete C{exe_id} and, by cascade, its bindings; an absent executor is a no-op.
        """

    def bind_workspace_executor(
        workspace_id: str, exe_id: str, name: str, description: str, is_default: bool
    ) -> Deferred[None]:
        """
        Bind C{exe_id} to C{workspace_id}: insert with C{created_at} = now, or update C{name},
        C{description} and C{is_default} of an existing binding, keeping its C{created_at}.

        @raise BindConflict: (as a failure) when another executor of the workspace uses C{name}, or
            C{exe_id} does not exist.
        """

    def unbind_workspace_executor(workspace_id: str, exe_id: str) -> Deferred[None]:
        """
        Delete the binding; an absent binding is a no-op.
        """

    def owns_executor(workspace_id: str, exe_id: str) -> Deferred[bool]:
        """
        Return whether C{exe_id} is bound to C{workspace_id}.
        """

    def list_workspace_executors(workspace_id: str) -> Deferred[list[WorkspaceExecutor]]:
        """
        Return the bindings of C{workspace_id} ordered by binding C{created_at}, then C{exe_id};
        C{[]} when there are none.
        """

    def connected_executors_for_workspace(
        workspace_id: str, connected_ids: Collection[str]
    ) -> Deferred[list[WorkspaceExecutor]]:
        """
        Return L{list_workspace_executors} filtered to the executors in C{connected_ids}, order kept.
        """

    def ping() -> Deferred[None]:
        """
        Succeed iff the database answers a trivial query.
        """

    def close() -> Deferred[None]:
        """
        Release the connections; idempotent. Later calls fail with L{StoreUnavailable}.
        """


# -------------------------------------------------------------------------------------------------
# Helpers shared by the implementations


def as_utc(value: datetime) -> datetime:
    """
    Return the timezone-aware C{value} converted to UTC.

    @raise ValueError: when C{value} is naive.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime given to the store: {value.isoformat()}")
    return value.astimezone(UTC)


def utc_now(clock: IReactorTime) -> datetime:
    """
    Return C{clock}'s current time as a UTC datetime, rounded to the microsecond.
    """
    return datetime.fromtimestamp(clock.seconds(), UTC)


def only_connected(
    bindings: Sequence[WorkspaceExecutor], connected_ids: Collection[str]
) -> list[WorkspaceExecutor]:
    """
    Keep the bindings whose executor is in C{connected_ids}, in their order.
    """
    connected = frozenset(connected_ids)
    return [binding for binding in bindings if binding.exe_id in connected]


def closed_error() -> StoreUnavailable:
    """
    Return the failure of a call made on a closed store.
    """
    return StoreUnavailable("store is closed")


def cancelled_error() -> StoreUnavailable:
    """
    Return the failure of a cancelled call.
    """
    return StoreUnavailable("store call cancelled")


# -------------------------------------------------------------------------------------------------
# CXG_DATABASE_URL


def parse_database_url(raw: str) -> DatabaseURL:
    """
    Parse C{CXG_DATABASE_URL} with L{codexgw.execgw.dburl.parse_database_url}; C{""} means
    L{DEFAULT_DATABASE_URL}.

    @raise ConfigError: with the spec's message; it echoes at most the scheme, never the URL.
    """
    return _parse_database_url(raw or DEFAULT_DATABASE_URL)


# -------------------------------------------------------------------------------------------------
# Opening


def open_store(
    database_url: str | DatabaseURL,
    pool_size: int,
    reactor: IReactorTime,
    clock: IReactorTime | None = None,
) -> Deferred[IStore]:
    """
    Open the store named by C{database_url}, apply the migrations and return it.

    @param database_url: C{CXG_DATABASE_URL}, raw or parsed.
    @param pool_size: PostgreSQL connections (C{CXG_DATABASE_POOL_SIZE}); unused by SQLite.
    @param reactor: the running reactor: file descriptors and timers for PostgreSQL, the worker thread
        hand-off for SQLite.
    @param clock: the store's clock for "now" (timestamps it writes); C{reactor} when C{None}.
    @return: a L{Deferred} firing with the open store, or failing with L{ConfigError} (bad URL),
        L{UnknownMigration}, L{StoreUnavailable} (C{cannot connect: ...}) or L{StoreError}.
    """
    try:
        url = parse_database_url(database_url) if isinstance(database_url, str) else database_url
    except ConfigError:
        return fail()
    now = reactor if clock is None else clock

    def opened(store: IStore) -> IStore:
        return store

    # Imported here: the engine modules import this one, and SQLite users need no psycopg2.
    if url.engine == "sqlite":
        from codexgw.execgw.store.sqlite import open_sqlite_store  # noqa: PLC0415

        return open_sqlite_store(url.path_or_dsn, reactor, now).addCallback(opened)
    from codexgw.execgw.store.postgres import open_postgres_store  # noqa: PLC0415

    return open_postgres_store(url.path_or_dsn, pool_size, reactor, now).addCallback(opened)
