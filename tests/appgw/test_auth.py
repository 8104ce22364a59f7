"""
Tests for L{codexgw.appgw.auth}: inbound authentication of C{app-gateway.md} §4 — an interface suite
run against both authenticators, HMAC token vectors and the workspace id rule (acceptance item 13),
the RemoteVerifier's exact requests, verdicts, errors, truncation and timeouts against an in-memory
agentserver (item 14), and the client metadata of §4.4.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from codexgw.appgw.auth import (
    SESSION_CLOSE_PATH,
    SESSION_OPEN_PATH,
    VERIFY_PATH,
    AuthCallError,
    ClientMeta,
    HMACAuthenticator,
    Identity,
    IInboundAuthenticator,
    ISessionTracker,
    RemoteVerifier,
    Unauthorized,
    client_metadata,
    make_authenticator,
    request_client_metadata,
)
from codexgw.appgw.config import load_config
from codexgw.config import Secret
from codexgw.tokens import mint_inbound_token
from tests.appgw.stubhttp import (
    Answer,
    Drop,
    Hang,
    LogCollector,
    Recorded,
    RefusingHTTP,
    Script,
    StubServer,
)

SECRET = Secret(b"i" * 32)
AGENT_SECRET = Secret(b"agentserver-internal-secret-0123456789")
BASE_URL = "http://agentserver:8080"

#: The tokens the fake agentserver knows: token → (user_id, workspace_id).
KNOWN = {"ast_1_good": ("u1", "ws_a"), "ast_2_dots": ("u2", "../x")}


def agentserver(recorded: Recorded) -> Script:
    """
    A fake agentserver: verify and session-open answer 200 for known tokens, 401 otherwise;
    session-close answers 204.
    """
    path = recorded.uri.decode()
    if path == SESSION_CLOSE_PATH:
        return Answer(204)
    body = json.loads(recorded.body)
    if body.get("token") not in KNOWN:
        return Answer(401, b"unknown token")
    user_id, workspace_id = KNOWN[body["token"]]
    answer: dict[str, str] = {"user_id": user_id, "workspace_id": workspace_id}
    if path == SESSION_OPEN_PATH:
        answer["session_id"] = "sess-" + user_id
    return Answer(200, json.dumps(answer).encode(), {b"Content-Type": b"application/json"})


class InboundAuthenticatorTestsMixin:
    """
    What every L{IInboundAuthenticator} does, whatever it checks tokens against.

    Cases provide L{authenticator}, L{valid_token} (for workspace C{ws_a}), L{valid_user},
    L{invalid_token} and L{unusable_token} (authentic, but for a workspace the §4.1 rule refuses),
    and L{settle} (lets in-memory I/O run).
    """

    authenticator: Any
    valid_token: str
    valid_user: str
    invalid_token: str
    unusable_token: str

    def settle(self) -> None:
        """
        Let pending in-memory I/O happen.
        """

    def verified(self, token: str) -> Deferred[Identity]:
        """
        Start verifying C{token} and let the I/O run.
        """
        d: Deferred[Identity] = self.authenticator.verify(token)
        self.settle()
        return d

    def test_provides_interface(self) -> None:
        """
        The authenticator provides L{IInboundAuthenticator}.
        """
        case: Any = self
        case.assertTrue(verifyObject(IInboundAuthenticator, self.authenticator))

    def test_valid(self) -> None:
        """
        A valid token verifies to its identity.
        """
        case: Any = self
        identity = case.successResultOf(self.verified(self.valid_token))
        case.assertEqual(identity, Identity(self.valid_user, "ws_a"))

    def test_invalid(self) -> None:
        """
        An invalid token fails with L{Unauthorized}.
        """
        case: Any = self
        case.failureResultOf(self.verified(self.invalid_token), Unauthorized)

    def test_empty(self) -> None:
        """
        An empty token fails with L{Unauthorized}.
        """
        case: Any = self
        case.failureResultOf(self.verified(""), Unauthorized)

    def test_unusable_workspace(self) -> None:
        """
        An identity whose workspace id breaks C{^[A-Za-z0-9_-]{1,128}$} is L{Unauthorized}.
        """
        case: Any = self
        case.failureResultOf(self.verified(self.unusable_token), Unauthorized)


class HMACInterfaceTests(InboundAuthenticatorTestsMixin, SynchronousTestCase):
    """
    L{HMACAuthenticator} passes the interface suite.
    """

    def setUp(self) -> None:
        """
        An authenticator and tokens minted with its secret.
        """
        self.authenticator = HMACAuthenticator(SECRET)
        self.valid_token = mint_inbound_token(SECRET, "ws_a", "cli")
        self.valid_user = ""
        self.invalid_token = mint_inbound_token(Secret(b"o" * 32), "ws_a", "cli")
        self.unusable_token = mint_inbound_token(SECRET, "a/b", "cli")


class RemoteInterfaceTests(InboundAuthenticatorTestsMixin, SynchronousTestCase):
    """
    L{RemoteVerifier} passes the interface suite against the fake agentserver.
    """

    def setUp(self) -> None:
        """
        A verifier over the in-memory agentserver.
        """
        self.server = StubServer(agentserver)
        self.authenticator = RemoteVerifier(self.server.http, Clock(), BASE_URL, AGENT_SECRET)
        self.valid_token = "ast_1_good"
        self.valid_user = "u1"
        self.invalid_token = "ast_9_bad"
        self.unusable_token = "ast_2_dots"

    def settle(self) -> None:
        """
        Flush the in-memory connection.
        """
        self.server.flush()

    def test_provides_session_tracker(self) -> None:
        """
        The RemoteVerifier also tracks sessions.
        """
        self.assertTrue(verifyObject(ISessionTracker, self.authenticator))


class HMACTests(SynchronousTestCase):
    """
    §4.2 vectors (acceptance item 13).
    """

    def setUp(self) -> None:
        """
        An authenticator.
        """
        self.auth = HMACAuthenticator(SECRET)

    def assert_unauthorized(self, token: str) -> None:
        """
        C{token} fails with L{Unauthorized}.
        """
        self.failureResultOf(self.auth.verify(token), Unauthorized)

    def test_vector(self) -> None:
        """
        A token built by hand — lowercase hex HMAC-SHA256 of C{workspace ‖ 0x00 ‖ label} — verifies
        to C{(user "", workspace)}.
        """
        sig = hmac.new(b"i" * 32, b"ws_a\x00laptop", hashlib.sha256).hexdigest()
        identity = self.successResultOf(self.auth.verify(f"ws_a.laptop.{sig}"))
        self.assertEqual(identity, Identity("", "ws_a"))

    def test_round_trip(self) -> None:
        """
        Minted tokens verify to their workspace, whatever the label; the longest usable id works.
        """
        for workspace in ("ws_a", "A-b_9", "w" * 128):
            for label in ("cli", "any label with spaces", "é"):
                with self.subTest(workspace=workspace, label=label):
                    token = mint_inbound_token(SECRET, workspace, label)
                    self.assertEqual(
                        self.successResultOf(self.auth.verify(token)), Identity("", workspace)
                    )

    def test_altered(self) -> None:
        """
        An altered signature, label or workspace; uppercase hex; 2 or 4 parts; an empty part →
        unauthorized.
        """
        token = mint_inbound_token(SECRET, "ws_a", "cli")
        workspace, label, sig = token.split(".")
        flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        for bad in (
            f"{workspace}.{label}.{flipped}", f"{workspace}.cli2.{sig}", f"ws_b.{label}.{sig}",
            f"{workspace}.{label}.{sig.upper()}", f"{workspace}.{sig}", f"{token}.x",
            f"{workspace}..{sig}", f".{label}.{sig}", f"{workspace}.{label}.", token + " ",
            "", "...",
        ):  # fmt: skip
            with self.subTest(bad=bad):
                self.assert_unauthorized(bad)

    def test_workspace_rule(self) -> None:
        """
        Authentic tokens for unusable workspace ids (C{/}, space, 129 characters, non-ASCII) are
        unauthorized; C{../x} cannot even form three parts.
        """
        for workspace in ("a/b", "a b", "w" * 129, "é"):
            with self.subTest(workspace=workspace):
                self.assert_unauthorized(mint_inbound_token(SECRET, workspace, "cli"))
        self.assert_unauthorized("../x.cli.00")


class RemoteVerifierCase(SynchronousTestCase):
    """
    A RemoteVerifier over an in-memory agentserver scripted per test.
    """

    def setUp(self) -> None:
        """
        A clock and a log collector.
        """
        self.clock = Clock()
        self.logs = LogCollector()

    def verifier(self, script: Any) -> tuple[RemoteVerifier, StubServer]:
        """
        A verifier whose agentserver follows C{script}.
        """
        server = StubServer(script)
        verifier = RemoteVerifier(server.http, self.clock, BASE_URL, AGENT_SECRET, log=self.logs.log)
        return verifier, server

    def assert_common_request(self, recorded: Recorded, path: str) -> None:
        """
        A POST to C{path} with exactly JSON content type and the internal secret, and no C{Origin}.
        """
        self.assertEqual(recorded.method, b"POST")
        self.assertEqual(recorded.uri, path.encode())
        self.assertEqual(recorded.header(b"Content-Type"), [b"application/json"])
        self.assertEqual(recorded.header(b"X-Internal-Secret"), [AGENT_SECRET.value])
        self.assertIsNone(recorded.header(b"Origin"))
        self.assertIsNone(recorded.header(b"Authorization"))


class VerifyTests(RemoteVerifierCase):
    """
    The verify call.
    """

    def test_request(self) -> None:
        """
        C{POST <base>/api/internal/codex/tokens/verify} with C{{"token":"<bearer>"}} exactly.
        """
        verifier, server = self.verifier(agentserver)
        d = verifier.verify("ast_1_good")
        server.flush()
        self.assertEqual(self.successResultOf(d), Identity("u1", "ws_a"))
        recorded = server.only_request()
        self.assert_common_request(recorded, VERIFY_PATH)
        self.assertEqual(recorded.body, b'{"token":"ast_1_good"}')

    def test_unauthorized(self) -> None:
        """
        401 → L{Unauthorized}.
        """
        verifier, server = self.verifier(Answer(401, b"no"))
        d = verifier.verify("ast_x")
        server.flush()
        self.failureResultOf(d, Unauthorized)

    def test_other_status(self) -> None:
        """
        Another status → C{verify call: status=<n> body=<body>}.
        """
        for status in (500, 403, 202, 302, 404):
            with self.subTest(status=status):
                verifier, server = self.verifier(Answer(status, b"boom"))
                d = verifier.verify("ast_x")
                server.flush()
                failure = self.failureResultOf(d, AuthCallError)
                self.assertEqual(str(failure.value), f"verify call: status={status} body=boom")

    def test_error_body_truncated(self) -> None:
        """
        Only the first KiB of an error body is quoted.
        """
        body = b"a" * 1000 + b"b" * 24 + b"c" * 3000
        verifier, server = self.verifier(Answer(500, body))
        d = verifier.verify("ast_x")
        server.flush()
        failure = self.failureResultOf(d, AuthCallError)
        self.assertEqual(str(failure.value), "verify call: status=500 body=" + "a" * 1000 + "b" * 24)

    def test_unusable_workspace(self) -> None:
        """
        An answer naming C{../x} (or no workspace, or an empty one) → L{Unauthorized}.
        """
        for answer in (
            {"user_id": "u", "workspace_id": "../x"}, {"user_id": "u"},
            {"user_id": "u", "workspace_id": ""}, {"workspace_id": "w" * 129},
        ):  # fmt: skip
            with self.subTest(answer=answer):
                verifier, server = self.verifier(Answer(200, json.dumps(answer).encode()))
                d = verifier.verify("ast_x")
                server.flush()
                self.failureResultOf(d, Unauthorized)

    def test_missing_user(self) -> None:
        """
        A missing or C{null} user id is C{""}.
        """
        for body in (b'{"workspace_id":"ws"}', b'{"workspace_id":"ws","user_id":null}'):
            with self.subTest(body=body):
                verifier, server = self.verifier(Answer(200, body))
                d = verifier.verify("ast_x")
                server.flush()
                self.assertEqual(self.successResultOf(d), Identity("", "ws"))

    def test_undecodable_answer(self) -> None:
        """
        A 200 that is not a JSON object with string fields → C{verify call: decode: …}.
        """
        for body, detail in (
            (b"not json", "Expecting value: line 1 column 1 (char 0)"),
            (b"[]", "not a JSON object"),
            (b'{"workspace_id":7}', "workspace_id is not a string"),
            (b'{"workspace_id":"ws","user_id":[]}', "user_id is not a string"),
            (b"\xff", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        ):
            with self.subTest(body=body):
                verifier, server = self.verifier(Answer(200, body))
                d = verifier.verify("ast_x")
                server.flush()
                failure = self.failureResultOf(d, AuthCallError)
                self.assertEqual(str(failure.value), f"verify call: decode: {detail}")

    def test_oversized_answer(self) -> None:
        """
        A 200 body over 1 MiB is an error.
        """
        verifier, server = self.verifier(Answer(200, b" " * ((1 << 20) + 1)))
        d = verifier.verify("ast_x")
        server.flush()
        failure = self.failureResultOf(d, AuthCallError)
        self.assertEqual(str(failure.value), "verify call: response body exceeds 1048576 bytes")

    def test_timeout(self) -> None:
        """
        No answer within 5 s (before or after the headers) → C{verify call: timed out after 5s}.
        """
        for script in (Hang(), Hang(b"{")):
            with self.subTest(script=script):
                verifier, server = self.verifier(script)
                d = verifier.verify("ast_x")
                server.flush()
                self.clock.advance(4.75)
                self.assertNoResult(d)
                self.clock.advance(0.25)
                failure = self.failureResultOf(d, AuthCallError)
                self.assertEqual(str(failure.value), "verify call: timed out after 5s")
                self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_network_failure(self) -> None:
        """
        A refused or dropped connection → C{verify call: <reason>}.
        """
        refusing = RefusingHTTP()
        verifier = RemoteVerifier(refusing.http, self.clock, BASE_URL, AGENT_SECRET)
        failure = self.failureResultOf(verifier.verify("ast_x"), AuthCallError)
        self.assertEqual(
            str(failure.value),
            "verify call: Connection was refused by other side: connection refused.",
        )
        verifier, server = self.verifier(Drop())
        d = verifier.verify("ast_x")
        server.flush()
        failure = self.failureResultOf(d, AuthCallError)
        self.assertTrue(str(failure.value).startswith("verify call: "), failure.value)

    def test_no_call_for_empty_or_undecodable_token(self) -> None:
        """
        An empty token, or one with an undecodable byte, is unauthorized without a call.
        """
        refusing = RefusingHTTP()
        verifier = RemoteVerifier(refusing.http, self.clock, BASE_URL, AGENT_SECRET)
        for token in ("", "ast_\udcff"):
            self.failureResultOf(verifier.verify(token), Unauthorized)
            self.failureResultOf(verifier.open_session(token, ClientMeta()), Unauthorized)
        self.assertEqual(refusing.calls, 0)

    def test_caller_cancels(self) -> None:
        """
        Cancelling a pending verify fails it with C{CancelledError} and leaves no timer behind.
        """
        verifier, server = self.verifier(Hang())
        d = verifier.verify("ast_x")
        server.flush()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SessionTests(RemoteVerifierCase):
    """
    Session-open and session-close.
    """

    def test_open(self) -> None:
        """
        Session-open posts the token and the metadata in the order of §4.3 and returns the identity
        and session id.
        """
        verifier, server = self.verifier(agentserver)
        meta = ClientMeta("203.0.113.7", "codex_cli_rs/0.169.0 (Darwin 24.4.0; arm64)", "0.169.0",
                          "Darwin")  # fmt: skip
        d = verifier.open_session("ast_1_good", meta)
        server.flush()
        self.assertEqual(self.successResultOf(d), (Identity("u1", "ws_a"), "sess-u1"))
        recorded = server.only_request()
        self.assert_common_request(recorded, SESSION_OPEN_PATH)
        self.assertEqual(
            recorded.body,
            b'{"token":"ast_1_good","client_ip":"203.0.113.7",'
            b'"client_ua":"codex_cli_rs/0.169.0 (Darwin 24.4.0; arm64)",'
            b'"codex_version":"0.169.0","os":"Darwin"}',
        )

    def test_open_empty_metadata(self) -> None:
        """
        Empty metadata is sent as empty strings; a missing session id is C{""}.
        """
        verifier, server = self.verifier(Answer(200, b'{"user_id":"u","workspace_id":"ws"}'))
        d = verifier.open_session("ast_x", ClientMeta())
        server.flush()
        self.assertEqual(self.successResultOf(d), (Identity("u", "ws"), ""))
        self.assertEqual(
            server.only_request().body,
            b'{"token":"ast_x","client_ip":"","client_ua":"","codex_version":"","os":""}',
        )

    def test_open_failures(self) -> None:
        """
        401 → L{Unauthorized}; another status → C{session-open call: status=<n> body=<…>}; a
        non-string session id → decode error; an unusable workspace → L{Unauthorized}.
        """
        verifier, server = self.verifier(Answer(401))
        d = verifier.open_session("ast_x", ClientMeta())
        server.flush()
        self.failureResultOf(d, Unauthorized)
        verifier, server = self.verifier(Answer(503, b"down"))
        d = verifier.open_session("ast_x", ClientMeta())
        server.flush()
        self.assertEqual(
            str(self.failureResultOf(d, AuthCallError).value),
            "session-open call: status=503 body=down",
        )
        verifier, server = self.verifier(Answer(200, b'{"workspace_id":"ws","session_id":1}'))
        d = verifier.open_session("ast_x", ClientMeta())
        server.flush()
        self.assertEqual(
            str(self.failureResultOf(d, AuthCallError).value),
            "session-open call: decode: session_id is not a string",
        )
        verifier, server = self.verifier(Answer(200, b'{"workspace_id":"../x","session_id":"s"}'))
        d = verifier.open_session("ast_x", ClientMeta())
        server.flush()
        self.failureResultOf(d, Unauthorized)

    def test_open_timeout(self) -> None:
        """
        Session-open gives up after 5 s.
        """
        verifier, server = self.verifier(Hang())
        d = verifier.open_session("ast_x", ClientMeta())
        server.flush()
        self.clock.advance(5)
        self.assertEqual(
            str(self.failureResultOf(d, AuthCallError).value), "session-open call: timed out after 5s"
        )

    def test_close(self) -> None:
        """
        Session-close posts C{{"session_id"}}; 200 and 204 are success, silently.
        """
        for status in (200, 204):
            with self.subTest(status=status):
                verifier, server = self.verifier(Answer(status))
                d = verifier.close_session("sess-1")
                server.flush()
                self.assertIsNone(self.successResultOf(d))
                recorded = server.only_request()
                self.assert_common_request(recorded, SESSION_CLOSE_PATH)
                self.assertEqual(recorded.body, b'{"session_id":"sess-1"}')
        self.assertEqual(self.logs.events, [])

    def test_close_empty(self) -> None:
        """
        An empty session id is a no-op: no call.
        """
        refusing = RefusingHTTP()
        verifier = RemoteVerifier(refusing.http, self.clock, BASE_URL, AGENT_SECRET)
        self.assertIsNone(self.successResultOf(verifier.close_session("")))
        self.assertEqual(refusing.calls, 0)

    def test_close_failures_logged(self) -> None:
        """
        Another status, a network failure or a timeout is logged at warning (without the session
        id) and the Deferred still fires with C{None}.
        """
        verifier, server = self.verifier(Answer(500, b"oops"))
        d = verifier.close_session("sess-secretish")
        server.flush()
        self.assertIsNone(self.successResultOf(d))
        refusing = RefusingHTTP()
        verifier2 = RemoteVerifier(refusing.http, self.clock, BASE_URL, AGENT_SECRET, log=self.logs.log)
        self.assertIsNone(self.successResultOf(verifier2.close_session("sess-secretish")))
        verifier3, server3 = self.verifier(Hang())
        d3 = verifier3.close_session("sess-secretish")
        server3.flush()
        self.clock.advance(10)
        self.assertIsNone(self.successResultOf(d3))
        self.assertEqual(self.logs.levels(), ["warn"] * 3)
        messages = self.logs.messages()
        self.assertEqual(messages[0], "session-close call failed: status=500 body=oops")
        self.assertEqual(
            messages[1],
            "session-close call failed: Connection was refused by other side: connection refused.",
        )
        self.assertEqual(messages[2], "session-close call failed: timed out after 5s")
        for message in messages:
            self.assertNotIn("sess-secretish", message)

    def test_close_hanging_bounded(self) -> None:
        """
        A 10 s-hanging session-close is over after 5 s.
        """
        verifier, server = self.verifier(Hang())
        d = verifier.close_session("s")
        server.flush()
        self.clock.advance(4.75)
        self.assertNoResult(d)
        self.clock.advance(0.25)
        self.assertIsNone(self.successResultOf(d))


class ClientMetadataTests(SynchronousTestCase):
    """
    §4.4.
    """

    def meta(self, peer: str = "192.0.2.1", **fields: str) -> ClientMeta:
        """
        L{client_metadata} of headers C{name=value} (C{_} in names becomes C{-}).
        """
        headers = Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in fields.items()})
        return client_metadata(headers, peer)

    def test_example(self) -> None:
        """
        The spec's example: C{codex_cli_rs/0.169.0 (Darwin 24.4.0; arm64)} → C{0.169.0}, C{Darwin}.
        """
        ua = "codex_cli_rs/0.169.0 (Darwin 24.4.0; arm64)"
        self.assertEqual(self.meta(User_Agent=ua), ClientMeta("192.0.2.1", ua, "0.169.0", "Darwin"))

    def test_client_ip(self) -> None:
        """
        The first non-empty X-Forwarded-For element (trimmed), else trimmed X-Real-IP, else the
        peer.
        """
        for fields, expected in (
            ({"X_Forwarded_For": "203.0.113.7, 10.0.0.1"}, "203.0.113.7"),
            ({"X_Forwarded_For": " , , 203.0.113.8 ,10.0.0.1"}, "203.0.113.8"),
            ({"X_Forwarded_For": " , ", "X_Real_IP": " 198.51.100.2 "}, "198.51.100.2"),
            ({"X_Forwarded_For": "a", "X_Real_IP": "b"}, "a"),
            ({"X_Real_IP": "2001:db8::1"}, "2001:db8::1"),
            ({"X_Real_IP": "  "}, "192.0.2.1"),
            ({}, "192.0.2.1"),
        ):
            with self.subTest(fields=fields):
                self.assertEqual(self.meta(**fields).client_ip, expected)

    def test_first_header_value(self) -> None:
        """
        With a header given twice, its first value counts.
        """
        headers = Headers({b"X-Forwarded-For": [b"1.1.1.1", b"2.2.2.2"], b"User-Agent": [b"a", b"b"]})
        meta = client_metadata(headers, "::1")
        self.assertEqual((meta.client_ip, meta.client_ua), ("1.1.1.1", "a"))

    def test_user_agents(self) -> None:
        """
        The version and OS patterns on several user agents.
        """
        for ua, version, os_name in (
            ("codex_cli_rs/0.169.0 (Darwin 24.4.0; arm64)", "0.169.0", "Darwin"),
            ("Codex_CLI / 0.1.0-beta+x (Linux 6.1)", "0.1.0-beta+x", "Linux"),
            ("codex/1.2.3 (  Windows_NT 10; x64)", "1.2.3", "Windows_NT"),
            ("CODEX_CLI_RS/7", "7", ""),
            ("mycodex/1.0 (Linux)", "", "Linux"),
            ("codex_cli_rs/abc (24.4)", "", ""),
            ("codex_cli_rs/0.169.0é (Darwin)", "0.169.0", "Darwin"),
            ("curl/8.0", "", ""),
            ("", "", ""),
        ):
            with self.subTest(ua=ua):
                meta = self.meta(User_Agent=ua)
                self.assertEqual((meta.client_ua, meta.codex_version, meta.os), (ua, version, os_name))

    def test_request(self) -> None:
        """
        L{request_client_metadata} reads a web request's headers and client address.
        """
        for address, host in (
            (IPv4Address("TCP", "192.0.2.9", 1), "192.0.2.9"),
            (IPv6Address("TCP", "2001:db8::9", 1), "2001:db8::9"),
        ):
            request: Any = DummyRequest([b""])
            request.client = address
            request.requestHeaders.setRawHeaders(b"User-Agent", [b"codex/0.169.0 (Linux)"])
            self.assertEqual(
                request_client_metadata(request),
                ClientMeta(host, "codex/0.169.0 (Linux)", "0.169.0", "Linux"),
            )


class SelectionTests(SynchronousTestCase):
    """
    L{make_authenticator} follows C{CXG_AGENTSERVER_INTERNAL_URL}.
    """

    environ: ClassVar[dict[str, str]] = {
        "CXG_CODEX_BIN": sys.executable,
        "CXG_ENV_MCP_COMMAND": sys.executable,
        "CXG_EXEC_GATEWAY_URL": "ws://gw",
        "CXG_EXEC_GATEWAY_INTERNAL_URL": "http://gw",
        "CXG_EXEC_GATEWAY_INTERNAL_SECRET": "e" * 32,
        "CXG_CAPTOKEN_HMAC_SECRET": "c" * 32,
        "CXG_INBOUND_HMAC_SECRET": "i" * 32,
    }

    def test_hmac(self) -> None:
        """
        Unset: the HMAC authenticator with C{CXG_INBOUND_HMAC_SECRET}.
        """
        config = load_config(self.environ)
        auth = make_authenticator(config, RefusingHTTP().http, Clock())
        self.assertIsInstance(auth, HMACAuthenticator)
        token = mint_inbound_token(SECRET, "ws_a", "cli")
        self.assertEqual(self.successResultOf(auth.verify(token)), Identity("", "ws_a"))

    def test_remote(self) -> None:
        """
        Set: the RemoteVerifier, calling that URL with C{CXG_AGENTSERVER_INTERNAL_SECRET}.
        """
        config = load_config(
            {
                **self.environ,
                "CXG_AGENTSERVER_INTERNAL_URL": "http://agentserver:8080/",
                "CXG_AGENTSERVER_INTERNAL_SECRET": AGENT_SECRET.value.decode(),
            }
        )
        server = StubServer(agentserver)
        auth = make_authenticator(config, server.http, Clock())
        self.assertIsInstance(auth, RemoteVerifier)
        d = auth.verify("ast_1_good")
        server.flush()
        self.assertEqual(self.successResultOf(d), Identity("u1", "ws_a"))
        self.assertEqual(server.only_request().header(b"X-Internal-Secret"), [AGENT_SECRET.value])


class ClientMetadataPropertyTests(SynchronousTestCase):
    """
    Client metadata is computed from any header bytes without an error.
    """

    @given(
        st.dictionaries(
            st.sampled_from([b"X-Forwarded-For", b"X-Real-IP", b"User-Agent"]),
            st.lists(st.binary(max_size=80), min_size=1, max_size=2),
        ),
        st.text(max_size=40),
    )
    @settings(max_examples=200)
    def test_any_headers(self, fields: dict[bytes, list[bytes]], peer: str) -> None:
        """
        The result's fields are strings; the version and OS are empty or start as the patterns say.
        """
        meta = client_metadata(Headers(fields), peer)
        self.assertTrue(meta.codex_version == "" or meta.codex_version[0].isdigit())
        self.assertTrue(meta.os == "" or (meta.os[0].isascii() and meta.os[0].isalpha()))
        self.assertIn(meta.os, meta.client_ua)
        self.assertIn(meta.codex_version, meta.client_ua)
