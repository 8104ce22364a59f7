"""
Autobahn timers on a chosen reactor.

Autobahn's protocols schedule their timeouts and pings through their factory's C{_batched_timer},
which txaio builds on the global reactor whatever reactor the factory was given. A factory that sets
C{_batched_timer = ReactorTimer(reactor)} gets every timer on its own reactor, so a test's fake clock
drives them and nothing is left on the global reactor. Used by both relay endpoints (the exec
gateway's websockets and the executor's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class ReactorTimer:
    """
    The C{call_later} Autobahn's protocols use for their timers, on a given reactor.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor

    def call_later(self, delay: float, func: Callable[..., object], *args: Any, **kwargs: Any) -> Timer:
        """
        Schedule C{func} on the reactor after C{delay} seconds.
        """
        return Timer(self._reactor.callLater(delay, func, *args, **kwargs))


class Timer:
    """
    A delayed call whose C{cancel} is harmless once it ran or was cancelled (as Autobahn expects).
    """

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        """
        Cancel the call if it is still pending.
        """
        if self._call.active():
            self._call.cancel()
