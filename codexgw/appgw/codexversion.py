"""
The startup check of the codex binary's version (C{app-gateway.md} §2 #2).

At startup the gateway runs C{<bin> --version} with a 5 s limit; output not containing the pinned
version only logs the warning C{codex version mismatch} — the gateway starts anyway.

Decisions where the spec is silent:
 - Standard output and standard error are both searched (at most 64 KiB of each is kept); the exit
   status does not matter.
 - A binary that cannot be started, or does not finish within the limit (it is then killed), logs the
   same warning with the reason: either way the version could not be confirmed.
 - The child gets the gateway's environment without any C{CXG_*} or C{AWS_*} variable, like the
   app-server children (§1 item 6): no gateway secret ever reaches a codex process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The codex version this gateway is built and tested against.
PINNED_CODEX_VERSION: Final = "0.169.0"
#: Seconds C{codex --version} may take.
VERSION_CHECK_TIMEOUT: Final = 5.0
#: The most of each output stream kept.
MAX_OUTPUT_BYTES: Final = 64 * 1024
#: The warning's key text.
MISMATCH: Final = "codex version mismatch"

_HIDDEN_PREFIXES: Final = ("CXG_", "AWS_")
_log = Logger()


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """
    C{environ} without the gateway's own (C{CXG_*}) and object-store (C{AWS_*}) variables.
    """
    return {k: v for k, v in environ.items() if not k.startswith(_HIDDEN_PREFIXES)}


class _VersionProbe(ProcessProtocol):
    """
    Collect a short-lived child's output and report when it has ended.
    """

    def __init__(self, ended: Deferred[bytes | None]) -> None:
        self._ended = ended
        self._out = b""
        self._err = b""

    def outReceived(self, data: bytes) -> None:
        """
        Keep standard output up to the bound.
        """
        self._out = (self._out + data)[:MAX_OUTPUT_BYTES]

    def errReceived(self, data: bytes) -> None:
        """
        Keep standard error up to the bound.
        """
        self._err = (self._err + data)[:MAX_OUTPUT_BYTES]

    def processEnded(self, reason: Failure) -> None:
        """
        The child exited: hand over both outputs, whatever its status.
        """
        if not self._ended.called:
            self._ended.callback(self._out + b"\n" + self._err)

    def kill(self) -> None:
        """
        Kill the child (it overran its time).
        """
        try:
            if self.transport is not None:
                self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


def check_codex_version(
    process_reactor: IReactorProcess,
    clock: IReactorTime,
    binary: str,
    environ: Mapping[str, str],
    log: Logger | None = None,
    timeout: float = VERSION_CHECK_TIMEOUT,
    expected: str = PINNED_CODEX_VERSION,
) -> Deferred[bool]:
    """
    Run C{<binary> --version} and warn unless its output contains C{expected}.

    @param process_reactor: spawns the child.
    @param clock: enforces C{timeout}.
    @param environ: the gateway's environment (filtered by L{child_environment} for the child).
    @return: a Deferred that never fails, firing with whether the version matched.
    """
    log = log if log is not None else _log
    # Fires with the output, or with None when the child overran its time.
    ended: Deferred[bytes | None] = Deferred()
    probe = _VersionProbe(ended)
    try:
        process_reactor.spawnProcess(
            probe, binary, [binary, "--version"], env=child_environment(environ)
        )
    except Exception as e:
        log.warn(
            MISMATCH + ": cannot run {binary} --version: {error}",
            binary=binary,
            error=str(e) or type(e).__name__,
        )
        return succeed(False)

    def overran() -> None:
        probe.kill()
        if not ended.called:
            ended.callback(None)

    deadline: IDelayedCall = clock.callLater(timeout, overran)

    def judge(output: bytes | None) -> bool:
        if deadline.active():
            deadline.cancel()
        if output is None:
            log.warn(
                MISMATCH + ": {binary} --version did not finish within {timeout}s",
                binary=binary,
                timeout=f"{timeout:g}",
            )
            return False
        if expected.encode("ascii") in output:
            return True
        log.warn(
            MISMATCH + ": {binary} --version printed {output}, want {expected}",
            binary=binary,
            output=repr(output.strip().decode("utf-8", "replace")[:200]),
            expected=expected,
        )
        return False

    return ended.addCallback(judge)
