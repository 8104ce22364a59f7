"""
The client factory of one websocket dial, shared by every dialler: the app gateway's child links
(L{codexgw.appgw.proxy}) and JSON-RPC links (L{codexgw.appgw.broker}), the envtools bridge link
(L{codexgw.envtools.bridge}) and the executor's relay link (L{codexgw.executor.connection}).

A dial builds one factory per connection. Besides its Autobahn options, which each dialler sets
itself and explicitly (their defaults are unsafe), the factory gives the dial:
 - Autobahn's timers on the dialler's reactor (L{codexgw.autobahntimers.ReactorTimer});
 - the link it built, so that a dial that gives up (deadline, cancellation) can drop the connection
   whatever stage it reached (L{DialFactory.abort});
 - one Deferred, L{DialFactory.opened}, that fires with the link once its handshake completed or
   fails with the dialler's own error; the link reports through L{DialFactory.link_opened} and
   L{DialFactory.link_failed}.

Decisions:
 - Only the first outcome counts: a link may report a failure after the dial failed the factory
   itself (a connect error), or close after it opened; later reports are ignored.
 - Factories are not noisy: one dial per connection, so "Starting factory" lines would only repeat
   the dial's own log.
"""

# Autobahn's factory constructor is untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

from typing import Any, Generic, TypeVar, cast

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred

from codexgw.autobahntimers import ReactorTimer

#: The link (protocol) class a factory builds.
LinkT = TypeVar("LinkT", bound=WebSocketClientProtocol)


class DialFactory(WebSocketClientFactory, Generic[LinkT]):
    """
    Builds the link of one dial (the subclass's C{protocol}) and reports its handshake.

    @ivar opened: fires with the link once its handshake completed, or fails with the error the
        link or the dial reported.
    @ivar link: the link built for the connection, once connected.
    """

    noisy = False

    def __init__(self, *, reactor: Any, **options: Any) -> None:
        """
        @param reactor: the reactor to connect with, also the clock of Autobahn's timers.
        @param options: C{WebSocketClientFactory}'s own arguments (C{url}, C{origin}, …).
        """
        super().__init__(reactor=reactor, **options)
        # Autobahn schedules its timers through txaio, which always uses the global reactor.
        self._batched_timer = ReactorTimer(reactor)
        self.opened: Deferred[LinkT] = Deferred()
        self.link: LinkT | None = None

    def buildProtocol(self, addr: Any) -> LinkT:
        """
        Build the link, and keep it so that a dial that gives up can drop it.
        """
        # Autobahn builds an instance of the subclass's protocol, the link class.
        link = cast(LinkT, super().buildProtocol(addr))
        self.link = link
        return link

    def link_opened(self, link: LinkT) -> None:
        """
        The handshake completed.
        """
        if not self.opened.called:
            self.opened.callback(link)

    def link_failed(self, error: Exception) -> None:
        """
        The connection ended before its handshake completed, or could not be made.
        """
        if not self.opened.called:
            self.opened.errback(error)

    def abort(self) -> None:
        """
        Drop the link's connection, whatever stage it reached.
        """
        # Autobahn's protocols declare the transport as ITransport, which has no abortConnection.
        transport: Any = self.link.transport if self.link is not None else None
        if transport is not None:
            transport.abortConnection()
