"""
Unit tests of the SDK surface's authentication (L{codexgw.execgw.sdkauth}; C{exec-gateway.md} §4.8.1,
§6.3; acceptance items 74–76).

One interface suite (L{AuthenticatorTestsMixin}) runs against the local verifier, the remote verifier
in front of the fake agentserver (over C{treq.testing.StubTreq}, no sockets), and the fake
authenticator of C{codexgw.testing.fakeagentserver}. The remote verifier's cache, coalescing, error
texts and time limits are then checked on a L{Clock}: nothing waits for real time.
"""

from __future__ import annotations

import json
from typing import Any, cast

from treq.testing import StubTreq
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived
from zope.interface.verify import verifyObject

from codexgw.config import Secret
from codexgw.execgw.config import load_config
from codexgw.execgw.sdkauth import (
    HMACTokenAuth,
    ISDKAuthenticator,
    ProxyTokenAuth,
    SDKAuthError,
    SDKIdentity,
    make_sdk_authenticator,
)
from codexgw.httpclient import HTTPRequester
from codexgw.testing.fakeagentserver import FakeAgentServer, FakeSDKAuthenticator
from codexgw.tokens import mint_inbound_token

#: The §6.3 test vector.
VECTOR_SECRET = "inbound-hmac-secret-0123456789abcdef"
VECTOR_TOKEN = "ws_1.thr_1.14f80fbc41c70149340d984b5d068cbbd8fca09b20a4780aae3c43577ca8734a"
AGENTSERVER_URL = "http://agentserver.test"
INTERNAL_SECRET = "agentserver-internal-secret-0123456789ab"
BASE_ENV = {
    "CXG_CAPTOKEN_HMAC_SECRET": "cap-token-hmac-secret-0123456789abcdef",
    "CXG_INTERNAL_SHARED_SECRET": "internal-shared-secret-0123456789abcdef",
    "CXG_AGENTSERVER_INTERNAL_SECRET": INTERNAL_SECRET,
}


def result_of(case: SynchronousTestCase, d: Deferred[SDKIdentity]) -> SDKIdentity:
    """
    The identity C{d} fired with.
    """
    return case.successResultOf(d)


def error_of(case: SynchronousTestCase, d: Deferred[Any]) -> str:
    """
    The text of the L{SDKAuthError} C{d} failed with.
    """
    failure = case.failureResultOf(d, SDKAuthError)
    return str(failure.value)


class AuthenticatorTestsMixin:
    """
    What every L{ISDKAuthenticator} does. Subclasses say how to get one, a token it accepts, and how
    to let pending I/O happen.
    """

    def authenticator(self) -> ISDKAuthenticator:
        """
        The authenticator under test (the same object during one test).
        """
        raise NotImplementedError

    def valid_token(self, workspace_id: str) -> str:
        """
        A token the authenticator accepts for C{workspace_id} (user C{""}).
        """
        raise NotImplementedError

    def settle(self) -> None:
        """
        Let pending I/O happen.
        """

    def authenticate(self, token: str) -> Deferred[SDKIdentity]:
        """
        Authenticate C{token} and let it settle.
        """
        d = self.authenticator().authenticate(token)
        self.settle()
        return d

    def test_interface(self) -> None:
        """
        It provides L{ISDKAuthenticator}.
        """
        case = cast(SynchronousTestCase, self)
        case.assertTrue(verifyObject(ISDKAuthenticator, self.authenticator()))

    def test_valid(self) -> None:
        """
        A valid token gives its workspace.
        """
        case = cast(SynchronousTestCase, self)
        identity = result_of(case, self.authenticate(self.valid_token("ws_valid")))
        case.assertEqual(identity, SDKIdentity("ws_valid", ""))

    def test_invalid(self) -> None:
        """
        A token that is not valid fails with an L{SDKAuthError} whose text starts with C{sdk auth: }.
        """
        case = cast(SynchronousTestCase, self)
        text = error_of(case, self.authenticate(self.valid_token("ws_valid") + "x"))
        case.assertTrue(text.startswith("sdk auth: "), text)

    def test_empty(self) -> None:
        """
        The empty token fails with an L{SDKAuthError}.
        """
        case = cast(SynchronousTestCase, self)
        text = error_of(case, self.authenticate(""))
        case.assertTrue(text.startswith("sdk auth: "), text)

    def test_garbage(self) -> None:
        """
        Odd tokens (dots, non-ASCII, undecodable bytes as the header parser hands them over) fail with
        an L{SDKAuthError}, never another error.
        """
        case = cast(SynchronousTestCase, self)
        for token in ("...", "a.b.c", "é.ü.ß", "x\udcff.y.z", "Bearer x", " "):
            text = error_of(case, self.authenticate(token))
            case.assertTrue(text.startswith("sdk auth: "), (token, text))


class HMACTokenAuthTests(AuthenticatorTestsMixin, SynchronousTestCase):
    """
    The local verifier (item 76).
    """

    def setUp(self) -> None:
        self.secret = Secret(VECTOR_SECRET.encode())
        self.auth = HMACTokenAuth(self.secret)

    def authenticator(self) -> ISDKAuthenticator:
        """
        The local verifier with the vector's secret.
        """
        return self.auth

    def valid_token(self, workspace_id: str) -> str:
        """
        An inbound HMAC token for C{workspace_id}.
        """
        return mint_inbound_token(self.secret, workspace_id, "label")

    def test_vector(self) -> None:
        """
        The §6.3 vector authenticates as workspace C{ws_1}, user C{""}.
        """
        self.assertEqual(result_of(self, self.auth.authenticate(VECTOR_TOKEN)), SDKIdentity("ws_1", ""))

    def test_tampered(self) -> None:
        """
        Changing any character of the vector fails with C{sdk auth: invalid token}; so does the empty
        token.
        """
        for index in range(len(VECTOR_TOKEN)):
            original = VECTOR_TOKEN[index]
            replacement = "0" if original != "0" else "1"
            tampered = VECTOR_TOKEN[:index] + replacement + VECTOR_TOKEN[index + 1 :]
            self.assertEqual(
                error_of(self, self.auth.authenticate(tampered)), "sdk auth: invalid token", tampered
            )
        self.assertEqual(error_of(self, self.auth.authenticate("")), "sdk auth: invalid token")

    def test_other_secret(self) -> None:
        """
        A token minted with another secret is refused.
        """
        other = mint_inbound_token(Secret(b"another-inbound-secret-0123456789ab"), "ws_1", "thr_1")
        self.assertEqual(error_of(self, self.auth.authenticate(other)), "sdk auth: invalid token")


class RefusingHTTP:
    """
    An HTTP client whose every request fails as a refused connection does with treq.
    """

    def __init__(self) -> None:
        self.calls = 0

    def request(self, method: str, url: str, **kwargs: object) -> Deferred[Any]:
        """
        Fail with C{ResponseNeverReceived([ConnectionRefusedError])}.
        """
        self.calls += 1
        return fail(ResponseNeverReceived([Failure(ConnectionRefusedError("connection refused"))]))


class ProxyTokenAuthTests(AuthenticatorTestsMixin, SynchronousTestCase):
    """
    The remote verifier in front of the fake agentserver (items 74, 75).
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_779_000_000)
        self.agentserver = FakeAgentServer(INTERNAL_SECRET.encode())
        self.stub: Any = StubTreq(self.agentserver)
        self.auth = self.make()

    def make(self, http: HTTPRequester | None = None, **options: Any) -> ProxyTokenAuth:
        """
        A remote verifier on the test's clock, by default in front of the fake agentserver.
        """
        return ProxyTokenAuth(
            http if http is not None else cast(HTTPRequester, self.stub),
            self.clock,
            AGENTSERVER_URL,
            Secret(INTERNAL_SECRET.encode()),
            **options,
        )

    def authenticator(self) -> ISDKAuthenticator:
        """
        The remote verifier.
        """
        return self.auth

    def valid_token(self, workspace_id: str) -> str:
        """
        A proxy token the fake agentserver knows.
        """
        token = f"ast_{workspace_id}_secret"
        self.agentserver.add_token(token, workspace_id)
        return token

    def settle(self) -> None:
        """
        Move the bytes between the verifier and the fake agentserver.
        """
        self.stub.flush()

    def test_request(self) -> None:
        """
        Item 74: the validation is C{POST <url>/internal/validate-proxy-token} with
        C{Content-Type: application/json}, C{X-Internal-Secret} and C{{"proxy_token":…}}; the identity
        carries the user agentserver names.
        """
        self.agentserver.add_token("ast_1_abc", "ws_1", "usr_9")
        identity = result_of(self, self.authenticate("ast_1_abc"))
        self.assertEqual(identity, SDKIdentity("ws_1", "usr_9"))
        [request] = self.agentserver.requests
        self.assertEqual(request.path, b"/internal/validate-proxy-token")
        self.assertEqual(request.secret, INTERNAL_SECRET.encode())
        self.assertEqual(request.content_type, b"application/json")
        self.assertEqual(request.body, b'{"proxy_token":"ast_1_abc"}')

    def test_sequential_cached(self) -> None:
        """
        Item 74: five sequential calls make one agentserver call.
        """
        token = self.valid_token("ws_1")
        for _ in range(5):
            self.assertEqual(result_of(self, self.authenticate(token)).workspace_id, "ws_1")
        self.assertEqual(len(self.agentserver.requests), 1)

    def test_concurrent_coalesced(self) -> None:
        """
        Item 74: five concurrent calls (all made before any answer) make one agentserver call and all
        get the identity.
        """
        token = self.valid_token("ws_1")
        self.agentserver.hang = True
        waiting = [self.auth.authenticate(token) for _ in range(5)]
        self.settle()
        self.assertEqual([d.called for d in waiting], [False] * 5)
        self.agentserver.release()
        self.settle()
        for d in waiting:
            self.assertEqual(result_of(self, d).workspace_id, "ws_1")
        self.assertEqual(len(self.agentserver.requests), 1)

    def test_positive_expiry(self) -> None:
        """
        Item 74: an identity is used for 5 min; at 5 min a new agentserver call is made.
        """
        token = self.valid_token("ws_1")
        result_of(self, self.authenticate(token))
        self.clock.advance(299.9)
        result_of(self, self.authenticate(token))
        self.assertEqual(len(self.agentserver.requests), 1)
        self.clock.advance(0.1)
        result_of(self, self.authenticate(token))
        self.assertEqual(len(self.agentserver.requests), 2)

    def test_rejected_cached(self) -> None:
        """
        Item 75: agentserver's 401 is C{sdk auth: token rejected by agentserver}; three calls within
        30 s make one agentserver call; at 30 s a new call is made.
        """
        for _ in range(3):
            self.assertEqual(
                error_of(self, self.authenticate("ast_unknown")),
                "sdk auth: token rejected by agentserver",
            )
            self.clock.advance(9)
        self.assertEqual(len(self.agentserver.requests), 1)
        self.clock.advance(3)
        error_of(self, self.authenticate("ast_unknown"))
        self.assertEqual(len(self.agentserver.requests), 2)

    def test_wrong_secret_rejected(self) -> None:
        """
        agentserver refusing the gateway's secret (401) is a rejection too.
        """
        auth = ProxyTokenAuth(
            cast(HTTPRequester, self.stub), self.clock, AGENTSERVER_URL, Secret(b"w" * 40)
        )
        token = self.valid_token("ws_1")
        d = auth.authenticate(token)
        self.settle()
        self.assertEqual(error_of(self, d), "sdk auth: token rejected by agentserver")

    def test_other_status_not_cached(self) -> None:
        """
        Item 75: agentserver's 500 is C{sdk auth: agentserver returned 500}, not cached; once it
        answers again, the token is validated.
        """
        token = self.valid_token("ws_1")
        self.agentserver.status = 500
        for _ in range(2):
            self.assertEqual(
                error_of(self, self.authenticate(token)), "sdk auth: agentserver returned 500"
            )
        self.assertEqual(len(self.agentserver.requests), 2)
        self.agentserver.status = None
        self.assertEqual(result_of(self, self.authenticate(token)).workspace_id, "ws_1")

    def test_unreachable_not_cached(self) -> None:
        """
        Item 75: a refused connection is C{sdk auth: agentserver unreachable: <detail>}, not cached.
        """
        refusing = RefusingHTTP()
        auth = self.make(cast(HTTPRequester, refusing))
        for _ in range(2):
            self.assertEqual(
                error_of(self, auth.authenticate("ast_1")),
                "sdk auth: agentserver unreachable: "
                "Connection was refused by other side: connection refused.",
            )
        self.assertEqual(refusing.calls, 2)

    def test_timeout(self) -> None:
        """
        An agentserver that does not answer within 5 s: every waiter fails with
        C{sdk auth: agentserver unreachable: timed out after 5s}; nothing is cached.
        """
        self.agentserver.hang = True
        token = self.valid_token("ws_1")
        waiting = [self.auth.authenticate(token) for _ in range(2)]
        self.settle()
        self.clock.advance(4.9)
        self.assertEqual([d.called for d in waiting], [False, False])
        self.clock.advance(0.1)
        for d in waiting:
            self.assertEqual(error_of(self, d), "sdk auth: agentserver unreachable: timed out after 5s")
        self.assertEqual(self.auth.cache_size(), 0)

    def test_decode_errors(self) -> None:
        """
        A 200 whose body is not an object with a non-empty string C{workspace_id} (and a string
        C{user_id} if any) is C{sdk auth: decode response: <detail>}, not cached.
        """
        token = self.valid_token("ws_1")
        bodies = {
            b"not json": "sdk auth: decode response: Expecting value: line 1 column 1 (char 0)",
            b"[]": "sdk auth: decode response: not a JSON object",
            b"{}": "sdk auth: decode response: workspace_id missing or empty",
            b'{"workspace_id":""}': "sdk auth: decode response: workspace_id missing or empty",
            b'{"workspace_id":5}': "sdk auth: decode response: workspace_id missing or empty",
            b'{"workspace_id":"w","user_id":5}': "sdk auth: decode response: user_id is not a string",
            b"\xff": "sdk auth: decode response: 'utf-8' codec can't decode byte 0xff in position 0: "
            "invalid start byte",
        }
        for body, text in bodies.items():
            self.agentserver.body = body
            self.assertEqual(error_of(self, self.authenticate(token)), text)
        self.assertEqual(len(self.agentserver.requests), len(bodies))
        self.assertEqual(self.auth.cache_size(), 0)

    def test_user_absent_or_null(self) -> None:
        """
        C{user_id} absent or C{null} is the user C{""}; other members are ignored.
        """
        for body in (b'{"workspace_id":"w"}', b'{"workspace_id":"w","user_id":null,"x":1}'):
            self.agentserver.body = body
            auth = self.make()
            d = auth.authenticate("t")
            self.settle()
            self.assertEqual(result_of(self, d), SDKIdentity("w", ""))

    def test_body_too_large(self) -> None:
        """
        A 200 body over 1 MiB is a decode error.
        """
        self.agentserver.body = b'{"workspace_id":"w","pad":"' + b"x" * (1 << 20) + b'"}'
        self.assertEqual(
            error_of(self, self.authenticate("t")),
            "sdk auth: decode response: response body exceeds 1048576 bytes",
        )

    def test_empty_no_request(self) -> None:
        """
        The empty token is C{sdk auth: empty token}, without a request.
        """
        self.assertEqual(error_of(self, self.authenticate("")), "sdk auth: empty token")
        self.assertEqual(self.agentserver.requests, [])

    def test_lru(self) -> None:
        """
        The cache holds C{capacity} entries and evicts the least recently used one.
        """
        auth = self.make(capacity=3)
        tokens = [self.valid_token(f"ws_{n}") for n in range(4)]

        def check(token: str) -> None:
            d = auth.authenticate(token)
            self.settle()
            result_of(self, d)

        for token in tokens[:3]:
            check(token)
        check(tokens[0])  # now the most recently used
        check(tokens[3])  # evicts tokens[1]
        self.assertEqual(auth.cache_size(), 3)
        before = len(self.agentserver.requests)
        check(tokens[0])
        check(tokens[2])
        check(tokens[3])
        self.assertEqual(len(self.agentserver.requests), before)
        check(tokens[1])
        self.assertEqual(len(self.agentserver.requests), before + 1)

    def test_cancelled_waiter(self) -> None:
        """
        A waiter that is cancelled fails with C{CancelledError}; the shared validation goes on, its
        answer reaches the other waiter and is cached.
        """
        token = self.valid_token("ws_1")
        self.agentserver.hang = True
        first = self.auth.authenticate(token)
        second = self.auth.authenticate(token)
        self.settle()
        first.cancel()
        self.failureResultOf(first, CancelledError)
        self.agentserver.release()
        self.settle()
        self.assertEqual(result_of(self, second).workspace_id, "ws_1")
        result_of(self, self.authenticate(token))
        self.assertEqual(len(self.agentserver.requests), 1)

    def test_token_bytes(self) -> None:
        """
        A token with characters JSON escapes, or bytes that are not UTF-8 (as the header parser hands
        them over), is sent byte for byte inside the JSON string.
        """
        for token in ('a"b\\c', "x\udcffy"):
            error_of(self, self.authenticate(token))
        bodies = [request.body for request in self.agentserver.requests]
        self.assertEqual(bodies, [b'{"proxy_token":"a\\"b\\\\c"}', b'{"proxy_token":"x\xffy"}'])
        self.assertEqual(json.loads(bodies[0])["proxy_token"], 'a"b\\c')

    def test_repr(self) -> None:
        """
        The verifier's C{repr} never shows the secret.
        """
        self.assertNotIn(INTERNAL_SECRET, repr(self.auth))


class FakeSDKAuthenticatorTests(AuthenticatorTestsMixin, SynchronousTestCase):
    """
    The fake authenticator answers like the remote verifier, from the fake agentserver's table.
    """

    def setUp(self) -> None:
        self.agentserver = FakeAgentServer(INTERNAL_SECRET.encode())
        self.auth = FakeSDKAuthenticator(self.agentserver)

    def authenticator(self) -> ISDKAuthenticator:
        """
        The fake.
        """
        return self.auth

    def valid_token(self, workspace_id: str) -> str:
        """
        A token of the fake agentserver's table.
        """
        token = f"ast_{workspace_id}"
        self.agentserver.add_token(token, workspace_id)
        return token

    def test_texts(self) -> None:
        """
        The remote verifier's texts: empty and rejected.
        """
        self.assertEqual(error_of(self, self.auth.authenticate("")), "sdk auth: empty token")
        self.assertEqual(
            error_of(self, self.auth.authenticate("nope")), "sdk auth: token rejected by agentserver"
        )
        self.assertEqual(self.auth.calls, ["", "nope"])


class MakeAuthenticatorTests(SynchronousTestCase):
    """
    The derived switch of §2: remote, else local, else none.
    """

    def test_remote(self) -> None:
        """
        C{CXG_AGENTSERVER_INTERNAL_URL} set → the remote verifier (even with the HMAC secret set).
        """
        config = load_config(
            {
                **BASE_ENV,
                "CXG_AGENTSERVER_INTERNAL_URL": AGENTSERVER_URL,
                "CXG_INBOUND_HMAC_SECRET": VECTOR_SECRET,
            }
        )
        made: list[object] = []

        def http(reactor: object) -> tuple[HTTPRequester, None]:
            made.append(reactor)
            return cast(HTTPRequester, RefusingHTTP()), None

        clock = Clock()
        auth = make_sdk_authenticator(config, clock, http=http)
        self.assertIsInstance(auth, ProxyTokenAuth)
        self.assertEqual(made, [clock])
        self.assertIn(AGENTSERVER_URL + "/internal/validate-proxy-token", repr(auth))

    def test_local(self) -> None:
        """
        Only C{CXG_INBOUND_HMAC_SECRET} set → the local verifier, accepting the vector.
        """
        config = load_config({**BASE_ENV, "CXG_INBOUND_HMAC_SECRET": VECTOR_SECRET})
        auth = make_sdk_authenticator(config, Clock())
        assert auth is not None
        self.assertIsInstance(auth, HMACTokenAuth)
        self.assertEqual(self.successResultOf(auth.authenticate(VECTOR_TOKEN)).workspace_id, "ws_1")

    def test_disabled(self) -> None:
        """
        Neither set → no authenticator (the surface is not mounted).
        """
        self.assertIsNone(make_sdk_authenticator(load_config(BASE_ENV), Clock()))
