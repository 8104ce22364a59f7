"""
Deterministic stand-ins for a reactor's thread hand-off, so tests can decide exactly when a worker
"thread" runs and when its result reaches the reactor thread — no real threads, no real time.

L{ManualReactor} is a L{Clock} whose C{callFromThread} runs at once and whose thread pool is a
L{ManualThreadPool}: work handed to it waits in a queue until the test runs it (L{run_next}), and
the result can be held back and delivered later, to reproduce "the worker finished but the reactor
has not heard yet".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorFromThreads, IReactorThreads
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import alsoProvides


class ManualThreadPool(ThreadPool):
    """
    A thread pool that never starts a thread: queued work runs when the test says so.

    @ivar queued: the work not run yet, oldest first.
    """

    def __init__(self) -> None:
        super().__init__(minthreads=0, maxthreads=1, name="manual")
        self.queued: list[tuple[Callable[[bool, Any], object] | None, Callable[[], Any]]] = []

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, Any], object] | None,
        func: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """
        Queue C{func(*args, **kwargs)}; C{onResult} gets its outcome when it runs.
        """
        self.queued.append((onResult, lambda: func(*args, **kwargs)))

    def run_next(self) -> Callable[[], None]:
        """
        Run the oldest queued work now, as the worker thread would, but hold its outcome back.

        @return: a function that delivers the outcome to the reactor thread.
        """
        on_result, work = self.queued.pop(0)
        outcome: tuple[bool, Any]
        try:
            outcome = (True, work())
        except BaseException:
            outcome = (False, Failure())

        def deliver() -> None:
            if on_result is not None:
                on_result(*outcome)

        return deliver

    def run_all(self) -> None:
        """
        Run and deliver every queued work item, including items queued meanwhile.
        """
        while self.queued:
            self.run_next()()


class ManualReactor(Clock):
    """
    A L{Clock} that also hands work to a L{ManualThreadPool} and runs C{callFromThread} calls at
    once (it provides C{IReactorFromThreads} and C{IReactorThreads} for adaptation).

    @ivar pool: the thread pool.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pool = ManualThreadPool()
        alsoProvides(self, IReactorFromThreads, IReactorThreads)

    def callFromThread(self, f: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """
        Run C{f} now: the "reactor thread" is the test's thread.
        """
        f(*args, **kwargs)

    def getThreadPool(self) -> ThreadPool:
        """
        The manual pool.
        """
        return self.pool
