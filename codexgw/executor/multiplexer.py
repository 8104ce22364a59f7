"""
The executor's stream multiplexer: the protocol logic of C{executor.md} §3 and §4.

A L{StreamMultiplexer} lives as long as the executor. It is attached to one websocket at a time
through an L{IRelayLink} (it is told what happens on it as an L{IRelayLinkReceiver}) and runs one
L{Session} per stream, each with its own exec-server child behind an L{IExecServerChild}. It never
touches Autobahn or a process: L{codexgw.executor.connection} and L{codexgw.executor.child} do.

Per stream, independently of every other stream:
 - C{resume} for an unknown stream opens a session with a new child (unless C{max_streams} sessions are
   live: C{reset{"too many streams"}}); for a known stream it only counts as activity.
 - C{data} is reassembled when segmented and written to the child as one line; Data for an unknown
   stream is answered with C{reset{"unknown stream"}}.
 - Each stdout line of the child goes back as Data frames with C{seq} from 0, split into segments of
   1 MiB when larger, written back to back (nothing of the stream can come in between).
 - C{heartbeat} is answered with C{heartbeat}; C{ack} is ignored; C{reset} ends the session.
 - Undecodable frames, C{version} ≠ 1 and an empty C{stream_id} are dropped with a warning.

A session ends on the gateway's Reset, the child's exit (C{reset{"exec-server exited: <code>"}}), 30 min
without a frame from the gateway (C{reset{"idle-timeout"}}), a stdout line over 64 MiB or a reassembled
message over 64 MiB (C{reset{"message too large"}}), the websocket closing, or the executor stopping.
Ending closes the child's stdin at once, SIGTERMs its process group 2 s later and SIGKILLs it 5 s after
that, unless it exited before. Output of an ending child is dropped.

Flow control: when the link's pending bytes exceed 8 MiB after a send, every live child's output is
paused; the multiplexer then looks at the link's pending bytes whenever the link reports it drained and
every 100 ms, and resumes the children once they are below 1 MiB.

Decisions where the spec is silent:
 - Every frame the gateway sends for a live stream counts as activity for the idle limit — Data,
   Heartbeat, Resume, Ack — so a bridge client that heartbeats while a long command runs
   (C{envtools.md} §4.6) keeps its session; output of the child does not count.
 - A heartbeat for an unknown stream is answered too (the table's rule has no condition).
 - Segments out of order end the session with C{reset{"bad segment sequence"}}.
 - A payload's line breaks (CR, LF) are replaced by spaces before it is written, so one payload can
   only ever be one line for the exec-server. In valid JSON they can only be white space, so no
   message changes meaning; without this, a payload could smuggle in a second message.
 - A child that cannot be started answers C{reset{"exec-server failed to start"}}.
 - A session ended by the gateway (Reset), by the websocket closing or by the executor stopping sends
   no Reset; the others send theirs before the child is told to end.
 - The "stream closed" log line is written when the child has exited, with the reason the session
   ended for and the exit code.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from codexgw import relayframe
from codexgw.executor.child import IExecServerChild, IExecServerChildReceiver
from codexgw.relayframe import Reassembler, SegmentError, Undecodable

#: Largest message relayed in either direction (C{executor.md} §3).
MAX_MESSAGE_BYTES: Final = 64 << 20
#: A stream without a frame from the gateway for this long is ended (C{executor.md} §4).
IDLE_TIMEOUT: Final = 30 * 60.0
#: Pause the children's output when the link holds more than this many bytes.
HIGH_WATER: Final = 8 << 20
#: Resume it once the link holds fewer than this many.
LOW_WATER: Final = 1 << 20
#: While paused, how often the link's pending bytes are looked at.
DRAIN_POLL: Final = 0.1
#: After stdin is closed, the child's group gets SIGTERM this much later ...
TERM_AFTER: Final = 2.0
#: ... and SIGKILL this much after the SIGTERM.
KILL_AFTER: Final = 5.0

#: Makes a child that reports to the given receiver.
Spawn = Callable[[IExecServerChildReceiver], IExecServerChild]

log = Logger()


class IRelayLink(Interface):
    """
    The websocket to the gateway, as the multiplexer sees it.
    """

    pending_bytes = Attribute("C{int}: bytes handed to the transport and not yet written out.")

    def send_frame(frame: bytes) -> None:
        """
        Send C{frame} as one binary message now; dropped once the link is closing or closed.
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake with C{code} and C{reason}; only the first call counts.
        """


class IRelayLinkReceiver(Interface):
    """
    What the multiplexer is told about a link: L{link_opened} once, then frames and drain reports,
    then L{link_lost} exactly once.
    """

    def link_opened(link: IRelayLink) -> None:
        """
        The websocket handshake completed; frames may be sent on C{link}.
        """

    def frame_received(frame: bytes) -> None:
        """
        A binary message arrived; C{frame} is its exact bytes.
        """

    def write_drained() -> None:
        """
        The link wrote out what it held; look at L{IRelayLink.pending_bytes} again.
        """

    def link_lost(code: int, reason: str) -> None:
        """
        The websocket ended with C{code} and C{reason}.
        """


class SessionState(enum.Enum):
    """
    Where a session is in its life.
    """

    LIVE = "live"
    ENDING = "ending"
    ENDED = "ended"


@implementer(IExecServerChildReceiver)
class Session:
    """
    One stream: its child, its outbound C{seq}, its reassembly and its idle and ending timers.

    @ivar reason: why the session ended, once it did.
    @ivar exit_code: the child's exit status, once it exited.
    @ivar ended: fires (with C{None}) once the child has exited.
    """

    def __init__(self, multiplexer: StreamMultiplexer, stream_id: str) -> None:
        self._mux = multiplexer
        self._clock = multiplexer.clock
        self.stream_id = stream_id
        self.state = SessionState.LIVE
        self.child: IExecServerChild | None = None
        self.next_seq = 0
        self.reason = ""
        self.exit_code: int | None = None
        self.ended: Deferred[None] = Deferred()
        self.last_activity = self._clock.seconds()
        self._reassembler = Reassembler()
        self._partial_bytes = 0
        self._idle_timer: IDelayedCall | None = None
        self._term_timer: IDelayedCall | None = None
        self._kill_timer: IDelayedCall | None = None

    def start(self, spawn: Spawn) -> None:
        """
        Start the child and the idle clock.

        @raise Exception: whatever C{spawn} raises.
        """
        self.child = spawn(self)
        self._idle_timer = self._clock.callLater(self._mux.idle_timeout, self._idle_check)

    # gateway → child

    def touch(self) -> None:
        """
        A frame for this stream arrived from the gateway.
        """
        self.last_activity = self._clock.seconds()

    def data_received(self, seq: int, index: int, count: int, payload: bytes) -> None:
        """
        One Data frame: reassemble, then write the whole message to the child as one line.
        """
        self.touch()
        self._partial_bytes += len(payload)
        if self._partial_bytes > self._mux.max_message_bytes:
            self.end("message too large", send_reset=True)
            return
        try:
            message = self._reassembler.feed(seq, index, count, payload)
        except SegmentError:
            self.end("bad segment sequence", send_reset=True)
            return
        if message is None:
            return
        self._partial_bytes = 0
        if b"\n" in message or b"\r" in message:
            message = message.replace(b"\n", b" ").replace(b"\r", b" ")
        assert self.child is not None
        self.child.write_line(message)

    # IExecServerChildReceiver: child → gateway

    def line_received(self, line: bytes) -> None:
        """
        Send one stdout line as this stream's next message.
        """
        if self.state is SessionState.LIVE:
            seq = self.next_seq
            self.next_seq += 1
            self._mux.send_message(self.stream_id, seq, line)

    def line_too_long(self) -> None:
        """
        A stdout line is over the limit: the stream cannot continue.
        """
        self.end("message too large", send_reset=True)

    def stderr_received(self, line: bytes) -> None:
        """
        Log one stderr line of the child, prefixed with the stream id.
        """
        log.info(
            "[{stream_id}] {line}",
            event="executor.exec_server_stderr",
            stream_id=self.stream_id,
            line=line.decode("utf-8", "replace"),
        )

    def exited(self, code: int) -> None:
        """
        The child ended: end the session if that was not already under way, and report.
        """
        if self.state is SessionState.LIVE:
            # Nothing to end any more: only tell the gateway.
            self._leave_live(f"exec-server exited: {code}", send_reset=True)
        self.exit_code = code
        self.state = SessionState.ENDED
        for timer in (self._idle_timer, self._term_timer, self._kill_timer):
            if timer is not None and timer.active():
                timer.cancel()
        log.info(
            "stream {stream_id} closed ({reason}, exit code {exit_code})",
            event="executor.stream_closed",
            stream_id=self.stream_id,
            reason=self.reason,
            exit_code=code,
            pid=self.child.pid if self.child is not None else None,
        )
        self._mux.session_ended(self)
        self.ended.callback(None)

    # ending

    def end(self, reason: str, send_reset: bool) -> None:
        """
        End the session: tell the gateway (when C{send_reset}), close the child's stdin, and schedule
        SIGTERM and SIGKILL of its group. Only the first call counts.
        """
        if self.state is not SessionState.LIVE:
            return
        self._leave_live(reason, send_reset)
        child = self.child
        if child is None:
            return
        # Its output is dropped from now on; keep reading so that it can finish and exit.
        child.resume()
        if self.has_ended():
            return  # it had exited already; resuming delivered the news
        self._term_timer = self._clock.callLater(TERM_AFTER, child.terminate_group)
        self._kill_timer = self._clock.callLater(TERM_AFTER + KILL_AFTER, child.kill_group)
        child.close_stdin()

    def has_ended(self) -> bool:
        """
        Whether the child has exited.
        """
        return self.state is SessionState.ENDED

    def _leave_live(self, reason: str, send_reset: bool) -> None:
        self.state = SessionState.ENDING
        self.reason = reason
        self._mux.session_ending(self)
        if send_reset:
            self._mux.send(relayframe.reset_frame(self.stream_id, reason))
        if self._idle_timer is not None and self._idle_timer.active():
            self._idle_timer.cancel()

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self.state is not SessionState.LIVE:
            return
        idle_for = self._clock.seconds() - self.last_activity
        remaining = self._mux.idle_timeout - idle_for
        if remaining > 0:
            self._idle_timer = self._clock.callLater(remaining, self._idle_check)
            return
        self.end("idle-timeout", send_reset=True)


@implementer(IRelayLinkReceiver)
class StreamMultiplexer:
    """
    All streams of one executor, over whichever link is current.

    @ivar sessions: the live sessions by stream id.
    @ivar ending: the sessions whose child has not exited yet after they ended.
    @ivar throttled: whether the children's output is paused because the link is backed up.
    """

    def __init__(
        self,
        clock: IReactorTime,
        spawn: Spawn,
        max_streams: int = 32,
        idle_timeout: float = IDLE_TIMEOUT,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        high_water: int = HIGH_WATER,
        low_water: int = LOW_WATER,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """
        @param spawn: makes the child of a new session.
        @param on_idle: called whenever the last live or ending session is gone (also settable
            later as the attribute of that name).
        """
        self.clock = clock
        self._spawn = spawn
        self.max_streams = max_streams
        self.idle_timeout = idle_timeout
        self.max_message_bytes = max_message_bytes
        self.high_water = high_water
        self.low_water = low_water
        self.on_idle = on_idle
        self.sessions: dict[str, Session] = {}
        self.ending: set[Session] = set()
        self.link: IRelayLink | None = None
        self.throttled = False
        self._drain_poll: IDelayedCall | None = None
        self._stopping = False

    # IRelayLinkReceiver

    def link_opened(self, link: IRelayLink) -> None:
        """
        Use C{link} from now on (a previous one, if any, counts as lost).
        """
        if self.link is not None:
            self.link_lost(1006, "replaced")
        self.link = link

    def frame_received(self, frame: bytes) -> None:
        """
        Act on one frame from the gateway (the table of C{executor.md} §3).

        A frame that fails unexpectedly ends only its own stream (C{reset{"internal error"}}): one bad
        stream must never take the websocket, and with it every other stream, down.
        """
        try:
            self._frame_received(frame)
        except Exception:
            log.failure("frame handling failed", event="executor.frame_failed")
            try:
                stream_id = relayframe.peek(frame).stream_id
            except Undecodable:
                return
            session = self.sessions.get(stream_id)
            if session is not None:
                session.end("internal error", send_reset=True)

    def _frame_received(self, frame: bytes) -> None:
        try:
            message = relayframe.decode(frame)
        except Undecodable:
            self._dropped("undecodable", "")
            return
        stream_id = message.stream_id
        if message.version != relayframe.VERSION:
            self._dropped(f"version {message.version}", stream_id)
            return
        if not stream_id:
            self._dropped("empty stream_id", "")
            return
        body = message.WhichOneof("body")
        session = self.sessions.get(stream_id)
        if body == "data":
            if session is None:
                self.send(relayframe.reset_frame(stream_id, "unknown stream"))
                return
            data = message.data
            session.data_received(data.seq, data.segment_index, data.segment_count, data.payload)
        elif body == "resume":
            if session is None:
                self._open(stream_id)
            else:
                session.touch()
        elif body == "heartbeat":
            if session is not None:
                session.touch()
            self.send(relayframe.heartbeat_frame(stream_id))
        elif body == "reset":
            if session is not None:
                session.end(f"reset by gateway: {message.reset.reason}", send_reset=False)
        elif body == "ack_frame":
            if session is not None:
                session.touch()
        else:
            self._dropped("no body", stream_id)

    def write_drained(self) -> None:
        """
        The link drained: resume the children if it is below the low-water mark.
        """
        self._check_drained()

    def link_lost(self, code: int, reason: str) -> None:
        """
        The websocket ended: every live session ends with it (no Reset can be sent any more).
        """
        self.link = None
        self._unthrottle()
        for session in list(self.sessions.values()):
            session.end(f"websocket closed ({code})", send_reset=False)

    # sending

    def send(self, frame: bytes) -> None:
        """
        Send one frame on the current link (dropped without one); pause the children when the link
        is backed up.
        """
        link = self.link
        if link is None:
            return
        link.send_frame(frame)
        if not self.throttled and link.pending_bytes > self.high_water:
            self._throttle()

    def send_message(self, stream_id: str, seq: int, message: bytes) -> None:
        """
        Send one message of a stream as Data frames, segmented when over 1 MiB.
        """
        for frame in relayframe.data_frames(stream_id, seq, message):
            self.send(frame)

    # sessions

    def session_ending(self, session: Session) -> None:
        """
        A session stopped being live (its child may still run).
        """
        if self.sessions.get(session.stream_id) is session:
            del self.sessions[session.stream_id]
        if session.state is not SessionState.ENDED:
            self.ending.add(session)

    def session_ended(self, session: Session) -> None:
        """
        A session's child exited.
        """
        self.ending.discard(session)
        if self.sessions.get(session.stream_id) is session:
            del self.sessions[session.stream_id]
        if not self.sessions and not self.ending and self.on_idle is not None:
            self.on_idle()

    def stop(self) -> Deferred[None]:
        """
        End every session (the executor is stopping); fire once every child has exited.
        """
        self._stopping = True
        for session in list(self.sessions.values()):
            session.end("executor stopping", send_reset=False)
        return self.all_ended()

    def all_ended(self) -> Deferred[None]:
        """
        Fire once every session that is live or ending now has its child exited.
        """
        waiting = [s.ended for s in [*self.sessions.values(), *self.ending] if not s.ended.called]
        if not waiting:
            return succeed(None)
        done: Deferred[None] = Deferred()
        remaining = len(waiting)

        def one_done(_: None) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                done.callback(None)

        for d in waiting:
            d.addCallback(one_done)
        return done

    # internals

    def _open(self, stream_id: str) -> None:
        if self._stopping:
            self.send(relayframe.reset_frame(stream_id, "executor stopping"))
            return
        if len(self.sessions) >= self.max_streams:
            log.warn(
                "stream {stream_id} refused: {max_streams} streams already served",
                event="executor.stream_refused",
                stream_id=stream_id,
                max_streams=self.max_streams,
            )
            self.send(relayframe.reset_frame(stream_id, "too many streams"))
            return
        session = Session(self, stream_id)
        try:
            session.start(self._spawn)
        except Exception as e:
            log.error(
                "stream {stream_id}: exec-server failed to start: {error}",
                event="executor.spawn_failed",
                stream_id=stream_id,
                error=str(e),
            )
            self.send(relayframe.reset_frame(stream_id, "exec-server failed to start"))
            return
        assert session.child is not None
        if session.has_ended():
            return  # it exited while being started, and said so: nothing to serve
        self.sessions[stream_id] = session
        if self.throttled:
            session.child.pause()
        log.info(
            "stream {stream_id} opened (exec-server pid {pid})",
            event="executor.stream_opened",
            stream_id=stream_id,
            pid=session.child.pid,
        )

    def _throttle(self) -> None:
        self.throttled = True
        for session in self.sessions.values():
            if session.child is not None:
                session.child.pause()
        self._drain_poll = self.clock.callLater(DRAIN_POLL, self._poll_drained)

    def _poll_drained(self) -> None:
        self._drain_poll = None
        self._check_drained()
        if self.throttled:
            self._drain_poll = self.clock.callLater(DRAIN_POLL, self._poll_drained)

    def _check_drained(self) -> None:
        if self.throttled and self.link is not None and self.link.pending_bytes < self.low_water:
            self._unthrottle()

    def _unthrottle(self) -> None:
        if self._drain_poll is not None and self._drain_poll.active():
            self._drain_poll.cancel()
        self._drain_poll = None
        if not self.throttled:
            return
        self.throttled = False
        for session in list(self.sessions.values()):
            if self.throttled:
                # What a resumed child delivered filled the link again; _throttle paused them all.
                break
            if session.child is not None:
                session.child.resume()

    def _dropped(self, why: str, stream_id: str) -> None:
        log.warn(
            "frame dropped: {why}",
            event="executor.frame_dropped",
            why=why,
            stream_id=stream_id,
        )
