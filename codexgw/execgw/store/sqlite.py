"""
The SQLite store (C{exec-gateway.md} §8.3).

L{SQLiteDatabase} is the synchronous core: one C{sqlite3} connection and the SQL of every store
operation, to be used from one thread at a time. L{SQLiteStore} is the L{IStore}: it owns a thread
pool of exactly one worker thread, started and stopped with the store, and runs every operation of
its L{SQLiteDatabase} there, so all statements are serialized and the reactor never waits on SQLite.

Every connection sets C{foreign_keys = ON} and C{busy_timeout = 5000}; a file database also uses
C{journal_mode = WAL} and C{synchronous = NORMAL}. Timestamps are stored as
C{YYYY-MM-DDTHH:MM:SS.ffffffZ} text (L{format_timestamp}), so text order is time order.

Decisions where the spec is silent:
 - The database file is created with mode 0600 and each missing parent directory with mode 0700; an
   existing file or directory keeps its mode. SQLite gives the WAL and shared-memory files the
   database file's mode.
 - The connection runs in autocommit mode and transactions are explicit (C{BEGIN IMMEDIATE}), so a
   migration and its C{schema_migrations} row commit together. Migration files are split into
   statements with L{sqlite3.complete_statement}.
 - A cancelled call fails at once; if its statement has not started yet it is skipped, otherwise it
   runs to completion on the worker and its result is dropped (statements here are short and
   C{busy_timeout} bounds lock waits).
 - C{sqlite3.OperationalError} (locked, I/O, cannot open) maps to L{StoreUnavailable}, other
   C{sqlite3} errors to L{StoreError}.
 - A store that is never closed would keep its worker thread alive and block process exit, so the
   store also closes itself before reactor shutdown.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from codexgw.execgw.store import (
    MEMORY,
    BindConflict,
    DuplicateExecutor,
    ExecutorRecord,
    IStore,
    StoreError,
    StoreUnavailable,
    WorkspaceExecutor,
    as_utc,
    cancelled_error,
    closed_error,
    only_connected,
    utc_now,
)
from codexgw.execgw.store.migrations import Migration, apply_migrations, load_migrations

_T = TypeVar("_T")

_log = Logger(namespace="codexgw.execgw.store")

#: Milliseconds a statement waits for another connection's lock.
BUSY_TIMEOUT_MS: Final = 5000

_TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

_CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    TEXT PRIMARY KEY,
    applied_at TEXT NOT NULL
)
"""

_EXECUTOR_COLUMNS: Final = (
    "exe_id, user_id, display_name, description, default_cwd, registered_at, last_seen_at"
)


def format_timestamp(value: datetime) -> str:
    """
    Return the aware C{value} as C{YYYY-MM-DDTHH:MM:SS.ffffffZ} in UTC (always six fraction digits
    and a four-digit year, so text order is time order).
    """
    utc = as_utc(value)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_timestamp(text: str) -> datetime:
    """
    Parse a timestamp written by L{format_timestamp} into an aware UTC datetime.
    """
    return datetime.strptime(text, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)


def _optional_timestamp(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def _nullable(text: str) -> str | None:
    return text or None


def split_statements(sql: str) -> list[str]:
    """
    Split a migration file into its statements (C{;} inside literals and comments is respected).
    """
    statements: list[str] = []
    pending = ""
    pieces = sql.split(";")
    for piece in pieces[:-1]:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    rest = (pending + pieces[-1]).strip()
    if rest:
        statements.append(rest)
    return statements


def _create_private_parents(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists() and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        try:
            os.mkdir(created, 0o700)
        except FileExistsError:
            continue
        os.chmod(created, 0o700)


def _create_private_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SQLiteDatabase:
    """
    One SQLite connection and the store's SQL, synchronously.

    Not thread-safe: use it from one thread at a time (L{SQLiteStore} uses its worker thread only).
    Methods that write a timestamp take it as an argument; this class reads no clock.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        """
        @param connection: an open connection in autocommit mode (C{isolation_level=None}), already
            configured by L{open}.
        """
        self._db = connection

    @classmethod
    def open(cls, path: str) -> SQLiteDatabase:
        """
        Open (creating if needed) the database at C{path}, or an in-memory one for L{MEMORY}, and set
        the pragmas.

        @raise StoreUnavailable: when the file or its directory cannot be created or opened.
        """
        try:
            if path != MEMORY:
                target = Path(path)
                _create_private_parents(target.absolute().parent)
                _create_private_file(target)
            connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(f"cannot open database {path}: {e}") from e
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if path != MEMORY:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            connection.close()
            raise StoreUnavailable(f"cannot open database {path}: {e}") from e
        return cls(connection)

    def close(self) -> None:
        """
        Close the connection.
        """
        self._db.close()

    # -- migrations

    def applied_versions(self) -> list[str]:
        """
        Create C{schema_migrations} if missing; return the versions it records.
        """
        self._db.execute(_CREATE_SCHEMA_MIGRATIONS)
        return [str(row[0]) for row in self._db.execute("SELECT version FROM schema_migrations")]

    def apply_migration(self, migration: Migration, applied_at: datetime) -> bool:
        """
        Run C{migration} and record it, in one transaction; skip it if another process recorded it
        in the meantime.

        @return: whether the migration ran.
        """
        self._db.execute("BEGIN IMMEDIATE")
        try:
            recorded = self._db.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            ).fetchone()
            if recorded is not None:
                self._db.execute("ROLLBACK")
                return False
            for statement in split_statements(migration.sql):
                self._db.execute(statement)
            self._db.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, format_timestamp(applied_at)),
            )
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return True

    # -- executors

    def create_executor(self, record: ExecutorRecord, token_hash: str) -> None:
        """
        Insert C{record}; L{DuplicateExecutor} when its C{exe_id} exists.
        """
        cursor = self._db.execute(
            "INSERT INTO executors (exe_id, user_id, display_name, description, default_cwd,"
            " registration_token_hash, registered_at, last_seen_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (exe_id) DO NOTHING",
            (
                record.exe_id,
                record.user_id,
                _nullable(record.display_name),
                _nullable(record.description),
                _nullable(record.default_cwd),
                token_hash,
                format_timestamp(record.registered_at),
                _optional_timestamp(record.last_seen_at),
            ),
        )
        if cursor.rowcount == 0:
            raise DuplicateExecutor(f"executor {record.exe_id!r} already exists")

    def get_executor(self, exe_id: str) -> ExecutorRecord | None:
        """
        Return the executor C{exe_id} or C{None}.
        """
        row = self._db.execute(
            f"SELECT {_EXECUTOR_COLUMNS} FROM executors WHERE exe_id = ?",  # noqa: S608
            (exe_id,),
        ).fetchone()
        if row is None:
            return None
        return ExecutorRecord(
            exe_id=row[0],
            user_id=row[1],
            display_name=row[2] or "",
            description=row[3] or "",
            default_cwd=row[4] or "",
            registered_at=parse_timestamp(row[5]),
            last_seen_at=None if row[6] is None else parse_timestamp(row[6]),
        )

    def get_registration_token_hash(self, exe_id: str) -> str | None:
        """
        Return the registration token hash of C{exe_id} or C{None}.
        """
        row = self._db.execute(
            "SELECT registration_token_hash FROM executors WHERE exe_id = ?", (exe_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def update_last_seen(self, exe_id: str, now: datetime) -> None:
        """
        Set C{last_seen_at} of C{exe_id} to C{now}; no-op when absent.
        """
        self._db.execute(
            "UPDATE executors SET last_seen_at = ? WHERE exe_id = ?", (format_timestamp(now), exe_id)
        )

    def delete_executor(self, exe_id: str) -> None:
        """
        Delete C{exe_id} and (by cascade) its bindings; no-op when absent.
        """
        self._db.execute("DELETE FROM executors WHERE exe_id = ?", (exe_id,))

    # -- bindings

    def bind_workspace_executor(
        self,
        workspace_id: str,
        exe_id: str,
        name: str,
        description: str,
        is_default: bool,
        *,
        now: datetime,
    ) -> None:
        """
        Upsert the binding (a new one gets C{created_at} = C{now}); L{BindConflict} when the name is
        taken in the workspace or the executor is unknown.
        """
        try:
            self._db.execute(
                "INSERT INTO workspace_executors"
                " (workspace_id, exe_id, name, description, is_default, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (workspace_id, exe_id) DO UPDATE SET"
                " name = excluded.name, description = excluded.description,"
                " is_default = excluded.is_default",
                (workspace_id, exe_id, name, description, int(is_default), format_timestamp(now)),
            )
        except sqlite3.IntegrityError as e:
            if "FOREIGN KEY" in str(e):
                raise BindConflict(f"unknown executor {exe_id!r}") from e
            raise BindConflict(f"name {name!r} is already used in workspace {workspace_id!r}") from e

    def unbind_workspace_executor(self, workspace_id: str, exe_id: str) -> None:
        """
        Delete the binding; no-op when absent.
        """
        self._db.execute(
            "DELETE FROM workspace_executors WHERE workspace_id = ? AND exe_id = ?",
            (workspace_id, exe_id),
        )

    def owns_executor(self, workspace_id: str, exe_id: str) -> bool:
        """
        Whether the binding exists.
        """
        row = self._db.execute(
            "SELECT 1 FROM workspace_executors WHERE workspace_id = ? AND exe_id = ?",
            (workspace_id, exe_id),
        ).fetchone()
        return row is not None

    def list_workspace_executors(self, workspace_id: str) -> list[WorkspaceExecutor]:
        """
        The bindings of C{workspace_id} by C{created_at}, then C{exe_id} (binary order).
        """
        rows = self._db.execute(
            "SELECT we.exe_id, we.name, we.description, we.is_default, e.last_seen_at"
            " FROM workspace_executors AS we JOIN executors AS e ON e.exe_id = we.exe_id"
            " WHERE we.workspace_id = ? ORDER BY we.created_at, we.exe_id",
            (workspace_id,),
        ).fetchall()
        return [
            WorkspaceExecutor(
                exe_id=row[0],
                name=row[1],
                description=row[2],
                is_default=bool(row[3]),
                last_seen_at=None if row[4] is None else parse_timestamp(row[4]),
            )
            for row in rows
        ]

    def ping(self) -> None:
        """
        Run a trivial query.
        """
        self._db.execute("SELECT 1").fetchone()


class _Job:
    """
    The cancellation flag of one queued call.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False


class _Skipped(Exception):
    """
    A call was cancelled before the worker reached it.
    """


def _translate(failure: Failure) -> Failure:
    error = failure.value
    if isinstance(error, StoreError):
        return failure
    if isinstance(error, sqlite3.OperationalError):
        return Failure(StoreUnavailable(f"sqlite: {error}"))
    if isinstance(error, sqlite3.Error):
        return Failure(StoreError(f"sqlite: {error}"))
    return failure


@implementer(IStore)
class SQLiteStore:
    """
    The SQLite L{IStore}: a L{SQLiteDatabase} driven from one dedicated worker thread.

    Build it with L{open_sqlite_store}.
    """

    def __init__(self, path: str, reactor: IReactorTime, clock: IReactorTime) -> None:
        """
        @param path: the database file, or L{MEMORY}.
        @param reactor: the running reactor (thread hand-off, shutdown trigger).
        @param clock: the store's clock for "now".
        """
        self.path = path
        self._reactor = IReactorFromThreads(reactor)
        self._core = IReactorCore(reactor)
        self._clock = clock
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name=f"codexgw-sqlite:{path}")
        self._db: SQLiteDatabase | None = None
        self._closing = False
        self._closed: Deferred[None] | None = None
        self._shutdown_trigger: object = None

    def start(self) -> Deferred[None]:
        """
        Start the worker thread and open the database on it.
        """
        self._pool.start()
        # "during": after the services' own "before" shutdown steps, which may still use the store.
        self._shutdown_trigger = self._core.addSystemEventTrigger("during", "shutdown", self.close)

        def opened(db: SQLiteDatabase) -> None:
            self._db = db

        return deferToThreadPool(self._reactor, self._pool, SQLiteDatabase.open, self.path).addCallback(
            opened
        )

    def migrate(self) -> Deferred[list[str]]:
        """
        Apply the migrations this database lacks; fire with the versions applied.
        """
        return apply_migrations(_MigrationTarget(self), load_migrations("sqlite"), self._clock)

    def _call(self, operation: Callable[[SQLiteDatabase], _T]) -> Deferred[_T]:
        """
        Run C{operation} on the worker thread; the result is a cancellable L{Deferred}.
        """
        if self._closing:
            return fail(closed_error())
        job = _Job()

        def work() -> _T:
            if job.cancelled:
                raise _Skipped()
            assert self._db is not None, "the store is not open"
            return operation(self._db)

        def cancel(result: Deferred[_T]) -> None:
            job.cancelled = True
            result.errback(cancelled_error())

        result: Deferred[_T] = Deferred(cancel)

        def deliver(outcome: _T | Failure) -> None:
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(_translate(outcome))
            else:
                result.callback(outcome)

        deferToThreadPool(self._reactor, self._pool, work).addBoth(deliver)
        return result

    # -- IStore

    def create_executor(self, record: ExecutorRecord, token_hash: str) -> Deferred[None]:
        """
        See L{IStore.create_executor}.
        """
        return self._call(lambda db: db.create_executor(record, token_hash))

    def get_executor(self, exe_id: str) -> Deferred[ExecutorRecord | None]:
        """
        See L{IStore.get_executor}.
        """
        return self._call(lambda db: db.get_executor(exe_id))

    def get_registration_token_hash(self, exe_id: str) -> Deferred[str | None]:
        """
        See L{IStore.get_registration_token_hash}.
        """
        return self._call(lambda db: db.get_registration_token_hash(exe_id))

    def update_last_seen(self, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.update_last_seen}.
        """
        now = utc_now(self._clock)
        return self._call(lambda db: db.update_last_seen(exe_id, now))

    def delete_executor(self, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.delete_executor}.
        """
        return self._call(lambda db: db.delete_executor(exe_id))

    def bind_workspace_executor(
        self, workspace_id: str, exe_id: str, name: str, description: str, is_default: bool
    ) -> Deferred[None]:
        """
        See L{IStore.bind_workspace_executor}.
        """
        now = utc_now(self._clock)
        return self._call(
            lambda db: db.bind_workspace_executor(
                workspace_id, exe_id, name, description, is_default, now=now
            )
        )

    def unbind_workspace_executor(self, workspace_id: str, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.unbind_workspace_executor}.
        """
        return self._call(lambda db: db.unbind_workspace_executor(workspace_id, exe_id))

    def owns_executor(self, workspace_id: str, exe_id: str) -> Deferred[bool]:
        """
        See L{IStore.owns_executor}.
        """
        return self._call(lambda db: db.owns_executor(workspace_id, exe_id))

    def list_workspace_executors(self, workspace_id: str) -> Deferred[list[WorkspaceExecutor]]:
        """
        See L{IStore.list_workspace_executors}.
        """
        return self._call(lambda db: db.list_workspace_executors(workspace_id))

    def connected_executors_for_workspace(
        self, workspace_id: str, connected_ids: Collection[str]
    ) -> Deferred[list[WorkspaceExecutor]]:
        """
        See L{IStore.connected_executors_for_workspace}.
        """
        connected = frozenset(connected_ids)
        return self._call(
            lambda db: only_connected(db.list_workspace_executors(workspace_id), connected)
        )

    def ping(self) -> Deferred[None]:
        """
        See L{IStore.ping}.
        """
        return self._call(lambda db: db.ping())

    def close(self) -> Deferred[None]:
        """
        See L{IStore.close}: the calls already queued finish, then the connection is closed on the
        worker and the worker thread stops.
        """
        if self._closed is None:
            self._closing = True
            if self._shutdown_trigger is not None:
                self._core.removeSystemEventTrigger(self._shutdown_trigger)
                self._shutdown_trigger = None
            self._closed = self._shut_down()
        done: Deferred[None] = Deferred()
        self._closed.addBoth(lambda _: done.callback(None))
        return done

    def _shut_down(self) -> Deferred[None]:
        if not self._pool.started:
            return succeed(None)

        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        def closed(outcome: Failure | None) -> None:
            if isinstance(outcome, Failure):
                _log.failure("closing the SQLite database failed", outcome)
            # The worker has finished its last job, so joining it is immediate.
            self._pool.stop()

        return deferToThreadPool(self._reactor, self._pool, close_db).addBoth(closed)


class _MigrationTarget:
    """
    L{MigrationTarget} of a L{SQLiteStore}: the migration steps run on its worker thread.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def applied_versions(self) -> Deferred[list[str]]:
        return self._store._call(lambda db: db.applied_versions())

    def apply(self, migration: Migration, applied_at: datetime) -> Deferred[bool]:
        return self._store._call(lambda db: db.apply_migration(migration, applied_at))


def open_sqlite_store(path: str, reactor: IReactorTime, clock: IReactorTime) -> Deferred[SQLiteStore]:
    """
    Open the SQLite store at C{path} (or L{MEMORY}) and apply its migrations.

    @param reactor: the running reactor.
    @param clock: the store's clock for "now".
    @return: a L{Deferred} firing with the open store; on failure the store is closed again.
    """

    async def run() -> SQLiteStore:
        store = SQLiteStore(path, reactor, clock)
        try:
            await store.start()
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    return Deferred.fromCoroutine(run())
