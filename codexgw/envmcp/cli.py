"""
The command line of env-mcp (C{app-gateway.md} §9.1) and the program around the MCP server: one
envtools context per process, the stdio transport, logging and the exit rules.

Exit statuses: 0 after a clean stdin EOF (or C{-h}/C{--help}); 2 on a usage error (stderr
C{codexgw env-mcp: <error>}); 1 when a token variable is empty, when a stdout write failed, on any
fatal error (logged C{env-mcp exited with error}) and when a signal stopped the process.

Decisions where the spec is silent:
 - Option names are exact (C{--workspace-id}, never C{-workspace-id}); the first unknown option is
   reported as given (C{unknown option --x=1}); an argument after C{--} is positional.
 - C{--opt value} takes the next argument as the value, whatever it looks like; a last C{--opt}
   without a value is C{--opt needs a value}. A repeated option keeps its last value; an empty value
   counts as missing (C{--opt is required}).
 - Errors are reported in this order: an unknown option or missing value (as met), positional
   arguments, the first missing option in the order of the usage line, the URL checks. C{-h}/C{--help}
   anywhere among the options wins over every error.
 - C{--exec-gateway-url} needs a host besides its C{ws}/C{wss} scheme; C{--app-gateway-internal} needs
   the C{http} scheme (the loopback listener is plain HTTP) and a host. A trailing C{/} of either is
   removed.
 - The workspace token variable is checked before the loopback one.
 - Logs are Twisted's text format on stderr at info level (Twisted's HTTP client at warn: it logs
   every connection at info); Python's C{sys.stdout} is pointed at stderr once the server owns file
   descriptor 1, so a stray C{print} can never corrupt the MCP stream.
 - On SIGTERM/SIGINT the reactor stops, the context is closed, C{env-mcp stopped by a signal} is
   logged and the status is 1.
 - At exit the responses already written are flushed (at most L{FLUSH_TIMEOUT} seconds) before the
   process ends.
 - Test/operations knob: when the environment variable L{HEARTBEAT_VARIABLE}
   (C{CODEXGW_ENV_MCP_HEARTBEAT_SECONDS}) is set and non-empty, it replaces the bridge heartbeat
   interval of C{envtools.md} §4.6 (60 s) with that many seconds (a positive decimal number; anything
   else is C{codexgw env-mcp: env var CODEXGW_ENV_MCP_HEARTBEAT_SECONDS must be a positive number of
   seconds}, exit 1). It exists so that tests can run a gateway with a short idle timeout; codex never
   sets it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TextIO
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from codexgw.envtools.interfaces import ToolResult

if TYPE_CHECKING:
    # Imported when env-mcp runs (L{serve}), not for C{--help} or a usage error.
    from codexgw.envtools.context import EnvContext
    from codexgw.envtools.toolset import Tool

#: Exit statuses (§9.1).
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2

#: Seconds the final flush of stdout may take at exit.
FLUSH_TIMEOUT: Final = 2.0

#: The variable that overrides the bridge heartbeat interval (tests and operations only).
HEARTBEAT_VARIABLE: Final = "CODEXGW_ENV_MCP_HEARTBEAT_SECONDS"

#: The options, in the order of the usage line; all are required.
OPTIONS: Final = (
    "--workspace-id",
    "--exec-gateway-url",
    "--app-gateway-internal",
    "--workspace-token-env",
    "--loopback-token-env",
)

HELP: Final = """\
usage: codexgw env-mcp --workspace-id ID --exec-gateway-url WS_URL --app-gateway-internal HTTP_URL
                       --workspace-token-env NAME --loopback-token-env NAME

The stdio MCP server codex starts for a workspace: it serves the environment tools (shell,
read_file, apply_patch, ...) and reaches executors through the exec gateway's /bridge. codex starts
it; it is not meant to be run by hand.

options (all required; --opt value and --opt=value both work):
  --workspace-id ID              the workspace
  --exec-gateway-url WS_URL      the exec gateway's bridge base (ws:// or wss://, ends in /bridge)
  --app-gateway-internal URL     the app gateway's loopback URL (http://)
  --workspace-token-env NAME     the variable holding the workspace cap token
  --loopback-token-env NAME      the variable holding the loopback token
  -h, --help                     show this help and exit
"""


class UsageError(Exception):
    """
    The command line is wrong; the message follows C{codexgw env-mcp: } on stderr (exit 2).
    """


class HelpRequested(Exception):
    """
    C{-h} or C{--help} was given.
    """


class StartError(Exception):
    """
    env-mcp cannot start (exit 1); the message follows C{codexgw env-mcp: } on stderr.
    """


@dataclass(frozen=True)
class Options:
    """
    The parsed command line.

    @ivar exec_gateway_url: the bridge base, without a trailing C{/}.
    @ivar app_gateway_internal: the loopback base URL, without a trailing C{/}.
    """

    workspace_id: str
    exec_gateway_url: str
    app_gateway_internal: str
    workspace_token_env: str
    loopback_token_env: str


@dataclass(frozen=True)
class Tokens:
    """
    The two tokens read from the environment (never shown by C{repr}).
    """

    workspace: str = field(repr=False)
    loopback: str = field(repr=False)


def parse_args(argv: Sequence[str]) -> Options:
    """
    Parse the arguments after C{env-mcp}.

    @raise HelpRequested: C{-h} or C{--help} is among the options.
    @raise UsageError: with the spec's text.
    """
    values: dict[str, str] = {}
    positional: list[str] = []
    error: UsageError | None = None
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            positional.extend(args[index:])
            break
        if arg in ("-h", "--help"):
            raise HelpRequested()
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, equals, value = arg.partition("=")
        if error is not None:
            continue
        if name not in OPTIONS:
            error = UsageError(f"unknown option {arg}")
        elif equals:
            values[name] = value
        elif index < len(args):
            values[name] = args[index]
            index += 1
        else:
            error = UsageError(f"{name} needs a value")
    if error is not None:
        raise error
    if positional:
        raise UsageError(f"unexpected positional arguments: {' '.join(positional)}")
    for name in OPTIONS:
        if not values.get(name):
            raise UsageError(f"{name} is required")
    exec_gateway_url = values["--exec-gateway-url"]
    if not _has_scheme(exec_gateway_url, ("ws", "wss")):
        raise UsageError("--exec-gateway-url must be a ws:// or wss:// URL")
    app_gateway_internal = values["--app-gateway-internal"]
    if not _has_scheme(app_gateway_internal, ("http",)):
        raise UsageError("--app-gateway-internal must be an http:// URL")
    return Options(
        workspace_id=values["--workspace-id"],
        exec_gateway_url=exec_gateway_url.rstrip("/"),
        app_gateway_internal=app_gateway_internal.rstrip("/"),
        workspace_token_env=values["--workspace-token-env"],
        loopback_token_env=values["--loopback-token-env"],
    )


def _has_scheme(url: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    spelled = url.lower().startswith(parts.scheme + "://")
    return parts.scheme in schemes and spelled and bool(parts.netloc)


def read_tokens(options: Options, environ: Mapping[str, str]) -> Tokens:
    """
    Read the two tokens from the variables the options name.

    @raise StartError: a variable is unset or empty, with the spec's text.
    """
    workspace = environ.get(options.workspace_token_env, "")
    if not workspace:
        raise StartError(
            f"env var {options.workspace_token_env} is empty; cannot authenticate to bridge"
        )
    loopback = environ.get(options.loopback_token_env, "")
    if not loopback:
        raise StartError(
            f"env var {options.loopback_token_env} is empty; cannot authenticate to app-gateway loopback"
        )
    return Tokens(workspace=workspace, loopback=loopback)


def read_heartbeat_interval(environ: Mapping[str, str]) -> float | None:
    """
    The bridge heartbeat interval set by L{HEARTBEAT_VARIABLE}, or C{None} when it is unset or empty.

    @raise StartError: the value is not a positive finite number.
    """
    raw = environ.get(HEARTBEAT_VARIABLE, "")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise StartError(f"env var {HEARTBEAT_VARIABLE} must be a positive number of seconds")
    return seconds


def main(argv: Sequence[str], environ: Mapping[str, str], stderr: TextIO) -> int:
    """
    Run C{codexgw env-mcp} with the arguments after C{env-mcp}; return the exit status.

    The MCP server itself runs on the global reactor over file descriptors 0 and 1.
    """
    try:
        options = parse_args(argv)
        tokens = read_tokens(options, environ)
        heartbeat_interval = read_heartbeat_interval(environ)
    except HelpRequested:
        stderr.write(HELP)
        return EXIT_OK
    except UsageError as e:
        print(f"codexgw env-mcp: {e}", file=stderr)
        return EXIT_USAGE
    except StartError as e:
        print(f"codexgw env-mcp: {e}", file=stderr)
        return EXIT_ERROR
    return serve(options, tokens, stderr, heartbeat_interval=heartbeat_interval)


@dataclass(frozen=True)
class BoundTool:
    """
    An envtools tool bound to the process's context, as L{codexgw.envmcp.server.McpServer} serves it.
    """

    tool: Tool
    context: EnvContext

    @property
    def name(self) -> str:
        """
        The tool's name.
        """
        return self.tool.name

    @property
    def description(self) -> str:
        """
        The tool's env-mcp description.
        """
        return self.tool.description

    @property
    def input_schema(self) -> Mapping[str, Any]:
        """
        The tool's input schema (C{envtools.md} §8).
        """
        return self.tool.schema

    def call(self, arguments: dict[str, Any]) -> Deferred[ToolResult]:
        """
        Run the tool in the context.
        """
        return self.tool.run(self.context, arguments)


def bind_tools(tools: Sequence[Tool], context: EnvContext) -> list[BoundTool]:
    """
    C{tools} bound to C{context}, in order.
    """
    return [BoundTool(tool, context) for tool in tools]


class Program:
    """
    One env-mcp process: the hooks, the envtools context and the MCP server, and what happens at the
    end (§9.1).

    @ivar status: the exit status once decided, else C{None}.
    """

    def __init__(
        self,
        options: Options,
        tokens: Tokens,
        reactor: Any,
        log: Logger,
        heartbeat_interval: float | None = None,
    ) -> None:
        """
        Build everything; nothing touches the network until a tool runs.

        @param heartbeat_interval: seconds between bridge heartbeats; C{None} for the spec's 60 s.
        """
        from codexgw.envmcp.hooks import USER_AGENT, loopback_hooks  # noqa: PLC0415
        from codexgw.envmcp.server import McpServer  # noqa: PLC0415
        from codexgw.envtools.bridge import (  # noqa: PLC0415
            HEARTBEAT_INTERVAL,
            BridgeDialer,
            BridgePool,
        )
        from codexgw.envtools.context import EnvContext  # noqa: PLC0415
        from codexgw.envtools.resolver import Resolver  # noqa: PLC0415
        from codexgw.envtools.toolset import ENV_MCP_TOOLS  # noqa: PLC0415

        self._reactor = reactor
        self._log = log
        self.status: int | None = None
        self._hooks = loopback_hooks(
            reactor, options.app_gateway_internal, tokens.loopback, tokens.workspace, log
        )
        dialer = BridgeDialer(
            reactor,
            options.exec_gateway_url,
            USER_AGENT,
            self._hooks.cap_tokens,
            heartbeat_interval=HEARTBEAT_INTERVAL if heartbeat_interval is None else heartbeat_interval,
        )
        self._context = EnvContext(
            BridgePool(dialer.dial),
            Resolver(self._hooks.source, reactor),
            reactor,
            self._hooks.relay_creator,
        )
        self.server = McpServer(bind_tools(ENV_MCP_TOOLS, self._context), reactor, log)

    def start(self, stdin: int, stdout: int, stderr: TextIO) -> None:
        """
        Connect the server to C{stdin}/C{stdout}; stop the reactor once it finished.
        """
        # POSIX only, like the rest of codexgw; the portable alias's type is the Windows class.
        from twisted.internet._posixstdio import StandardIO  # noqa: PLC0415

        try:
            StandardIO(self.server, stdin, stdout, self._reactor)
        except Exception:
            self._fatal(Failure())
            return
        # From now on fd 1 belongs to the MCP stream.
        sys.stdout = stderr
        self.server.finished.addCallback(
            lambda exit_status: Deferred.fromCoroutine(self._finish(exit_status))
        ).addErrback(self._fatal)

    def stopping(self) -> None:
        """
        The reactor stops before the server finished (a signal): close what is open.
        """
        if self.status is None:
            self._close()
            self._log.error("env-mcp stopped by a signal")
            self.status = EXIT_ERROR

    def _close(self) -> None:
        self._context.close()
        self._hooks.close()

    async def _finish(self, exit_status: int) -> None:
        if self.status is not None:
            # Stopped by a signal: the reactor's shutdown closed stdin too.
            return
        self._close()
        if exit_status == EXIT_OK:
            self._log.info("env-mcp clean exit (stdin closed)")
        else:
            self._log.error("env-mcp exited with error")
        self.status = exit_status
        flushed = self.server.close_output()
        flushed.addTimeout(FLUSH_TIMEOUT, self._reactor)
        try:
            await flushed
        except Exception:
            self._log.warn("stdout not flushed within {timeout}s", timeout=FLUSH_TIMEOUT)
        self._reactor.stop()

    def _fatal(self, failure: Failure) -> None:
        self._log.failure("env-mcp exited with error", failure)
        if self.status is None:
            self.status = EXIT_ERROR
        if self._reactor.running:
            self._reactor.stop()


def serve(
    options: Options,
    tokens: Tokens,
    stderr: TextIO,
    reactor: Any = None,
    stdin: int = 0,
    stdout: int = 1,
    heartbeat_interval: float | None = None,
) -> int:
    """
    Run env-mcp on C{reactor} (the global one by default) over C{stdin}/C{stdout} until stdin ends;
    return the exit status. Logs go to C{stderr} at info level.

    @param heartbeat_interval: seconds between bridge heartbeats; C{None} for the spec's 60 s.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor  # noqa: PLC0415

        reactor = default_reactor
    levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    # The HTTP client logs every connection's factory start and stop at info.
    levels.setLogLevelForNamespace("twisted.web.client", LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(stderr), [levels])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    log = Logger(namespace="codexgw.envmcp")
    try:
        program = Program(options, tokens, reactor, log, heartbeat_interval)
    except Exception:
        log.failure("env-mcp exited with error")
        return EXIT_ERROR
    reactor.callWhenRunning(program.start, stdin, stdout, stderr)
    reactor.addSystemEventTrigger("before", "shutdown", program.stopping)
    reactor.run()
    return EXIT_ERROR if program.status is None else program.status
