"""
The exec gateway's SDK REST surface (C{exec-gateway.md} §4.8, §5.6, §7.5, §11): the environment tools
of L{codexgw.envtools} run in-process for SDK clients, one envtools context per workspace, reaching the
executors through this gateway's own C{/bridge}.

Three layers:
 - The hooks of a workspace's envtools context (§4.8.3, C{envtools.md} §1.3): L{SDKCapTokens} mints
   the gateway's own cap tokens (turn C{sdk}, 24 h, renewed when less than 1 h is left);
   L{StoreResolverSource} lists the workspace's connected executors from the store and the registry
   (5 s), as C{/api/exec-gateway/connected} does; L{InProcessRelayCreator} creates relay tickets
   through the relay registry exactly as C{POST /api/exec-gateway/relay/create} would.
 - L{SDKWorkspaces}: the contexts, built lazily on a workspace's first tool call; the index of SDK
   process sessions across workspaces (§7.5); and the sweep every 60 s, which expires sessions idle
   for 30 min (best-effort terminate, then forget) and drops contexts idle for 1 h that have no live
   session (their bridges are closed).
 - L{SDKRoutes}: a Klein application with the five endpoints (§4.8.2), paths relative to the
   mount point, the JSON error envelope C{{"error":{"code","message"}}}, the body limit, the exact
   codes and messages, the C{sdk.auth_failed} / C{sdk.tool_call} log events and
   C{cxg_exec_sdk_requests_total{route,status}}. The gateway mounts L{SDKRoutes.resource} at both
   C{/api/sdk/} and C{/api/connectors/} (Klein branch routes), so both prefixes serve the same
   handlers.

Decisions where the spec is silent:
 - Order of checks on every route: the body limit first (§3: "body-size limits are checked before
   every other check"), then authentication. The process endpoints then look the session up (404,
   403, 410) and only then read their body or query.
 - A session call from another workspace (403) does not count as activity of the session; every
   other process-endpoint call does, the 410 ones included.
 - The C{route} label of the metric is the path template without the prefix (C{envs/list},
   C{envs/{name}/tool/call}, C{processes/{sid}/stdin}, C{processes/{sid}/output},
   C{processes/{sid}/terminate}); C{status} is the HTTP status answered. Requests that never reach a
   handler (unknown path, wrong method) are not counted.
 - Path parameters are single percent-decoded segments: a name or session id holding C{%2F} is
   accepted (decoded to C{/}); a path with extra segments is an unknown path (404).
 - C{HEAD} on the output route is answered 405: it would otherwise run a read for nothing.
 - The per-call deadline of the process endpoints (30 s plus C{wait_ms}) applies to each
   exec-server call; a deadline that passes is C{executor_error} C{<method>: timed out}. Bridge
   failures are reported as C{<method>: <error>} (e.g. C{process/write: relay reset: idle-timeout}).
 - C{process/write} answering another status than the three known ones is C{executor_error}
   C{process/write: unexpected status <json>}.
 - C{data_b64} is checked with the same strict decoder as C{write_file}'s C{content_b64}; its
   message is the decoder's. An empty C{data_b64} is valid (an empty write).
 - Terminate removes the session first (so a concurrent call gets 404), then waits for its
   best-effort C{process/terminate} (10 s) before answering 200. Its failures are logged as
   C{sdk.terminate_failed} (warn) with the workspace, the session id and the error.
 - A context's idle time counts from its last tool call (process-endpoint calls keep its sessions
   alive, and a context with a live session is never dropped). Lost sessions are not live.
 - The bridge base is C{CXG_SELF_HTTP_BASE_URL} turned into C{ws(s)://…/bridge}, else the listening
   address, learnt through L{SDKRoutes.listening_on} once the gateway listens; a tool call before
   that fails with C{workspace_init} C{sdk: bridge base unknown (the gateway is not listening yet)}.
 - An unexpected exception in a handler (a bug) is logged and answered 500 with code C{internal},
   message C{internal error}; a tool's own exception is C{tool_error} as specified.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound
from zope.interface import implementer

from codexgw.config import Secret
from codexgw.envtools.bridge import BridgeDialer, BridgePool, LinkConnector
from codexgw.envtools.context import EnvContext
from codexgw.envtools.interfaces import (
    CallError,
    ICapTokenProvider,
    IExecServerClient,
    IRelayCreator,
    IResolverSource,
    RelayError,
    RelayTicket,
    RelayUnavailable,
)
from codexgw.envtools.readsteps import ReadSteps
from codexgw.envtools.resolver import Resolver
from codexgw.envtools.sessions import ExecSession
from codexgw.envtools.tools import strict_base64
from codexgw.envtools.toolset import SDK_TOOLS, Tool, sdk_tool_named
from codexgw.execgw.config import ExecGatewayConfig
from codexgw.execgw.metrics import ExecMetrics
from codexgw.execgw.relay import RelayRefused, RelayRegistry, create_relay
from codexgw.execgw.sdkauth import ISDKAuthenticator, SDKAuthError, SDKIdentity
from codexgw.execgw.store import IStore, WorkspaceExecutor
from codexgw.execgw.timestamps import format_timestamp, format_timestamp_seconds
from codexgw.httpio import (
    InvalidJSON,
    bearer_token,
    body_exceeds,
    json_response,
    read_body,
    read_json_object,
)
from codexgw.tokens import mint_cap_token

log = Logger()

#: The User-Agent of the SDK layer's bridge dials (§5.6).
USER_AGENT: Final = "codexgw-exec-sdk"
#: The turn of the SDK layer's own cap tokens, their lifetime, and the time left below which
#: C{token(false)} mints a new one (§4.8.3), in seconds.
SDK_TURN_ID: Final = "sdk"
TOKEN_LIFETIME: Final = 24 * 3600
TOKEN_RENEW_BELOW: Final = 3600
#: Deadline of the resolver source's store call (§4.8.3).
STORE_DEADLINE: Final = 5.0
#: Deadline of each exec-server call of the process endpoints, before C{wait_ms} (§4.8.2).
CALL_DEADLINE: Final = 30.0
#: Deadline of the terminate endpoint's best-effort C{process/terminate} (§4.8.2).
TERMINATE_DEADLINE: Final = 10.0
#: How often sessions and contexts are swept, and how long a context may go without tool calls (§4.8.3).
SWEEP_INTERVAL: Final = 60.0
CONTEXT_IDLE: Final = 3600.0
#: C{maxBytes} of the output endpoint's reads, and the longest C{wait_ms} (§4.8.2).
READ_MAX_BYTES: Final = 1 << 20
MAX_WAIT_MS: Final = 10_000

#: The C{route} labels of C{cxg_exec_sdk_requests_total}.
ROUTE_ENVS_LIST: Final = "envs/list"
ROUTE_TOOL_CALL: Final = "envs/{name}/tool/call"
ROUTE_STDIN: Final = "processes/{sid}/stdin"
ROUTE_OUTPUT: Final = "processes/{sid}/output"
ROUTE_TERMINATE: Final = "processes/{sid}/terminate"

#: The path prefixes the gateway mounts L{SDKRoutes.resource} at (§3).
PREFIXES: Final = ("/api/sdk/", "/api/connectors/")


# -------------------------------------------------------------------------------------------------
# The bridge base


def self_bridge_base(self_http_base_url: str | None, host: str | None, port: int | None) -> str | None:
    """
    The SDK layer's bridge base (§4.8.3): C{CXG_SELF_HTTP_BASE_URL} with C{http}→C{ws} /
    C{https}→C{wss}, else C{ws://<host>:<port>} of the listening socket with a wildcard host replaced
    by loopback (C{0.0.0.0} → C{127.0.0.1}, C{::} → C{[::1]}); then C{/bridge}.

    @return: the base, or C{None} when neither is known yet.
    """
    if self_http_base_url:
        base = self_http_base_url.rstrip("/")
        if base.startswith("https://"):
            return "wss://" + base[len("https://") :] + "/bridge"
        if base.startswith("http://"):
            return "ws://" + base[len("http://") :] + "/bridge"
        return base + "/bridge"
    if host is None or port is None:
        return None
    if host in ("", "0.0.0.0"):  # noqa: S104 - recognising the wildcard, not binding it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}/bridge"


# -------------------------------------------------------------------------------------------------
# The hooks of a workspace context


@implementer(ICapTokenProvider)
class SDKCapTokens:
    """
    The SDK's cap-token provider for one workspace (§4.8.3): tokens minted by the gateway itself with
    turn C{sdk}, C{iat} = now and C{exp} = now + 24 h.

    @ivar current: the token handed out last, or C{None} before the first.
    @ivar exp: its expiry (Unix seconds).
    """

    def __init__(self, secret: Secret, workspace_id: str, clock: IReactorTime) -> None:
        """
        @param secret: C{CXG_CAPTOKEN_HMAC_SECRET}.
        """
        self._secret = secret
        self.workspace_id = workspace_id
        self._clock = clock
        self.current: str | None = None
        self.exp = 0

    def __repr__(self) -> str:
        # Never the token.
        return f"<SDKCapTokens {self.workspace_id}>"

    def token(self, force: bool) -> Deferred[str]:
        """
        See L{ICapTokenProvider.token}: re-mint when C{force}, when there is none yet, or when less
        than 1 h is left.
        """
        now = int(self._clock.seconds())
        if force or self.current is None or self.exp - now < TOKEN_RENEW_BELOW:
            self.exp = now + TOKEN_LIFETIME
            self.current = mint_cap_token(self._secret, SDK_TURN_ID, self.workspace_id, now, self.exp)
        return succeed(self.current)


class ConnectedIds(Protocol):
    """
    What the resolver source needs of the registry of live inbound connections.
    """

    def connected_ids(self) -> list[str]:
        """
        A snapshot of the connected executor ids.
        """


def connected_executor_object(binding: WorkspaceExecutor) -> dict[str, object]:
    """
    The ConnectedExecutor shape (§4.5): C{exe_id}, C{name}, C{description}, C{is_default} and, when
    known, C{last_seen_at}.
    """
    value: dict[str, object] = {
        "exe_id": binding.exe_id,
        "name": binding.name,
        "description": binding.description,
        "is_default": binding.is_default,
    }
    if binding.last_seen_at is not None:
        value["last_seen_at"] = format_timestamp(binding.last_seen_at)
    return value


def connected_bindings(
    store: IStore, registry: ConnectedIds, workspace_id: str, clock: IReactorTime
) -> Deferred[list[WorkspaceExecutor]]:
    """
    The bindings of C{workspace_id} whose executor has a live inbound, in binding order, within 5 s
    (the source of §4.6 and of C{envs/list}).
    """
    listed = store.connected_executors_for_workspace(workspace_id, registry.connected_ids())
    return listed.addTimeout(STORE_DEADLINE, clock)


@implementer(IResolverSource)
class StoreResolverSource:
    """
    The SDK's resolver source for one workspace (§4.8.3).
    """

    def __init__(
        self, store: IStore, registry: ConnectedIds, workspace_id: str, clock: IReactorTime
    ) -> None:
        self._store = store
        self._registry = registry
        self._workspace_id = workspace_id
        self._clock = clock

    def list(self) -> Deferred[list[dict[str, Any]]]:
        """
        See L{IResolverSource.list}: the ConnectedExecutor objects; a store failure or the deadline
        fails it with the error.
        """
        d = connected_bindings(self._store, self._registry, self._workspace_id, self._clock)
        return d.addCallback(lambda bindings: [connected_executor_object(b) for b in bindings])


#: Creates a relay as C{POST /api/exec-gateway/relay/create} does (L{codexgw.execgw.relay.create_relay}).
RelayCreate = Callable[..., Any]


@implementer(IRelayCreator)
class InProcessRelayCreator:
    """
    The SDK's relay creator for one workspace (§11.3): tickets from the relay registry, in-process.
    """

    def __init__(
        self,
        relays: RelayRegistry | None,
        store: IStore,
        workspace_id: str,
        create: RelayCreate = create_relay,
    ) -> None:
        """
        @param relays: the relay registry, or C{None} when the byte relay is disabled.
        @param create: C{create(relays, store, workspace_id, source, dest, ttl, max_bytes)}, a
            coroutine returning a L{codexgw.execgw.relay.RelayGrant} or raising L{RelayRefused}.
        """
        self._relays = relays
        self._store = store
        self._workspace_id = workspace_id
        self._create = create

    def create_relay(
        self, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int
    ) -> Deferred[RelayTicket]:
        """
        See L{IRelayCreator.create_relay}: relay disabled → L{RelayUnavailable}; any refusal →
        L{RelayError} C{relay/create: <error text>}.
        """
        return Deferred.fromCoroutine(
            self._create_relay(source_exe_id, dest_exe_id, ttl_seconds, max_bytes)
        )

    async def _create_relay(
        self, source_exe_id: str, dest_exe_id: str, ttl_seconds: int, max_bytes: int
    ) -> RelayTicket:
        if self._relays is None:
            raise RelayUnavailable()
        try:
            grant = await self._create(
                self._relays,
                self._store,
                self._workspace_id,
                source_exe_id,
                dest_exe_id,
                ttl_seconds,
                max_bytes,
            )
        except RelayRefused as e:
            raise RelayError(f"relay/create: {e.message}") from None
        return RelayTicket(grant.ticket, grant.upload_url, grant.download_url)


# -------------------------------------------------------------------------------------------------
# The contexts and the session index


@dataclass
class WorkspaceContext:
    """
    The envtools context of one workspace and what the SDK keeps beside it.

    @ivar workspace_id: the workspace.
    @ivar env: the envtools context (pool, resolver, session table, counters, relay creator).
    @ivar tokens: its cap-token provider.
    @ivar last_tool_call: clock seconds of its creation or its latest tool call.
    """

    workspace_id: str
    env: EnvContext
    tokens: SDKCapTokens
    last_tool_call: float


class SDKWorkspaces:
    """
    The per-workspace envtools contexts of the SDK, the index of its process sessions across
    workspaces, and the sweep (§4.8.3, §7.5).
    """

    def __init__(
        self,
        captoken_secret: Secret,
        store: IStore,
        registry: ConnectedIds,
        clock: IReactorTime,
        relays: RelayRegistry | None = None,
        *,
        bridge_base: Callable[[], str | None],
        connect: LinkConnector | None = None,
        relay_create: RelayCreate = create_relay,
    ) -> None:
        """
        @param captoken_secret: C{CXG_CAPTOKEN_HMAC_SECRET}, for the SDK's own cap tokens.
        @param registry: the live inbound connections (C{connected_ids()}).
        @param clock: the reactor: timers, deadlines and (without C{connect}) the bridge dials.
        @param relays: the relay registry, or C{None} when the byte relay is disabled.
        @param bridge_base: the bridge base URL, or C{None} while it is not known.
        @param connect: opens bridge links (tests); real websockets on C{clock} by default.
        @param relay_create: how relays are created (L{codexgw.execgw.relay.create_relay}).
        """
        self._secret = captoken_secret
        self._store = store
        self._registry = registry
        self.clock = clock
        self._relays = relays
        self._bridge_base = bridge_base
        self._connect = connect
        self._relay_create = relay_create
        self.contexts: dict[str, WorkspaceContext] = {}
        self._sessions: dict[str, WorkspaceContext] = {}
        self._sweeper: LoopingCall | None = None
        self.closed = False

    # contexts

    def context_for(self, workspace_id: str) -> WorkspaceContext:
        """
        The context of C{workspace_id}, built on first use.

        @raise Exception: the context could not be built; C{str()} is the C{workspace_init} text.
        """
        context = self.contexts.get(workspace_id)
        if context is not None:
            return context
        if self.closed:
            raise RuntimeError("sdk: shutting down")
        base = self._bridge_base()
        if base is None:
            raise RuntimeError("sdk: bridge base unknown (the gateway is not listening yet)")
        tokens = SDKCapTokens(self._secret, workspace_id, self.clock)
        dialer = BridgeDialer(self.clock, base, USER_AGENT, tokens, connect=self._connect)
        env = EnvContext(
            BridgePool(dialer.dial),
            Resolver(
                StoreResolverSource(self._store, self._registry, workspace_id, self.clock), self.clock
            ),
            self.clock,
            InProcessRelayCreator(self._relays, self._store, workspace_id, self._relay_create),
        )
        context = WorkspaceContext(workspace_id, env, tokens, self.clock.seconds())
        self.contexts[workspace_id] = context
        return context

    # sessions

    def register_session(self, context: WorkspaceContext, session_id: str) -> None:
        """
        Index a session that C{exec_command} just added to C{context}'s table.
        """
        self._sessions[session_id] = context

    def find_session(self, session_id: str) -> tuple[WorkspaceContext, ExecSession] | None:
        """
        The context and session of C{session_id}, or C{None} when there is none (any more).
        """
        context = self._sessions.get(session_id)
        if context is None:
            return None
        session = context.env.sessions.get(session_id)
        if session is None:
            del self._sessions[session_id]
            return None
        return context, session

    def forget_session(self, context: WorkspaceContext, session_id: str) -> None:
        """
        Remove a session from its table (without terminating it) and from the index.
        """
        context.env.sessions.forget(session_id)
        self._sessions.pop(session_id, None)

    def session_count(self) -> int:
        """
        The number of indexed sessions.
        """
        return len(self._sessions)

    # the sweep

    def sweep(self) -> Deferred[None]:
        """
        Expire every session idle for 30 min (best-effort terminate, then forget), then drop the
        contexts without a tool call for 1 h that have no live session (their bridges close).

        @return: fires when the terminates of the expired sessions have ended.
        """
        now = self.clock.seconds()
        ending: list[Deferred[None]] = []
        for workspace_id, context in list(self.contexts.items()):
            ending.append(context.env.sessions.expire())
            live = [s for s in context.env.sessions.sessions() if not s.lost]
            if not live and now - context.last_tool_call >= CONTEXT_IDLE:
                del self.contexts[workspace_id]
                context.env.close()
                log.info(
                    "sdk context of {workspace_id} dropped after {idle_s}s without tool calls",
                    event="sdk.context_dropped",
                    workspace_id=workspace_id,
                    idle_s=int(now - context.last_tool_call),
                )
        self._prune_index()
        return gatherResults(ending).addCallback(lambda _: None)

    def _prune_index(self) -> None:
        for session_id, context in list(self._sessions.items()):
            present = self.contexts.get(context.workspace_id) is context and any(
                s.session_id == session_id for s in context.env.sessions.sessions()
            )
            if not present:
                del self._sessions[session_id]

    def start(self) -> None:
        """
        Start the sweep (every 60 s on the clock).
        """
        if self._sweeper is None:
            self._sweeper = LoopingCall(self._sweep_now)
            self._sweeper.clock = self.clock
            self._sweeper.start(SWEEP_INTERVAL, now=False)

    def _sweep_now(self) -> None:
        # The sweep's own Deferred ends with the terminates; the timer does not wait for them.
        self.sweep()

    def stop(self) -> None:
        """
        Stop the sweep, forget every session and close every context's bridges (shutdown); later
        tool calls fail with C{workspace_init}.
        """
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self.closed = True
        contexts, self.contexts = self.contexts, {}
        self._sessions.clear()
        for context in contexts.values():
            context.env.close()


# -------------------------------------------------------------------------------------------------
# The routes


class SDKError(Exception):
    """
    An SDK request is answered with an error envelope.

    @ivar status: the HTTP status.
    @ivar code: the envelope's C{code}.
    @ivar message: the envelope's C{message}.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def error_body(code: str, message: str) -> dict[str, object]:
    """
    The error envelope: C{{"error":{"code":…,"message":…}}}.
    """
    return {"error": {"code": code, "message": message}}


def tool_listing(tools: Sequence[Tool] = SDK_TOOLS) -> list[dict[str, str]]:
    """
    The C{tools} of an C{envs/list} entry: C{{"name","description","kind":"core"}} per SDK tool.
    """
    return [{"name": t.name, "description": t.description, "kind": "core"} for t in tools]


def env_entry(binding: WorkspaceExecutor) -> dict[str, object]:
    """
    One C{envs/list} entry: C{name}, C{type}, C{is_default}, C{tools} and, when known, C{last_seen}
    in whole seconds.
    """
    entry: dict[str, object] = {
        "name": binding.name,
        "type": "executor",
        "is_default": binding.is_default,
        "tools": tool_listing(),
    }
    if binding.last_seen_at is not None:
        entry["last_seen"] = format_timestamp_seconds(binding.last_seen_at)
    return entry


def _query_int(request: IRequest, name: bytes) -> int | None:
    """
    The first value of query parameter C{name} as a decimal integer (optional C{-}), or C{None}.
    """
    values = request.args.get(name) if request.args else None
    if not values:
        return None
    text = values[0]
    digits = text[1:] if text.startswith(b"-") else text
    if not digits or not digits.isdigit() or not digits.isascii() or len(digits) > 20:
        return None
    return int(text)


def _method_error(method: str, error: BaseException) -> SDKError:
    """
    C{executor_error} C{<method>: <detail>} for a failed exec-server call.
    """
    if isinstance(error, DeferredTimeout):
        return SDKError(502, "executor_error", f"{method}: timed out")
    text = str(error)
    if not text.startswith(f"{method}: "):
        text = f"{method}: {text}"
    return SDKError(502, "executor_error", text)


def _path_segment(request: IRequest, from_end: int, decoded: str) -> None:
    """
    Check that the route parameter C{decoded} was exactly one path segment: the raw segment at
    position C{from_end} (counted from the end of the path) decodes to it.

    @raise NotFound: it spanned several segments.
    """
    raw: bytes = request.path
    segments = raw.split(b"/")
    if len(segments) < -from_end:
        raise NotFound()
    segment = unquote_to_bytes(segments[from_end]).decode("utf-8", "replace")
    if segment != decoded:
        raise NotFound()


class SDKRoutes:
    """
    The SDK REST surface: five endpoints relative to a mount point (C{/api/sdk/} and
    C{/api/connectors/}).

    @ivar app: the Klein application; L{resource} is its resource.
    @ivar workspaces: the per-workspace contexts and the session index.
    @ivar authenticator: the verifier of bearer tokens.
    """

    app = Klein()

    def __init__(
        self,
        config: ExecGatewayConfig,
        store: IStore,
        registry: ConnectedIds,
        metrics: ExecMetrics,
        clock: IReactorTime,
        authenticator: ISDKAuthenticator,
        *,
        relays: RelayRegistry | None = None,
        bridge_base: str | None = None,
        connect: LinkConnector | None = None,
        relay_create: RelayCreate = create_relay,
    ) -> None:
        """
        @param config: the gateway's configuration (cap-token secret, body limit, self base URL).
        @param store: the store of executors and bindings.
        @param registry: the live inbound connections (C{switchboard.registry}).
        @param metrics: where C{cxg_exec_sdk_requests_total} is counted.
        @param clock: the reactor (timers, deadlines, bridge dials).
        @param authenticator: the verifier chosen by the configuration
            (L{codexgw.execgw.sdkauth.make_sdk_authenticator}).
        @param relays: the byte relay's registry (C{ExecGatewayRoutes.relays}), or C{None} when the
            relay is disabled.
        @param bridge_base: the bridge base to dial; by default from C{CXG_SELF_HTTP_BASE_URL} or
            the listening address (L{listening_on}).
        @param connect: opens bridge links (tests).
        @param relay_create: how relays are created (tests).
        """
        self.config = config
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.clock = clock
        self.authenticator = authenticator
        self._bridge_base = bridge_base or self_bridge_base(config.self_http_base_url, None, None)
        self.workspaces = SDKWorkspaces(
            config.captoken_hmac_secret,
            store,
            registry,
            clock,
            relays,
            bridge_base=lambda: self._bridge_base,
            connect=connect,
            relay_create=relay_create,
        )
        self._resource: IResource | None = None

    @property
    def bridge_base(self) -> str | None:
        """
        The bridge base the SDK dials, once known.
        """
        return self._bridge_base

    def listening_on(self, address: IAddress) -> None:
        """
        The gateway listens on C{address}: without C{CXG_SELF_HTTP_BASE_URL} (or an explicit base),
        the bridge base is derived from it.
        """
        if self._bridge_base is None:
            host = getattr(address, "host", None)
            port = getattr(address, "port", None)
            self._bridge_base = self_bridge_base(None, host, port)

    def resource(self) -> IResource:
        """
        The resource to mount (the same object on every call).
        """
        if self._resource is None:
            self._resource = self.app.resource()
        return self._resource

    def start(self) -> None:
        """
        Start the session sweep.
        """
        self.workspaces.start()

    def stop(self) -> Deferred[None]:
        """
        Stop the sweep, close every context's bridges, and release the verifier's connections.
        """
        self.workspaces.stop()
        close = getattr(self.authenticator, "close", None)
        if callable(close):
            closed: Deferred[None] = close()
            return closed
        return succeed(None)

    # ---------------------------------------------------------------------------------------------
    # shared steps

    def _answer(self, request: IRequest, route: str, status: int, value: object) -> bytes:
        self.metrics.sdk_requests.labels(route=route, status=str(status)).inc()
        return json_response(request, status, value)

    def _failed(self, request: IRequest, route: str, error: SDKError) -> bytes:
        return self._answer(request, route, error.status, error_body(error.code, error.message))

    def _internal(self, request: IRequest, route: str) -> bytes:
        log.failure("sdk request failed", event="sdk.internal_error", route=route)
        return self._answer(request, route, 500, error_body("internal", "internal error"))

    def _check_body(self, request: IRequest) -> None:
        limit = self.config.max_frame_bytes
        too_large = (
            body_exceeds(request, limit)
            if limit > 0
            else bool(getattr(request, "body_too_large", False))
        )
        if too_large:
            raise SDKError(413, "too_large", "request body too large")

    async def _identity(self, request: IRequest) -> SDKIdentity:
        """
        The body limit, then the bearer and its verification (§4.8.1).
        """
        self._check_body(request)
        token = bearer_token(request)
        if token is None:
            raise SDKError(401, "missing_bearer", "Authorization: Bearer <token> required")
        try:
            return await self.authenticator.authenticate(token)
        except CancelledError:
            raise
        except Exception as e:
            text = str(e) if isinstance(e, SDKAuthError) else f"sdk auth: {e}"
            log.warn("sdk authentication failed: {error}", event="sdk.auth_failed", error=text)
            raise SDKError(401, "invalid_token", text) from None

    def _session(
        self, identity: SDKIdentity, session_id: str, allow_lost: bool = False
    ) -> tuple[WorkspaceContext, ExecSession]:
        """
        The session of a process endpoint: 404, then 403, then (unless C{allow_lost}) 410; the call
        counts as activity.
        """
        found = self.workspaces.find_session(session_id)
        if found is None:
            raise SDKError(404, "session_not_found", f"no such session: {session_id}")
        context, session = found
        if context.workspace_id != identity.workspace_id:
            raise SDKError(403, "forbidden", "session belongs to a different workspace")
        context.env.sessions.touch(session)
        if session.lost and not allow_lost:
            raise _session_lost()
        return context, session

    def _call(
        self, client: IExecServerClient, method: str, params: Any, deadline: float
    ) -> Deferred[Any]:
        return client.call(method, params, deadline + 1).addTimeout(deadline, self.clock)

    # ---------------------------------------------------------------------------------------------
    # POST …/envs/list

    @app.route("/envs/list", methods=["POST"])
    async def envs_list(self, request: IRequest) -> bytes:
        """
        The connected environments of the caller's workspace, each with the six tools.
        """
        route = ROUTE_ENVS_LIST
        try:
            identity = await self._identity(request)
            try:
                bindings = await connected_bindings(
                    self.store, self.registry, identity.workspace_id, self.clock
                )
            except CancelledError:
                raise
            except Exception as e:
                if getattr(request, "channel", None) is None:
                    # The client hung up: the cancelled store call is no store failure.
                    return b""
                log.warn(
                    "store call {op} failed: {error}",
                    event="store.error",
                    op="connected_executors_for_workspace",
                    error=str(e),
                )
                self.metrics.store_errors.labels(op="connected_executors_for_workspace").inc()
                raise SDKError(500, "registry_error", str(e) or type(e).__name__) from None
            return self._answer(request, route, 200, {"envs": [env_entry(b) for b in bindings]})
        except SDKError as e:
            return self._failed(request, route, e)
        except CancelledError:
            raise
        except Exception:
            return self._internal(request, route)

    # ---------------------------------------------------------------------------------------------
    # POST …/envs/{name}/tool/call

    @app.route("/envs/<path:name>/tool/call", methods=["POST"])
    async def tool_call(self, request: IRequest, name: str) -> bytes:
        """
        Run one of the six tools on the environment C{name} of the caller's workspace.
        """
        _path_segment(request, -3, name)
        route = ROUTE_TOOL_CALL
        try:
            identity = await self._identity(request)
            try:
                context = self.workspaces.context_for(identity.workspace_id)
            except Exception as e:
                raise SDKError(500, "workspace_init", str(e) or type(e).__name__) from None
            tool, arguments = self._tool_request(request, name)
            return await self._run_tool(request, route, context, tool, arguments)
        except SDKError as e:
            return self._failed(request, route, e)
        except CancelledError:
            raise
        except Exception:
            return self._internal(request, route)

    def _tool_request(self, request: IRequest, name: str) -> tuple[Tool, dict[str, Any]]:
        """
        The tool and its arguments from the body, in the spec's order of checks.
        """
        try:
            body = read_json_object(read_body(request), {})
        except InvalidJSON:
            raise SDKError(400, "bad_request", "invalid JSON") from None
        tool_name = body.get("tool")
        if not isinstance(tool_name, str):
            raise SDKError(400, "bad_request", "tool must be a string")
        tool = sdk_tool_named(tool_name)
        if tool is None:
            raise SDKError(400, "unknown_tool", f"no such tool: {tool_name}")
        raw_arguments = body.get("arguments")
        if raw_arguments is None:
            arguments: dict[str, Any] = {}
        elif isinstance(raw_arguments, dict):
            arguments = dict(raw_arguments)
        else:
            raise SDKError(400, "bad_arguments", "arguments must be an object")
        takes_environment = "environment_id" in tool.schema.get("properties", {})
        if takes_environment and arguments.get("environment_id") in (None, ""):
            arguments["environment_id"] = name
        return tool, arguments

    async def _run_tool(
        self,
        request: IRequest,
        route: str,
        context: WorkspaceContext,
        tool: Tool,
        arguments: dict[str, Any],
    ) -> bytes:
        began = context.last_tool_call = self.clock.seconds()
        try:
            result = await tool.run(context.env, arguments)
        except CancelledError:
            raise
        except Exception as e:
            log.failure("sdk tool {tool} raised", event="sdk.tool_raised", tool=tool.name)
            raise SDKError(500, "tool_error", str(e) or type(e).__name__) from None
        finally:
            # The call's end counts too: a long tool call must not leave the context looking idle.
            context.last_tool_call = self.clock.seconds()
        if tool.name == "exec_command" and not result.is_error:
            session_id = _session_id_of(result.text)
            if session_id is not None:
                self.workspaces.register_session(context, session_id)
        log.info(
            "sdk tool {tool} in {workspace_id}",
            event="sdk.tool_call",
            workspace_id=context.workspace_id,
            tool=tool.name,
            is_error=result.is_error,
            duration_ms=int((self.clock.seconds() - began) * 1000),
        )
        return self._answer(request, route, 200, result.to_json())

    # ---------------------------------------------------------------------------------------------
    # POST …/processes/{sid}/stdin

    @app.route("/processes/<path:sid>/stdin", methods=["POST"])
    async def stdin(self, request: IRequest, sid: str) -> bytes:
        """
        Write base64 bytes to the stdin of an SDK process session.
        """
        _path_segment(request, -2, sid)
        route = ROUTE_STDIN
        try:
            identity = await self._identity(request)
            _, session = self._session(identity, sid)
            try:
                body = read_json_object(read_body(request), {"data_b64": str})
            except InvalidJSON:
                raise SDKError(400, "bad_request", "invalid JSON") from None
            data = body.get("data_b64")
            if data is None:
                raise SDKError(400, "bad_request", "data_b64 required")
            assert isinstance(data, str)
            try:
                strict_base64(data)
            except ValueError as e:
                raise SDKError(400, "bad_base64", str(e)) from None
            params = {"processId": session.process_id, "chunk": data, "writeId": str(uuid.uuid4())}
            try:
                result = await self._call(session.client, "process/write", params, CALL_DEADLINE)
            except CancelledError:
                raise
            except Exception as e:
                raise _method_error("process/write", e) from None
            status = result.get("status") if isinstance(result, dict) else None
            if status == "accepted":
                return self._answer(request, route, 200, {"ok": True})
            if status == "stdinClosed":
                raise SDKError(409, "stdin_closed", "process stdin is closed")
            if status == "unknownProcess":
                raise _session_lost()
            raise SDKError(
                502, "executor_error", f"process/write: unexpected status {json.dumps(status)}"
            )
        except SDKError as e:
            return self._failed(request, route, e)
        except CancelledError:
            raise
        except Exception:
            return self._internal(request, route)

    # ---------------------------------------------------------------------------------------------
    # GET …/processes/{sid}/output

    @app.route("/processes/<path:sid>/output", methods=["GET"])
    async def output(self, request: IRequest, sid: str) -> bytes:
        """
        Read output of an SDK process session after C{since}, waiting up to C{wait_ms}.
        """
        if request.method == b"HEAD":
            raise MethodNotAllowed(valid_methods=["GET"])
        _path_segment(request, -2, sid)
        route = ROUTE_OUTPUT
        try:
            identity = await self._identity(request)
            _, session = self._session(identity, sid)
            since = _query_int(request, b"since")
            if since is None or since < 0:
                since = 0
            wait_ms = _query_int(request, b"wait_ms")
            wait_ms = 0 if wait_ms is None else min(MAX_WAIT_MS, max(0, wait_ms))
            result = await self._read(session, since, wait_ms)
            exited = result.get("exited") is True
            body = {
                "chunks": [
                    {"stream": c.get("stream"), "data_b64": c.get("chunk"), "seq": c.get("seq")}
                    for c in result.get("chunks", [])
                ],
                "exit_code": result.get("exitCode") if exited else None,
                "session_alive": result.get("closed") is not True,
                "truncated": False,
                "lost_bytes": 0,
            }
            return self._answer(request, route, 200, body)
        except SDKError as e:
            return self._failed(request, route, e)
        except CancelledError:
            raise
        except Exception:
            return self._internal(request, route)

    async def _read(self, session: ExecSession, since: int, wait_ms: int) -> dict[str, Any]:
        """
        Read steps with the same C{afterSeq} until one returns chunks or reports C{exited} or
        C{closed}, or C{wait_ms} has passed; the last step's result.
        """
        steps = ReadSteps(session.client, session.process_id, READ_MAX_BYTES, since or None)
        deadline = self.clock.seconds() + wait_ms / 1000
        remaining = float(wait_ms)
        while True:
            step = Deferred.fromCoroutine(steps.step(remaining, advance=False))
            try:
                result = await step.addTimeout(CALL_DEADLINE + wait_ms / 1000, self.clock)
            except CancelledError:
                raise
            except CallError as e:
                if e.code == -32600 and str(e).startswith("process/read: unknown process id"):
                    raise _session_lost() from None
                raise _method_error("process/read", e) from None
            except Exception as e:
                raise _method_error("process/read", e) from None
            if steps.last_chunks or result.get("exited") or result.get("closed"):
                return result
            remaining = (deadline - self.clock.seconds()) * 1000
            if remaining <= 0:
                return result

    # ---------------------------------------------------------------------------------------------
    # POST …/processes/{sid}/terminate

    @app.route("/processes/<path:sid>/terminate", methods=["POST"])
    async def terminate(self, request: IRequest, sid: str) -> bytes:
        """
        Terminate an SDK process session (best effort) and forget it.
        """
        _path_segment(request, -2, sid)
        route = ROUTE_TERMINATE
        try:
            identity = await self._identity(request)
            context, session = self._session(identity, sid, allow_lost=True)
            self.workspaces.forget_session(context, sid)
            if not session.lost:
                params = {"processId": session.process_id}
                try:
                    await self._call(session.client, "process/terminate", params, TERMINATE_DEADLINE)
                except CancelledError:
                    raise
                except Exception as e:
                    log.warn(
                        "terminate of sdk session {session_id} failed: {error}",
                        event="sdk.terminate_failed",
                        workspace_id=context.workspace_id,
                        session_id=sid,
                        error=str(_method_error("process/terminate", e).message),
                    )
            return self._answer(request, route, 200, {"ok": True})
        except SDKError as e:
            return self._failed(request, route, e)
        except CancelledError:
            raise
        except Exception:
            return self._internal(request, route)


def _session_lost() -> SDKError:
    return SDKError(410, "session_lost", "process session lost: executor stream closed")


def _session_id_of(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    session_id = value.get("session_id") if isinstance(value, dict) else None
    return session_id if isinstance(session_id, str) else None
