"""
Tests for L{codexgw.envtools.sessions} and L{codexgw.envtools.context}: the exec-session table
(C{envtools.md} §6, part of acceptance criterion 16) and the context's counters and environment step
(§7.1).
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codexgw.envtools.context import EnvContext, ToolFailure
from codexgw.envtools.interfaces import CallError, IExecServerClient
from codexgw.envtools.resolver import Resolver
from codexgw.envtools.sessions import (
    SESSION_IDLE_SECONDS,
    SessionError,
    SessionTable,
    best_effort_terminate,
    lost_text,
)
from tests.envtools.test_tools import (
    EXE_DEV,
    EXE_DOWN,
    EXE_OPS,
    FakePool,
    FakeSource,
    ScriptedClient,
    standard_entries,
)


class SessionTableTests(SynchronousTestCase):
    """
    L{SessionTable}: room, lookup, loss, expiry and the clients' session counts.
    """

    def setUp(self) -> None:
        """
        A table of at most 3 sessions on a fake clock, and one client.
        """
        self.clock = Clock()
        self.table = SessionTable(self.clock, max_sessions=3)
        self.client = ScriptedClient(self.clock)

    def add(self, exe_id: str = EXE_DEV, client: ScriptedClient | None = None) -> str:
        """
        Reserve and add a session; return its id.
        """
        self.table.reserve()
        return self.table.add(exe_id, "dev", "uexec-1", client or self.client, reserved=True).session_id

    def test_add(self) -> None:
        """
        A session gets a new UUIDv4, the clock's time as C{last_used}, and its client is told.
        """
        session_id = self.add()
        self.assertEqual(uuid.UUID(session_id).version, 4)
        session = self.table.get(session_id)
        assert session is not None
        self.assertEqual(
            (session.exe_id, session.name, session.process_id, session.last_used),
            (EXE_DEV, "dev", "uexec-1", 0.0),
        )
        self.assertIs(session.client, self.client)
        self.assertEqual(self.client.opened, 1)
        self.assertNotEqual(self.add(), session_id)

    def test_full(self) -> None:
        """
        Reservations count against the limit; the next one is refused with the exact text.
        """
        self.add()
        self.table.reserve()
        self.table.reserve()
        with self.assertRaises(SessionError) as caught:
            self.table.reserve()
        self.assertEqual(str(caught.exception), "too many exec sessions (3); terminate one first")
        self.table.release()
        self.table.reserve()

    def test_default_limit(self) -> None:
        """
        The default limit is 64.
        """
        table = SessionTable(self.clock)
        for _ in range(64):
            table.reserve()
        self.assertRaises(SessionError, table.reserve)

    def test_lost_sessions_do_not_count(self) -> None:
        """
        Sessions of an ended client are not live and leave room.
        """
        for _ in range(3):
            self.add()
        self.client.reset("idle")
        self.table.reserve()
        self.assertEqual(len(self.table), 3)

    def test_lookup(self) -> None:
        """
        A lookup with the right exe id answers the session and marks it used.
        """
        session_id = self.add()
        self.clock.advance(5)
        session = self.table.lookup(session_id, EXE_DEV)
        self.assertEqual(session.last_used, 5.0)

    def test_lookup_other_executor(self) -> None:
        """
        Another exe id, or an unknown session id → C{no such session for that environment_id}.
        """
        session_id = self.add()
        for args in ((session_id, EXE_OPS), ("nope", EXE_DEV)):
            with self.assertRaises(SessionError) as caught:
                self.table.lookup(*args)
            self.assertEqual(str(caught.exception), "no such session for that environment_id")
        self.assertEqual(len(self.table), 1)

    def test_lookup_lost(self) -> None:
        """
        A lost session is forgotten and answered with the lost text; the client is told.
        """
        session_id = self.add()
        self.client.reset("idle")
        with self.assertRaises(SessionError) as caught:
            self.table.lookup(session_id, EXE_DEV)
        self.assertEqual(str(caught.exception), lost_text("dev"))
        self.assertEqual(lost_text("dev"), 'session lost: the connection to environment "dev" was reset')
        self.assertIsNone(self.table.get(session_id))
        self.assertEqual(self.client.closed_sessions, 1)

    def test_lookup_other_executor_before_lost(self) -> None:
        """
        The executor check comes first: a lost session looked up through another environment is
        "no such session" and stays.
        """
        session_id = self.add()
        self.client.reset("idle")
        self.assertRaises(SessionError, self.table.lookup, session_id, EXE_OPS)
        self.assertIsNotNone(self.table.get(session_id))

    def test_expiry(self) -> None:
        """
        A session unused for 30 min is terminated (10 s) and forgotten at the next access; one used
        meanwhile stays.
        """
        old = self.add()
        self.clock.advance(600)
        recent = self.add()
        self.clock.advance(SESSION_IDLE_SECONDS - 600 - 1)
        self.assertIsNotNone(self.table.get(old))
        self.assertEqual(self.client.calls, [])
        self.clock.advance(1)
        self.assertIsNotNone(self.table.get(recent))
        self.assertIsNone(self.table.get(old))
        self.clock.advance(599)
        self.table.lookup(recent, EXE_DEV)
        self.clock.advance(SESSION_IDLE_SECONDS - 1)
        self.assertIsNotNone(self.table.get(recent))
        terminates = self.client.calls_of("process/terminate")
        self.assertEqual([(c.params, c.timeout) for c in terminates], [({"processId": "uexec-1"}, 10.0)])
        self.assertEqual(self.client.closed_sessions, 1)

    def test_expire_waits_for_terminate(self) -> None:
        """
        L{SessionTable.expire} fires once the terminates have ended; the client is told only then.
        """
        answer: Deferred[Any] = Deferred()
        self.client.overrides["process/terminate"] = lambda params: answer
        self.add()
        self.clock.advance(SESSION_IDLE_SECONDS)
        expired = self.table.expire()
        self.assertEqual(len(self.table), 0)
        self.assertNoResult(expired)
        self.assertEqual(self.client.closed_sessions, 0)
        answer.errback(CallError("process/terminate: timed out"))
        self.assertIsNone(self.successResultOf(expired))
        self.assertEqual(self.client.closed_sessions, 1)

    def test_expire_lost(self) -> None:
        """
        An expired lost session is forgotten without a terminate.
        """
        self.add()
        self.client.reset("idle")
        self.clock.advance(SESSION_IDLE_SECONDS)
        self.successResultOf(self.table.expire())
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.client.calls_of("process/terminate"), [])

    def test_expire_on_reserve(self) -> None:
        """
        Reserving expires idle sessions first, making room.
        """
        for _ in range(3):
            self.add()
        self.clock.advance(SESSION_IDLE_SECONDS)
        self.table.reserve()
        self.assertEqual(len(self.table), 0)

    def test_forget_and_clear(self) -> None:
        """
        L{SessionTable.forget} removes without terminating; L{SessionTable.clear} forgets all.
        """
        first = self.add()
        self.add()
        self.assertIsNotNone(self.table.forget(first))
        self.assertIsNone(self.table.forget(first))
        self.table.clear()
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.client.closed_sessions, 2)
        self.assertEqual(self.client.calls, [])


class BestEffortTerminateTests(SynchronousTestCase):
    """
    L{best_effort_terminate} never fails.
    """

    def test_ignores_errors(self) -> None:
        """
        A failing call or a client that raises both end in C{None}.
        """
        client = ScriptedClient(Clock())
        client.reset("gone")
        self.assertIsNone(self.successResultOf(best_effort_terminate(client, "p")))

        class Raising(ScriptedClient):
            """
            A client whose C{call} raises instead of failing its Deferred.
            """

            def call(self, method: str, params: Any, timeout: float = 60.0) -> Deferred[Any]:
                raise RuntimeError("boom")

        self.assertIsNone(self.successResultOf(best_effort_terminate(Raising(Clock()), "p")))


class EnvContextTests(SynchronousTestCase):
    """
    L{EnvContext}: counters, the environment step and closing.
    """

    def setUp(self) -> None:
        """
        A context over a fake pool and the real resolver.
        """
        self.clock = Clock()
        self.dev = ScriptedClient(self.clock)
        self.pool = FakePool()
        self.pool.clients = {EXE_DEV: self.dev}
        self.pool.dial_errors = {EXE_DOWN: "bridge dial: HTTP 503: executor not connected"}
        self.source = FakeSource(standard_entries())
        self.ctx = EnvContext(self.pool, Resolver(self.source, self.clock), self.clock)

    def client_for(self, name: str, field: str = "environment_id") -> Deferred[Any]:
        """
        L{EnvContext.client_for} as a Deferred.
        """
        return Deferred.fromCoroutine(self.ctx.client_for(name, field))

    def test_counters(self) -> None:
        """
        Each prefix counts from 1 on its own.
        """
        self.assertEqual(
            [
                self.ctx.next_process_id("shell"),
                self.ctx.next_process_id("uexec"),
                self.ctx.next_process_id("shell"),
                str(self.ctx.next_number("copy")),
                str(self.ctx.next_number("copy")),
            ],
            ["shell-1", "uexec-1", "shell-2", "1", "2"],
        )

    def test_client_for(self) -> None:
        """
        A known name → its exe id and the pool's client.
        """
        exe_id, client = self.successResultOf(self.client_for("dev"))
        self.assertEqual(exe_id, EXE_DEV)
        self.assertIs(client, self.dev)

    def test_unknown(self) -> None:
        """
        An unknown name → the resolver's text.
        """
        failure = self.failureResultOf(self.client_for("nope"), ToolFailure)
        self.assertEqual(
            str(failure.value),
            'no environment named "nope" (run list_environments to see what\'s available)',
        )

    def test_empty(self) -> None:
        """
        An empty name → the environment field's text, without asking the resolver.
        """
        failure = self.failureResultOf(self.client_for("", "source_environment_id"), ToolFailure)
        self.assertEqual(
            str(failure.value),
            "source_environment_id is required; call list_environments to see available names",
        )
        self.assertEqual(self.source.lists, 0)

    def test_unavailable(self) -> None:
        """
        A refused dial → C{environment "<name>" unavailable: <error>}.
        """
        failure = self.failureResultOf(self.client_for("down"), ToolFailure)
        self.assertEqual(
            str(failure.value),
            'environment "down" unavailable: bridge dial: HTTP 503: executor not connected',
        )

    def test_cancel_propagates(self) -> None:
        """
        Cancelling the resolution cancels, rather than turning into a tool failure.
        """

        class Pending(FakePool):
            """
            A pool whose dial never finishes.
            """

            def get(self, exe_id: str) -> Deferred[IExecServerClient]:
                return Deferred()

        self.ctx.pool = Pending()
        running = self.client_for("dev")
        running.cancel()
        self.failureResultOf(running, CancelledError)

    def test_close(self) -> None:
        """
        Closing forgets the sessions and closes the pool.
        """
        self.ctx.sessions.reserve()
        self.ctx.sessions.add(EXE_DEV, "dev", "uexec-1", self.dev, reserved=True)
        self.ctx.close()
        self.assertTrue(self.pool.closed)
        self.assertEqual(len(self.ctx.sessions), 0)
        self.assertEqual(self.dev.closed_sessions, 1)

    def test_pool_failure_other_exception(self) -> None:
        """
        Any pool failure is reported with its text.
        """

        class Broken(FakePool):
            """
            A pool failing with an exception that is not a L{DialError}.
            """

            def get(self, exe_id: str) -> Deferred[IExecServerClient]:
                return fail(RuntimeError("bridge: pool closed"))

        self.ctx.pool = Broken()
        failure = self.failureResultOf(self.client_for("dev"), ToolFailure)
        self.assertEqual(str(failure.value), 'environment "dev" unavailable: bridge: pool closed')
