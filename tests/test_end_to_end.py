"""
The end-to-end test of the product (issue 8): C{twist codexgw-exec} + C{twist codexgw-executor}
(registered as C{laptop}, bound to the workspace) + C{twist codexgw-app}, all real processes, with the
real codex 0.169.0 and the fake model provider as the only fake.

The fake model calls the env-mcp tools (namespace C{mcp__agentserver}) as a real model would; codex
starts C{codexgw env-mcp}, which reaches the executor through the exec gateway's bridge; the command
runs in the executor's C{codex exec-server}; its output goes back to the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import treq
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from codexgw.testing.fakemodel import AGENTSERVER_NAMESPACE, FunctionCallReply, TextReply
from tests.appgw.appgateway import (
    RPC_SECONDS,
    TURN_SECONDS,
    AppGatewayFixture,
    AppGatewayProcess,
    codex_processes,
    member,
)
from tests.appgw.test_gateway_integration import run_turn
from tests.execgw.gateway import (
    GatewayHTTP,
    GatewayProcess,
    bounded,
    gateway_env,
)
from tests.executor.agent import ExecutorProcess, executor_args, executor_env

TURN_SECRET = "end-to-end-turn-api-secret-0123456789abc"
SHELL_ARGUMENTS = {
    "environment_id": "laptop",
    "command": ["bash", "-lc", "echo hi-from-executor"],
}


def tool_call(name: str, arguments: dict[str, Any], call_id: str) -> FunctionCallReply:
    """
    The model calls env-mcp tool C{name}.
    """
    return FunctionCallReply(name, arguments, call_id, namespace=AGENTSERVER_NAMESPACE)


class EndToEndTests(TestCase):
    """
    A prompt on workspace W runs C{shell} on the executor bound to W.
    """

    timeout = 240

    async def setUp(self) -> None:  # type: ignore[override]
        """
        Start the exec gateway and the fake model; the app gateway points at both.
        """
        base = Path(self.mktemp()).absolute()
        base.mkdir(parents=True)
        self.exec_gateway = GatewayProcess(
            gateway_env("sqlite:///var/exec-gateway.sqlite3"), base / "exec"
        )
        self.addCleanup(self.exec_gateway.stop)
        await self.exec_gateway.start()
        self.api = GatewayHTTP(self.exec_gateway.base_url)
        self.addCleanup(self.api.close)
        self.fixture = AppGatewayFixture(self)
        await self.fixture.start_model()
        self.base = base

    async def executor(self, workspace_id: str, name: str) -> ExecutorProcess:
        """
        Register an executor, bind it to C{workspace_id} as C{name} and start it.
        """
        exe_id, token = await self.api.register()
        bound = await self.api.bind(workspace_id, exe_id, name)
        self.assertEqual(201, bound.status, bound)
        cwd = self.base / f"executor-{name}-{workspace_id}"
        cwd.mkdir(parents=True)
        process = ExecutorProcess(
            executor_env(token),
            cwd,
            executor_args(self.exec_gateway.base_url, exe_id, cwd / "state"),
        )
        self.addCleanup(process.stop)
        await process.start()
        return process

    async def app_gateway(self) -> AppGatewayProcess:
        """
        The app gateway, wired to the exec gateway.
        """
        assert self.exec_gateway.port is not None
        port = self.exec_gateway.port
        return await self.fixture.start(
            {
                "CXG_EXEC_GATEWAY_URL": f"ws://127.0.0.1:{port}",
                "CXG_EXEC_GATEWAY_INTERNAL_URL": f"http://127.0.0.1:{port}",
                "CXG_AGENTSERVER_INTERNAL_SECRET": TURN_SECRET,
            }
        )

    def script_shell(self) -> None:
        """
        The model lists the environments, runs C{shell} on C{laptop}, then answers.
        """
        self.fixture.script.enqueue(
            tool_call("list_environments", {}, "call-list"),
            tool_call("shell", SHELL_ARGUMENTS, "call-shell"),
            TextReply("the executor said hi"),
        )

    async def assert_tool_outputs(self, first: int = 0) -> None:
        """
        The model saw C{laptop} listed and then the shell output with its exit code.
        """
        script = self.fixture.script
        after_list = await bounded(script.model_request(first + 1), TURN_SECONDS, "2nd request")
        self.assertIn('"name":"laptop"', json.dumps(after_list.input_items()).replace("\\", ""))
        after_shell = await bounded(script.model_request(first + 2), TURN_SECONDS, "3rd request")
        outputs = json.dumps(after_shell.input_items())
        self.assertIn("hi-from-executor", outputs)
        self.assertIn("[exit_code=0]", outputs)

    async def test_tui_prompt_runs_shell_on_executor(self) -> None:
        """
        A TUI-style client on W sends a prompt; the model's C{shell} call runs on C{laptop}; the
        next model request carries C{hi-from-executor} and C{[exit_code=0]}; the turn completes.
        """
        await self.executor("ws_e2e", "laptop")
        gateway = await self.app_gateway()
        self.script_shell()
        tui = await self.fixture.connect(gateway, "ws_e2e")
        _, completed = await run_turn(tui, "run something on my laptop")
        self.assertEqual("completed", member(completed, "turn", "status"))
        await self.assert_tool_outputs()

    async def test_turn_api_runs_shell_on_executor(self) -> None:
        """
        The same through C{POST /api/turns}: the returned turn holds the tool calls and completes.
        """
        await self.executor("ws_e2e_api", "laptop")
        gateway = await self.app_gateway()
        self.script_shell()
        response = await bounded(
            treq.post(
                gateway.base_url + "/api/turns",
                json={
                    "workspaceId": "ws_e2e_api",
                    "params": {"input": [{"type": "text", "text": "run it"}]},
                },
                headers=Headers({"X-Internal-Secret": [TURN_SECRET]}),
                persistent=False,
            ),
            TURN_SECONDS,
            "POST /api/turns",
        )
        answer = json.loads(await treq.content(response))
        self.assertEqual("completed", member(answer, "turn", "status"), answer)
        await self.assert_tool_outputs()
        self.assertIn("hi-from-executor", json.dumps(answer["turn"]["items"]))

    async def test_executor_registered_later_is_listed(self) -> None:
        """
        An executor registered and started after the app-server is listed by C{list_environments}
        without a respawn.
        """
        gateway = await self.app_gateway()
        tui = await self.fixture.connect(gateway, "ws_late")
        await bounded(tui.request("thread/list", {}), RPC_SECONDS, "thread/list")
        (pid,) = codex_processes(self.fixture.tmp_root)
        await self.executor("ws_late", "latecomer")
        self.fixture.script.enqueue(tool_call("list_environments", {}, "call-list"), TextReply("listed"))
        _, completed = await run_turn(tui, "what machines do I have?")
        self.assertEqual("completed", member(completed, "turn", "status"))
        listed = await bounded(self.fixture.script.model_request(1), TURN_SECONDS, "2nd request")
        self.assertIn("latecomer", json.dumps(listed.input_items()))
        self.assertEqual([pid], list(codex_processes(self.fixture.tmp_root)))
