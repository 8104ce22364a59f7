"""
A fake agentserver for the exec gateway's SDK authentication (C{exec-gateway.md} §4.8.1), and a fake
authenticator backed by it.

 - L{FakeAgentServer} is a C{twisted.web} resource serving C{POST /internal/validate-proxy-token} as
   agentserver does: it checks C{X-Internal-Secret}, reads C{{"proxy_token"}} and answers 200
   C{{"workspace_id","user_id"}} for a token it knows, 401 for any other. A test can make it answer
   another status (L{FakeAgentServer.status}), a body of its choice (L{FakeAgentServer.body}), or
   only later (L{FakeAgentServer.hang}, L{FakeAgentServer.release}); it records every request.
   Served through C{treq.testing.StubTreq} it backs L{codexgw.execgw.sdkauth.ProxyTokenAuth} in
   unit tests; served on a socket it is the agentserver of integration tests.
 - L{FakeSDKAuthenticator} is an L{ISDKAuthenticator} that asks a L{FakeAgentServer}'s token table
   directly (no HTTP, no cache), with the remote verifier's texts. It passes the same interface
   tests as the real verifiers (C{tests.execgw.test_sdkauth}).

Only tests and the dev stack import this module.
"""

# twisted.web's Resource is untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from codexgw.execgw.sdkauth import (
    EMPTY_TOKEN,
    REJECTED,
    VALIDATE_PATH,
    ISDKAuthenticator,
    SDKAuthError,
    SDKIdentity,
)


@dataclass(frozen=True)
class ValidateRequest:
    """
    One request the fake agentserver received.

    @ivar path: the request path.
    @ivar secret: the C{X-Internal-Secret} header, or C{None}.
    @ivar content_type: the C{Content-Type} header, or C{None}.
    @ivar body: the request body.
    """

    path: bytes
    secret: bytes | None
    content_type: bytes | None
    body: bytes

    @property
    def json(self) -> object:
        """
        The body parsed as JSON.
        """
        return json.loads(self.body)


class FakeAgentServer(Resource):
    """
    agentserver's proxy-token validation, in memory.

    @ivar tokens: the proxy tokens it accepts, with the identity each speaks for.
    @ivar requests: every request received, in order.
    @ivar status: when set, every validation is answered with this status (and L{body}).
    @ivar body: when set, the body of every answer (with L{status}, or 200).
    @ivar hang: when true, requests are not answered (they are kept in L{pending} until L{release}).
    @ivar pending: the requests left unanswered while L{hang} was set, with what was recorded.
    """

    isLeaf = True

    def __init__(self, internal_secret: bytes) -> None:
        """
        @param internal_secret: the C{X-Internal-Secret} it requires.
        """
        super().__init__()
        self._secret = internal_secret
        self.tokens: dict[str, SDKIdentity] = {}
        self.requests: list[ValidateRequest] = []
        self.status: int | None = None
        self.body: bytes | None = None
        self.hang = False
        self.pending: list[tuple[Request, ValidateRequest]] = []

    def add_token(self, token: str, workspace_id: str, user_id: str = "") -> None:
        """
        Accept C{token} for C{(workspace_id, user_id)}.
        """
        self.tokens[token] = SDKIdentity(workspace_id, user_id)

    def identity(self, token: str) -> SDKIdentity | None:
        """
        The identity C{token} speaks for, or C{None} when it is unknown.
        """
        return self.tokens.get(token)

    def render_POST(self, request: Request) -> bytes | int:
        """
        Validate one proxy token (or keep the request unanswered while L{hang} is set).
        """
        assert request.content is not None
        recorded = ValidateRequest(
            request.path,
            request.getHeader(b"X-Internal-Secret"),
            request.getHeader(b"Content-Type"),
            request.content.read(),
        )
        self.requests.append(recorded)
        if self.hang:
            self.pending.append((request, recorded))
            return NOT_DONE_YET
        return self._answer(request, recorded)

    def release(self) -> None:
        """
        Stop hanging and answer the requests kept meanwhile, in order.
        """
        self.hang = False
        pending, self.pending = self.pending, []
        for request, recorded in pending:
            if not request.finished and not request._disconnected:
                request.write(self._answer(request, recorded))
                request.finish()

    def _answer(self, request: Request, recorded: ValidateRequest) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        if recorded.path != VALIDATE_PATH.encode("ascii"):
            request.setResponseCode(404)
            return b'{"error":"not found"}\n'
        if self.status is not None or self.body is not None:
            request.setResponseCode(self.status if self.status is not None else 200)
            return self.body if self.body is not None else b"{}\n"
        if recorded.secret is None or not hmac.compare_digest(recorded.secret, self._secret):
            request.setResponseCode(401)
            return b'{"error":"unauthorized"}\n'
        try:
            parsed = json.loads(recorded.body)
        except ValueError:
            parsed = None
        token = parsed.get("proxy_token") if isinstance(parsed, dict) else None
        identity = self.identity(token) if isinstance(token, str) else None
        if identity is None:
            request.setResponseCode(401)
            return b'{"error":"invalid proxy token"}\n'
        answer = {
            "workspace_id": identity.workspace_id,
            "user_id": identity.user_id,
            "expires_at": "2099-01-01T00:00:00Z",
        }
        return json.dumps(answer).encode("utf-8") + b"\n"


@implementer(ISDKAuthenticator)
class FakeSDKAuthenticator:
    """
    An L{ISDKAuthenticator} answering from a L{FakeAgentServer}'s token table, at once.

    @ivar calls: every token it was asked about, in order.
    """

    def __init__(self, agentserver: FakeAgentServer) -> None:
        self.agentserver = agentserver
        self.calls: list[str] = []

    def authenticate(self, token: str) -> Deferred[SDKIdentity]:
        """
        See L{ISDKAuthenticator.authenticate}.
        """
        self.calls.append(token)
        if not token:
            return fail(SDKAuthError(EMPTY_TOKEN))
        identity = self.agentserver.identity(token)
        if identity is None:
            return fail(SDKAuthError(REJECTED))
        return succeed(identity)
