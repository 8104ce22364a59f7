"""
The Turn API broker's connection to a workspace's app-server (C{app-gateway.md} §8.4): a JSON-RPC
client over the loopback websocket that starts threads, resumes them, starts turns and waits for
their C{turn/completed}.

Three layers, so that the protocol logic can be tested without sockets:
 - L{IRPCLink} / L{IRPCReceiver}: one websocket carrying text messages, and who hears about it.
   L{WebSocketRPCLink} is the Autobahn client protocol behind them; L{dial_websocket} opens one
   (no C{Origin}, no permessage-deflate offer, 64 MiB messages, 10 s to connect and upgrade, no pings
   toward the child, §12.1).
 - L{Conn}: the JSON-RPC logic of §8.4 on top of a link (handshake, reader, waiters, timeouts). It is
   the workspace's L{IAttachment}, so the supervisor tells it when the app-server goes away.
 - L{open_conn}: dial, attach, handshake — what the pool (L{codexgw.appgw.brokerpool}) calls.

Failures are L{TransportError}s whose C{code} and C{message} are the §8.3 transport code and text;
L{transport_error} classifies any other exception the Turn API may see.

Decisions where the spec is silent:
 - A drop is classified by how the connection ended. When the supervisor has told the Conn that the
   app-server ended (L{Conn.app_server_ended}), or the handle says so already, waiters fail with that
   end's error (a crash is C{subprocessCrash}). When the websocket merely dropped (no close frame,
   code 1006) and waiters are pending, the Conn waits up to L{CRASH_GRACE} (1 s) for the supervisor's
   crash notice — the socket of a killed process often closes before Twisted reaps the process —
   and fails them with C{wsDisconnect} C{connection closed before turn/completed} only when none
   came. A close frame from the app-server fails them at once with that C{wsDisconnect}. The Conn
   stops being usable (the pool drops it) as soon as the link is lost, grace or not.
 - Every waiter of a closed connection gets the same error, whatever it waited for (a response or a
   turn): C{connection closed before turn/completed} (§8.3's text), C{gateway shutting down} for a
   shutdown, the crash text for a crash. An app-server stopped for idleness (only possible while no
   request pins it) counts as a plain close.
 - The turn deadline (the caller's timeout) counts from sending C{turn/start} and also covers the wait
   for its response; the separate 60 s limit on that response applies only when the caller's timeout
   is longer. A deadline that passes before the turn id is known fails with C{turn=} empty and sends
   no C{turn/interrupt}; should the C{turn/start} response still arrive on a connection kept open by
   other work, the turn is interrupted then. Every C{brokerTimeout} (also of C{thread/start},
   C{thread/resume} and C{turn/start} responses) closes the Conn with 1000 C{turn timed out} when no
   other request or turn is pending: a connection on which codex did not answer is not reused.
 - A caller that cancels its Deferred (the HTTP client went away, §8.2 step 5) stops waiting: its
   waiter is forgotten, nothing is sent, and a completion arriving later is dropped (a turn whose id
   is unknown leaves no trace, as after any unknown id).
 - C{turn/completed} sets the turn's C{items} key to the collected items; when the turn object has no
   C{items} key the key is added last. Notifications whose C{params}, C{turn} or C{turn.id} do not
   have the expected JSON types are ignored, as are messages whose C{method} is not a string.
 - A C{thread/start} or C{thread/resume} error reads C{codex rpc error <code>: <message>} like
   C{turn/start}'s; a missing C{code} or C{message} prints as C{None}.
 - The broker closes its connection with 1000 and these reasons: C{turn timed out}, C{broker idle}
   (the pool's reaper), C{gateway closing} (pool closed, or the app-server is being stopped).
"""

# Autobahn's and Twisted's transport APIs are untyped; the calls into them stay in this module.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal, cast

from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.util import parse_url
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.rpcpolicy import approval_reply
from codexgw.appgw.supervision import (
    AppServerEnd,
    AppServerHandle,
    EnsureError,
    IAttachment,
    ISupervisor,
    SpawnCapacityError,
    SupervisorStopping,
)
from codexgw.wsdial import DialFactory

#: Largest message either way (§12.1); Autobahn closes with 1009 beyond.
MAX_MESSAGE_BYTES: Final = 64 << 20
#: Seconds for the TCP connection plus the websocket upgrade.
DIAL_TIMEOUT: Final = 10.0
#: Seconds for the C{initialize} response.
INITIALIZE_TIMEOUT: Final = 30.0
#: Seconds for the responses to C{thread/start}, C{thread/resume} and C{turn/start}.
RPC_TIMEOUT: Final = 60.0
#: Seconds a C{turn/completed} nobody waits for yet is kept.
COMPLETED_TURN_TTL: Final = 60.0
#: Seconds a dropped connection waits for the supervisor's crash notice before failing its waiters.
CRASH_GRACE: Final = 1.0
#: Seconds the closing handshake may take before the connection is dropped.
CLOSE_TIMEOUT: Final = 2.0
#: The caller's turn timeout when it gives none (§8.1).
DEFAULT_TURN_TIMEOUT: Final = 300.0

#: Close codes.
CLOSE_NORMAL: Final = 1000
CLOSE_ABNORMAL: Final = 1006

#: The exact handshake messages of §8.4.
INITIALIZE_REQUEST: Final = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"clientInfo":'
    b'{"name":"agentserver-codex-broker","title":null,"version":"0.1.0"},'
    b'"capabilities":{"experimentalApi":true,"requestAttestation":false}}}'
)
INITIALIZED_NOTIFICATION: Final = b'{"jsonrpc":"2.0","method":"initialized","params":{}}'

#: §8.3 messages.
CONNECTION_CLOSED: Final = "connection closed before turn/completed"
SHUTTING_DOWN: Final = "gateway shutting down"

JSONObject = dict[str, Any]

log = Logger()


# -------------------------------------------------------------------------------------------------
# Errors (§8.3)


class TransportError(Exception):
    """
    A Turn API request failed in transport; the response carries C{code} and C{message}.

    @ivar code: the §8.3 transport code.
    @ivar message: the exact §8.3 text.
    """

    code: ClassVar[str] = "wsDisconnect"

    def __init__(self, message: str) -> None:
        """
        @param message: the exact text of the response's C{transport.message}.
        """
        super().__init__(message)
        self.message = message


class BrokerTimeout(TransportError):
    """
    The turn, or a C{thread/start} / C{thread/resume} / C{turn/start} response, took too long.
    """

    code = "brokerTimeout"


class CodexRPCError(TransportError):
    """
    codex answered with a JSON-RPC error, or its result lacks the id the broker needs.
    """

    code = "codexRPCError"


class CapacityExceeded(TransportError):
    """
    No app-server could be spawned: the global process cap is reached.
    """

    code = "capacityExceeded"


class SubprocessCrash(TransportError):
    """
    The app-server could not be spawned, dialled or initialised, or it exited mid-request.
    """

    code = "subprocessCrash"


class WSDisconnect(TransportError):
    """
    The connection closed for any other reason (including shutdown), or anything else went wrong.
    """

    code = "wsDisconnect"


class WorkspaceRequired(ValueError):
    """
    L{codexgw.appgw.brokerpool.BrokerPool.get} was called with an empty workspace id.
    """

    def __init__(self) -> None:
        super().__init__("workspaceID required")


def transport_error(error: BaseException) -> TransportError:
    """
    Classify C{error} by type, first match (§8.3).

    @return: C{error} itself when it is a L{TransportError}; C{capacityExceeded} for
        L{SpawnCapacityError}; C{wsDisconnect} C{gateway shutting down} for L{SupervisorStopping};
        C{subprocessCrash} with the ensure text for any other L{EnsureError}; else C{wsDisconnect}
        with the error's text.
    """
    if isinstance(error, TransportError):
        return error
    if isinstance(error, SpawnCapacityError):
        return CapacityExceeded(str(error))
    if isinstance(error, SupervisorStopping):
        return WSDisconnect(SHUTTING_DOWN)
    if isinstance(error, EnsureError):
        return SubprocessCrash(str(error))
    return WSDisconnect(str(error) or type(error).__name__)


def end_error(end: AppServerEnd) -> TransportError:
    """
    What waiters of a connection whose app-server ended get.
    """
    if end.reason == "crash":
        return SubprocessCrash(f"app-server exited (status {end.exit_status}) before turn/completed")
    if end.reason == "shutdown":
        return WSDisconnect(SHUTTING_DOWN)
    return WSDisconnect(CONNECTION_CLOSED)


# -------------------------------------------------------------------------------------------------
# The link


class IRPCLink(Interface):
    """
    One open websocket to an app-server, carrying JSON-RPC as text messages.
    """

    def send_text(payload: bytes) -> None:
        """
        Send C{payload} (UTF-8 JSON) as one text message now. Dropped once the link is closing.
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake. Idempotent; the receiver hears C{link_lost} when it ends.
        """


class IRPCReceiver(Interface):
    """
    Who is told about one L{IRPCLink}.
    """

    def message_received(payload: bytes) -> None:
        """
        A message arrived (text or binary); C{payload} is its bytes.
        """

    def link_lost(code: int, reason: str) -> None:
        """
        The open link ended, once: with the peer's close code, the one this side sent when it started
        the closing handshake, or 1006 when the connection dropped without one.
        """


class DialFailed(Exception):
    """
    The websocket could not be opened; C{str()} says why.
    """


#: Opens a link to a URL for a receiver: L{dial_websocket} bound to a reactor, or a test's fake.
Connector = Callable[[str, IRPCReceiver], Deferred[IRPCLink]]


@implementer(IRPCLink)
class WebSocketRPCLink(WebSocketClientProtocol):
    """
    The Autobahn client protocol of one broker connection.

    @ivar receiver: told about messages and the end once the handshake completed.
    """

    receiver: IRPCReceiver
    _opened = False
    _lost = False

    def send_text(self, payload: bytes) -> None:
        """
        See L{IRPCLink.send_text}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(payload, isBinary=False)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IRPCLink.close}.
        """
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendClose(code=code, reason=reason)
        elif self.state == WebSocketProtocol.STATE_CONNECTING:
            self.dropConnection(abort=True)

    def onOpen(self) -> None:
        """
        The handshake completed: the dial succeeds.
        """
        self._opened = True
        self.factory.link_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Hand every message to the receiver (codex sends text; binary JSON is read the same way).
        """
        self.receiver.message_received(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Report the end once: to the receiver when the link was open, else as a failed dial.
        """
        # Autobahn leaves its closing-handshake timer running when the TCP connection ends first.
        pending_close: Any = self.closeHandshakeTimeoutCall  # declared None at class level
        if pending_close is not None:
            pending_close.cancel()
            self.closeHandshakeTimeoutCall = None
        if self._lost:
            return
        self._lost = True
        close_code = code if code is not None else CLOSE_ABNORMAL
        # Autobahn declares these as None at class level; they hold what our close frame carried.
        local_code = cast("int | None", self.localCloseCode)
        local_reason = cast("bytes | None", self.localCloseReason)
        if self.closedByMe and local_code is not None:
            # We started the closing handshake: report what we sent, not the peer's echo.
            close_code = local_code
            reason = (local_reason or b"").decode("utf-8", "replace")
        if self._opened:
            self.receiver.link_lost(close_code, reason or "")
        else:
            self.factory.link_failed(
                DialFailed(f"websocket handshake failed: {close_code} {reason or ''}")
            )


class RPCLinkFactory(DialFactory[WebSocketRPCLink]):
    """
    Builds the L{WebSocketRPCLink} of one dial, with every Autobahn option set explicitly; its
    C{opened} fails with L{DialFailed}.
    """

    protocol = WebSocketRPCLink

    def __init__(self, url: str, receiver: IRPCReceiver, reactor: Any) -> None:
        """
        @param url: the C{ws://127.0.0.1:<port>/} to open.
        @param receiver: the L{IRPCReceiver} of the link.
        """
        super().__init__(url=url, origin=None, reactor=reactor)
        self.receiver = receiver
        self.setProtocolOptions(
            perMessageCompressionOffers=[],
            perMessageCompressionAccept=lambda response: None,
            maxFramePayloadSize=MAX_MESSAGE_BYTES,
            maxMessagePayloadSize=MAX_MESSAGE_BYTES,
            autoFragmentSize=0,
            autoPingInterval=0,  # §12.1: no pings toward the child
            autoPingTimeout=0,
            openHandshakeTimeout=DIAL_TIMEOUT,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            serverConnectionDropTimeout=CLOSE_TIMEOUT,
            failByDrop=False,
            echoCloseCodeReason=False,
            utf8validateIncoming=True,
            acceptMaskedServerFrames=False,
            maskClientFrames=True,
            applyMask=True,
            tcpNoDelay=True,
        )

    def buildProtocol(self, addr: Any) -> WebSocketRPCLink:
        """
        Build the link with its receiver, and keep it so that a dial that gives up can drop it.
        """
        link = super().buildProtocol(addr)
        link.receiver = self.receiver
        return link


async def _dial(reactor: Any, url: str, receiver: IRPCReceiver, timeout: float) -> IRPCLink:
    try:
        factory = RPCLinkFactory(url, receiver, reactor)
        _secure, host, port, _resource, _path, _params = parse_url(url)
    except Exception as e:  # Autobahn refuses URLs it cannot use
        raise DialFailed(f"bad websocket URL: {e}") from None
    deadline = reactor.seconds() + timeout
    connecting = HostnameEndpoint(reactor, host, port, timeout=timeout).connect(factory)
    try:
        await connecting.addTimeout(timeout, reactor)
    except CancelledError:
        raise
    except Exception as e:
        raise DialFailed(str(e)) from None
    try:
        link: IRPCLink = await factory.opened.addTimeout(max(deadline - reactor.seconds(), 0), reactor)
    except DialFailed:
        raise
    except BaseException as e:
        # Timed out or cancelled mid-handshake: do not leave the connection behind.
        factory.abort()
        if isinstance(e, CancelledError):
            raise
        raise DialFailed(f"websocket handshake: {e}") from None
    return link


def dial_websocket(
    reactor: Any, url: str, receiver: IRPCReceiver, timeout: float = DIAL_TIMEOUT
) -> Deferred[IRPCLink]:
    """
    Open the websocket at C{url} (plain C{ws://}); its messages go to C{receiver} once it is open.

    @param reactor: an L{IReactorTCP} and L{IReactorTime}.
    @param timeout: seconds for the TCP connection plus the upgrade.
    @return: fires with the open link; fails with L{DialFailed}.
    """
    return ensureDeferred(_dial(reactor, url, receiver, timeout))


def websocket_connector(reactor: Any) -> Connector:
    """
    The L{Connector} of the real broker: L{dial_websocket} on C{reactor}.
    """
    return lambda url, receiver: dial_websocket(reactor, url, receiver)


# -------------------------------------------------------------------------------------------------
# The Conn


def _encode(message: Mapping[str, object]) -> bytes:
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a caller's JSON escape) cannot be UTF-8; JSON escapes can carry it.
        return json.dumps(message, separators=(",", ":")).encode("ascii")


def _decode(payload: bytes) -> JSONObject | None:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _rpc_result(message: JSONObject) -> JSONObject:
    """
    The C{result} object of a response, or L{CodexRPCError} for an error response.
    """
    if "error" in message:
        error = message["error"]
        code = error.get("code") if isinstance(error, dict) else None
        text = error.get("message") if isinstance(error, dict) else None
        raise CodexRPCError(f"codex rpc error {code}: {text}")
    result = message.get("result")
    return result if isinstance(result, dict) else {}


def _nested_id(result: JSONObject, key: str) -> str | None:
    inner = result.get(key)
    value = inner.get("id") if isinstance(inner, dict) else None
    return value if isinstance(value, str) and value else None


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


class _Waiter:
    """
    One caller waiting on a Conn: for a response, or for a turn's completion.

    @ivar deferred: what the caller holds; cancelling it forgets the wait.
    @ivar timers: delayed calls to cancel once the wait ends.
    @ivar forget: undoes the wait's registrations in the Conn (response handler, turn waiter).
    """

    def __init__(self, conn: Conn) -> None:
        self.deferred: Deferred[Any] = Deferred(lambda _: conn._cancelled(self))
        self.timers: list[IDelayedCall] = []
        self.forget: Callable[[], None] = lambda: None


ConnState = Literal["new", "handshaking", "open", "closing", "closed"]


@implementer(IAttachment, IRPCReceiver)
class Conn:
    """
    The broker's JSON-RPC connection to one workspace's app-server (§8.4).

    @ivar handle: the app-server it is connected to.
    @ivar attached_threads: thread ids started or resumed on this connection.
    @ivar last_activity: the clock's time of the last message read or written.
    """

    def __init__(
        self,
        handle: AppServerHandle,
        supervisor: ISupervisor,
        clock: IReactorTime,
        metrics: AppMetrics | None = None,
        crash_grace: float = CRASH_GRACE,
    ) -> None:
        """
        @param handle: the app-server to talk to.
        @param supervisor: told about activity; the Conn attaches to C{handle} through it.
        @param clock: for every timeout of the connection.
        @param metrics: C{broker_connections} and C{approvals_auto_replied{path="broker"}}.
        @param crash_grace: seconds a dropped connection waits for the supervisor's crash notice.
        """
        self.handle = handle
        self.attached_threads: set[str] = set()
        self._supervisor = supervisor
        self._clock = clock
        self._metrics = metrics
        self._crash_grace = crash_grace
        self.last_activity = clock.seconds()
        self._state: ConnState = "new"
        self._link: IRPCLink | None = None
        self._next_id = 1
        self._responders: dict[int, Callable[[JSONObject], None]] = {}
        self._waiters: set[_Waiter] = set()
        self._turn_waiters: dict[str, _Waiter] = {}
        self._completed: dict[str, tuple[JSONObject, IDelayedCall]] = {}
        self._items: dict[str, list[object]] = {}
        self._end: AppServerEnd | None = None
        self._failed_with: TransportError | None = None
        self._grace: IDelayedCall | None = None
        self._unusable_observers: list[Callable[[Conn], None]] = []
        self._lost_waiters: list[Deferred[None]] = []

    @property
    def workspace_id(self) -> str:
        """
        The workspace of the app-server.
        """
        return self.handle.workspace_id

    @property
    def is_open(self) -> bool:
        """
        Whether requests can be sent: the handshake completed and the connection is not closing.
        """
        return self._state == "open"

    @property
    def busy(self) -> bool:
        """
        Whether a request or turn is pending (such a Conn is never idle, §8.5).
        """
        return bool(self._waiters)

    def when_unusable(self, observer: Callable[[Conn], None]) -> None:
        """
        Call C{observer(self)} once, as soon as the Conn can no longer be used (closing, closed, or
        its app-server ended); at once if that already happened.
        """
        if self._state in ("closing", "closed"):
            observer(self)
        else:
            self._unusable_observers.append(observer)

    def wait_closed(self) -> Deferred[None]:
        """
        Fire once the link has ended (at once when it has or never opened).
        """
        d: Deferred[None] = Deferred()
        if self._state == "closed" or self._link is None:
            d.callback(None)
        else:
            self._lost_waiters.append(d)
        return d

    # ---------------------------------------------------------------------------------------------
    # Opening

    def link_opened(self, link: IRPCLink) -> None:
        """
        The websocket is open; the handshake comes next.
        """
        self._link = link
        self._state = "handshaking"
        if self._metrics is not None:
            self._metrics.broker_connections.inc()

    def handshake(self) -> Deferred[None]:
        """
        Send C{initialize} (id 1), wait up to 30 s for its response, then send C{initialized}.

        @return: fails with L{SubprocessCrash} (C{initialize rpc error: …}, C{initialize timed out})
            or the error the connection closed with; the Conn is closed on failure.
        """
        waiter = self._new_waiter()
        waiter.timers.append(
            self._clock.callLater(
                INITIALIZE_TIMEOUT,
                lambda: self._fail(waiter, SubprocessCrash("initialize timed out")),
            )
        )
        request_id = self._next_id
        self._next_id += 1
        self._responders[request_id] = lambda message: self._settle(waiter, message)
        waiter.forget = lambda: self._forget_response(request_id)
        self._send_bytes(INITIALIZE_REQUEST)

        def answered(message: JSONObject) -> None:
            if "error" in message:
                error = message["error"]
                text = error.get("message") if isinstance(error, dict) else error
                raise SubprocessCrash(f"initialize rpc error: {text}")
            self._send_bytes(INITIALIZED_NOTIFICATION)
            self._state = "open"

        def failed(failure: Failure) -> Failure:
            if failure.check(CancelledError):
                return failure
            error = transport_error(cast(BaseException, failure.value))
            if isinstance(error, WSDisconnect) and error.message == CONNECTION_CLOSED:
                # The app-server hung up on the handshake: a handshake failure (§8.3).
                error = SubprocessCrash("dial: connection closed during initialize")
            self.close(CLOSE_NORMAL, "gateway closing", error)
            return Failure(error)

        d = waiter.deferred.addCallback(answered)
        d.addErrback(failed)
        return d

    # ---------------------------------------------------------------------------------------------
    # Requests

    def start_thread(self) -> Deferred[str]:
        """
        C{thread/start} C{{}}; the new thread is attached to this Conn.

        @return: the thread id; fails with a L{TransportError}.
        """
        return ensureDeferred(self._start_thread())

    async def _start_thread(self) -> str:
        result = _rpc_result(await self._call("thread/start", {}))
        thread_id = _nested_id(result, "thread")
        if thread_id is None:
            raise CodexRPCError("thread/start result missing thread.id")
        self.attached_threads.add(thread_id)
        return thread_id

    def turn(
        self, thread_id: str, params: Mapping[str, object], timeout: float = DEFAULT_TURN_TIMEOUT
    ) -> Deferred[JSONObject]:
        """
        Run one turn on C{thread_id} and return codex's final Turn (§8.4).

        @param params: the caller's C{TurnStartParams} keys, sent after C{threadId}.
        @param timeout: seconds from sending C{turn/start} to C{turn/completed}.
        @return: the Turn with its C{items}; fails with a L{TransportError}. Cancelling it stops
            waiting without interrupting the turn.
        """
        return ensureDeferred(self._turn(thread_id, params, timeout))

    async def _turn(self, thread_id: str, params: Mapping[str, object], timeout: float) -> JSONObject:
        if thread_id not in self.attached_threads:
            _rpc_result(await self._call("thread/resume", {"threadId": thread_id}))
            self.attached_threads.add(thread_id)
        turn: JSONObject = await self._start_turn(thread_id, {"threadId": thread_id, **params}, timeout)
        return turn

    def _start_turn(
        self, thread_id: str, params: Mapping[str, object], timeout: float
    ) -> Deferred[JSONObject]:
        self._check_usable()
        waiter = self._new_waiter()
        request_id = self._next_id
        turn_id: str | None = None
        response_timer: IDelayedCall | None = None

        def responded(message: JSONObject) -> None:
            nonlocal turn_id
            if response_timer is not None and response_timer.active():
                response_timer.cancel()
            try:
                turn_id = _nested_id(_rpc_result(message), "turn")
                if turn_id is None:
                    raise CodexRPCError("turn/start result missing turn.id")
            except CodexRPCError as e:
                self._fail(waiter, e)
                return
            buffered = self._completed.pop(turn_id, None)
            if buffered is not None:
                completed, expiry = buffered
                if expiry.active():
                    expiry.cancel()
                self._settle(waiter, completed)
            else:
                self._turn_waiters[turn_id] = waiter

        def forget() -> None:
            self._forget_response(request_id)
            if turn_id is not None and self._turn_waiters.get(turn_id) is waiter:
                del self._turn_waiters[turn_id]

        def turn_timed_out() -> None:
            if waiter not in self._waiters:
                return
            if turn_id is not None:
                self._interrupt(thread_id, turn_id)  # before _timed_out may close the link
            self._timed_out(waiter, f"turn timed out (thread={thread_id} turn={turn_id or ''})")
            if turn_id is None:
                self._interrupt_when_started(request_id, thread_id)

        def response_timed_out() -> None:
            if waiter not in self._waiters:
                return
            self._timed_out(waiter, f"turn/start timed out after {_seconds_text(RPC_TIMEOUT)}")
            self._interrupt_when_started(request_id, thread_id)

        waiter.forget = forget
        # Both limits start when turn/start is sent (§8.4 step 3).
        waiter.timers.append(self._clock.callLater(timeout, turn_timed_out))
        if timeout > RPC_TIMEOUT:
            response_timer = self._clock.callLater(RPC_TIMEOUT, response_timed_out)
            waiter.timers.append(response_timer)
        self._send_request("turn/start", params, responded)
        result: Deferred[JSONObject] = waiter.deferred
        return result

    def _interrupt(self, thread_id: str, turn_id: str) -> None:
        # §8.4 step 4: sent without waiting for (or registering) its answer.
        self._send_request("turn/interrupt", {"threadId": thread_id, "turnId": turn_id}, None)

    def _interrupt_when_started(self, request_id: int, thread_id: str) -> None:
        # The caller gave up before codex named the turn: interrupt it if the name still comes.
        def late(message: JSONObject) -> None:
            try:
                turn_id = _nested_id(_rpc_result(message), "turn")
            except CodexRPCError:
                return
            if turn_id is not None:
                self._interrupt(thread_id, turn_id)

        if self._state == "open":
            self._responders[request_id] = late

    def _forget_response(self, request_id: int) -> None:
        self._responders.pop(request_id, None)

    def _call(self, method: str, params: Mapping[str, object]) -> Deferred[JSONObject]:
        """
        Send a request; fire with its response message, or fail after L{RPC_TIMEOUT}.
        """
        self._check_usable()
        waiter = self._new_waiter()
        request_id = self._next_id

        def timed_out() -> None:
            if waiter in self._waiters:
                self._timed_out(waiter, f"{method} timed out after {_seconds_text(RPC_TIMEOUT)}")

        waiter.forget = lambda: self._forget_response(request_id)
        waiter.timers.append(self._clock.callLater(RPC_TIMEOUT, timed_out))
        self._send_request(method, params, lambda message: self._settle(waiter, message))
        result: Deferred[JSONObject] = waiter.deferred
        return result

    def _check_usable(self) -> None:
        if self._state != "open":
            failed = self._failed_with
            raise type(failed)(failed.message) if failed is not None else WSDisconnect(CONNECTION_CLOSED)

    def _send_request(
        self,
        method: str,
        params: Mapping[str, object],
        on_response: Callable[[JSONObject], None] | None,
    ) -> int:
        request_id = self._next_id
        self._next_id += 1
        if on_response is not None:
            self._responders[request_id] = on_response
        self._send_bytes(
            _encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        )
        return request_id

    def _send_bytes(self, payload: bytes) -> None:
        if self._link is None or self._state not in ("handshaking", "open"):
            return
        self._link.send_text(payload)
        self._activity()

    def _activity(self) -> None:
        self.last_activity = self._clock.seconds()
        self._supervisor.touch(self.handle.workspace_id)

    # ---------------------------------------------------------------------------------------------
    # Waiters

    def _new_waiter(self) -> _Waiter:
        waiter = _Waiter(self)
        self._waiters.add(waiter)
        return waiter

    def _end_wait(self, waiter: _Waiter) -> bool:
        if waiter not in self._waiters:
            return False
        self._waiters.discard(waiter)
        for timer in waiter.timers:
            if timer.active():
                timer.cancel()
        waiter.forget()
        return True

    def _settle(self, waiter: _Waiter, value: object) -> None:
        if self._end_wait(waiter):
            waiter.deferred.callback(value)

    def _fail(self, waiter: _Waiter, error: TransportError) -> None:
        if self._end_wait(waiter):
            waiter.deferred.errback(error)

    def _cancelled(self, waiter: _Waiter) -> None:
        # The caller went away: forget the wait; the Deferred fails with CancelledError.
        self._end_wait(waiter)

    def _timed_out(self, waiter: _Waiter, message: str) -> None:
        self._fail(waiter, BrokerTimeout(message))
        if not self._waiters:
            self.close(CLOSE_NORMAL, "turn timed out")

    # ---------------------------------------------------------------------------------------------
    # Reader

    def message_received(self, payload: bytes) -> None:
        """
        See L{IRPCReceiver.message_received}: dispatch one message (§8.4 reader).
        """
        if self._state in ("closing", "closed"):
            return
        self._activity()
        message = _decode(payload)
        if message is None:
            return
        if "method" not in message:
            if "id" in message:
                self._response(message)
            return
        if self._state == "handshaking":
            return  # §8.4: only the initialize response counts until the handshake is done
        method = message["method"]
        if not isinstance(method, str):
            return
        if message.get("id") is not None:
            self._server_request(message, method)
        elif method == "item/completed":
            self._item_completed(message.get("params"))
        elif method == "turn/completed":
            self._turn_completed(message.get("params"))

    def _response(self, message: JSONObject) -> None:
        request_id = message["id"]
        if type(request_id) is not int:
            return
        responder = self._responders.pop(request_id, None)
        if responder is not None:
            responder(message)

    def _server_request(self, message: JSONObject, method: str) -> None:
        reply = approval_reply(message)
        if reply is not None:
            if self._metrics is not None:
                self._metrics.approvals_auto_replied.labels(path="broker").inc()
            self._send_bytes(reply)
            return
        self._send_bytes(
            _encode(
                {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {
                        "code": -32601,
                        "message": f"method not implemented by agentserver broker: {method}",
                    },
                }
            )
        )

    def _item_completed(self, params: object) -> None:
        if not isinstance(params, dict) or "item" not in params:
            return
        turn_id = params.get("turnId")
        if isinstance(turn_id, str):
            self._items.setdefault(turn_id, []).append(params["item"])

    def _turn_completed(self, params: object) -> None:
        turn = params.get("turn") if isinstance(params, dict) else None
        if not isinstance(turn, dict):
            return
        turn_id = turn.get("id")
        if not isinstance(turn_id, str):
            return
        items = self._items.pop(turn_id, None)
        if items:
            turn["items"] = items  # assignment to an existing key keeps its place
        waiter = self._turn_waiters.pop(turn_id, None)
        if waiter is not None:
            self._settle(waiter, turn)
            return
        previous = self._completed.pop(turn_id, None)
        if previous is not None and previous[1].active():
            previous[1].cancel()
        expiry = self._clock.callLater(COMPLETED_TURN_TTL, self._completed.pop, turn_id, None)
        self._completed[turn_id] = (turn, expiry)

    # ---------------------------------------------------------------------------------------------
    # Ending

    def close(
        self,
        code: int = CLOSE_NORMAL,
        reason: str = "gateway closing",
        error: TransportError | None = None,
    ) -> None:
        """
        Close the connection: fail every waiter with C{error} (default C{wsDisconnect}
        C{connection closed before turn/completed}) and start the closing handshake. Idempotent.
        """
        if self._state in ("closing", "closed"):
            return
        self._state = "closing" if self._link is not None else "closed"
        self._became_unusable()
        self._fail_all(error or WSDisconnect(CONNECTION_CLOSED))
        if self._link is not None:
            self._link.close(code, reason)

    def app_server_ended(self, end: AppServerEnd) -> None:
        """
        See L{IAttachment.app_server_ended}: fail the waiters with the end's error and close.
        """
        self._end = end
        error = end_error(end)
        if self._grace is not None:
            # The link already dropped; this is the explanation it waited for.
            self._grace.cancel()
            self._grace = None
            self._fail_all(error)
            return
        self.close(CLOSE_NORMAL, "gateway closing", error)

    def link_lost(self, code: int, reason: str) -> None:
        """
        See L{IRPCReceiver.link_lost}.
        """
        if self._state == "closed":
            return
        self._state = "closed"
        self._link = None
        if self._metrics is not None:
            self._metrics.broker_connections.dec()
        self._became_unusable()
        lost, self._lost_waiters = self._lost_waiters, []
        for d in lost:
            d.callback(None)
        if self._failed_with is not None:
            return
        if self._end is None and self.handle.ended is not None:
            self._end = self.handle.ended
        if self._end is not None:
            self._fail_all(end_error(self._end))
        elif code == CLOSE_ABNORMAL and self._waiters and self._crash_grace > 0:
            self._grace = self._clock.callLater(self._crash_grace, self._grace_over)
        else:
            self._fail_all(WSDisconnect(CONNECTION_CLOSED))

    def _grace_over(self) -> None:
        self._grace = None
        ended = self.handle.ended
        self._fail_all(end_error(ended) if ended is not None else WSDisconnect(CONNECTION_CLOSED))

    def _became_unusable(self) -> None:
        observers, self._unusable_observers = self._unusable_observers, []
        for observer in observers:
            observer(self)

    def _fail_all(self, error: TransportError) -> None:
        if self._failed_with is not None:
            return
        self._failed_with = error
        self._supervisor.detach(self.handle, self)
        for waiter in list(self._waiters):
            self._fail(waiter, error)
        self._responders.clear()
        self._turn_waiters.clear()
        self._items.clear()
        for _, expiry in self._completed.values():
            if expiry.active():
                expiry.cancel()
        self._completed.clear()


async def _open_conn(
    handle: AppServerHandle,
    supervisor: ISupervisor,
    connector: Connector,
    clock: IReactorTime,
    metrics: AppMetrics | None,
    crash_grace: float,
) -> Conn:
    conn = Conn(handle, supervisor, clock, metrics, crash_grace)
    try:
        link = await connector(handle.ws_url + "/", conn)
    except CancelledError:
        raise
    except Exception as e:
        raise SubprocessCrash(f"dial: {e}") from None
    conn.link_opened(link)
    if not supervisor.attach(handle, conn):
        error = (
            end_error(handle.ended) if handle.ended else SubprocessCrash("dial: app-server went away")
        )
        conn.close(CLOSE_NORMAL, "gateway closing", error)
        raise error
    try:
        await conn.handshake()
    except CancelledError:
        conn.close(CLOSE_NORMAL, "gateway closing", WSDisconnect(SHUTTING_DOWN))
        raise
    return conn


def open_conn(
    handle: AppServerHandle,
    supervisor: ISupervisor,
    connector: Connector,
    clock: IReactorTime,
    metrics: AppMetrics | None = None,
    crash_grace: float = CRASH_GRACE,
) -> Deferred[Conn]:
    """
    Dial C{<ws_url>/} of C{handle}, attach the L{Conn} to it and do the handshake.

    @return: the open Conn; fails with L{SubprocessCrash} (C{dial: …}, C{initialize …}) or the error
        of an app-server that ended meanwhile.
    """
    return ensureDeferred(_open_conn(handle, supervisor, connector, clock, metrics, crash_grace))
