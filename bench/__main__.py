"""
Run every benchmark module of this package (C{python -m bench}).
"""

from __future__ import annotations

import subprocess
import sys

#: The benchmark modules; each runs as C{python -m bench.<name>} in a process of its own (a reactor
#: cannot be restarted within one process).
BENCHMARKS = ("bridge", "spawn", "relay", "turns")


def main() -> int:
    """
    Run each benchmark (all, or those named on the command line); return non-zero on failure.
    """
    names = sys.argv[1:] or list(BENCHMARKS)
    status = 0
    for name in names:
        status |= subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
