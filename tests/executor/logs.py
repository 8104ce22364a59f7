"""
Capturing the log events the executor emits, for unit tests.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


class EventLog:
    """
    Every log event with an C{event} field published while a test runs.

    @ivar events: the events, in order.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        """
        Start capturing; stop at the end of C{case}.
        """
        self.events: list[LogEvent] = []
        observer = cast(ILogObserver, self._observe)
        globalLogPublisher.addObserver(observer)
        case.addCleanup(globalLogPublisher.removeObserver, observer)

    def _observe(self, event: LogEvent) -> None:
        if "event" in event:
            self.events.append(event)

    def named(self, name: str) -> list[dict[str, Any]]:
        """
        The events called C{name}, in order.
        """
        return [dict(e) for e in self.events if e.get("event") == name]
