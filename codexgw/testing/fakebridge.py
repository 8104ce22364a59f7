"""
A fake exec gateway for unit tests of envtools (C{envtools.md} §10: "a stand-in speaking relay
frames behind a fake gateway").

L{FakeExecGateway} accepts bridge dials in memory through its L{FakeExecGateway.connect} (a
L{codexgw.envtools.bridge.LinkConnector}): it records each dial (URL, exe id, token, User-Agent),
refuses it as the real gateway would (C{401 token expired}, C{503 executor not connected}, or any
status a test queues), or accepts it with a L{FakeBridgeStream}. A stream plays the gateway plus the
executor: it reads the client's relay frames (Resume first, Data reassembled, heartbeats answered
like the executor does), hands each whole JSON-RPC message to an exec-server backend and sends the
backend's replies back as Data frames with C{seq} from 0, segmented at 1 MiB. Tests can also send
any frame, Reset the stream, close or drop the websocket.

The backend is anything with C{handle(message)} and an C{on_reply} callable
(L{ExecServerBackend}): the fake exec-server of C{codexgw.testing.fakeexecserver} (e.g.
C{FakeExecGateway(lambda: FakeExecServer(clock))}), or the L{ScriptedExecServer} here, a trivial
responder whose answers a test sets per method. As on the executor, a backend with a C{close()} is
closed when its stream ends, and one with an C{on_exit} that exits resets its stream with
C{exec-server exited: 0}.

L{FakeBridgeLink} is the in-memory twin of the Autobahn L{codexgw.envtools.bridge.BridgeLink}; both
pass the same interface tests (C{tests.envtools.test_bridge}). L{FakeCapTokens} and
L{FakeResolverSource} are the two other hooks a bridge pool and a resolver need.

Everything is synchronous: a frame sent by the client reaches the stream (and a backend that
answers at once answers) before C{send_frame} returns. Dials complete at once unless
L{FakeExecGateway.hold_dials} is set.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from zope.interface import implementer

from codexgw import relayframe
from codexgw.envtools.bridge import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    SEGMENT_BYTES,
    IBridgeLink,
    IBridgeLinkReceiver,
    UpgradeRefused,
)
from codexgw.envtools.interfaces import DialError, ICapTokenProvider, IResolverSource
from codexgw.relay_pb2 import RelayMessageFrame
from codexgw.relayframe import Reassembler, SegmentError, Undecodable

#: What a resolver source lists: ConnectedExecutor objects.
_Listing = list[dict[str, Any]]

#: The bridge base URL of a L{FakeExecGateway} unless told otherwise.
FAKE_BRIDGE_BASE = "ws://fake-exec-gateway/bridge"


# -------------------------------------------------------------------------------------------------
# The in-memory websocket


@implementer(IBridgeLink)
class FakeBridgeLink:
    """
    The bridge client's websocket, in memory. The far end is played by calling L{receive} and
    L{lose}, and hears of the client through L{on_frame} and L{on_close}.

    @ivar sent: every frame the client sent, in order (nothing after its close).
    @ivar closed_with: C{(code, reason)} of the client's first close, or C{None}.
    @ivar lost: C{(code, reason)} the link ended with, or C{None}.
    @ivar on_frame: told each frame the client sends.
    @ivar on_close: told when the client starts the closing handshake.
    @ivar finish_close: when true (the default) a close by the client completes at once, as if the
        far end answered the closing handshake.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.lost: tuple[int, str] | None = None
        self.receiver: IBridgeLinkReceiver | None = None
        self.on_frame: Callable[[bytes], None] | None = None
        self.on_close: Callable[[int, str], None] | None = None
        self.finish_close = True
        self._early: list[bytes] = []

    # IBridgeLink

    def attach(self, receiver: IBridgeLinkReceiver) -> None:
        """
        See L{IBridgeLink.attach}.
        """
        self.receiver = receiver
        early, self._early = self._early, []
        for frame in early:
            receiver.frame_received(frame)
        if self.lost is not None:
            receiver.link_lost(*self.lost)

    def send_frame(self, frame: bytes) -> None:
        """
        See L{IBridgeLink.send_frame}.
        """
        if self.closed_with is not None or self.lost is not None:
            return
        self.sent.append(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    def close(self, code: int, reason: str) -> None:
        """
        See L{IBridgeLink.close}.
        """
        if self.closed_with is not None or self.lost is not None:
            return
        self.closed_with = (code, reason)
        if self.on_close is not None:
            self.on_close(code, reason)
        if self.finish_close:
            self.lose(code, reason)

    # the far end

    def receive(self, frame: bytes) -> None:
        """
        The far end sends a binary message.
        """
        if self.lost is not None:
            return
        if self.receiver is not None:
            self.receiver.frame_received(frame)
        else:
            self._early.append(frame)

    def receive_text(self) -> None:
        """
        The far end sends a text message: links do not report text.
        """

    def lose(self, code: int = CLOSE_ABNORMAL, reason: str = "") -> None:
        """
        The websocket ends with C{code} and C{reason} (reported once).
        """
        if self.lost is not None:
            return
        self.lost = (code, reason)
        if self.receiver is not None:
            self.receiver.link_lost(code, reason)


# -------------------------------------------------------------------------------------------------
# Exec-server backends


class ExecServerBackend(Protocol):
    """
    What a stream hands JSON-RPC messages to: an exec-server answering through C{on_reply}.
    """

    on_reply: Callable[[bytes], None]

    def handle(self, message: bytes) -> None:
        """
        One whole JSON-RPC message from the client.
        """


class ScriptedError(Exception):
    """
    Raised by a scripted answer: the reply is a JSON-RPC error with C{code} and C{message}.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ScriptedExecServer:
    """
    A trivial exec-server: C{initialize} answered with a session, notifications swallowed, every
    other method answered from L{results} (a value, or a callable of the params that returns one or
    raises L{ScriptedError}), unknown methods with -32601 as the real one, C{silent} methods never.

    @ivar requests: every message received, parsed.
    @ivar results: the answer per method.
    @ivar silent: methods left unanswered.
    @ivar with_jsonrpc: add C{"jsonrpc":"2.0"} to replies (the real exec-server does not).
    """

    def __init__(self) -> None:
        self.on_reply: Callable[[bytes], None] = lambda reply: None
        self.requests: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.silent: set[str] = set()
        self.with_jsonrpc = False

    def handle(self, message: bytes) -> None:
        """
        Answer one message (see the class docstring).
        """
        try:
            request = json.loads(message)
        except ValueError as e:
            self.reply({"id": -1, "error": {"code": -32700, "message": f"parse error: {e}"}})
            return
        if not isinstance(request, dict):
            return
        self.requests.append(request)
        if "id" not in request:
            return
        method = request.get("method")
        if method in self.silent:
            return
        answer = self.results.get(method) if isinstance(method, str) else None
        if method == "initialize" and answer is None:
            answer = {"sessionId": str(uuid.uuid4()), "environmentInfo": {}}
        if answer is None and method not in self.results:
            error = {"code": -32601, "message": f"exec-server stub does not implement `{method}` yet"}
            self.reply({"id": request["id"], "error": error})
            return
        try:
            result = answer(request.get("params")) if callable(answer) else answer
        except ScriptedError as e:
            self.reply({"id": request["id"], "error": {"code": e.code, "message": e.message}})
            return
        self.reply({"id": request["id"], "result": result})

    def reply(self, message: dict[str, Any]) -> None:
        """
        Send one reply.
        """
        if self.with_jsonrpc:
            message = {"jsonrpc": "2.0", **message}
        self.on_reply(json.dumps(message, separators=(",", ":")).encode("utf-8"))


# -------------------------------------------------------------------------------------------------
# The gateway


@dataclass(frozen=True)
class DialRecord:
    """
    One dial as the fake gateway saw it.
    """

    url: str
    exe_id: str
    token: str
    user_agent: str


class FakeBridgeStream:
    """
    The gateway's (and executor's) end of one accepted bridge.

    @ivar link: the client's end of the websocket.
    @ivar dial: the dial that opened it.
    @ivar backend: the exec-server behind it.
    @ivar frames: every frame the client sent, decoded (C{None} for an undecodable one).
    @ivar stream_id: the stream id of the client's Resume, once it arrived.
    @ivar messages: every whole Data payload the client sent, in order.
    @ivar data_frames: every Data frame's C{(seq, segment_index, segment_count, len(payload))}.
    @ivar heartbeats: how many heartbeats the client sent.
    @ivar reset_by_client: the reason of the client's Reset, if it sent one.
    @ivar ended: C{(code, reason)} the websocket ended with, or C{None}.
    @ivar answer_heartbeats: whether heartbeats are answered (as the executor does).
    """

    def __init__(self, dial: DialRecord, backend: ExecServerBackend) -> None:
        self.dial = dial
        self.backend = backend
        self.link = FakeBridgeLink()
        self.link.on_frame = self._from_client
        self.link.on_close = self._closed_by_client
        self.frames: list[RelayMessageFrame | None] = []
        self.stream_id: str | None = None
        self.messages: list[bytes] = []
        self.data_frames: list[tuple[int, int, int, int]] = []
        self.heartbeats = 0
        self.reset_by_client: str | None = None
        self.ended: tuple[int, str] | None = None
        self.answer_heartbeats = True
        self._reassembler = Reassembler()
        self._seq = 0
        backend.on_reply = self.send_message
        if hasattr(backend, "on_exit"):
            # The executor resets a stream whose exec-server exited (executor.md §3).
            backend.on_exit = self._backend_exited

    @property
    def requests(self) -> list[dict[str, Any]]:
        """
        The client's messages parsed as JSON (those that parse).
        """
        parsed = []
        for message in self.messages:
            try:
                parsed.append(json.loads(message))
            except ValueError:
                continue
        return parsed

    # toward the client

    def send_frame(self, frame: bytes) -> None:
        """
        Send the client one raw binary message.
        """
        if self.ended is None:
            self.link.receive(frame)

    def send_message(self, payload: bytes, segment_bytes: int = SEGMENT_BYTES) -> None:
        """
        Send the client one JSON-RPC message as Data frames of the next C{seq} (segmented above
        C{segment_bytes}); dropped once the websocket ended.
        """
        if self.ended is not None or self.stream_id is None:
            return
        seq = self._seq
        self._seq += 1
        for frame in relayframe.data_frames(self.stream_id, seq, payload, segment_bytes):
            self.send_frame(frame)

    def reset(self, reason: str) -> None:
        """
        Send the client C{Reset{reason}}, then close the bridge with 1000 C{stream reset}.
        """
        if self.stream_id is not None:
            self.send_frame(relayframe.reset_frame(self.stream_id, reason))
        self.close(CLOSE_NORMAL, "stream reset")

    def close(self, code: int = CLOSE_NORMAL, reason: str = "bridge session closed") -> None:
        """
        The gateway closes the websocket cleanly.
        """
        if self.ended is None:
            self.ended = (code, reason)
            self.link.lose(code, reason)
            self._stop_backend()

    def drop(self) -> None:
        """
        The connection vanishes without a closing handshake.
        """
        if self.ended is None:
            self.ended = (CLOSE_ABNORMAL, "")
            self.link.lose(CLOSE_ABNORMAL, "")
            self._stop_backend()

    # from the client

    def _from_client(self, frame: bytes) -> None:
        try:
            decoded = relayframe.decode(frame)
        except Undecodable:
            self.frames.append(None)
            return
        self.frames.append(decoded)
        body = decoded.WhichOneof("body")
        if self.stream_id is None:
            if body != "resume" or not decoded.stream_id:
                self.close(1002, "first frame must be Resume")
                return
            self.stream_id = decoded.stream_id
            return
        if decoded.stream_id != self.stream_id:
            return
        if body == "data":
            self._data(decoded)
        elif body == "heartbeat":
            self.heartbeats += 1
            if self.answer_heartbeats:
                self.send_frame(relayframe.heartbeat_frame(self.stream_id))
        elif body == "reset":
            self.reset_by_client = decoded.reset.reason
            self.close(CLOSE_NORMAL, "stream reset")

    def _data(self, decoded: RelayMessageFrame) -> None:
        data = decoded.data
        self.data_frames.append((data.seq, data.segment_index, data.segment_count, len(data.payload)))
        try:
            message = self._reassembler.feed(
                data.seq, data.segment_index, data.segment_count, data.payload
            )
        except SegmentError:
            self.reset("bad segment sequence")
            return
        if message is not None:
            self.messages.append(message)
            self.backend.handle(message)

    def _closed_by_client(self, code: int, reason: str) -> None:
        if self.ended is None:
            self.ended = (code, reason)
            self._stop_backend()

    def _stop_backend(self) -> None:
        # A stream that ends ends its exec-server (and its processes), as on the executor.
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def _backend_exited(self) -> None:
        if self.ended is None:
            self.reset("exec-server exited: 0")


class FakeExecGateway:
    """
    The C{/bridge/{exe_id}} route of an exec gateway, in memory, with its connected executors.

    @ivar bridge_base: the bridge base URL dials must use.
    @ivar executors: the connected executors, as ConnectedExecutor objects by exe id, in binding
        order.
    @ivar dials: every dial, in order.
    @ivar streams: every accepted bridge, in order.
    @ivar refusals: C{(status, body)} answers for the next dials, used up first.
    @ivar expired_tokens: tokens answered with C{401 token expired}.
    @ivar unreachable: when set, every dial fails with C{bridge dial: <unreachable>}.
    @ivar hold_dials: while true, dials wait until L{release_dials}.
    """

    def __init__(
        self,
        backend: Callable[[], ExecServerBackend] = ScriptedExecServer,
        bridge_base: str = FAKE_BRIDGE_BASE,
    ) -> None:
        """
        @param backend: makes the exec-server of each accepted stream.
        """
        self.backend = backend
        self.bridge_base = bridge_base
        self.executors: dict[str, dict[str, Any]] = {}
        self.dials: list[DialRecord] = []
        self.streams: list[FakeBridgeStream] = []
        self.refusals: list[tuple[int, str]] = []
        self.expired_tokens: set[str] = set()
        self.unreachable: str | None = None
        self.hold_dials = False
        self._held: list[tuple[Deferred[IBridgeLink], Callable[[], IBridgeLink]]] = []

    def add_executor(
        self,
        exe_id: str,
        name: str = "",
        description: str = "",
        is_default: bool = False,
        last_seen_at: str | None = None,
    ) -> dict[str, Any]:
        """
        Connect an executor (and bind it with C{name}); return its ConnectedExecutor object.
        """
        entry: dict[str, Any] = {
            "exe_id": exe_id,
            "name": name,
            "description": description,
            "is_default": is_default,
        }
        if last_seen_at is not None:
            entry["last_seen_at"] = last_seen_at
        self.executors[exe_id] = entry
        return entry

    def remove_executor(self, exe_id: str) -> None:
        """
        The executor disconnects (its open bridges stay, as on the real gateway until it notices).
        """
        self.executors.pop(exe_id, None)

    def connect(self, url: str, token: str, user_agent: str) -> Deferred[IBridgeLink]:
        """
        A L{codexgw.envtools.bridge.LinkConnector}: dial C{url} with C{token} and C{user_agent}.
        """
        prefix = self.bridge_base + "/"
        if not url.startswith(prefix):
            return fail(DialError(f"bridge dial: HTTP 404: not found: {url}"))
        record = DialRecord(url, unquote(url[len(prefix) :]), token, user_agent)
        self.dials.append(record)
        if self.hold_dials:
            held: Deferred[IBridgeLink] = Deferred()
            self._held.append((held, lambda: self._answer(record)))
            return held
        return maybeDeferred(self._answer, record)

    def release_dials(self) -> None:
        """
        Answer every held dial, in order.
        """
        held, self._held = self._held, []
        for d, answer in held:
            maybeDeferred(answer).chainDeferred(d)

    def resolver_source(self) -> FakeResolverSource:
        """
        A resolver source listing this gateway's connected executors.
        """
        return FakeResolverSource(lambda: list(self.executors.values()))

    def _answer(self, record: DialRecord) -> IBridgeLink:
        if self.unreachable is not None:
            raise DialError(f"bridge dial: {self.unreachable}")
        if self.refusals:
            status, body = self.refusals.pop(0)
            raise UpgradeRefused(status, body)
        if not record.token:
            raise UpgradeRefused(401, "missing Bearer")
        if record.token in self.expired_tokens:
            raise UpgradeRefused(401, "token expired")
        if record.exe_id not in self.executors:
            raise UpgradeRefused(503, "executor not connected")
        stream = FakeBridgeStream(record, self.backend())
        self.streams.append(stream)
        return stream.link


# -------------------------------------------------------------------------------------------------
# The other hooks


@implementer(ICapTokenProvider)
class FakeCapTokens:
    """
    A cap-token provider handing out C{tokens} in turn: C{token(False)} the current one,
    C{token(True)} the next one (the last stays current).

    @ivar calls: the C{force} of every call, in order.
    """

    def __init__(self, tokens: Sequence[str] = ("tok-123",)) -> None:
        self.tokens = list(tokens)
        self.index = 0
        self.calls: list[bool] = []

    def token(self, force: bool) -> Deferred[str]:
        """
        See L{ICapTokenProvider.token}.
        """
        self.calls.append(force)
        if force and self.index + 1 < len(self.tokens):
            self.index += 1
        return succeed(self.tokens[self.index])


@implementer(IResolverSource)
class FakeResolverSource:
    """
    A resolver source over a function returning the ConnectedExecutor objects.

    @ivar calls: how many times C{list()} was called.
    @ivar error: when set, C{list()} fails with it.
    @ivar hold: while true, C{list()} waits until L{release}.
    """

    def __init__(self, entries: Callable[[], _Listing]) -> None:
        self._entries = entries
        self.calls = 0
        self.error: Exception | None = None
        self.hold = False
        self._held: list[Deferred[_Listing]] = []

    def list(self) -> Deferred[_Listing]:
        """
        See L{IResolverSource.list}.
        """
        self.calls += 1
        if self.hold:
            d: Deferred[_Listing] = Deferred()
            self._held.append(d)
            return d
        return self._answer()

    def release(self) -> None:
        """
        Answer every held C{list()} now (with the error, if one is set).
        """
        held, self._held = self._held, []
        for d in held:
            self._answer().chainDeferred(d)

    def _answer(self) -> Deferred[_Listing]:
        if self.error is not None:
            return fail(self.error)
        return succeed([dict(entry) for entry in self._entries()])
