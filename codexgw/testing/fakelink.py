"""
An in-memory L{IRelayLink} for unit tests of the executor's stream multiplexer.

L{FakeRelayLink} records what the multiplexer sends and the close, and plays the transport's write
buffer: while the far end is not reading (L{FakeRelayLink.write_blocked}) every byte sent counts as
pending, until L{FakeRelayLink.drain} — or a test simply sets C{pending_bytes}. It passes the same
interface tests as the real Autobahn link L{codexgw.executor.connection.RelayLink}
(C{tests.executor.test_connection}).
"""

from __future__ import annotations

from zope.interface import implementer

from codexgw.executor.multiplexer import IRelayLink, IRelayLinkReceiver


@implementer(IRelayLink)
class FakeRelayLink:
    """
    The executor's websocket, in memory.

    @ivar sent: every frame sent, in order (nothing after the close).
    @ivar pending_bytes: what the transport still holds.
    @ivar write_blocked: while C{True} the far end reads nothing, so what is sent stays pending.
    @ivar closed_with: C{(code, reason)} of the first close, or C{None}.
    @ivar receiver: told when the link drains, if set.
    """

    def __init__(self, receiver: IRelayLinkReceiver | None = None) -> None:
        self.sent: list[bytes] = []
        self.pending_bytes = 0
        self.write_blocked = False
        self.closed_with: tuple[int, str] | None = None
        self.receiver = receiver

    def send_frame(self, frame: bytes) -> None:
        """
        Record C{frame}, unless the link is closing; count it as pending while the far end is not
        reading.
        """
        if self.closed_with is not None:
            return
        self.sent.append(frame)
        if self.write_blocked:
            self.pending_bytes += len(frame)

    def close(self, code: int, reason: str) -> None:
        """
        Record the first close.
        """
        if self.closed_with is None:
            self.closed_with = (code, reason)

    def drain(self) -> None:
        """
        The far end read everything: nothing is pending, and the receiver hears of it.
        """
        self.write_blocked = False
        self.pending_bytes = 0
        if self.receiver is not None:
            self.receiver.write_drained()
