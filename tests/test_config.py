"""
Tests for L{codexgw.config}: the common value rules and messages of C{exec-gateway.md} §2.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from codexgw.config import (
    ConfigError,
    parse_duration,
    parse_integer,
    parse_secret,
    parse_url,
)


class IntegerTests(SynchronousTestCase):
    """
    Integers: decimal with optional C{-}, range messages quoting the raw value.
    """

    def test_valid(self) -> None:
        """
        Plain and negative decimals parse.
        """
        self.assertEqual(parse_integer("N", "6060"), 6060)
        self.assertEqual(parse_integer("N", "-3"), -3)

    def test_notAnInteger(self) -> None:
        """
        Anything else names the variable and quotes the value.
        """
        for raw in ("x", "1.5", "+1", " 1", "0x10", ""):
            with self.subTest(raw=raw):
                e = self.assertRaises(ConfigError, parse_integer, "CXG_PORT", raw)
                self.assertEqual(str(e), f'CXG_PORT must be an integer, got "{raw}"')

    def test_range(self) -> None:
        """
        Out-of-range values give the spec's messages.
        """
        e = self.assertRaises(ConfigError, parse_integer, "CXG_PORT", "70000", 0, 65535)
        self.assertEqual(str(e), "CXG_PORT must be <= 65535, got 70000")
        e = self.assertRaises(ConfigError, parse_integer, "CXG_DATABASE_POOL_SIZE", "0", 1, 64)
        self.assertEqual(str(e), "CXG_DATABASE_POOL_SIZE must be >= 1, got 0")


class DurationTests(SynchronousTestCase):
    """
    Durations: C{0} or C{<number><unit>} groups with units ms, s, m, h.
    """

    def test_valid(self) -> None:
        """
        Every documented form parses to seconds.
        """
        for raw, seconds in (("0", 0.0), ("250ms", 0.25), ("30s", 30.0), ("5m", 300.0),
                             ("1h30m", 5400.0), ("1.5s", 1.5), ("2h0m1s", 7201.0)):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(parse_duration("D", raw), seconds)

    def test_invalid(self) -> None:
        """
        Signs, bare numbers, unknown units, spaces and empty strings are invalid.
        """
        for raw in ("5x", "5", "-5s", "+5s", "5 s", "", "s", "1.s", ".5s", "1d", "0s0"):
            with self.subTest(raw=raw):
                e = self.assertRaises(ConfigError, parse_duration, "CXG_BRIDGE_IDLE_TIMEOUT", raw)
                self.assertEqual(str(e), f'CXG_BRIDGE_IDLE_TIMEOUT: invalid duration "{raw}"')

    def test_range(self) -> None:
        """
        Bounds are written as durations and quoted as written.
        """
        e = self.assertRaises(ConfigError, parse_duration, "CXG_PING_TIMEOUT", "1s", "2s")
        self.assertEqual(str(e), "CXG_PING_TIMEOUT must be >= 2s, got 1s")
        e = self.assertRaises(ConfigError, parse_duration, "CXG_WS_TICKET_TTL", "2h", "1s", "1h")
        self.assertEqual(str(e), "CXG_WS_TICKET_TTL must be <= 1h, got 2h")
        self.assertEqual(parse_duration("T", "1h", "1s", "1h"), 3600.0)


class SecretTests(SynchronousTestCase):
    """
    Secrets: required or optional, at least 32 bytes, never trimmed, never echoed.
    """

    def test_required(self) -> None:
        """
        Unset and empty are the same: required.
        """
        for env in ({}, {"S": ""}):
            e = self.assertRaises(ConfigError, parse_secret, env, "S")
            self.assertEqual(str(e), "S is required")

    def test_optional(self) -> None:
        """
        An optional unset secret is C{None}.
        """
        self.assertIsNone(parse_secret({}, "S", required=False))

    def test_short(self) -> None:
        """
        31 bytes are refused without echoing the value; multi-byte characters count as bytes.
        """
        e = self.assertRaises(ConfigError, parse_secret, {"S": "k" * 31}, "S")
        self.assertEqual(str(e), "S must be at least 32 bytes")
        secret = parse_secret({"S": "é" * 16}, "S")
        assert secret is not None
        self.assertEqual(len(secret.value), 32)

    def test_notTrimmed(self) -> None:
        """
        White space is part of the secret.
        """
        secret = parse_secret({"S": " " + "k" * 31}, "S")
        assert secret is not None
        self.assertEqual(secret.value, b" " + b"k" * 31)


class URLTests(SynchronousTestCase):
    """
    URLs: required schemes, one trailing slash removed.
    """

    def test_scheme(self) -> None:
        """
        A URL with another scheme is refused with the schemes listed.
        """
        e = self.assertRaises(ConfigError, parse_url, "U", "ftp://x", ("http://", "https://"))
        self.assertEqual(str(e), 'U must use http:// or https:// scheme, got "ftp://x"')
        e = self.assertRaises(ConfigError, parse_url, "U", "http://x", ("ws://", "wss://"))
        self.assertEqual(str(e), 'U must use ws:// or wss:// scheme, got "http://x"')

    def test_trailingSlash(self) -> None:
        """
        One trailing slash is removed.
        """
        self.assertEqual(parse_url("U", "https://h:1/", ("http://", "https://")), "https://h:1")
        self.assertEqual(parse_url("U", "wss://h/p", ("ws://", "wss://")), "wss://h/p")


class HugeValueTests(SynchronousTestCase):
    """
    Values far outside 64 bits get the spec's messages, not a Python error or infinity.
    """

    def test_hugeInteger(self) -> None:
        """
        5000 digits are out of range, on either side, with or without declared bounds.
        """
        e = self.assertRaises(ConfigError, parse_integer, "CXG_PORT", "1" * 5000, 0, 65535)
        self.assertTrue(str(e).startswith("CXG_PORT must be <= 65535, got 111"))
        e = self.assertRaises(ConfigError, parse_integer, "N", "-" + "9" * 30)
        self.assertTrue(str(e).startswith(f"N must be >= {-(2**63)}, got -999"))
        self.assertEqual(parse_integer("N", "0" * 40 + "7"), 7)

    def test_hugeDuration(self) -> None:
        """
        A duration past 2**63 nanoseconds is invalid, as Go's parser says.
        """
        e = self.assertRaises(ConfigError, parse_duration, "D", "9" * 400 + "s")
        self.assertEqual(str(e), f'D: invalid duration "{"9" * 400}s"')
        self.assertEqual(parse_duration("D", "2562047h"), 2562047 * 3600.0)
