"""
The C{twist codexgw-executor} plugin: options (C{executor.md} §1) and the wiring of the real service.

The options are validated while C{twist} parses them: a failure exits with status 64 and
C{config: <message>} on stderr before anything connects (C{delivery.md} §3).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from treq.client import HTTPClient
from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

from codexgw.executor.backoff import Backoff
from codexgw.executor.child import ExecServerSpawner, child_environment
from codexgw.executor.config import (
    CODEX_BIN_ENV,
    DEFAULT_MAX_STREAMS,
    DEFAULT_STATE_DIR,
    DEFAULT_TOKEN_ENV,
    EXECUTOR_ID_ENV,
    GATEWAY_ENV,
    STATE_DIR_ENV,
    ExecutorConfig,
    load_config,
)
from codexgw.executor.connection import dial
from codexgw.executor.multiplexer import StreamMultiplexer
from codexgw.executor.proctree import OrphanGuard, ProcTable
from codexgw.executor.registration import RegistrationClient, user_agent
from codexgw.executor.service import ConnectedLink, ExecutorService
from codexgw.plugin import ConfigOptions, ServiceMaker

#: The options' long names, as L{load_config} takes them.
OPTION_NAMES = ("gateway", "executor-id", "token-env", "codex-bin", "state-dir", "max-streams")


class ExecutorOptions(ConfigOptions[ExecutorConfig]):
    """
    C{twist codexgw-executor --gateway URL --executor-id ID [--token-env NAME] [--codex-bin PATH]
    [--state-dir DIR] [--max-streams N]}.
    """

    # Defaults are applied by load_config (an option left out falls back to its variable first), so
    # they appear only in the help texts here.
    optParameters = [  # noqa: RUF012 (usage.Options reads this class attribute)
        ["gateway", None, None, f"http(s) base URL of the exec gateway (env {GATEWAY_ENV})."],
        ["executor-id", None, None, f"exe_... id from admin registration (env {EXECUTOR_ID_ENV})."],
        [
            "token-env",
            None,
            None,
            f"NAME of the variable holding the registration token (default {DEFAULT_TOKEN_ENV}).",
        ],
        ["codex-bin", None, None, f"codex binary for exec-server (env {CODEX_BIN_ENV}, default codex)."],
        ["state-dir", None, None, f"state dir (env {STATE_DIR_ENV}, default {DEFAULT_STATE_DIR})."],
        ["max-streams", None, None, f"concurrent streams served (default {DEFAULT_MAX_STREAMS})."],
    ]

    def load_config(self, environ: dict[str, str]) -> ExecutorConfig:
        """
        Validate the options with their environment fallbacks.
        """
        return load_config({name: self[name] for name in OPTION_NAMES}, environ)


class _QuietFactory(_HTTP11ClientFactory):
    noisy = False


class _QuietPool(HTTPConnectionPool):
    """
    A pool whose connections do not log "Starting factory"/"Stopping factory" for every
    registration attempt (a new connection each time, twice per attempt in the log otherwise).
    Twisted offers no public switch; C{_factory} is the pool's documented hook for its factory.
    """

    _factory = _QuietFactory


def build_service(config: ExecutorConfig, reactor: Any, environ: dict[str, str]) -> ExecutorService:
    """
    Wire the real executor: registration over treq, Autobahn websockets, exec-server children, and
    the process bookkeeping of L{codexgw.executor.proctree}.

    @param environ: the executor's environment, from which the children's is made.
    """
    processes = ProcTable()
    spawner = ExecServerSpawner(
        reactor,
        config.codex_bin,
        child_environment(environ, config.state_dir, config.token_env),
        processes,
    )
    multiplexer = StreamMultiplexer(reactor, spawner.spawn, max_streams=config.max_streams)
    agent_name = user_agent()
    # HTTPConnectionPool.__init__ is untyped.
    pool = _QuietPool(reactor, persistent=False)  # type: ignore[no-untyped-call]
    http = HTTPClient(Agent(reactor, pool=pool))
    registration = RegistrationClient(
        http, reactor, config.gateway, config.executor_id, config.token, agent_name
    )

    def connect(url: str) -> Deferred[ConnectedLink]:
        return Deferred.fromCoroutine(dial(reactor, url, multiplexer, agent_name))

    def managed() -> set[int]:
        # Twisted's own table of the children it reaps, in case anything else in this process spawned.
        from twisted.internet import process  # noqa: PLC0415 (POSIX only)

        return spawner.live_pids | set(process.reapProcessHandlers)

    return ExecutorService(
        reactor,
        registration.register,
        connect,
        multiplexer,
        Backoff(),
        orphans=OrphanGuard(processes, managed),
        describe={
            "gateway": config.gateway,
            "executor_id": config.executor_id,
            "max_streams": config.max_streams,
            "state_dir": str(config.state_dir),
            "codex_bin": config.codex_bin,
            "platform": platform.platform(),
        },
    )


def make_service(options: ExecutorOptions) -> IService:
    """
    Build the executor service on the global reactor.
    """
    from twisted.internet import reactor  # noqa: PLC0415 (twist installs the reactor first)

    return build_service(options.config, reactor, dict(os.environ))


executor_maker = ServiceMaker(
    "codexgw-executor",
    "codexgw executor agent: dials the exec gateway and serves bridge streams with codex exec-server",
    ExecutorOptions,
    make_service,
)
