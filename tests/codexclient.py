"""
A small test-only client for the real C{codex app-server}.

L{spawn_app_server} starts C{codex app-server --listen ws://127.0.0.1:0} in its own process group with a
clean C{HOME} and a private C{CODEX_HOME}; L{AppServerProcess} learns the websocket address from the
C{listening on: ws://...} line codex prints on stderr and kills the whole group when asked.
L{connect_app_server} opens a websocket to it and returns an L{AppServerConnection}, which sends
JSON-RPC requests with integer ids, matches the responses, answers codex's approval requests and keeps
every notification so that a test can wait for one by method.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeAlias

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorProcess, IReactorTCP, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

JSONObject: TypeAlias = dict[str, object]

#: How codex announces its websocket address on stderr.
LISTENING_LINE = re.compile(rb"listening on: (ws://[0-9.]+:[0-9]+)")

#: Replies to the server requests codex sends when it wants a human's approval; same table as the
#: app gateway's auto-reply (app-gateway spec section 7.3).
APPROVAL_REPLIES: Mapping[str, JSONObject] = {
    "item/commandExecution/requestApproval": {"decision": "accept"},
    "item/fileChange/requestApproval": {"decision": "accept"},
    "item/permissions/requestApproval": {"permissions": {}},
    "item/tool/requestUserInput": {"answers": {}},
    "mcpServer/elicitation/request": {"action": "accept", "content": None, "_meta": None},
    "execCommandApproval": {"decision": "approved"},
    "applyPatchApproval": {"decision": "approved"},
}

#: The dummy key handed to codex; the fake provider accepts anything.
DUMMY_API_KEY = "sk-codexgw-test-dummy"

# Started by the venv python so that codex leads its own process group (and the whole group can be
# killed by its pid) while keeping the pid Twisted knows: setsid() then exec, no fork.
_SETSID_EXEC = "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"


class AppServerExited(Exception):
    """
    codex app-server ended before it printed its listening address.
    """


class JsonRpcError(Exception):
    """
    codex answered a request with a JSON-RPC error.

    @ivar code: the error code.
    @ivar message: the error message.
    @ivar data: the error's C{data} member, if any.
    """

    def __init__(self, code: object, message: object, data: object) -> None:
        """
        @param code: the C{error.code} received.
        @param message: the C{error.message} received.
        @param data: the C{error.data} received (L{None} when absent).
        """
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class ConnectionClosed(Exception):
    """
    The websocket closed while a request or a wait was outstanding.
    """


def descendants(pid: int) -> set[int]:
    """
    Return the pids of the living descendants of C{pid}, read from C{/proc} (Linux); an empty set
    where there is no C{/proc}.

    @param pid: the ancestor.
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists and is not a zombie (Linux C{/proc}).

    @param pid: the process id.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


class AppServerProcess(ProcessProtocol):
    """
    The process protocol of one C{codex app-server} child.

    @ivar listening: fires with the C{ws://127.0.0.1:PORT} address once codex prints it; fails with
        L{AppServerExited} if codex ends first.
    @ivar ended: fires with the exit L{Failure} reason's value (L{ProcessDone} or
        L{ProcessTerminated}) when the child has ended.
    @ivar stderr: everything codex wrote on stderr so far.
    @ivar stdout: everything codex wrote on stdout so far.
    """

    def __init__(self) -> None:
        """
        Start with no output and nothing fired.
        """
        self.listening: Deferred[str] = Deferred()
        self.ended: Deferred[Exception] = Deferred()
        self.stderr = bytearray()
        self.stdout = bytearray()
        self._gone = False

    def outReceived(self, data: bytes) -> None:
        """
        Keep stdout for diagnostics.

        @param data: bytes codex wrote on stdout.
        """
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        """
        Keep stderr and fire L{listening} at the first C{listening on:} line.

        @param data: bytes codex wrote on stderr.
        """
        self.stderr += data
        if not self.listening.called:
            found = LISTENING_LINE.search(self.stderr)
            if found is not None:
                self.listening.callback(found.group(1).decode("ascii"))

    def processEnded(self, reason: Failure) -> None:
        """
        Fire L{ended}, and fail L{listening} if it is still waiting.

        @param reason: why the child ended.
        """
        self._gone = True
        if not self.listening.called:
            tail = self.stderr[-2000:].decode("utf-8", "replace")
            self.listening.errback(AppServerExited(f"{reason.value}; stderr ends with:\n{tail}"))
        value = reason.value
        self.ended.callback(value if isinstance(value, Exception) else Exception(str(value)))

    @property
    def pid(self) -> int | None:
        """
        The child's pid (also its process group id), or L{None} before the spawn.
        """
        return self.transport.pid if self.transport is not None else None

    def kill(self, reactor: IReactorTime, grace: float = 5.0) -> Deferred[None]:
        """
        End codex and everything it started: SIGTERM to its process group, SIGKILL to the group if
        codex has not ended after C{grace} seconds, then SIGKILL to any descendant still alive
        (one that had moved to a group of its own).

        @param reactor: the clock for the grace period.
        @param grace: seconds to wait between the two signals.
        @return: fires once codex has ended and the leftovers were killed.
        """
        pid = self.pid
        if self._gone or pid is None:
            return self._ended_copy().addCallback(lambda _: None)
        # Taken before the signal: once codex is gone its children are re-parented and untraceable.
        family = descendants(pid)
        self._signal_group(pid, signal.SIGTERM)

        def force(failure: Failure) -> Deferred[Exception]:
            failure.trap(TimeoutError)
            self._signal_group(pid, signal.SIGKILL)
            return self._ended_copy()

        def leftovers(_: Exception) -> None:
            for child in family:
                if alive(child):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)

        ending = self._ended_copy().addTimeout(grace, reactor).addErrback(force)
        return ending.addCallback(leftovers)

    def _signal_group(self, pid: int, signum: int) -> None:
        # ProcessLookupError: the group is gone already; processEnded follows.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    def _ended_copy(self) -> Deferred[Exception]:
        # A fresh Deferred per caller, so that one caller's timeout cannot cancel L{ended}.
        copy: Deferred[Exception] = Deferred()

        def relay(value: Exception) -> Exception:
            if not copy.called:
                copy.callback(value)
            return value

        self.ended.addCallback(relay)
        return copy


def app_server_env(home: Path, codex_home: Path) -> dict[str, str]:
    """
    Return the whole environment of a codex child: a clean C{HOME}, its C{CODEX_HOME}, the dummy
    API key and C{PATH}; nothing else leaks in from the test process.

    @param home: an empty directory used as C{HOME}.
    @param codex_home: the directory holding C{config.toml}.
    """
    return {
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "CODEX_API_KEY": DUMMY_API_KEY,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }


def spawn_app_server(
    reactor: IReactorProcess, codex: Path, home: Path, codex_home: Path
) -> AppServerProcess:
    """
    Start C{codex app-server --listen ws://127.0.0.1:0} as the leader of a new process group.

    @param reactor: the reactor to spawn with.
    @param codex: the native codex binary.
    @param home: an empty directory used as C{HOME} (and as the working directory).
    @param codex_home: the C{CODEX_HOME} directory, with its C{config.toml}.
    @return: the child's protocol; wait on its C{listening}, and C{kill} it in cleanup.
    """
    process = AppServerProcess()
    argv = [
        sys.executable,
        "-c",
        _SETSID_EXEC,
        str(codex),
        "app-server",
        "--listen",
        "ws://127.0.0.1:0",
    ]
    reactor.spawnProcess(
        process, sys.executable, argv, env=app_server_env(home, codex_home), path=str(home)
    )
    return process


def toml_string(text: str) -> str:
    """
    Quote C{text} as a TOML basic string.

    @param text: any text.
    """
    # JSON string escapes are valid TOML basic-string escapes; DEL needs one in TOML only.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def provider_config(base_url: str, mcp_servers: Mapping[str, Sequence[str]] | None = None) -> str:
    """
    Render a C{config.toml} that points codex at a fake provider, with optional stdio MCP servers.

    Retries are off so that a broken stream fails the turn at once instead of re-asking the model,
    and every MCP tool is pre-approved so that no human is needed.

    @param base_url: the provider's base URL, e.g. C{http://127.0.0.1:PORT/v1}.
    @param mcp_servers: server name mapped to its command line (program first).
    """
    lines = [
        'model_provider = "fake"',
        'model = "gpt-5.5"',
        'approval_policy = "never"',
        'sandbox_mode = "read-only"',
        "",
        "[model_providers.fake]",
        'name = "fake"',
        f"base_url = {toml_string(base_url)}",
        'env_key = "CODEX_API_KEY"',
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "",
    ]
    for name, command in (mcp_servers or {}).items():
        lines += [
            f"[mcp_servers.{name}]",
            f"command = {toml_string(command[0])}",
            f"args = [{', '.join(toml_string(arg) for arg in command[1:])}]",
            "startup_timeout_sec = 20",
            "tool_timeout_sec = 20",
            'default_tools_approval_mode = "approve"',
            "",
        ]
    return "\n".join(lines) + "\n"


def prepare_homes(root: Path, config: str) -> tuple[Path, Path]:
    """
    Create C{root/home} (empty) and C{root/codex-home} holding C{config}.

    @param root: a fresh directory owned by the test.
    @param config: the C{config.toml} text.
    @return: the C{HOME} and C{CODEX_HOME} directories.
    """
    home = root / "home"
    codex_home = root / "codex-home"
    home.mkdir(parents=True)
    codex_home.mkdir(parents=True)
    (codex_home / "config.toml").write_text(config, encoding="utf-8")
    return home, codex_home


#: Answers a server request: C{(method, params)} to the result, or L{None} for "not handled".
ServerRequestAnswer: TypeAlias = Callable[[str, object], JSONObject | None]


def approve_everything(method: str, params: object) -> JSONObject | None:
    """
    Answer codex's approval requests as a human who approves all would; nothing else.

    @param method: the server request's method.
    @param params: its parameters (unused).
    """
    return APPROVAL_REPLIES.get(method)


class AppServerConnection(WebSocketClientProtocol):
    """
    One JSON-RPC session with codex app-server over a websocket.

    @ivar notifications: every notification received, as C{{"method", "params"}} objects, in order.
    @ivar server_requests: every request codex sent to us, as received, in order.
    @ivar answer: decides the result of a server request (default L{approve_everything}); requests
        it does not handle are answered with a -32601 error.
    @ivar opened: fires with this connection once the websocket handshake is done; fails when the
        connection closes before that.
    @ivar closed: fires once the websocket has closed.
    @ivar close_code: the close code received (or Autobahn's local one), once closed.
    @ivar close_reason: the close reason, once closed.
    """

    def __init__(self) -> None:
        """
        Start with no requests pending.
        """
        super().__init__()
        self.notifications: list[JSONObject] = []
        self.server_requests: list[JSONObject] = []
        self.answer: ServerRequestAnswer = approve_everything
        self.opened: Deferred[AppServerConnection] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self._next_id = 1
        self._pending: dict[int, Deferred[object]] = {}
        self._waiters: list[tuple[str, Callable[[JSONObject], bool], Deferred[JSONObject]]] = []

    def onConnect(self, response: ConnectionResponse) -> None:
        """
        Nothing to check in the handshake response.

        @param response: the server's handshake response.
        """

    def onOpen(self) -> None:
        """
        Fire L{opened}.
        """
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        Dispatch one JSON-RPC message: a response, a server request or a notification.

        @param payload: the message bytes.
        @param isBinary: whether it came as a binary frame (codex sends text).
        """
        try:
            message = json.loads(payload)
        except ValueError:
            # Not JSON-RPC; nothing to correlate it with.
            return
        if not isinstance(message, dict):
            return
        if "method" not in message:
            self._response(message)
        elif message.get("id") is not None:
            self._server_request(message)
        else:
            self._notification(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Fail everything outstanding and fire L{closed}.

        @param wasClean: whether the close handshake completed.
        @param code: the close code, if any.
        @param reason: the close reason, if any.
        """
        self.close_code, self.close_reason = code, reason
        error = ConnectionClosed(f"websocket closed (clean={wasClean}, code={code}, reason={reason})")
        if not self.opened.called:
            self.opened.errback(error)
        pending, self._pending = self._pending, {}
        for waiting in pending.values():
            waiting.errback(error)
        waiters, self._waiters = self._waiters, []
        for _, _, notified in waiters:
            notified.errback(error)
        if not self.closed.called:
            self.closed.callback(None)

    def close(self) -> Deferred[None]:
        """
        Drop the connection at once (no close handshake) unless it is closed already.

        @return: fires once it is closed.
        """
        if not self.closed.called:
            self.dropConnection(abort=True)
        waiting: Deferred[None] = Deferred()
        self.closed.addCallback(lambda _: waiting.callback(None))
        return waiting

    def _send_json(self, message: JSONObject) -> None:
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def request(self, method: str, params: object) -> Deferred[object]:
        """
        Send a request and wait for its result.

        @param method: the JSON-RPC method.
        @param params: its parameters.
        @return: fires with C{result}; fails with L{JsonRpcError} on an error response or
            L{ConnectionClosed}; cancelling it forgets the request.
        """
        request_id = self._next_id
        self._next_id += 1

        def forget(_: Deferred[object]) -> None:
            self._pending.pop(request_id, None)

        result: Deferred[object] = Deferred(forget)
        self._pending[request_id] = result
        self._send_json({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return result

    def notify(self, method: str, params: object = None) -> None:
        """
        Send a notification.

        @param method: the JSON-RPC method.
        @param params: its parameters; L{None} sends C{{}}.
        """
        self._send_json({"jsonrpc": "2.0", "method": method, "params": {} if params is None else params})

    def notification(
        self, method: str, where: Callable[[JSONObject], bool] = lambda params: True
    ) -> Deferred[JSONObject]:
        """
        Wait for a notification: the first one, already received or not, with C{method} whose
        params satisfy C{where}.

        @param method: the notification method, e.g. C{turn/completed}.
        @param where: a test on the notification's params (an object).
        @return: fires with the params; cancelling it stops the wait.
        """
        for seen in self.notifications:
            params = seen.get("params")
            if seen.get("method") == method and isinstance(params, dict) and where(params):
                done: Deferred[JSONObject] = Deferred()
                done.callback(params)
                return done
        entry: tuple[str, Callable[[JSONObject], bool], Deferred[JSONObject]]

        def forget(_: Deferred[JSONObject]) -> None:
            if entry in self._waiters:
                self._waiters.remove(entry)

        waiting: Deferred[JSONObject] = Deferred(forget)
        entry = (method, where, waiting)
        self._waiters.append(entry)
        return waiting

    def _response(self, message: JSONObject) -> None:
        request_id = message.get("id")
        waiting = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if waiting is None:
            return
        error = message.get("error")
        if isinstance(error, dict):
            waiting.errback(JsonRpcError(error.get("code"), error.get("message"), error.get("data")))
        else:
            waiting.callback(message.get("result"))

    def _server_request(self, message: JSONObject) -> None:
        self.server_requests.append(message)
        method = str(message["method"])
        result = self.answer(method, message.get("params"))
        if result is None:
            self._send_json(
                {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {"code": -32601, "message": f"test client does not handle {method}"},
                }
            )
        else:
            self._send_json({"jsonrpc": "2.0", "id": message["id"], "result": result})

    def _notification(self, message: JSONObject) -> None:
        self.notifications.append(message)
        params = message.get("params")
        if not isinstance(params, dict):
            return
        for entry in list(self._waiters):
            method, where, waiting = entry
            if method != message.get("method"):
                continue
            try:
                matched = where(params)
            except Exception:
                # A test that cannot read the params fails its own wait, not the connection.
                self._waiters.remove(entry)
                waiting.errback()
                continue
            if matched:
                self._waiters.remove(entry)
                waiting.callback(params)


def connect_app_server(
    reactor: IReactorTCP, url: str, headers: Mapping[str, str] | None = None
) -> Deferred[AppServerConnection]:
    """
    Open a websocket to codex app-server (or to the app gateway, which proxies it).

    @param reactor: the reactor to connect with.
    @param url: the C{ws://127.0.0.1:PORT} address codex printed (a path may follow).
    @param headers: extra handshake headers (C{Authorization} for the gateway).
    @return: fires with the open connection.
    """
    factory = WebSocketClientFactory(url, headers=dict(headers or {}))
    factory.protocol = AppServerConnection
    # codex notifications can be large (whole turns); the rest is autobahn's defaults.
    factory.setProtocolOptions(
        maxFramePayloadSize=64 * 1024 * 1024,
        maxMessagePayloadSize=64 * 1024 * 1024,
        openHandshakeTimeout=10,
        closeHandshakeTimeout=2,
        autoPingInterval=0,
    )
    endpoint = clientFromString(reactor, f"tcp:host={factory.host}:port={factory.port}:timeout=10")
    connecting: Deferred[AppServerConnection] = endpoint.connect(factory)
    return connecting.addCallback(lambda connection: connection.opened)


async def initialize(connection: AppServerConnection, name: str = "codexgw-tests") -> object:
    """
    Do the app-server handshake: C{initialize}, then the C{initialized} notification.

    @param connection: a freshly opened connection.
    @param name: the C{clientInfo.name} to present.
    @return: the C{initialize} result.
    """
    result = await connection.request(
        "initialize",
        {
            "clientInfo": {"name": name, "title": None, "version": "0.1.0"},
            "capabilities": {"experimentalApi": True},
        },
    )
    connection.notify("initialized")
    return result


__all__ = [
    "APPROVAL_REPLIES",
    "DUMMY_API_KEY",
    "AppServerConnection",
    "AppServerExited",
    "AppServerProcess",
    "ConnectionClosed",
    "JsonRpcError",
    "alive",
    "approve_everything",
    "connect_app_server",
    "descendants",
    "initialize",
    "prepare_homes",
    "provider_config",
    "spawn_app_server",
    "toml_string",
]
