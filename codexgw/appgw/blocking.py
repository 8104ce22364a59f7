"""
Blocking work in a thread pool, with a deadline and cancellation that can never leave a late side
effect behind.

A worker thread cannot be interrupted: when its caller stops waiting (the deadline passed, or the
L{Deferred} was cancelled) the thread goes on until it looks. L{run_blocking} therefore hands the
work a L{CallControl}: the work calls L{CallControl.check} between chunks to stop early, and performs
its one visible effect (a rename into place) inside L{CallControl.committing}. Abandoning and
committing are decided under one lock, so either the caller is told "timed out/cancelled" and the
effect never happens, or the effect happened and the caller is told the call succeeded — even if its
answer comes from the deadline or the cancellation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

_T = TypeVar("_T")


class Abandoned(Exception):
    """
    Raised inside a worker thread when its caller stopped waiting (deadline or cancellation).
    """


class CallControl(Generic[_T]):
    """
    What a worker thread and the reactor thread share for one blocking call: whether the caller
    abandoned it, and whether (with which result) the worker already committed its effect.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._committed = False
        self._value: _T | None = None

    def check(self) -> None:
        """
        In the worker: stop (raise L{Abandoned}) if the caller stopped waiting.
        """
        if self._abandoned:
            raise Abandoned()

    @contextmanager
    def committing(self, value: _T) -> Iterator[None]:
        """
        In the worker: run the body (the visible effect) only if the call was not abandoned; once
        the body succeeds the call is committed with C{value} as its result.

        @raise Abandoned: when the caller stopped waiting; the body does not run.
        """
        with self._lock:
            if self._abandoned:
                raise Abandoned()
            yield
            self._committed = True
            self._value = value

    def abandon(self) -> tuple[bool, _T | None]:
        """
        In the reactor thread: abandon the call unless it already committed.

        @return: C{(True, None)} when abandoned, C{(False, value)} when the effect is already in
            place with result C{value}.
        """
        with self._lock:
            if self._committed:
                return False, self._value
            self._abandoned = True
            return True, None


def run_blocking(
    reactor: IReactorTime,
    threadpool: ThreadPool,
    work: Callable[[CallControl[_T]], _T],
    clock: IReactorTime | None = None,
    timeout: float | None = None,
    on_timeout: Callable[[], Exception] | None = None,
) -> Deferred[_T]:
    """
    Run C{work(control)} in C{threadpool}; fire its result in the reactor thread.

    @param reactor: the running reactor (C{callFromThread}).
    @param clock: the deadline's clock; C{reactor} when C{None}.
    @param timeout: seconds after which the call is abandoned and fails with C{on_timeout()}
        (L{TimeoutError} by default); C{None} for no deadline.
    @return: a L{Deferred}; cancelling it abandons the call (it then fails with
        L{CancelledError <twisted.internet.defer.CancelledError>} unless the work had committed).
    """
    control: CallControl[_T] = CallControl()
    timer: IDelayedCall | None = None

    def stop_timer() -> None:
        if timer is not None and timer.active():
            timer.cancel()

    def cancel(result: Deferred[_T]) -> None:
        stop_timer()
        abandoned, value = control.abandon()
        if not abandoned:
            # The effect is in place: the call succeeded, whatever the caller wanted.
            result.callback(cast(_T, value))

    result: Deferred[_T] = Deferred(cancel)

    def expire() -> None:
        abandoned, _ = control.abandon()
        if abandoned:
            error = on_timeout() if on_timeout is not None else TimeoutError(f"after {timeout:g}s")
            result.errback(Failure(error))
        # Otherwise the committed result is on its way from the worker.

    def finished(outcome: _T | Failure) -> None:
        stop_timer()
        if result.called:
            # The deadline or a cancellation answered the caller already; a late outcome is moot.
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    if timeout is not None:
        timer = (reactor if clock is None else clock).callLater(timeout, expire)
    deferToThreadPool(IReactorFromThreads(reactor), threadpool, work, control).addBoth(finished)
    return result
