"""
Tests for L{codexgw.cli}: the C{codexgw token} sub-commands (C{delivery.md} §3.1).
"""

from __future__ import annotations

import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from codexgw.cli import run
from codexgw.config import Secret
from codexgw.tokens import (
    UsedTickets,
    b64url_decode,
    verify_cap_token,
    verify_inbound_token,
    verify_ws_ticket,
)

CAP = "c" * 32
INBOUND = "i" * 40
SHARED = "s" * 33
ENV = {
    "CXG_CAPTOKEN_HMAC_SECRET": CAP,
    "CXG_INBOUND_HMAC_SECRET": INBOUND,
    "CXG_INTERNAL_SHARED_SECRET": SHARED,
}
NOW = 1_800_000_000.5


def codexgw(*argv: str, env: dict[str, str] = ENV) -> tuple[int, str, str]:
    """
    Run the command line in-process at the fixed time L{NOW}; return status, stdout, stderr.
    """
    out, err = io.StringIO(), io.StringIO()
    status = run(argv, env, out, err, clock=lambda: NOW)
    return status, out.getvalue(), err.getvalue()


class TokenCapTests(SynchronousTestCase):
    """
    C{codexgw token cap}.
    """

    def test_defaults(self) -> None:
        """
        The token verifies with the same secret; its payload has a random C{trn_} turn id, the
        workspace, C{iat} = now and C{exp} = now + 1 h.
        """
        status, out, err = codexgw("token", "cap", "--workspace", "ws_a")
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.endswith("\n") and out.count("\n") == 1)
        token = out[:-1]
        claims = verify_cap_token(Secret(CAP.encode()), token, int(NOW))
        payload = json.loads(b64url_decode(token.split(".")[1]))
        self.assertEqual(list(payload), ["turn_id", "workspace_id", "iat", "exp"])
        self.assertRegex(claims.turn_id, r"^trn_[0-9a-f]{16}$")
        self.assertEqual(
            (claims.workspace_id, payload["iat"], claims.exp), ("ws_a", 1_800_000_000, 1_800_003_600)
        )

    def test_options(self) -> None:
        """
        C{--turn-id} and C{--ttl} (rounded up to whole seconds) are honoured.
        """
        status, out, _ = codexgw(
            "token", "cap", "--workspace", "w", "--turn-id", "trn_x", "--ttl", "1.5s"
        )
        self.assertEqual(status, 0)
        claims = verify_cap_token(Secret(CAP.encode()), out.strip(), int(NOW))
        self.assertEqual((claims.turn_id, claims.exp), ("trn_x", 1_800_000_002))

    def test_badValues(self) -> None:
        """
        An invalid workspace, a zero, negative or malformed TTL, a missing workspace, an unknown
        option and an unknown sub-command are usage errors: exit 2, C{codexgw: } on stderr.
        """
        for argv in (
            ["token", "cap", "--workspace", "a/b"],
            ["token", "cap", "--workspace", "x" * 129],
            ["token", "cap", "--workspace", "w", "--ttl", "0"],
            ["token", "cap", "--workspace", "w", "--ttl", "-1s"],
            ["token", "cap", "--workspace", "w", "--ttl", "1x"],
            ["token", "cap"],
            ["token", "cap", "--workspace", "w", "--bogus"],
            ["token", "nope"],
            ["nope"],
            [],
        ):
            with self.subTest(argv=argv):
                status, out, err = codexgw(*argv)
                self.assertEqual((status, out), (2, ""))
                self.assertTrue(err.startswith("codexgw: "), err)

    def test_secretRules(self) -> None:
        """
        A missing or short signing secret is a configuration error: exit 64, nothing on stdout, and
        the value is not echoed.
        """
        for env, message in (
            ({}, "config: CXG_CAPTOKEN_HMAC_SECRET is required\n"),
            ({"CXG_CAPTOKEN_HMAC_SECRET": ""}, "config: CXG_CAPTOKEN_HMAC_SECRET is required\n"),
            (
                {"CXG_CAPTOKEN_HMAC_SECRET": "q" * 31},
                "config: CXG_CAPTOKEN_HMAC_SECRET must be at least 32 bytes\n",
            ),
        ):
            with self.subTest(env=env):
                self.assertEqual(codexgw("token", "cap", "--workspace", "w", env=env), (64, "", message))

    def test_readsOnlyItsSecret(self) -> None:
        """
        C{token cap} needs only the cap secret; the others may be missing.
        """
        status, _, _ = codexgw("token", "cap", "--workspace", "w", env={"CXG_CAPTOKEN_HMAC_SECRET": CAP})
        self.assertEqual(status, 0)


class TokenInboundTests(SynchronousTestCase):
    """
    C{codexgw token inbound}.
    """

    def test_defaultLabel(self) -> None:
        """
        The token is C{<workspace>.cli.<hmac>} and verifies.
        """
        status, out, _ = codexgw("token", "inbound", "--workspace", "ws_a")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("ws_a.cli."))
        self.assertEqual(
            verify_inbound_token(Secret(INBOUND.encode()), out.strip()).workspace_id, "ws_a"
        )

    def test_label(self) -> None:
        """
        C{--label} is used; an empty or dotted label is a usage error.
        """
        self.assertTrue(
            codexgw("token", "inbound", "--workspace", "w", "--label", "bot")[1].startswith("w.bot.")
        )
        for label in ("", "a.b"):
            with self.subTest(label=label):
                self.assertEqual(codexgw("token", "inbound", "--workspace", "w", "--label", label)[0], 2)

    def test_secret(self) -> None:
        """
        The inbound secret is required.
        """
        self.assertEqual(
            codexgw("token", "inbound", "--workspace", "w", env={}),
            (64, "", "config: CXG_INBOUND_HMAC_SECRET is required\n"),
        )


class TokenTicketTests(SynchronousTestCase):
    """
    C{codexgw token ticket}.
    """

    def test_default(self) -> None:
        """
        The ticket is valid for five minutes, once.
        """
        status, out, _ = codexgw("token", "ticket", "--exe-id", "exe_1")
        self.assertEqual(status, 0)
        ticket = out.strip()
        self.assertEqual(ticket.split(".")[1], str(1_800_000_000 + 300))
        verify_ws_ticket(Secret(SHARED.encode()), ticket, "exe_1", int(NOW), UsedTickets())

    def test_badValues(self) -> None:
        """
        A dotted or empty exe id and a TTL outside 1 s–1 h are usage errors.
        """
        for argv in (["--exe-id", "a.b"], ["--exe-id", ""], ["--exe-id", "e", "--ttl", "2h"],
                     ["--exe-id", "e", "--ttl", "500ms"]):  # fmt: skip
            with self.subTest(argv=argv):
                self.assertEqual(codexgw("token", "ticket", *argv)[0], 2)

    def test_secret(self) -> None:
        """
        The internal shared secret is required.
        """
        self.assertEqual(
            codexgw("token", "ticket", "--exe-id", "e", env={}),
            (64, "", "config: CXG_INTERNAL_SHARED_SECRET is required\n"),
        )


class ConsoleScriptTests(SynchronousTestCase):
    """
    The installed C{codexgw} console script runs as a real process.
    """

    def test_tokenCap(self) -> None:
        """
        C{codexgw token cap --workspace ws_a} prints one verifiable token and exits 0.
        """
        script = Path(sys.executable).parent / "codexgw"
        if not script.exists():
            self.fail(f"{script} missing: run `make install`")
        env = {"PATH": os.environ.get("PATH", ""), "CXG_CAPTOKEN_HMAC_SECRET": CAP}
        done = subprocess.run(
            [script, "token", "cap", "--workspace", "ws_a"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual((done.returncode, done.stderr), (0, ""))
        claims = verify_cap_token(
            Secret(CAP.encode()), done.stdout.rstrip("\n"), claims_now(done.stdout)
        )
        self.assertEqual(claims.workspace_id, "ws_a")


def claims_now(token_line: str) -> int:
    """
    Return the C{iat} of a printed cap token, the instant at which it is certainly valid.
    """
    iat: int = json.loads(b64url_decode(token_line.strip().split(".")[1]))["iat"]
    return iat


class MigrateTests(SynchronousTestCase):
    """
    C{codexgw migrate} brings a database's schema up to date (C{delivery.md} §3.1), as a real process.
    """

    def migrate(self, env: dict[str, str], cwd: str) -> subprocess.CompletedProcess[str]:
        """
        Run the installed C{codexgw migrate} with C{env} in C{cwd}.
        """
        script = Path(sys.executable).parent / "codexgw"
        return subprocess.run(
            [script, "migrate"],
            env={"PATH": os.environ.get("PATH", ""), **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_sqliteDefaultTwice(self) -> None:
        """
        With no configuration it creates C{var/exec-gateway.sqlite3} with both migrations; a second
        run succeeds and applies nothing.
        """
        cwd = self.mktemp()
        os.makedirs(cwd)
        for _ in range(2):
            done = self.migrate({}, cwd)
            self.assertEqual((done.returncode, done.stdout), (0, ""), done.stderr)
        with sqlite3.connect(os.path.join(cwd, "var", "exec-gateway.sqlite3")) as db:
            versions = [
                row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")
            ]
        self.assertEqual(versions, ["001_executors.sql", "002_workspace_executor_name.sql"])

    def test_unreachablePostgres(self) -> None:
        """
        A PostgreSQL URL nobody answers exits 1 with C{store: }, never showing the password.
        """
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cwd = self.mktemp()
        os.makedirs(cwd)
        done = self.migrate({"CXG_DATABASE_URL": f"postgresql://u:hunter2pw@127.0.0.1:{port}/d"}, cwd)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn("store: ", done.stderr)
        self.assertNotIn("hunter2pw", done.stderr + done.stdout)

    def test_badURL(self) -> None:
        """
        An unsupported scheme is a configuration error: exit 64, only the scheme echoed.
        """
        cwd = self.mktemp()
        os.makedirs(cwd)
        done = self.migrate({"CXG_DATABASE_URL": "mysql://u:hunter2pw@h/d"}, cwd)
        self.assertEqual(done.returncode, 64)
        self.assertEqual(
            done.stderr,
            "config: CXG_DATABASE_URL: "
            'unsupported scheme "mysql" (want sqlite, postgres or postgresql)\n',
        )


ADMIN = "a" * 40
EXE_ID = "exe_0123"
REG_TOKEN = "f" * 64


class FakeAdminAPI:
    """
    The exec gateway's admin routes as C{executor register} calls them, recorded; answers are
    C{(status, body)} by C{(method, path)}.
    """

    def __init__(self, answers: dict[tuple[str, str], tuple[int, bytes]] | None = None) -> None:
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        self.answers = {
            ("POST", "/api/codex-exec/register"): (
                201,
                json.dumps({"exe_id": EXE_ID, "registration_token": REG_TOKEN}).encode(),
            ),
            ("POST", "/api/codex-exec/workspaces/ws_a/executors"): (201, b'{"status":"ok"}'),
            ("DELETE", f"/api/codex-exec/executors/{EXE_ID}"): (204, b""),
            **(answers or {}),
        }

    def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        """
        Record one request and answer it.
        """
        path = url.removeprefix("http://gw:6060")
        self.calls.append((method, path, dict(headers), json.loads(body) if body else None))
        return self.answers[(method, path)]


REGISTER = (
    "executor", "register", "--gateway", "http://gw:6060/", "--user-id", "alice",
    "--workspace", "ws_a", "--name", "laptop",
)  # fmt: skip


def register(
    *extra: str, api: FakeAdminAPI | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str, FakeAdminAPI]:
    """
    Run C{codexgw executor register} in-process against a fake admin API.
    """
    api = api or FakeAdminAPI()
    out, err = io.StringIO(), io.StringIO()
    environ = {"CXG_AGENTSERVER_INTERNAL_SECRET": ADMIN} if env is None else env
    status = run([*REGISTER, *extra], environ, out, err, http=api)
    return status, out.getvalue(), err.getvalue(), api


class ExecutorRegisterTests(SynchronousTestCase):
    """
    C{codexgw executor register} (C{executor.md} §1).
    """

    def test_register_and_bind(self) -> None:
        """
        It registers (with the user and the name), binds to the workspace (description and default
        flag included) and prints the exe id, the token and the command that starts the executor,
        with the token in the environment, never on the executor's command line.
        """
        status, out, err, api = register("--description", "my box", "--default")
        self.assertEqual(status, 0, err)
        (m1, p1, h1, b1), (m2, p2, h2, b2) = api.calls
        self.assertEqual((m1, p1, b1), ("POST", "/api/codex-exec/register", {"display_name": "laptop"}))
        self.assertEqual((h1["X-Internal-Secret"], h1["X-User-Id"]), (ADMIN, "alice"))
        self.assertEqual((m2, p2), ("POST", "/api/codex-exec/workspaces/ws_a/executors"))
        self.assertEqual(
            b2, {"exe_id": EXE_ID, "name": "laptop", "description": "my box", "is_default": True}
        )
        self.assertEqual(h2["X-Internal-Secret"], ADMIN)
        self.assertEqual(
            out.splitlines(),
            [
                f"exe_id: {EXE_ID}",
                f"registration_token: {REG_TOKEN}",
                f"command: CXG_EXECUTOR_TOKEN={REG_TOKEN} twist codexgw-executor "
                f"--gateway http://gw:6060 --executor-id {EXE_ID}",
            ],
        )
        self.assertIn("only this once", err)

    def test_defaults(self) -> None:
        """
        Without C{--description} and C{--default}, the binding has an empty description and is not
        the default.
        """
        _, _, _, api = register()
        self.assertEqual(
            api.calls[1][3], {"exe_id": EXE_ID, "name": "laptop", "description": "", "is_default": False}
        )

    def test_secret_rules(self) -> None:
        """
        C{CXG_AGENTSERVER_INTERNAL_SECRET} is checked like the services check it: exit 64, nothing
        requested.
        """
        for env, message in (
            ({}, "config: CXG_AGENTSERVER_INTERNAL_SECRET is required\n"),
            (
                {"CXG_AGENTSERVER_INTERNAL_SECRET": "x" * 31},
                "config: CXG_AGENTSERVER_INTERNAL_SECRET must be at least 32 bytes\n",
            ),
        ):
            status, out, err, api = register(env=env)
            self.assertEqual((status, out, err, api.calls), (64, "", message, []))

    def test_usage_errors(self) -> None:
        """
        A gateway that is not http(s), a bad workspace, an empty name or a missing option are usage
        errors: exit 2.
        """
        for argv in (
            [
                "executor",
                "register",
                "--gateway",
                "ws://gw",
                "--user-id",
                "u",
                "--workspace",
                "w",
                "--name",
                "n",
            ],
            [
                "executor",
                "register",
                "--gateway",
                "http://gw",
                "--user-id",
                "u",
                "--workspace",
                "a/b",
                "--name",
                "n",
            ],
            [
                "executor",
                "register",
                "--gateway",
                "http://gw",
                "--user-id",
                "u",
                "--workspace",
                "w",
                "--name",
                "",
            ],
            ["executor", "register", "--gateway", "http://gw", "--workspace", "w", "--name", "n"],
            ["executor"],
        ):
            with self.subTest(argv=argv):
                status, out, err = codexgw(*argv, env={"CXG_AGENTSERVER_INTERNAL_SECRET": ADMIN})
                self.assertEqual((status, out), (2, ""))
                self.assertTrue(err.startswith("codexgw: "), err)

    def test_register_refused(self) -> None:
        """
        A refused registration exits 1 with the status and body; nothing is bound.
        """
        api = FakeAdminAPI({("POST", "/api/codex-exec/register"): (401, b"unauthorized\n")})
        status, out, err, api = register(api=api)
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err, "codexgw: executor register: POST /api/codex-exec/register: HTTP 401: unauthorized\n"
        )
        self.assertEqual(len(api.calls), 1)

    def test_bind_refused(self) -> None:
        """
        A refused binding exits 1 and deletes the executor just registered.
        """
        api = FakeAdminAPI(
            {("POST", "/api/codex-exec/workspaces/ws_a/executors"): (409, b'{"error":"bind failed"}')}
        )
        status, out, err, api = register(api=api)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("HTTP 409", err)
        self.assertEqual(api.calls[-1][:2], ("DELETE", f"/api/codex-exec/executors/{EXE_ID}"))

    def test_unreachable(self) -> None:
        """
        A gateway that does not answer exits 1 with the error.
        """

        def refused(
            method: str, url: str, headers: Mapping[str, str], body: bytes | None
        ) -> tuple[int, bytes]:
            raise ConnectionRefusedError("Connection refused")

        out, err = io.StringIO(), io.StringIO()
        status = run(list(REGISTER), {"CXG_AGENTSERVER_INTERNAL_SECRET": ADMIN}, out, err, http=refused)
        self.assertEqual((status, out.getvalue()), (1, ""))
        self.assertIn("Connection refused", err.getvalue())
