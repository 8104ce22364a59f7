"""
The executor's configuration: the options of C{executor.md} §1, with their environment fallbacks.

L{load_config} validates in a fixed order and raises L{ConfigError} at the first failure with the
spec's messages (the plugin turns it into C{config: <message>} and exit status 64, C{delivery.md} §3):
C{--gateway} (required, then its scheme), C{--executor-id}, the registration token, C{--codex-bin},
C{--max-streams}, and last C{--state-dir}, the only check with a side effect (it creates the
directory), so a configuration that fails for another reason leaves the disk untouched.

An option wins over its environment variable; an empty value counts as unset, as everywhere in codexgw.

Decisions where the spec is silent:
 - C{--max-streams} takes the integer rule of C{exec-gateway.md} §2 with a minimum of 1:
   C{--max-streams must be an integer, got "<v>"} or C{--max-streams must be >= 1, got <v>}.
 - A state dir that cannot be created, is not a directory or cannot be set to 0700 fails with
   C{state dir "<path>" is not usable: <reason>}. Missing parents are created with mode 0700 too (the
   spec's "created with its missing parents (mode 0700)"); C{~} expands to C{HOME} of the environment.
 - C{CXG_LOG_LEVEL} is read as the exec gateway reads it (C{debug}, C{info}, C{warn}, C{error},
   case-insensitive, anything else C{info}) and becomes twist's log level unless C{--log-level} is given.
 - The codex binary is stored as an absolute path, so a later change of C{PATH} or of the working
   directory cannot change which binary runs.
 - The token is kept out of C{repr}, so a configuration that reaches a log line or a traceback never
   shows it.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from codexgw.config import ConfigError, get, parse_integer, parse_url

#: The values of C{CXG_LOG_LEVEL} after normalisation.
LogLevel = Literal["debug", "info", "warn", "error"]

#: Option defaults (C{executor.md} §1).
DEFAULT_TOKEN_ENV: Final = "CXG_EXECUTOR_TOKEN"  # noqa: S105 (a variable's name, not a secret)
DEFAULT_CODEX_BIN: Final = "codex"
DEFAULT_STATE_DIR: Final = "~/.codexgw-executor"
DEFAULT_MAX_STREAMS: Final = 32

#: Environment fallbacks of the options that have one.
GATEWAY_ENV: Final = "CXG_EXECUTOR_GATEWAY"
EXECUTOR_ID_ENV: Final = "CXG_EXECUTOR_ID"
CODEX_BIN_ENV: Final = "CXG_CODEX_BIN"
STATE_DIR_ENV: Final = "CXG_EXECUTOR_STATE_DIR"

_LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("debug", "info", "warn", "error")
_STATE_DIR_MODE: Final = 0o700


@dataclass(frozen=True)
class ExecutorConfig:
    """
    A validated executor configuration.

    @ivar gateway: the exec gateway's http(s) base URL, without a trailing C{/}.
    @ivar executor_id: the C{exe_...} id the executor registers as.
    @ivar token: the registration token (read from the variable named by C{token_env}).
    @ivar token_env: the name of the variable that held the token (it is kept from the children too).
    @ivar codex_bin: absolute path of the codex binary that runs C{exec-server}.
    @ivar state_dir: absolute path of the private state directory (mode 0700, existing).
    @ivar max_streams: how many streams are served at once.
    @ivar log_level: C{CXG_LOG_LEVEL}, normalised.
    """

    gateway: str
    executor_id: str
    token: str = field(repr=False)
    token_env: str
    codex_bin: str
    state_dir: Path
    max_streams: int
    log_level: LogLevel


def load_config(options: Mapping[str, str | None], environ: Mapping[str, str]) -> ExecutorConfig:
    """
    Validate the executor's options and environment, in the order of the module docstring.

    @param options: option values by long name (C{gateway}, C{executor-id}, C{token-env},
        C{codex-bin}, C{state-dir}, C{max-streams}); C{None} or C{""} when not given.
    @param environ: the process environment.
    @raise ConfigError: at the first failure.
    """

    def value(option: str, variable: str | None, default: str) -> str:
        given = options.get(option) or ""
        if given:
            return given
        return (get(environ, variable) if variable else "") or default

    raw_gateway = value("gateway", GATEWAY_ENV, "")
    if not raw_gateway:
        raise ConfigError("--gateway is required")
    gateway = parse_url("--gateway", raw_gateway, ("http://", "https://"))
    executor_id = value("executor-id", EXECUTOR_ID_ENV, "")
    if not executor_id:
        raise ConfigError("--executor-id is required")
    token_env = options.get("token-env")
    if token_env is None:
        token_env = DEFAULT_TOKEN_ENV
    token = get(environ, token_env) if token_env else ""
    if not token:
        raise ConfigError(f"env var {token_env} is empty; cannot register executor")
    raw_codex = value("codex-bin", CODEX_BIN_ENV, DEFAULT_CODEX_BIN)
    codex_bin = find_codex_bin(raw_codex, environ.get("PATH"))
    if codex_bin is None:
        raise ConfigError(f'codex binary "{raw_codex}" not found or not executable')
    max_streams = parse_integer(
        "--max-streams", value("max-streams", None, str(DEFAULT_MAX_STREAMS)), minimum=1
    )
    state_dir = prepare_state_dir(value("state-dir", STATE_DIR_ENV, DEFAULT_STATE_DIR), environ)
    return ExecutorConfig(
        gateway=gateway,
        executor_id=executor_id,
        token=token,
        token_env=token_env,
        codex_bin=codex_bin,
        state_dir=state_dir,
        max_streams=max_streams,
        log_level=_log_level(get(environ, "CXG_LOG_LEVEL")),
    )


def find_codex_bin(raw: str, search_path: str | None) -> str | None:
    """
    Resolve the codex binary: through C{search_path} (a C{PATH} value) unless C{raw} contains C{/}.

    @return: the absolute path of an executable regular file, or C{None}.
    """
    path = raw if "/" in raw else shutil.which(raw, path=search_path or os.defpath)
    if path is None or not os.path.isfile(path) or not os.access(path, os.X_OK):
        return None
    return os.path.abspath(path)


def prepare_state_dir(raw: str, environ: Mapping[str, str]) -> Path:
    """
    Make C{raw} an existing private directory: create it and its missing parents with mode 0700, or
    set an existing one to 0700.

    @return: its absolute path.
    @raise ConfigError: when it cannot be used.
    """
    path = Path(_expand_home(raw, environ)).absolute()

    def unusable(reason: str) -> ConfigError:
        return ConfigError(f'state dir "{path}" is not usable: {reason}')

    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        for directory in reversed(missing):
            directory.mkdir(mode=_STATE_DIR_MODE)
            # mkdir's mode is filtered by the umask; the spec wants exactly 0700.
            directory.chmod(_STATE_DIR_MODE)
        if not stat.S_ISDIR(path.stat().st_mode):
            raise unusable("not a directory")
        path.chmod(_STATE_DIR_MODE)
    except OSError as e:
        raise unusable(e.strerror or str(e)) from None
    return path


def _expand_home(raw: str, environ: Mapping[str, str]) -> str:
    if raw == "~" or raw.startswith("~/"):
        home = get(environ, "HOME") or os.path.expanduser("~")
        return home + raw[1:]
    return raw


def _log_level(raw: str) -> LogLevel:
    for level in _LOG_LEVELS:
        if raw.lower() == level:
            return level
    return "info"
