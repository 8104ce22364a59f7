"""
Tests for L{codexgw.testing.fakemodel}: the script, the event encoding, the offline responder, and the
provider contract (L{ModelProviderContractTests}) run in memory here; the same contract runs over a real
port, and against the real codex, in L{tests.test_fakemodel_codex}.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import treq
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IListeningPort
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer
from zope.interface.verify import verifyObject

from codexgw.testing.fakemodel import (
    AGENTSERVER_NAMESPACE,
    OFFLINE_TEXT,
    UNSCRIPTED_TEXT,
    BrokenStream,
    FunctionCallReply,
    IModelScript,
    JSONObject,
    ModelProviderResource,
    ModelScript,
    RecordedRequest,
    TextReply,
    ToolSearchReply,
    encode_event,
    listen_model_provider,
    offline_responder,
    reply_events,
)

# The mixin below calls TestCase methods; only the type checker needs to know it.
if TYPE_CHECKING:
    _ContractBase = TestCase
else:
    _ContractBase = object

#: A minimal model request body, as far as the fake cares.
MODEL_BODY: JSONObject = {"model": "gpt-5.5", "stream": True, "input": []}


def model_request(
    body: object = None, headers: Mapping[str, str] | None = None, path: str = "/v1/responses"
) -> RecordedRequest:
    """
    Build a L{RecordedRequest} as the resource would record it.

    @param body: the parsed JSON body (its JSON text becomes the raw body).
    @param headers: lower-case header names and values.
    @param path: the request path.
    """
    return RecordedRequest(
        method="POST",
        path=path,
        query="",
        headers=dict(headers or {}),
        raw_body=json.dumps(body).encode(),
        body=body,
    )


def user_message(text: str) -> JSONObject:
    """
    Return a user message input item shaped as codex 0.169.0 sends it.

    @param text: the message text.
    """
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def parse_sse(body: bytes) -> list[JSONObject]:
    """
    Split a C{text/event-stream} body into its events' data objects, checking that each event's
    C{event:} line names the C{type} of its data.

    @param body: the whole (or partial) body; an unfinished last event is ignored.
    """
    events: list[JSONObject] = []
    for block in body.decode("utf-8").split("\n\n")[:-1]:
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(fields["data"])
        assert isinstance(data, dict)
        if fields["event"] != data["type"]:
            raise AssertionError(f"event line {fields['event']!r} names another type: {data!r}")
        events.append(data)
    return events


def types(events: list[JSONObject]) -> list[object]:
    """
    Return the C{type} of each event, collapsing runs of C{response.output_text.delta}.

    @param events: event data objects.
    """
    result: list[object] = []
    for event in events:
        if not (result and event["type"] == result[-1] == "response.output_text.delta"):
            result.append(event["type"])
    return result


@implementer(IBodyProducer)
class BytesProducer:
    """
    An L{IBodyProducer} that writes its bytes at once, so that it needs no reactor.

    @ivar length: the body length.
    """

    def __init__(self, body: bytes) -> None:
        """
        @param body: the request body.
        """
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Write the whole body.

        @param consumer: the request being written.
        """
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing to pause: everything is written at once.
        """

    def resumeProducing(self) -> None:
        """
        Nothing to resume: everything is written at once.
        """

    def stopProducing(self) -> None:
        """
        Nothing to stop: everything is written at once.
        """


class ChunkCollector:
    """
    Collects a response body as it arrives and lets a test wait until some bytes have arrived.

    @ivar data: the bytes received so far.
    """

    def __init__(self) -> None:
        """
        Start empty.
        """
        self.data = b""
        self._waiters: list[tuple[bytes, Deferred[None]]] = []

    def __call__(self, chunk: bytes) -> None:
        """
        Take one chunk of the body.

        @param chunk: the bytes.
        """
        self.data += chunk
        for entry in list(self._waiters):
            if entry[0] in self.data:
                self._waiters.remove(entry)
                entry[1].callback(None)

    def received(self, marker: bytes) -> Deferred[None]:
        """
        Fire once C{marker} is part of the bytes received.

        @param marker: the bytes to wait for.
        """
        waiting: Deferred[None] = Deferred()
        if marker in self.data:
            waiting.callback(None)
        else:
            self._waiters.append((marker, waiting))
        return waiting


class ModelProviderContractTests(_ContractBase):
    """
    The contract of the fake model provider over HTTP, for any way of reaching it.

    A concrete test case sets C{script} (the L{ModelScript} the provider answers from), C{agent}
    (an L{IAgent} that reaches the provider at C{origin}, e.g. C{http://127.0.0.1:PORT}) and
    implements L{flush}.
    """

    script: ModelScript
    agent: IAgent
    origin: str

    def flush(self) -> None:
        """
        Deliver the bytes written so far on both sides (a no-op over a real network).
        """
        raise NotImplementedError()

    def request(
        self,
        method: bytes,
        path: str,
        body: bytes | None = None,
        headers: Mapping[bytes, bytes] | None = None,
    ) -> Deferred[IResponse]:
        """
        Send one request to the provider.

        @param method: the HTTP method.
        @param path: the path (with query, if any).
        @param body: the request body, if any.
        @param headers: request headers.
        """
        sending = self.agent.request(
            method,
            (self.origin + path).encode("ascii"),
            Headers({name: [value] for name, value in (headers or {}).items()}),
            None if body is None else BytesProducer(body),
        )
        self.flush()
        return sending

    async def post_model(
        self, body: object = MODEL_BODY, headers: Mapping[bytes, bytes] | None = None
    ) -> tuple[IResponse, bytes]:
        """
        POST a model request and read the whole answer.

        @param body: the JSON body.
        @param headers: extra request headers.
        @return: the response and its body.
        """
        all_headers = {b"content-type": b"application/json", **(headers or {})}
        response = await self.request(b"POST", "/v1/responses", json.dumps(body).encode(), all_headers)
        reading = treq.content(response)
        self.flush()
        return response, await reading

    async def test_text_reply(self) -> None:
        """
        A L{TextReply} streams C{response.created}, C{response.output_item.added}, the text as
        C{response.output_text.delta} events, the finished message in C{response.output_item.done},
        and C{response.completed} with the response id and token usage.
        """
        text = "Hello from the fake model provider; this text spans several deltas."
        self.script.enqueue(TextReply(text))
        response, body = await self.post_model()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        events = parse_sse(body)
        self.assertEqual(
            types(events),
            [
                "response.created",
                "response.output_item.added",
                "response.output_text.delta",
                "response.output_item.done",
                "response.completed",
            ],
        )
        deltas = [event["delta"] for event in events if event["type"] == "response.output_text.delta"]
        self.assertGreater(len(deltas), 1)
        self.assertEqual("".join(str(delta) for delta in deltas), text)
        done = events[-2]["item"]
        assert isinstance(done, dict)
        self.assertEqual(done["type"], "message")
        self.assertEqual(done["role"], "assistant")
        self.assertEqual(done["content"], [{"type": "output_text", "text": text, "annotations": []}])
        created, completed = events[0]["response"], events[-1]["response"]
        assert isinstance(created, dict) and isinstance(completed, dict)
        self.assertEqual(created["id"], completed["id"])
        self.assertEqual(completed["status"], "completed")
        self.assertIn("usage", completed)

    async def test_function_call_reply(self) -> None:
        """
        A L{FunctionCallReply} streams a C{function_call} item carrying C{namespace}, C{name},
        C{arguments} (as JSON text) and C{call_id}, then C{response.completed}; no text deltas.
        """
        arguments = {"environment_id": "local", "command": ["echo", "hi"]}
        self.script.enqueue(
            FunctionCallReply(
                namespace=AGENTSERVER_NAMESPACE, name="shell", arguments=arguments, call_id="call_7"
            )
        )
        _, body = await self.post_model()
        events = parse_sse(body)
        self.assertEqual(
            types(events),
            [
                "response.created",
                "response.output_item.added",
                "response.output_item.done",
                "response.completed",
            ],
        )
        item = events[2]["item"]
        assert isinstance(item, dict)
        self.assertEqual(
            {key: item[key] for key in ("type", "namespace", "name", "call_id")},
            {
                "type": "function_call",
                "namespace": "mcp__agentserver",
                "name": "shell",
                "call_id": "call_7",
            },
        )
        assert isinstance(item["arguments"], str)
        self.assertEqual(json.loads(item["arguments"]), arguments)

    async def test_function_call_without_namespace(self) -> None:
        """
        A L{FunctionCallReply} without a namespace sends no C{namespace} member, and string
        arguments are sent verbatim.
        """
        self.script.enqueue(FunctionCallReply(name="get_goal", arguments="{not json", call_id="c"))
        _, body = await self.post_model()
        item = parse_sse(body)[2]["item"]
        assert isinstance(item, dict)
        self.assertNotIn("namespace", item)
        self.assertEqual(item["arguments"], "{not json")

    async def test_tool_search_reply(self) -> None:
        """
        A L{ToolSearchReply} streams a client-executed C{tool_search_call} item with the query and
        limit as arguments.
        """
        self.script.enqueue(ToolSearchReply(query="echo", call_id="search_1", limit=3))
        _, body = await self.post_model()
        events = parse_sse(body)
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual(
            events[2]["item"],
            {
                "type": "tool_search_call",
                "id": events[1]["item"]["id"],  # type: ignore[index]
                "call_id": "search_1",
                "execution": "client",
                "status": "completed",
                "arguments": {"query": "echo", "limit": 3},
            },
        )

    async def test_broken_stream(self) -> None:
        """
        A L{BrokenStream} without C{release} sends the start of a message and its deltas, then ends
        the body without C{response.output_item.done} or C{response.completed}.
        """
        self.script.enqueue(BrokenStream("partial answer"))
        response, body = await self.post_model()
        self.assertEqual(response.code, 200)
        events = parse_sse(body)
        self.assertEqual(
            types(events),
            ["response.created", "response.output_item.added", "response.output_text.delta"],
        )
        self.assertEqual(events[-1]["delta"], "partial answer")

    async def test_broken_stream_hangs_until_released(self) -> None:
        """
        A L{BrokenStream} with C{release} keeps the body open after its deltas, sends nothing more,
        and ends the body (still without C{response.completed}) once C{release} fires.
        """
        release: Deferred[None] = Deferred()
        self.script.enqueue(BrokenStream("stuck", release=release))
        response = await self.request(b"POST", "/v1/responses", json.dumps(MODEL_BODY).encode())
        collector = ChunkCollector()
        ended = treq.collect(response, collector)
        self.flush()
        await collector.received(b'"delta":"stuck"')
        self.assertNoResult(ended)
        release.callback(None)
        self.flush()
        await ended
        self.assertEqual(
            types(parse_sse(collector.data)),
            ["response.created", "response.output_item.added", "response.output_text.delta"],
        )

    async def test_requests_recorded(self) -> None:
        """
        Every request is recorded in arrival order with its method, path, query, lower-case
        headers, raw body and parsed JSON body; C{model_requests} holds only the model calls.
        """
        first = {**MODEL_BODY, "input": [user_message("one")]}
        await self.post_model(first, {b"X-Codex-Turn-Metadata": b"turn-1"})
        models = await self.request(b"GET", "/v1/models?client_version=0.169.0")
        self.flush()
        await treq.content(models)
        second = {**MODEL_BODY, "input": [user_message("two")]}
        await self.post_model(second)
        recorded = self.script.requests
        self.assertEqual(
            [(r.method, r.path, r.query) for r in recorded],
            [
                ("POST", "/v1/responses", ""),
                ("GET", "/v1/models", "client_version=0.169.0"),
                ("POST", "/v1/responses", ""),
            ],
        )
        self.assertEqual(recorded[0].body, first)
        self.assertEqual(recorded[0].raw_body, json.dumps(first).encode())
        self.assertEqual(recorded[0].headers["x-codex-turn-metadata"], "turn-1")
        self.assertEqual(recorded[0].headers["content-type"], "application/json")
        self.assertEqual(self.script.model_requests, [recorded[0], recorded[2]])
        self.assertEqual(recorded[2].input_items(), [user_message("two")])

    async def test_wait_for_model_request(self) -> None:
        """
        C{model_request(n)} fires with the n-th model request once it has arrived.
        """
        waiting = self.script.model_request(1)
        await self.post_model()
        self.assertNoResult(waiting)
        await self.post_model({**MODEL_BODY, "input": [user_message("second")]})
        second = self.successResultOf(waiting)
        self.assertEqual(second.input_items(), [user_message("second")])

    async def test_unscripted_request(self) -> None:
        """
        With the queue empty and no responder, a model request gets a completed text reply
        (so that a client retrying a failure gets an answer, not an error loop).
        """
        _, body = await self.post_model()
        events = parse_sse(body)
        self.assertEqual(events[-1]["type"], "response.completed")
        self.assertEqual(events[-2]["item"]["content"][0]["text"], UNSCRIPTED_TEXT)  # type: ignore[index]

    async def assert_json_error(self, response: IResponse, code: int) -> JSONObject:
        """
        Check that C{response} is a JSON error with status C{code}, and return its error object.

        @param response: the response to check.
        @param code: the expected status.
        """
        reading = treq.json_content(response)
        self.flush()
        answer = await reading
        self.assertEqual(response.code, code)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        error = answer["error"]
        assert isinstance(error, dict)
        self.assertIsInstance(error["message"], str)
        return error

    async def test_malformed_json(self) -> None:
        """
        A model request whose body is not JSON gets a 400 JSON error (never a traceback) and is
        still recorded, with no parsed body; the queue is left alone.
        """
        self.script.enqueue(TextReply("kept"))
        for raw in (b"{not json", b"\xff\xfe", b"[" * 100000, b""):
            response = await self.request(b"POST", "/v1/responses", raw)
            await self.assert_json_error(response, 400)
        self.assertEqual([r.body for r in self.script.requests], [None] * 4)
        _, body = await self.post_model()
        self.assertIn(b"kept", body)

    async def test_body_not_an_object(self) -> None:
        """
        A model request whose JSON body is not an object gets a 400 JSON error.
        """
        body: object
        for body in ([], "text", 3, None):
            response = await self.request(b"POST", "/v1/responses", json.dumps(body).encode())
            await self.assert_json_error(response, 400)

    async def test_wrong_method(self) -> None:
        """
        C{GET /v1/responses} gets a 405 JSON error naming C{POST} as allowed.
        """
        response = await self.request(b"GET", "/v1/responses")
        await self.assert_json_error(response, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])

    async def test_unknown_path(self) -> None:
        """
        Any other path gets a 404 JSON error.
        """
        for method, path in ((b"POST", "/v1/chat/completions"), (b"GET", "/"), (b"PUT", "/v1")):
            response = await self.request(method, path, b"{}")
            await self.assert_json_error(response, 404)

    async def test_models(self) -> None:
        """
        C{GET /v1/models} answers an empty model list in both the OpenAI (C{data}) and the codex
        (C{models}) shape.
        """
        response = await self.request(b"GET", "/v1/models")
        reading = treq.json_content(response)
        self.flush()
        self.assertEqual(await reading, {"object": "list", "data": [], "models": []})
        self.assertEqual(response.code, 200)


class ModelProviderInMemoryTests(ModelProviderContractTests, TestCase):
    """
    The provider contract against L{ModelProviderResource} reached in memory, with no real I/O.
    """

    def setUp(self) -> None:
        """
        Serve a fresh script through an in-memory agent.
        """
        self.script = ModelScript()
        self._traversal = RequestTraversalAgent(ModelProviderResource(self.script))
        self.agent = self._traversal
        self.origin = "http://fake-model.invalid"

    def flush(self) -> None:
        """
        Pump the in-memory connections.
        """
        self._traversal.flush()


class ModelScriptTests(SynchronousTestCase):
    """
    Tests for L{ModelScript} on its own.
    """

    def test_interface(self) -> None:
        """
        L{ModelScript} provides L{IModelScript}.
        """
        self.assertTrue(verifyObject(IModelScript, ModelScript()))

    def test_queue_then_responder(self) -> None:
        """
        Replies come from the queue in order; when it is empty the responder answers.
        """
        seen: list[RecordedRequest] = []

        def responder(request: RecordedRequest) -> TextReply:
            seen.append(request)
            return TextReply("from the responder")

        script = ModelScript(responder)
        script.enqueue(TextReply("one"), BrokenStream())
        script.enqueue(TextReply("three"))
        request = model_request(MODEL_BODY)
        self.assertEqual(
            [script.next_reply(request) for _ in range(4)],
            [TextReply("one"), BrokenStream(), TextReply("three"), TextReply("from the responder")],
        )
        self.assertEqual(seen, [request])

    def test_unscripted(self) -> None:
        """
        Without a responder, an empty queue answers L{UNSCRIPTED_TEXT}.
        """
        self.assertEqual(ModelScript().next_reply(model_request({})), TextReply(UNSCRIPTED_TEXT))

    def test_record(self) -> None:
        """
        C{record} keeps every request; C{model_requests} keeps only C{POST /v1/responses}.
        """
        script = ModelScript()
        other = RecordedRequest("GET", "/v1/models", "", {}, b"", None)
        first, second = model_request({"n": 1}), model_request({"n": 2})
        for request in (first, other, second):
            script.record(request)
        self.assertEqual(script.requests, [first, other, second])
        self.assertEqual(script.model_requests, [first, second])

    def test_model_request_already_recorded(self) -> None:
        """
        C{model_request} of a request already recorded fires at once.
        """
        script = ModelScript()
        request = model_request({})
        script.record(request)
        self.assertIs(self.successResultOf(script.model_request(0)), request)

    def test_model_request_later(self) -> None:
        """
        C{model_request} fires when the request arrives; other requests do not count.
        """
        script = ModelScript()
        waiting = script.model_request(0)
        twice = script.model_request(0)
        script.record(RecordedRequest("GET", "/v1/models", "", {}, b"", None))
        self.assertNoResult(waiting)
        request = model_request({})
        script.record(request)
        self.assertIs(self.successResultOf(waiting), request)
        self.assertIs(self.successResultOf(twice), request)

    def test_model_request_cancelled(self) -> None:
        """
        A cancelled wait fails with L{CancelledError} and is not fired by a later request.
        """
        script = ModelScript()
        waiting = script.model_request(0)
        waiting.cancel()
        self.failureResultOf(waiting, CancelledError)
        script.record(model_request({}))
        self.assertEqual(len(script.model_requests), 1)

    def test_recorded_request_accessors(self) -> None:
        """
        C{input_items} and C{tools} return the objects of those lists, and nothing for bodies
        without them.
        """
        request = model_request(
            {"input": [user_message("hi"), "junk"], "tools": [{"type": "web_search"}, 1]}
        )
        self.assertEqual(request.input_items(), [user_message("hi")])
        self.assertEqual(request.tools(), [{"type": "web_search"}])
        body: object
        for body in (None, [], {"input": "x", "tools": {}}):
            self.assertEqual(model_request(body).input_items(), [])
            self.assertEqual(model_request(body).tools(), [])
        self.assertFalse(model_request({}, path="/v1/models").is_model_request)


class EventTests(SynchronousTestCase):
    """
    Tests for L{reply_events} and L{encode_event}.
    """

    def test_encode(self) -> None:
        """
        An event is framed as C{event: <type>}, C{data: <compact json>} and a blank line.
        """
        self.assertEqual(
            encode_event({"type": "response.created", "response": {"id": "r"}}),
            b'event: response.created\ndata: {"type":"response.created","response":{"id":"r"}}\n\n',
        )

    def test_ids(self) -> None:
        """
        The response id and item id given are used throughout the events.
        """
        events = reply_events(TextReply("hi"), "resp_9", "item_9")
        self.assertEqual(events[0]["response"]["id"], "resp_9")  # type: ignore[index]
        self.assertEqual(events[-1]["response"]["id"], "resp_9")  # type: ignore[index]
        self.assertEqual(
            {event.get("item_id") or event["item"]["id"] for event in events[1:-1]},  # type: ignore[index]
            {"item_9"},
        )

    def test_empty_text(self) -> None:
        """
        An empty text reply has no delta but still completes with an empty message.
        """
        events = reply_events(TextReply(""), "r", "i")
        self.assertEqual(
            types(events),
            [
                "response.created",
                "response.output_item.added",
                "response.output_item.done",
                "response.completed",
            ],
        )

    def test_announced_call(self) -> None:
        """
        The C{function_call} item announced by C{response.output_item.added} is in progress with
        empty arguments; the finished one carries them.
        """
        reply = FunctionCallReply(name="echo", arguments={"text": "x"}, call_id="c", namespace="n")
        added, done = (event["item"] for event in reply_events(reply, "r", "i")[1:3])
        assert isinstance(added, dict) and isinstance(done, dict)
        self.assertEqual((added["status"], added["arguments"]), ("in_progress", ""))
        self.assertEqual((done["status"], done["arguments"]), ("completed", '{"text":"x"}'))

    def test_arguments_text(self) -> None:
        """
        Mapping arguments become compact JSON; string arguments are kept as they are.
        """
        self.assertEqual(FunctionCallReply("f", {"a": [1, "b"]}, "c").arguments_text(), '{"a":[1,"b"]}')
        self.assertEqual(FunctionCallReply("f", "raw", "c").arguments_text(), "raw")


class OfflineResponderTests(SynchronousTestCase):
    """
    Tests for L{offline_responder}, the dev stack's model without a provider.
    """

    def codex_request(self, *items: JSONObject) -> RecordedRequest:
        """
        Build a model request whose input starts like codex's (developer instructions and
        environment context) and ends with C{items}.

        @param items: the conversation's last input items.
        """
        preamble: list[JSONObject] = [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are Codex. run: never"}],
            },
            user_message("<environment_context>run: no</environment_context>"),
        ]
        return model_request({**MODEL_BODY, "input": [*preamble, *items]})

    def test_run_prompt(self) -> None:
        """
        C{run: <command>} calls the C{shell} tool of C{mcp__agentserver} on environment C{local}
        with C{bash -lc <command>}.
        """
        reply = offline_responder(self.codex_request(user_message("  run: echo hi && ls  ")))
        assert isinstance(reply, FunctionCallReply)
        self.assertEqual((reply.namespace, reply.name), ("mcp__agentserver", "shell"))
        self.assertEqual(
            reply.arguments,
            {"environment_id": "local", "command": ["bash", "-lc", "echo hi && ls"]},
        )
        self.assertTrue(reply.call_id)

    def test_call_ids_differ(self) -> None:
        """
        Two C{run:} prompts of one conversation get different call ids.
        """
        first = offline_responder(self.codex_request(user_message("run: a")))
        second = offline_responder(
            self.codex_request(
                user_message("run: a"),
                {"type": "function_call_output", "call_id": "x", "output": "a"},
                {"type": "message", "role": "assistant", "content": []},
                user_message("run: b"),
            )
        )
        assert isinstance(first, FunctionCallReply) and isinstance(second, FunctionCallReply)
        self.assertNotEqual(first.call_id, second.call_id)

    def test_tool_output(self) -> None:
        """
        When the tool output comes back, the reply is a text containing it, whether the output is
        a string or a list of content items (as codex sends MCP results).
        """
        for output in (
            "hi\n\n[exit_code=0]",
            [
                {"type": "input_text", "text": "Wall time: 0.01 seconds\nOutput:"},
                {"type": "input_text", "text": "hi\n\n[exit_code=0]"},
            ],
        ):
            reply = offline_responder(
                self.codex_request(
                    user_message("run: echo hi"),
                    {"type": "function_call", "call_id": "c", "name": "shell", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c", "output": output},
                )
            )
            assert isinstance(reply, TextReply)
            self.assertIn("hi\n\n[exit_code=0]", reply.text)

    def test_other_prompt(self) -> None:
        """
        Any other prompt, an empty C{run:} and an empty conversation get L{OFFLINE_TEXT}.
        """
        for request in (
            self.codex_request(user_message("hello")),
            self.codex_request(user_message("run:   ")),
            model_request({}),
        ):
            self.assertEqual(offline_responder(request), TextReply(OFFLINE_TEXT))


class ListenTests(SynchronousTestCase):
    """
    Tests for L{listen_model_provider} on a memory reactor.
    """

    def test_base_url(self) -> None:
        """
        The base URL names the port and ends with C{/v1}; a port on every interface is reached
        through the loopback address.
        """
        for description, url in (
            ("tcp:8181:interface=127.0.0.1", "http://127.0.0.1:8181/v1"),
            ("tcp:8182", "http://127.0.0.1:8182/v1"),
            ("tcp6:8183:interface=\\:\\:1", "http://[::1]:8183/v1"),
            ("tcp6:8184", "http://[::1]:8184/v1"),
        ):
            reactor = MemoryReactor()
            listener = self.successResultOf(listen_model_provider(reactor, description, ModelScript()))
            self.assertEqual(listener.base_url, url)
            self.assertTrue(IListeningPort.providedBy(listener.port))

    def test_stop(self) -> None:
        """
        Stopping a listener without connections stops its port at once.
        """
        reactor = MemoryReactor()
        listener = self.successResultOf(
            listen_model_provider(reactor, "tcp:0:interface=127.0.0.1", ModelScript())
        )
        self.assertIsNone(self.successResultOf(listener.stop()))
