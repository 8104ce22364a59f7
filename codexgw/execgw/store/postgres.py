"""
The PostgreSQL store (C{exec-gateway.md} §8.2), on txpostgres (asynchronous psycopg2, no threads).

L{PostgresStore} runs every call on a pool of C{CXG_DATABASE_POOL_SIZE} txpostgres connections
(L{_Pool}). Each pooled connection has a L{DeadConnectionDetector
<txpostgres.reconnection.DeadConnectionDetector>} (L{_Detector}): a query that fails with a connection
error, or a socket the reactor reports lost, marks the connection dead, and the detector re-establishes
it with backoff (L{reconnect_delays}: at once, then 0.5 s doubling to 10 s). Calls:

 - are bounded by L{CALL_TIMEOUT} and cancellable; a call that times out or is cancelled fails at once
   with L{StoreUnavailable}, and the connection it was using is discarded (closed) and replaced;
 - take an idle live connection, or wait for one (within their deadline) while some connection is live
   or being re-established after a discard; when every connection is known to be down (its last
   connection attempt failed) they fail at once with L{StoreUnavailable} instead of queueing.

L{open_postgres_store} connects the pool within L{CONNECT_TIMEOUT} (failure: L{StoreUnavailable}
C{cannot connect: <error>}) and applies the migrations on a dedicated connection that holds
C{pg_advisory_lock(hashtext('codexgw-exec-migrations'))}. Error messages never contain the password
(L{redact}).

Why not txpostgres's own C{ConnectionPool}: it queues callers on a semaphore without a deadline, keeps
a dead connection forever and has no way to replace one, which is what the spec forbids. The pool here
uses txpostgres's L{Connection <txpostgres.txpostgres.Connection>} and detector, and owns the
bookkeeping.

Decisions where the spec is silent:
 - Cancellation does not use C{conn.cancel(d)}: libpq's cancel request (C{PQcancel}) is a blocking
   network round trip and would freeze the reactor when the server is blackholed. The connection is
   closed instead, which also ends the query on the server side once it notices; the spec asks for the
   connection to be discarded anyway.
 - L{CALL_TIMEOUT} (10 s) bounds calls whose caller sets no tighter deadline; a connection attempt
   (initial or reconnect) is bounded by L{CONNECT_TIMEOUT} (10 s), because libpq does not enforce
   C{connect_timeout} on asynchronous connections; each migration step (including waiting for the
   advisory lock) is bounded by L{MIGRATION_TIMEOUT} (60 s).
 - Open needs all pool connections; the migration connection is opened after the pool.
 - Reconnection has no jitter (one process, a handful of connections). Its loop lives in L{_Detector}
   instead of txpostgres's C{RetryingCall}, which fires its result twice when the store is closed from
   inside a failed attempt's callbacks.
 - Connection errors log C{store.error} with C{op} C{connection} when a live connection is lost, and
   C{op} C{reconnect} when the first attempt to replace it fails; later failed attempts are quiet.
 - Host names are resolved by libpq when a connection attempt starts, on the reactor thread; use an
   address or a name the resolver answers at once.
 - psycopg2 is imported through C{txpostgres.psycopg2_impl}, the implementation txpostgres uses, so
   the error classes match the ones it raises.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, Literal, TypeVar
from urllib.parse import unquote

from twisted.internet.defer import Deferred, FirstError, fail, gatherResults
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres
from txpostgres.psycopg2_impl import psycopg2
from zope.interface import implementer

from codexgw.execgw.store import (
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

#: Seconds a connection attempt may take (the spec's 10 s connect limit at open).
CONNECT_TIMEOUT: Final = 10.0

#: Seconds a call may take, waiting for a connection included, unless cancelled earlier.
CALL_TIMEOUT: Final = 10.0

#: Seconds each migration step may take, waiting for the advisory lock included.
MIGRATION_TIMEOUT: Final = 60.0

#: First and largest delay between reconnection attempts.
FIRST_RETRY_DELAY: Final = 0.5
MAX_RETRY_DELAY: Final = 10.0

#: The advisory lock held while migrating.
MIGRATION_LOCK_NAME: Final = "codexgw-exec-migrations"

_USERINFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^@/]*)@")
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)")

_CREATE_SCHEMA_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    TEXT PRIMARY KEY,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)
"""

_CREATE_EXECUTOR: Final = """
INSERT INTO executors (exe_id, user_id, display_name, description, default_cwd,
                       registration_token_hash, registered_at, last_seen_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (exe_id) DO NOTHING
RETURNING exe_id
"""

_GET_EXECUTOR: Final = """
SELECT exe_id, user_id, display_name, description, default_cwd, registered_at, last_seen_at
FROM executors WHERE exe_id = %s
"""

_BIND: Final = """
INSERT INTO workspace_executors (workspace_id, exe_id, name, description, is_default, created_at)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (workspace_id, exe_id) DO UPDATE
SET name = EXCLUDED.name, description = EXCLUDED.description, is_default = EXCLUDED.is_default
"""

_LIST: Final = """
SELECT we.exe_id, we.name, we.description, we.is_default, e.last_seen_at
FROM workspace_executors AS we JOIN executors AS e ON e.exe_id = we.exe_id
WHERE we.workspace_id = %s
ORDER BY we.created_at, we.exe_id COLLATE "C"
"""


def reconnect_delays() -> Iterator[float]:
    """
    Yield the delays before successive reconnection attempts: 0, then 0.5 s doubling up to 10 s.
    """
    yield 0.0
    delay = FIRST_RETRY_DELAY
    while True:
        yield delay
        delay = min(delay * 2, MAX_RETRY_DELAY)


def redact(message: str, dsn: str) -> str:
    """
    Return C{message} without C{dsn}'s password (as written and percent-decoded) and without C{dsn}
    itself, on one line.
    """
    secrets: set[str] = set()
    userinfo = _USERINFO.match(dsn)
    if userinfo and ":" in userinfo.group(1):
        secrets.add(userinfo.group(1).split(":", 1)[1])
    secrets.update(_QUERY_PASSWORD.findall(dsn))
    secrets |= {unquote(secret) for secret in secrets}
    text = message.replace(dsn, "<database url>") if dsn else message
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return " ".join(text.split())


class _Discarded(Exception):
    """
    A connection was discarded on purpose (its call was cancelled or timed out).
    """


def _is_connection_death(failure: Failure) -> bool:
    """
    The detector's death checker: connection-level errors, a lost socket, a discard.
    """
    dead = failure.check(
        psycopg2.InterfaceError,
        psycopg2.OperationalError,
        txpostgres.RollbackFailed,
        reconnection.ConnectionDead,
        ConnectionClosed,
        _Discarded,
    )
    return dead is not None


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception:
        _log.failure("closing a PostgreSQL connection failed")


class _Connection(txpostgres.Connection):  # type: ignore[misc]
    """
    A txpostgres connection that reports a failed read as a lost connection (instead of an unhandled
    error in the log) and unregisters its cursors from the reactor when closed.
    """

    def doRead(self) -> Exception | None:
        try:
            super().doRead()
        except Exception as e:
            # The reactor calls connectionLost with this reason, which informs the detector.
            return e
        return None

    def close(self) -> None:
        if self._connection is None:
            return
        for cursor in set(self._cursors):
            self.reactor.removeReader(cursor)
            self.reactor.removeWriter(cursor)
        super().close()


def _connect(connection: Any, dsn: str, reactor: IReactorTime, timeout: float) -> Deferred[None]:
    """
    Connect C{connection} to C{dsn} within C{timeout} seconds.

    @return: a L{Deferred} firing when connected, or failing with L{StoreUnavailable} (redacted
        libpq message, or a timeout); cancelling it abandons the attempt.
    """
    result: Deferred[None] = Deferred(lambda _: _close_quietly(connection))
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        _close_quietly(connection)
        settle(None)

    timer = reactor.callLater(timeout, expire)

    def settle(outcome: object) -> None:
        if timer.active():
            timer.cancel()
        if result.called:
            return
        if expired:
            result.errback(StoreUnavailable(f"connection timed out after {timeout:g}s"))
        elif isinstance(outcome, Failure):
            result.errback(StoreUnavailable(redact(str(outcome.value), dsn) or repr(outcome.value)))
        else:
            result.callback(None)

    attempt: Deferred[Any] = connection.connect(dsn)
    attempt.addBoth(settle)
    return result


@dataclass(frozen=True)
class PoolState:
    """
    A snapshot of the connection pool.

    @ivar live: connections ready for (or running) a call.
    @ivar connecting: connections being re-established after a loss or a discard.
    @ivar down: connections whose last connection attempt failed (retrying with backoff).
    @ivar recoveries: connections re-established since the store was opened.
    """

    live: int
    connecting: int
    down: int
    recoveries: int


_SlotState = Literal["connecting", "live", "down", "stopped"]


class _Detector(reconnection.DeadConnectionDetector):  # type: ignore[misc]
    """
    The dead-connection detector of one pool slot.

    txpostgres's detection is kept (failed queries and lost sockets, judged by
    L{_is_connection_death}; calls refused while dead; recovery handlers). Reconnection is its own
    loop rather than txpostgres's C{RetryingCall}: the slot's bounded connection attempts, the spec's
    backoff (L{reconnect_delays}), and a L{stop} that is safe even from inside an attempt's callbacks
    (where C{RetryingCall} would fire its result twice).
    """

    def __init__(self, slot: _Slot, reactor: IReactorTime) -> None:
        super().__init__(
            deathChecker=_is_connection_death,
            reconnectionIterator=reconnect_delays,
            reactor=reactor,
        )
        self._slot = slot
        self._clock = reactor
        self._delays: Iterator[float] = iter(())
        self._waiting: IDelayedCall | None = None
        self._attempt: Deferred[None] | None = None
        self._stopped = False
        self.addRecoveryHandler(slot.recovered)

    def checkForDeadConnection(self, failure: Failure) -> Failure:
        if self._stopped:
            return failure
        result: Failure = super().checkForDeadConnection(failure)
        return result

    def startReconnecting(self, failure: Failure) -> None:
        self._slot.died(failure)
        self._delays = self.reconnectionIterator()
        self._next_attempt()

    def _next_attempt(self) -> None:
        if self._stopped:
            return
        delay = next(self._delays)
        if delay:
            self._waiting = self._clock.callLater(delay, self._try)
        else:
            self._try()

    def _try(self) -> None:
        self._waiting = None
        self._attempt = attempt = self._slot.reconnect()
        attempt.addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, _: None) -> None:
        self._attempt = None
        if not self._stopped:
            self.connectionRecovered()

    def _failed(self, _: Failure) -> None:
        self._attempt = None
        self._next_attempt()

    def stop(self) -> None:
        """
        Stop reconnecting (abandoning an attempt under way) and ignore later deaths.
        """
        self._stopped = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting.active():
            waiting.cancel()
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()


class _Slot:
    """
    One pooled connection: the current txpostgres connection, its detector, its state and the call
    that owns it.
    """

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.state: _SlotState = "connecting"
        self.owner: _Call[Any] | None = None
        self.connection: Any = None
        self.detector = _Detector(self, pool.reactor)

    def connect(self) -> Deferred[None]:
        """
        Replace the connection with a fresh one and connect it within the connect timeout. The
        detector watches the connection once it is established.
        """
        self._drop_connection()
        connection = _Connection(self.pool.reactor)
        self.connection = connection

        def connected(_: None) -> None:
            connection.detector = self.detector

        return _connect(
            connection, self.pool.dsn, self.pool.reactor, self.pool.connect_timeout
        ).addCallback(connected)

    def _drop_connection(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            # Detached first: closing on purpose is not a death.
            connection.detector = None
            _close_quietly(connection)

    def reconnect(self) -> Deferred[None]:
        """
        One reconnection attempt (called by the detector's retrying loop).
        """

        def failed(failure: Failure) -> Failure:
            if self.state == "connecting":
                self.state = "down"
                _log.warn(
                    "cannot reconnect to PostgreSQL: {error}",
                    event="store.error",
                    op="reconnect",
                    error=str(failure.value),
                )
                self.pool.slot_unavailable(self)
            return failure

        return self.connect().addErrback(failed)

    def died(self, failure: Failure) -> None:
        """
        The detector found the connection dead (or it was discarded); reconnection starts now.
        """
        if not failure.check(_Discarded):
            _log.warn(
                "lost a PostgreSQL connection: {error}",
                event="store.error",
                op="connection",
                error=redact(str(failure.value), self.pool.dsn),
            )
        self.state = "connecting"
        self.pool.slot_unavailable(self)

    def recovered(self) -> None:
        """
        The detector re-established the connection.
        """
        self.state = "live"
        self.pool.recoveries += 1
        if self.owner is None:
            self.pool.slot_available(self)
        else:
            self.pool.changed()

    def discard(self) -> None:
        """
        Close the connection (its call was abandoned) and have the detector replace it.
        """
        self.detector.checkForDeadConnection(Failure(_Discarded()))

    def stop(self) -> None:
        """
        Close for good.
        """
        self.state = "stopped"
        self.detector.stop()
        self._drop_connection()


class _Call(Generic[_T]):
    """
    One store call on the pool: its result, its deadline, the slot it runs on.
    """

    def __init__(self, pool: _Pool, work: Callable[[Any], Deferred[_T]]) -> None:
        self._pool = pool
        self._work = work
        self.done = False
        self.slot: _Slot | None = None
        self.result: Deferred[_T] = Deferred(self._cancelled)
        self._timer: IDelayedCall = pool.reactor.callLater(pool.call_timeout, self._expired)

    def start(self, slot: _Slot) -> None:
        """
        Run on C{slot}, which this call now owns.
        """
        self.slot = slot
        slot.owner = self
        try:
            running = self._work(slot.connection)
        except Exception:
            running = fail()
        running.addBoth(self._finished)

    def fail(self, error: StoreError) -> None:
        """
        Fail without having run (no connection, store closed).
        """
        if self.done:
            return
        self.done = True
        self._stop_timer()
        self.result.errback(error)

    def _finished(self, outcome: _T | Failure) -> None:
        slot, self.slot = self.slot, None
        if slot is not None and slot.owner is self:
            slot.owner = None
            self._pool.release(slot)
        if self.done:
            return
        self.done = True
        self._stop_timer()
        if isinstance(outcome, Failure):
            self.result.errback(self._pool.translate(outcome))
        else:
            self.result.callback(outcome)

    def _cancelled(self, _: Deferred[_T]) -> None:
        self._abort(cancelled_error())

    def _expired(self) -> None:
        self._abort(StoreUnavailable(f"store call timed out after {self._pool.call_timeout:g}s"))

    def _abort(self, error: StoreUnavailable) -> None:
        if self.done:
            return
        self.done = True
        self._stop_timer()
        self._pool.forget(self)
        self.result.errback(error)
        slot, self.slot = self.slot, None
        if slot is not None and slot.owner is self:
            slot.owner = None
            slot.discard()

    def _stop_timer(self) -> None:
        if self._timer.active():
            self._timer.cancel()


class _Pool:
    """
    The pooled connections and the calls waiting for one.
    """

    def __init__(
        self,
        dsn: str,
        size: int,
        reactor: IReactorTime,
        connect_timeout: float,
        call_timeout: float,
    ) -> None:
        self.dsn = dsn
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.call_timeout = call_timeout
        self.closed = False
        self.recoveries = 0
        self._slots = [_Slot(self) for _ in range(size)]
        self._idle: deque[_Slot] = deque()
        self._waiting: deque[_Call[Any]] = deque()
        self._watchers: list[tuple[Callable[[PoolState], bool], Deferred[PoolState]]] = []

    def start(self) -> Deferred[None]:
        """
        Connect every slot; fail with the first connection error.
        """

        def ready(slot: _Slot) -> Callable[[None], None]:
            def became_live(_: None) -> None:
                if slot.state != "stopped":
                    slot.state = "live"
                    self.slot_available(slot)

            return became_live

        attempts = [slot.connect().addCallback(ready(slot)) for slot in self._slots]

        def first_error(failure: Failure) -> Failure:
            if isinstance(failure.value, FirstError):
                inner: Failure = failure.value.subFailure
                return inner
            return failure

        return gatherResults(attempts, consumeErrors=True).addCallbacks(lambda _: None, first_error)

    def state(self) -> PoolState:
        """
        Snapshot the slots' states.
        """
        states = [slot.state for slot in self._slots]
        return PoolState(
            live=states.count("live"),
            connecting=states.count("connecting"),
            down=states.count("down"),
            recoveries=self.recoveries,
        )

    def run(self, work: Callable[[Any], Deferred[_T]]) -> Deferred[_T]:
        """
        Run C{work(connection)} on a pooled connection within the call timeout.
        """
        if self.closed:
            return fail(closed_error())
        call = _Call(self, work)
        if self._idle:
            call.start(self._idle.popleft())
        elif self._usable():
            self._waiting.append(call)
        else:
            call.fail(StoreUnavailable("no database connection available"))
        return call.result

    def _usable(self) -> bool:
        return any(slot.state in ("live", "connecting") for slot in self._slots)

    def release(self, slot: _Slot) -> None:
        """
        C{slot}'s call finished; hand it on if it is still live.
        """
        if slot.state == "live":
            self.slot_available(slot)

    def slot_available(self, slot: _Slot) -> None:
        """
        C{slot} is live and unowned: give it to the first waiting call, or keep it idle.
        """
        if self.closed:
            return
        while self._waiting:
            call = self._waiting.popleft()
            if not call.done:
                call.start(slot)
                break
        else:
            if slot not in self._idle:
                self._idle.append(slot)
        self.changed()

    def slot_unavailable(self, slot: _Slot) -> None:
        """
        C{slot} stopped being live; when no slot is usable any more, waiting calls fail now.
        """
        if slot in self._idle:
            self._idle.remove(slot)
        if not self._usable():
            waiting, self._waiting = self._waiting, deque()
            for call in waiting:
                call.fail(StoreUnavailable("no database connection available"))
        self.changed()

    def forget(self, call: _Call[Any]) -> None:
        """
        C{call} was abandoned while waiting.
        """
        if call in self._waiting:
            self._waiting.remove(call)

    def changed(self) -> None:
        """
        Fire the watchers whose condition now holds.
        """
        state = self.state()
        ready = [watcher for watcher in self._watchers if watcher[0](state)]
        self._watchers = [watcher for watcher in self._watchers if watcher not in ready]
        for _, waiting in ready:
            waiting.callback(state)

    def when(self, predicate: Callable[[PoolState], bool]) -> Deferred[PoolState]:
        """
        Fire with the state once C{predicate} holds (at once if it does now); cancellable.
        """
        if self.closed:
            return fail(closed_error())

        def cancel(d: Deferred[PoolState]) -> None:
            self._watchers = [watcher for watcher in self._watchers if watcher[1] is not d]

        waiting: Deferred[PoolState] = Deferred(cancel)
        state = self.state()
        if predicate(state):
            waiting.callback(state)
        else:
            self._watchers.append((predicate, waiting))
        return waiting

    def translate(self, failure: Failure) -> Failure:
        """
        Turn a database or connection failure into a L{StoreError}; leave others alone.
        """
        error = failure.value
        if isinstance(error, StoreError):
            return failure
        if self.closed:
            return Failure(closed_error())
        if _is_connection_death(failure):
            return Failure(StoreUnavailable(f"postgres: {redact(str(error), self.dsn)}"))
        if isinstance(error, psycopg2.Error):
            return Failure(StoreError(f"postgres: {redact(str(error), self.dsn)}"))
        return failure

    def close(self) -> Deferred[None]:
        """
        Stop every slot and fail the waiting calls; fire after the reactor has run the callbacks
        the closed connections scheduled.
        """
        if not self.closed:
            self.closed = True
            waiting, self._waiting = self._waiting, deque()
            for call in waiting:
                call.fail(closed_error())
            self._idle.clear()
            for slot in self._slots:
                slot.stop()
            watchers, self._watchers = self._watchers, []
            for _, watcher in watchers:
                watcher.errback(closed_error())
        return deferLater(self.reactor, 0, lambda: None)


class _MigrationSession:
    """
    L{MigrationTarget <codexgw.execgw.store.migrations.MigrationTarget>} on a dedicated connection
    that holds the migration advisory lock; every step is bounded.
    """

    def __init__(self, connection: Any, dsn: str, reactor: IReactorTime, timeout: float) -> None:
        self._connection = connection
        self._dsn = dsn
        self._reactor = reactor
        self._timeout = timeout

    def _bounded(self, running: Deferred[Any]) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            _close_quietly(self._connection)
            settle(None)

        timer = self._reactor.callLater(self._timeout, expire)

        def settle(outcome: object) -> None:
            if timer.active():
                timer.cancel()
            if result.called:
                return
            if expired:
                result.errback(StoreUnavailable(f"timed out after {self._timeout:g}s"))
            elif isinstance(outcome, Failure):
                error = outcome.value
                kind = StoreUnavailable if _is_connection_death(outcome) else StoreError
                result.errback(kind(f"postgres: {redact(str(error), self._dsn)}"))
            else:
                result.callback(outcome)

        running.addBoth(settle)
        return result

    def lock(self) -> Deferred[Any]:
        """
        Wait for the migration advisory lock (released when the connection closes).
        """
        return self._bounded(
            self._connection.runQuery("SELECT pg_advisory_lock(hashtext(%s))", (MIGRATION_LOCK_NAME,))
        )

    def applied_versions(self) -> Deferred[list[str]]:
        """
        See L{MigrationTarget.applied_versions <codexgw.execgw.store.migrations.MigrationTarget>}.
        """

        async def run() -> list[str]:
            await self._bounded(self._connection.runOperation(_CREATE_SCHEMA_MIGRATIONS))
            rows = await self._bounded(
                self._connection.runQuery("SELECT version FROM schema_migrations")
            )
            return [str(row[0]) for row in rows]

        return Deferred.fromCoroutine(run())

    def apply(self, migration: Migration, applied_at: datetime) -> Deferred[bool]:
        """
        See L{MigrationTarget.apply <codexgw.execgw.store.migrations.MigrationTarget>}.
        """

        def interaction(cursor: Any) -> Deferred[Any]:
            running: Deferred[Any] = cursor.execute(migration.sql)
            return running.addCallback(
                lambda _: cursor.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                    (migration.version, applied_at),
                )
            )

        return self._bounded(self._connection.runInteraction(interaction)).addCallback(lambda _: True)


def _utc(value: Any) -> datetime:
    assert isinstance(value, datetime)
    return value.astimezone(UTC)


def _optional_utc(value: Any) -> datetime | None:
    return None if value is None else _utc(value)


def _executor_from_row(row: Sequence[Any]) -> ExecutorRecord:
    return ExecutorRecord(
        exe_id=str(row[0]),
        user_id=str(row[1]),
        display_name=row[2] or "",
        description=row[3] or "",
        default_cwd=row[4] or "",
        registered_at=_utc(row[5]),
        last_seen_at=_optional_utc(row[6]),
    )


def _binding_from_row(row: Sequence[Any]) -> WorkspaceExecutor:
    return WorkspaceExecutor(
        exe_id=str(row[0]),
        name=str(row[1]),
        description=str(row[2]),
        is_default=bool(row[3]),
        last_seen_at=_optional_utc(row[4]),
    )


@implementer(IStore)
class PostgresStore:
    """
    The PostgreSQL L{IStore}. Build it with L{open_postgres_store}.
    """

    def __init__(
        self,
        dsn: str,
        pool_size: int,
        reactor: IReactorTime,
        clock: IReactorTime,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        call_timeout: float = CALL_TIMEOUT,
        migration_timeout: float = MIGRATION_TIMEOUT,
    ) -> None:
        """
        @param dsn: the libpq URL (C{postgres://} or C{postgresql://}), used unchanged.
        @param pool_size: the number of pooled connections.
        @param reactor: the running reactor (file descriptors and timers).
        @param clock: the store's clock for "now".
        @param connect_timeout: seconds a connection attempt may take.
        @param call_timeout: seconds a call may take.
        @param migration_timeout: seconds each migration step may take.
        """
        if not IReactorFDSet.providedBy(reactor):
            raise TypeError("the PostgreSQL store needs a reactor with file descriptor support")
        self._dsn = dsn
        self._reactor = reactor
        self._clock = clock
        self._connect_timeout = connect_timeout
        self._migration_timeout = migration_timeout
        self._pool = _Pool(dsn, pool_size, reactor, connect_timeout, call_timeout)

    def connect(self) -> Deferred[None]:
        """
        Connect the pool; fail with L{StoreUnavailable} C{cannot connect: <error>}.
        """

        def cannot_connect(failure: Failure) -> Failure:
            return Failure(StoreUnavailable(f"cannot connect: {failure.value}"))

        return self._pool.start().addErrback(cannot_connect)

    def migrate(self) -> Deferred[list[str]]:
        """
        Apply the migrations this database lacks, holding the migration advisory lock on a dedicated
        connection; fire with the versions applied.
        """

        async def run() -> list[str]:
            connection = _Connection(self._reactor)
            try:
                try:
                    await _connect(connection, self._dsn, self._reactor, self._connect_timeout)
                except StoreUnavailable as e:
                    raise StoreUnavailable(f"cannot connect: {e}") from e
                session = _MigrationSession(
                    connection, self._dsn, self._reactor, self._migration_timeout
                )
                await session.lock()
                return await apply_migrations(session, load_migrations("postgres"), self._clock)
            finally:
                _close_quietly(connection)

        return Deferred.fromCoroutine(run())

    @property
    def pool_state(self) -> PoolState:
        """
        The current state of the connection pool.
        """
        return self._pool.state()

    def when_pool(self, predicate: Callable[[PoolState], bool]) -> Deferred[PoolState]:
        """
        Fire with the pool's state once C{predicate} holds for it (checked after every change);
        cancellable. For operators' probes and tests.
        """
        return self._pool.when(predicate)

    # -- IStore

    def create_executor(self, record: ExecutorRecord, token_hash: str) -> Deferred[None]:
        """
        See L{IStore.create_executor}.
        """
        try:
            params = (
                record.exe_id,
                record.user_id,
                record.display_name or None,
                record.description or None,
                record.default_cwd or None,
                token_hash,
                as_utc(record.registered_at),
                None if record.last_seen_at is None else as_utc(record.last_seen_at),
            )
        except ValueError:
            return fail()

        def inserted(rows: list[Any]) -> None:
            if not rows:
                raise DuplicateExecutor(f"executor {record.exe_id!r} already exists")

        return self._pool.run(
            lambda connection: connection.runQuery(_CREATE_EXECUTOR, params).addCallback(inserted)
        )

    def get_executor(self, exe_id: str) -> Deferred[ExecutorRecord | None]:
        """
        See L{IStore.get_executor}.
        """

        def found(rows: list[Any]) -> ExecutorRecord | None:
            return _executor_from_row(rows[0]) if rows else None

        return self._pool.run(
            lambda connection: connection.runQuery(_GET_EXECUTOR, (exe_id,)).addCallback(found)
        )

    def get_registration_token_hash(self, exe_id: str) -> Deferred[str | None]:
        """
        See L{IStore.get_registration_token_hash}.
        """

        def found(rows: list[Any]) -> str | None:
            return str(rows[0][0]) if rows else None

        return self._pool.run(
            lambda connection: connection.runQuery(
                "SELECT registration_token_hash FROM executors WHERE exe_id = %s", (exe_id,)
            ).addCallback(found)
        )

    def update_last_seen(self, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.update_last_seen}.
        """
        now = utc_now(self._clock)
        return self._pool.run(
            lambda connection: connection.runOperation(
                "UPDATE executors SET last_seen_at = %s WHERE exe_id = %s", (now, exe_id)
            )
        )

    def delete_executor(self, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.delete_executor}.
        """
        return self._pool.run(
            lambda connection: connection.runOperation(
                "DELETE FROM executors WHERE exe_id = %s", (exe_id,)
            )
        )

    def bind_workspace_executor(
        self, workspace_id: str, exe_id: str, name: str, description: str, is_default: bool
    ) -> Deferred[None]:
        """
        See L{IStore.bind_workspace_executor}.
        """
        params = (workspace_id, exe_id, name, description, is_default, utc_now(self._clock))

        def conflict(failure: Failure) -> None:
            failure.trap(psycopg2.IntegrityError)
            if failure.check(psycopg2.errors.ForeignKeyViolation):
                raise BindConflict(f"unknown executor {exe_id!r}")
            raise BindConflict(f"name {name!r} is already used in workspace {workspace_id!r}")

        return self._pool.run(
            lambda connection: connection.runOperation(_BIND, params).addErrback(conflict)
        )

    def unbind_workspace_executor(self, workspace_id: str, exe_id: str) -> Deferred[None]:
        """
        See L{IStore.unbind_workspace_executor}.
        """
        return self._pool.run(
            lambda connection: connection.runOperation(
                "DELETE FROM workspace_executors WHERE workspace_id = %s AND exe_id = %s",
                (workspace_id, exe_id),
            )
        )

    def owns_executor(self, workspace_id: str, exe_id: str) -> Deferred[bool]:
        """
        See L{IStore.owns_executor}.
        """
        return self._pool.run(
            lambda connection: connection.runQuery(
                "SELECT 1 FROM workspace_executors WHERE workspace_id = %s AND exe_id = %s",
                (workspace_id, exe_id),
            ).addCallback(bool)
        )

    def list_workspace_executors(self, workspace_id: str) -> Deferred[list[WorkspaceExecutor]]:
        """
        See L{IStore.list_workspace_executors}.
        """

        def bindings(rows: list[Any]) -> list[WorkspaceExecutor]:
            return [_binding_from_row(row) for row in rows]

        return self._pool.run(
            lambda connection: connection.runQuery(_LIST, (workspace_id,)).addCallback(bindings)
        )

    def connected_executors_for_workspace(
        self, workspace_id: str, connected_ids: Collection[str]
    ) -> Deferred[list[WorkspaceExecutor]]:
        """
        See L{IStore.connected_executors_for_workspace}.
        """
        connected = frozenset(connected_ids)
        return self.list_workspace_executors(workspace_id).addCallback(
            lambda bindings: only_connected(bindings, connected)
        )

    def ping(self) -> Deferred[None]:
        """
        See L{IStore.ping}.
        """
        return self._pool.run(
            lambda connection: connection.runQuery("SELECT 1").addCallback(lambda _: None)
        )

    def close(self) -> Deferred[None]:
        """
        See L{IStore.close}: calls in flight fail with L{StoreUnavailable}.
        """
        return self._pool.close()


def open_postgres_store(
    dsn: str,
    pool_size: int,
    reactor: IReactorTime,
    clock: IReactorTime,
    *,
    connect_timeout: float = CONNECT_TIMEOUT,
    call_timeout: float = CALL_TIMEOUT,
    migration_timeout: float = MIGRATION_TIMEOUT,
) -> Deferred[PostgresStore]:
    """
    Connect to PostgreSQL at C{dsn}, apply the migrations and return the store.

    @return: a L{Deferred} firing with the open store, or failing with L{StoreUnavailable}
        (C{cannot connect: <error>}), L{UnknownMigration <codexgw.execgw.store.UnknownMigration>} or
        L{StoreError}; on failure everything opened so far is closed again.
    """

    async def run() -> PostgresStore:
        store = PostgresStore(
            dsn,
            pool_size,
            reactor,
            clock,
            connect_timeout=connect_timeout,
            call_timeout=call_timeout,
            migration_timeout=migration_timeout,
        )
        try:
            await store.connect()
            await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    return Deferred.fromCoroutine(run())
