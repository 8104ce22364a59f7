"""
Schema migrations, shared by both engines (C{exec-gateway.md} §8.3).

The migrations ship as package data, one directory per engine (C{sql/postgres}, C{sql/sqlite}), one
file per migration; a migration's version is its file name (C{001_executors.sql}) and they run in
file-name order. L{load_migrations} reads them; L{apply_migrations} runs the ones a database lacks
through a L{MigrationTarget}, which each engine implements: it reads and records C{schema_migrations}
and applies one migration together with its C{schema_migrations} row in one transaction.

A version recorded in C{schema_migrations} that this build does not ship fails the run with
L{UnknownMigration} before anything is applied. Each applied migration logs C{store.migration_applied}.

Decisions where the spec is silent: C{applied_at} is the store clock's "now" (the application supplies
every timestamp); a target may report that a migration was applied concurrently by another process in
the meantime (SQLite has no advisory lock), in which case it is skipped and not logged; a failing
migration's error says which migration failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Literal, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from codexgw.execgw.store import StoreError, StoreUnavailable, UnknownMigration, utc_now

_log = Logger(namespace="codexgw.execgw.store")

#: The engines that have a migration directory.
Engine = Literal["postgres", "sqlite"]


@dataclass(frozen=True)
class Migration:
    """
    One migration file.

    @ivar version: the file name, recorded in C{schema_migrations.version}.
    @ivar sql: the file's SQL text (one or more statements separated by C{;}).
    """

    version: str
    sql: str


class MigrationTarget(Protocol):
    """
    What L{apply_migrations} needs from an engine.
    """

    def applied_versions(self) -> Deferred[list[str]]:
        """
        Create C{schema_migrations} if it is missing and return the versions it records.
        """

    def apply(self, migration: Migration, applied_at: datetime) -> Deferred[bool]:
        """
        In one transaction, run C{migration} and record its version with C{applied_at}.

        @return: a L{Deferred} firing with C{False} if the version turned out to be recorded already
            (nothing was run), C{True} otherwise.
        """


@cache
def load_migrations(engine: Engine) -> tuple[Migration, ...]:
    """
    Return the migrations of C{engine} in file-name order (read once, then cached).
    """
    directory = resources.files("codexgw.execgw.store").joinpath("sql", engine)
    files = sorted(
        (entry for entry in directory.iterdir() if entry.name.endswith(".sql")),
        key=lambda entry: entry.name,
    )
    return tuple(Migration(entry.name, entry.read_text(encoding="utf-8")) for entry in files)


def apply_migrations(
    target: MigrationTarget, migrations: tuple[Migration, ...], clock: IReactorTime
) -> Deferred[list[str]]:
    """
    Apply the C{migrations} that C{target} has not recorded yet, in order.

    @param clock: supplies C{applied_at}.
    @return: a L{Deferred} firing with the versions applied by this run (C{[]} when the schema was
        current), or failing with L{UnknownMigration} or L{StoreError}.
    """

    async def run() -> list[str]:
        recorded = set(await target.applied_versions())
        unknown = sorted(recorded - {migration.version for migration in migrations})
        if unknown:
            raise UnknownMigration(unknown[0])
        applied: list[str] = []
        for migration in migrations:
            if migration.version in recorded:
                continue
            try:
                ran = await target.apply(migration, utc_now(clock))
            except StoreError as e:
                kind = StoreUnavailable if isinstance(e, StoreUnavailable) else StoreError
                raise kind(f"migration {migration.version} failed: {e}") from e
            if ran:
                _log.info(
                    "applied migration {version}",
                    event="store.migration_applied",
                    version=migration.version,
                )
                applied.append(migration.version)
        return applied

    return Deferred.fromCoroutine(run())
