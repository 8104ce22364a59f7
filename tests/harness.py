"""
The test harness: start the real backing services, run a command with them, stop them.

C{python -m tests.harness -- CMD...} (what C{make test} runs) starts

 - a throwaway PostgreSQL cluster: C{initdb} + C{pg_ctl} in a temporary directory, listening on
   127.0.0.1 on a free port, run as the C{postgres} user when we are root (PostgreSQL refuses to run
   as root); when the binaries are missing and we are root, Debian's C{postgresql} package is
   installed first;
 - a local S3 server (moto, from its own venv under C{.tools/s3}) on 127.0.0.1 and a free port;

exports them as C{CXG_TEST_POSTGRES_DSN} and C{CXG_TEST_S3_ENDPOINT} (and the pinned codex as
C{CXG_TEST_CODEX_BIN}), runs C{CMD}, and stops both services whatever happens to C{CMD} — on failure,
on Ctrl-C and on SIGTERM. It exits with C{CMD}'s status.

A service that cannot be started is reported and left unset: the tests that need it then fail with a
message naming C{make test} (L{tests.support}), and the others still run.

This is a plain blocking script, not Twisted code: it supervises a test run, and waiting with a
deadline for a server to accept connections is its job.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

from codexgw.codexbin import TOOLS_PREFIX, CodexBinaryNotFound, find_native_codex
from tests.support import CODEX_BIN_VAR, POSTGRES_DSN_VAR, REPO_ROOT, S3_ENDPOINT_VAR

#: How long a service may take to accept connections before we give up on it.
START_DEADLINE = 60.0


class ServiceFailed(Exception):
    """
    A backing service could not be started.
    """


def log(message: str) -> None:
    """
    Write one harness line to stderr (stdout belongs to the test runner).
    """
    print(f"harness: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(ready: Callable[[], bool], what: str, alive: Callable[[], bool]) -> None:
    """
    Poll C{ready} until it holds, C{alive} stops holding, or L{START_DEADLINE} passes.
    """
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if ready():
            return
        if not alive():
            raise ServiceFailed(f"{what} exited while starting")
        time.sleep(0.1)
    raise ServiceFailed(f"{what} did not become ready within {START_DEADLINE:.0f}s")


def accepts(port: int) -> bool:
    """
    Whether something accepts TCP connections on 127.0.0.1:C{port}.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


# -------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path:
    """
    Find the directory holding C{initdb}, C{pg_ctl} and C{postgres}; install them if we can.
    """
    for attempt in range(2):
        found = shutil.which("initdb")
        if found:
            return Path(found).resolve().parent
        versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if versions:
            return Path(versions[-1]).parent
        if attempt or os.geteuid() != 0:
            break
        log("PostgreSQL binaries missing; installing Debian's postgresql package")
        subprocess.run(["apt-get", "update", "-q"], check=False, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
            check=False,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    raise ServiceFailed("PostgreSQL binaries (initdb, pg_ctl) not found")


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """
    Run a throwaway PostgreSQL cluster; yield its libpq URL (superuser C{postgres}, trust auth).
    """
    bindir = postgres_bindir()
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="codexgw-pg-"))
    if user:
        shutil.chown(root, user)
    data, logfile = root / "data", root / "postgres.log"

    def pg(tool: str, *args: str, check: bool = True) -> None:
        subprocess.run(
            [str(bindir / tool), *args], check=check, capture_output=True, cwd=root, user=user
        )

    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        port = free_port()
        # fsync off: the cluster lives for one test run and is never recovered.
        options = f"-h 127.0.0.1 -p {port} -k {root} -F -c max_connections=200"
        pg("pg_ctl", "-D", str(data), "-l", str(logfile), "-o", options, "-w", "-t", "60", "start")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
    except subprocess.CalledProcessError as e:
        tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
        raise ServiceFailed(f"PostgreSQL failed to start: {e.stderr!r} {tail}") from None
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -------------------------------------------------------------------------------------------------
# S3


@contextmanager
def s3_server() -> Iterator[str]:
    """
    Run the local S3 server (moto) from C{.tools/s3}; yield its endpoint URL.
    """
    server = REPO_ROOT / ".tools" / "s3" / "bin" / "moto_server"
    if not server.exists():
        raise ServiceFailed(f"{server} missing: run `make install`")
    port = free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: accepts(port), "the S3 server", lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -------------------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    # Unwind through the context managers so the services stop.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    """
    Start the services, run C{argv} with them, stop them; return C{argv}'s exit status.
    """
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        log("usage: python -m tests.harness -- COMMAND [ARG...]")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    env = dict(os.environ)
    with ExitStack() as services:
        for var, start in ((POSTGRES_DSN_VAR, postgres_cluster), (S3_ENDPOINT_VAR, s3_server)):
            try:
                env[var] = services.enter_context(start())
                log(f"{var}={env[var]}")
            except ServiceFailed as e:
                log(f"{var} unset: {e}")
        try:
            env[CODEX_BIN_VAR] = str(find_native_codex(REPO_ROOT / TOOLS_PREFIX))
        except CodexBinaryNotFound as e:
            log(f"{CODEX_BIN_VAR} unset: {e}")
        child = subprocess.Popen(argv, env=env)
        try:
            return child.wait()
        except BaseException:
            child.terminate()
            child.wait()
            raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
