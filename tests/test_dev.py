"""
Tests for L{codexgw.dev}, the all-in-one dev stack (C{delivery.md} §3.2).

The unit tests cover its parts: C{./var} and the secrets file, where codex is found, how the three
programs' configurations are composed, the executor's registration (against the fake store) and the
printed instructions. The end-to-end test runs C{twist codexgw-dev} as a new user would (no
configuration but free ports and a clean C{HOME}) with the real codex and the bundled offline fake
model: it follows the printed instructions with a TUI-style client and with the printed curl
command, and stops the stack with SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
from pathlib import Path
from typing import Any, ClassVar

import treq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from codexgw import tokens
from codexgw.config import ConfigError
from codexgw.dev import (
    CURL_PROMPT,
    DEFAULT_LISTEN_ADDR,
    EXECUTOR_NAME,
    FAKE_API_KEY,
    FAKE_MODEL,
    SECRET_NAMES,
    WORKSPACE_ID,
    DevSecrets,
    find_dev_codex_bin,
    instructions,
    load_dev_config,
    load_or_create_secrets,
    prepare_var_dir,
    register_local_executor,
)
from codexgw.execgw.store import WorkspaceExecutor
from codexgw.testing.fakemodel import OFFLINE_TEXT
from codexgw.testing.fakestore import FakeStore
from tests.appgw.appgateway import RPC_SECONDS, TURN_SECONDS, kill_codex_processes, member
from tests.appgw.test_gateway_integration import agent_texts, run_turn
from tests.codexclient import connect_app_server, initialize
from tests.execgw.gateway import GatewayProcess, bounded, reactor
from tests.support import codex_binary

#: A 64-hex secret for files written by the tests.
HEX = "ab" * 32


def fake_codex_install(prefix: Path) -> Path:
    """
    Lay out an npm installation of codex under C{prefix} (as C{make install} does) whose native
    binary is an executable script; return the binary.
    """
    binary = (
        prefix
        / "node_modules"
        / "@openai"
        / "codex-linux-x64"
        / "vendor"
        / "x86_64-unknown-linux-musl"
        / "codex"
        / "codex"
    )
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\necho codex-cli 0.169.0\n")
    binary.chmod(0o755)
    return binary


class VarDirTests(SynchronousTestCase):
    """
    C{./var} is a private directory.
    """

    def test_created_private(self) -> None:
        """
        A missing directory is created with its parents, mode 0700 whatever the umask.
        """
        path = Path(self.mktemp()) / "checkout" / "var"
        old = os.umask(0o022)
        try:
            made = prepare_var_dir(path)
        finally:
            os.umask(old)
        self.assertEqual(path.absolute(), made)
        self.assertEqual(0o700, stat.S_IMODE(made.stat().st_mode))

    def test_existing_made_private(self) -> None:
        """
        An existing directory is set to 0700.
        """
        path = Path(self.mktemp())
        path.mkdir(mode=0o755)
        prepare_var_dir(path)
        self.assertEqual(0o700, stat.S_IMODE(path.stat().st_mode))

    def test_not_a_directory(self) -> None:
        """
        A file in the way is a configuration error naming the path.
        """
        path = Path(self.mktemp())
        path.write_text("")
        error = self.assertRaises(ConfigError, prepare_var_dir, path)
        self.assertIn(str(path.absolute()), str(error))


class SecretsFileTests(SynchronousTestCase):
    """
    C{dev-secrets.json} is generated once and reused.
    """

    def setUp(self) -> None:
        """
        A private directory for the file.
        """
        self.dir = prepare_var_dir(Path(self.mktemp()))
        self.path = self.dir / "dev-secrets.json"

    def test_generated(self) -> None:
        """
        The first call writes the four secrets, each 64 hex characters and all different, to a file
        of mode 0600 holding a JSON object keyed by the variable names; nothing else is left.
        """
        made = load_or_create_secrets(self.path)
        self.assertEqual(set(SECRET_NAMES), set(made.values))
        for value in made.values.values():
            self.assertRegex(value, "^[0-9a-f]{64}$")
        self.assertEqual(4, len(set(made.values.values())))
        self.assertEqual(0o600, stat.S_IMODE(self.path.stat().st_mode))
        self.assertEqual(dict(made.values), json.loads(self.path.read_text()))
        self.assertEqual(["dev-secrets.json"], os.listdir(self.dir))

    def test_reused(self) -> None:
        """
        Later calls read the same secrets back.
        """
        first = load_or_create_secrets(self.path)
        second = load_or_create_secrets(self.path)
        self.assertEqual(dict(first.values), dict(second.values))

    def test_existing_made_private(self) -> None:
        """
        An existing valid file is used as it is and set to mode 0600.
        """
        self.path.write_text(json.dumps(dict.fromkeys(SECRET_NAMES, HEX)))
        self.path.chmod(0o644)
        self.assertEqual(HEX, load_or_create_secrets(self.path).values[SECRET_NAMES[0]])
        self.assertEqual(0o600, stat.S_IMODE(self.path.stat().st_mode))

    def test_invalid(self) -> None:
        """
        A file that is not JSON, not an object, or lacks a well-formed secret is a configuration
        error naming the file, and the file is left alone.
        """
        short = dict.fromkeys(SECRET_NAMES, HEX)
        short[SECRET_NAMES[2]] = "abc"
        missing = dict.fromkeys(SECRET_NAMES[1:], HEX)
        for text, detail in [
            ("{", "not valid JSON"),
            ("[]", "must hold a JSON object"),
            (json.dumps(short), SECRET_NAMES[2]),
            (json.dumps(missing), SECRET_NAMES[0]),
        ]:
            self.path.write_text(text)
            error = self.assertRaises(ConfigError, load_or_create_secrets, self.path)
            self.assertIn(str(self.path), str(error))
            self.assertIn(detail, str(error))
            self.assertEqual(text, self.path.read_text())

    def test_repr_redacted(self) -> None:
        """
        The secrets never show in a C{repr}.
        """
        made = load_or_create_secrets(self.path)
        self.assertEqual("DevSecrets(<redacted>)", repr(made))
        self.assertNotIn(made.values[SECRET_NAMES[0]], repr(made))


class CodexBinaryTests(SynchronousTestCase):
    """
    The codex binary: C{CXG_CODEX_BIN}, else the pinned one under C{.tools/codex}, else C{codex}.
    """

    def setUp(self) -> None:
        """
        A working directory and a checkout, each without codex.
        """
        self.cwd = Path(self.mktemp()).absolute()
        self.package = Path(self.mktemp()).absolute()
        self.cwd.mkdir()
        self.package.mkdir()

    def test_variable_wins(self) -> None:
        """
        C{CXG_CODEX_BIN}, when set, is used as given (the app gateway's rule checks it).
        """
        fake_codex_install(self.cwd / ".tools" / "codex")
        found = find_dev_codex_bin({"CXG_CODEX_BIN": "my-codex"}, self.cwd, self.package)
        self.assertEqual("my-codex", found)

    def test_working_directory_first(self) -> None:
        """
        The pinned binary under the working directory's C{.tools/codex} comes before the checkout's.
        """
        here = fake_codex_install(self.cwd / ".tools" / "codex")
        fake_codex_install(self.package / ".tools" / "codex")
        self.assertEqual(str(here.resolve()), find_dev_codex_bin({}, self.cwd, self.package))

    def test_checkout(self) -> None:
        """
        Without one in the working directory, the checkout's is used (an empty variable is unset).
        """
        there = fake_codex_install(self.package / ".tools" / "codex")
        found = find_dev_codex_bin({"CXG_CODEX_BIN": ""}, self.cwd, self.package)
        self.assertEqual(str(there.resolve()), found)

    def test_path(self) -> None:
        """
        Without any pinned binary, C{codex} (looked up on C{PATH}).
        """
        self.assertEqual("codex", find_dev_codex_bin({}, self.cwd, self.package))


class DevConfigTests(SynchronousTestCase):
    """
    L{load_dev_config} lays the dev stack's fixed values over the environment and validates the
    three programs' configurations.
    """

    def setUp(self) -> None:
        """
        A working directory and an environment with an executable as codex.
        """
        self.cwd = Path(self.mktemp()).absolute()
        self.cwd.mkdir()
        self.codex = fake_codex_install(self.cwd / "elsewhere")
        self.environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.cwd),
            "CXG_CODEX_BIN": str(self.codex),
        }

    def load(self, **extra: str) -> Any:
        """
        Load the configuration with C{extra} variables.
        """
        return load_dev_config({**self.environ, **extra}, self.cwd, package_root=self.cwd)

    def test_defaults(self) -> None:
        """
        With no configuration: state under C{./var}, the file's secrets in every program, HMAC
        inbound auth, the exec gateway on loopback port 6060, the app gateway on 127.0.0.1:8086 and
        the fake model.
        """
        config = self.load()
        var = self.cwd / "var"
        secrets = json.loads((var / "dev-secrets.json").read_text())
        self.assertEqual(var, config.var_dir)
        self.assertEqual(var / "executor", config.executor_state_dir)
        self.assertEqual(0o700, stat.S_IMODE(config.executor_state_dir.stat().st_mode))
        exec_gateway = config.exec_gateway
        self.assertEqual(f"sqlite:///{var}/exec-gateway.sqlite3", exec_gateway.database_url)
        self.assertEqual("tcp:6060:interface=127.0.0.1", config.exec_endpoint)
        self.assertEqual("hmac", exec_gateway.sdk_mode)
        for name in SECRET_NAMES:
            attribute = name.removeprefix("CXG_").lower()
            self.assertEqual(secrets[name].encode(), getattr(exec_gateway, attribute).value)
        app = config.app_gateway
        self.assertEqual(DEFAULT_LISTEN_ADDR, f"{app.listen_addr.host}:{app.listen_addr.port}")
        self.assertEqual(str(self.codex), app.codex_bin)
        self.assertEqual("ws://127.0.0.1:6060", app.exec_gateway_url)
        self.assertEqual("http://127.0.0.1:6060", app.exec_gateway_internal_url)
        self.assertEqual(
            secrets["CXG_INTERNAL_SHARED_SECRET"].encode(), app.exec_gateway_internal_secret.value
        )
        self.assertEqual(secrets["CXG_CAPTOKEN_HMAC_SECRET"].encode(), app.captoken_hmac_secret.value)
        self.assertEqual(
            secrets["CXG_AGENTSERVER_INTERNAL_SECRET"].encode(), app.agentserver_internal_secret.value
        )
        self.assertEqual("hmac", app.auth_mode)
        self.assertEqual(secrets["CXG_INBOUND_HMAC_SECRET"].encode(), app.inbound_hmac_secret.value)
        self.assertEqual(str(var / "objects"), app.store.object_dir)
        self.assertEqual(str(var / "homes"), app.store.tmp_root)
        self.assertTrue(config.fake_model)
        self.assertEqual(FAKE_MODEL, app.model)
        self.assertEqual(FAKE_API_KEY, app.codex_api_key)
        self.assertEqual("responses", app.model_provider_wire_api)
        self.assertEqual("info", config.log_level)

    def test_fixed_values_win(self) -> None:
        """
        Secrets, store, remote auth and S3 settings in the environment are ignored; the other
        variables (ports, log level) apply.
        """
        config = self.load(
            CXG_CAPTOKEN_HMAC_SECRET="x" * 40,
            CXG_INBOUND_HMAC_SECRET="y" * 40,
            CXG_DATABASE_URL="postgres://db/x",
            CXG_AGENTSERVER_INTERNAL_URL="http://agentserver",
            CXG_S3_ENDPOINT="http://s3.example",
            CXG_OBJECT_DIR="/elsewhere",
            CXG_PORT="7070",
            CXG_LISTEN_ADDR="127.0.0.1:0",
            CXG_LOG_LEVEL="DEBUG",
        )
        secrets = json.loads((self.cwd / "var" / "dev-secrets.json").read_text())
        self.assertEqual(
            secrets["CXG_CAPTOKEN_HMAC_SECRET"].encode(), config.exec_gateway.captoken_hmac_secret.value
        )
        self.assertIsNone(config.exec_gateway.agentserver_internal_url)
        self.assertIn("exec-gateway.sqlite3", config.exec_gateway.database_url)
        app = config.app_gateway
        self.assertEqual("hmac", app.auth_mode)
        self.assertEqual(secrets["CXG_INBOUND_HMAC_SECRET"].encode(), app.inbound_hmac_secret.value)
        self.assertIsNone(app.store.s3_endpoint)
        self.assertEqual(str(self.cwd / "var" / "objects"), app.store.object_dir)
        self.assertEqual("tcp:7070:interface=127.0.0.1", config.exec_endpoint)
        self.assertEqual("ws://127.0.0.1:7070", app.exec_gateway_url)
        self.assertEqual(0, app.listen_addr.port)
        self.assertEqual("debug", config.log_level)

    def test_real_model(self) -> None:
        """
        With C{CXG_MODEL_PROVIDER_BASE_URL} set, the app gateway's model settings apply.
        """
        config = self.load(
            CXG_MODEL_PROVIDER_BASE_URL="https://llm.example/v1",
            CXG_MODEL="gpt-real",
            CXG_CODEX_API_KEY="sk-real",
        )
        self.assertFalse(config.fake_model)
        self.assertEqual("https://llm.example/v1", config.app_gateway.model_provider_base_url)
        self.assertEqual("gpt-real", config.app_gateway.model)
        self.assertEqual("sk-real", config.app_gateway.codex_api_key)

    def test_secrets_reused(self) -> None:
        """
        A second start uses the secrets of the first.
        """
        first = self.load()
        second = self.load()
        self.assertEqual(dict(first.secrets.values), dict(second.secrets.values))

    def test_errors(self) -> None:
        """
        Each program's rules apply, with its messages.
        """
        for extra, message in [
            ({"CXG_PORT": "x"}, 'CXG_PORT must be an integer, got "x"'),
            ({"CXG_LISTEN_ADDR": "10.1.1.1:80"}, "CXG_LISTEN_ADDR must bind a wildcard or loopback"),
            ({"CXG_CODEX_BIN": "/nonexistent/codex"}, 'codex binary "/nonexistent/codex" not found'),
        ]:
            error = self.assertRaises(ConfigError, self.load, **extra)
            self.assertIn(message, str(error))


class RegistrationTests(SynchronousTestCase):
    """
    L{register_local_executor} binds a freshly registered C{local} to C{dev} on every start.
    """

    def setUp(self) -> None:
        """
        A fake store and a token source that counts.
        """
        self.clock = Clock()
        self.store = FakeStore(self.clock)
        self.hashed: list[str] = []
        self.count = 0

    def hash_token(self, token: str) -> Deferred[str]:
        """
        A stand-in for bcrypt.
        """
        self.hashed.append(token)
        return Deferred.fromCoroutine(self._hash(token))

    async def _hash(self, token: str) -> str:
        return f"hash:{token}"

    def new_token(self) -> str:
        """
        Tokens C{token-1}, C{token-2}, ...
        """
        self.count += 1
        return f"token-{self.count}"

    def register(self) -> tuple[str, str]:
        """
        Run one registration to its end.
        """
        return self.successResultOf(
            Deferred.fromCoroutine(
                register_local_executor(self.store, self.hash_token, self.clock, self.new_token)
            )
        )

    def bindings(self) -> list[WorkspaceExecutor]:
        """
        The bindings of workspace C{dev}.
        """
        return self.successResultOf(self.store.list_workspace_executors(WORKSPACE_ID))

    def test_first_start(self) -> None:
        """
        A new executor is stored with the hash of its token and bound as C{local}, default.
        """
        exe_id, token = self.register()
        self.assertRegex(exe_id, "^exe_[0-9a-f-]{36}$")
        self.assertEqual("token-1", token)
        self.assertEqual(["token-1"], self.hashed)
        self.assertEqual(
            "hash:token-1", self.successResultOf(self.store.get_registration_token_hash(exe_id))
        )
        (binding,) = self.bindings()
        self.assertEqual(
            (exe_id, EXECUTOR_NAME, True), (binding.exe_id, binding.name, binding.is_default)
        )

    def test_next_start(self) -> None:
        """
        A later start keeps the executor's id, replaces its token and leaves one binding.
        """
        first, _ = self.register()
        second, token = self.register()
        self.assertEqual(first, second)
        self.assertEqual("token-2", token)
        self.assertEqual(
            "hash:token-2", self.successResultOf(self.store.get_registration_token_hash(first))
        )
        self.assertEqual([first], [b.exe_id for b in self.bindings()])


class InstructionsTests(SynchronousTestCase):
    """
    The lines printed when the stack is ready.
    """

    def test_lines(self) -> None:
        """
        The export, the codex command and a curl command whose arguments post a C{run:} prompt for
        workspace C{dev} with the turn secret.
        """
        text = instructions("http://127.0.0.1:8086", "dev.tui.abc", "s3cret").decode()
        self.assertTrue(text.endswith("\n"))
        export, codex, curl = text.splitlines()
        self.assertEqual("export CODEXGW_TOKEN=dev.tui.abc", export)
        self.assertEqual(
            "codex --remote ws://127.0.0.1:8086 --remote-auth-token-env CODEXGW_TOKEN", codex
        )
        request = parse_curl(curl)
        self.assertEqual("http://127.0.0.1:8086/api/turns", request["url"])
        self.assertEqual(
            {"X-Internal-Secret": "s3cret", "Content-Type": "application/json"}, request["headers"]
        )
        self.assertEqual(
            {"workspaceId": "dev", "params": {"input": [{"type": "text", "text": CURL_PROMPT}]}},
            json.loads(request["body"]),
        )


def parse_curl(line: str) -> dict[str, Any]:
    """
    Read a printed C{curl} command line as a shell would: its URL, headers and body.
    """
    argv = shlex.split(line)
    if argv[0] != "curl":
        raise AssertionError(f"not a curl command: {line}")
    url, body, headers = None, None, {}
    arguments = iter(argv[1:])
    for argument in arguments:
        if argument == "-H":
            name, _, value = next(arguments).partition(": ")
            headers[name] = value
        elif argument == "-d":
            body = next(arguments)
        elif argument.startswith("http://"):
            url = argument
        elif argument != "-sS":
            raise AssertionError(f"unexpected curl argument {argument!r}")
    return {"url": url, "headers": headers, "body": body}


class DevStackProcess(GatewayProcess):
    """
    One C{twist codexgw-dev} process (its port is the app gateway's).
    """

    plugin: ClassVar[str] = "codexgw-dev"
    started_event: ClassVar[str] = "app_gateway.started"

    def plain_lines(self) -> list[str]:
        """
        The lines of stdout that are not JSON log events.
        """
        lines = bytes(self.stdout).decode("utf-8", "replace").splitlines()
        return [line for line in lines if line and not line.lstrip("\x1e").startswith("{")]


class DevStackEndToEndTests(TestCase):
    """
    C{twist codexgw-dev} on free ports, followed as its printed instructions say.
    """

    timeout = 240

    async def test_instructions_work(self) -> None:
        """
        The stack prints the export, codex and curl lines on stdout (outside the JSON log); a
        TUI-style client with the printed token completes C{run: echo <marker>} on the executor
        C{local}, and so does the printed curl request; the other prompts get the fake model's note;
        SIGTERM stops it with status 0 and a snapshot of workspace C{dev} under C{./var/objects}.
        """
        cwd = Path(self.mktemp()).absolute()
        home = cwd.parent / f"{cwd.name}-home"
        home.mkdir(parents=True)
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            "CXG_PORT": "0",
            "CXG_LISTEN_ADDR": "127.0.0.1:0",
            "CXG_CODEX_BIN": str(codex_binary()),
        }
        stack = DevStackProcess(environ, cwd, args=())
        self.addCleanup(kill_codex_processes, cwd / "var" / "homes")
        self.addCleanup(stack.stop)
        await stack.start(timeout=60)
        await stack.wait_event("dev.ready", timeout=60)
        self.assertTrue(stack.named("dev.fake_model"), stack.output)

        export, codex, curl = stack.plain_lines()
        self.assertEqual(
            f"codex --remote ws://127.0.0.1:{stack.port} --remote-auth-token-env CODEXGW_TOKEN", codex
        )
        self.assertTrue(export.startswith("export CODEXGW_TOKEN="), export)
        token = export.removeprefix("export CODEXGW_TOKEN=")
        secrets = json.loads((cwd / "var" / "dev-secrets.json").read_text())
        self.assertEqual(
            tokens.mint_inbound_token(
                DevSecrets(secrets).secret("CXG_INBOUND_HMAC_SECRET"), WORKSPACE_ID, "tui"
            ),
            token,
        )

        tui = await bounded(
            connect_app_server(
                reactor, f"ws://127.0.0.1:{stack.port}", {"Authorization": f"Bearer {token}"}
            ),
            RPC_SECONDS,
            "TUI connect",
        )
        self.addCleanup(tui.close)
        await bounded(Deferred.fromCoroutine(initialize(tui, "codex-tui")), RPC_SECONDS, "initialize")
        marker = f"dev-marker-{os.getpid()}"
        _, completed = await run_turn(tui, f"run: echo {marker}")
        self.assertEqual("completed", member(completed, "turn", "status"))
        texts = agent_texts(tui)
        self.assertIn(marker, texts[-1])
        self.assertIn("[exit_code=0]", texts[-1])
        _, completed = await run_turn(tui, "hello?")
        self.assertEqual(OFFLINE_TEXT, agent_texts(tui)[-1])

        request = parse_curl(curl)
        response = await bounded(
            treq.post(
                request["url"],
                data=request["body"].encode(),
                headers=Headers({k: [v] for k, v in request["headers"].items()}),
                persistent=False,
            ),
            TURN_SECONDS,
            "POST /api/turns",
        )
        self.assertEqual(200, response.code)
        answer = json.loads(await treq.content(response))
        self.assertEqual("completed", member(answer, "turn", "status"), answer)
        items = member(answer, "turn", "items")
        calls = [item for item in items if item.get("type") == "mcpToolCall"]
        self.assertEqual(["shell"], [call["tool"] for call in calls])
        self.assertEqual("local", calls[0]["arguments"]["environment_id"])
        messages = [item["text"] for item in items if item.get("type") == "agentMessage"]
        self.assertIn("hello from codexgw", messages[-1])

        stack._signal(signal.SIGTERM)
        self.assertEqual(0, await stack.exited(30))
        self.assertTrue((cwd / "var" / "objects" / "codex-app-gateway" / "dev.tar.gz").is_file())
        self.assertEqual(3, len(stack.plain_lines()), stack.output)


class DevPluginTests(TestCase):
    """
    The plugin validates its configuration before anything listens.
    """

    timeout = 60

    async def test_config_error(self) -> None:
        """
        An invalid variable exits 64 with C{config: <message>} on stderr.
        """
        cwd = Path(self.mktemp()).absolute()
        stack = DevStackProcess(
            {"PATH": os.environ.get("PATH", ""), "HOME": str(cwd), "CXG_PORT": "port"}, cwd, args=()
        )
        stack.spawn()
        self.assertEqual(64, await stack.exited(30))
        self.assertIn('config: CXG_PORT must be an integer, got "port"', stack.output)
