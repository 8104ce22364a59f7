"""
What one spawn of a workspace's C{codex app-server} is started with (C{app-gateway.md} §5.10, §5.4):
its turn id and cap token, its loopback token, its LLM key, the C{config.toml} text, the process
environment and the working directory.

L{SpawnPlanner.plan} is step 4 of C{ensure} (§5.3): it talks to nothing but agentserver (the
workspace LLM token, when configured); the exec gateway is not contacted at spawn time.

Decisions where the spec is silent:
 - The loopback token is registered when the plan is made (not only once the process is ready): env-mcp
   may call C{/internal/connected} as soon as codex starts it, which can be before our readiness poll
   succeeds. The supervisor revokes it whenever the spawn fails and when the process has exited.
 - The LLM key is never logged and never written to C{config.toml}; only the variable named by
   C{CXG_MODEL_PROVIDER_ENV_KEY} carries it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twisted.logger import Logger

from codexgw.appgw.captoken import CapTokenMinter, MintedCapToken, new_turn_id
from codexgw.appgw.clients import IWorkspaceTokenSource
from codexgw.appgw.codexhome import ConfigInput, McpSettings, render_config_toml
from codexgw.appgw.codexversion import child_environment
from codexgw.appgw.config import AppGatewayConfig
from codexgw.appgw.loopback import LoopbackTokens

_log = Logger()


@dataclass(frozen=True)
class SpawnPlan:
    """
    Everything one spawn needs.

    @ivar turn_id: C{trn_…} of this spawn.
    @ivar cap: the cap token minted for it (its C{exp} is what a revoke covers).
    @ivar loopback_token: the per-spawn loopback token (already registered).
    @ivar config_text: the C{config.toml} to write into the home.
    @ivar environment: the app-server's process environment.
    @ivar cwd: its working directory.
    """

    turn_id: str
    cap: MintedCapToken
    loopback_token: str = field(repr=False)
    config_text: str = field(repr=False)
    environment: dict[str, str] = field(repr=False)
    cwd: str


class SpawnPlanner:
    """
    Builds L{SpawnPlan}s from the gateway's configuration.
    """

    def __init__(
        self,
        config: AppGatewayConfig,
        minter: CapTokenMinter,
        loopback_tokens: LoopbackTokens,
        loopback_url: Callable[[], str],
        token_source: IWorkspaceTokenSource | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        """
        @param loopback_url: the gateway's loopback URL (§5.10), asked at each spawn because the
            listening port is only known once the listener is up.
        @param token_source: where workspace LLM tokens come from; C{None} when
            C{CXG_AGENTSERVER_INTERNAL_URL} is unset.
        @param environ: the gateway's own environment (§5.4 item 1).
        """
        self._config = config
        self._minter = minter
        self._loopback_tokens = loopback_tokens
        self._loopback_url = loopback_url
        self._token_source = token_source
        self._environ = environ

    async def plan(self, workspace_id: str, home: str) -> SpawnPlan:
        """
        Make the plan of one spawn of C{workspace_id} whose CODEX_HOME is C{home}.

        @raise Exception: when the cap token cannot be minted (the supervisor reports it as
            C{config builder: <err>}); a failed LLM-token fetch only logs a warning.
        """
        config = self._config
        turn_id = new_turn_id()
        cap = self._minter.mint(workspace_id, turn_id)
        llm_key = await self._workspace_llm_key(workspace_id)
        loopback_token = self._loopback_tokens.issue(workspace_id, turn_id)
        mcp = McpSettings(
            command=config.env_mcp_command,
            workspace_id=workspace_id,
            bridge_url=config.bridge_base_url,
            loopback_url=self._loopback_url(),
            cap_token=cap.token,
            loopback_token=loopback_token,
        )
        text = render_config_toml(
            ConfigInput(
                model_provider=config.model_provider,
                model=config.model,
                provider=config.provider_settings(),
                trusted_paths=config.project_trusted_paths,
                mcp=mcp,
            )
        )
        return SpawnPlan(
            turn_id=turn_id,
            cap=cap,
            loopback_token=loopback_token,
            config_text=text,
            environment=self.environment(home, llm_key),
            cwd=self.working_directory(home),
        )

    def environment(self, home: str, llm_key: str | None) -> dict[str, str]:
        """
        §5.4: the gateway's environment without C{CXG_*}/C{AWS_*}, the static key, the workspace
        key, C{CODEX_HOME} — later entries win.
        """
        env = child_environment(self._environ)
        key_name = self._config.model_provider_env_key
        if self._config.codex_api_key:
            env[key_name] = self._config.codex_api_key
        if llm_key:
            env[key_name] = llm_key
        env["CODEX_HOME"] = home
        return env

    def working_directory(self, home: str) -> str:
        """
        The first trusted path if it is an existing directory, else the home (§5.4).
        """
        first = self._config.project_trusted_paths[0] if self._config.project_trusted_paths else ""
        return first if first and os.path.isdir(first) else home

    async def _workspace_llm_key(self, workspace_id: str) -> str | None:
        if self._token_source is None:
            return None
        try:
            return await self._token_source.fetch(workspace_id)
        except Exception as e:
            _log.warn(
                "workspace-token: fetch failed; falling back to static CodexAPIKey ({error})",
                error=str(e),
                workspace_id=workspace_id,
            )
            return None
