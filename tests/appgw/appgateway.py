"""
Test support for integration tests of the app gateway: the real C{twist codexgw-app} as a subprocess
with the real codex and the in-process fake model provider, TUI-style clients, and views of the codex
processes and homes it manages.

 - L{AppGatewayProcess} is L{GatewayProcess} running C{codexgw-app}; its port comes from the
   C{app_gateway.started} log event.
 - L{AppGatewayFixture} prepares one gateway's directories and environment (clean C{HOME}, object dir
   or S3, tmp root, the fake model's URL) and mints inbound tokens.
 - L{codex_processes} finds the app-servers of a tmp root by their C{CODEX_HOME} (also after the gateway
   that started them was killed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from codexgw import tokens
from codexgw.config import Secret
from codexgw.testing.fakemodel import ModelProviderListener, ModelScript, listen_model_provider
from tests.codexclient import (
    DUMMY_API_KEY,
    AppServerConnection,
    alive,
    connect_app_server,
    initialize,
)
from tests.execgw.gateway import GatewayProcess, bounded, reactor
from tests.support import codex_binary

#: Secrets of the gateways under test (each ≥ 32 bytes).
INBOUND_SECRET = "integration-inbound-hmac-secret-0123456789"
CAP_SECRET = "integration-cap-token-secret-0123456789"
EXEC_SECRET = "integration-internal-shared-secret-012345"
#: Bounds of the waits on codex.
RPC_SECONDS = 30.0
TURN_SECONDS = 60.0


class AppGatewayProcess(GatewayProcess):
    """
    One C{twist codexgw-app} process.
    """

    plugin: ClassVar[str] = "codexgw-app"
    started_event: ClassVar[str] = "app_gateway.started"

    def wait_log(
        self, text: str, timeout: float = RPC_SECONDS, since: int = 0
    ) -> Deferred[dict[str, Any]]:
        """
        Fire with the first log event (from index C{since} on) whose message format starts with
        C{text}, including one already printed.
        """
        return self.wait_for(
            lambda event: str(event.get("log_format", "")).startswith(text), timeout, since, text
        )

    def ws_url(self, path: str = "/") -> str:
        """
        C{ws://127.0.0.1:<port><path>}.
        """
        assert self.port is not None
        return f"ws://127.0.0.1:{self.port}{path}"


def codex_processes(root: Path) -> dict[int, str]:
    """
    The live processes whose C{CODEX_HOME} lies in C{root} and whose command line runs
    C{app-server}: pid → CODEX_HOME.
    """
    found: dict[int, str] = {}
    prefix = f"CODEX_HOME={root}/".encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if b"app-server" not in cmdline.split(b"\0"):
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix) and alive(int(entry.name)):
                found[int(entry.name)] = item.split(b"=", 1)[1].decode()
    return found


def kill_codex_processes(root: Path) -> None:
    """
    SIGKILL the process group of every app-server of C{root} (cleanup of last resort).
    """
    for pid in codex_processes(root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def tarball_names(path: Path) -> list[str]:
    """
    The member names of a CODEX_HOME tarball.
    """
    with tarfile.open(path, "r:gz") as archive:
        return archive.getnames()


class AppGatewayFixture:
    """
    Directories, environment and helpers for app gateways of one test.

    @ivar base: the test's directory.
    @ivar tmp_root: C{CXG_TMP_ROOT}.
    @ivar objects: C{CXG_OBJECT_DIR}.
    @ivar script: the fake model's script.
    """

    def __init__(self, case: TestCase) -> None:
        self.case = case
        self.base = Path(case.mktemp()).absolute()
        self.base.mkdir(parents=True)
        self.tmp_root = self.base / "homes"
        self.objects = self.base / "objects"
        self.home = self.base / "home"
        self.home.mkdir()
        self.script = ModelScript()
        self.model: ModelProviderListener | None = None
        self.processes: list[AppGatewayProcess] = []
        case.addCleanup(self._clean_up)

    async def start_model(self) -> None:
        """
        Start the fake model provider.
        """
        self.model = await listen_model_provider(reactor, "tcp:0:interface=127.0.0.1", self.script)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """
        The gateway's whole environment: no inherited C{CXG_*}, the real codex, the fake model,
        local object dir (unless C{extra} says otherwise); an empty value in C{extra} unsets.
        """
        assert self.model is not None, "start_model first"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "PYTHONUNBUFFERED": "1",
            "CXG_LISTEN_ADDR": "127.0.0.1:0",
            "CXG_CODEX_BIN": str(codex_binary()),
            "CXG_EXEC_GATEWAY_URL": "ws://127.0.0.1:9",
            "CXG_EXEC_GATEWAY_INTERNAL_URL": "http://127.0.0.1:9",
            "CXG_EXEC_GATEWAY_INTERNAL_SECRET": EXEC_SECRET,
            "CXG_CAPTOKEN_HMAC_SECRET": CAP_SECRET,
            "CXG_INBOUND_HMAC_SECRET": INBOUND_SECRET,
            "CXG_OBJECT_DIR": str(self.objects),
            "CXG_TMP_ROOT": str(self.tmp_root),
            "CXG_MODEL_PROVIDER": "fake",
            "CXG_MODEL": "fake-model",
            "CXG_MODEL_PROVIDER_BASE_URL": self.model.base_url,
            "CXG_CODEX_API_KEY": DUMMY_API_KEY,
            "CXG_PROJECT_TRUSTED_PATHS": str(self.base),
        }
        for key, value in (extra or {}).items():
            if value:
                env[key] = value
            else:
                env.pop(key, None)
        return env

    async def start(self, extra: Mapping[str, str] | None = None) -> AppGatewayProcess:
        """
        Start a gateway and wait until it listens.
        """
        process = AppGatewayProcess(self.env(extra), self.base / "cwd", args=())
        self.processes.append(process)
        await process.start()
        return process

    def token(self, workspace_id: str, label: str = "tests") -> str:
        """
        An inbound HMAC token for C{workspace_id}.
        """
        return tokens.mint_inbound_token(Secret(INBOUND_SECRET.encode()), workspace_id, label)

    async def connect(
        self, gateway: AppGatewayProcess, workspace_id: str, path: str = "/"
    ) -> AppServerConnection:
        """
        A TUI-style connection through the gateway, initialized like the codex TUI does.
        """
        connection = await bounded(
            connect_app_server(
                reactor,
                gateway.ws_url(path),
                {"Authorization": f"Bearer {self.token(workspace_id)}"},
            ),
            RPC_SECONDS,
            "TUI connect",
        )
        self.case.addCleanup(connection.close)
        await bounded(
            Deferred.fromCoroutine(initialize(connection, "codex-tui")), RPC_SECONDS, "initialize"
        )
        return connection

    async def _clean_up(self) -> None:
        for process in self.processes:
            if process.running:
                await process.stop()
        kill_codex_processes(self.tmp_root)
        if self.model is not None:
            await self.model.stop()


def member(value: Any, *path: str) -> Any:
    """
    C{value[path[0]][path[1]]…}, failing the test when a step is missing.
    """
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise AssertionError(f"no {key!r} in {str(value)[:500]}")
        value = value[key]
    return value
