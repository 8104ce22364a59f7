"""
Tests for L{codexgw.appgw.captoken}: turn ids, cap token minting with the configured TTL
(C{app-gateway.md} §10, acceptance item 51), the per-turn expiry the revoke call needs, and the body of
C{POST /internal/captoken} (§3.3, acceptance item 17). Time is a L{Clock}.
"""

from __future__ import annotations

import base64
import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.captoken import (
    CapTokenError,
    CapTokenMinter,
    MintedCapToken,
    captoken_answer,
    new_turn_id,
)
from codexgw.appgw.loopback import LoopbackGrant
from codexgw.config import Secret
from codexgw.tokens import BadSignature, CapClaims, Expired, verify_cap_token

SECRET = Secret(b"k" * 32)
NOW = 1_700_000_000.75


def payload(token: str) -> bytes:
    """
    The decoded payload part of C{token}.
    """
    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TurnIdTests(SynchronousTestCase):
    """
    L{new_turn_id}.
    """

    def test_shape(self) -> None:
        """
        C{trn_} and 16 lowercase hex digits, from 8 random bytes.
        """
        requested: list[int] = []

        def random_bytes(n: int) -> bytes:
            requested.append(n)
            return bytes(range(0xA0, 0xA0 + n))

        self.assertEqual(new_turn_id(random_bytes), "trn_a0a1a2a3a4a5a6a7")
        self.assertEqual(requested, [8])
        self.assertRegex(new_turn_id(), r"^trn_[0-9a-f]{16}$")
        self.assertNotEqual(new_turn_id(), new_turn_id())


class MintTests(SynchronousTestCase):
    """
    L{CapTokenMinter.mint}.
    """

    def setUp(self) -> None:
        """
        A clock at a fractional time.
        """
        self.clock = Clock()
        self.clock.advance(NOW)

    def test_token(self) -> None:
        """
        The token's header is exact, its payload keys are C{turn_id, workspace_id, iat, exp} in that
        order, and it verifies with the exec gateway's verifier to the same workspace and turn.
        """
        minted = CapTokenMinter(SECRET, 86400.0, self.clock).mint("ws_a", "trn_0123456789abcdef")
        header = minted.token.split(".")[0]
        self.assertEqual(
            base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)),
            b'{"alg":"HS256","typ":"CXG"}',
        )
        self.assertEqual(
            payload(minted.token),
            b'{"turn_id":"trn_0123456789abcdef","workspace_id":"ws_a","iat":1700000000,'
            b'"exp":1700086400}',
        )
        self.assertEqual(minted.exp, 1_700_086_400)
        self.assertEqual(
            verify_cap_token(SECRET, minted.token, 1_700_000_000),
            CapClaims("trn_0123456789abcdef", "ws_a", 1_700_086_400),
        )

    def test_ttl_zero_or_negative(self) -> None:
        """
        A TTL ≤ 0 gives C{exp = iat + 3600}.
        """
        for ttl in (0.0, -5.0):
            with self.subTest(ttl=ttl):
                minted = CapTokenMinter(SECRET, ttl, self.clock).mint("ws", "trn_1")
                claims = json.loads(payload(minted.token))
                self.assertEqual(claims["exp"] - claims["iat"], 3600)

    def test_fractional_ttl(self) -> None:
        """
        C{exp} is C{now + ttl} rounded down: 1.5 s from C{…000.75} is C{…002}.
        """
        minted = CapTokenMinter(SECRET, 1.5, self.clock).mint("ws", "trn_1")
        self.assertEqual(minted.exp, 1_700_000_002)
        self.assertEqual(json.loads(payload(minted.token))["iat"], 1_700_000_000)

    def test_other_key_fails(self) -> None:
        """
        A token checked with another key fails.
        """
        minted = CapTokenMinter(SECRET, 60.0, self.clock).mint("ws", "trn_1")
        self.assertRaises(BadSignature, verify_cap_token, Secret(b"o" * 32), minted.token, 0)

    def test_expiry(self) -> None:
        """
        The token is valid at C{exp} and expired one second later.
        """
        minted = CapTokenMinter(SECRET, 60.0, self.clock).mint("ws", "trn_1")
        verify_cap_token(SECRET, minted.token, minted.exp)
        self.assertRaises(Expired, verify_cap_token, SECRET, minted.token, minted.exp + 1)

    def test_errors(self) -> None:
        """
        No secret → C{captoken: empty secret}; an empty turn or workspace id →
        C{captoken: turnID/workspaceID required}.
        """
        with self.assertRaises(CapTokenError) as caught:
            CapTokenMinter(None, 60.0, self.clock).mint("ws", "trn_1")
        self.assertEqual(str(caught.exception), "captoken: empty secret")
        minter = CapTokenMinter(SECRET, 60.0, self.clock)
        for workspace, turn in (("", "trn_1"), ("ws", ""), ("", "")):
            with self.subTest(workspace=workspace, turn=turn):
                with self.assertRaises(CapTokenError) as caught:
                    minter.mint(workspace, turn)
                self.assertEqual(str(caught.exception), "captoken: turnID/workspaceID required")
        self.assertIsNone(minter.last_exp(""))

    def test_repr_hides_token(self) -> None:
        """
        A minted token's C{repr} shows its expiry, not the token.
        """
        minted = CapTokenMinter(SECRET, 60.0, self.clock).mint("ws", "trn_1")
        self.assertNotIn(minted.token, repr(minted))
        self.assertIn(str(minted.exp), repr(minted))


class LastExpiryTests(SynchronousTestCase):
    """
    The expiry the revoke call needs (§11).
    """

    def test_latest_per_turn(self) -> None:
        """
        Each turn remembers the latest expiry minted for it, never a smaller one; forgetting drops
        it.
        """
        clock = Clock()
        clock.advance(1000)
        minter = CapTokenMinter(SECRET, 100.0, clock)
        self.assertIsNone(minter.last_exp("trn_a"))
        minter.mint("ws", "trn_a")
        self.assertEqual(minter.last_exp("trn_a"), 1100)
        clock.advance(50)
        minter.mint("ws", "trn_a")
        minter.mint("ws2", "trn_b")
        self.assertEqual(minter.last_exp("trn_a"), 1150)
        self.assertEqual(minter.last_exp("trn_b"), 1150)
        # A clock stepping back does not shorten the recorded expiry.
        clock.rightNow = 900
        minter.mint("ws", "trn_a")
        self.assertEqual(minter.last_exp("trn_a"), 1150)
        minter.forget("trn_a")
        minter.forget("trn_a")
        self.assertIsNone(minter.last_exp("trn_a"))
        self.assertEqual(minter.last_exp("trn_b"), 1150)


class InternalCaptokenTests(SynchronousTestCase):
    """
    L{captoken_answer}: the body of C{POST /internal/captoken}.
    """

    def test_answer(self) -> None:
        """
        A new token for the matched spawn's workspace and turn, and its C{exp}, in that key order;
        the spawn's recorded expiry follows.
        """
        clock = Clock()
        clock.advance(NOW)
        minter = CapTokenMinter(SECRET, 86400.0, clock)
        answer = captoken_answer(minter, LoopbackGrant("ws_a", "trn_00000000000000aa"))
        self.assertEqual(list(answer), ["token", "exp"])
        self.assertEqual(answer["exp"], 1_700_086_400)
        token = answer["token"]
        assert isinstance(token, str)
        self.assertEqual(
            verify_cap_token(SECRET, token, int(NOW)),
            CapClaims("trn_00000000000000aa", "ws_a", 1_700_086_400),
        )
        self.assertEqual(minter.last_exp("trn_00000000000000aa"), 1_700_086_400)
        self.assertEqual(MintedCapToken("t", 5).answer(), {"token": "t", "exp": 5})
