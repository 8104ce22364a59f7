"""
The C{codexgw} console script (C{delivery.md} §3.1).

Sub-commands are added by the issues that build what they drive; today: C{token cap|inbound|ticket},
which mint tokens from the configured secrets for operators and tests, and C{migrate}, which brings the
exec gateway's database schema up to date.

Exit statuses: 0 success (stdout is exactly the token and a newline); 2 usage error (stderr
C{codexgw: <error>}); 64 configuration error (stderr C{config: <message>}, nothing on stdout); 1 store
failure of C{migrate} (stderr C{store: <error without password>}).

Decision where the spec is silent: C{--ttl} is rounded up to whole seconds, so any positive duration
yields C{exp > iat}.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TextIO

from codexgw import tokens
from codexgw.config import ConfigError, Secret, parse_duration, parse_secret

#: Exit status of a configuration error (C{delivery.md} §3), as C{EX_USAGE} of sysexits.h.
EXIT_CONFIG = 64
#: Exit status of a usage error.
EXIT_USAGE = 2

WORKSPACE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


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
    return parser


def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    """
    Run the command line C{argv} (without the program name) and return the exit status.
    """
    try:
        args = build_parser().parse_args(list(argv))
        if args.command == "migrate":
            return _migrate(environ, stderr)
        token = args.mint(args, environ, clock())
    except UsageError as e:
        print(f"codexgw: {e}", file=stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"config: {e}", file=stderr)
        return EXIT_CONFIG
    stdout.write(token + "\n")
    return 0


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
