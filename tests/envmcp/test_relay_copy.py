"""
Criterion 68 through the tool: C{copy_path} over the http transport asks env-mcp's relay creator
(L{codexgw.envmcp.hooks.LoopbackRelayCreator}) for a ticket at C{POST /internal/relay/create}; a 503
answer is I{relay unavailable} and a 429 answer becomes C{relay/create: status 429: <body>}. The
executors are stand-ins that answer only the pre-check C{fs/getMetadata}.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from codexgw.envmcp.hooks import LoopbackRelayCreator
from codexgw.envtools.context import EnvContext
from codexgw.envtools.interfaces import (
    DEFAULT_CALL_TIMEOUT,
    CallError,
    IBridgePool,
    IExecServerClient,
    IResolverSource,
    ToolResult,
)
from codexgw.envtools.resolver import Resolver
from codexgw.envtools.toolset import tool_named
from tests.appgw.stubhttp import Answer, StubServer

LOOPBACK = "loop-token"


@implementer(IExecServerClient)
class MetadataOnly:
    """
    An exec-server stand-in: C{fs/getMetadata} of C{/src/f} is a file, any other path is missing;
    every other method fails (the tests must not get that far).

    @ivar calls: every C{(method, params)} received.
    """

    ended = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def call(self, method: str, params: Any, timeout: float = DEFAULT_CALL_TIMEOUT) -> Deferred[Any]:
        """
        Answer the pre-check; fail anything else.
        """
        self.calls.append((method, params))
        if method == "fs/getMetadata" and params == {"path": "file:///src/f"}:
            return succeed({"isDirectory": False, "isFile": True, "isSymlink": False, "size": 3})
        if method == "fs/getMetadata":
            return fail(
                CallError(f"{method}: No such file or directory (os error 2) (code=-32004)", -32004)
            )
        return fail(CallError(f"{method}: not in this test"))

    def session_opened(self) -> None:
        """
        Not used.
        """

    def session_closed(self) -> None:
        """
        Not used.
        """

    def close(self) -> None:
        """
        Not used.
        """


@implementer(IBridgePool)
class Pool:
    """
    One stand-in client per exe id.
    """

    def __init__(self) -> None:
        self.clients = {"exe_a": MetadataOnly(), "exe_b": MetadataOnly()}

    def get(self, exe_id: str) -> Deferred[IExecServerClient]:
        """
        The exe id's stand-in.
        """
        return succeed(self.clients[exe_id])

    def close(self) -> None:
        """
        Nothing to close.
        """


@implementer(IResolverSource)
class Source:
    """
    Two environments: C{a} (C{exe_a}) and C{b} (C{exe_b}).
    """

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """
        The two entries.
        """
        return succeed(
            [
                {"exe_id": "exe_a", "name": "a", "description": "", "is_default": True},
                {"exe_id": "exe_b", "name": "b", "description": "", "is_default": False},
            ]
        )


class CopyPathRelayTests(SynchronousTestCase):
    """
    C{copy_path} with env-mcp's relay creator.
    """

    def copy(self, server: StubServer, transport: str) -> ToolResult:
        """
        Run C{copy_path} from C{a:/src/f} to C{b:/dst/f} with C{transport}, the relay creator
        talking to C{server}.
        """
        clock = Clock()
        creator = LoopbackRelayCreator(server.http, clock, "http://127.0.0.1:8086", LOOPBACK)
        context = EnvContext(Pool(), Resolver(Source(), clock), clock, creator)
        tool = tool_named("copy_path")
        assert tool is not None
        arguments = {
            "source_environment_id": "a",
            "source_path": "/src/f",
            "destination_environment_id": "b",
            "destination_path": "/dst/f",
            "timeout_ms": 5000,
            "transport": transport,
        }
        d = tool.run(context, arguments)
        server.flush()
        return self.successResultOf(d)

    def test_request(self) -> None:
        """
        The ticket request carries both exe ids, ttl C{ceil(timeout/1 s) + 30} and max_bytes 0 in
        the spec's order, with C{X-Loopback-Token}.
        """
        server = StubServer(Answer(429, b'{"error":"too many relays"}\n'))
        self.copy(server, "http")
        request = server.only_request()
        self.assertEqual((request.method, request.uri), (b"POST", b"/internal/relay/create"))
        body = json.loads(request.body)
        self.assertEqual(list(body), ["source_exe_id", "dest_exe_id", "ttl_seconds", "max_bytes"])
        self.assertEqual(
            body, {"source_exe_id": "exe_a", "dest_exe_id": "exe_b", "ttl_seconds": 35, "max_bytes": 0}
        )
        self.assertEqual(request.header(b"X-Loopback-Token"), [LOOPBACK.encode()])

    def test_429(self) -> None:
        """
        A 429 answer is the error C{relay/create: status 429: <body>}, with no fallback.
        """
        result = self.copy(StubServer(Answer(429, b'{"error":"too many relays"}\n')), "http")
        self.assertEqual(
            result,
            ToolResult(
                'copy_path failed (http): relay/create: status 429: {"error":"too many relays"}',
                is_error=True,
            ),
        )

    def test_503(self) -> None:
        """
        A 503 answer is I{relay unavailable}: with transport C{http} the text says the relay is not
        enabled.
        """
        result = self.copy(StubServer(Answer(503, b'{"error":"relay disabled"}\n')), "http")
        self.assertEqual(result, ToolResult("copy_path failed (http): relay not enabled", is_error=True))
