"""
The C{codexgw} console script (C{delivery.md} §3.1).

Sub-commands are added by the issues that build what they drive; today: C{token cap|inbound|ticket},
which mint tokens from the configured secrets for operators and tests, C{migrate}, which brings the
exec gateway's database schema up to date, and C{executor register} (C{executor.md} §1), which
registers an executor with the exec gateway's admin API, binds it to a workspace and prints how to
start it. C{env-mcp} (the stdio MCP server codex starts, C{app-gateway.md} §9) is dispatched to
L{codexgw.envmcp.cli} before this parser sees the command line: it has its own usage and exit rules.

Exit statuses: 0 success (stdout is exactly the token and a newline); 2 usage error (stderr
C{codexgw: <error>}); 64 configuration error (stderr C{config: <message>}, nothing on stdout); 1 store
failure of C{migrate} (stderr C{store: <error without password>}) or a failed request of C{executor
register} (stderr C{codexgw: executor register: <error>}).

Decisions where the spec is silent:
 - C{--ttl} is rounded up to whole seconds, so any positive duration yields C{exp > iat}.
 - C{executor register} sends C{--name} as the registration's C{display_name} and as the binding's
   name. Its stdout is three lines — C{exe_id: <id>}, C{registration_token: <token>} and
   C{command: CXG_EXECUTOR_TOKEN=<token> twist codexgw-executor --gateway <url> --executor-id <id>}
   (values shell-quoted) — and stderr notes that the token is shown only this once. The token goes in
   the environment, never on the executor's command line (where C{ps} would show it).
 - If binding fails after the registration succeeded, the new executor is deleted again (best
   effort), so a failed command leaves nothing behind. Each request must answer within 10 s.
 - C{--gateway} must be an http(s) URL (a usage error otherwise); a trailing C{/} is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import secrets
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO
from urllib.parse import quote

from codexgw import tokens
from codexgw.config import ConfigError, Secret, parse_duration, parse_secret, parse_url

#: Exit status of a configuration error (C{delivery.md} §3), as C{EX_USAGE} of sysexits.h.
EXIT_CONFIG = 64
#: Exit status of a usage error.
EXIT_USAGE = 2

WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Seconds each admin request of C{executor register} may take.
HTTP_TIMEOUT = 10.0

#: Makes one HTTP request: C{(method, url, headers, body)} → C{(status, body)}; raises C{OSError} when
#: no answer came.
HTTPRequest = Callable[[str, str, Mapping[str, str], bytes | None], tuple[int, bytes]]


class UsageError(Exception):
    """
    The command line is wrong; the message follows C{codexgw: } on stderr.
    """


class _Parser(argparse.ArgumentParser):
    """
    An argument parser that reports usage errors as L{UsageError} instead of exiting itself.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _workspace(value: str) -> str:
    if not WORKSPACE_ID.fullmatch(value):
        raise argparse.ArgumentTypeError(f"invalid workspace {value!r}: want ^[A-Za-z0-9_-]{{1,128}}$")
    return value


def _exe_id(value: str) -> str:
    if not value or "." in value:
        raise argparse.ArgumentTypeError(f"invalid exe id {value!r}: must be non-empty without '.'")
    return value


def _label(value: str) -> str:
    if not value or "." in value:
        raise argparse.ArgumentTypeError(f"invalid label {value!r}: must be non-empty without '.'")
    return value


def _ttl(minimum: str = "", maximum: str = "") -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            seconds = parse_duration("--ttl", value, minimum or None, maximum or None)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"--ttl must be above 0, got {value}")
        return math.ceil(seconds)

    return parse


def _gateway(value: str) -> str:
    try:
        return parse_url("--gateway", value, ("http://", "https://"))
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _non_empty(value: str) -> str:
    if not value:
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def _secret(environ: Mapping[str, str], name: str) -> Secret:
    secret = parse_secret(environ, name)
    assert secret is not None  # required=True never returns None
    return secret


def _token_cap(args: argparse.Namespace, environ: Mapping[str, str], now: float) -> str:
    secret = _secret(environ, "CXG_CAPTOKEN_HMAC_SECRET")
    turn_id = args.turn_id or "trn_" + secrets.token_hex(8)
    iat = int(now)
    return tokens.mint_cap_token(secret, turn_id, args.workspace, iat, iat + args.ttl)


def _token_inbound(args: argparse.Namespace, environ: Mapping[str, str], now: float) -> str:
    secret = _secret(environ, "CXG_INBOUND_HMAC_SECRET")
    return tokens.mint_inbound_token(secret, args.workspace, args.label)


def _token_ticket(args: argparse.Namespace, environ: Mapping[str, str], now: float) -> str:
    secret = _secret(environ, "CXG_INTERNAL_SHARED_SECRET")
    return tokens.mint_ws_ticket(secret, args.exe_id, int(now) + args.ttl)


def build_parser() -> argparse.ArgumentParser:
    """
    Return the parser of the whole C{codexgw} command line.
    """
    parser = _Parser(prog="codexgw", description="codexgw command-line tools")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    token = commands.add_parser("token", help="mint a token from the configured secrets")
    kinds = token.add_subparsers(dest="kind", required=True, parser_class=_Parser)

    cap = kinds.add_parser("cap", help="a capability token (CXG_CAPTOKEN_HMAC_SECRET)")
    cap.add_argument("--workspace", required=True, type=_workspace)
    cap.add_argument("--turn-id", default="")
    cap.add_argument("--ttl", type=_ttl(), default=3600)
    cap.set_defaults(mint=_token_cap)

    inbound = kinds.add_parser("inbound", help="an inbound HMAC token (CXG_INBOUND_HMAC_SECRET)")
    inbound.add_argument("--workspace", required=True, type=_workspace)
    inbound.add_argument("--label", type=_label, default="cli")
    inbound.set_defaults(mint=_token_inbound)

    ticket = kinds.add_parser("ticket", help="a single-use ws ticket (CXG_INTERNAL_SHARED_SECRET)")
    ticket.add_argument("--exe-id", required=True, type=_exe_id)
    ticket.add_argument("--ttl", type=_ttl("1s", "1h"), default=300)
    ticket.set_defaults(mint=_token_ticket)

    migrate = commands.add_parser("migrate", help="apply the exec gateway's database migrations")
    migrate.set_defaults(mint=None)

    executor = commands.add_parser("executor", help="executor administration")
    actions = executor.add_subparsers(dest="action", required=True, parser_class=_Parser)
    register = actions.add_parser(
        "register",
        help="register an executor, bind it to a workspace and print how to start it "
        "(CXG_AGENTSERVER_INTERNAL_SECRET)",
    )
    register.add_argument("--gateway", required=True, type=_gateway)
    register.add_argument("--user-id", required=True, type=_non_empty)
    register.add_argument("--workspace", required=True, type=_workspace)
    register.add_argument("--name", required=True, type=_non_empty)
    register.add_argument("--description", default="")
    register.add_argument("--default", action="store_true")
    register.set_defaults(mint=None)
    return parser


def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    clock: Callable[[], float] = time.time,
    http: HTTPRequest | None = None,
) -> int:
    """
    Run the command line C{argv} (without the program name) and return the exit status.

    @param http: how C{executor register} makes its requests (urllib by default).
    """
    if list(argv[:1]) == ["env-mcp"]:
        # Its own command line and exit rules (app-gateway.md §9.1); imported only when used.
        from codexgw.envmcp.cli import main as env_mcp  # noqa: PLC0415

        return env_mcp(argv[1:], environ, stderr)
    try:
        args = build_parser().parse_args(list(argv))
        if args.command == "migrate":
            return _migrate(environ, stderr)
        if args.command == "executor":
            return _executor_register(args, environ, stdout, stderr, http or _urllib_request)
        token = args.mint(args, environ, clock())
    except UsageError as e:
        print(f"codexgw: {e}", file=stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"config: {e}", file=stderr)
        return EXIT_CONFIG
    stdout.write(token + "\n")
    return 0


class _AdminError(Exception):
    """
    An admin request of C{executor register} failed; the message follows C{codexgw: executor
    register: }.
    """


def _executor_register(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    http: HTTPRequest,
) -> int:
    secret = _secret(environ, "CXG_AGENTSERVER_INTERNAL_SECRET").value.decode("utf-8", "surrogateescape")
    headers = {"X-Internal-Secret": secret, "Content-Type": "application/json"}

    def call(method: str, path: str, body: dict[str, Any] | None, expect: int, **extra: str) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        try:
            status, answer = http(method, args.gateway + path, {**headers, **extra}, data)
        except OSError as e:
            raise _AdminError(f"{method} {path}: {getattr(e, 'reason', None) or e}") from None
        if status != expect:
            text = answer.decode("utf-8", "replace").strip()[:200]
            raise _AdminError(f"{method} {path}: HTTP {status}: {text}")
        try:
            return json.loads(answer) if answer else None
        except ValueError:
            raise _AdminError(f"{method} {path}: answer is not JSON") from None

    try:
        created = call(
            "POST",
            "/api/codex-exec/register",
            {"display_name": args.name},
            201,
            **{"X-User-Id": args.user_id},
        )
        if not isinstance(created, dict) or not all(
            isinstance(created.get(k), str) and created[k] for k in ("exe_id", "registration_token")
        ):
            raise _AdminError("POST /api/codex-exec/register: answer lacks exe_id or registration_token")
        exe_id, token = created["exe_id"], created["registration_token"]
        binding = {
            "exe_id": exe_id,
            "name": args.name,
            "description": args.description,
            "is_default": args.default,
        }
        try:
            call(
                "POST",
                f"/api/codex-exec/workspaces/{quote(args.workspace, safe='')}/executors",
                binding,
                201,
            )
        except _AdminError:
            # Do not leave an executor behind that nobody knows the token of.
            with contextlib.suppress(_AdminError):
                call("DELETE", f"/api/codex-exec/executors/{quote(exe_id, safe='')}", None, 204)
            raise
    except _AdminError as e:
        print(f"codexgw: executor register: {e}", file=stderr)
        return 1
    command = shlex.join(
        ["twist", "codexgw-executor", "--gateway", args.gateway, "--executor-id", exe_id]
    )
    stdout.write(
        f"exe_id: {exe_id}\n"
        f"registration_token: {token}\n"
        f"command: CXG_EXECUTOR_TOKEN={shlex.quote(token)} {command}\n"
    )
    print("codexgw: the registration token is shown only this once; keep it secret", file=stderr)
    return 0


def _urllib_request(
    method: str, url: str, headers: Mapping[str, str], body: bytes | None
) -> tuple[int, bytes]:
    # The URL's scheme was checked to be http or https (--gateway), so no file: or custom scheme.
    request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def _migrate(environ: Mapping[str, str], stderr: TextIO) -> int:
    # Imported here: the token commands must not pay for the store's imports.
    from twisted.internet.task import react  # noqa: PLC0415

    from codexgw.execgw.config import load_store_config  # noqa: PLC0415
    from codexgw.execgw.store import open_store  # noqa: PLC0415

    database_url, pool_size = load_store_config(environ)

    async def migrate(reactor: Any) -> None:
        try:
            store = await open_store(database_url, pool_size, reactor)
        except Exception as e:
            print(f"store: {e}", file=stderr)
            raise SystemExit(1) from None
        await store.close()

    react(migrate)


def main() -> NoReturn:
    """
    Console-script entry point.
    """
    sys.exit(run(sys.argv[1:], os.environ, sys.stdout, sys.stderr))
