"""
Tests for L{codexgw.execgw.config} and L{codexgw.execgw.dburl}: the C{CXG_*} table of
C{exec-gateway.md} §2 — defaults, ranges, exact messages and validation order.
"""

from __future__ import annotations

import dataclasses

from twisted.trial.unittest import SynchronousTestCase

from codexgw.config import ConfigError, Secret
from codexgw.execgw.config import (
    CONFIG_VARIABLES,
    VARIABLES,
    ExecGatewayConfig,
    load_config,
)
from codexgw.execgw.dburl import DatabaseURL, parse_database_url

REQUIRED = ("CXG_CAPTOKEN_HMAC_SECRET", "CXG_INTERNAL_SHARED_SECRET", "CXG_AGENTSERVER_INTERNAL_SECRET")
SECRET_32 = "s" * 32
BASE = {
    "CXG_CAPTOKEN_HMAC_SECRET": "c" * 32,
    "CXG_INTERNAL_SHARED_SECRET": "i" * 32,
    "CXG_AGENTSERVER_INTERNAL_SECRET": "a" * 32,
}

# A value of each row that fails, with the message it must give. Every row but CXG_LOG_LEVEL (which
# never fails) appears, in table order.
BAD_VALUES = (
    ("CXG_PORT", "70000", "CXG_PORT must be <= 65535, got 70000"),
    ("CXG_DATABASE_URL", "mysql://u:pw@h/d",
     'CXG_DATABASE_URL: unsupported scheme "mysql" (want sqlite, postgres or postgresql)'),
    ("CXG_DATABASE_POOL_SIZE", "0", "CXG_DATABASE_POOL_SIZE must be >= 1, got 0"),
    ("CXG_CAPTOKEN_HMAC_SECRET", "c" * 31, "CXG_CAPTOKEN_HMAC_SECRET must be at least 32 bytes"),
    ("CXG_INTERNAL_SHARED_SECRET", "i" * 31, "CXG_INTERNAL_SHARED_SECRET must be at least 32 bytes"),
    ("CXG_AGENTSERVER_INTERNAL_SECRET", "a" * 31,
     "CXG_AGENTSERVER_INTERNAL_SECRET must be at least 32 bytes"),
    ("CXG_AGENTSERVER_INTERNAL_URL", "ftp://x",
     'CXG_AGENTSERVER_INTERNAL_URL must use http:// or https:// scheme, got "ftp://x"'),
    ("CXG_INBOUND_HMAC_SECRET", "h" * 31, "CXG_INBOUND_HMAC_SECRET must be at least 32 bytes"),
    ("CXG_PUBLIC_WS_BASE_URL", "https://x",
     'CXG_PUBLIC_WS_BASE_URL must use ws:// or wss:// scheme, got "https://x"'),
    ("CXG_SELF_HTTP_BASE_URL", "ws://x",
     'CXG_SELF_HTTP_BASE_URL must use http:// or https:// scheme, got "ws://x"'),
    ("CXG_PUBLIC_HTTPS_BASE_URL", "x",
     'CXG_PUBLIC_HTTPS_BASE_URL must use http:// or https:// scheme, got "x"'),
    ("CXG_RELAY_DEFAULT_TTL", "0", "CXG_RELAY_DEFAULT_TTL must be > 0, got 0"),
    ("CXG_RELAY_MAX_PER_WORKSPACE", "many",
     'CXG_RELAY_MAX_PER_WORKSPACE must be an integer, got "many"'),
    ("CXG_MAX_FRAME_BYTES", "-1", "CXG_MAX_FRAME_BYTES must be >= 0, got -1"),
    ("CXG_MAX_STREAMS_PER_EXECUTOR", "-1", "CXG_MAX_STREAMS_PER_EXECUTOR must be >= 0, got -1"),
    ("CXG_BRIDGE_IDLE_TIMEOUT", "5x", 'CXG_BRIDGE_IDLE_TIMEOUT: invalid duration "5x"'),
    ("CXG_BRIDGE_BUFFER_BYTES", "65535", "CXG_BRIDGE_BUFFER_BYTES must be >= 65536, got 65535"),
    ("CXG_PING_INTERVAL", "1s", "CXG_PING_INTERVAL must be >= 2s, got 1s"),
    ("CXG_PING_TIMEOUT", "1999ms", "CXG_PING_TIMEOUT must be >= 2s, got 1999ms"),
    ("CXG_WS_TICKET_TTL", "61m", "CXG_WS_TICKET_TTL must be <= 1h, got 61m"),
    ("CXG_SHUTDOWN_TIMEOUT", "-1s", 'CXG_SHUTDOWN_TIMEOUT: invalid duration "-1s"'),
)  # fmt: skip


def load(**overrides: str) -> ExecGatewayConfig:
    """
    Load the configuration of the three required secrets plus C{overrides}.
    """
    return load_config({**BASE, **overrides})


def failure(environ: dict[str, str]) -> str:
    """
    Return the message of the L{ConfigError} that loading C{environ} raises.
    """
    try:
        load_config(environ)
    except ConfigError as e:
        return str(e)
    raise AssertionError("load_config did not fail")


class DefaultsTests(SynchronousTestCase):
    """
    With only the three required secrets set, every row takes its documented default.
    """

    def test_defaults(self) -> None:
        """
        Each row's default, converted: port 6060, SQLite at C{var/exec-gateway.sqlite3}, durations in
        seconds, optional settings absent, relay and SDK disabled (acceptance item 1).
        """
        config = load()
        self.assertEqual(config.port, 6060)
        self.assertEqual(config.listen_endpoint, "tcp:6060")
        self.assertEqual(config.database_url, "sqlite:///var/exec-gateway.sqlite3")
        self.assertEqual(config.database, DatabaseURL("sqlite", "var/exec-gateway.sqlite3"))
        self.assertEqual(config.database_pool_size, 4)
        self.assertEqual(config.captoken_hmac_secret.value, b"c" * 32)
        self.assertEqual(config.internal_shared_secret.value, b"i" * 32)
        self.assertEqual(config.agentserver_internal_secret.value, b"a" * 32)
        self.assertIsNone(config.agentserver_internal_url)
        self.assertIsNone(config.inbound_hmac_secret)
        self.assertIsNone(config.public_ws_base_url)
        self.assertIsNone(config.self_http_base_url)
        self.assertIsNone(config.public_https_base_url)
        self.assertEqual(config.relay_default_ttl, 300.0)
        self.assertEqual(config.relay_max_per_workspace, 16)
        self.assertEqual(config.max_frame_bytes, 16777216)
        self.assertEqual(config.max_streams_per_executor, 32)
        self.assertEqual(config.bridge_idle_timeout, 300.0)
        self.assertEqual(config.bridge_buffer_bytes, 16777216)
        self.assertEqual(config.ping_interval, 30.0)
        self.assertEqual(config.ping_timeout, 10.0)
        self.assertEqual(config.ws_ticket_ttl, 300.0)
        self.assertEqual(config.shutdown_timeout, 30.0)
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.sdk_mode, "disabled")
        self.assertFalse(config.relay_enabled)

    def test_emptyIsUnset(self) -> None:
        """
        An empty value is the same as unset: the default applies.
        """
        config = load(CXG_PORT="", CXG_DATABASE_URL="", CXG_PING_INTERVAL="", CXG_PUBLIC_WS_BASE_URL="")
        self.assertEqual(config.port, 6060)
        self.assertEqual(config.database.engine, "sqlite")
        self.assertEqual(config.ping_interval, 30.0)
        self.assertIsNone(config.public_ws_base_url)


class RequiredSecretTests(SynchronousTestCase):
    """
    The three required secrets (acceptance item 2) and the optional one.
    """

    def test_missing(self) -> None:
        """
        Each required secret unset or empty → C{<NAME> is required}.
        """
        for name in REQUIRED:
            for environ in ({k: v for k, v in BASE.items() if k != name}, {**BASE, name: ""}):
                with self.subTest(name=name, environ=sorted(environ)):
                    self.assertEqual(failure(environ), f"{name} is required")

    def test_tooShort(self) -> None:
        """
        A 31-byte value → C{<NAME> must be at least 32 bytes}; the value is not in the message.
        """
        for name in (*REQUIRED, "CXG_INBOUND_HMAC_SECRET"):
            with self.subTest(name=name):
                message = failure({**BASE, name: "Q" * 31})
                self.assertEqual(message, f"{name} must be at least 32 bytes")
                self.assertNotIn("Q" * 31, message)

    def test_bytesNotCharacters(self) -> None:
        """
        Length counts UTF-8 bytes: 16 two-byte characters are 32 bytes. Values are never trimmed.
        """
        config = load(CXG_CAPTOKEN_HMAC_SECRET="é" * 16, CXG_INTERNAL_SHARED_SECRET=" " + "x" * 30 + " ")
        self.assertEqual(config.captoken_hmac_secret.value, "é".encode() * 16)
        self.assertEqual(config.internal_shared_secret.value, b" " + b"x" * 30 + b" ")

    def test_secretsRedacted(self) -> None:
        """
        The configuration's C{repr} shows no secret value.
        """
        config = load(CXG_INBOUND_HMAC_SECRET="h" * 32)
        self.assertIsInstance(config.inbound_hmac_secret, Secret)
        text = repr(config)
        for value in (*BASE.values(), "h" * 32):
            self.assertNotIn(value, text)


class DatabaseURLTests(SynchronousTestCase):
    """
    C{CXG_DATABASE_URL}: SQLite paths, PostgreSQL URLs, and the two messages (acceptance item 3).
    """

    def test_sqlite(self) -> None:
        """
        C{sqlite:///PATH} is relative; a fourth slash makes it absolute; C{:memory:} passes through.
        """
        for raw, path in (
            ("sqlite:///var/exec-gateway.sqlite3", "var/exec-gateway.sqlite3"),
            ("sqlite:////srv/exec.sqlite3", "/srv/exec.sqlite3"),
            ("sqlite:///:memory:", ":memory:"),
        ):
            with self.subTest(raw=raw):
                self.assertEqual(parse_database_url(raw), DatabaseURL("sqlite", path))
                self.assertEqual(load(CXG_DATABASE_URL=raw).database, DatabaseURL("sqlite", path))

    def test_postgres(self) -> None:
        """
        Both PostgreSQL schemes keep the URL unchanged for libpq.
        """
        for raw in ("postgres://u:pw@db:5432/exec", "postgresql://u:pw@db/exec?sslmode=require"):
            with self.subTest(raw=raw):
                self.assertEqual(parse_database_url(raw), DatabaseURL("postgres", raw))
                config = load(CXG_DATABASE_URL=raw)
                self.assertEqual(config.database_url, raw)
                self.assertEqual(config.database.engine, "postgres")

    def test_unsupportedScheme(self) -> None:
        """
        Another scheme echoes only the scheme; the password appears nowhere in the message.
        """
        message = failure({**BASE, "CXG_DATABASE_URL": "mysql://u:pw@h/d"})
        self.assertEqual(
            message, 'CXG_DATABASE_URL: unsupported scheme "mysql" (want sqlite, postgres or postgresql)'
        )
        self.assertNotIn("pw", message)
        self.assertNotIn("u:", message)

    def test_otherSchemes(self) -> None:
        """
        Schemes match case-sensitively; no scheme echoes C{""}; a PostgreSQL scheme without C{//} is
        not a libpq URI.
        """
        for raw, scheme in (
            ("SQLITE:///x", "SQLITE"),
            ("Postgres://u:pw@h/d", "Postgres"),
            ("/var/exec.sqlite3", ""),
            ("secret-password", ""),
            ("postgres:u:pw@h", "postgres"),
            ("http://h/d", "http"),
        ):
            with self.subTest(raw=raw):
                e = self.assertRaises(ConfigError, parse_database_url, raw)
                self.assertEqual(
                    str(e),
                    f'CXG_DATABASE_URL: unsupported scheme "{scheme}" '
                    "(want sqlite, postgres or postgresql)",
                )

    def test_sqliteNeedsPath(self) -> None:
        """
        A C{sqlite} URL with an empty path, or not of the form C{sqlite:///PATH}, needs a path.
        """
        for raw in ("sqlite://", "sqlite:///", "sqlite:", "sqlite:relative.db", "sqlite://host/x.db"):
            with self.subTest(raw=raw):
                self.assertEqual(
                    failure({**BASE, "CXG_DATABASE_URL": raw}),
                    "CXG_DATABASE_URL: sqlite URL needs a path (sqlite:///PATH)",
                )

    def test_reprHidesPassword(self) -> None:
        """
        Neither the configuration's nor the parsed URL's C{repr} shows a PostgreSQL password.
        """
        config = load(CXG_DATABASE_URL="postgres://u:hunter2@h/d")
        self.assertNotIn("hunter2", repr(config))
        self.assertNotIn("hunter2", repr(config.database))
        self.assertIn("var/x.db", repr(parse_database_url("sqlite:///var/x.db")))


class RangeTests(SynchronousTestCase):
    """
    Each row's accepted range, at and beyond its bounds.
    """

    def test_acceptance4(self) -> None:
        """
        The two examples of acceptance item 4.
        """
        self.assertEqual(
            failure({**BASE, "CXG_BRIDGE_IDLE_TIMEOUT": "5x"}),
            'CXG_BRIDGE_IDLE_TIMEOUT: invalid duration "5x"',
        )
        self.assertEqual(failure({**BASE, "CXG_PORT": "70000"}), "CXG_PORT must be <= 65535, got 70000")

    def test_badValues(self) -> None:
        """
        Every row's failing example gives its exact message.
        """
        for name, raw, message in BAD_VALUES:
            with self.subTest(name=name, raw=raw):
                self.assertEqual(failure({**BASE, name: raw}), message)

    def test_accepted(self) -> None:
        """
        Values at the bounds of each row are accepted and converted.
        """
        for name, raw, attribute, value in (
            ("CXG_PORT", "0", "port", 0),
            ("CXG_PORT", "65535", "port", 65535),
            ("CXG_DATABASE_POOL_SIZE", "1", "database_pool_size", 1),
            ("CXG_DATABASE_POOL_SIZE", "64", "database_pool_size", 64),
            ("CXG_RELAY_DEFAULT_TTL", "1ms", "relay_default_ttl", 0.001),
            ("CXG_RELAY_MAX_PER_WORKSPACE", "1", "relay_max_per_workspace", 1),
            ("CXG_RELAY_MAX_PER_WORKSPACE", "0", "relay_max_per_workspace", 16),
            ("CXG_RELAY_MAX_PER_WORKSPACE", "-5", "relay_max_per_workspace", 16),
            ("CXG_RELAY_MAX_PER_WORKSPACE", "100", "relay_max_per_workspace", 100),
            ("CXG_MAX_FRAME_BYTES", "0", "max_frame_bytes", 0),
            ("CXG_MAX_STREAMS_PER_EXECUTOR", "0", "max_streams_per_executor", 0),
            ("CXG_BRIDGE_IDLE_TIMEOUT", "0", "bridge_idle_timeout", 0.0),
            ("CXG_BRIDGE_IDLE_TIMEOUT", "200ms", "bridge_idle_timeout", 0.2),
            ("CXG_BRIDGE_BUFFER_BYTES", "65536", "bridge_buffer_bytes", 65536),
            ("CXG_PING_INTERVAL", "0", "ping_interval", 0.0),
            ("CXG_PING_INTERVAL", "2s", "ping_interval", 2.0),
            ("CXG_PING_TIMEOUT", "2s", "ping_timeout", 2.0),
            ("CXG_WS_TICKET_TTL", "1s", "ws_ticket_ttl", 1.0),
            ("CXG_WS_TICKET_TTL", "1h", "ws_ticket_ttl", 3600.0),
            ("CXG_SHUTDOWN_TIMEOUT", "0", "shutdown_timeout", 0.0),
            ("CXG_SHUTDOWN_TIMEOUT", "1h30m", "shutdown_timeout", 5400.0),
        ):
            with self.subTest(name=name, raw=raw):
                self.assertEqual(getattr(load(**{name: raw}), attribute), value)

    def test_outOfRange(self) -> None:
        """
        Values just beyond each bound give the range messages with the raw value.
        """
        for name, raw, message in (
            ("CXG_PORT", "-1", "CXG_PORT must be >= 0, got -1"),
            ("CXG_PORT", "port", 'CXG_PORT must be an integer, got "port"'),
            ("CXG_DATABASE_POOL_SIZE", "65", "CXG_DATABASE_POOL_SIZE must be <= 64, got 65"),
            ("CXG_RELAY_DEFAULT_TTL", "5", 'CXG_RELAY_DEFAULT_TTL: invalid duration "5"'),
            ("CXG_PING_INTERVAL", "1999ms", "CXG_PING_INTERVAL must be >= 2s, got 1999ms"),
            ("CXG_PING_TIMEOUT", "0", "CXG_PING_TIMEOUT must be >= 2s, got 0"),
            ("CXG_WS_TICKET_TTL", "999ms", "CXG_WS_TICKET_TTL must be >= 1s, got 999ms"),
            ("CXG_WS_TICKET_TTL", "0", "CXG_WS_TICKET_TTL must be >= 1s, got 0"),
        ):
            with self.subTest(name=name, raw=raw):
                self.assertEqual(failure({**BASE, name: raw}), message)

    def test_urls(self) -> None:
        """
        URLs keep their value minus one trailing C{/}.
        """
        config = load(
            CXG_AGENTSERVER_INTERNAL_URL="http://agentserver:8080/",
            CXG_PUBLIC_WS_BASE_URL="wss://codex-exec.example.com/",
            CXG_SELF_HTTP_BASE_URL="http://127.0.0.1:6060",
            CXG_PUBLIC_HTTPS_BASE_URL="https://relay.example.com//",
        )
        self.assertEqual(config.agentserver_internal_url, "http://agentserver:8080")
        self.assertEqual(config.public_ws_base_url, "wss://codex-exec.example.com")
        self.assertEqual(config.self_http_base_url, "http://127.0.0.1:6060")
        self.assertEqual(config.public_https_base_url, "https://relay.example.com/")

    def test_logLevel(self) -> None:
        """
        The four levels are case-insensitive; anything else means C{info}.
        """
        for raw, level in (("DEBUG", "debug"), ("Warn", "warn"), ("error", "error"), ("info", "info"),
                           ("warning", "info"), ("trace", "info"), (" debug", "info")):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(load(CXG_LOG_LEVEL=raw).log_level, level)


class DerivedTests(SynchronousTestCase):
    """
    The derived switches: SDK mode and byte relay.
    """

    def test_sdkMode(self) -> None:
        """
        The agentserver URL wins over the inbound HMAC secret; neither means disabled.
        """
        url = "http://agentserver"
        self.assertEqual(load().sdk_mode, "disabled")
        self.assertEqual(load(CXG_INBOUND_HMAC_SECRET=SECRET_32).sdk_mode, "hmac")
        self.assertEqual(load(CXG_AGENTSERVER_INTERNAL_URL=url).sdk_mode, "remote")
        both = load(CXG_AGENTSERVER_INTERNAL_URL=url, CXG_INBOUND_HMAC_SECRET=SECRET_32)
        self.assertEqual(both.sdk_mode, "remote")

    def test_relay(self) -> None:
        """
        The byte relay is enabled iff C{CXG_PUBLIC_HTTPS_BASE_URL} is set.
        """
        self.assertFalse(load().relay_enabled)
        self.assertTrue(load(CXG_PUBLIC_HTTPS_BASE_URL="https://relay.example.com").relay_enabled)


class OrderTests(SynchronousTestCase):
    """
    Rows are validated in table order and the first failure wins.
    """

    def test_firstFailureWins(self) -> None:
        """
        With every row bad at once, fixing the rows one by one in table order reveals the failures
        one by one in the same order.
        """
        environ = {name: raw for name, raw, _ in BAD_VALUES}
        for name, _, message in BAD_VALUES:
            with self.subTest(name=name):
                self.assertEqual(failure(environ), message)
            del environ[name]
            if name in BASE:
                environ[name] = BASE[name]
        load_config(environ)

    def test_missingSecretAfterEarlierRow(self) -> None:
        """
        A bad earlier row is reported before a missing secret; a missing secret before a later row.
        """
        self.assertEqual(failure({"CXG_PORT": "x"}), 'CXG_PORT must be an integer, got "x"')
        self.assertEqual(failure({"CXG_SHUTDOWN_TIMEOUT": "x"}), "CXG_CAPTOKEN_HMAC_SECRET is required")

    def test_badValuesCoverTable(self) -> None:
        """
        The failing examples above follow the table's order and cover every row that can fail.
        """
        names = [name for name, _, _, _ in CONFIG_VARIABLES]
        self.assertEqual([name for name, _, _ in BAD_VALUES], names[:-1])
        self.assertEqual(names[-1], "CXG_LOG_LEVEL")


class TableTests(SynchronousTestCase):
    """
    The documentation table and the parser come from one definition.
    """

    def test_configVariables(self) -> None:
        """
        L{CONFIG_VARIABLES} lists the 22 rows of §2 in order with their defaults and requiredness.
        """
        self.assertEqual(
            [(name, default, required) for name, default, required, _ in CONFIG_VARIABLES],
            [
                ("CXG_PORT", "6060", False),
                ("CXG_DATABASE_URL", "sqlite:///var/exec-gateway.sqlite3", False),
                ("CXG_DATABASE_POOL_SIZE", "4", False),
                ("CXG_CAPTOKEN_HMAC_SECRET", None, True),
                ("CXG_INTERNAL_SHARED_SECRET", None, True),
                ("CXG_AGENTSERVER_INTERNAL_SECRET", None, True),
                ("CXG_AGENTSERVER_INTERNAL_URL", None, False),
                ("CXG_INBOUND_HMAC_SECRET", None, False),
                ("CXG_PUBLIC_WS_BASE_URL", None, False),
                ("CXG_SELF_HTTP_BASE_URL", None, False),
                ("CXG_PUBLIC_HTTPS_BASE_URL", None, False),
                ("CXG_RELAY_DEFAULT_TTL", "5m", False),
                ("CXG_RELAY_MAX_PER_WORKSPACE", "16", False),
                ("CXG_MAX_FRAME_BYTES", "16777216", False),
                ("CXG_MAX_STREAMS_PER_EXECUTOR", "32", False),
                ("CXG_BRIDGE_IDLE_TIMEOUT", "5m", False),
                ("CXG_BRIDGE_BUFFER_BYTES", "16777216", False),
                ("CXG_PING_INTERVAL", "30s", False),
                ("CXG_PING_TIMEOUT", "10s", False),
                ("CXG_WS_TICKET_TTL", "5m", False),
                ("CXG_SHUTDOWN_TIMEOUT", "30s", False),
                ("CXG_LOG_LEVEL", "info", False),
            ],
        )
        for name, _, _, description in CONFIG_VARIABLES:
            with self.subTest(name=name):
                self.assertTrue(description)

    def test_attributes(self) -> None:
        """
        Each row has its attribute on L{ExecGatewayConfig}, in table order, followed by the derived
        values only.
        """
        fields = [f.name for f in dataclasses.fields(ExecGatewayConfig)]
        self.assertEqual(
            fields, [v.attribute for v in VARIABLES] + ["database", "sdk_mode", "relay_enabled"]
        )

    def test_frozen(self) -> None:
        """
        The configuration cannot be changed after loading.
        """
        config = load()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config, "port", 1)
