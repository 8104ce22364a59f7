"""
Integration tests of the fake model provider: its HTTP contract over a real port on 127.0.0.1, and the
real codex (the pinned C{codex app-server}) using it as its only model.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

from codexgw.testing.fakemodel import (
    BrokenStream,
    FunctionCallReply,
    JSONObject,
    ModelProviderListener,
    ModelScript,
    TextReply,
    ToolSearchReply,
    listen_model_provider,
)
from tests.codexclient import (
    DUMMY_API_KEY,
    AppServerConnection,
    AppServerProcess,
    alive,
    connect_app_server,
    descendants,
    initialize,
    prepare_homes,
    provider_config,
    spawn_app_server,
)
from tests.support import codex_binary
from tests.test_fakemodel import MODEL_BODY, ChunkCollector, ModelProviderContractTests

#: The stdio MCP server the tool test configures.
ECHO_SERVER = Path(__file__).resolve().parent / "stdio_mcp_echo.py"

#: Deadlines, in seconds, for each step that waits on codex.
STARTUP_SECONDS = 30
RPC_SECONDS = 20
TURN_SECONDS = 60


def member(value: object, *path: str) -> object:
    """
    Return C{value[path[0]][path[1]]...}, failing the test when a step is not an object holding
    that key.

    @param value: a decoded JSON value.
    @param path: the keys to follow.
    """
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise AssertionError(f"no {key!r} in {json.dumps(value)[:500]}")
        value = value[key]
    return value


def listed(value: object) -> list[object]:
    """
    Return C{value}, failing the test unless it is a list.

    @param value: a decoded JSON value.
    """
    if not isinstance(value, list):
        raise AssertionError(f"not a list: {json.dumps(value)[:500]}")
    return value


class ModelProviderOverTCPTests(ModelProviderContractTests, TestCase):
    """
    The provider contract against L{listen_model_provider} on a real port on 127.0.0.1.
    """

    timeout = 30

    async def setUp(self) -> None:  # type: ignore[override]  # trial awaits a coroutine setUp
        """
        Listen on a free loopback port and reach it with a non-persistent agent, so that no
        client connection outlives its response.
        """
        self.script = ModelScript()
        self.listener: ModelProviderListener = await listen_model_provider(
            reactor, "tcp:0:interface=127.0.0.1", self.script
        )
        self.addCleanup(self.listener.stop)
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        self.origin = self.listener.base_url.removesuffix("/v1")

    def flush(self) -> None:
        """
        Nothing to do: the network delivers by itself.
        """

    def test_base_url(self) -> None:
        """
        The base URL is C{http://127.0.0.1:<the bound port>/v1}.
        """
        port = self.listener.port.getHost().port  # type: ignore[attr-defined]
        self.assertEqual(self.listener.base_url, f"http://127.0.0.1:{port}/v1")

    async def test_stop_closes_hung_stream(self) -> None:
        """
        Stopping the listener closes a stream left hanging: the client sees its body cut short.
        """
        self.script.enqueue(BrokenStream("stuck", release=Deferred()))
        response = await self.request(b"POST", "/v1/responses", json.dumps(MODEL_BODY).encode())
        collector = ChunkCollector()
        ended = treq.collect(response, collector)
        await collector.received(b'"delta":"stuck"').addTimeout(10, reactor)
        await self.listener.stop()
        await self.assertFailure(ended, ResponseFailed)


@dataclass
class RunningCodex:
    """
    A codex app-server started by a test, with its fake model.

    @ivar script: the fake model's script.
    @ivar process: the app-server child.
    @ivar connection: an initialized JSON-RPC connection to it.
    """

    script: ModelScript
    process: AppServerProcess
    connection: AppServerConnection


class CodexWithFakeModelTests(TestCase):
    """
    The real codex app-server, configured with the fake provider as its model, completes turns
    from scripted replies.
    """

    timeout = 120

    async def start_codex(
        self, script: ModelScript, mcp_servers: Mapping[str, Sequence[str]] | None = None
    ) -> RunningCodex:
        """
        Serve C{script} on a loopback port, start C{codex app-server} using it, connect and
        initialize; everything is stopped in cleanup (codex's whole process group killed).

        @param script: the fake model's script.
        @param mcp_servers: stdio MCP servers to configure, name to command line.
        """
        listener = await listen_model_provider(reactor, "tcp:0:interface=127.0.0.1", script)
        self.addCleanup(listener.stop)
        root = Path(self.mktemp()).resolve()
        home, codex_home = prepare_homes(root, provider_config(listener.base_url, mcp_servers))
        process = spawn_app_server(reactor, codex_binary(), home, codex_home)
        self.addCleanup(process.kill, reactor)
        url = await process.listening.addTimeout(STARTUP_SECONDS, reactor)
        connection = await connect_app_server(reactor, url).addTimeout(RPC_SECONDS, reactor)
        self.addCleanup(connection.close)
        await Deferred.fromCoroutine(initialize(connection)).addTimeout(RPC_SECONDS, reactor)
        return RunningCodex(script, process, connection)

    async def run_turn(self, connection: AppServerConnection, prompt: str) -> JSONObject:
        """
        Start a thread, start a turn with C{prompt}, and wait for the turn's C{turn/completed}.

        @param connection: an initialized connection.
        @param prompt: the user's text.
        @return: the C{turn} object of C{turn/completed}.
        """
        started = await connection.request("thread/start", {}).addTimeout(RPC_SECONDS, reactor)
        thread_id = member(started, "thread", "id")
        turn = await connection.request(
            "turn/start",
            {"threadId": thread_id, "input": [{"type": "text", "text": prompt}]},
        ).addTimeout(RPC_SECONDS, reactor)
        turn_id = member(turn, "turn", "id")
        completed = await connection.notification(
            "turn/completed", lambda params: member(params, "turn", "id") == turn_id
        ).addTimeout(TURN_SECONDS, reactor)
        self.assertEqual(completed["threadId"], thread_id)
        finished = completed["turn"]
        assert isinstance(finished, dict)
        return finished

    def completed_items(self, connection: AppServerConnection, kind: str) -> list[JSONObject]:
        """
        Return the items of type C{kind} from the C{item/completed} notifications received.

        @param connection: the connection that received them.
        @param kind: an item type, e.g. C{agentMessage}.
        """
        items = [
            member(notification, "params", "item")
            for notification in connection.notifications
            if notification.get("method") == "item/completed"
        ]
        return [item for item in items if isinstance(item, dict) and item.get("type") == kind]

    async def test_text_turn(self) -> None:
        """
        initialize → initialized → thread/start → turn/start ends with C{turn/completed} (status
        C{completed}) whose agent message is the scripted text; codex asked the fake exactly once,
        with the prompt as the last input item, and made no other HTTP request.
        """
        script = ModelScript()
        script.enqueue(TextReply("Hello from the fake model provider."))
        codex = await self.start_codex(script)
        turn = await self.run_turn(codex.connection, "Say hello.")
        self.assertEqual(turn["status"], "completed")
        self.assertEqual(
            [member(item, "text") for item in self.completed_items(codex.connection, "agentMessage")],
            ["Hello from the fake model provider."],
        )
        self.assertEqual([(r.method, r.path) for r in script.requests], [("POST", "/v1/responses")])
        request = script.requests[0]
        self.assertEqual(request.headers["authorization"], f"Bearer {DUMMY_API_KEY}")
        self.assertEqual(member(request.body, "model"), "gpt-5.5")
        self.assertIs(member(request.body, "stream"), True)
        self.assertEqual(
            request.input_items()[-1]["content"], [{"type": "input_text", "text": "Say hello."}]
        )

    async def test_mcp_tool_call(self) -> None:
        """
        The model finds the stdio MCP server's tool with C{tool_search} (codex presents it as
        function C{echo} in namespace C{mcp__echoer}), calls it with a C{function_call} in that
        namespace, and the tool's output comes back in the next model request as a
        C{function_call_output}; the turn completes with the final text, and killing codex
        leaves none of its processes behind.
        """
        script = ModelScript()
        script.enqueue(
            ToolSearchReply(query="echo", call_id="search_1"),
            FunctionCallReply(
                namespace="mcp__echoer", name="echo", arguments={"text": "ping"}, call_id="call_1"
            ),
            TextReply("The echo tool answered."),
        )
        codex = await self.start_codex(script, {"echoer": [sys.executable, str(ECHO_SERVER)]})
        turn = await self.run_turn(codex.connection, "Echo ping, please.")
        self.assertEqual(turn["status"], "completed")
        first, searched, answered = script.model_requests

        # MCP tools are not in `tools`: codex offers tool_search and names the namespace.
        self.assertIn("tool_search", [tool.get("type") for tool in first.tools()])
        self.assertIn(b"mcp__echoer", first.raw_body)
        search_output = searched.input_items()[-1]
        self.assertEqual(
            (search_output["type"], search_output["call_id"]), ("tool_search_output", "search_1")
        )
        namespaces = {
            member(tool, "name"): [member(inner, "name") for inner in listed(member(tool, "tools"))]
            for tool in listed(member(search_output, "tools"))
        }
        self.assertEqual(namespaces, {"mcp__echoer": ["echo"]})

        outputs = [
            item
            for item in answered.input_items()
            if item.get("type") == "function_call_output" and item.get("call_id") == "call_1"
        ]
        self.assertEqual(len(outputs), 1)
        self.assertIn("echo: ping", json.dumps(outputs[0]["output"]))
        self.assertEqual(answered.input_items()[-1], outputs[0])

        (call,) = self.completed_items(codex.connection, "mcpToolCall")
        self.assertEqual((call["server"], call["tool"], call["status"]), ("echoer", "echo", "completed"))
        self.assertEqual(member(call, "result", "content"), [{"type": "text", "text": "echo: ping"}])
        self.assertEqual(
            [member(item, "text") for item in self.completed_items(codex.connection, "agentMessage")],
            ["The echo tool answered."],
        )

        pid = codex.process.pid
        assert pid is not None
        family = descendants(pid)
        self.assertTrue(
            any(ECHO_SERVER.name in Path(f"/proc/{child}/cmdline").read_text() for child in family),
            "the MCP server is not a descendant of codex",
        )
        await codex.process.kill(reactor)
        self.assertEqual({child for child in family if alive(child)}, set())

    async def test_broken_stream(self) -> None:
        """
        A stream that ends without C{response.completed} fails the turn with codex's
        C{stream closed before response.completed} error (retries are off in the test config, so
        codex asks only once).
        """
        script = ModelScript()
        script.enqueue(BrokenStream("partial"))
        codex = await self.start_codex(script)
        turn = await self.run_turn(codex.connection, "Hello?")
        self.assertEqual(turn["status"], "failed")
        self.assertIn("stream closed before response.completed", str(member(turn, "error", "message")))
        self.assertEqual(len(script.model_requests), 1)
        errors = [n for n in codex.connection.notifications if n.get("method") == "error"]
        self.assertEqual([member(n, "params", "willRetry") for n in errors], [False])
