"""
How tests find the real backing services that L{tests.harness} starts.

The harness exports each service through one environment variable. A test that needs a service calls
the matching function here; when the service is missing the test I{fails} (never skips) with a message
naming the C{make} target that provides it, so a broken environment can never pass as a green run.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import FailTest

from codexgw.codexbin import TOOLS_PREFIX, CodexBinaryNotFound, find_native_codex

#: Environment variables through which the harness hands services to the tests.
POSTGRES_DSN_VAR = "CXG_TEST_POSTGRES_DSN"
S3_ENDPOINT_VAR = "CXG_TEST_S3_ENDPOINT"
CODEX_BIN_VAR = "CXG_TEST_CODEX_BIN"

#: The repository root (the parent of C{tests/}).
REPO_ROOT = Path(__file__).resolve().parent.parent


def _required(var: str, what: str) -> str:
    value = os.environ.get(var, "")
    if not value:
        raise FailTest(
            f"{what} is not available ({var} is unset): run the tests with `make test` "
            f"(or `make test TESTS=<module>`), which starts it"
        )
    return value


def postgres_dsn() -> str:
    """
    Return the libpq URL of the harness's throwaway PostgreSQL cluster (superuser C{postgres}).
    """
    return _required(POSTGRES_DSN_VAR, "PostgreSQL")


def s3_endpoint() -> str:
    """
    Return the C{http://127.0.0.1:PORT} URL of the harness's local S3 server.
    """
    return _required(S3_ENDPOINT_VAR, "the local S3 server")


def codex_binary() -> Path:
    """
    Return the pinned native codex binary: the harness's choice, else the one C{make install} put
    under C{.tools/codex}.
    """
    value = os.environ.get(CODEX_BIN_VAR, "")
    if value:
        return Path(value)
    try:
        return find_native_codex(REPO_ROOT / TOOLS_PREFIX)
    except CodexBinaryNotFound as e:
        raise FailTest(f"the pinned codex binary is not available: {e}") from None
