"""
Test support for integration tests of the exec gateway: the real C{twist codexgw-exec} as a
subprocess, websocket clients for executors and bridges, and the admin/internal HTTP APIs.

 - L{GatewayProcess} runs C{twist --log-format=json codexgw-exec --listen tcp:0:interface=127.0.0.1}
   with a clean environment (the three secrets, C{CXG_DATABASE_URL} and whatever a test adds) in a
   working directory of the test's choosing, learns the bound port from the C{exec_gateway.started}
   log event, collects stdout (one JSON log event per line) and stderr, and stops the process by pid:
   SIGTERM, then SIGKILL after a bound.
 - L{SharedGateway} lets the tests of one class share a gateway: started by the first test that needs
   it, stopped after the class's last test (and killed at interpreter exit if a partial run never got
   there).
 - L{ExecutorClient} and L{BridgeClient} are Autobahn websocket clients that record every frame, the
   close code and reason, and can stop reading; an executor can echo Data frames back.
 - L{GatewayHTTP} calls the HTTP routes with treq.

The gateway process is not a reactor child (no C{spawnProcess}): its pipes are read by two daemon
threads that hand each line to the reactor with C{callFromThread}, and a third thread waits for its
exit. A process shared by several tests therefore never shows up as a selectable left in the reactor
between tests. Every wait in here is bounded (C{Deferred.addTimeout}); nothing sleeps.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import psycopg2  # type: ignore[import-untyped]
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.internet import reactor as _global_reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IAddress
from twisted.web.client import HTTPConnectionPool
from twisted.web.iweb import UNKNOWN_LENGTH

from codexgw import relayframe, tokens
from codexgw.config import Secret
from codexgw.relayframe import Body
from tests.support import REPO_ROOT, postgres_dsn

reactor: Any = _global_reactor

#: The three required secrets (each ≥ 32 bytes).
CAP_SECRET = "integration-cap-token-secret-0123456789"
SHARED_SECRET = "integration-internal-shared-secret-012345"
ADMIN_SECRET = "integration-agentserver-secret-0123456789"
SECRETS_ENV: Mapping[str, str] = {
    "CXG_CAPTOKEN_HMAC_SECRET": CAP_SECRET,
    "CXG_INTERNAL_SHARED_SECRET": SHARED_SECRET,
    "CXG_AGENTSERVER_INTERNAL_SECRET": ADMIN_SECRET,
}
#: How long a gateway may take to start listening.
START_TIMEOUT = 20.0
#: How long a stopped gateway gets after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0
#: Default bound of a wait for a frame, a close, or an HTTP answer.
WAIT = 10.0

_T = TypeVar("_T")


def twist_executable() -> str:
    """
    The C{twist} of the virtualenv running the tests.
    """
    candidate = Path(sys.executable).with_name("twist")
    if candidate.exists():
        return str(candidate)
    return str(REPO_ROOT / ".venv" / "bin" / "twist")


def bounded(d: Deferred[_T], seconds: float, what: str) -> Deferred[_T]:
    """
    C{d}, failing with L{GatewayTimeout} naming C{what} if it has not fired within C{seconds}.
    """

    def named(failure: Any) -> Any:
        if failure.check(DeferredTimeout):
            raise GatewayTimeout(f"{what}: nothing within {seconds}s")
        return failure

    return d.addTimeout(seconds, reactor).addErrback(named)


class GatewayTimeout(AssertionError):
    """
    A bounded wait of the integration tests ran out.
    """


class GatewayFailed(AssertionError):
    """
    The gateway process exited when it should have been running.
    """


def gateway_env(database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    A clean environment for a gateway: no inherited C{CXG_*} variables, the three secrets, the
    database URL and C{extra} (an empty value unsets a variable).
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SYSTEMROOT")
    }
    env.update(SECRETS_ENV)
    env["CXG_DATABASE_URL"] = database_url
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (extra or {}).items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    return env


class GatewayProcess:
    """
    One C{twist codexgw-exec} process.

    @ivar events: the JSON log events printed so far, in order.
    @ivar stdout: everything printed on stdout so far.
    @ivar stderr: everything printed on stderr so far.
    @ivar returncode: the exit status once it exited (negative: killed by that signal).
    @ivar port: the bound port once started.
    @cvar plugin: the twist plugin run (subclasses run other codexgw programs the same way).
    @cvar started_event: the log event announcing the bound C{port}.
    """

    plugin: ClassVar[str] = "codexgw-exec"
    started_event: ClassVar[str] = "exec_gateway.started"

    def __init__(
        self,
        env: Mapping[str, str],
        cwd: Path,
        args: Sequence[str] = ("--listen", "tcp:0:interface=127.0.0.1"),
    ) -> None:
        self.env = dict(env)
        self.cwd = cwd
        self.args = list(args)
        self.events: list[dict[str, Any]] = []
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.returncode: int | None = None
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._partial = {"stdout": b"", "stderr": b""}
        self._event_waiters: list[tuple[Callable[[dict[str, Any]], bool], Deferred[dict[str, Any]]]] = []
        self._exit_waiters: list[Deferred[int]] = []

    # -- lifecycle

    def spawn(self) -> None:
        """
        Start the process; its output is collected from now on.
        """
        self.cwd.mkdir(parents=True, exist_ok=True)
        command = [twist_executable(), "--log-format=json", self.plugin, *self.args]
        self.process = subprocess.Popen(
            command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for thread in readers:
            thread.start()
        threading.Thread(target=self._wait, args=(self.process, readers), daemon=True).start()

    def _read(self, name: str, stream: IO[bytes]) -> None:
        # Runs in a thread: hand every chunk to the reactor thread, in order.
        fd = stream.fileno()
        for chunk in iter(lambda: os.read(fd, 65536), b""):
            reactor.callFromThread(self._received, name, chunk)
        stream.close()

    def _wait(self, process: subprocess.Popen[bytes], readers: list[threading.Thread]) -> None:
        # Runs in a thread: the exit is reported after the last output.
        code = process.wait()
        for thread in readers:
            thread.join(10)
        reactor.callFromThread(self._exited, code)

    def _received(self, name: str, chunk: bytes) -> None:
        (self.stdout if name == "stdout" else self.stderr).extend(chunk)
        data = self._partial[name] + chunk
        *lines, self._partial[name] = data.split(b"\n")
        if name != "stdout":
            return
        for line in lines:
            try:
                event = json.loads(line.decode("utf-8").strip("\x1e \r\t"))
            except ValueError:
                continue
            if isinstance(event, dict):
                self._event(event)

    def _event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        if event.get("event") == self.started_event:
            self.port = int(event["port"])
        for waiter in list(self._event_waiters):
            predicate, d = waiter
            if predicate(event):
                self._event_waiters.remove(waiter)
                d.callback(event)

    def _exited(self, code: int) -> None:
        self.returncode = code
        waiters, self._exit_waiters = self._exit_waiters, []
        for d in waiters:
            d.callback(code)
        for _, waiting in self._event_waiters:
            waiting.errback(GatewayFailed(f"gateway exited with {code} while waited on:\n{self.output}"))
        self._event_waiters = []

    @property
    def running(self) -> bool:
        """
        Whether the process was spawned and has not exited (as far as the reactor knows).
        """
        return self.process is not None and self.returncode is None

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        """
        Both streams as text, for assertions and failure messages.
        """
        return (bytes(self.stdout) + b"\n" + bytes(self.stderr)).decode("utf-8", "replace")

    def exited(self, timeout: float = STOP_TIMEOUT) -> Deferred[int]:
        """
        Fire with the exit status once the process exited (and its output was read).
        """
        if self.returncode is not None:
            done: Deferred[int] = Deferred()
            done.callback(self.returncode)
            return done
        waiting: Deferred[int] = Deferred(self._exit_waiters.remove)
        self._exit_waiters.append(waiting)
        return bounded(waiting, timeout, "gateway exit")

    def wait_event(
        self, name: str, timeout: float = WAIT, since: int = 0, **fields: object
    ) -> Deferred[dict[str, Any]]:
        """
        Fire with the first log event C{name} (from index C{since} on) whose fields equal C{fields},
        including one already printed.
        """

        def matches(event: dict[str, Any]) -> bool:
            return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())

        return self.wait_for(matches, timeout, since, f"log event {name} {fields}")

    def wait_for(
        self,
        matches: Callable[[dict[str, Any]], bool],
        timeout: float = WAIT,
        since: int = 0,
        what: str = "log event",
    ) -> Deferred[dict[str, Any]]:
        """
        Fire with the first log event (from index C{since} on) that C{matches}, including one
        already printed.
        """
        for event in self.events[since:]:
            if matches(event):
                found: Deferred[dict[str, Any]] = Deferred()
                found.callback(event)
                return found
        if self.returncode is not None:
            failed: Deferred[dict[str, Any]] = Deferred()
            failed.errback(GatewayFailed(f"gateway exited before {what}:\n{self.output}"))
            return failed

        def forget(d: Deferred[dict[str, Any]]) -> None:
            self._event_waiters[:] = [w for w in self._event_waiters if w[1] is not d]

        waiting: Deferred[dict[str, Any]] = Deferred(forget)
        self._event_waiters.append((matches, waiting))
        return bounded(waiting, timeout, what)

    def named(self, name: str) -> list[dict[str, Any]]:
        """
        The log events C{name} printed so far.
        """
        return [e for e in self.events if e.get("event") == name]

    async def start(self, timeout: float = START_TIMEOUT) -> int:
        """
        Spawn and wait until it listens; return the port.
        """
        self.spawn()
        try:
            await self.wait_event(self.started_event, timeout)
        except BaseException:
            self.kill()
            raise
        assert self.port is not None
        return self.port

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """
        SIGTERM, wait up to C{timeout}, then SIGKILL; return the exit status.
        """
        if self.process is None:
            return 0
        if self.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                return await self.exited(timeout)
            except GatewayTimeout:
                self._signal(signal.SIGKILL)
        return await self.exited(STOP_TIMEOUT)

    def kill(self) -> None:
        """
        SIGKILL now, if still running (cleanup of last resort; does not wait).
        """
        if self.process is not None and self.process.poll() is None:
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    @property
    def base_url(self) -> str:
        """
        C{http://127.0.0.1:<port>}.
        """
        assert self.port is not None, "the gateway is not listening"
        return f"http://127.0.0.1:{self.port}"


# -------------------------------------------------------------------------------------------------
# Databases


def postgres_url(database: str) -> str:
    """
    The harness cluster's URL for C{database}.
    """
    parts = urlsplit(postgres_dsn())
    return urlunsplit(parts._replace(path=f"/{database}"))


def create_postgres_database() -> str:
    """
    Create a fresh database on the harness cluster; return its name.
    """
    name = f"cxg_it_{secrets.token_hex(6)}"
    _admin_statement(f'CREATE DATABASE "{name}"')
    return name


def _admin_statement(statement: str) -> None:
    connection = psycopg2.connect(postgres_dsn())
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def drop_postgres_database(name: str) -> None:
    """
    Drop a database made by L{create_postgres_database}, disconnecting whoever still uses it.
    """
    _admin_statement(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_rows(database: str, query: str, *args: object) -> list[tuple[Any, ...]]:
    """
    Run one query on C{database} of the harness cluster and return its rows.
    """
    connection = psycopg2.connect(postgres_url(database))
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(query, args)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


# -------------------------------------------------------------------------------------------------
# A gateway shared by the tests of one class


_live_processes: list[GatewayProcess] = []
_live_databases: list[str] = []


def _kill_leftovers() -> None:
    for process in _live_processes:
        process.kill()
    for name in _live_databases:
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            drop_postgres_database(name)


atexit.register(_kill_leftovers)


@dataclass
class SharedGateway:
    """
    One gateway process (and, for PostgreSQL, one fresh database) for the tests of one class:
    started by the first test that asks, stopped after the class's last test method ran.

    @ivar remaining: test methods of the class not finished yet.
    """

    engine: str
    env: Mapping[str, str]
    cwd: Path
    remaining: int
    process: GatewayProcess | None = None
    database: str | None = None
    _registry: ClassVar[dict[type, SharedGateway]] = {}

    @classmethod
    def for_class(
        cls, case_class: type, engine: str, env: Mapping[str, str], cwd: Path
    ) -> SharedGateway:
        """
        The shared gateway of C{case_class}, made on first use.
        """
        shared = cls._registry.get(case_class)
        if shared is None:
            tests = [
                n for n in dir(case_class) if n.startswith("test") and callable(getattr(case_class, n))
            ]
            shared = cls._registry[case_class] = cls(engine, env, cwd, len(tests))
        return shared

    async def acquire(self) -> GatewayProcess:
        """
        The running gateway (started, or restarted if a test killed it).
        """
        if self.process is not None and self.process.running:
            return self.process
        if self.engine == "postgres":
            if self.database is None:
                self.database = create_postgres_database()
                _live_databases.append(self.database)
            url = postgres_url(self.database)
        else:
            url = "sqlite:///var/exec-gateway.sqlite3"
        self.process = GatewayProcess(gateway_env(url, self.env), self.cwd)
        _live_processes.append(self.process)
        await self.process.start()
        return self.process

    async def release(self) -> None:
        """
        One test is done; after the last one, stop the gateway and drop its database.
        """
        self.remaining -= 1
        if self.remaining > 0:
            return
        if self.process is not None:
            await self.process.stop()
        if self.database is not None:
            drop_postgres_database(self.database)
            _live_databases.remove(self.database)
            self.database = None


# -------------------------------------------------------------------------------------------------
# Websocket clients


class DialRefused(AssertionError):
    """
    A websocket dial ended before its handshake completed.
    """


class _RelayProtocol(WebSocketClientProtocol):
    """
    The Autobahn side of a L{RelayClient}.
    """

    client: RelayClient

    def onOpen(self) -> None:
        self.client._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.client._message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.client._closed(wasClean, code, reason)


class _RelayFactory(WebSocketClientFactory):
    protocol = _RelayProtocol

    def __init__(
        self, client: RelayClient, url: str, headers: Mapping[str, str], offer_deflate: bool
    ) -> None:
        super().__init__(url=url, headers=dict(headers), reactor=reactor)
        self.client = client
        self.setProtocolOptions(
            autoPingInterval=0,
            openHandshakeTimeout=WAIT,
            closeHandshakeTimeout=2,
            maxFramePayloadSize=0,
            maxMessagePayloadSize=0,
            failByDrop=False,
            perMessageCompressionOffers=[PerMessageDeflateOffer()] if offer_deflate else [],
            perMessageCompressionAccept=lambda response: None,
        )

    def buildProtocol(self, addr: IAddress | None) -> _RelayProtocol:
        protocol = super().buildProtocol(addr)
        assert isinstance(protocol, _RelayProtocol)
        protocol.client = self.client
        return protocol


@dataclass
class Closed:
    """
    How a websocket ended: the close code and reason received (1006 and Autobahn's text when it
    just dropped).
    """

    code: int | None
    reason: str | None
    clean: bool


class RelayClient:
    """
    A websocket client of the gateway that records what it receives.

    @ivar frames: every binary message received, in order.
    @ivar texts: how many text messages were received.
    @ivar closed: fires with L{Closed} when the connection ended.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.texts = 0
        self.queue: DeferredQueue[bytes] = DeferredQueue()
        self.protocol: _RelayProtocol | None = None
        self.closed: Deferred[Closed] = Deferred()
        self.close_info: Closed | None = None
        self._open: Deferred[RelayClient] = Deferred()

    # Autobahn callbacks

    def _opened(self, protocol: _RelayProtocol) -> None:
        self.protocol = protocol
        self._open.callback(self)

    def _message(self, payload: bytes, is_binary: bool) -> None:
        if not is_binary:
            self.texts += 1
            return
        self.frames.append(payload)
        self.queue.put(payload)
        self.on_frame(payload)

    def on_frame(self, frame: bytes) -> None:
        """
        Hook for subclasses: a binary message arrived.
        """

    def _closed(self, clean: bool, code: int | None, reason: str | None) -> None:
        self.close_info = Closed(code, reason, clean)
        if not self._open.called:
            self._open.errback(DialRefused(f"dial refused: {code} {reason}"))
        if not self.closed.called:
            self.closed.callback(self.close_info)

    # use

    async def dial(
        self,
        port: int,
        path: str,
        headers: Mapping[str, str] | None = None,
        offer_deflate: bool = False,
    ) -> None:
        """
        Connect to C{ws://127.0.0.1:<port><path>} and complete the handshake (offering
        permessage-deflate when asked to).
        """
        url = f"ws://127.0.0.1:{port}{path}"
        factory = _RelayFactory(self, url, headers or {}, offer_deflate)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=WAIT)
        await bounded(endpoint.connect(factory), WAIT, f"connect {path}")
        await bounded(self._open, WAIT, f"websocket handshake {path}")

    @property
    def extensions(self) -> list[Any]:
        """
        The websocket extensions the handshake settled on.
        """
        assert self.protocol is not None
        return list(self.protocol.websocket_extensions_in_use)

    @property
    def is_closed(self) -> bool:
        """
        Whether the connection has ended.
        """
        return self.closed.called

    def send(self, frame: bytes) -> None:
        """
        Send one binary message.
        """
        assert self.protocol is not None
        self.protocol.sendMessage(frame, isBinary=True)

    def send_text(self, text: str) -> None:
        """
        Send one text message.
        """
        assert self.protocol is not None
        self.protocol.sendMessage(text.encode("utf-8"), isBinary=False)

    def next_frame(self, timeout: float = WAIT) -> Deferred[bytes]:
        """
        The next binary message not taken yet.
        """
        return bounded(self.queue.get(), timeout, "next frame")

    def pending(self) -> int:
        """
        How many received frames were not taken with L{next_frame}.
        """
        return len(self.queue.pending)

    def wait_closed(self, timeout: float = WAIT) -> Deferred[Closed]:
        """
        Fire with L{Closed} once the connection ended.
        """
        watcher: Deferred[Closed] = Deferred()

        def relay(info: Closed) -> Closed:
            if not watcher.called:
                watcher.callback(info)
            return info

        self.closed.addCallback(relay)
        return bounded(watcher, timeout, "websocket close")

    async def close(self, code: int = 1000, reason: str | None = None) -> Closed:
        """
        Start the closing handshake and wait for the end of the connection.
        """
        if self.protocol is not None and not self.is_closed:
            self.protocol.sendClose(code, reason)
        return await self.wait_closed()

    def pause_reading(self) -> None:
        """
        Stop reading the socket (the gateway's writes and pings then go unanswered).
        """
        assert self.protocol is not None
        cast(Any, self.protocol.transport).pauseProducing()

    def resume_reading(self) -> None:
        """
        Read the socket again.
        """
        assert self.protocol is not None
        cast(Any, self.protocol.transport).resumeProducing()

    async def abort(self) -> None:
        """
        Drop the TCP connection (cleanup), and wait until it is gone.
        """
        if self.is_closed:
            return
        if self.protocol is not None and self.protocol.transport is not None:
            cast(Any, self.protocol.transport).abortConnection()
        await self.wait_closed()


class ExecutorClient(RelayClient):
    """
    An executor's inbound connection. With L{echo} set, every Data frame is sent back unchanged, so a
    bridge gets its own payloads back on its stream.
    """

    def __init__(self, echo: bool = False) -> None:
        super().__init__()
        self.echo = echo

    def on_frame(self, frame: bytes) -> None:
        """
        Echo Data frames when asked to.
        """
        if self.echo and relayframe.peek(frame).body is Body.DATA:
            self.send(frame)


class BridgeClient(RelayClient):
    """
    A bridge client (what env-mcp or the SDK layer opens).
    """


@dataclass
class Clients:
    """
    The websocket clients of one test, dropped at its end if still open.
    """

    items: list[RelayClient] = field(default_factory=list)

    async def executor(
        self, port: int, exe_id: str, token: str, echo: bool = False, offer_deflate: bool = False
    ) -> ExecutorClient:
        """
        Connect an executor with a ticket or its raw registration token.
        """
        client = ExecutorClient(echo)
        self.items.append(client)
        path = f"/codex-exec/{exe_id}?token={token}"
        await client.dial(port, path, {"User-Agent": "codexgw-it"}, offer_deflate)
        return client

    async def bridge(
        self, port: int, exe_id: str, cap_token: str, stream_id: str | None = None
    ) -> BridgeClient:
        """
        Open a bridge with a cap token, and send its Resume when C{stream_id} is given.
        """
        client = BridgeClient()
        self.items.append(client)
        await client.dial(port, f"/bridge/{exe_id}", {"Authorization": f"Bearer {cap_token}"})
        if stream_id is not None:
            client.send(relayframe.resume_frame(stream_id))
        return client

    async def cleanup(self) -> None:
        """
        Drop every client still connected.
        """
        for client in self.items:
            await client.abort()


# -------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class Reply:
    """
    One HTTP response.

    @ivar length: the C{Content-Length} it was sent with (Twisted's client takes that header out of
        C{headers}); C{None} for a chunked body.
    """

    status: int
    headers: dict[str, list[str]]
    body: bytes
    length: int | None

    @property
    def json(self) -> Any:
        """
        The body parsed as JSON.
        """
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """
        The first value of header C{name}, or C{None}.
        """
        values = self.headers.get(name.lower())
        return values[0] if values else None


def mint_cap(workspace_id: str, turn_id: str = "trn_it", ttl: int = 3600) -> str:
    """
    A cap token for C{workspace_id}, valid for C{ttl} seconds from now.
    """
    now = int(time.time())
    return tokens.mint_cap_token(Secret(CAP_SECRET.encode()), turn_id, workspace_id, now, now + ttl)


class GatewayHTTP:
    """
    treq calls to one gateway, on a connection pool the test closes at its end.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.pool = HTTPConnectionPool(reactor, persistent=True)

    async def close(self) -> None:
        """
        Close the pool's connections (test cleanup).
        """
        await self.pool.closeCachedConnections()

    async def request(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = WAIT,
    ) -> Reply:
        """
        One request; the whole response.
        """
        response = await bounded(
            treq.request(
                method,
                self.base_url + path,
                headers=cast(dict[bytes | str, bytes | str], dict(headers or {})),
                data=body,
                pool=self.pool,
                timeout=timeout,
            ),
            timeout,
            f"{method} {path}",
        )
        content = await bounded(treq.content(response), timeout, f"body of {method} {path}")
        headers_out = {
            name.decode("latin-1").lower(): [v.decode("latin-1") for v in values]
            for name, values in response.headers.getAllRawHeaders()
        }
        length = None if response.length is UNKNOWN_LENGTH else int(response.length)
        return Reply(response.code, headers_out, content, length)

    # admin API

    def _admin(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"X-Internal-Secret": ADMIN_SECRET, **(extra or {})}

    async def register(self, user_id: str = "usr_it") -> tuple[str, str]:
        """
        Register an executor; return its exe_id and registration token.
        """
        reply = await self.request(
            "POST", "/api/codex-exec/register", self._admin({"X-User-Id": user_id}), b"{}"
        )
        assert reply.status == 201, reply
        return reply.json["exe_id"], reply.json["registration_token"]

    async def bind(self, workspace_id: str, exe_id: str, name: str) -> Reply:
        """
        Bind an executor to a workspace.
        """
        body = json.dumps({"exe_id": exe_id, "name": name}).encode()
        return await self.request(
            "POST", f"/api/codex-exec/workspaces/{workspace_id}/executors", self._admin(), body
        )

    async def listing(self, workspace_id: str) -> list[dict[str, Any]]:
        """
        Every binding of a workspace.
        """
        reply = await self.request(
            "GET", f"/api/codex-exec/workspaces/{workspace_id}/executors", self._admin()
        )
        assert reply.status == 200, reply
        result: list[dict[str, Any]] = reply.json
        return result

    async def delete(self, exe_id: str) -> Reply:
        """
        Delete an executor.
        """
        return await self.request("DELETE", f"/api/codex-exec/executors/{exe_id}", self._admin())

    async def connected(self, workspace_id: str) -> list[str]:
        """
        The exe_ids of a workspace with a live inbound (shared-secret mode).
        """
        reply = await self.request(
            "GET",
            f"/api/exec-gateway/connected?workspace_id={workspace_id}",
            {"Authorization": f"Bearer {SHARED_SECRET}"},
        )
        assert reply.status == 200, reply
        return [item["exe_id"] for item in reply.json]

    async def revoke(self, turn_id: str) -> Reply:
        """
        Revoke a turn.
        """
        return await self.request(
            "POST",
            "/api/exec-gateway/revoke-turn",
            {"Authorization": f"Bearer {SHARED_SECRET}"},
            json.dumps({"turn_id": turn_id}).encode(),
        )

    async def cloud_register(self, exe_id: str, token: str, kind: str = "executor") -> Reply:
        """
        An executor trades its registration token for a ws URL.
        """
        return await self.request(
            "POST", f"/cloud/{kind}/{exe_id}/register", {"Authorization": f"Bearer {token}"}
        )

    async def dial_status(self, exe_id: str, headers: Mapping[str, str]) -> Reply:
        """
        A bridge dial as a plain HTTP request with websocket handshake headers: the pre-upgrade
        answer.
        """
        handshake = {
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            **headers,
        }
        return await self.request("GET", f"/bridge/{exe_id}", handshake)

    async def metric(self, sample: str) -> float:
        """
        The value of one sample line of C{/metrics} (C{0.0} when absent).
        """
        text = (await self.request("GET", "/metrics")).body.decode("utf-8")
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return 0.0
