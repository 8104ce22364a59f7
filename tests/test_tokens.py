"""
Tests for L{codexgw.tokens}: the spec's test vectors, every error case, and properties.
"""

from __future__ import annotations

import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from codexgw.config import Secret
from codexgw.tokens import (
    BadSignature,
    CapClaims,
    Expired,
    InboundIdentity,
    IUsedTickets,
    Malformed,
    TicketRejected,
    UsedTickets,
    b64url_decode,
    b64url_encode,
    mint_cap_token,
    mint_inbound_token,
    mint_ws_ticket,
    verify_cap_token,
    verify_inbound_token,
    verify_ws_ticket,
)

CAP_SECRET = Secret(b"0123456789abcdef0123456789abcdef")
OTHER_SECRET = Secret(b"fedcba9876543210fedcba9876543210")
CAP_VECTOR = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkNYRyJ9"
    ".eyJ0dXJuX2lkIjoidHJuX3Rlc3QiLCJ3b3Jrc3BhY2VfaWQiOiJ3c18xIiwiaWF0IjoxNzc5MTQ4ODAwLCJleHAiOjE3NzkyMzUyMDB9"
    "._k5JU5DpibkCmCFE6tcuW8MyvTAxuJHMPI9mqv9HG14"
)
TICKET_SECRET = Secret(b"internal-shared-secret-0123456789abcdef")
TICKET_EXE = "exe_11111111-2222-4333-8444-555555555555"
TICKET_VECTOR = f"{TICKET_EXE}.1779149100.fwAzMjWm7vyTJS_l7oiTcNSvKfiDOhkPonVwr704FGo"
INBOUND_SECRET = Secret(b"inbound-hmac-secret-0123456789abcdef")
INBOUND_VECTOR = "ws_1.thr_1.14f80fbc41c70149340d984b5d068cbbd8fca09b20a4780aae3c43577ca8734a"

ids = st.text(min_size=1, max_size=40)
token_chars = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=!")


def signed(payload: bytes, header: bytes = b'{"alg":"HS256","typ":"CXG"}') -> str:
    """
    Build a cap token over arbitrary header and payload bytes, correctly signed with L{CAP_SECRET}.
    """
    text = f"{b64url_encode(header)}.{b64url_encode(payload)}"
    sig = hmac.new(CAP_SECRET.value, text.encode(), hashlib.sha256).digest()
    return f"{text}.{b64url_encode(sig)}"


class Base64URLTests(SynchronousTestCase):
    """
    Strict unpadded base64url (C{exec-gateway.md} §6).
    """

    def test_roundTrip(self) -> None:
        """
        Encoding is unpadded and decodes back.
        """
        for data in (b"", b"a", b"ab", b"abc", b"\xff\xfe\xfd\xfc"):
            text = b64url_encode(data)
            self.assertNotIn("=", text)
            self.assertEqual(b64url_decode(text), data)

    def test_rejects(self) -> None:
        """
        Padding, foreign characters, a length of 1 mod 4 and non-canonical trailing bits all fail.
        """
        for bad in ("YQ==", "YQ=", "a+b/", "abcde", "!!!!", "YR", "é"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                b64url_decode(bad)


class CapTokenTests(SynchronousTestCase):
    """
    Capability tokens (C{exec-gateway.md} §6.1, acceptance items 9–11).
    """

    def test_mintMatchesVector(self) -> None:
        """
        Minting the vector's claims reproduces the vector byte for byte.
        """
        self.assertEqual(
            mint_cap_token(CAP_SECRET, "trn_test", "ws_1", 1779148800, 1779235200), CAP_VECTOR
        )

    def test_vectorVerifiesUntilExp(self) -> None:
        """
        The vector is valid at C{now == exp} and expired one second later.
        """
        self.assertEqual(
            verify_cap_token(CAP_SECRET, CAP_VECTOR, 1779235200),
            CapClaims(turn_id="trn_test", workspace_id="ws_1", exp=1779235200),
        )
        self.assertRaises(Expired, verify_cap_token, CAP_SECRET, CAP_VECTOR, 1779235201)

    def test_otherSecret(self) -> None:
        """
        The vector does not verify with another secret.
        """
        self.assertRaises(BadSignature, verify_cap_token, OTHER_SECRET, CAP_VECTOR, 1779148800)

    def test_malformedShapes(self) -> None:
        """
        Wrong part counts, empty parts, undecodable parts and a padded header are Malformed.
        """
        header, payload, sig = CAP_VECTOR.split(".")
        for bad in (
            "",
            "a.b",
            "a.b.c.d",
            "!.!.!",
            "..",
            f"{header}=.{payload}.{sig}",
            f".{payload}.{sig}",
        ):
            with self.subTest(bad=bad):
                self.assertRaises(Malformed, verify_cap_token, CAP_SECRET, bad, 0)

    def test_headerMustBeHS256CXG(self) -> None:
        """
        A header with another C{alg} or C{typ}, or that is not an object, is Malformed even when the
        signature is right.
        """
        for header in (b'{"alg":"none","typ":"CXG"}', b'{"alg":"HS256","typ":"JWT"}', b"[]", b"nope"):
            with self.subTest(header=header):
                token = signed(b'{"exp":99}', header)
                self.assertRaises(Malformed, verify_cap_token, CAP_SECRET, token, 0)

    def test_headerKeyOrderAndExtraKeysIrrelevant(self) -> None:
        """
        Header key order and extra header keys do not matter.
        """
        token = signed(
            b'{"workspace_id":"w","turn_id":"t","exp":5}', b'{"typ":"CXG","x":1,"alg":"HS256"}'
        )
        self.assertEqual(verify_cap_token(CAP_SECRET, token, 5), CapClaims("t", "w", 5))

    def test_payloadTypes(self) -> None:
        """
        A validly signed payload with wrong types is Malformed; absent fields take their defaults;
        extra keys are ignored.
        """
        for payload in (b'{"exp":"x"}', b'{"exp":true}', b'{"exp":1.5}', b'{"turn_id":1}',
                        b'{"workspace_id":null}', b"[1]", b"not json", b'{"exp":1e999}',
                        b'{"exp":99999999999999999999}', b"\xff"):  # fmt: skip
            with self.subTest(payload=payload):
                self.assertRaises(Malformed, verify_cap_token, CAP_SECRET, signed(payload), 0)
        self.assertEqual(verify_cap_token(CAP_SECRET, signed(b'{"extra":[1]}'), 0), CapClaims("", "", 0))

    def test_alteredPayloadIsBadSignature(self) -> None:
        """
        A payload changed after signing fails on the signature, before it is ever decoded.
        """
        header, _, sig = CAP_VECTOR.split(".")
        altered = b64url_encode(b'{"turn_id":"trn_test","workspace_id":"ws_2","exp":9999999999}')
        self.assertRaises(BadSignature, verify_cap_token, CAP_SECRET, f"{header}.{altered}.{sig}", 0)
        garbage = b64url_encode(b"\x00not json")
        self.assertRaises(BadSignature, verify_cap_token, CAP_SECRET, f"{header}.{garbage}.{sig}", 0)

    def test_mintRefusesEmptyIds(self) -> None:
        """
        Minting with an empty turn id or workspace id fails with the spec's message.
        """
        for turn, ws in (("", "ws"), ("t", "")):
            with self.subTest(turn=turn, ws=ws):
                e = self.assertRaises(ValueError, mint_cap_token, CAP_SECRET, turn, ws, 0, 1)
                self.assertEqual(str(e), "captoken: turnID/workspaceID required")

    def test_payloadKeyOrder(self) -> None:
        """
        The minted payload is compact JSON with keys in the spec's order.
        """
        token = mint_cap_token(CAP_SECRET, "t", "w", 1, 2)
        self.assertEqual(
            b64url_decode(token.split(".")[1]), b'{"turn_id":"t","workspace_id":"w","iat":1,"exp":2}'
        )

    @given(turn_id=ids, workspace_id=ids, iat=st.integers(0, 2**40), ttl=st.integers(0, 2**20))
    def test_roundTrip(self, turn_id: str, workspace_id: str, iat: int, ttl: int) -> None:
        """
        Any unicode ids mint a token that verifies to the same claims until its expiry.
        """
        token = mint_cap_token(CAP_SECRET, turn_id, workspace_id, iat, iat + ttl)
        self.assertEqual(
            verify_cap_token(CAP_SECRET, token, iat + ttl), CapClaims(turn_id, workspace_id, iat + ttl)
        )

    @given(data=st.data(), turn_id=ids, workspace_id=ids)
    def test_singleCharacterChangeNeverVerifies(
        self, data: st.DataObject, turn_id: str, workspace_id: str
    ) -> None:
        """
        Replacing any one character of a token by any other makes verification fail.
        """
        token = mint_cap_token(CAP_SECRET, turn_id, workspace_id, 0, 10)
        index = data.draw(st.integers(0, len(token) - 1))
        char = data.draw(token_chars.filter(lambda c: c != token[index]))
        changed = token[:index] + char + token[index + 1 :]
        self.assertRaises((Malformed, BadSignature), verify_cap_token, CAP_SECRET, changed, 0)


class WsTicketTests(SynchronousTestCase):
    """
    WebSocket tickets (C{exec-gateway.md} §6.2, acceptance item 12).
    """

    def test_mintMatchesVector(self) -> None:
        """
        Minting the vector's exe id and expiry reproduces the vector.
        """
        self.assertEqual(mint_ws_ticket(TICKET_SECRET, TICKET_EXE, 1779149100), TICKET_VECTOR)

    def test_vectorSingleUse(self) -> None:
        """
        The vector verifies once before its expiry; the second use is a replay.
        """
        used = UsedTickets()
        verify_ws_ticket(TICKET_SECRET, TICKET_VECTOR, TICKET_EXE, 1779149099, used)
        e = self.assertRaises(
            TicketRejected, verify_ws_ticket, TICKET_SECRET, TICKET_VECTOR, TICKET_EXE, 1779149099, used
        )
        self.assertEqual(e.reason, "ticket_replayed")

    def test_expiredAtExp(self) -> None:
        """
        A ticket is expired at C{now == exp}, before the used set is consulted.
        """
        used = UsedTickets()
        e = self.assertRaises(
            TicketRejected, verify_ws_ticket, TICKET_SECRET, TICKET_VECTOR, TICKET_EXE, 1779149100, used
        )
        self.assertEqual(e.reason, "ticket_expired")
        self.assertEqual(len(used), 0)

    def test_rejected(self) -> None:
        """
        A wrong path exe id, 2 or 4 parts, a non-digit expiry, a bad signature and another secret are
        all rejected as C{bad_ticket}, and consume nothing.
        """
        exe, exp, sig = TICKET_VECTOR.split(".")
        cases = [
            (TICKET_VECTOR, "exe_other"),
            (f"{exe}.{exp}", exe),
            (f"{exe}.{exp}.{sig}.x", exe),
            (f"{exe}.12a.{sig}", exe),
            (f"{exe}.{'9' * 30}.{sig}", exe),
            (f"{exe}.{exp}.{sig[:-1]}A", exe),
            (f"{exe}.{exp}.{sig}=", exe),
            (f"{exe}.1779149101.{sig}", exe),
        ]
        used = UsedTickets()
        for ticket, path_exe in cases:
            with self.subTest(ticket=ticket, path_exe=path_exe):
                e = self.assertRaises(
                    TicketRejected, verify_ws_ticket, TICKET_SECRET, ticket, path_exe, 1779149000, used
                )
                self.assertEqual(e.reason, "bad_ticket")
        e = self.assertRaises(
            TicketRejected, verify_ws_ticket, CAP_SECRET, TICKET_VECTOR, TICKET_EXE, 1779149000, used
        )
        self.assertEqual(e.reason, "bad_ticket")
        self.assertEqual(len(used), 0)

    def test_mintRefusesDottedExeId(self) -> None:
        """
        Exe ids containing C{.} (or empty ones) cannot be minted: they would be ambiguous.
        """
        for exe in ("a.b", "", "."):
            with self.subTest(exe=exe):
                self.assertRaises(ValueError, mint_ws_ticket, TICKET_SECRET, exe, 10)

    def test_prune(self) -> None:
        """
        The used set forgets signatures at their expiry, not before.
        """
        used = UsedTickets()
        verifyObject(IUsedTickets, used)
        self.assertTrue(used.claim(b"a", 10))
        self.assertTrue(used.claim(b"b", 20))
        self.assertFalse(used.claim(b"a", 10))
        self.assertEqual(used.prune(9), 0)
        self.assertEqual(used.prune(10), 1)
        self.assertEqual(len(used), 1)
        self.assertTrue(used.claim(b"a", 30))

    @given(
        exe=st.text(min_size=1, max_size=60).filter(lambda s: "." not in s), exp=st.integers(1, 2**40)
    )
    def test_roundTrip(self, exe: str, exp: int) -> None:
        """
        Any exe id without C{.} mints a ticket valid strictly before its expiry, exactly once.
        """
        used = UsedTickets()
        ticket = mint_ws_ticket(TICKET_SECRET, exe, exp)
        verify_ws_ticket(TICKET_SECRET, ticket, exe, exp - 1, used)
        self.assertRaises(TicketRejected, verify_ws_ticket, TICKET_SECRET, ticket, exe, exp - 1, used)


class InboundTokenTests(SynchronousTestCase):
    """
    Inbound HMAC tokens (C{exec-gateway.md} §6.3, C{app-gateway.md} §4.2, acceptance item 13).
    """

    def test_vector(self) -> None:
        """
        The vector mints and verifies to workspace C{ws_1} with an empty user.
        """
        self.assertEqual(mint_inbound_token(INBOUND_SECRET, "ws_1", "thr_1"), INBOUND_VECTOR)
        self.assertEqual(
            verify_inbound_token(INBOUND_SECRET, INBOUND_VECTOR),
            InboundIdentity(workspace_id="ws_1", user_id=""),
        )

    def test_everyCharacterMatters(self) -> None:
        """
        Changing any single character of the vector makes it fail.
        """
        for index, char in enumerate(INBOUND_VECTOR):
            replacement = "0" if char != "0" else "1"
            changed = INBOUND_VECTOR[:index] + replacement + INBOUND_VECTOR[index + 1 :]
            with self.subTest(index=index):
                self.assertRaises(BadSignature, verify_inbound_token, INBOUND_SECRET, changed)

    def test_malformed(self) -> None:
        """
        Wrong part counts, empty parts, uppercase hex and another secret fail.
        """
        for bad in ("", "a.b", "a..c", ".b.c", "a.b.c.d", INBOUND_VECTOR.upper()):
            with self.subTest(bad=bad):
                self.assertRaises(BadSignature, verify_inbound_token, INBOUND_SECRET, bad)
        self.assertRaises(BadSignature, verify_inbound_token, CAP_SECRET, INBOUND_VECTOR)

    def test_mintRefusesDots(self) -> None:
        """
        Workspace ids and labels must be non-empty and free of C{.}.
        """
        for ws, label in (("a.b", "l"), ("a", "l.m"), ("", "l"), ("a", "")):
            with self.subTest(ws=ws, label=label):
                self.assertRaises(ValueError, mint_inbound_token, INBOUND_SECRET, ws, label)

    @given(ws=ids.filter(lambda s: "." not in s), label=ids.filter(lambda s: "." not in s))
    def test_roundTrip(self, ws: str, label: str) -> None:
        """
        Any ids without C{.} round-trip.
        """
        token = mint_inbound_token(INBOUND_SECRET, ws, label)
        self.assertEqual(verify_inbound_token(INBOUND_SECRET, token).workspace_id, ws)


class SecretTests(SynchronousTestCase):
    """
    L{Secret} refuses short values and never shows its value.
    """

    def test_short(self) -> None:
        """
        31 bytes are refused; 32 are accepted.
        """
        self.assertRaises(ValueError, Secret, b"x" * 31)
        self.assertEqual(Secret(b"x" * 32).value, b"x" * 32)

    def test_repr(self) -> None:
        """
        The repr hides the value.
        """
        self.assertNotIn("x" * 32, repr(Secret(b"x" * 32)))
        self.assertNotIn("xxxx", json.dumps(repr(Secret(b"x" * 32))))
