"""
Tests for L{codexgw.executor.registration}: the registration request and how its answers are read
(C{executor.md} §2 step 1, C{exec-gateway.md} §4.4).

Requests go to an in-memory resource through treq's C{StubTreq}; time is a L{task.Clock}.
"""

from __future__ import annotations

import json
import platform
import re
from typing import Any, cast

from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from codexgw.executor.registration import (
    MAX_REJECTION_TEXT,
    REQUEST_TIMEOUT,
    RegistrationClient,
    RegistrationFailed,
    RegistrationRejected,
    registration_url,
    user_agent,
)

GATEWAY = "http://gw.example:6060"
URL = "ws://gw.example:6060/codex-exec/exe_1?token=t.i.c"


class Gateway(Resource):
    """
    The registration route: records each request and answers with C{status} and C{body} (or never,
    when C{hang}).
    """

    isLeaf = True

    def __init__(self, status: int = 200, body: bytes | None = None, hang: bool = False) -> None:
        super().__init__()
        self.status = status
        self.body = body if body is not None else json.dumps({"id": "exe_1", "url": URL}).encode()
        self.hang = hang
        self.requests: list[dict[str, Any]] = []

    def render(self, request: Request) -> bytes | int:
        """
        Record and answer.
        """
        assert request.content is not None
        self.requests.append(
            {
                "method": request.method,
                "path": request.uri,
                "headers": {
                    k.decode().lower(): [v.decode() for v in vs]
                    for k, vs in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        if self.hang:
            return NOT_DONE_YET
        request.setResponseCode(self.status)
        return self.body


@implementer(IAgent)
class RefusingAgent:
    """
    An agent whose every connection is refused.
    """

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        """
        Fail at once, as a refused connection does.
        """
        return fail(ConnectionRefusedError("connection refused"))


class RegistrationTests(SynchronousTestCase):
    """
    L{RegistrationClient.register}.
    """

    def client(self, resource: Resource | None = None, http: HTTPClient | None = None) -> Any:
        """
        A client of C{resource} (or through C{http}) for executor C{exe_1}, on a clock.
        """
        self.clock = task.Clock()
        self.stub = StubTreq(resource) if resource is not None else None
        transport = http if http is not None else cast(HTTPClient, self.stub)
        return RegistrationClient(transport, self.clock, GATEWAY, "exe_1", "tok-123", "ua/1")

    def register(self, client: RegistrationClient) -> Deferred[str]:
        """
        Start one registration and let the stub answer.
        """
        d = client.register()
        if self.stub is not None:
            self.stub.flush()
        return d

    def test_request(self) -> None:
        """
        One C{POST /cloud/executor/exe_1/register} with the bearer token, the user agent, a JSON
        content type and the body C{{}}; the answer's C{url} is returned.
        """
        gateway = Gateway()
        url = self.successResultOf(self.register(self.client(gateway)))
        self.assertEqual(url, URL)
        [seen] = gateway.requests
        self.assertEqual(
            (seen["method"], seen["path"], seen["body"]),
            (b"POST", b"/cloud/executor/exe_1/register", b"{}"),
        )
        self.assertEqual(seen["headers"]["authorization"], ["Bearer tok-123"])
        self.assertEqual(seen["headers"]["user-agent"], ["ua/1"])
        self.assertEqual(seen["headers"]["content-type"], ["application/json"])

    def test_rejections(self) -> None:
        """
        Every 4xx is a L{RegistrationRejected} carrying the status and the body text; its message is
        the spec's log line.
        """
        for status in (400, 401, 403, 404, 409, 499):
            gateway = Gateway(status, b' {"error":"unauthorized"}\n')
            failure = self.failureResultOf(self.register(self.client(gateway)), RegistrationRejected)
            error = cast(RegistrationRejected, failure.value)
            self.assertEqual((error.status, error.body), (status, '{"error":"unauthorized"}'))
            self.assertEqual(str(error), f'registration rejected ({status}): {{"error":"unauthorized"}}')

    def test_rejection_text_bounded(self) -> None:
        """
        A long or non-UTF-8 body is cut to 500 characters, bad bytes replaced.
        """
        gateway = Gateway(401, b"\xff" + b"x" * 5000)
        failure = self.failureResultOf(self.register(self.client(gateway)), RegistrationRejected)
        body = cast(RegistrationRejected, failure.value).body
        self.assertEqual(len(body), MAX_REJECTION_TEXT)
        self.assertTrue(body.startswith("\ufffdxxx"))

    def test_retryable_answers(self) -> None:
        """
        5xx, other statuses, and a 200 without a usable ws URL are L{RegistrationFailed}.
        """
        cases = [
            Gateway(500),
            Gateway(503),
            Gateway(302),
            Gateway(200, b"not json"),
            Gateway(200, b"[]"),
            Gateway(200, b'{"url": 5}'),
            Gateway(200, b'{"url": "http://x/y"}'),
            Gateway(200, b"{}"),
        ]
        for gateway in cases:
            self.failureResultOf(self.register(self.client(gateway)), RegistrationFailed)

    def test_wss_url(self) -> None:
        """
        A C{wss://} URL is accepted as well.
        """
        gateway = Gateway(200, b'{"url": "wss://gw/codex-exec/exe_1?token=a.b"}')
        self.assertEqual(
            self.successResultOf(self.register(self.client(gateway))),
            "wss://gw/codex-exec/exe_1?token=a.b",
        )

    def test_large_body(self) -> None:
        """
        An answer body over 64 KiB is a failure, not read into memory whole.
        """
        gateway = Gateway(200, b"x" * (65 * 1024))
        failure = self.failureResultOf(self.register(self.client(gateway)), RegistrationFailed)
        self.assertIn("larger than", failure.getErrorMessage())

    def test_network_error(self) -> None:
        """
        A refused connection is a L{RegistrationFailed} with the error's text.
        """
        client = self.client(http=HTTPClient(RefusingAgent()))
        failure = self.failureResultOf(client.register(), RegistrationFailed)
        self.assertIn("refused", failure.getErrorMessage())

    def test_timeout(self) -> None:
        """
        No answer within 10 s is a L{RegistrationFailed}.
        """
        client = self.client(Gateway(hang=True))
        d = self.register(client)
        self.clock.advance(REQUEST_TIMEOUT - 0.1)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, RegistrationFailed)
        self.assertEqual(failure.getErrorMessage(), "no answer within 10s")

    def test_cancel(self) -> None:
        """
        Cancelling a registration in progress fails it with C{CancelledError}.
        """
        d = self.register(self.client(Gateway(hang=True)))
        d.cancel()
        self.failureResultOf(d, CancelledError)


class HelperTests(SynchronousTestCase):
    """
    The URL and the user agent.
    """

    def test_registration_url(self) -> None:
        """
        The exe id is percent-encoded as one path segment.
        """
        self.assertEqual(
            registration_url("https://gw", "exe_a/b c"),
            "https://gw/cloud/executor/exe_a%2Fb%20c/register",
        )

    def test_user_agent(self) -> None:
        """
        C{codexgw-executor/<version> (<OS> <release>; <arch>)}.
        """
        agent = user_agent()
        match = re.fullmatch(r"codexgw-executor/(\S+) \((.+) (.+); (.+)\)", agent)
        assert match is not None, agent
        self.assertEqual(
            match.group(2, 3, 4), (platform.system(), platform.release(), platform.machine())
        )
