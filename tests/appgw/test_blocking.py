"""
Tests for L{codexgw.appgw.blocking}: blocking work with a deadline and cancellation that never leave
a late side effect behind.

Everything runs on a L{ManualReactor} (a L{Clock} and a thread pool that runs work only when told),
so each interleaving of "deadline", "cancel", "commit" and "result delivered" is reproduced exactly.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.blocking import Abandoned, CallControl, run_blocking
from tests.appgw.threads import ManualReactor


class Boom(Exception):
    """
    A failure raised by test work.
    """


class RunBlockingTests(SynchronousTestCase):
    """
    L{run_blocking} fires with the work's outcome, or its timeout/cancellation, exactly once.
    """

    def setUp(self) -> None:
        """
        A manual reactor and a list recording visible effects of the work.
        """
        self.reactor = ManualReactor()
        self.effects: list[str] = []

    def committing_work(self, control: CallControl[str]) -> str:
        """
        Work that checks for abandonment, then commits one visible effect.
        """
        control.check()
        with control.committing("value"):
            self.effects.append("renamed")
        return "value"

    def test_success(self) -> None:
        """
        The work's result fires the L{Deferred}; the deadline timer is cancelled.
        """
        d = run_blocking(self.reactor, self.reactor.pool, self.committing_work, timeout=10.0)
        self.assertNoResult(d)
        self.reactor.pool.run_next()()
        self.assertEqual(self.successResultOf(d), "value")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_failure(self) -> None:
        """
        An exception of the work fails the L{Deferred} with it.
        """

        def work(control: CallControl[None]) -> None:
            raise Boom("bad")

        d = run_blocking(self.reactor, self.reactor.pool, work, timeout=10.0)
        self.reactor.pool.run_next()()
        self.failureResultOf(d, Boom)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_no_timeout(self) -> None:
        """
        Without a timeout no timer is scheduled.
        """
        d = run_blocking(self.reactor, self.reactor.pool, self.committing_work)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.pool.run_all()
        self.assertEqual(self.successResultOf(d), "value")

    def test_timeout_before_work(self) -> None:
        """
        A deadline that passes before the work ran fails the call with C{on_timeout()}; the work,
        when it finally runs, stops without its effect, and its late outcome is ignored.
        """
        d = run_blocking(
            self.reactor,
            self.reactor.pool,
            self.committing_work,
            timeout=10.0,
            on_timeout=lambda: Boom("timed out"),
        )
        self.reactor.advance(9.999)
        self.assertNoResult(d)
        self.reactor.advance(0.001)
        self.assertEqual(str(self.failureResultOf(d, Boom).value), "timed out")
        self.reactor.pool.run_next()()
        self.assertEqual(self.effects, [])

    def test_default_timeout_error(self) -> None:
        """
        Without C{on_timeout} the call fails with L{TimeoutError}.
        """
        d = run_blocking(self.reactor, self.reactor.pool, self.committing_work, timeout=1.0)
        self.reactor.advance(1.0)
        self.failureResultOf(d, TimeoutError)

    def test_timeout_after_commit(self) -> None:
        """
        A deadline that passes after the work committed but before its result arrived changes
        nothing: the call succeeds.
        """
        d = run_blocking(
            self.reactor,
            self.reactor.pool,
            self.committing_work,
            timeout=10.0,
            on_timeout=lambda: Boom("timed out"),
        )
        deliver = self.reactor.pool.run_next()
        self.assertEqual(self.effects, ["renamed"])
        self.reactor.advance(10.0)
        self.assertNoResult(d)
        deliver()
        self.assertEqual(self.successResultOf(d), "value")

    def test_timeout_during_work(self) -> None:
        """
        A deadline that passes while the work is between chunks makes its next check stop it.
        """
        seen: list[str] = []

        def work(control: CallControl[None]) -> None:
            self.reactor.advance(10.0)  # the deadline passes "while the thread runs"
            try:
                control.check()
            except Abandoned:
                seen.append("abandoned")
                raise

        d = run_blocking(self.reactor, self.reactor.pool, work, timeout=10.0)
        self.reactor.pool.run_next()()
        self.failureResultOf(d, TimeoutError)
        self.assertEqual(seen, ["abandoned"])

    def test_cancel_before_commit(self) -> None:
        """
        Cancelling before the commit fails the call with L{CancelledError}, stops the timer, and
        the work never commits.
        """
        d = run_blocking(self.reactor, self.reactor.pool, self.committing_work, timeout=10.0)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.pool.run_next()()
        self.assertEqual(self.effects, [])

    def test_cancel_after_commit(self) -> None:
        """
        Cancelling after the commit answers with the committed result (the effect is in place);
        the late delivery is ignored.
        """
        d = run_blocking(self.reactor, self.reactor.pool, self.committing_work, timeout=10.0)
        deliver = self.reactor.pool.run_next()
        d.cancel()
        self.assertEqual(self.successResultOf(d), "value")
        deliver()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_commit_refused_after_abandon(self) -> None:
        """
        L{CallControl.committing} refuses to run its body once the call was abandoned.
        """
        control: CallControl[int] = CallControl()
        self.assertEqual(control.abandon(), (True, None))
        with self.assertRaises(Abandoned), control.committing(1):
            self.effects.append("renamed")
        self.assertEqual(self.effects, [])
        self.assertRaises(Abandoned, control.check)

    def test_abandon_refused_after_commit(self) -> None:
        """
        L{CallControl.abandon} reports the committed value once the body ran.
        """
        control: CallControl[int] = CallControl()
        with control.committing(7):
            pass
        self.assertEqual(control.abandon(), (False, 7))
        control.check()

    def test_failed_commit_not_committed(self) -> None:
        """
        A body that raises does not commit: the call can still be abandoned.
        """
        control: CallControl[int] = CallControl()

        def fail_inside() -> None:
            with control.committing(7):
                raise Boom()

        self.assertRaises(Boom, fail_inside)
        self.assertEqual(control.abandon(), (True, None))
