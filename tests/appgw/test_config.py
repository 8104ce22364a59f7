"""
Tests for L{codexgw.appgw.config}: the C{CXG_*} table of C{app-gateway.md} §2 — every row's default,
range and exact message, the validation order, the option/variable precedence of C{CXG_LISTEN_ADDR}
and C{CXG_CODEX_BIN}, the cross-row rules, and the derived values (acceptance items 1–8).

Parsing is pure (a dictionary stands for the environment); the rows that look for executables see
only a few files in trial's temporary directory.
"""

from __future__ import annotations

import dataclasses
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.codexhome import ProviderSettings
from codexgw.appgw.config import (
    CONFIG_VARIABLES,
    UNUSED_INBOUND_HMAC_WARNING,
    VARIABLES,
    AppGatewayConfig,
    ListenAddress,
    effective_value,
    load_config,
    parse_listen_addr,
)
from codexgw.appgw.loopback import is_loopback_address
from codexgw.appgw.storeconfig import STORE_VARIABLES, ObjectStoreConfig
from codexgw.config import ConfigError

#: The rows of §2 in order, with the snapshot limit after C{CXG_TMP_ROOT}.
TABLE_ORDER = (
    "CXG_LISTEN_ADDR", "CXG_CODEX_BIN", "CXG_EXEC_GATEWAY_URL", "CXG_EXEC_GATEWAY_INTERNAL_URL",
    "CXG_EXEC_GATEWAY_INTERNAL_SECRET", "CXG_CAPTOKEN_HMAC_SECRET", "CXG_AGENTSERVER_INTERNAL_URL",
    "CXG_AGENTSERVER_INTERNAL_SECRET", "CXG_INBOUND_HMAC_SECRET", "CXG_S3_ENDPOINT", "CXG_S3_BUCKET",
    "CXG_S3_REGION", "CXG_S3_ACCESS_KEY_ID", "CXG_S3_SECRET_ACCESS_KEY", "CXG_S3_PATH_STYLE",
    "CXG_OBJECT_DIR", "CXG_TMP_ROOT", "CXG_MAX_SNAPSHOT_BYTES", "CXG_IDLE_SHUTDOWN",
    "CXG_CAPTOKEN_TTL", "CXG_BROKER_POOL_IDLE_TTL", "CXG_MAX_SPAWNS", "CXG_SPAWN_CONCURRENCY",
    "CXG_CLIENT_BUFFER_BYTES", "CXG_ALLOWED_ORIGINS", "CXG_MODEL_PROVIDER", "CXG_MODEL",
    "CXG_MODEL_PROVIDER_BASE_URL", "CXG_MODEL_PROVIDER_ENV_KEY", "CXG_MODEL_PROVIDER_WIRE_API",
    "CXG_CODEX_API_KEY", "CXG_PROJECT_TRUSTED_PATHS", "CXG_ENV_MCP_COMMAND", "CXG_LOG_LEVEL",
)  # fmt: skip

#: The required rows and a valid value of each (HMAC inbound auth).
REQUIRED = {
    "CXG_EXEC_GATEWAY_URL": "ws://exec-gateway:6060",
    "CXG_EXEC_GATEWAY_INTERNAL_URL": "http://exec-gateway:6060",
    "CXG_EXEC_GATEWAY_INTERNAL_SECRET": "e" * 32,
    "CXG_CAPTOKEN_HMAC_SECRET": "c" * 32,
    "CXG_INBOUND_HMAC_SECRET": "h" * 32,
}

#: A failing value of rows, with the row's exact message (other rows at their valid defaults).
BAD_VALUES = (
    ("CXG_LISTEN_ADDR", "8086", 'CXG_LISTEN_ADDR must be host:port, got "8086"'),
    ("CXG_LISTEN_ADDR", "10.1.2.3:8086",
     'CXG_LISTEN_ADDR must bind a wildcard or loopback address, got "10.1.2.3:8086"'),
    ("CXG_CODEX_BIN", "no-such-codex", 'codex binary "no-such-codex" not found or not executable'),
    ("CXG_EXEC_GATEWAY_URL", "http://x",
     'CXG_EXEC_GATEWAY_URL must use ws:// or wss:// scheme, got "http://x"'),
    ("CXG_EXEC_GATEWAY_INTERNAL_URL", "ws://x",
     'CXG_EXEC_GATEWAY_INTERNAL_URL must use http:// or https:// scheme, got "ws://x"'),
    ("CXG_EXEC_GATEWAY_INTERNAL_SECRET", "e" * 31,
     "CXG_EXEC_GATEWAY_INTERNAL_SECRET must be at least 32 bytes"),
    ("CXG_CAPTOKEN_HMAC_SECRET", "c" * 31, "CXG_CAPTOKEN_HMAC_SECRET must be at least 32 bytes"),
    ("CXG_AGENTSERVER_INTERNAL_URL", "ftp://x",
     'CXG_AGENTSERVER_INTERNAL_URL must use http:// or https:// scheme, got "ftp://x"'),
    ("CXG_AGENTSERVER_INTERNAL_SECRET", "a" * 31,
     "CXG_AGENTSERVER_INTERNAL_SECRET must be at least 32 bytes"),
    ("CXG_INBOUND_HMAC_SECRET", "h" * 31, "CXG_INBOUND_HMAC_SECRET must be at least 32 bytes"),
    ("CXG_S3_ENDPOINT", "minio:9000",
     'CXG_S3_ENDPOINT must use http:// or https:// scheme, got "minio:9000"'),
    ("CXG_S3_ENDPOINT", "http://[::1", "CXG_S3_ENDPOINT not a valid URL: Invalid IPv6 URL"),
    ("CXG_S3_ACCESS_KEY_ID", "only-one",
     "CXG_S3_ACCESS_KEY_ID and CXG_S3_SECRET_ACCESS_KEY must be set together"),
    ("CXG_S3_SECRET_ACCESS_KEY", "only-one",
     "CXG_S3_ACCESS_KEY_ID and CXG_S3_SECRET_ACCESS_KEY must be set together"),
    ("CXG_MAX_SNAPSHOT_BYTES", "0", 'CXG_MAX_SNAPSHOT_BYTES must be a positive integer, got "0"'),
    ("CXG_IDLE_SHUTDOWN", "abc", 'CXG_IDLE_SHUTDOWN: invalid duration "abc"'),
    ("CXG_CAPTOKEN_TTL", "5", 'CXG_CAPTOKEN_TTL: invalid duration "5"'),
    ("CXG_BROKER_POOL_IDLE_TTL", "0", "CXG_BROKER_POOL_IDLE_TTL must be positive"),
    ("CXG_MAX_SPAWNS", "0", 'CXG_MAX_SPAWNS must be a positive integer, got "0"'),
    ("CXG_SPAWN_CONCURRENCY", "-1", 'CXG_SPAWN_CONCURRENCY must be a positive integer, got "-1"'),
    ("CXG_CLIENT_BUFFER_BYTES", "x", 'CXG_CLIENT_BUFFER_BYTES must be a positive integer, got "x"'),
    ("CXG_MODEL_PROVIDER_ENV_KEY", "1KEY",
     'CXG_MODEL_PROVIDER_ENV_KEY must be an environment variable name, got "1KEY"'),
    ("CXG_ENV_MCP_COMMAND", "bin/codexgw",
     'CXG_ENV_MCP_COMMAND must be an absolute path to an executable, got "bin/codexgw"'),
)  # fmt: skip


def _write_executable(path: str, mode: int = 0o755) -> str:
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, mode)
    return path


class ConfigCase(SynchronousTestCase):
    """
    A case with a C{bin} directory holding an executable C{codex} and C{codexgw}, a non-executable
    file and a directory, and an environment whose C{PATH} is that directory.
    """

    def setUp(self) -> None:
        """
        Create the directory.
        """
        self.bin = os.path.abspath(self.mktemp())
        os.makedirs(self.bin)
        self.codex = _write_executable(os.path.join(self.bin, "codex"))
        self.codexgw = _write_executable(os.path.join(self.bin, "codexgw"))
        self.not_executable = _write_executable(os.path.join(self.bin, "plain"), 0o644)
        self.directory = os.path.join(self.bin, "codexdir")
        os.makedirs(self.directory)
        # The interpreter "lives" in the bin directory, so codexgw is found beside it.
        self.python = os.path.join(self.bin, "python3")

    def environ(self, **overrides: str | None) -> dict[str, str]:
        """
        The required rows, C{PATH} = the bin directory, then C{overrides} (C{None} removes a name).
        """
        environ = {**REQUIRED, "PATH": self.bin}
        for name, value in overrides.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return environ

    def load(
        self,
        listen_addr_option: str | None = None,
        codex_bin_option: str | None = None,
        **overrides: str | None,
    ) -> AppGatewayConfig:
        """
        L{load_config} of L{environ}C{(**overrides)} with the interpreter in the bin directory.
        """
        return load_config(
            self.environ(**overrides), listen_addr_option, codex_bin_option, executable=self.python
        )

    def failure(self, **overrides: str | None) -> str:
        """
        The message of the L{ConfigError} that L{load} raises.
        """
        with self.assertRaises(ConfigError) as caught:
            self.load(**overrides)
        return str(caught.exception)


class DefaultsTests(ConfigCase):
    """
    With only the required rows set, every row takes its default (acceptance item 1).
    """

    def test_defaults(self) -> None:
        """
        Listen C{:8086}, codex found on C{PATH}, tmp root, durations, limits, store, provider
        settings, trusted paths C{["/tmp"]}, log level; no agentserver, HMAC auth, no warnings.
        """
        config = self.load()
        self.assertEqual(config.listen_addr, ListenAddress("", 8086))
        self.assertEqual(config.codex_bin, self.codex)
        self.assertEqual(config.exec_gateway_url, "ws://exec-gateway:6060")
        self.assertEqual(config.bridge_base_url, "ws://exec-gateway:6060/bridge")
        self.assertEqual(config.exec_gateway_internal_url, "http://exec-gateway:6060")
        self.assertEqual(config.exec_gateway_internal_secret.value, b"e" * 32)
        self.assertEqual(config.captoken_hmac_secret.value, b"c" * 32)
        self.assertIsNone(config.agentserver_internal_url)
        self.assertIsNone(config.agentserver_internal_secret)
        assert config.inbound_hmac_secret is not None
        self.assertEqual(config.inbound_hmac_secret.value, b"h" * 32)
        self.assertEqual(config.auth_mode, "hmac")
        self.assertEqual(
            config.store,
            ObjectStoreConfig(
                s3_endpoint=None,
                s3_bucket=None,
                s3_region="us-east-1",
                s3_access_key_id=None,
                s3_secret_access_key=None,
                s3_path_style=False,
                object_dir=os.path.join(os.getcwd(), "var", "objects"),
                tmp_root="/tmp/codex-app-gateway",
                max_snapshot_bytes=1 << 30,
            ),
        )
        self.assertEqual(config.idle_shutdown, 1800.0)
        self.assertEqual(config.captoken_ttl, 86400.0)
        self.assertEqual(config.broker_pool_idle_ttl, 300.0)
        self.assertEqual(config.max_spawns, 64)
        self.assertEqual(config.spawn_concurrency, 4)
        self.assertEqual(config.client_buffer_bytes, 67108864)
        self.assertEqual(config.allowed_origins, ())
        self.assertEqual(config.model_provider, "modelserver")
        self.assertEqual(config.model, "gpt-5.5")
        self.assertEqual(config.model_provider_base_url, "http://llmproxy:8085/v1")
        self.assertEqual(config.model_provider_env_key, "CODEX_API_KEY")
        self.assertEqual(config.model_provider_wire_api, "responses")
        self.assertIsNone(config.codex_api_key)
        self.assertEqual(config.project_trusted_paths, ("/tmp",))
        self.assertEqual(config.env_mcp_command, self.codexgw)
        self.assertEqual(config.log_level, "info")
        self.assertEqual(config.warnings, ())

    def test_empty_is_unset(self) -> None:
        """
        Every optional row set to the empty string gives the same configuration as unset (secrets,
        which have no equality, compare by C{repr} like the rest).
        """
        empty = {name: "" for name in TABLE_ORDER if name not in REQUIRED}
        self.assertEqual(repr(self.load(**empty)), repr(self.load()))

    def test_provider_settings(self) -> None:
        """
        The provider's C{config.toml} table comes from rows #26–#28.
        """
        config = self.load(
            CXG_MODEL_PROVIDER_BASE_URL="http://p/v1",
            CXG_MODEL_PROVIDER_ENV_KEY="MY_KEY",
            CXG_MODEL_PROVIDER_WIRE_API="chat",
        )
        self.assertEqual(
            config.provider_settings(),
            ProviderSettings(base_url="http://p/v1", env_key="MY_KEY", wire_api="chat"),
        )

    def test_secrets_redacted(self) -> None:
        """
        No secret value, nor the static LLM key, appears in the configuration's C{repr}.
        """
        config = self.load(
            CXG_CODEX_API_KEY="sk-static-key",
            CXG_S3_ACCESS_KEY_ID="id",
            CXG_S3_SECRET_ACCESS_KEY="s3-secret-key",
        )
        self.assertEqual(config.codex_api_key, "sk-static-key")
        text = repr(config)
        for secret in ("e" * 32, "c" * 32, "h" * 32, "sk-static-key", "s3-secret-key"):
            self.assertNotIn(secret, text)

    def test_frozen(self) -> None:
        """
        The configuration cannot be changed after loading.
        """
        config = self.load()
        self.assertRaises(dataclasses.FrozenInstanceError, setattr, config, "max_spawns", 1)


class RequiredTests(ConfigCase):
    """
    Rows #3–#6 are required; #8 and #9 depend on #7 (acceptance items 3, 5).
    """

    def test_missing(self) -> None:
        """
        Each of #3–#6 missing (or empty) fails with C{<NAME> is required}.
        """
        for name in list(REQUIRED)[:4]:
            for value in (None, ""):
                with self.subTest(name=name, value=value):
                    self.assertEqual(self.failure(**{name: value}), f"{name} is required")

    def test_short_secrets(self) -> None:
        """
        A 31-byte value of #5, #6, #8 or #9 fails with C{<NAME> must be at least 32 bytes}; 32
        bytes pass.
        """
        for name in (
            "CXG_EXEC_GATEWAY_INTERNAL_SECRET", "CXG_CAPTOKEN_HMAC_SECRET",
            "CXG_AGENTSERVER_INTERNAL_SECRET", "CXG_INBOUND_HMAC_SECRET",
        ):  # fmt: skip
            with self.subTest(name=name):
                self.assertEqual(self.failure(**{name: "s" * 31}), f"{name} must be at least 32 bytes")
                self.load(**{name: "s" * 32})

    def test_bytes_not_characters(self) -> None:
        """
        The length rule counts UTF-8 bytes: 16 two-byte characters are 32 bytes.
        """
        config = self.load(CXG_CAPTOKEN_HMAC_SECRET="é" * 16)
        self.assertEqual(config.captoken_hmac_secret.value, "é".encode() * 16)
        self.assertEqual(
            self.failure(CXG_CAPTOKEN_HMAC_SECRET="é" * 15 + "x"),
            "CXG_CAPTOKEN_HMAC_SECRET must be at least 32 bytes",
        )

    def test_neither_agentserver_nor_inbound_secret(self) -> None:
        """
        Without #7, #9 is required, with its exact text.
        """
        self.assertEqual(
            self.failure(CXG_INBOUND_HMAC_SECRET=None),
            "CXG_INBOUND_HMAC_SECRET is required when CXG_AGENTSERVER_INTERNAL_URL is unset",
        )

    def test_agentserver_without_secret(self) -> None:
        """
        #7 without #8 fails with #8's text.
        """
        self.assertEqual(
            self.failure(CXG_AGENTSERVER_INTERNAL_URL="http://agentserver:8080"),
            "CXG_AGENTSERVER_INTERNAL_SECRET is required when CXG_AGENTSERVER_INTERNAL_URL is set",
        )

    def test_remote_mode(self) -> None:
        """
        #7 and #8 set, #9 unset: remote auth, URL trimmed of its trailing C{/}.
        """
        config = self.load(
            CXG_AGENTSERVER_INTERNAL_URL="https://agentserver:8443/",
            CXG_AGENTSERVER_INTERNAL_SECRET="a" * 32,
            CXG_INBOUND_HMAC_SECRET=None,
        )
        self.assertEqual(config.auth_mode, "remote")
        self.assertEqual(config.agentserver_internal_url, "https://agentserver:8443")
        assert config.agentserver_internal_secret is not None
        self.assertEqual(config.agentserver_internal_secret.value, b"a" * 32)
        self.assertIsNone(config.inbound_hmac_secret)
        self.assertEqual(config.warnings, ())

    def test_inbound_secret_ignored_in_remote_mode(self) -> None:
        """
        #9 set together with #7 is dropped, with the warning for the service to log; it must still
        follow the secret rule.
        """
        remote = {
            "CXG_AGENTSERVER_INTERNAL_URL": "http://agentserver",
            "CXG_AGENTSERVER_INTERNAL_SECRET": "a" * 32,
        }
        config = self.load(**remote)
        self.assertIsNone(config.inbound_hmac_secret)
        self.assertEqual(config.auth_mode, "remote")
        self.assertEqual(config.warnings, (UNUSED_INBOUND_HMAC_WARNING,))
        self.assertEqual(
            UNUSED_INBOUND_HMAC_WARNING,
            "CXG_INBOUND_HMAC_SECRET is ignored because CXG_AGENTSERVER_INTERNAL_URL is set",
        )
        self.assertEqual(
            self.failure(**remote, CXG_INBOUND_HMAC_SECRET="h" * 31),
            "CXG_INBOUND_HMAC_SECRET must be at least 32 bytes",
        )


class URLTests(ConfigCase):
    """
    The URL rows #3, #4 and #7 (acceptance item 4).
    """

    def test_schemes(self) -> None:
        """
        #3 takes C{ws}/C{wss}; #4 and #7 take C{http}/C{https}; other schemes fail with the exact
        text.
        """
        self.assertEqual(
            self.failure(CXG_EXEC_GATEWAY_URL="http://x"),
            'CXG_EXEC_GATEWAY_URL must use ws:// or wss:// scheme, got "http://x"',
        )
        self.assertEqual(self.load(CXG_EXEC_GATEWAY_URL="wss://x").exec_gateway_url, "wss://x")
        self.assertEqual(
            self.failure(CXG_EXEC_GATEWAY_INTERNAL_URL="wss://x"),
            'CXG_EXEC_GATEWAY_INTERNAL_URL must use http:// or https:// scheme, got "wss://x"',
        )
        self.assertEqual(
            self.load(CXG_EXEC_GATEWAY_INTERNAL_URL="https://x").exec_gateway_internal_url,
            "https://x",
        )

    def test_trailing_slash(self) -> None:
        """
        A trailing C{/} is dropped, so the bridge base never has C{//}.
        """
        config = self.load(
            CXG_EXEC_GATEWAY_URL="wss://gw.example/", CXG_EXEC_GATEWAY_INTERNAL_URL="http://gw:6060/"
        )
        self.assertEqual(config.exec_gateway_url, "wss://gw.example")
        self.assertEqual(config.bridge_base_url, "wss://gw.example/bridge")
        self.assertEqual(config.exec_gateway_internal_url, "http://gw:6060")


class ListenAddressTests(ConfigCase):
    """
    Row #1 and its option (acceptance item 8).
    """

    def test_accepted(self) -> None:
        """
        Wildcards, C{localhost} and loopback addresses, in the three forms, ports 0–65535.
        """
        for raw, host, port in (
            (":8086", "", 8086), ("0.0.0.0:1", "0.0.0.0", 1), ("[::]:0", "::", 0),  # noqa: S104
            ("localhost:80", "localhost", 80), ("LocalHost:80", "LocalHost", 80),
            ("127.0.0.1:65535", "127.0.0.1", 65535), ("127.5.5.5:9", "127.5.5.5", 9),
            ("[::1]:8086", "::1", 8086), ("[::ffff:127.0.0.1]:7", "::ffff:127.0.0.1", 7),
            (":08086", "", 8086),
        ):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(parse_listen_addr("CXG_LISTEN_ADDR", raw), ListenAddress(host, port))
                self.assertEqual(self.load(CXG_LISTEN_ADDR=raw).listen_addr, ListenAddress(host, port))

    def test_malformed(self) -> None:
        """
        Anything else than C{host:port}, C{:port} or C{[v6]:port} with a port 0–65535 fails with the
        exact text.
        """
        for raw in (
            "8086", "localhost", ":", "127.0.0.1:", ":65536", ":-1", ":+80", ": 80", ":80 ",
            ":123456", "::1:8086", "[::1]8086", "[::1]", "[localhost]:80", "[::1]:", "a:b:c",
            "[127.0.0.1]:80", ":८०",
        ):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.failure(CXG_LISTEN_ADDR=raw),
                    f'CXG_LISTEN_ADDR must be host:port, got "{raw}"',
                )

    def test_not_loopback(self) -> None:
        """
        A host that is neither a wildcard nor loopback fails with the exact text.
        """
        for raw in (
            "10.1.2.3:8086", "example.com:80", "[fe80::1]:80", "[::2]:1", "192.168.0.1:1",
            "128.0.0.1:1", "[::ffff:10.0.0.1]:1", "localhost.example:1",
        ):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.failure(CXG_LISTEN_ADDR=raw),
                    f'CXG_LISTEN_ADDR must bind a wildcard or loopback address, got "{raw}"',
                )

    def test_endpoint(self) -> None:
        """
        The Twisted endpoint of each kind of host.
        """
        for host, endpoint in (
            ("", "tcp:8086"), ("0.0.0.0", "tcp:8086"), ("::", "tcp6:8086:interface=\\:\\:"),  # noqa: S104
            ("localhost", "tcp:8086:interface=127.0.0.1"),
            ("127.0.0.1", "tcp:8086:interface=127.0.0.1"),
            ("::1", "tcp6:8086:interface=\\:\\:1"),
        ):  # fmt: skip
            with self.subTest(host=host):
                self.assertEqual(ListenAddress(host, 8086).endpoint, endpoint)

    def test_loopback_url(self) -> None:
        """
        env-mcp's base URL uses the bound port, C{127.0.0.1} unless the host names another
        loopback address (C{[::1]} for C{::1}).
        """
        for host, url in (
            ("", "http://127.0.0.1:40001"), ("0.0.0.0", "http://127.0.0.1:40001"),  # noqa: S104
            ("::", "http://127.0.0.1:40001"), ("localhost", "http://127.0.0.1:40001"),
            ("127.0.0.1", "http://127.0.0.1:40001"), ("127.5.5.5", "http://127.5.5.5:40001"),
            ("::1", "http://[::1]:40001"), ("::ffff:127.0.0.1", "http://127.0.0.1:40001"),
        ):  # fmt: skip
            with self.subTest(host=host):
                self.assertEqual(ListenAddress(host, 0).loopback_url(40001), url)

    def test_option_precedence(self) -> None:
        """
        The variable replaces C{--listen-addr} only when the option is at its default (not given,
        or given as C{:8086}); a given option wins otherwise; an empty variable does not count.
        """
        for option, variable, expected in (
            (None, "127.0.0.1:1", ListenAddress("127.0.0.1", 1)),
            (":8086", "127.0.0.1:1", ListenAddress("127.0.0.1", 1)),
            ("[::1]:2", "127.0.0.1:1", ListenAddress("::1", 2)),
            ("[::1]:2", None, ListenAddress("::1", 2)),
            (None, "", ListenAddress("", 8086)),
            ("[::1]:2", "", ListenAddress("::1", 2)),
        ):
            with self.subTest(option=option, variable=variable):
                config = self.load(listen_addr_option=option, CXG_LISTEN_ADDR=variable)
                self.assertEqual(config.listen_addr, expected)

    def test_option_validated(self) -> None:
        """
        An option value is validated like the variable, with the row's message.
        """
        with self.assertRaises(ConfigError) as caught:
            self.load(listen_addr_option="10.0.0.1:80")
        self.assertEqual(
            str(caught.exception),
            'CXG_LISTEN_ADDR must bind a wildcard or loopback address, got "10.0.0.1:80"',
        )

    def test_effective_value(self) -> None:
        """
        The precedence rule on its own.
        """
        self.assertEqual(effective_value(None, "d", ""), "d")
        self.assertEqual(effective_value(None, "d", "e"), "e")
        self.assertEqual(effective_value("d", "d", "e"), "e")
        self.assertEqual(effective_value("o", "d", "e"), "o")
        self.assertEqual(effective_value("o", "d", ""), "o")


class CodexBinTests(ConfigCase):
    """
    Row #2 and its option.
    """

    def test_path_lookup(self) -> None:
        """
        A name without C{/} is looked up on the environment's C{PATH} and stored absolute.
        """
        self.assertEqual(self.load(CXG_CODEX_BIN="codex").codex_bin, self.codex)
        other = _write_executable(os.path.join(self.bin, "codex-0.169"))
        self.assertEqual(self.load(CXG_CODEX_BIN="codex-0.169").codex_bin, other)

    def test_relative_path_entry(self) -> None:
        """
        A relative C{PATH} entry still yields an absolute binary path.
        """
        relative = self.mktemp()
        os.makedirs(relative)
        _write_executable(os.path.join(relative, "codex"))
        config = self.load(PATH=relative)
        self.assertEqual(config.codex_bin, os.path.abspath(os.path.join(relative, "codex")))

    def test_with_slash(self) -> None:
        """
        A value with C{/} is used as a path (not looked up), made absolute.
        """
        self.assertEqual(self.load(CXG_CODEX_BIN=self.codex).codex_bin, self.codex)
        relative = os.path.relpath(self.codex)
        self.assertEqual(self.load(CXG_CODEX_BIN=relative).codex_bin, self.codex)

    def test_not_found(self) -> None:
        """
        A missing, non-executable or directory binary fails with the exact text quoting the value.
        """
        for raw in (
            "no-such-codex", "plain", "codexdir", self.not_executable, self.directory,
            os.path.join(self.bin, "missing"), "./codex",
        ):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.failure(CXG_CODEX_BIN=raw),
                    f'codex binary "{raw}" not found or not executable',
                )

    def test_option_precedence(self) -> None:
        """
        The variable replaces C{--codex-bin} only when the option is at its default C{codex}.
        """
        other = _write_executable(os.path.join(self.bin, "codex2"))
        self.assertEqual(self.load(CXG_CODEX_BIN="codex2").codex_bin, other)
        self.assertEqual(self.load(codex_bin_option="codex", CXG_CODEX_BIN="codex2").codex_bin, other)
        self.assertEqual(
            self.load(codex_bin_option=self.codex, CXG_CODEX_BIN="codex2").codex_bin, self.codex
        )
        with self.assertRaises(ConfigError) as caught:
            self.load(codex_bin_option="nope")
        self.assertEqual(str(caught.exception), 'codex binary "nope" not found or not executable')


class DurationTests(ConfigCase):
    """
    Rows #17–#19 (acceptance item 6).
    """

    def test_values(self) -> None:
        """
        C{5m} → 300 s, C{1h30m} → 5400 s, C{100ms} → 0.1 s, C{1.5h} → 5400 s; C{0} disables idling.
        """
        for raw, seconds in (("5m", 300.0), ("1h30m", 5400.0), ("100ms", 0.1), ("1.5h", 5400.0)):
            with self.subTest(raw=raw):
                config = self.load(
                    CXG_IDLE_SHUTDOWN=raw, CXG_CAPTOKEN_TTL=raw, CXG_BROKER_POOL_IDLE_TTL=raw
                )
                self.assertEqual(config.idle_shutdown, seconds)
                self.assertEqual(config.captoken_ttl, seconds)
                self.assertEqual(config.broker_pool_idle_ttl, seconds)
        self.assertEqual(self.load(CXG_IDLE_SHUTDOWN="0").idle_shutdown, 0.0)

    def test_invalid(self) -> None:
        """
        C{abc}, C{5}, C{-5m} (and a few more) fail each duration row with C{<NAME>: invalid
        duration "<v>"}.
        """
        for name in ("CXG_IDLE_SHUTDOWN", "CXG_CAPTOKEN_TTL", "CXG_BROKER_POOL_IDLE_TTL"):
            for raw in ("abc", "5", "-5m", "5 m", "1d", "+1s"):
                with self.subTest(name=name, raw=raw):
                    self.assertEqual(self.failure(**{name: raw}), f'{name}: invalid duration "{raw}"')

    def test_captoken_ttl_zero(self) -> None:
        """
        C{CXG_CAPTOKEN_TTL=0} means one hour.
        """
        self.assertEqual(self.load(CXG_CAPTOKEN_TTL="0").captoken_ttl, 3600.0)

    def test_pool_ttl_positive(self) -> None:
        """
        C{CXG_BROKER_POOL_IDLE_TTL} of C{0} (or C{0s}) fails with its exact text.
        """
        for raw in ("0", "0s", "0ms"):
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.failure(CXG_BROKER_POOL_IDLE_TTL=raw),
                    "CXG_BROKER_POOL_IDLE_TTL must be positive",
                )


class IntegerTests(ConfigCase):
    """
    Rows #20–#22 (acceptance item 7).
    """

    def test_invalid(self) -> None:
        """
        C{0}, C{-1}, C{x} and friends fail with C{<NAME> must be a positive integer, got "<v>"}.
        """
        for name in ("CXG_MAX_SPAWNS", "CXG_SPAWN_CONCURRENCY", "CXG_CLIENT_BUFFER_BYTES"):
            for raw in ("0", "-1", "x", "1.5", " 1", "9" * 25):
                with self.subTest(name=name, raw=raw):
                    self.assertEqual(
                        self.failure(**{name: raw}),
                        f'{name} must be a positive integer, got "{raw}"',
                    )

    def test_values(self) -> None:
        """
        Positive integers are taken.
        """
        config = self.load(
            CXG_MAX_SPAWNS="2", CXG_SPAWN_CONCURRENCY="1", CXG_CLIENT_BUFFER_BYTES="1048576"
        )
        self.assertEqual(
            (config.max_spawns, config.spawn_concurrency, config.client_buffer_bytes), (2, 1, 1 << 20)
        )


class StoreRowsTests(ConfigCase):
    """
    Rows #10–#16 as part of the whole table (acceptance items 3, 4, 7).
    """

    def test_bucket_required(self) -> None:
        """
        C{CXG_S3_ENDPOINT} without a bucket → C{CXG_S3_BUCKET is required}.
        """
        self.assertEqual(self.failure(CXG_S3_ENDPOINT="http://minio:9000"), "CXG_S3_BUCKET is required")

    def test_endpoint_scheme(self) -> None:
        """
        C{CXG_S3_ENDPOINT=minio:9000} fails with a message about the scheme.
        """
        self.assertIn("scheme", self.failure(CXG_S3_ENDPOINT="minio:9000", CXG_S3_BUCKET="b"))

    def test_keys_together(self) -> None:
        """
        One S3 key without the other fails.
        """
        for name in ("CXG_S3_ACCESS_KEY_ID", "CXG_S3_SECRET_ACCESS_KEY"):
            with self.subTest(name=name):
                self.assertEqual(
                    self.failure(**{name: "k"}),
                    "CXG_S3_ACCESS_KEY_ID and CXG_S3_SECRET_ACCESS_KEY must be set together",
                )

    def test_s3(self) -> None:
        """
        A full S3 setting lands in L{AppGatewayConfig.store}.
        """
        config = self.load(
            CXG_S3_ENDPOINT="http://minio:9000",
            CXG_S3_BUCKET="homes",
            CXG_S3_REGION="eu-west-3",
            CXG_S3_PATH_STYLE="TRUE",
            CXG_TMP_ROOT="homes",
            CXG_MAX_SNAPSHOT_BYTES="1024",
        )
        self.assertTrue(config.store.uses_s3)
        self.assertEqual(config.store.s3_bucket, "homes")
        self.assertEqual(config.store.s3_region, "eu-west-3")
        self.assertTrue(config.store.s3_path_style)
        self.assertEqual(config.store.tmp_root, os.path.join(os.getcwd(), "homes"))
        self.assertEqual(config.store.max_snapshot_bytes, 1024)


class ListRowsTests(ConfigCase):
    """
    Rows #23 and #30.
    """

    def test_trusted_paths(self) -> None:
        """
        C{"/workspace, /data, "} → C{["/workspace","/data"]}; a list with no entries → C{["/tmp"]}
        (acceptance item 2).
        """
        self.assertEqual(
            self.load(CXG_PROJECT_TRUSTED_PATHS="/workspace, /data, ").project_trusted_paths,
            ("/workspace", "/data"),
        )
        for raw in (" , ,", ",", " "):
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.load(CXG_PROJECT_TRUSTED_PATHS=raw).project_trusted_paths, ("/tmp",)
                )

    def test_allowed_origins(self) -> None:
        """
        Entries are trimmed, empty ones dropped, and compared ignoring case.
        """
        config = self.load(CXG_ALLOWED_ORIGINS=" https://App.Example ,, http://localhost:3000,")
        self.assertEqual(config.allowed_origins, ("https://app.example", "http://localhost:3000"))
        self.assertTrue(config.origin_allowed("https://app.example"))
        self.assertTrue(config.origin_allowed("HTTPS://APP.EXAMPLE"))
        self.assertTrue(config.origin_allowed("http://localhost:3000"))
        self.assertFalse(config.origin_allowed("https://evil.example"))
        self.assertFalse(config.origin_allowed("http://localhost:3001"))
        self.assertFalse(self.load().origin_allowed("https://app.example"))


class ProviderRowsTests(ConfigCase):
    """
    Rows #24–#29.
    """

    def test_values(self) -> None:
        """
        The provider texts are taken as they are; the static key is kept.
        """
        config = self.load(
            CXG_MODEL_PROVIDER="my.provider",
            CXG_MODEL="m",
            CXG_MODEL_PROVIDER_BASE_URL="http://fake:1/v1",
            CXG_MODEL_PROVIDER_ENV_KEY="_KEY_2",
            CXG_MODEL_PROVIDER_WIRE_API="responses",
            CXG_CODEX_API_KEY="k",
        )
        self.assertEqual(
            (config.model_provider, config.model, config.model_provider_base_url),
            ("my.provider", "m", "http://fake:1/v1"),
        )
        self.assertEqual(config.model_provider_env_key, "_KEY_2")
        self.assertEqual(config.codex_api_key, "k")

    def test_env_key(self) -> None:
        """
        The env key must be a variable name.
        """
        for raw in ("1KEY", "MY-KEY", "MY KEY", "KEY=", "É"):
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.failure(CXG_MODEL_PROVIDER_ENV_KEY=raw),
                    f'CXG_MODEL_PROVIDER_ENV_KEY must be an environment variable name, got "{raw}"',
                )


class EnvMcpCommandTests(ConfigCase):
    """
    Row #31.
    """

    def test_set(self) -> None:
        """
        An absolute path to an executable file is taken.
        """
        other = _write_executable(os.path.join(self.bin, "my-codexgw"))
        self.assertEqual(self.load(CXG_ENV_MCP_COMMAND=other).env_mcp_command, other)

    def test_set_invalid(self) -> None:
        """
        A relative path, a missing file, a non-executable file or a directory fails.
        """
        for raw in (
            "codexgw", "bin/codexgw", self.not_executable, self.directory,
            os.path.join(self.bin, "missing"),
        ):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(
                    self.failure(CXG_ENV_MCP_COMMAND=raw),
                    f'CXG_ENV_MCP_COMMAND must be an absolute path to an executable, got "{raw}"',
                )

    def test_beside_interpreter(self) -> None:
        """
        Unset: C{codexgw} beside the interpreter wins over C{PATH}.
        """
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        beside = _write_executable(os.path.join(elsewhere, "codexgw"))
        config = load_config(self.environ(), executable=os.path.join(elsewhere, "python3"))
        self.assertEqual(config.env_mcp_command, beside)

    def test_on_path(self) -> None:
        """
        Unset, with no script beside the interpreter: the one on C{PATH}, made absolute.
        """
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        config = load_config(self.environ(), executable=os.path.join(empty, "python3"))
        self.assertEqual(config.env_mcp_command, self.codexgw)
        relative = self.mktemp()
        os.makedirs(relative)
        _write_executable(os.path.join(relative, "codex"))
        script = _write_executable(os.path.join(relative, "codexgw"))
        config = load_config(self.environ(PATH=relative), executable=os.path.join(empty, "python3"))
        self.assertEqual(config.env_mcp_command, os.path.abspath(script))

    def test_not_found(self) -> None:
        """
        Unset and found nowhere: the exact text.
        """
        empty = os.path.abspath(self.mktemp())
        os.makedirs(empty)
        _write_executable(os.path.join(empty, "codex"))
        with self.assertRaises(ConfigError) as caught:
            load_config(self.environ(PATH=empty), executable=os.path.join(empty, "python3"))
        self.assertEqual(
            str(caught.exception),
            "cannot locate the codexgw console script; set CXG_ENV_MCP_COMMAND",
        )


class LogLevelTests(ConfigCase):
    """
    Row #32.
    """

    def test_levels(self) -> None:
        """
        The four levels in any case; anything else is C{info}.
        """
        for raw, level in (
            ("debug", "debug"), ("INFO", "info"), ("Warn", "warn"), ("error", "error"),
            ("warning", "info"), ("trace", "info"), ("", "info"),
        ):  # fmt: skip
            with self.subTest(raw=raw):
                self.assertEqual(self.load(CXG_LOG_LEVEL=raw).log_level, level)


class OrderTests(ConfigCase):
    """
    Rows are validated in table order and the first failure wins.
    """

    def test_bad_values(self) -> None:
        """
        Each failing example fails alone with its exact message.
        """
        for name, raw, message in BAD_VALUES:
            with self.subTest(name=name, raw=raw):
                overrides: dict[str, str | None] = {name: raw}
                if name == "CXG_AGENTSERVER_INTERNAL_SECRET":
                    overrides["CXG_AGENTSERVER_INTERNAL_URL"] = "http://agentserver"
                self.assertEqual(self.failure(**overrides), message)

    def test_bad_values_cover_table(self) -> None:
        """
        The examples follow the table's order and cover every row with a rule of its own.
        """
        names = [name for name, _, _ in BAD_VALUES]
        self.assertEqual(names, sorted(names, key=TABLE_ORDER.index))
        never_fail = {
            "CXG_S3_BUCKET", "CXG_S3_REGION", "CXG_S3_PATH_STYLE", "CXG_OBJECT_DIR", "CXG_TMP_ROOT",
            "CXG_ALLOWED_ORIGINS", "CXG_MODEL_PROVIDER", "CXG_MODEL", "CXG_MODEL_PROVIDER_BASE_URL",
            "CXG_MODEL_PROVIDER_WIRE_API", "CXG_CODEX_API_KEY", "CXG_PROJECT_TRUSTED_PATHS",
            "CXG_LOG_LEVEL",
        }  # fmt: skip
        self.assertEqual(set(names) | never_fail, set(TABLE_ORDER))

    def test_first_failure_wins(self) -> None:
        """
        With a bad value in every row that can fail, fixing the rows one by one reveals the failures
        in table order (the cross-row rules at their own rows).
        """
        environ = {
            "CXG_LISTEN_ADDR": "10.1.2.3:8086",
            "CXG_CODEX_BIN": "no-such-codex",
            "CXG_AGENTSERVER_INTERNAL_URL": "ftp://x",
            "CXG_INBOUND_HMAC_SECRET": "h" * 31,
            "CXG_S3_ENDPOINT": "minio:9000",
            "CXG_S3_ACCESS_KEY_ID": "only-one",
            "CXG_MAX_SNAPSHOT_BYTES": "0",
            "CXG_IDLE_SHUTDOWN": "abc",
            "CXG_CAPTOKEN_TTL": "-5m",
            "CXG_BROKER_POOL_IDLE_TTL": "0",
            "CXG_MAX_SPAWNS": "0",
            "CXG_SPAWN_CONCURRENCY": "x",
            "CXG_CLIENT_BUFFER_BYTES": "-1",
            "CXG_MODEL_PROVIDER_ENV_KEY": "1KEY",
            "CXG_ENV_MCP_COMMAND": "codexgw",
            "PATH": self.bin,
        }
        steps: list[tuple[str, dict[str, str | None]]] = [
            ('CXG_LISTEN_ADDR must bind a wildcard or loopback address, got "10.1.2.3:8086"',
             {"CXG_LISTEN_ADDR": None}),
            ('codex binary "no-such-codex" not found or not executable', {"CXG_CODEX_BIN": None}),
            ("CXG_EXEC_GATEWAY_URL is required", {"CXG_EXEC_GATEWAY_URL": "ws://gw"}),
            ("CXG_EXEC_GATEWAY_INTERNAL_URL is required",
             {"CXG_EXEC_GATEWAY_INTERNAL_URL": "http://gw"}),
            ("CXG_EXEC_GATEWAY_INTERNAL_SECRET is required",
             {"CXG_EXEC_GATEWAY_INTERNAL_SECRET": "e" * 32}),
            ("CXG_CAPTOKEN_HMAC_SECRET is required", {"CXG_CAPTOKEN_HMAC_SECRET": "c" * 32}),
            ('CXG_AGENTSERVER_INTERNAL_URL must use http:// or https:// scheme, got "ftp://x"',
             {"CXG_AGENTSERVER_INTERNAL_URL": "http://agentserver"}),
            ("CXG_AGENTSERVER_INTERNAL_SECRET is required when CXG_AGENTSERVER_INTERNAL_URL is set",
             {"CXG_AGENTSERVER_INTERNAL_SECRET": "a" * 32}),
            ("CXG_INBOUND_HMAC_SECRET must be at least 32 bytes", {"CXG_INBOUND_HMAC_SECRET": None}),
            ('CXG_S3_ENDPOINT must use http:// or https:// scheme, got "minio:9000"',
             {"CXG_S3_ENDPOINT": "http://minio:9000"}),
            ("CXG_S3_BUCKET is required", {"CXG_S3_BUCKET": "b"}),
            ("CXG_S3_ACCESS_KEY_ID and CXG_S3_SECRET_ACCESS_KEY must be set together",
             {"CXG_S3_SECRET_ACCESS_KEY": "s"}),
            ('CXG_MAX_SNAPSHOT_BYTES must be a positive integer, got "0"',
             {"CXG_MAX_SNAPSHOT_BYTES": None}),
            ('CXG_IDLE_SHUTDOWN: invalid duration "abc"', {"CXG_IDLE_SHUTDOWN": None}),
            ('CXG_CAPTOKEN_TTL: invalid duration "-5m"', {"CXG_CAPTOKEN_TTL": None}),
            ("CXG_BROKER_POOL_IDLE_TTL must be positive", {"CXG_BROKER_POOL_IDLE_TTL": None}),
            ('CXG_MAX_SPAWNS must be a positive integer, got "0"', {"CXG_MAX_SPAWNS": None}),
            ('CXG_SPAWN_CONCURRENCY must be a positive integer, got "x"',
             {"CXG_SPAWN_CONCURRENCY": None}),
            ('CXG_CLIENT_BUFFER_BYTES must be a positive integer, got "-1"',
             {"CXG_CLIENT_BUFFER_BYTES": None}),
            ('CXG_MODEL_PROVIDER_ENV_KEY must be an environment variable name, got "1KEY"',
             {"CXG_MODEL_PROVIDER_ENV_KEY": None}),
            ('CXG_ENV_MCP_COMMAND must be an absolute path to an executable, got "codexgw"',
             {"CXG_ENV_MCP_COMMAND": None}),
        ]  # fmt: skip
        for message, fixes in steps:
            with self.assertRaises(ConfigError) as caught:
                load_config(environ, executable=self.python)
            self.assertEqual(str(caught.exception), message)
            for name, value in fixes.items():
                if value is None:
                    del environ[name]
                else:
                    environ[name] = value
        config = load_config(environ, executable=self.python)
        self.assertEqual(config.auth_mode, "remote")
        self.assertTrue(config.store.uses_s3)


class TableTests(SynchronousTestCase):
    """
    The documentation table and the parser come from one definition.
    """

    def test_order(self) -> None:
        """
        The rows are §2's in order, with storeconfig's rows (and the snapshot limit) in place.
        """
        self.assertEqual(tuple(row.name for row in VARIABLES), TABLE_ORDER)
        start = TABLE_ORDER.index("CXG_S3_ENDPOINT")
        self.assertEqual(VARIABLES[start : start + len(STORE_VARIABLES)], STORE_VARIABLES)

    def test_documentation(self) -> None:
        """
        L{CONFIG_VARIABLES} gives each row's default (as §2 writes it) and requiredness, with a
        description.
        """
        defaults = {name: (default, required) for name, default, required, _ in CONFIG_VARIABLES}
        self.assertEqual(
            defaults,
            {
                "CXG_LISTEN_ADDR": (":8086", False),
                "CXG_CODEX_BIN": ("codex", False),
                "CXG_EXEC_GATEWAY_URL": (None, True),
                "CXG_EXEC_GATEWAY_INTERNAL_URL": (None, True),
                "CXG_EXEC_GATEWAY_INTERNAL_SECRET": (None, True),
                "CXG_CAPTOKEN_HMAC_SECRET": (None, True),
                "CXG_AGENTSERVER_INTERNAL_URL": (None, False),
                "CXG_AGENTSERVER_INTERNAL_SECRET": (None, False),
                "CXG_INBOUND_HMAC_SECRET": (None, False),
                "CXG_S3_ENDPOINT": (None, False),
                "CXG_S3_BUCKET": (None, False),
                "CXG_S3_REGION": ("us-east-1", False),
                "CXG_S3_ACCESS_KEY_ID": (None, False),
                "CXG_S3_SECRET_ACCESS_KEY": (None, False),
                "CXG_S3_PATH_STYLE": ("false", False),
                "CXG_OBJECT_DIR": ("./var/objects", False),
                "CXG_TMP_ROOT": ("/tmp/codex-app-gateway", False),
                "CXG_MAX_SNAPSHOT_BYTES": ("1073741824", False),
                "CXG_IDLE_SHUTDOWN": ("30m", False),
                "CXG_CAPTOKEN_TTL": ("24h", False),
                "CXG_BROKER_POOL_IDLE_TTL": ("5m", False),
                "CXG_MAX_SPAWNS": ("64", False),
                "CXG_SPAWN_CONCURRENCY": ("4", False),
                "CXG_CLIENT_BUFFER_BYTES": ("67108864", False),
                "CXG_ALLOWED_ORIGINS": ("", False),
                "CXG_MODEL_PROVIDER": ("modelserver", False),
                "CXG_MODEL": ("gpt-5.5", False),
                "CXG_MODEL_PROVIDER_BASE_URL": ("http://llmproxy:8085/v1", False),
                "CXG_MODEL_PROVIDER_ENV_KEY": ("CODEX_API_KEY", False),
                "CXG_MODEL_PROVIDER_WIRE_API": ("responses", False),
                "CXG_CODEX_API_KEY": (None, False),
                "CXG_PROJECT_TRUSTED_PATHS": ("/tmp", False),
                "CXG_ENV_MCP_COMMAND": ("", False),
                "CXG_LOG_LEVEL": ("info", False),
            },
        )
        for name, _, _, description in CONFIG_VARIABLES:
            with self.subTest(name=name):
                self.assertTrue(description)

    def test_attributes(self) -> None:
        """
        L{AppGatewayConfig} has one attribute per row outside the store rows, in table order, then
        the store and the warnings.
        """
        store = {row.name for row in STORE_VARIABLES}
        own = [row.attribute for row in VARIABLES if row.name not in store]
        self.assertEqual(
            [f.name for f in dataclasses.fields(AppGatewayConfig)],
            [*own[:9], "store", *own[9:], "warnings"],
        )


class ListenAddressPropertyTests(SynchronousTestCase):
    """
    Any text given as C{CXG_LISTEN_ADDR} either parses to an allowed address or fails with one of
    the row's two messages — never another error.
    """

    @given(st.text())
    @settings(max_examples=300)
    def test_any_text(self, raw: str) -> None:
        """
        Arbitrary text.
        """
        self.check(raw)

    @given(
        st.sampled_from(
            ["", "0.0.0.0", "[::]", "localhost", "127.0.0.1", "[::1]", "10.0.0.1", "[x]"]  # noqa: S104
        ),
        st.text(alphabet="0123456789-+ ", max_size=7),
    )
    def test_host_port(self, host: str, port: str) -> None:
        """
        Near-valid C{host:port} combinations.
        """
        self.check(f"{host}:{port}")

    def check(self, raw: str) -> None:
        """
        The parse of C{raw} is an allowed address or one of the two row messages.
        """
        try:
            address = parse_listen_addr("CXG_LISTEN_ADDR", raw)
        except ConfigError as e:
            self.assertIn(
                str(e),
                (
                    f'CXG_LISTEN_ADDR must be host:port, got "{raw}"',
                    f'CXG_LISTEN_ADDR must bind a wildcard or loopback address, got "{raw}"',
                ),
            )
            return
        self.assertTrue(0 <= address.port <= 65535)
        self.assertTrue(
            address.host in ("", "0.0.0.0", "::")  # noqa: S104
            or address.host.lower() == "localhost"
            or is_loopback_address(address.host)
        )
