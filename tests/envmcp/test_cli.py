"""
Tests for L{codexgw.envmcp.cli}: the command line of env-mcp (C{app-gateway.md} §9.1, criterion 61) —
parsing, usage errors (exit 2), empty token variables (exit 1), help (exit 0) — in process and through
the installed C{codexgw} console script.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from codexgw import cli as codexgw_cli
from codexgw.envmcp.cli import (
    HELP,
    OPTIONS,
    HelpRequested,
    Options,
    StartError,
    Tokens,
    UsageError,
    main,
    parse_args,
    read_tokens,
)

#: A complete, valid command line (the form the app gateway writes into config.toml).
ARGS = {
    "--workspace-id": "ws_a",
    "--exec-gateway-url": "ws://exec-gw:6060/bridge",
    "--app-gateway-internal": "http://127.0.0.1:8086",
    "--workspace-token-env": "CXG_WORKSPACE_TOKEN",
    "--loopback-token-env": "CXG_LOOPBACK_TOKEN",
}
EXPECTED = Options(
    workspace_id="ws_a",
    exec_gateway_url="ws://exec-gw:6060/bridge",
    app_gateway_internal="http://127.0.0.1:8086",
    workspace_token_env="CXG_WORKSPACE_TOKEN",
    loopback_token_env="CXG_LOOPBACK_TOKEN",
)
ENV = {"CXG_WORKSPACE_TOKEN": "cap-token-secret", "CXG_LOOPBACK_TOKEN": "loop-token-secret"}
#: The installed console script.
CODEXGW = os.path.join(os.path.dirname(sys.executable), "codexgw")


def argv(args: dict[str, str] | None = None, equals: bool = False) -> list[str]:
    """
    The command line of C{args} (L{ARGS} by default), as C{--opt value} or C{--opt=value}.
    """
    result: list[str] = []
    for name, value in (ARGS if args is None else args).items():
        result.extend([f"{name}={value}"] if equals else [name, value])
    return result


def usage_error(arguments: list[str]) -> str:
    """
    The text of the usage error C{arguments} cause.
    """
    try:
        parse_args(arguments)
    except UsageError as e:
        return str(e)
    raise AssertionError(f"no usage error for {arguments}")


def run_main(arguments: list[str], environ: dict[str, str]) -> tuple[int, str]:
    """
    Run L{main} (only for outcomes that end before serving); return the status and stderr.
    """
    stderr = io.StringIO()
    return main(arguments, environ, stderr), stderr.getvalue()


class ParseTests(SynchronousTestCase):
    """
    L{parse_args}.
    """

    def test_all_options(self) -> None:
        """
        All five options parse, as C{--opt value} and as C{--opt=value}, in any order.
        """
        self.assertEqual(parse_args(argv()), EXPECTED)
        self.assertEqual(parse_args(argv(equals=True)), EXPECTED)
        self.assertEqual(parse_args(list(reversed(argv(equals=True)))), EXPECTED)

    def test_values(self) -> None:
        """
        A value after C{=} may contain C{=}; the next argument is a value whatever it looks like; a
        trailing C{/} of a URL is removed; C{wss} and upper-case schemes are accepted.
        """
        args = dict(ARGS)
        args["--workspace-id"] = "-odd=id"
        args["--exec-gateway-url"] = "WSS://gw.example/bridge/"
        args["--app-gateway-internal"] = "http://[::1]:8086/"
        options = parse_args(argv(args))
        self.assertEqual(options.workspace_id, "-odd=id")
        self.assertEqual(options.exec_gateway_url, "WSS://gw.example/bridge")
        self.assertEqual(options.app_gateway_internal, "http://[::1]:8086")
        self.assertEqual(parse_args([*argv(), "--workspace-id=a=b"]).workspace_id, "a=b")

    def test_repeated(self) -> None:
        """
        A repeated option keeps its last value.
        """
        self.assertEqual(parse_args([*argv(), "--workspace-id", "ws_b"]).workspace_id, "ws_b")

    def test_missing(self) -> None:
        """
        Each missing option, or an empty value, is C{--<option> is required}.
        """
        for name in OPTIONS:
            with self.subTest(name=name):
                args = {k: v for k, v in ARGS.items() if k != name}
                self.assertEqual(usage_error(argv(args)), f"{name} is required")
                self.assertEqual(usage_error(argv({**ARGS, name: ""})), f"{name} is required")
        self.assertEqual(usage_error([]), "--workspace-id is required")

    def test_positional(self) -> None:
        """
        Positional arguments are refused, listed with spaces; after C{--} everything is positional.
        """
        self.assertEqual(
            usage_error(["extra", *argv(), "more"]), "unexpected positional arguments: extra more"
        )
        self.assertEqual(
            usage_error([*argv(), "--", "--help"]), "unexpected positional arguments: --help"
        )
        self.assertEqual(usage_error([*argv(), "-"]), "unexpected positional arguments: -")

    def test_unknown_option(self) -> None:
        """
        The first unknown option is reported as given; it wins over positional and missing ones.
        """
        self.assertEqual(usage_error(["x", "--bogus", "--other"]), "unknown option --bogus")
        self.assertEqual(usage_error([*argv(), "--token=abc"]), "unknown option --token=abc")
        self.assertEqual(usage_error(["-workspace-id", "ws"]), "unknown option -workspace-id")

    def test_needs_value(self) -> None:
        """
        An option at the end without a value.
        """
        self.assertEqual(usage_error([*argv(), "--workspace-id"]), "--workspace-id needs a value")

    def test_urls(self) -> None:
        """
        The bridge URL must be C{ws://} or C{wss://} and the loopback URL C{http://}, each with a
        host.
        """
        for url in ("http://gw/bridge", "gw:6060/bridge", "ws://", "ws:/gw/bridge", "wss:gw"):
            with self.subTest(url=url):
                self.assertEqual(
                    usage_error(argv({**ARGS, "--exec-gateway-url": url})),
                    "--exec-gateway-url must be a ws:// or wss:// URL",
                )
        for url in ("https://127.0.0.1:8086", "ws://127.0.0.1", "127.0.0.1:8086", "http://"):
            with self.subTest(url=url):
                self.assertEqual(
                    usage_error(argv({**ARGS, "--app-gateway-internal": url})),
                    "--app-gateway-internal must be an http:// URL",
                )

    def test_help(self) -> None:
        """
        C{-h} or C{--help} among the options wins over every error; as an option's value it is a
        value.
        """
        for arguments in (["-h"], ["--help"], ["--bogus", "x", "-h"], [*argv(), "--help"]):
            with self.subTest(arguments=arguments):
                self.assertRaises(HelpRequested, parse_args, arguments)
        self.assertEqual(parse_args([*argv(), "--workspace-id", "--help"]).workspace_id, "--help")


class TokenTests(SynchronousTestCase):
    """
    L{read_tokens}.
    """

    def test_read(self) -> None:
        """
        The tokens come from the variables the options name; C{repr} hides them.
        """
        tokens = read_tokens(EXPECTED, ENV)
        self.assertEqual(tokens, Tokens("cap-token-secret", "loop-token-secret"))
        self.assertNotIn("secret", repr(tokens))

    def test_empty(self) -> None:
        """
        An unset or empty variable is refused with the spec's texts, the workspace token first.
        """
        for environ in ({}, {"CXG_WORKSPACE_TOKEN": ""}, {"CXG_LOOPBACK_TOKEN": "x"}):
            with self.subTest(environ=environ):
                error = self.assertRaises(StartError, read_tokens, EXPECTED, environ)
                self.assertEqual(
                    str(error),
                    "env var CXG_WORKSPACE_TOKEN is empty; cannot authenticate to bridge",
                )
        for environ in (
            {"CXG_WORKSPACE_TOKEN": "x"},
            {"CXG_WORKSPACE_TOKEN": "x", "CXG_LOOPBACK_TOKEN": ""},
        ):
            with self.subTest(environ=environ):
                error = self.assertRaises(StartError, read_tokens, EXPECTED, environ)
                self.assertEqual(
                    str(error),
                    "env var CXG_LOOPBACK_TOKEN is empty; cannot authenticate to app-gateway loopback",
                )


class MainTests(SynchronousTestCase):
    """
    L{main} and the C{codexgw env-mcp} dispatch, for the outcomes that end before serving.
    """

    def test_usage_error(self) -> None:
        """
        A usage error → stderr C{codexgw env-mcp: <error>}, exit 2; the tokens are not read.
        """
        self.assertEqual(run_main(["--bogus"], {}), (2, "codexgw env-mcp: unknown option --bogus\n"))

    def test_empty_token(self) -> None:
        """
        An empty token variable → exit 1 with the exact message.
        """
        self.assertEqual(
            run_main(argv(), {"CXG_WORKSPACE_TOKEN": "t"}),
            (
                1,
                "codexgw env-mcp: env var CXG_LOOPBACK_TOKEN is empty; cannot authenticate to "
                "app-gateway loopback\n",
            ),
        )

    def test_help(self) -> None:
        """
        C{--help} prints the help to stderr and exits 0.
        """
        self.assertEqual(run_main(["--help"], {}), (0, HELP))
        for name in OPTIONS:
            self.assertIn(name, HELP)

    def test_dispatch(self) -> None:
        """
        C{codexgw env-mcp …} runs env-mcp's own command line, nothing on stdout.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        status = codexgw_cli.run(["env-mcp", "--workspace-id"], {}, stdout, stderr)
        self.assertEqual(
            (status, stdout.getvalue(), stderr.getvalue()),
            (2, "", "codexgw env-mcp: --workspace-id needs a value\n"),
        )


class ConsoleScriptTests(SynchronousTestCase):
    """
    The installed C{codexgw env-mcp} (criterion 61), as codex starts it.
    """

    def run_script(self, arguments: list[str], environ: dict[str, str]) -> tuple[int, str, str]:
        """
        Run the console script with stdin closed; return status, stdout and stderr.
        """
        completed = subprocess.run(
            [CODEXGW, "env-mcp", *arguments],
            env={"PATH": os.environ.get("PATH", ""), **environ},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return completed.returncode, completed.stdout, completed.stderr

    def test_missing_option(self) -> None:
        """
        A missing option exits 2 with the exact message.
        """
        args = {k: v for k, v in ARGS.items() if k != "--loopback-token-env"}
        self.assertEqual(
            self.run_script(argv(args), ENV),
            (2, "", "codexgw env-mcp: --loopback-token-env is required\n"),
        )

    def test_positional(self) -> None:
        """
        Positional arguments exit 2.
        """
        self.assertEqual(
            self.run_script([*argv(), "serve"], ENV),
            (2, "", "codexgw env-mcp: unexpected positional arguments: serve\n"),
        )

    def test_empty_token(self) -> None:
        """
        An empty workspace token exits 1 with the exact message and never shows the other token.
        """
        status, out, err = self.run_script(argv(), {**ENV, "CXG_WORKSPACE_TOKEN": ""})
        self.assertEqual(
            (status, out, err),
            (
                1,
                "",
                "codexgw env-mcp: env var CXG_WORKSPACE_TOKEN is empty; cannot authenticate to bridge\n",
            ),
        )

    def test_help(self) -> None:
        """
        C{--help} exits 0 with the help on stderr and nothing on stdout.
        """
        self.assertEqual(self.run_script(["--help"], {}), (0, "", HELP))
