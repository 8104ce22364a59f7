"""
Run every benchmark module of this package (C{python -m bench}).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main() -> int:
    """
    Import and run each C{bench.<name>} module that defines C{main()}; return non-zero on failure.
    """
    names = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    if not names:
        print("bench: no benchmarks yet (they arrive with the services they measure)")
        return 0
    status = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        run = getattr(module, "main", None)
        if callable(run):
            status |= int(run() or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
