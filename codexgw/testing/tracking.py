"""
A listener's factory that knows its open connections, so that stopping a fake server can end them and
tell when they are gone: a hung stream or a keep-alive connection would otherwise outlive the port
(and a test's reactor would be left unclean).

Decisions:
 - Connections are ended gracefully (C{loseConnection}: what is buffered is written first) or, on
   request, aborted at once (C{abortConnection}), as each fake needs: the fake model provider lets
   its answers finish, the fake app-server drops its connections as a dying process would.
 - The Deferred of L{ConnectionTracker.close_all} fires when the last tracked connection is gone,
   however it went; several calls before then all fire together.
"""

# twisted.protocols.policies is not annotated.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory


class ConnectionTracker(WrappingFactory):
    """
    Wraps a server factory and keeps the connections it serves until they are lost.
    """

    def __init__(self, wrapped: IProtocolFactory) -> None:
        """
        @param wrapped: the factory whose protocols serve the connections (e.g. a C{Site}).
        """
        super().__init__(wrapped)
        self._drained: list[Deferred[None]] = []

    def unregisterProtocol(self, p: ProtocolWrapper) -> None:
        """
        One connection is gone; the last one fires the waiters of L{close_all}.
        """
        super().unregisterProtocol(p)
        if not self.protocols:
            drained, self._drained = self._drained, []
            for waiter in drained:
                waiter.callback(None)

    def close_all(self, abort: bool = False) -> Deferred[None]:
        """
        End every open connection.

        @param abort: drop them at once (C{abortConnection}) rather than after their buffered bytes
            are written (C{loseConnection}).
        @return: fires once no connection is open.
        """
        drained: Deferred[None] = Deferred()
        if not self.protocols:
            drained.callback(None)
            return drained
        self._drained.append(drained)
        for wrapper in list(self.protocols):
            if abort:
                wrapper.transport.abortConnection()
            else:
                wrapper.loseConnection()
        return drained
