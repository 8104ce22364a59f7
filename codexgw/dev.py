"""
The all-in-one dev stack (C{delivery.md} §3.2): an exec gateway, an app gateway and one executor in
one process, with embedded defaults, so that C{make dev} gives a working stack on a fresh checkout.

Configuration (L{load_dev_config}, run while C{twist} parses the options, so a failure exits 64 with
C{config: <message>}): C{./var} is made (mode 0700), C{./var/dev-secrets.json} is read, or generated
on the first start (mode 0600; the four secrets, each 32 random bytes as 64 hex characters), and the
three programs' configurations are derived from the environment with the values the dev stack fixes
laid over it, then validated by each program's own table, in the order exec gateway, app gateway,
executor.

Start (L{DevStackService}): the bundled fake model provider when no provider is configured (with a
loud banner in the log) → the exec gateway on C{127.0.0.1:<CXG_PORT>} → the executor C{local}
registered through the exec gateway's store and bound to workspace C{dev} as its default → the app
gateway and the executor, which dials the exec gateway over loopback exactly as C{twist
codexgw-executor} does. Ready means the app gateway listens and the executor is in the exec gateway's
registry of connected executors; then the lines of §3.2 go to file descriptor 1 with C{os.write}
(L{instructions}). Stop: app gateway (every workspace snapshotted), executor, exec gateway, fake
model, one after the other — the app gateway's stop still revokes cap tokens at the exec gateway.

Decisions where the spec is silent:
 - What the dev stack fixes wins over the environment: the four secrets (always the file's), the
   SQLite store and object dir and tmp root and executor state dir under C{./var}, HMAC inbound auth
   (C{CXG_AGENTSERVER_INTERNAL_URL} and every C{CXG_S3_*} variable are ignored), the exec gateway URLs
   handed to the app gateway, and, with the fake model, every model setting. Every other C{CXG_*}
   variable of the three programs applies as documented for them. C{CXG_LISTEN_ADDR} defaults to
   C{127.0.0.1:8086} here (the app gateway's own default is C{:8086}).
 - C{CXG_PORT} keeps the exec gateway's rule (0 = ephemeral); the app gateway and the executor are
   given the port actually bound. The same holds for C{CXG_LISTEN_ADDR} with port 0.
 - C{dev-secrets.json} is a JSON object keyed by the variable names. A file that is not such an
   object with four 64-hex values is a configuration error naming the file (it is never overwritten:
   tokens minted from it may be in use); an existing file and C{./var} are set to 0600 / 0700.
 - The executor's registration token is not kept: every start replaces the executor bound as
   C{local} in C{dev} (same C{exe_id} when there is one, else a new one) with a fresh token, written
   straight to the store (hashed as the admin API does). The binding named C{local} in workspace
   C{dev} belongs to the dev stack.
 - The pinned codex is looked for under C{.tools/codex} of the working directory, then of the
   checkout this package lives in (an editable install), then C{codex} on C{PATH}.
 - The inbound token printed is labelled C{tui}; the C{codex --remote} URL uses the loopback address
   env-mcp uses (C{127.0.0.1} unless C{CXG_LISTEN_ADDR} names another loopback address). The curl
   command's prompt is C{run: echo hello from codexgw}, which the fake model runs on C{local}.
 - With the fake model, codex is configured with provider C{codexgw-fake}, model
   C{codexgw-fake-model} and a placeholder key (the fake checks none).
 - A failure while starting that is not one of a program's own (for instance the store refusing the
   registration) writes C{startup: <error>} to stderr and exits 1, as the app gateway does.
"""

# Twisted's service APIs are untyped.
# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import stat
import uuid
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, cast

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from codexgw import tokens
from codexgw.appgw.config import AppGatewayConfig
from codexgw.appgw.config import load_config as load_app_config
from codexgw.appgw.service import AppGatewayService
from codexgw.codexbin import TOOLS_PREFIX, CodexBinaryNotFound, find_native_codex
from codexgw.config import ConfigError, Secret, get
from codexgw.execgw.config import ExecGatewayConfig
from codexgw.execgw.config import load_config as load_exec_config
from codexgw.execgw.passwords import TokenHasher, new_registration_token
from codexgw.execgw.service import ExecGatewayService
from codexgw.execgw.store import ExecutorRecord, IStore, utc_now
from codexgw.executor.config import (
    DEFAULT_MAX_STREAMS,
    DEFAULT_TOKEN_ENV,
    ExecutorConfig,
    prepare_state_dir,
)
from codexgw.executor.plugin import build_service
from codexgw.testing.fakemodel import (
    ModelProviderListener,
    ModelScript,
    listen_model_provider,
    offline_responder,
)

log = Logger()

#: The workspace the dev stack serves, and the name its executor is bound under.
WORKSPACE_ID: Final = "dev"
EXECUTOR_NAME: Final = "local"
EXECUTOR_USER_ID: Final = "codexgw-dev"
EXECUTOR_DESCRIPTION: Final = "this machine (the dev stack's own executor)"
#: The label of the inbound token printed for the TUI.
TOKEN_LABEL: Final = "tui"  # noqa: S105 (a label, not a secret)
#: The app gateway's listen address unless C{CXG_LISTEN_ADDR} says otherwise.
DEFAULT_LISTEN_ADDR: Final = "127.0.0.1:8086"
#: The prompt of the printed curl command.
CURL_PROMPT: Final = "run: echo hello from codexgw"
#: The four secrets of C{dev-secrets.json}, by variable name.
SECRET_NAMES: Final = (
    "CXG_CAPTOKEN_HMAC_SECRET",
    "CXG_INTERNAL_SHARED_SECRET",
    "CXG_AGENTSERVER_INTERNAL_SECRET",
    "CXG_INBOUND_HMAC_SECRET",
)
#: Model settings of codex when the fake provider is used.
FAKE_PROVIDER_ID: Final = "codexgw-fake"
FAKE_MODEL: Final = "codexgw-fake-model"
#: The placeholder LLM key codex is given with the fake (which checks none).
FAKE_API_KEY: Final = "codexgw-offline-fake-model"
#: Where the fake provider listens.
FAKE_MODEL_ENDPOINT: Final = "tcp:0:interface=127.0.0.1"
#: How often readiness looks whether the executor is connected.
READY_POLL: Final = 0.05

_HEX_SECRET = re.compile(r"[0-9a-f]{64}")
_DIR_MODE: Final = 0o700
_FILE_MODE: Final = 0o600


# -------------------------------------------------------------------------------------------------
# ./var and its secrets


def prepare_var_dir(path: Path) -> Path:
    """
    Make C{path} an existing directory with mode 0700 (created with its missing parents).

    @return: C{path}, absolute.
    @raise ConfigError: when it cannot be used.
    """
    path = path.absolute()
    try:
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        if not stat.S_ISDIR(path.stat().st_mode):
            raise ConfigError(f'dev state dir "{path}" is not a directory')
        # mkdir's mode is filtered by the umask; the spec wants exactly 0700.
        path.chmod(_DIR_MODE)
    except FileExistsError:
        raise ConfigError(f'dev state dir "{path}" is not a directory') from None
    except OSError as e:
        raise ConfigError(f'dev state dir "{path}" is not usable: {e.strerror or e}') from None
    return path


@dataclass(frozen=True)
class DevSecrets:
    """
    The four secrets of C{dev-secrets.json}, as their 64 hex characters.

    @ivar values: variable name → value, for every name of L{SECRET_NAMES}.
    """

    values: Mapping[str, str] = field(repr=False)

    def secret(self, name: str) -> Secret:
        """
        The secret of variable C{name} as the services use it (its UTF-8 bytes).
        """
        return Secret(self.values[name].encode("ascii"))

    def __repr__(self) -> str:
        return "DevSecrets(<redacted>)"


def load_or_create_secrets(path: Path) -> DevSecrets:
    """
    Read C{path}, or create it (mode 0600) with four fresh secrets when it does not exist.

    @raise ConfigError: when the file exists but is not valid, or cannot be read or written.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return _create_secrets(path)
    except OSError as e:
        raise ConfigError(f'"{path}" cannot be read: {e.strerror or e}') from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise ConfigError(f'"{path}" is not valid JSON; delete it to generate new secrets') from None
    if not isinstance(data, dict):
        raise ConfigError(f'"{path}" must hold a JSON object; delete it to generate new secrets')
    for name in SECRET_NAMES:
        value = data.get(name)
        if not isinstance(value, str) or not _HEX_SECRET.fullmatch(value):
            raise ConfigError(
                f'"{path}": {name} must be 64 lowercase hex characters; delete the file to generate '
                "new secrets"
            )
    with contextlib.suppress(OSError):
        path.chmod(_FILE_MODE)
    return DevSecrets({name: data[name] for name in SECRET_NAMES})


def _create_secrets(path: Path) -> DevSecrets:
    values = {name: secrets.token_hex(32) for name in SECRET_NAMES}
    text = json.dumps(values, indent=2) + "\n"
    # Written to a private temporary file and renamed, so a crash never leaves a half-written file
    # that the next start would refuse.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _FILE_MODE)
        try:
            os.write(fd, text.encode("ascii"))
            os.fchmod(fd, _FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temporary, path)  # fails if another start created the file meanwhile
    except FileExistsError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        return load_or_create_secrets(path)
    except OSError as e:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise ConfigError(f'"{path}" cannot be written: {e.strerror or e}') from None
    temporary.unlink()
    log.info("generated new dev secrets in {path}", event="dev.secrets_generated", path=str(path))
    return DevSecrets(values)


# -------------------------------------------------------------------------------------------------
# Configuration


def find_dev_codex_bin(environ: Mapping[str, str], cwd: Path, package_root: Path) -> str:
    """
    The codex binary of the dev stack: C{CXG_CODEX_BIN} when set, else the pinned native binary
    under C{.tools/codex} of C{cwd} or of C{package_root}, else C{codex} (looked up on C{PATH} by the
    app gateway's rule).
    """
    given = get(environ, "CXG_CODEX_BIN")
    if given:
        return given
    for root in dict.fromkeys((cwd.absolute(), package_root.absolute())):
        with contextlib.suppress(CodexBinaryNotFound):
            return str(find_native_codex(root / TOOLS_PREFIX))
    return "codex"


#: The checkout this package lives in (meaningful for an editable install).
PACKAGE_ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DevConfig:
    """
    The dev stack's validated configuration.

    @ivar var_dir: C{./var}, absolute.
    @ivar secrets: the four secrets.
    @ivar exec_gateway: the exec gateway's configuration.
    @ivar app_gateway: the app gateway's, with the exec gateway (and fake model) URLs of the
        configured ports; the service replaces them with the bound ones.
    @ivar executor_state_dir: C{./var/executor}, existing, mode 0700.
    @ivar fake_model: whether the bundled fake model provider is used.
    """

    var_dir: Path
    secrets: DevSecrets
    exec_gateway: ExecGatewayConfig
    app_gateway: AppGatewayConfig
    executor_state_dir: Path
    fake_model: bool

    @property
    def log_level(self) -> str:
        """
        C{CXG_LOG_LEVEL}, normalised (the plugin makes it twist's log level).
        """
        return self.exec_gateway.log_level

    @property
    def exec_endpoint(self) -> str:
        """
        The exec gateway's endpoint: always loopback.
        """
        return f"tcp:{self.exec_gateway.port}:interface=127.0.0.1"


def _without(environ: Mapping[str, str], *names: str, prefix: str = "") -> dict[str, str]:
    return {
        key: value
        for key, value in environ.items()
        if key not in names and not (prefix and key.startswith(prefix))
    }


def exec_gateway_urls(port: int) -> dict[str, str]:
    """
    The app gateway's variables that point at an exec gateway on C{127.0.0.1:<port>}.
    """
    return {
        "CXG_EXEC_GATEWAY_URL": f"ws://127.0.0.1:{port}",
        "CXG_EXEC_GATEWAY_INTERNAL_URL": f"http://127.0.0.1:{port}",
    }


def load_dev_config(
    environ: Mapping[str, str], cwd: Path, package_root: Path = PACKAGE_ROOT
) -> DevConfig:
    """
    Prepare C{./var} and its secrets, and validate the three programs' configurations.

    @param environ: the process environment.
    @param cwd: the working directory, where C{./var} lives.
    @param package_root: the checkout whose C{.tools/codex} is the second place codex is looked for.
    @raise ConfigError: at the first failure.
    """
    var_dir = prepare_var_dir(cwd / "var")
    dev_secrets = load_or_create_secrets(var_dir / "dev-secrets.json")
    shared = {**dev_secrets.values}
    exec_config = load_exec_config(
        {
            **_without(environ, "CXG_AGENTSERVER_INTERNAL_URL"),
            **shared,
            "CXG_DATABASE_URL": f"sqlite:///{var_dir / 'exec-gateway.sqlite3'}",
        }
    )
    fake_model = not get(environ, "CXG_MODEL_PROVIDER_BASE_URL")
    model = (
        {
            "CXG_MODEL_PROVIDER": FAKE_PROVIDER_ID,
            "CXG_MODEL": FAKE_MODEL,
            # Replaced by the fake's URL once it listens.
            "CXG_MODEL_PROVIDER_BASE_URL": "http://127.0.0.1:0/v1",
            "CXG_MODEL_PROVIDER_ENV_KEY": "CODEX_API_KEY",
            "CXG_MODEL_PROVIDER_WIRE_API": "responses",
            "CXG_CODEX_API_KEY": FAKE_API_KEY,
        }
        if fake_model
        else {}
    )
    app_config = load_app_config(
        {
            **_without(environ, "CXG_AGENTSERVER_INTERNAL_URL", prefix="CXG_S3_"),
            "CXG_LISTEN_ADDR": get(environ, "CXG_LISTEN_ADDR") or DEFAULT_LISTEN_ADDR,
            "CXG_CODEX_BIN": find_dev_codex_bin(environ, cwd, package_root),
            **exec_gateway_urls(exec_config.port),
            "CXG_EXEC_GATEWAY_INTERNAL_SECRET": shared["CXG_INTERNAL_SHARED_SECRET"],
            "CXG_CAPTOKEN_HMAC_SECRET": shared["CXG_CAPTOKEN_HMAC_SECRET"],
            "CXG_AGENTSERVER_INTERNAL_SECRET": shared["CXG_AGENTSERVER_INTERNAL_SECRET"],
            "CXG_INBOUND_HMAC_SECRET": shared["CXG_INBOUND_HMAC_SECRET"],
            "CXG_OBJECT_DIR": str(var_dir / "objects"),
            "CXG_TMP_ROOT": str(var_dir / "homes"),
            **model,
        }
    )
    state_dir = prepare_state_dir(str(var_dir / "executor"), environ)
    return DevConfig(
        var_dir=var_dir,
        secrets=dev_secrets,
        exec_gateway=exec_config,
        app_gateway=app_config,
        executor_state_dir=state_dir,
        fake_model=fake_model,
    )


# -------------------------------------------------------------------------------------------------
# The executor's registration


async def register_local_executor(
    store: IStore,
    hash_token: Callable[[str], Deferred[str]],
    clock: IReactorTime,
    new_token: Callable[[], str],
) -> tuple[str, str]:
    """
    Register the dev stack's executor with a fresh token and bind it to L{WORKSPACE_ID} as
    L{EXECUTOR_NAME}, marked default, replacing the executor bound there before (keeping its id).

    @param hash_token: hashes a registration token as the admin API does.
    @param new_token: makes a registration token.
    @return: the executor's id and its registration token.
    """
    bound = await store.list_workspace_executors(WORKSPACE_ID)
    previous = next((b.exe_id for b in bound if b.name == EXECUTOR_NAME), None)
    exe_id = previous or f"exe_{uuid.uuid4()}"
    token = new_token()
    token_hash = await hash_token(token)
    if previous is not None:
        # Its binding goes with it (cascade); both are made again below.
        await store.delete_executor(previous)
    record = ExecutorRecord(
        exe_id=exe_id,
        user_id=EXECUTOR_USER_ID,
        display_name=EXECUTOR_NAME,
        description=EXECUTOR_DESCRIPTION,
        default_cwd="",
        registered_at=utc_now(clock),
        last_seen_at=None,
    )
    await store.create_executor(record, token_hash)
    await store.bind_workspace_executor(WORKSPACE_ID, exe_id, EXECUTOR_NAME, EXECUTOR_DESCRIPTION, True)
    return exe_id, token


# -------------------------------------------------------------------------------------------------
# What is printed when ready


def instructions(app_url: str, inbound_token: str, turn_secret: str) -> bytes:
    """
    The lines of §3.2 printed when the stack is ready.

    @param app_url: C{http://<loopback host>:<port>} of the app gateway.
    @param inbound_token: the inbound token for workspace C{dev}.
    @param turn_secret: the C{X-Internal-Secret} of C{POST /api/turns}.
    """
    ws_url = "ws://" + app_url.removeprefix("http://")
    body = json.dumps(
        {"workspaceId": WORKSPACE_ID, "params": {"input": [{"type": "text", "text": CURL_PROMPT}]}},
        separators=(",", ":"),
    )
    curl = shlex.join(
        [
            "curl",
            "-sS",
            f"{app_url}/api/turns",
            "-H",
            f"X-Internal-Secret: {turn_secret}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ]
    )
    lines = [
        f"export CODEXGW_TOKEN={inbound_token}",
        f"codex --remote {ws_url} --remote-auth-token-env CODEXGW_TOKEN",
        curl,
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_all(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd} (a pipe may take less than asked at once).
    """
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fake_model_banner(base_url: str) -> str:
    """
    The log text that says the fake model provider is in use.
    """
    rule = "=" * 78
    return "\n".join(
        [
            rule,
            "NO MODEL PROVIDER IS CONFIGURED (CXG_MODEL_PROVIDER_BASE_URL is unset).",
            f"Using the bundled OFFLINE FAKE model provider at {base_url}.",
            "It answers `run: <command>` by running the command with the `shell` tool on",
            "environment `local`, and anything else with a note that it is the fake model.",
            "For a real model, set CXG_MODEL_PROVIDER_BASE_URL and CXG_CODEX_API_KEY.",
            rule,
        ]
    )


# -------------------------------------------------------------------------------------------------
# The service


class DevStackService(Service):
    """
    The dev stack: fake model (when needed), exec gateway, executor and app gateway in one process.

    @ivar exec_gateway: the exec gateway, once created.
    @ivar app_gateway: the app gateway, once created.
    @ivar executor: the executor, once created.
    @ivar exe_id: the executor's id, once registered.
    @ivar ready: fires once the instructions were printed.
    """

    def __init__(
        self,
        config: DevConfig,
        reactor: Any,
        environ: Mapping[str, str],
        output_fd: int = 1,
    ) -> None:
        """
        @param environ: the process environment, from which the children's environments are made
            (each program removes the C{CXG_*} variables).
        @param output_fd: where the instructions go.
        """
        self.config = config
        self.reactor = reactor
        self.environ = dict(environ)
        self.output_fd = output_fd
        self.exec_gateway: ExecGatewayService | None = None
        self.app_gateway: AppGatewayService | None = None
        self.executor: IService | None = None
        self.exe_id: str | None = None
        self.ready: Deferred[None] = Deferred()
        self._model: ModelProviderListener | None = None
        self._poll: LoopingCall | None = None
        self._connected: Deferred[None] | None = None
        self._stopping = False

    def startService(self) -> None:
        """
        Start as the module docstring says; a failure ends the process with status 1.
        """
        super().startService()
        Deferred.fromCoroutine(self._start()).addErrback(self._fatal)

    def _fatal(self, failure: Any) -> None:
        # twist has replaced sys.stderr by a log adapter by now: write to the real standard error.
        message = f"startup: {failure.getErrorMessage()}"
        log.failure("dev stack failed to start", failure, event="dev.failed")
        write_all(2, f"{message}\n".encode("utf-8", "replace"))
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    async def _start(self) -> None:
        config = self.config
        reactor = self.reactor
        app_config = config.app_gateway
        if config.fake_model:
            self._model = await listen_model_provider(
                reactor, FAKE_MODEL_ENDPOINT, ModelScript(responder=offline_responder)
            )
            base_url = self._model.base_url
            log.warn("{banner}", event="dev.fake_model", banner=fake_model_banner(base_url))
            app_config = replace(app_config, model_provider_base_url=base_url)
        else:
            log.info(
                "model provider {provider} at {base_url}, model {model}",
                event="dev.model_provider",
                provider=app_config.model_provider,
                base_url=app_config.model_provider_base_url,
                model=app_config.model,
            )
        if self.stopping():
            return

        exec_gateway = self.exec_gateway = ExecGatewayService(
            config.exec_gateway, config.exec_endpoint, reactor
        )
        exec_gateway.startService()
        await exec_gateway.started
        if self.stopping():
            return
        assert exec_gateway.port is not None and exec_gateway.store is not None
        exec_port = cast(Any, exec_gateway.port.getHost()).port
        hasher = TokenHasher(reactor, reactor.getThreadPool())
        exe_id, token = await register_local_executor(
            exec_gateway.store, hasher.hash_token, reactor, new_registration_token
        )
        self.exe_id = exe_id
        log.info(
            "executor {name} ({exe_id}) registered and bound to workspace {workspace} as its default",
            event="dev.executor_registered",
            name=EXECUTOR_NAME,
            exe_id=exe_id,
            workspace=WORKSPACE_ID,
        )
        if self.stopping():
            return

        urls = exec_gateway_urls(exec_port)
        app_config = replace(
            app_config,
            exec_gateway_url=urls["CXG_EXEC_GATEWAY_URL"],
            exec_gateway_internal_url=urls["CXG_EXEC_GATEWAY_INTERNAL_URL"],
        )
        app_gateway = self.app_gateway = AppGatewayService(app_config, reactor, dict(self.environ))
        executor_config = ExecutorConfig(
            gateway=urls["CXG_EXEC_GATEWAY_INTERNAL_URL"],
            executor_id=exe_id,
            token=token,
            token_env=DEFAULT_TOKEN_ENV,
            codex_bin=app_config.codex_bin,
            state_dir=config.executor_state_dir,
            max_streams=DEFAULT_MAX_STREAMS,
            log_level=config.exec_gateway.log_level,
        )
        executor = self.executor = build_service(executor_config, reactor, dict(self.environ))
        app_gateway.startService()
        executor.startService()
        await app_gateway.started
        assert exec_gateway.switchboard is not None
        await self._executor_connected(exec_gateway.switchboard.registry, exe_id)
        if self.stopping():
            return

        assert app_gateway.port is not None
        app_url = app_config.listen_addr.loopback_url(cast(Any, app_gateway.port.getHost()).port)
        write_all(
            self.output_fd,
            instructions(
                app_url,
                tokens.mint_inbound_token(
                    config.secrets.secret("CXG_INBOUND_HMAC_SECRET"), WORKSPACE_ID, TOKEN_LABEL
                ),
                config.secrets.values["CXG_AGENTSERVER_INTERNAL_SECRET"],
            ),
        )
        log.info("dev stack ready at {url}", event="dev.ready", url=app_url, exe_id=exe_id)
        self.ready.callback(None)

    def stopping(self) -> bool:
        """
        Whether the stack is stopping (a start still under way then gives up at its next step).
        """
        return self._stopping

    def _executor_connected(self, registry: Container[str], exe_id: str) -> Deferred[None]:
        """
        Fire once the exec gateway lists C{exe_id} among its connected executors (or on stop).
        """
        done = self._connected = Deferred()

        def look() -> None:
            if exe_id in registry:
                self._end_poll()

        self._poll = LoopingCall(look)
        self._poll.clock = self.reactor
        self._poll.start(READY_POLL, now=True)
        return done

    def _end_poll(self) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        if self._connected is not None and not self._connected.called:
            self._connected.callback(None)

    def stopService(self) -> Deferred[None]:
        """
        Stop the app gateway, then the executor, then the exec gateway, then the fake model.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        begin = self.reactor.seconds()
        log.info("dev stack shutting down", event="dev.shutdown")
        self._end_poll()
        for name, service in (
            ("app gateway", self.app_gateway),
            ("executor", self.executor),
            ("exec gateway", self.exec_gateway),
        ):
            if service is None or not service.running:
                continue
            try:
                await service.stopService()
            except Exception:
                log.failure("stopping the {name} failed", event="dev.stop_failed", name=name)
        if self._model is not None:
            await self._model.stop()
        log.info(
            "dev stack stopped",
            event="dev.stopped",
            duration_s=round(self.reactor.seconds() - begin, 3),
        )
        # A graceful stop exits 0; twist would otherwise re-raise the signal that stopped it.
        if getattr(self.reactor, "_exitSignal", None) is not None:
            self.reactor._exitSignal = None
