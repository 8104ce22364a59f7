"""
Locate the native codex binary inside an npm installation of C{@openai/codex}.

The npm package ships a JavaScript launcher plus one platform package (for example
C{@openai/codex-linux-x64}) that carries the native binary under C{vendor/<target triple>/...}. We only
ever run the native binary, so this module finds it by shape rather than by a hard-coded platform path:
any executable file named C{codex} under C{node_modules/@openai/codex*/vendor/*/}.

Run as C{python -m codexgw.codexbin --check PREFIX VERSION} it prints the binary's path and exits
non-zero unless that binary reports the expected version (C{make install} uses this).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Where C{make install} puts the pinned codex, relative to the repository root.
TOOLS_PREFIX = Path(".tools") / "codex"


class CodexBinaryNotFound(Exception):
    """
    No native codex binary exists under the given npm prefix.
    """


def find_native_codex(prefix: Path) -> Path:
    """
    Return the native codex binary installed under the npm C{prefix}.

    @param prefix: the directory given to C{npm install --prefix}.
    @raise CodexBinaryNotFound: when no executable candidate exists.
    """
    scope = prefix / "node_modules" / "@openai"
    candidates = sorted(
        path
        for pattern in ("codex*/vendor/*/bin/codex", "codex*/vendor/*/codex/codex")
        for path in scope.glob(pattern)
        if path.is_file() and os.access(path, os.X_OK)
    )
    if not candidates:
        raise CodexBinaryNotFound(
            f"no native codex binary under {scope}; run `make install` to install @openai/codex"
        )
    return candidates[0].resolve()


def codex_version(binary: Path) -> str:
    """
    Return the version the binary reports (C{codex-cli 0.169.0} → C{0.169.0}).
    """
    out = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return out.strip().rsplit(" ", 1)[-1]


def main(argv: list[str]) -> int:
    """
    C{--check PREFIX VERSION}: print the binary path; fail unless it is the expected version.
    """
    if len(argv) != 3 or argv[0] != "--check":
        print("usage: python -m codexgw.codexbin --check PREFIX VERSION", file=sys.stderr)
        return 2
    binary = find_native_codex(Path(argv[1]))
    found = codex_version(binary)
    if found != argv[2]:
        print(f"codex at {binary} is {found}, want {argv[2]}", file=sys.stderr)
        return 1
    print(binary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
