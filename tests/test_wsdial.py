"""
Tests for L{codexgw.wsdial}: the client factory of one websocket dial — it keeps the link it built,
reports only the first outcome of the handshake, drops the connection of a dial given up, and runs
Autobahn's timers on its own reactor. The dials themselves are tested with their modules.
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketClientProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from codexgw.autobahntimers import ReactorTimer
from codexgw.wsdial import DialFactory


class _Link(WebSocketClientProtocol):
    """
    A link class for the factory under test.
    """


class _LinkFactory(DialFactory[_Link]):
    """
    A dial factory of L{_Link}s.
    """

    protocol = _Link


class DialFactoryTests(SynchronousTestCase):
    """
    L{DialFactory}.
    """

    def setUp(self) -> None:
        """
        A factory on a memory reactor.
        """
        self.reactor = MemoryReactorClock()
        self.factory = _LinkFactory(url="ws://127.0.0.1:9/", reactor=self.reactor)

    def test_initial(self) -> None:
        """
        A new factory has no link, an unfired C{opened}, quiet logs and its timers on its reactor.
        """
        self.assertIsNone(self.factory.link)
        self.assertNoResult(self.factory.opened)
        self.assertFalse(self.factory.noisy)
        self.assertIsInstance(self.factory._batched_timer, ReactorTimer)
        self.factory._batched_timer.call_later(1.0, lambda: None)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_build_keeps_link(self) -> None:
        """
        The link built is an instance of the subclass's protocol and is kept.
        """
        link = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
        self.assertIsInstance(link, _Link)
        self.assertIs(self.factory.link, link)

    def test_first_outcome_counts(self) -> None:
        """
        C{opened} fires with the first report; later ones are ignored.
        """
        link = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
        self.factory.link_opened(link)
        self.factory.link_failed(ValueError("late"))
        self.assertIs(self.successResultOf(self.factory.opened), link)
        other = _LinkFactory(url="ws://127.0.0.1:9/", reactor=self.reactor)
        other.link_failed(ValueError("refused"))
        other.link_opened(link)
        self.assertEqual(str(self.failureResultOf(other.opened, ValueError).value), "refused")

    def test_abort(self) -> None:
        """
        L{DialFactory.abort} drops the link's connection; without a connection it does nothing.
        """
        self.factory.abort()
        link = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9))
        self.factory.abort()
        transport = StringTransport()
        link.transport = transport
        self.factory.abort()
        self.assertTrue(transport.disconnected)
