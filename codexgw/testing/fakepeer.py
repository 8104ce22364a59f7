"""
An in-memory L{IFramePeer} for unit tests of the exec gateway's relay logic.

L{FakeFramePeer} records what the relay logic sends and lets a test play the remote side: deliver
frames, make the transport's write buffer fill up and drain, and end the connection. It passes the same
interface tests as the real Autobahn adapter (C{tests.execgw.test_peer}).
"""

from __future__ import annotations

from zope.interface import implementer

from codexgw.execgw.peer import CLOSE_ABNORMAL, IFramePeer, IFrameReceiver


@implementer(IFramePeer)
class FakeFramePeer:
    """
    The remote end of one relay websocket, in memory.

    @ivar sent: every frame sent to the remote end, in order.
    @ivar closed_with: C{(code, reason)} of the first close, or C{None}.
    @ivar reading: C{False} while the relay logic paused reading; the remote end's messages then wait
        in L{unread} until it resumes.
    @ivar unread: messages the remote end sent while reading was paused (C{None} for a text message).
    @ivar write_blocked: while C{True} the remote end is not reading, so sent bytes stay pending.
    """

    def __init__(self, peer: str = "127.0.0.1:40000") -> None:
        self.peer = peer
        self.pending_bytes = 0
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.reading = True
        self.unread: list[bytes | None] = []
        self.write_blocked = False
        self.receiver: IFrameReceiver | None = None
        self._lost = False

    # IFramePeer

    def send_frame(self, frame: bytes) -> None:
        """
        Record C{frame}; count it as pending while the remote end is not reading.
        """
        if self.closed_with is not None or self._lost:
            return
        self.sent.append(frame)
        if self.write_blocked:
            self.pending_bytes += len(frame)

    def close(self, code: int, reason: str) -> None:
        """
        Record the first close.
        """
        if self.closed_with is None and not self._lost:
            self.closed_with = (code, reason)

    def pause_reading(self) -> None:
        """
        Stop delivering the remote end's frames.
        """
        self.reading = False

    def resume_reading(self) -> None:
        """
        Deliver the remote end's frames again, first those that waited.
        """
        self.reading = True
        while self.reading and self.unread and self.receiver is not None and not self._lost:
            message = self.unread.pop(0)
            if message is None:
                self.receiver.text_received()
            else:
                self.receiver.frame_received(message)

    # playing the remote side

    def attach(self, receiver: IFrameReceiver, open_now: bool = True) -> IFrameReceiver:
        """
        Connect C{receiver} to this peer and (by default) complete the handshake.
        """
        self.receiver = receiver
        if open_now:
            receiver.connection_opened()
        return receiver

    def receive(self, frame: bytes) -> None:
        """
        The remote end sends a binary frame (it waits while reading is paused).
        """
        assert self.receiver is not None
        if not self.reading or self.unread:
            self.unread.append(frame)
        else:
            self.receiver.frame_received(frame)

    def receive_text(self) -> None:
        """
        The remote end sends a text message (it waits while reading is paused).
        """
        assert self.receiver is not None
        if not self.reading or self.unread:
            self.unread.append(None)
        else:
            self.receiver.text_received()

    def drain(self) -> None:
        """
        The remote end read everything: the transport's buffer empties.
        """
        self.write_blocked = False
        self.pending_bytes = 0
        if self.receiver is not None and not self._lost:
            self.receiver.write_drained()

    def finish_close(self) -> None:
        """
        Complete a close the relay logic started, as the closing handshake would.
        """
        assert self.closed_with is not None
        self.lose(*self.closed_with)

    def lose(self, code: int = CLOSE_ABNORMAL, reason: str = "") -> None:
        """
        The connection ends with C{code}.
        """
        if self._lost:
            return
        self._lost = True
        if self.receiver is not None:
            self.receiver.connection_lost(code, reason)
