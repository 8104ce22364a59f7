"""
A fake model provider speaking the OpenAI Responses API the way codex uses it.

codex configured with C{wire_api = "responses"} posts every model call to C{<base_url>/responses} and
reads the answer as server-sent events. L{ModelProviderResource} serves that route (under C{/v1})
from an L{IModelScript}: a queue of scripted replies (L{TextReply}, L{FunctionCallReply},
L{ToolSearchReply}, L{BrokenStream}), then an optional responder callable; it records every request
it receives. L{ModelScript} is the implementation; L{listen_model_provider} puts it on a listening
port; L{offline_responder} is the behaviour of the dev stack when no real provider is configured.

Only tests and the dev stack import this module.
"""

# twisted.web (Request, Site) and serverFromString are not annotated yet.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorCore
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import Attribute, Interface, implementer

from codexgw.testing.tracking import ConnectionTracker

#: The path prefix the fake serves; the base URL codex is given ends with it.
API_PREFIX = "/v1"

#: The path of the one model route.
RESPONSES_PATH = API_PREFIX + "/responses"

#: The namespace under which codex offers the tools of the MCP server named C{agentserver}.
AGENTSERVER_NAMESPACE = "mcp__agentserver"

#: The model the fake claims to be in the events it sends.
FAKE_MODEL_NAME = "codexgw-fake-model"

#: The longest text carried by one C{response.output_text.delta} event.
DELTA_SIZE = 16

#: What the fake answers when the queue is empty and no responder is set.
UNSCRIPTED_TEXT = "fake model: no reply was scripted for this request"

#: The offline responder's answer to anything but a C{run: <command>} prompt.
OFFLINE_TEXT = (
    "This is the offline fake model of codexgw: no model provider is configured. "
    "Send `run: <command>` to run a command on the local environment."
)

#: The prefix of a prompt that makes the offline responder call the C{shell} tool.
RUN_PREFIX = "run:"

JSONObject: TypeAlias = dict[str, object]


@dataclass(frozen=True)
class RecordedRequest:
    """
    One HTTP request the fake received, as it arrived.

    @ivar method: the HTTP method, e.g. C{"POST"}.
    @ivar path: the path without the query string, e.g. C{"/v1/responses"}.
    @ivar query: the raw query string (without C{?}), empty when there is none.
    @ivar headers: header names in lower case mapped to their values (repeated headers joined by
        C{", "}).
    @ivar raw_body: the request body as received.
    @ivar body: the body parsed as JSON, or L{None} when it is empty or not valid JSON.
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    raw_body: bytes
    body: object

    @property
    def is_model_request(self) -> bool:
        """
        Whether this is a model call: C{POST} to the responses route.
        """
        return self.method == "POST" and self.path == RESPONSES_PATH

    def input_items(self) -> list[JSONObject]:
        """
        Return the objects of the body's C{input} list (the conversation codex sends), or an empty
        list when the body has none.
        """
        if not isinstance(self.body, dict):
            return []
        items = self.body.get("input")
        if not isinstance(items, list):
            return []
        return [item for item in items if isinstance(item, dict)]

    def tools(self) -> list[JSONObject]:
        """
        Return the objects of the body's C{tools} list (what codex offers the model), or an empty
        list when the body has none.
        """
        if not isinstance(self.body, dict):
            return []
        tools = self.body.get("tools")
        if not isinstance(tools, list):
            return []
        return [tool for tool in tools if isinstance(tool, dict)]


@dataclass(frozen=True)
class TextReply:
    """
    Answer with an assistant message: its text streamed as deltas, then the finished message and
    C{response.completed}.

    @ivar text: the whole message text.
    """

    text: str


@dataclass(frozen=True)
class FunctionCallReply:
    """
    Answer with one C{function_call} output item, then C{response.completed}.

    @ivar name: the tool name as the model calls it (for an MCP tool, the bare tool name).
    @ivar arguments: the arguments; a mapping is sent as its JSON text, a string is sent verbatim
        (so that malformed arguments can be scripted too).
    @ivar call_id: the id codex uses to tie the tool output to this call.
    @ivar namespace: the tool namespace (e.g. L{AGENTSERVER_NAMESPACE}), or L{None} for a top-level
        tool.
    """

    name: str
    arguments: Mapping[str, object] | str
    call_id: str
    namespace: str | None = None

    def arguments_text(self) -> str:
        """
        Return the arguments as the JSON text the wire carries.
        """
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


@dataclass(frozen=True)
class ToolSearchReply:
    """
    Answer with one C{tool_search_call} item, then C{response.completed}.

    codex 0.169.0 does not list MCP tools in a request's C{tools}: it names their namespaces in a
    developer message and offers a C{tool_search} tool. A model calls it first; the next request
    then carries a C{tool_search_output} item holding the matching tools, grouped as C{namespace}
    tools. This reply lets a test walk that path as a real model would.

    @ivar query: the search query.
    @ivar call_id: the id codex uses to tie the search output to this call.
    @ivar limit: the most tools codex should return.
    """

    query: str
    call_id: str
    limit: int = 8


@dataclass(frozen=True)
class BrokenStream:
    """
    Start an assistant message and stop without C{response.completed}.

    @ivar text: the text sent as deltas before the stream stops.
    @ivar release: L{None} to end the response body right after the deltas; otherwise the stream
        stays open (sending nothing more) until this L{Deferred} fires, then the body ends.
    """

    text: str = "this stream breaks"
    release: Deferred[None] | None = field(default=None, compare=False)


#: One scripted answer to a model request.
Reply: TypeAlias = TextReply | FunctionCallReply | ToolSearchReply | BrokenStream

#: Computes the answer to a model request when the queue is empty.
Responder: TypeAlias = Callable[[RecordedRequest], Reply]


class IModelScript(Interface):
    """
    What a fake model provider answers, and the record of what it was asked.
    """

    requests = Attribute("Every L{RecordedRequest} received, on any path, in arrival order.")
    model_requests = Attribute("The model calls among L{requests} (C{POST /v1/responses}), in order.")

    def enqueue(*replies: Reply) -> None:
        """
        Append C{replies} to the queue that answers the next model requests, one each, in order.
        """

    def record(request: RecordedRequest) -> None:
        """
        Append C{request} to L{requests} and fire whoever waits for it.
        """

    def next_reply(request: RecordedRequest) -> Reply:
        """
        Return the answer to the model request C{request}: the head of the queue (removed), else
        what the responder computes, else a fixed text.
        """

    def model_request(index: int) -> Deferred[RecordedRequest]:
        """
        Return a L{Deferred} that fires with the model request number C{index} (from 0) once it
        has been recorded; cancelling it stops the wait.
        """


@implementer(IModelScript)
class ModelScript:
    """
    The in-memory L{IModelScript}: a reply queue, an optional responder and a request log.
    """

    def __init__(self, responder: Responder | None = None) -> None:
        """
        @param responder: computes the reply when the queue is empty; L{None} answers such requests
            with L{UNSCRIPTED_TEXT}.
        """
        self.requests: list[RecordedRequest] = []
        self._responder = responder
        self._queue: deque[Reply] = deque()
        self._waiters: dict[int, list[Deferred[RecordedRequest]]] = {}

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """
        The model calls among L{requests}, in order.
        """
        return [request for request in self.requests if request.is_model_request]

    def enqueue(self, *replies: Reply) -> None:
        """
        Append C{replies} to the reply queue.

        @param replies: answers for the next model requests, in order.
        """
        self._queue.extend(replies)

    def record(self, request: RecordedRequest) -> None:
        """
        Log C{request} and fire the waiters for it when it is a model request.

        @param request: the request just received.
        """
        self.requests.append(request)
        if request.is_model_request:
            index = len(self.model_requests) - 1
            for waiter in self._waiters.pop(index, []):
                waiter.callback(request)

    def next_reply(self, request: RecordedRequest) -> Reply:
        """
        Take the next queued reply, else ask the responder, else answer L{UNSCRIPTED_TEXT}.

        @param request: the model request to answer.
        """
        if self._queue:
            return self._queue.popleft()
        if self._responder is not None:
            return self._responder(request)
        return TextReply(UNSCRIPTED_TEXT)

    def model_request(self, index: int) -> Deferred[RecordedRequest]:
        """
        Wait for model request number C{index}.

        @param index: the 0-based position among the model requests.
        """
        known = self.model_requests
        if index < len(known):
            done: Deferred[RecordedRequest] = Deferred()
            done.callback(known[index])
            return done
        waiters = self._waiters.setdefault(index, [])

        def forget(waiter: Deferred[RecordedRequest]) -> None:
            # A cancelled wait (e.g. Deferred.addTimeout) must not be fired later.
            if waiter in waiters:
                waiters.remove(waiter)

        waiter: Deferred[RecordedRequest] = Deferred(forget)
        waiters.append(waiter)
        return waiter


def _json_error(request: Request, status: int, message: str, kind: str) -> bytes:
    # The error envelope of the OpenAI API, so that clients show the message.
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


def _parse_json(raw: bytes) -> object:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8 too; RecursionError is absurdly deep nesting.
        return None


def record_request(request: Request) -> RecordedRequest:
    """
    Build the L{RecordedRequest} for a C{twisted.web} request whose body has been received.

    @param request: the request being served.
    """
    headers: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
    raw = request.content.read() if request.content is not None else b""
    uri = request.uri.decode("latin-1")
    path, _, query = uri.partition("?")
    return RecordedRequest(
        method=request.method.decode("latin-1"),
        path=path,
        query=query,
        headers=headers,
        raw_body=raw,
        body=_parse_json(raw),
    )


def _split(text: str) -> Iterator[str]:
    for start in range(0, len(text), DELTA_SIZE):
        yield text[start : start + DELTA_SIZE]


def _message_item(item_id: str, text: str | None) -> JSONObject:
    # text None: the item as announced (no content yet); otherwise the finished message.
    content: list[JSONObject] = (
        [] if text is None else [{"type": "output_text", "text": text, "annotations": []}]
    )
    return {
        "type": "message",
        "id": item_id,
        "role": "assistant",
        "status": "in_progress" if text is None else "completed",
        "content": content,
    }


def _call_item(item_id: str, reply: FunctionCallReply | ToolSearchReply, done: bool) -> JSONObject:
    # done False: the item as announced by response.output_item.added.
    status = "completed" if done else "in_progress"
    if isinstance(reply, ToolSearchReply):
        return {
            "type": "tool_search_call",
            "id": item_id,
            "call_id": reply.call_id,
            "execution": "client",
            "status": status,
            "arguments": {"query": reply.query, "limit": reply.limit},
        }
    item: JSONObject = {
        "type": "function_call",
        "id": item_id,
        "call_id": reply.call_id,
        "name": reply.name,
        "arguments": reply.arguments_text() if done else "",
        "status": status,
    }
    if reply.namespace is not None:
        item["namespace"] = reply.namespace
    return item


def _response(response_id: str, status: str, output: list[JSONObject]) -> JSONObject:
    response: JSONObject = {
        "id": response_id,
        "object": "response",
        "model": FAKE_MODEL_NAME,
        "status": status,
        "output": output,
    }
    if status == "completed":
        # codex reads token usage from here; zeros keep its accounting quiet.
        response["usage"] = {
            "input_tokens": 0,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 0,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 0,
        }
    return response


def reply_events(reply: Reply, response_id: str, item_id: str) -> list[JSONObject]:
    """
    Return the server-sent events (their C{data} objects, each with its C{type}) that answer a
    model request with C{reply}: C{response.created}, C{response.output_item.added}, the text as
    C{response.output_text.delta} events (messages only), C{response.output_item.done} and
    C{response.completed} — a L{BrokenStream} stops after the deltas.

    @param reply: the scripted answer.
    @param response_id: the id of the response being streamed.
    @param item_id: the id of the one output item.
    """
    events: list[JSONObject] = [
        {"type": "response.created", "response": _response(response_id, "in_progress", [])}
    ]
    if isinstance(reply, TextReply | BrokenStream):
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _message_item(item_id, None),
            }
        )
        events.extend(
            {
                "type": "response.output_text.delta",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
            }
            for piece in _split(reply.text)
        )
        if isinstance(reply, BrokenStream):
            return events
        done = _message_item(item_id, reply.text)
    else:
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": _call_item(item_id, reply, done=False),
            }
        )
        done = _call_item(item_id, reply, done=True)
    events.append({"type": "response.output_item.done", "output_index": 0, "item": done})
    events.append(
        {"type": "response.completed", "response": _response(response_id, "completed", [done])}
    )
    return events


def encode_event(event: JSONObject) -> bytes:
    """
    Frame one event for a C{text/event-stream} body: C{event: <type>}, C{data: <json>}, blank line.

    @param event: the event's data object; its C{type} names the event.
    """
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


class ModelProviderResource(Resource):
    """
    The fake provider's HTTP surface: C{POST /v1/responses} answered from an L{IModelScript} as
    server-sent events, C{GET /v1/models} with an empty model list, JSON errors for everything else.
    Every request is recorded first, whatever its fate.
    """

    isLeaf = True

    def __init__(self, script: IModelScript) -> None:
        """
        @param script: decides the replies and keeps the record.
        """
        super().__init__()
        self._script = script
        self._responses = 0

    def render(self, request: Request) -> bytes | int:
        """
        Record C{request}, then answer it by path and method.

        @param request: the request being served.
        """
        recorded = record_request(request)
        self._script.record(recorded)
        if recorded.path == RESPONSES_PATH:
            if recorded.method != "POST":
                request.setHeader(b"allow", b"POST")
                return _json_error(request, 405, "use POST", "invalid_request_error")
            if not isinstance(recorded.body, dict):
                return _json_error(
                    request, 400, "the body must be a JSON object", "invalid_request_error"
                )
            return self._stream(request, self._script.next_reply(recorded))
        if recorded.path == API_PREFIX + "/models" and recorded.method in ("GET", "HEAD"):
            # Both list shapes in one object: OpenAI's ("data") and codex's own ("models").
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"object": "list", "data": [], "models": []}).encode()
        return _json_error(request, 404, f"no route for {recorded.path}", "not_found")

    def _stream(self, request: Request, reply: Reply) -> int:
        self._responses += 1
        number = self._responses
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        for event in reply_events(reply, f"resp_fake_{number}", f"item_fake_{number}"):
            request.write(encode_event(event))
        if isinstance(reply, BrokenStream) and reply.release is not None:
            self._hold(request, reply.release)
        else:
            request.finish()
        return NOT_DONE_YET

    def _hold(self, request: Request, release: Deferred[None]) -> None:
        gone = False

        def disconnected(reason: Failure) -> None:
            nonlocal gone
            gone = True

        def end(result: object) -> object:
            # The client may have given up already; finishing then would raise.
            if not gone:
                request.finish()
            return result

        request.notifyFinish().addErrback(disconnected)
        release.addBoth(end)


class ModelProviderListener:
    """
    A fake provider listening on a port.

    @ivar port: the listening port.
    @ivar base_url: the URL to configure as the provider's C{base_url}, e.g.
        C{http://127.0.0.1:PORT/v1}.
    """

    def __init__(self, port: IListeningPort, tracker: ConnectionTracker) -> None:
        """
        @param port: the listening port.
        @param tracker: the factory the port serves, which knows the open connections.
        """
        self.port = port
        self.base_url = base_url_for(port)
        self._tracker = tracker

    def stop(self) -> Deferred[None]:
        """
        Stop listening and close every open connection (streams left hanging included).

        @return: fires once the port and all its connections are closed.
        """

        async def stopping() -> None:
            stopped = self.port.stopListening()
            if stopped is not None:
                await stopped
            await self._tracker.close_all()

        return Deferred.fromCoroutine(stopping())


def base_url_for(port: IListeningPort) -> str:
    """
    Return the provider base URL for a listening port, using the loopback address when the port
    listens on every interface.

    @param port: a TCP port serving L{ModelProviderResource}.
    """
    address = port.getHost()
    if isinstance(address, IPv6Address):
        host = "::1" if address.host == "::" else address.host
        return f"http://[{host}]:{address.port}{API_PREFIX}"
    if isinstance(address, IPv4Address):
        host = "127.0.0.1" if address.host == "0.0.0.0" else address.host  # noqa: S104
        return f"http://{host}:{address.port}{API_PREFIX}"
    raise ValueError(f"not a TCP address: {address!r}")


def listen_model_provider(
    reactor: IReactorCore, description: str, script: IModelScript
) -> Deferred[ModelProviderListener]:
    """
    Serve a L{ModelProviderResource} for C{script} on a server endpoint.

    @param reactor: the reactor to listen with.
    @param description: a server endpoint string, e.g. C{tcp:0:interface=127.0.0.1}.
    @param script: the script the provider answers from.
    @return: fires with the listener, which knows its port and base URL; call its C{stop} when
        done.
    """
    tracker = ConnectionTracker(Site(ModelProviderResource(script)))
    listening: Deferred[IListeningPort] = serverFromString(reactor, description).listen(tracker)
    return listening.addCallback(ModelProviderListener, tracker)


def _output_text(output: object) -> str:
    # function_call_output.output is a string, or a list of content items with text.
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return "\n".join(
            str(part["text"])
            for part in output
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return json.dumps(output)


def _user_text(item: JSONObject) -> str | None:
    if item.get("type") != "message" or item.get("role") != "user":
        return None
    content = item.get("content")
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    return "".join(
        str(part["text"])
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def offline_responder(request: RecordedRequest) -> Reply:
    """
    The dev stack's model when no provider is configured.

    A prompt C{run: <command>} calls the C{shell} tool of namespace L{AGENTSERVER_NAMESPACE} on
    environment C{local} with C{["bash", "-lc", "<command>"]}; the tool's output, when it comes
    back, is answered with a text containing it; any other prompt (an empty command too) gets
    L{OFFLINE_TEXT}.

    @param request: the model request to answer.
    """
    items = request.input_items()
    if items and items[-1].get("type") == "function_call_output":
        output = _output_text(items[-1].get("output"))
        return TextReply(f"The command finished. Its output:\n{output}")
    prompt = next(
        (text for text in map(_user_text, reversed(items)) if text is not None),
        "",
    ).strip()
    command = prompt[len(RUN_PREFIX) :].strip() if prompt.startswith(RUN_PREFIX) else ""
    if command:
        return FunctionCallReply(
            namespace=AGENTSERVER_NAMESPACE,
            name="shell",
            arguments={"environment_id": "local", "command": ["bash", "-lc", command]},
            # Unique within a conversation, which only grows between model calls.
            call_id=f"call_offline_{len(items)}",
        )
    return TextReply(OFFLINE_TEXT)


__all__ = [
    "AGENTSERVER_NAMESPACE",
    "API_PREFIX",
    "OFFLINE_TEXT",
    "RESPONSES_PATH",
    "UNSCRIPTED_TEXT",
    "BrokenStream",
    "FunctionCallReply",
    "IModelScript",
    "ModelProviderListener",
    "ModelProviderResource",
    "ModelScript",
    "RecordedRequest",
    "Reply",
    "Responder",
    "TextReply",
    "ToolSearchReply",
    "base_url_for",
    "encode_event",
    "listen_model_provider",
    "offline_responder",
    "record_request",
    "reply_events",
]
