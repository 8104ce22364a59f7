"""
Tests for L{codexgw.testing.tracking}: the connection tracker the fake servers stop with — it ends
every open connection, gracefully or at once, and fires when the last one is gone.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from codexgw.testing.tracking import ConnectionTracker


class ConnectionTrackerTests(SynchronousTestCase):
    """
    L{ConnectionTracker}.
    """

    def setUp(self) -> None:
        """
        A tracker around a factory of plain protocols.
        """
        self.tracker = ConnectionTracker(Factory.forProtocol(Protocol))

    def connect(self) -> tuple[ProtocolWrapper, StringTransport]:
        """
        One connection served by the tracker, on a string transport.
        """
        wrapper = self.tracker.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
        assert isinstance(wrapper, ProtocolWrapper)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        return wrapper, transport

    def test_none_open(self) -> None:
        """
        With no connection open, L{ConnectionTracker.close_all} fires at once.
        """
        self.successResultOf(self.tracker.close_all())
        self.connect()[0].connectionLost(Failure(Exception("gone")))
        self.successResultOf(self.tracker.close_all(abort=True))

    def test_graceful(self) -> None:
        """
        By default every connection is lost gracefully; the Deferreds of every call fire when the
        last one is gone.
        """
        connections = [self.connect() for _ in range(2)]
        first, second = self.tracker.close_all(), self.tracker.close_all()
        self.assertEqual(
            [(t.disconnecting, t.disconnected) for _, t in connections], [(True, False)] * 2
        )
        connections[0][0].connectionLost(Failure(Exception("gone")))
        self.assertNoResult(first)
        connections[1][0].connectionLost(Failure(Exception("gone")))
        self.successResultOf(first)
        self.successResultOf(second)

    def test_abort(self) -> None:
        """
        With C{abort=True} every connection is aborted.
        """
        wrapper, transport = self.connect()
        closed = self.tracker.close_all(abort=True)
        self.assertTrue(transport.disconnected)
        self.assertNoResult(closed)
        wrapper.connectionLost(Failure(Exception("gone")))
        self.successResultOf(closed)
