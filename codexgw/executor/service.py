"""
The executor as a Twisted service (C{executor.md} §2): register, dial, serve, and again.

L{ExecutorService} runs one loop for the life of the process: register with the token for a fresh
ticket URL, dial it, serve streams through the L{StreamMultiplexer} until the websocket ends, then wait
for the backoff's next delay and start over — a new registration before every dial, since a ticket is
single-use. Network errors and 5xx answers are retried the same way; a connection that lived at least
30 s resets the backoff. A 4xx answer to the registration is fatal: the line C{registration rejected
(<status>): <body>} is logged and written to stderr, and the process exits with status 1 (a rejected
token is never retried).

C{twisted.application.internet.ClientService} was considered and not used: it retries one endpoint
with one factory, while every attempt here must first make an HTTP request whose answer is the address
to dial, and a rejected registration must end the retries for good; the loop below is short and says
exactly that.

Stopping (SIGTERM/SIGINT): stop the loop, close the websocket with 1001, end every session (each
child's stdin closed, its group SIGTERMed after 2 s and SIGKILLed 5 s later), wait until every child has
exited, kill whatever ended sessions left behind (L{codexgw.executor.proctree}), and exit 0.

Decisions where the spec is silent:
 - The close reason with 1001 is C{executor shutting down}.
 - Stopping waits at most 10 s for the children (the ladder takes 7 s at most) and 3 s for the closing
   handshake; then it goes on.
 - Adopted orphans are reaped every 5 s.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from codexgw.executor.backoff import STABLE_CONNECTION, Backoff
from codexgw.executor.multiplexer import StreamMultiplexer
from codexgw.executor.proctree import OrphanGuard, become_subreaper
from codexgw.executor.registration import RegistrationRejected

#: Close code and reason of the executor going away.
CLOSE_GOING_AWAY: Final = 1001
SHUTDOWN_REASON: Final = "executor shutting down"
#: How long stopping waits for the children to exit.
STOP_CHILDREN_TIMEOUT: Final = 10.0
#: How long stopping waits for the closing handshake.
STOP_CLOSE_TIMEOUT: Final = 3.0
#: How often adopted orphans that exited are reaped.
REAP_INTERVAL: Final = 5.0

log = Logger()


class ConnectedLink(Protocol):
    """
    What the service needs of an open websocket.
    """

    closed: Deferred[tuple[int, str]]

    def close(self, code: int, reason: str) -> None:
        """
        Start the closing handshake.
        """


#: Registers once: fires with the ticket URL, or fails (L{RegistrationRejected} is fatal).
Register = Callable[[], Deferred[str]]
#: Opens the websocket at a URL; its frames go to the multiplexer.
Dial = Callable[[str], Deferred[ConnectedLink]]
#: Ends the process with a status after a fatal error, having written the message.
Fatal = Callable[[int, str], None]


class ExecutorService(Service):
    """
    The executor's reconnecting loop around one L{StreamMultiplexer}.

    @ivar link: the open websocket, if any.
    @ivar connections: how many websockets have been opened so far.
    """

    def __init__(
        self,
        clock: IReactorTime,
        register: Register,
        dial: Dial,
        multiplexer: StreamMultiplexer,
        backoff: Backoff | None = None,
        fatal: Fatal | None = None,
        orphans: OrphanGuard | None = None,
        describe: dict[str, object] | None = None,
        subreaper: Callable[[], bool] = become_subreaper,
    ) -> None:
        """
        @param fatal: what a rejected registration does; by default write the message to stderr and
            stop the reactor so that the process exits with the status.
        @param orphans: the executor-wide orphan bookkeeping; C{None} to run without a subreaper.
        @param describe: fields of the C{executor.started} log event.
        @param subreaper: makes the process a child subreaper (injectable for tests).
        """
        self._clock = clock
        self._register = register
        self._dial = dial
        self.multiplexer = multiplexer
        self._backoff = backoff or Backoff()
        self._fatal = fatal or self._exit_process
        self._orphans = orphans
        self._describe = describe or {}
        self._become_subreaper = subreaper
        self._stopping = False
        self._current: Deferred[Any] | None = None
        self._loop: Deferred[None] | None = None
        self._reaper: LoopingCall | None = None
        self.subreaper = False
        self.link: ConnectedLink | None = None
        self.connections = 0
        multiplexer.on_idle = self.idle

    # Service

    def startService(self) -> None:
        """
        Become a subreaper (when orphans are looked after) and start the loop.
        """
        super().startService()  # type: ignore[no-untyped-call]
        if self._orphans is not None:
            self.subreaper = self._become_subreaper()
            if self.subreaper:
                self._reaper = LoopingCall(self._orphans.reap_zombies)
                self._reaper.clock = self._clock
                self._reaper.start(REAP_INTERVAL, now=False).addErrback(self._reaper_failed)
        log.info(
            "executor {executor_id} starting (gateway {gateway}, subreaper {subreaper})",
            event="executor.started",
            executor_id=self._describe.get("executor_id", ""),
            gateway=self._describe.get("gateway", ""),
            subreaper=self.subreaper,
            **{k: v for k, v in self._describe.items() if k not in ("executor_id", "gateway")},
        )
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(self._loop_failed)

    def stopService(self) -> Deferred[None]:
        """
        Stop as the module docstring says.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        return Deferred.fromCoroutine(self._stop())

    def idle(self) -> None:
        """
        No session is left: every adopted process belongs to an ended one, so kill them.
        """
        if self._orphans is not None and self.subreaper:
            self._orphans.kill_adopted()

    # the loop

    def stopping(self) -> bool:
        """
        Whether the service is stopping.
        """
        return self._stopping

    async def _run(self) -> None:
        while not self.stopping():
            try:
                url = await self._step(self._register())
            except RegistrationRejected as e:
                self._rejected(e)
                return
            except Exception as e:
                if self.stopping():
                    return
                await self._retry("registration failed: {error}", e)
                continue
            try:
                link = await self._step(self._dial(url))
            except Exception as e:
                if self.stopping():
                    return
                await self._retry("websocket dial failed: {error}", e)
                continue
            await self._serve(link)
            if self.stopping():
                return
            await self._retry("", None)

    async def _serve(self, link: ConnectedLink) -> None:
        self.link = link
        self.connections += 1
        began = self._clock.seconds()
        log.info("connected", event="executor.connected", connection=self.connections)
        if self.stopping():
            link.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)
        code, reason = await link.closed
        self.link = None
        lived = self._clock.seconds() - began
        log.info(
            "disconnected ({code}, {reason})",
            event="executor.disconnected",
            code=code,
            reason=reason,
            lived_s=round(lived, 3),
        )
        if lived >= STABLE_CONNECTION:
            self._backoff.reset()

    async def _retry(self, message: str, error: Exception | None) -> None:
        delay = self._backoff.next_delay()
        if error is not None:
            log.warn(
                message + "; retrying in {delay:.1f}s",
                event="executor.retry",
                error=str(error) or type(error).__name__,
                delay=delay,
            )
        else:
            log.info("reconnecting in {delay:.1f}s", event="executor.retry", delay=delay)
        try:
            await self._step(deferLater(self._clock, delay, lambda: None))
        except CancelledError:
            return

    async def _step(self, d: Deferred[Any]) -> Any:
        # The one thing the loop waits for now; stopping cancels it.
        self._current = d
        try:
            return await d
        finally:
            self._current = None

    def _rejected(self, error: RegistrationRejected) -> None:
        log.error(
            "registration rejected ({status}): {body}",
            event="executor.registration_rejected",
            status=error.status,
            body=error.body,
        )
        self._fatal(1, str(error))

    def _exit_process(self, status: int, message: str) -> None:
        # twist has replaced sys.stderr by a log adapter by now: write to the real standard error.
        os.write(2, f"{message}\n".encode("utf-8", "replace"))
        reactor: Any = self._clock
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, status)
        reactor.stop()

    def _loop_failed(self, failure: Failure) -> None:
        log.failure("executor loop failed", failure, event="executor.loop_failed")
        self._fatal(1, f"executor: {failure.getErrorMessage()}")

    def _reaper_failed(self, failure: Failure) -> None:
        log.failure("reaping adopted processes failed", failure, event="executor.reaper_failed")

    # stopping

    async def _stop(self) -> None:
        self._stopping = True
        current = self._current
        if current is not None:
            current.cancel()
        link = self.link
        if link is not None:
            link.close(CLOSE_GOING_AWAY, SHUTDOWN_REASON)
        try:
            await self.multiplexer.stop().addTimeout(STOP_CHILDREN_TIMEOUT, self._clock)
        except Exception:
            log.warn(
                "children still running after {timeout}s",
                event="executor.stop_timeout",
                timeout=STOP_CHILDREN_TIMEOUT,
                pids=[s.child.pid for s in self.multiplexer.ending if s.child is not None],
            )
        if link is not None:
            try:
                await _observe(link.closed).addTimeout(STOP_CLOSE_TIMEOUT, self._clock)
            except Exception:
                log.warn("closing handshake not finished", event="executor.close_timeout")
        if self._reaper is not None and self._reaper.running:
            self._reaper.stop()
        if self._orphans is not None and self.subreaper:
            self._orphans.kill_adopted()
        log.info("executor stopped", event="executor.stopped")
        # A graceful stop exits 0 (executor.md §2); twist would otherwise re-raise the SIGTERM/SIGINT
        # that stopped the reactor, and the process would end by that signal.
        if getattr(self._clock, "_exitSignal", None) is not None:
            self._clock._exitSignal = None  # type: ignore[attr-defined]


def _observe(d: Deferred[tuple[int, str]]) -> Deferred[tuple[int, str]]:
    # A Deferred that fires with d's result without taking it from d's other waiters, and whose
    # timeout cancels only itself.
    observer: Deferred[tuple[int, str]] = Deferred()

    def relay(result: tuple[int, str]) -> tuple[int, str]:
        if not observer.called:
            observer.callback(result)
        return result

    d.addCallback(relay)
    return observer
