"""
The exec gateway's configuration: the C{CXG_*} table of C{exec-gateway.md} §2.

One table, L{VARIABLES}, drives both parsing (L{load_config}) and documentation (L{CONFIG_VARIABLES},
from which the README's configuration reference is generated), so a variable's name, default and rule
are written once. Each row's attribute on L{ExecGatewayConfig} is its name without C{CXG_}, lowercased.

L{load_config} validates the rows in table order and raises L{ConfigError} at the first failure, with
the messages of §2 (the plugin turns it into C{config: <message>} and exit status 64, C{delivery.md} §3).
An empty value is the same as unset; a row's default goes through the same parser as a set value.

Decisions where the spec is silent:
 - C{CXG_RELAY_DEFAULT_TTL} ("duration > 0") at C{0} fails with C{<NAME> must be > 0, got <v>}: the
   integer messages have no strict form, so this follows their pattern.
 - C{CXG_PING_INTERVAL} ("0 or ≥ 2s") below 2 s and not 0 fails with C{<NAME> must be >= 2s, got <v>}.
 - C{CXG_RELAY_MAX_PER_WORKSPACE} ≤ 0 is stored as 16, so users of the config never re-apply the rule.
 - C{CXG_LOG_LEVEL} is stored lowercased; any value other than the four levels is stored as C{info}.
 - Integers and durations without an upper bound in the table have none here either.
 - The C{repr} of L{ExecGatewayConfig} omits C{database_url} (it may carry a PostgreSQL password);
   secrets are L{Secret} objects, whose C{repr} is redacted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from codexgw.config import (
    ConfigError,
    Parser,
    Secret,
    Variable,
    documentation,
    load_variables,
    parse_duration,
    parse_integer,
    secret_row,
    url_row,
)
from codexgw.execgw.dburl import DatabaseURL, parse_database_url

#: The values of C{CXG_LOG_LEVEL} after normalisation.
LogLevel = Literal["debug", "info", "warn", "error"]
#: How the SDK surface authenticates (derived switch of §2).
SdkMode = Literal["remote", "hmac", "disabled"]

_LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("debug", "info", "warn", "error")
_HTTP: Final = ("http://", "https://")
_WS: Final = ("ws://", "wss://")
#: What C{CXG_RELAY_MAX_PER_WORKSPACE} means when unset or ≤ 0.
DEFAULT_RELAY_MAX_PER_WORKSPACE: Final = 16


def _integer(minimum: int | None = None, maximum: int | None = None) -> Parser:
    return lambda name, raw: parse_integer(name, raw, minimum, maximum)


def _duration(minimum: str | None = None, maximum: str | None = None) -> Parser:
    # Durations have no sign, so "≥ 0" rows need no minimum.
    return lambda name, raw: parse_duration(name, raw, minimum, maximum)


def _positive_duration(name: str, raw: str) -> float:
    value = parse_duration(name, raw)
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {raw}")
    return value


def _ping_interval(name: str, raw: str) -> float:
    value = parse_duration(name, raw)
    if value != 0:
        # Zero means "no pings"; any other period must respect the 2 s floor (txaio timers are
        # whole seconds, delivery.md §2).
        parse_duration(name, raw, minimum="2s")
    return value


def _database_url(name: str, raw: str) -> str:
    parse_database_url(raw, name)
    return raw


def _relay_max(name: str, raw: str) -> int:
    value = parse_integer(name, raw)
    return value if value > 0 else DEFAULT_RELAY_MAX_PER_WORKSPACE


def _log_level(name: str, raw: str) -> LogLevel:
    for level in _LOG_LEVELS:
        if raw.lower() == level:
            return level
    return "info"


#: The table of §2, in its order (which is also the validation order).
VARIABLES: Final[tuple[Variable, ...]] = (
    Variable("CXG_PORT", "6060", False,
             "Integer 0–65535 (0 = ephemeral, for tests). Listens on all interfaces.",
             _integer(0, 65535)),
    Variable("CXG_DATABASE_URL", "sqlite:///var/exec-gateway.sqlite3", False,
             "`sqlite:///PATH` → SQLite file at PATH (relative to the working directory; an "
             "absolute path takes a fourth slash, `sqlite:////srv/exec.sqlite3`; `sqlite:///:memory:` "
             "for tests). "
             "`postgres://…` or `postgresql://…` → PostgreSQL, the URL passed unchanged to libpq.",
             _database_url),
    Variable("CXG_DATABASE_POOL_SIZE", "4", False,
             "Integer 1–64; PostgreSQL connections.",
             _integer(1, 64)),
    Variable("CXG_CAPTOKEN_HMAC_SECRET", None, True,
             "Secret ≥ 32 bytes; verifies cap tokens and signs the SDK layer's own cap tokens.",
             secret_row),
    Variable("CXG_INTERNAL_SHARED_SECRET", None, True,
             "Secret ≥ 32 bytes; Bearer for `/api/exec-gateway/*`; HMAC key of ws tickets.",
             secret_row),
    Variable("CXG_AGENTSERVER_INTERNAL_SECRET", None, True,
             "Secret ≥ 32 bytes; `X-Internal-Secret` for `/api/codex-exec/*`; sent to agentserver on "
             "proxy-token validation.",
             secret_row),
    Variable("CXG_AGENTSERVER_INTERNAL_URL", None, False,
             "URL `http://`/`https://`. When set, SDK proxy tokens are validated remotely.",
             url_row(*_HTTP)),
    Variable("CXG_INBOUND_HMAC_SECRET", None, False,
             "Secret ≥ 32 bytes. When set and `CXG_AGENTSERVER_INTERNAL_URL` is unset, SDK bearer "
             "tokens are verified locally as inbound HMAC tokens.",
             secret_row),
    Variable("CXG_PUBLIC_WS_BASE_URL", None, False,
             "URL `ws://`/`wss://`, e.g. `wss://codex-exec.example.com`; base of the `url` returned by "
             "executor registration.",
             url_row(*_WS)),
    Variable("CXG_SELF_HTTP_BASE_URL", None, False,
             "URL `http://`/`https://`; how the SDK layer reaches this process's own `/bridge`.",
             url_row(*_HTTP)),
    Variable("CXG_PUBLIC_HTTPS_BASE_URL", None, False,
             "URL `http://`/`https://`, reachable from executors. Set = byte relay enabled; base of "
             "relay upload/download URLs.",
             url_row(*_HTTP)),
    Variable("CXG_RELAY_DEFAULT_TTL", "5m", False,
             "Duration > 0; relay ticket lifetime when `ttl_seconds` is absent or ≤ 0.",
             _positive_duration),
    Variable("CXG_RELAY_MAX_PER_WORKSPACE", str(DEFAULT_RELAY_MAX_PER_WORKSPACE), False,
             "Integer; ≤ 0 means 16. Active relays (pending or transferring) per workspace.",
             _relay_max),
    Variable("CXG_MAX_FRAME_BYTES", "16777216", False,
             "Integer ≥ 0; maximum ws message (and frame) payload on inbound and bridge connections; "
             "0 = unlimited. Larger → close 1009. Also the SDK request body limit.",
             _integer(0)),
    Variable("CXG_MAX_STREAMS_PER_EXECUTOR", "32", False,
             "Integer ≥ 0; concurrent bridge streams per executor; 0 = unlimited.",
             _integer(0)),
    Variable("CXG_BRIDGE_IDLE_TIMEOUT", "5m", False,
             "Duration ≥ 0; a bridge stream with no relay frame in either direction for this long is "
             "reaped; 0 = never.",
             _duration()),
    Variable("CXG_BRIDGE_BUFFER_BYTES", "16777216", False,
             "Integer ≥ 65536; per-connection send-buffer bound.",
             _integer(65536)),
    Variable("CXG_PING_INTERVAL", "30s", False,
             "Duration, 0 or ≥ 2s; ws ping period on inbound and bridge connections; 0 = no pings.",
             _ping_interval),
    Variable("CXG_PING_TIMEOUT", "10s", False,
             "Duration ≥ 2s; no pong (or any other frame) within this time after a ping → connection "
             "dropped.",
             _duration("2s")),
    Variable("CXG_WS_TICKET_TTL", "5m", False,
             "Duration 1s–1h; lifetime of ws tickets minted by executor registration.",
             _duration("1s", "1h")),
    Variable("CXG_SHUTDOWN_TIMEOUT", "30s", False,
             "Duration ≥ 0; grace for in-flight HTTP requests on SIGTERM/SIGINT.",
             _duration()),
    Variable("CXG_LOG_LEVEL", "info", False,
             "`debug`, `info`, `warn`, `error`, case-insensitive; any other value means `info`.",
             _log_level),
)  # fmt: skip

#: The table for documentation: C{(name, default, required, description)} per row, in table order.
CONFIG_VARIABLES: Final[tuple[tuple[str, str | None, bool, str], ...]] = documentation(VARIABLES)


@dataclass(frozen=True)
class ExecGatewayConfig:
    """
    The validated configuration: one attribute per row of L{VARIABLES} (durations in float seconds,
    secrets as L{Secret}, unset optional rows as C{None}), then the derived values.

    @ivar database: C{database_url} parsed (derived).
    @ivar sdk_mode: how the SDK surface authenticates: C{remote} when C{CXG_AGENTSERVER_INTERNAL_URL}
        is set, else C{hmac} when C{CXG_INBOUND_HMAC_SECRET} is set, else C{disabled} (derived).
    @ivar relay_enabled: whether the byte relay is on, i.e. C{CXG_PUBLIC_HTTPS_BASE_URL} is set
        (derived).
    """

    port: int
    database_url: str = field(repr=False)
    database_pool_size: int
    captoken_hmac_secret: Secret
    internal_shared_secret: Secret
    agentserver_internal_secret: Secret
    agentserver_internal_url: str | None
    inbound_hmac_secret: Secret | None
    public_ws_base_url: str | None
    self_http_base_url: str | None
    public_https_base_url: str | None
    relay_default_ttl: float
    relay_max_per_workspace: int
    max_frame_bytes: int
    max_streams_per_executor: int
    bridge_idle_timeout: float
    bridge_buffer_bytes: int
    ping_interval: float
    ping_timeout: float
    ws_ticket_ttl: float
    shutdown_timeout: float
    log_level: LogLevel
    database: DatabaseURL
    sdk_mode: SdkMode
    relay_enabled: bool

    @property
    def listen_endpoint(self) -> str:
        """
        The Twisted server endpoint derived from C{CXG_PORT}: all interfaces (overridden by C{--listen}).
        """
        return f"tcp:{self.port}"


def load_store_config(environ: Mapping[str, str]) -> tuple[str, int]:
    """
    Validate only the store's rows (for C{codexgw migrate}), with the same rules and defaults.

    @return: C{CXG_DATABASE_URL} and C{CXG_DATABASE_POOL_SIZE}.
    @raise ConfigError: at the first row that fails.
    """
    names = ("CXG_DATABASE_URL", "CXG_DATABASE_POOL_SIZE")
    values = load_variables(environ, [v for v in VARIABLES if v.name in names])
    return values["database_url"], values["database_pool_size"]


def load_config(environ: Mapping[str, str]) -> ExecGatewayConfig:
    """
    Validate the environment row by row in table order.

    @param environ: the process environment (or a test's dictionary).
    @raise ConfigError: at the first row that fails, with the message of §2.
    """
    values = load_variables(environ, VARIABLES)
    sdk_mode: SdkMode = "disabled"
    if values["agentserver_internal_url"] is not None:
        sdk_mode = "remote"
    elif values["inbound_hmac_secret"] is not None:
        sdk_mode = "hmac"
    return ExecGatewayConfig(
        **values,
        database=parse_database_url(values["database_url"]),
        sdk_mode=sdk_mode,
        relay_enabled=values["public_https_base_url"] is not None,
    )
