"""
In-memory HTTP servers for the tests of L{codexgw.httpclient} and its callers: a
C{treq.testing.StubTreq} over a resource that records every request and answers as a test scripts
it — with a response, by hanging (before or after the response headers) or by dropping the
connection — plus a requester whose every request fails, and a log collector. No sockets, no real
time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import ILogObserver, LogEvent, Logger, formatEvent
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from codexgw.httpclient import HTTPRequester


@dataclass(frozen=True)
class Answer:
    """
    A scripted response.

    @ivar status: the status code.
    @ivar body: the body.
    @ivar headers: extra response headers.
    """

    status: int
    body: bytes = b""
    headers: dict[bytes, bytes] = field(default_factory=dict)


class Hang:
    """
    Script: send nothing at all (or, with C{partial}, the headers and C{partial} of the body) and
    never finish.
    """

    def __init__(self, partial: bytes | None = None) -> None:
        self.partial = partial


class Drop:
    """
    Script: close the connection without answering.
    """


Script = Answer | Hang | Drop


@dataclass(frozen=True)
class Recorded:
    """
    One request as the server saw it.

    @ivar method: e.g. C{b"POST"}.
    @ivar uri: path and query, e.g. C{b"/api/x?workspace_id=ws"}.
    @ivar headers: the request headers.
    @ivar body: the request body.
    """

    method: bytes
    uri: bytes
    headers: Headers
    body: bytes

    def header(self, name: bytes) -> list[bytes] | None:
        """
        All values of the request header C{name}, or C{None}.
        """
        values = self.headers.getRawHeaders(name)
        return None if values is None else list(values)


class RecordingResource(Resource):
    """
    A leaf resource recording each request and answering with C{script(recorded)}.
    """

    isLeaf = True

    def __init__(self, script: Callable[[Recorded], Script]) -> None:
        super().__init__()
        self.script = script
        self.requests: list[Recorded] = []
        self.pending: list[Request] = []

    def render(self, request: Request) -> bytes | int:
        """
        Record the request, then follow the script.
        """
        assert request.content is not None
        recorded = Recorded(
            request.method, request.uri, request.requestHeaders.copy(), request.content.read()
        )
        self.requests.append(recorded)
        action = self.script(recorded)
        if isinstance(action, Answer):
            request.setResponseCode(action.status)
            for name, value in action.headers.items():
                request.setHeader(name, value)
            return action.body
        if isinstance(action, Hang):
            self.pending.append(request)
            if action.partial is not None:
                request.setResponseCode(200)
                request.write(action.partial)
            return NOT_DONE_YET
        transport: Any = request.channel.transport
        transport.loseConnection()
        return NOT_DONE_YET


class StubServer:
    """
    A L{RecordingResource} behind a C{StubTreq}.

    @ivar resource: the server side.
    @ivar http: the client side, as the code under test takes it.
    """

    def __init__(self, script: Callable[[Recorded], Script] | Script) -> None:
        scripted = script if callable(script) else (lambda recorded: script)
        self.resource = RecordingResource(scripted)
        self._treq: Any = StubTreq(self.resource)
        self.http = cast(HTTPRequester, self._treq)

    def flush(self) -> None:
        """
        Move all pending bytes between client and server.
        """
        self._treq.flush()

    @property
    def requests(self) -> list[Recorded]:
        """
        The requests received so far.
        """
        return self.resource.requests

    def only_request(self) -> Recorded:
        """
        The one request received (fails unless exactly one was).
        """
        assert len(self.requests) == 1, self.requests
        return self.requests[0]


class RefusingHTTP:
    """
    An HTTP client whose every request fails as a refused connection does with treq.
    """

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: str, url: str, **kwargs: object) -> Deferred[Any]:
        """
        Fail with C{ResponseNeverReceived([ConnectionRefusedError])}.
        """
        self.calls += 1
        return fail(ResponseNeverReceived([Failure(ConnectionRefusedError("connection refused"))]))

    @property
    def http(self) -> HTTPRequester:
        """
        This client, typed as the code under test takes it.
        """
        return cast(HTTPRequester, self)


@implementer(ILogObserver)
class LogCollector:
    """
    A L{Logger} whose events are kept for inspection.

    @ivar log: the logger to hand to the code under test.
    @ivar events: every event logged.
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []
        self.log = Logger(observer=self)

    def __call__(self, event: LogEvent) -> None:
        """
        Keep one event.
        """
        self.events.append(event)

    def messages(self) -> list[str]:
        """
        The formatted text of every event.
        """
        return [formatEvent(event) for event in self.events]

    def levels(self) -> list[str]:
        """
        The level name of every event.
        """
        return [event["log_level"].name for event in self.events]
