"""
The app gateway's configuration: the C{CXG_*} table of C{app-gateway.md} §2.

One table (L{variables}) drives validation (L{load_config}, in table order, first failure wins) and
documentation (L{CONFIG_VARIABLES}); rows #10–#16 and the snapshot size limit are
L{codexgw.appgw.storeconfig.STORE_VARIABLES}, included at their place, and end up together in
L{AppGatewayConfig.store}. Every other row's attribute is its name without C{CXG_}, lowercased.

C{CXG_LISTEN_ADDR} and C{CXG_CODEX_BIN} also have C{twist} options (C{--listen-addr},
C{--codex-bin}); the environment value replaces the option's only when the option was left at its
default. Each is then validated as the row says, whichever source it came from, with the row's
message.

Checking that the codex binary reports the pinned version (§2 #2) is a startup action, not parsing:
L{codexgw.appgw.codexversion}.

Decisions where the spec is silent:
 - "Left at its default" means the option was not given or was given its default value: both mean
   the operator expressed no other choice, and C{usage.Options} cannot tell them apart anyway.
 - C{CXG_LISTEN_ADDR}: the port is 1–5 decimal digits with a value ≤ 65535; a bracketed host must be
   an IPv6 literal (C{[localhost]:1} is malformed) and an unbracketed host may not contain C{:}. The
   allowed hosts compare C{localhost} ignoring case; loopback addresses are those of the §3.1
   classification (C{127.0.0.0/8}, C{::1}, C{::ffff:127.x.x.x}).
 - The listen endpoint (L{ListenAddress.endpoint}): an empty host and C{0.0.0.0} listen on every IPv4
   interface (C{tcp:<port>}, which works on hosts without IPv6), C{::} on the IPv6 wildcard
   (dual-stack where the system allows it), C{localhost} on C{127.0.0.1}, an address on itself.
 - The loopback URL handed to env-mcp (§5.10) is C{http://127.0.0.1:<port>} as the spec says, except
   that a listen host naming one IPv6 or IPv4 loopback address other than C{127.0.0.1} is used
   itself (C{http://[::1]:<port>}, C{http://127.5.5.5:<port>}): the gateway listens nowhere else.
 - C{CXG_CODEX_BIN} and C{CXG_ENV_MCP_COMMAND} are stored as absolute paths (the supervisor may
   start codex in another directory); C{PATH} is the one of the environment given to L{load_config}.
   C{CXG_CODEX_BIN} is checked with symlinks followed: a link to an executable file is fine.
 - C{CXG_INBOUND_HMAC_SECRET} follows the secret rule (≥ 32 bytes) whenever it is set, as in every
   other program (C{delivery.md} §3); when C{CXG_AGENTSERVER_INTERNAL_URL} is also set it is then
   dropped (the attribute is C{None}) and L{AppGatewayConfig.warnings} carries the warning the
   service logs.
 - C{CXG_CAPTOKEN_TTL} of C{0} is stored as 3600 s, so users never re-apply the rule.
 - C{CXG_ALLOWED_ORIGINS} entries are stored lowercased and otherwise unchecked (an entry that is
   not an origin simply never matches); L{AppGatewayConfig.origin_allowed} compares a lowercased
   C{Origin} against them.
 - C{CXG_MODEL_PROVIDER_BASE_URL} and the other provider texts have no rule and are taken as they
   are; C{CXG_CODEX_API_KEY} has no length rule (it is the provider's key, whatever its form) and is
   never shown by C{repr}.
 - C{CXG_PROJECT_TRUSTED_PATHS} entries are kept as written (trimmed), duplicates included; the
   config renderer writes a duplicate once.
 - C{CXG_LOG_LEVEL} is stored lowercased; any other value is stored as C{info}.
 - Integers are read as everywhere in codexgw: decimal, at most 2**63 − 1.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from codexgw.appgw.codexhome import ProviderSettings
from codexgw.appgw.configtable import positive_integer, text
from codexgw.appgw.loopback import is_loopback_address
from codexgw.appgw.storeconfig import STORE_VARIABLES, ObjectStoreConfig
from codexgw.config import (
    ConfigError,
    Secret,
    Variable,
    documentation,
    load_variables,
    parse_duration,
    secret_row,
    url_row,
)

#: The values of C{CXG_LOG_LEVEL} after normalisation.
LogLevel = Literal["debug", "info", "warn", "error"]
#: How TUI bearers are verified: remotely by agentserver (§4.3) or as HMAC tokens (§4.2).
AuthMode = Literal["remote", "hmac"]

#: The option defaults of the C{codexgw-app} plugin (also the rows' defaults).
DEFAULT_LISTEN_ADDR: Final = ":8086"
DEFAULT_CODEX_BIN: Final = "codex"
#: What C{CXG_CAPTOKEN_TTL=0} means, in seconds.
ZERO_CAPTOKEN_TTL: Final = 3600.0
#: The trusted paths when C{CXG_PROJECT_TRUSTED_PATHS} lists none.
DEFAULT_TRUSTED_PATHS: Final = ("/tmp",)  # noqa: S108 - the spec's default
#: The console script env-mcp is started through.
CONSOLE_SCRIPT: Final = "codexgw"
#: The warning logged when C{CXG_INBOUND_HMAC_SECRET} is set but unused.
UNUSED_INBOUND_HMAC_WARNING: Final = (
    "CXG_INBOUND_HMAC_SECRET is ignored because CXG_AGENTSERVER_INTERNAL_URL is set"
)

_LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("debug", "info", "warn", "error")
_HTTP: Final = ("http://", "https://")
_WS: Final = ("ws://", "wss://")
_PORT = re.compile(r"[0-9]{1,5}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_PORT: Final = 65535
_WILDCARD_HOSTS: Final = ("", "0.0.0.0", "::")  # noqa: S104 - the spec's allowed binds


# -------------------------------------------------------------------------------------------------
# The listen address


@dataclass(frozen=True)
class ListenAddress:
    """
    C{CXG_LISTEN_ADDR} parsed.

    @ivar host: the host as written, without brackets (C{""} for every interface).
    @ivar port: the port; 0 asks for an ephemeral one (tests).
    """

    host: str
    port: int

    @property
    def endpoint(self) -> str:
        """
        The Twisted server endpoint description to listen on.
        """
        if self.host in ("", "0.0.0.0"):  # noqa: S104 - the spec's allowed binds
            return f"tcp:{self.port}"
        if self.host.lower() == "localhost":
            return f"tcp:{self.port}:interface=127.0.0.1"
        if ":" in self.host:
            escaped = self.host.replace(":", "\\:")  # endpoint descriptions escape colons
            return f"tcp6:{self.port}:interface={escaped}"
        return f"tcp:{self.port}:interface={self.host}"

    def loopback_url(self, bound_port: int) -> str:
        """
        The base URL env-mcp reaches this listener at over loopback (§5.10).

        @param bound_port: the port actually bound (differs from L{port} when that is 0).
        """
        if is_loopback_address(self.host):
            address = ipaddress.ip_address(self.host)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is None:
                return f"http://[{self.host}]:{bound_port}"
            if isinstance(address, ipaddress.IPv4Address):
                return f"http://{self.host}:{bound_port}"
        return f"http://127.0.0.1:{bound_port}"


def parse_listen_addr(name: str, raw: str) -> ListenAddress:
    """
    Parse C{host:port}, C{:port} or C{[v6]:port} and check that the host is a wildcard or loopback.

    @raise ConfigError: C{<NAME> must be host:port, got "<v>"} or C{<NAME> must bind a wildcard or
        loopback address, got "<v>"}.
    """
    malformed = ConfigError(f'{name} must be host:port, got "{raw}"')
    if raw.startswith("["):
        host, bracket, port = raw[1:].partition("]:")
        if not bracket:
            raise malformed
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise malformed from None
    else:
        host, colon, port = raw.rpartition(":")
        if not colon or ":" in host:
            raise malformed
    if not _PORT.fullmatch(port) or int(port) > _MAX_PORT:
        raise malformed
    if host not in _WILDCARD_HOSTS and host.lower() != "localhost" and not is_loopback_address(host):
        raise ConfigError(f'{name} must bind a wildcard or loopback address, got "{raw}"')
    return ListenAddress(host, int(port))


# -------------------------------------------------------------------------------------------------
# Parsers of single rows


def _is_executable_file(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_codex_bin(raw: str, search_path: str | None) -> str | None:
    """
    Resolve C{CXG_CODEX_BIN}: through C{search_path} (a C{PATH} value; the process's when C{None})
    unless it contains C{/}.

    @return: the absolute path of an executable file, or C{None}.
    """
    path = raw if "/" in raw else shutil.which(raw, path=search_path)
    if path is None or not _is_executable_file(path):
        return None
    return os.path.abspath(path)


def find_env_mcp_command(executable: str, search_path: str | None) -> str | None:
    """
    Locate the C{codexgw} console script: next to C{executable} (the interpreter, so a virtualenv's
    own script wins), else on C{search_path}.

    @return: its absolute path, or C{None}.
    """
    beside = os.path.join(os.path.dirname(executable), CONSOLE_SCRIPT)
    if os.path.isabs(beside) and _is_executable_file(beside):
        return beside
    found = shutil.which(CONSOLE_SCRIPT, path=search_path)
    return None if found is None else os.path.abspath(found)


def _duration(name: str, raw: str) -> float:
    return parse_duration(name, raw)


def _captoken_ttl(name: str, raw: str) -> float:
    value = parse_duration(name, raw)
    return value if value > 0 else ZERO_CAPTOKEN_TTL


def _positive_duration(name: str, raw: str) -> float:
    value = parse_duration(name, raw)
    if value <= 0:
        raise ConfigError(f"{name} must be positive")
    return value


def _comma_list(raw: str) -> list[str]:
    return [entry.strip() for entry in raw.split(",") if entry.strip()]


def _origins(name: str, raw: str) -> tuple[str, ...]:
    return tuple(entry.lower() for entry in _comma_list(raw))


def _env_key(name: str, raw: str) -> str:
    if not _ENV_NAME.fullmatch(raw):
        raise ConfigError(f'{name} must be an environment variable name, got "{raw}"')
    return raw


def _trusted_paths(name: str, raw: str) -> tuple[str, ...]:
    return tuple(_comma_list(raw)) or DEFAULT_TRUSTED_PATHS


def _log_level(name: str, raw: str) -> LogLevel:
    for level in _LOG_LEVELS:
        if raw.lower() == level:
            return level
    return "info"


def _agentserver_secret_required(values: Mapping[str, Any]) -> None:
    if values["agentserver_internal_url"] is not None and values["agentserver_internal_secret"] is None:
        raise ConfigError(
            "CXG_AGENTSERVER_INTERNAL_SECRET is required when CXG_AGENTSERVER_INTERNAL_URL is set"
        )


def _inbound_secret_required(values: Mapping[str, Any]) -> None:
    if values["agentserver_internal_url"] is None and values["inbound_hmac_secret"] is None:
        raise ConfigError(
            "CXG_INBOUND_HMAC_SECRET is required when CXG_AGENTSERVER_INTERNAL_URL is unset"
        )


def variables(search_path: str | None = None, executable: str = sys.executable) -> tuple[Variable, ...]:
    """
    The table of §2 in its order (which is the validation order).

    @param search_path: the C{PATH} that C{CXG_CODEX_BIN} and the C{codexgw} script are looked up
        in; the process's when C{None}.
    @param executable: the Python interpreter, beside which the C{codexgw} script is looked for.
    """

    def codex_bin(name: str, raw: str) -> str:
        found = find_codex_bin(raw, search_path)
        if found is None:
            raise ConfigError(f'codex binary "{raw}" not found or not executable')
        return found

    def env_mcp_command(name: str, raw: str) -> str:
        # The row's default is "", so an unset variable reaches this parser and is auto-detected.
        if raw:
            if not os.path.isabs(raw) or not _is_executable_file(raw):
                raise ConfigError(f'{name} must be an absolute path to an executable, got "{raw}"')
            return raw
        found = find_env_mcp_command(executable, search_path)
        if found is None:
            raise ConfigError("cannot locate the codexgw console script; set CXG_ENV_MCP_COMMAND")
        return found

    return (
        Variable("CXG_LISTEN_ADDR", DEFAULT_LISTEN_ADDR, False,
                 "`host:port`, `:port` or `[v6]:port`, port 0–65535; the host must be empty, "
                 "`0.0.0.0`, `::`, `localhost` or a loopback address. Replaces `--listen-addr` only "
                 "when that option is left at its default.",
                 parse_listen_addr),
        Variable("CXG_CODEX_BIN", DEFAULT_CODEX_BIN, False,
                 "The codex binary: looked up on `PATH` unless it contains `/`; must be an executable "
                 "file. Its `--version` should report 0.169.0 (else a warning). Replaces `--codex-bin` "
                 "only when that option is left at its default.",
                 codex_bin),
        Variable("CXG_EXEC_GATEWAY_URL", None, True,
                 "URL `ws://`/`wss://` of the exec gateway; env-mcp's bridge base is this plus "
                 "`/bridge`.",
                 url_row(*_WS)),
        Variable("CXG_EXEC_GATEWAY_INTERNAL_URL", None, True,
                 "URL `http://`/`https://` of the exec gateway's internal API.",
                 url_row(*_HTTP)),
        Variable("CXG_EXEC_GATEWAY_INTERNAL_SECRET", None, True,
                 "Secret ≥ 32 bytes; the exec gateway's `CXG_INTERNAL_SHARED_SECRET`, sent as "
                 "`Authorization: Bearer`.",
                 secret_row),
        Variable("CXG_CAPTOKEN_HMAC_SECRET", None, True,
                 "Secret ≥ 32 bytes; signs cap tokens (the exec gateway's value).",
                 secret_row),
        Variable("CXG_AGENTSERVER_INTERNAL_URL", None, False,
                 "URL `http://`/`https://`. Set → TUI bearers are verified by agentserver and the "
                 "per-workspace LLM token is fetched; unset → HMAC inbound tokens.",
                 url_row(*_HTTP)),
        Variable("CXG_AGENTSERVER_INTERNAL_SECRET", None, False,
                 "Secret ≥ 32 bytes; required when `CXG_AGENTSERVER_INTERNAL_URL` is set. Sent as "
                 "`X-Internal-Secret`; also what `POST /api/turns` callers present.",
                 secret_row, _agentserver_secret_required),
        Variable("CXG_INBOUND_HMAC_SECRET", None, False,
                 "Secret ≥ 32 bytes; required when `CXG_AGENTSERVER_INTERNAL_URL` is unset (HMAC "
                 "inbound tokens), ignored with a warning when it is set.",
                 secret_row, _inbound_secret_required),
        *STORE_VARIABLES,
        Variable("CXG_IDLE_SHUTDOWN", "30m", False,
                 "Duration; an app-server without activity for this long is stopped; `0` disables "
                 "idle reaping.",
                 _duration),
        Variable("CXG_CAPTOKEN_TTL", "24h", False,
                 "Duration; lifetime of minted cap tokens; `0` means 1h.",
                 _captoken_ttl),
        Variable("CXG_BROKER_POOL_IDLE_TTL", "5m", False,
                 "Duration > 0; an idle Turn API connection to an app-server is closed after this.",
                 _positive_duration),
        Variable("CXG_MAX_SPAWNS", "64", False,
                 "Integer ≥ 1; live app-server processes at most.",
                 positive_integer),
        Variable("CXG_SPAWN_CONCURRENCY", "4", False,
                 "Integer ≥ 1; spawns in progress at once.",
                 positive_integer),
        Variable("CXG_CLIENT_BUFFER_BYTES", "67108864", False,
                 "Integer ≥ 1; a TUI's outbound backlog bound (beyond → close 1008 `slow consumer`).",
                 positive_integer),
        Variable("CXG_ALLOWED_ORIGINS", "", False,
                 "Comma-separated exact origins (`scheme://host[:port]`), compared ignoring case; "
                 "empty = every upgrade carrying `Origin` is refused.",
                 _origins),
        Variable("CXG_MODEL_PROVIDER", "modelserver", False,
                 "Provider id written to `config.toml`.",
                 text),
        Variable("CXG_MODEL", "gpt-5.5", False,
                 "The model codex uses.",
                 text),
        Variable("CXG_MODEL_PROVIDER_BASE_URL", "http://llmproxy:8085/v1", False,
                 "Provider base URL; codex calls `POST <base>/responses` (SSE).",
                 text),
        Variable("CXG_MODEL_PROVIDER_ENV_KEY", "CODEX_API_KEY", False,
                 "Name (`^[A-Za-z_][A-Za-z0-9_]*$`) of the variable codex reads the LLM key from.",
                 _env_key),
        Variable("CXG_MODEL_PROVIDER_WIRE_API", "responses", False,
                 "The provider's wire API.",
                 text),
        Variable("CXG_CODEX_API_KEY", None, False,
                 "Static LLM key, used when no per-workspace token is available.",
                 text),
        Variable("CXG_PROJECT_TRUSTED_PATHS", "/tmp", False,  # noqa: S108 - the spec's default
                 "Comma-separated project directories codex trusts; empty → `/tmp`.",
                 _trusted_paths),
        Variable("CXG_ENV_MCP_COMMAND", "", False,
                 "Absolute path of the `codexgw` console script codex starts env-mcp with. Unset: "
                 "`codexgw` beside the Python interpreter, else on `PATH`.",
                 env_mcp_command),
        Variable("CXG_LOG_LEVEL", "info", False,
                 "`debug`, `info`, `warn`, `error`, ignoring case; anything else means `info`.",
                 _log_level),
    )  # fmt: skip


#: The table, for its order and documentation.
VARIABLES: Final = variables()
#: The table for documentation: C{(name, default, required, description)} per row, in table order.
CONFIG_VARIABLES: Final[tuple[tuple[str, str | None, bool, str], ...]] = documentation(VARIABLES)

_STORE_ATTRIBUTES: Final = frozenset(row.attribute for row in STORE_VARIABLES)


@dataclass(frozen=True)
class AppGatewayConfig:
    """
    The validated configuration: one attribute per row of §2 (durations in float seconds, secrets as
    L{Secret}, unset optional rows as C{None}), the object-store rows gathered in L{store}, and the
    warnings to log at startup.

    @ivar listen_addr: C{CXG_LISTEN_ADDR} (or C{--listen-addr}).
    @ivar codex_bin: C{CXG_CODEX_BIN} (or C{--codex-bin}), absolute.
    @ivar exec_gateway_url: C{CXG_EXEC_GATEWAY_URL}, one trailing C{/} dropped.
    @ivar exec_gateway_internal_url: C{CXG_EXEC_GATEWAY_INTERNAL_URL}, one trailing C{/} dropped.
    @ivar exec_gateway_internal_secret: C{CXG_EXEC_GATEWAY_INTERNAL_SECRET}.
    @ivar captoken_hmac_secret: C{CXG_CAPTOKEN_HMAC_SECRET}.
    @ivar agentserver_internal_url: C{CXG_AGENTSERVER_INTERNAL_URL}, one trailing C{/} dropped.
    @ivar agentserver_internal_secret: C{CXG_AGENTSERVER_INTERNAL_SECRET}.
    @ivar inbound_hmac_secret: C{CXG_INBOUND_HMAC_SECRET}; C{None} when remote auth is on.
    @ivar store: rows #10–#16 and C{CXG_MAX_SNAPSHOT_BYTES}.
    @ivar idle_shutdown: C{CXG_IDLE_SHUTDOWN}; 0 disables idle reaping.
    @ivar captoken_ttl: C{CXG_CAPTOKEN_TTL} (0 stored as 3600).
    @ivar broker_pool_idle_ttl: C{CXG_BROKER_POOL_IDLE_TTL}.
    @ivar max_spawns: C{CXG_MAX_SPAWNS}.
    @ivar spawn_concurrency: C{CXG_SPAWN_CONCURRENCY}.
    @ivar client_buffer_bytes: C{CXG_CLIENT_BUFFER_BYTES}.
    @ivar allowed_origins: C{CXG_ALLOWED_ORIGINS}, lowercased.
    @ivar model_provider: C{CXG_MODEL_PROVIDER}.
    @ivar model: C{CXG_MODEL}.
    @ivar model_provider_base_url: C{CXG_MODEL_PROVIDER_BASE_URL}.
    @ivar model_provider_env_key: C{CXG_MODEL_PROVIDER_ENV_KEY}.
    @ivar model_provider_wire_api: C{CXG_MODEL_PROVIDER_WIRE_API}.
    @ivar codex_api_key: C{CXG_CODEX_API_KEY} (never shown by C{repr}).
    @ivar project_trusted_paths: C{CXG_PROJECT_TRUSTED_PATHS}.
    @ivar env_mcp_command: C{CXG_ENV_MCP_COMMAND} or the detected script.
    @ivar log_level: C{CXG_LOG_LEVEL}, normalised.
    @ivar warnings: messages for the service to log at warning level when it starts.
    """

    listen_addr: ListenAddress
    codex_bin: str
    exec_gateway_url: str
    exec_gateway_internal_url: str
    exec_gateway_internal_secret: Secret
    captoken_hmac_secret: Secret
    agentserver_internal_url: str | None
    agentserver_internal_secret: Secret | None
    inbound_hmac_secret: Secret | None
    store: ObjectStoreConfig
    idle_shutdown: float
    captoken_ttl: float
    broker_pool_idle_ttl: float
    max_spawns: int
    spawn_concurrency: int
    client_buffer_bytes: int
    allowed_origins: tuple[str, ...]
    model_provider: str
    model: str
    model_provider_base_url: str
    model_provider_env_key: str
    model_provider_wire_api: str
    codex_api_key: str | None = field(repr=False)
    project_trusted_paths: tuple[str, ...]
    env_mcp_command: str
    log_level: LogLevel
    warnings: tuple[str, ...] = ()

    @property
    def auth_mode(self) -> AuthMode:
        """
        C{remote} when C{CXG_AGENTSERVER_INTERNAL_URL} is set (§4.3), else C{hmac} (§4.2).
        """
        return "remote" if self.agentserver_internal_url is not None else "hmac"

    @property
    def bridge_base_url(self) -> str:
        """
        The exec gateway's bridge base handed to env-mcp: C{CXG_EXEC_GATEWAY_URL} + C{/bridge}.
        """
        return self.exec_gateway_url + "/bridge"

    def origin_allowed(self, origin: str) -> bool:
        """
        Whether an C{Origin} header value is one of C{CXG_ALLOWED_ORIGINS}, ignoring case.
        """
        return origin.lower() in self.allowed_origins

    def provider_settings(self) -> ProviderSettings:
        """
        The model provider's C{config.toml} table.
        """
        return ProviderSettings(
            base_url=self.model_provider_base_url,
            env_key=self.model_provider_env_key,
            wire_api=self.model_provider_wire_api,
        )


def effective_value(option: str | None, default: str, env_value: str) -> str:
    """
    The value of a setting with both a C{twist} option and a variable: the option's unless it was
    left at its default (C{None} or equal to C{default}), in which case the variable's when set (not
    empty), else the default.
    """
    if option is not None and option != default:
        return option
    return env_value or default


def load_config(
    environ: Mapping[str, str],
    listen_addr_option: str | None = None,
    codex_bin_option: str | None = None,
    executable: str = sys.executable,
) -> AppGatewayConfig:
    """
    Validate the configuration row by row in table order.

    @param environ: the process environment (or a test's dictionary); its C{PATH} is where the
        codex binary and the C{codexgw} script are looked up.
    @param listen_addr_option: C{--listen-addr} as given (C{None} when not given).
    @param codex_bin_option: C{--codex-bin} as given (C{None} when not given).
    @param executable: the Python interpreter, beside which the C{codexgw} script is looked for.
    @raise ConfigError: at the first row that fails, with the message of §2.
    """
    effective = {
        **environ,
        "CXG_LISTEN_ADDR": effective_value(
            listen_addr_option, DEFAULT_LISTEN_ADDR, environ.get("CXG_LISTEN_ADDR", "")
        ),
        "CXG_CODEX_BIN": effective_value(
            codex_bin_option, DEFAULT_CODEX_BIN, environ.get("CXG_CODEX_BIN", "")
        ),
    }
    values = load_variables(effective, variables(environ.get("PATH") or None, executable))
    warnings: list[str] = []
    if values["agentserver_internal_url"] is not None and values["inbound_hmac_secret"] is not None:
        values["inbound_hmac_secret"] = None
        warnings.append(UNUSED_INBOUND_HMAC_WARNING)
    store = ObjectStoreConfig(**{k: v for k, v in values.items() if k in _STORE_ATTRIBUTES})
    rest = {k: v for k, v in values.items() if k not in _STORE_ATTRIBUTES}
    return AppGatewayConfig(**rest, store=store, warnings=tuple(warnings))
