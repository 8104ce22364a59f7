"""
The app gateway's HTTP routes (C{app-gateway.md} §3): health, readiness, metrics, the TUI websocket
(§7.1 checks, then the L{TUIProxyFactory}), the loopback-gated C{/internal/*} routes (§3.1–§3.4) and
the Turn API (§8, mounted from L{codexgw.appgw.turns}).

Every check of a websocket upgrade runs before Autobahn sees the request and is answered with a
plain HTTP status. Handlers never let an exception escape: a client mistake gets its 4xx body, a
failing dependency the route's 5xx body, and nothing returns a traceback.

Decisions where the spec is silent:
 - "A websocket upgrade request" means C{Upgrade: websocket} (any case) and a C{Connection} header
   listing C{upgrade}; anything else on C{/} is answered 400 before authentication, so a plain GET
   never reaches agentserver.
 - C{/internal/relay/create}: a body over 64 KiB is C{invalid JSON} too; ids must be non-empty
   strings; C{ttl_seconds} and C{max_bytes} are passed on as given (the exec gateway validates them).
 - C{/internal/connected}: an answer that is neither an array nor C{null} is a failure (500 C{list}).
 - The bearer token is what L{bearer_token} reads: C{Bearer } with nothing after it (which arrives
   as C{Bearer}, HTTP parsers drop trailing blanks) is an empty token that fails authentication
   (401 C{unauthorized}, §7.1 step 3); bytes that are not UTF-8 reach the authenticator as
   surrogate escapes (the RemoteVerifier refuses those without calling agentserver).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import MethodNotAllowed, NotFound

from codexgw.appgw.auth import (
    Identity,
    IInboundAuthenticator,
    ISessionTracker,
    request_client_metadata,
)
from codexgw.appgw.captoken import CapTokenMinter, captoken_answer
from codexgw.appgw.clients import ExecGatewayUnreachable, IExecGatewayClient
from codexgw.appgw.codexhome import is_valid_workspace_id
from codexgw.appgw.config import AppGatewayConfig
from codexgw.appgw.loopback import GateRefusal, LoopbackGate, LoopbackGrant
from codexgw.appgw.metrics import AppMetrics
from codexgw.appgw.proxy import TUIProxyFactory
from codexgw.httpio import (
    bearer_token,
    body_exceeds,
    json_error,
    json_response,
    plain_response,
    read_body,
    text_response,
)

log = Logger()

#: Seconds session-close may take, in the background (§4.5).
SESSION_CLOSE_TIMEOUT = 5.0
#: The largest body of C{/internal/relay/create} looked at.
RELAY_CREATE_MAX_BODY = 64 * 1024


class TurnRoute(Protocol):
    """
    The Turn API as the routes mount it (L{codexgw.appgw.turns.TurnAPI}).
    """

    def handle(self, request: IRequest) -> Deferred[bytes]:
        """
        Answer one C{POST /api/turns}.
        """


class AppGatewayRoutes:
    """
    The route table of one app gateway.
    """

    app = Klein()

    def __init__(
        self,
        *,
        config: AppGatewayConfig,
        authenticator: IInboundAuthenticator,
        proxies: TUIProxyFactory,
        gate: LoopbackGate,
        minter: CapTokenMinter,
        exec_gateway: IExecGatewayClient,
        turns: TurnRoute,
        metrics: AppMetrics,
        clock: IReactorTime,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.proxies = proxies
        self.gate = gate
        self.minter = minter
        self.exec_gateway = exec_gateway
        self.turns = turns
        self.metrics = metrics
        self.clock = clock
        self.shutting_down = False

    # ---------------------------------------------------------------------------------------------
    # Errors of the router itself

    @app.handle_errors(NotFound)
    def not_found(self, request: IRequest, failure: Any) -> bytes:
        """
        Unknown path: 404 C{not found}.
        """
        return text_response(request, 404, "not found")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Any) -> bytes:
        """
        Known path, wrong method: 405 C{method not allowed}.
        """
        return text_response(request, 405, "method not allowed")

    # ---------------------------------------------------------------------------------------------
    # Health, readiness, metrics

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        """
        The process is up: 200 with an empty body.
        """
        return plain_response(request, 200, b"")

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: IRequest) -> bytes:
        """
        200 C{ok}, or 503 C{shutting down} once shutdown began.
        """
        if self.shutting_down:
            return text_response(request, 503, "shutting down")
        return text_response(request, 200, "ok")

    @app.route("/metrics", methods=["GET"])
    def metrics_route(self, request: IRequest) -> bytes:
        """
        The Prometheus exposition of §12.3.
        """
        body, content_type = self.metrics.render()
        request.setHeader(b"Content-Type", content_type.encode("ascii"))
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body

    # ---------------------------------------------------------------------------------------------
    # TUI websocket (§7.1)

    @app.route("/", methods=["GET"])
    @app.route("/codex-app/ws", methods=["GET"])
    async def tui(self, request: IRequest) -> bytes | IResource:
        """
        Check the upgrade (§7.1 steps 1–4) and hand it to the proxy.
        """
        if not _is_websocket_upgrade(request):
            return text_response(request, 400, "websocket upgrade required")
        origin = request.getHeader(b"Origin")
        if origin is not None and not self.config.origin_allowed(origin.decode("latin-1")):
            return text_response(request, 403, "origin not allowed")
        token = bearer_token(request)
        if token is None:
            return text_response(request, 401, "missing Bearer")
        session_id = ""
        try:
            if ISessionTracker.providedBy(self.authenticator):
                identity, session_id = await ISessionTracker(self.authenticator).open_session(
                    token, request_client_metadata(request)
                )
            else:
                identity = await self.authenticator.verify(token)
        except Exception as e:
            log.info("TUI upgrade refused: {error}", error=_describe(e))
            return text_response(request, 401, "unauthorized")
        if not isinstance(identity, Identity) or not is_valid_workspace_id(identity.workspace_id):
            self._close_session(session_id)
            return text_response(request, 401, "unauthorized")
        if getattr(request, "channel", None) is None:
            self._close_session(session_id)  # the client left while we authenticated
            return b""
        return self.proxies.resource_for(identity.workspace_id, lambda: self._close_session(session_id))

    def _close_session(self, session_id: str) -> None:
        """
        §4.5: close the agentserver session in the background, never delaying anything.
        """
        if not session_id or not ISessionTracker.providedBy(self.authenticator):
            return
        closing = ISessionTracker(self.authenticator).close_session(session_id)
        closing.addTimeout(SESSION_CLOSE_TIMEOUT, self.clock)
        closing.addErrback(
            lambda f: log.warn("session-close failed: {error}", error=f.getErrorMessage())
        )

    # ---------------------------------------------------------------------------------------------
    # /internal/* (§3.1–§3.4)

    def _gate(self, request: IRequest) -> LoopbackGrant | bytes:
        verdict = self.gate.check_request(request)
        if isinstance(verdict, GateRefusal):
            return text_response(request, verdict.status, verdict.message)
        return verdict

    @app.route("/internal/connected", methods=["GET"])
    async def internal_connected(self, request: IRequest) -> bytes:
        """
        §3.2: the live executors of the token's workspace, as the exec gateway lists them.
        """
        grant = self._gate(request)
        if isinstance(grant, bytes):
            return grant
        try:
            listed: object = await self.exec_gateway.connected(grant.workspace_id)
        except Exception as e:
            log.warn("internal/connected: {error}", error=_describe(e), workspace_id=grant.workspace_id)
            return text_response(request, 500, "list")
        if listed is None:
            listed = []
        if not isinstance(listed, list):
            log.warn("internal/connected: not an array", workspace_id=grant.workspace_id)
            return text_response(request, 500, "list")
        return json_response(request, 200, listed)

    @app.route("/internal/captoken", methods=["POST"])
    def internal_captoken(self, request: IRequest) -> bytes:
        """
        §3.3: a fresh cap token for the spawn of the loopback token.
        """
        grant = self._gate(request)
        if isinstance(grant, bytes):
            return grant
        try:
            answer = captoken_answer(self.minter, grant)
        except Exception as e:
            log.error("internal/captoken: {error}", error=_describe(e))
            return text_response(request, 500, "captoken")
        return json_response(request, 200, answer)

    @app.route("/internal/relay/create", methods=["POST"])
    async def internal_relay_create(self, request: IRequest) -> bytes:
        """
        §3.4: ask the exec gateway for a relay ticket on behalf of the token's workspace.
        """
        grant = self._gate(request)
        if isinstance(grant, bytes):
            return grant
        body = _json_object(request, RELAY_CREATE_MAX_BODY)
        if body is None or not all(
            isinstance(body.get(k), str) and body[k] for k in ("source_exe_id", "dest_exe_id")
        ):
            return json_error(request, 400, "invalid JSON")
        try:
            answer = await self.exec_gateway.create_relay(grant.workspace_id, body)
        except ExecGatewayUnreachable as e:
            return json_error(request, 502, str(e))  # already "exec gateway unreachable: …"
        except Exception as e:
            return json_error(request, 502, f"exec gateway unreachable: {_describe(e)}")
        request.setResponseCode(answer.status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(answer.body))
        return answer.body

    # ---------------------------------------------------------------------------------------------
    # Turn API (§8)

    @app.route("/api/turns", methods=["POST"])
    def api_turns(self, request: IRequest) -> Deferred[bytes]:
        """
        §8.1: run one turn for a trusted caller.
        """
        return self.turns.handle(request)


def _is_websocket_upgrade(request: IRequest) -> bool:
    upgrade = (request.getHeader(b"Upgrade") or b"").strip().lower()
    connection = (request.getHeader(b"Connection") or b"").lower()
    tokens = {part.strip() for part in connection.split(b",")}
    return upgrade == b"websocket" and b"upgrade" in tokens


def _json_object(request: IRequest, limit: int) -> dict[str, Any] | None:
    if body_exceeds(request, limit):
        return None
    try:
        value = json.loads(read_body(request).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
