"""
C{CXG_DATABASE_URL}: which store engine to open and with what (C{exec-gateway.md} §2).

 - C{sqlite:///PATH} → SQLite file at PATH, relative to the working directory; an absolute path takes a
   fourth slash (C{sqlite:////srv/exec.sqlite3}); C{sqlite:///:memory:} for tests.
 - C{postgres://…} or C{postgresql://…} → PostgreSQL; the whole URL goes to libpq unchanged.

The URL may hold a password, so error messages echo at most the scheme, and the C{repr} of a
PostgreSQL L{DatabaseURL} hides the DSN.

Decisions where the spec is silent:
 - The scheme is what RFC 3986 calls one (a letter, then letters, digits, C{+ - .}) before the first
   C{:}; a value without one has the scheme C{""}. That syntax cannot contain C{@} or C{/}, so the
   echoed text never reaches into the credentials.
 - Schemes match case-sensitively, as libpq matches its URI prefixes.
 - A C{postgres:} or C{postgresql:} value without C{//} is not a URI libpq accepts; it gets the
   unsupported-scheme message (which echoes only the scheme).
 - A C{sqlite} value that does not start with C{sqlite:///} (C{sqlite:relative.db},
   C{sqlite://host/x}) or has nothing after the third slash gets the needs-a-path message. The path is
   taken verbatim: no percent-decoding and no query string parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from codexgw.config import ConfigError

#: The store engines.
Engine = Literal["sqlite", "postgres"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*(?=:)")
_SQLITE_PREFIX: Final = "sqlite:///"
_POSTGRES_PREFIXES: Final = ("postgres://", "postgresql://")


@dataclass(frozen=True, repr=False)
class DatabaseURL:
    """
    A parsed C{CXG_DATABASE_URL}.

    @ivar engine: C{"sqlite"} or C{"postgres"}.
    @ivar path_or_dsn: the SQLite path (C{:memory:} included) or the PostgreSQL URL, unchanged.
    """

    engine: Engine
    path_or_dsn: str

    def __repr__(self) -> str:
        # A PostgreSQL URL may carry a password; a SQLite path is only a file name.
        shown = repr(self.path_or_dsn) if self.engine == "sqlite" else "<redacted>"
        return f"DatabaseURL(engine={self.engine!r}, path_or_dsn={shown})"


def parse_database_url(raw: str, name: str = "CXG_DATABASE_URL") -> DatabaseURL:
    """
    Parse a database URL by the rules of the C{CXG_DATABASE_URL} row.

    @param raw: the URL, not empty (the caller substitutes the default for an empty value).
    @param name: the variable named in messages.
    @raise ConfigError: C{<name>: unsupported scheme "<scheme>" (want sqlite, postgres or postgresql)} or
        C{<name>: sqlite URL needs a path (sqlite:///PATH)}.
    """
    match = _SCHEME.match(raw)
    scheme = match.group() if match else ""
    if scheme == "sqlite":
        path = raw[len(_SQLITE_PREFIX) :] if raw.startswith(_SQLITE_PREFIX) else ""
        if not path:
            raise ConfigError(f"{name}: sqlite URL needs a path (sqlite:///PATH)")
        return DatabaseURL("sqlite", path)
    if raw.startswith(_POSTGRES_PREFIXES):
        return DatabaseURL("postgres", raw)
    raise ConfigError(f'{name}: unsupported scheme "{scheme}" (want sqlite, postgres or postgresql)')
