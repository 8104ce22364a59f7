"""
The configuration of CODEX_HOME persistence: rows #10–#16 of C{app-gateway.md} §2 (object store, S3,
C{CXG_OBJECT_DIR}, C{CXG_TMP_ROOT}) and the archive size limit, as L{Variable} rows that the app
gateway's whole table includes at their places (L{STORE_VARIABLES}), plus L{load_store_config} for
these rows alone and the two constructors that turn the result into objects at startup
(L{open_object_store}, L{open_home_dirs}).

Decisions where the spec is silent:
 - C{CXG_MAX_SNAPSHOT_BYTES} (not in the spec's table; default 1073741824 = 1 GiB) bounds the
   uncompressed size of a CODEX_HOME tarball accepted by a restore (L{codexgw.appgw.snapshot}). It
   follows the rule and message of the other positive integers (§2 #20–#22) and is validated right
   after C{CXG_TMP_ROOT}.
 - C{CXG_S3_ENDPOINT} "must parse as a URL": Python's URL parser must accept it (a bad IPv6
   literal or port fails with its message), it must hold no white space or control character, and
   after the scheme check it must name a host (C{CXG_S3_ENDPOINT not a valid URL: missing host}).
   One trailing C{/} is dropped, as for every URL of the table.
 - C{CXG_S3_SECRET_ACCESS_KEY} has no length rule (S3-compatible servers accept short keys) and is
   never shown by C{repr}. The other S3 values are taken as they are.
 - C{CXG_S3_BUCKET}, C{CXG_S3_REGION} and the keys are parsed even when C{CXG_S3_ENDPOINT} is
   unset (they are then unused), so a typo is reported whichever store is active.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from twisted.internet.interfaces import IReactorTime
from twisted.python.threadpool import ThreadPool

from codexgw.appgw.codexhome import HomeDirs
from codexgw.appgw.configtable import absolute_path, flag, positive_integer, text
from codexgw.appgw.objectstore import (
    DEFAULT_CALL_TIMEOUT,
    IObjectStore,
    LocalDirObjectStore,
    S3ObjectStore,
    make_s3_client,
)
from codexgw.appgw.safefs import make_private_dirs
from codexgw.appgw.snapshot import DEFAULT_MAX_SNAPSHOT_BYTES
from codexgw.config import ConfigError, Variable, documentation, load_variables, parse_url

_HTTP: Final = ("http://", "https://")


def _s3_endpoint(name: str, raw: str) -> str:
    if any(char.isspace() or char < " " or char == "\x7f" for char in raw):
        raise ConfigError(f"{name} not a valid URL: invalid character in URL")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - evaluated for its check of the port
    except ValueError as e:
        raise ConfigError(f"{name} not a valid URL: {e}") from None
    value = parse_url(name, raw, _HTTP)
    if not parts.hostname:
        raise ConfigError(f"{name} not a valid URL: missing host")
    return value


def _bucket_required(values: Mapping[str, Any]) -> None:
    if values["s3_endpoint"] is not None and values["s3_bucket"] is None:
        raise ConfigError("CXG_S3_BUCKET is required")


def _keys_together(values: Mapping[str, Any]) -> None:
    if (values["s3_access_key_id"] is None) != (values["s3_secret_access_key"] is None):
        raise ConfigError("CXG_S3_ACCESS_KEY_ID and CXG_S3_SECRET_ACCESS_KEY must be set together")


#: The rows, in validation order (§2 #10–#16, then the size limit).
STORE_VARIABLES: Final[tuple[Variable, ...]] = (
    Variable("CXG_S3_ENDPOINT", None, False,
             "URL `http://`/`https://` of an S3-compatible endpoint. Set → the object store is S3; "
             "unset → the local directory `CXG_OBJECT_DIR`.",
             _s3_endpoint),
    Variable("CXG_S3_BUCKET", None, False,
             "The bucket holding `codex-app-gateway/<workspace_id>.tar.gz`; required when "
             "`CXG_S3_ENDPOINT` is set.",
             text, _bucket_required),
    Variable("CXG_S3_REGION", "us-east-1", False,
             "The S3 region.",
             text),
    Variable("CXG_S3_ACCESS_KEY_ID", None, False,
             "Static access key id; set together with `CXG_S3_SECRET_ACCESS_KEY`, or neither "
             "(botocore's default credential chain).",
             text),
    Variable("CXG_S3_SECRET_ACCESS_KEY", None, False,
             "Static secret access key; set together with `CXG_S3_ACCESS_KEY_ID`, or neither.",
             text, _keys_together),
    Variable("CXG_S3_PATH_STYLE", "false", False,
             "Path-style addressing (`<endpoint>/<bucket>/<key>`) when `true`, ignoring case.",
             flag),
    Variable("CXG_OBJECT_DIR", "./var/objects", False,
             "Directory of the local object store, used when `CXG_S3_ENDPOINT` is unset; made "
             "absolute against the working directory (symlinks not resolved), created with mode "
             "0700 at startup.",
             absolute_path),
    Variable("CXG_TMP_ROOT", "/tmp/codex-app-gateway", False,  # noqa: S108 - the spec's default
             "Parent of every CODEX_HOME (`<root>/<workspace_id>`); made absolute like "
             "`CXG_OBJECT_DIR`, created with mode 0700 at startup.",
             absolute_path),
    Variable("CXG_MAX_SNAPSHOT_BYTES", str(DEFAULT_MAX_SNAPSHOT_BYTES), False,
             "Positive integer; the largest uncompressed CODEX_HOME tarball a restore accepts.",
             positive_integer),
)  # fmt: skip

#: The rows for documentation: C{(name, default, required, description)}, in order.
STORE_CONFIG_VARIABLES: Final = documentation(STORE_VARIABLES)


@dataclass(frozen=True)
class ObjectStoreConfig:
    """
    The validated rows of L{STORE_VARIABLES} (unset optional rows are C{None}).

    @ivar s3_endpoint: C{CXG_S3_ENDPOINT}; set means the object store is S3.
    @ivar s3_bucket: C{CXG_S3_BUCKET}.
    @ivar s3_region: C{CXG_S3_REGION}.
    @ivar s3_access_key_id: C{CXG_S3_ACCESS_KEY_ID}.
    @ivar s3_secret_access_key: C{CXG_S3_SECRET_ACCESS_KEY} (never shown by C{repr}).
    @ivar s3_path_style: C{CXG_S3_PATH_STYLE}.
    @ivar object_dir: C{CXG_OBJECT_DIR}, absolute.
    @ivar tmp_root: C{CXG_TMP_ROOT}, absolute.
    @ivar max_snapshot_bytes: C{CXG_MAX_SNAPSHOT_BYTES}.
    """

    s3_endpoint: str | None
    s3_bucket: str | None
    s3_region: str
    s3_access_key_id: str | None
    s3_secret_access_key: str | None = field(repr=False)
    s3_path_style: bool
    object_dir: str
    tmp_root: str
    max_snapshot_bytes: int

    @property
    def uses_s3(self) -> bool:
        """
        Whether the object store is S3 (C{CXG_S3_ENDPOINT} is set) rather than C{CXG_OBJECT_DIR}.
        """
        return self.s3_endpoint is not None


def load_store_config(environ: Mapping[str, str]) -> ObjectStoreConfig:
    """
    Validate only the rows of L{STORE_VARIABLES}, in order, with the messages of §2.

    @raise ConfigError: at the first row that fails.
    """
    return ObjectStoreConfig(**load_variables(environ, STORE_VARIABLES))


def open_object_store(
    config: ObjectStoreConfig,
    reactor: IReactorTime,
    threadpool: ThreadPool | None = None,
    call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
) -> IObjectStore:
    """
    Build the configured store at startup: S3 when C{CXG_S3_ENDPOINT} is set, else the local
    directory, created with its missing parents (mode 0700).

    @param threadpool: the pool for the store's blocking calls; the reactor's when C{None}. A
        dedicated pool keeps many concurrent uploads from starving the reactor's other users
        (name resolution).
    @raise OSError: when the local directory cannot be created.
    """
    if config.uses_s3:
        assert config.s3_bucket is not None  # enforced by the table
        client = make_s3_client(
            config.s3_endpoint,
            config.s3_region,
            config.s3_access_key_id,
            config.s3_secret_access_key,
            config.s3_path_style,
        )
        return S3ObjectStore(client, config.s3_bucket, reactor, threadpool, call_timeout=call_timeout)
    make_private_dirs(config.object_dir)
    return LocalDirObjectStore(config.object_dir, reactor, threadpool, call_timeout=call_timeout)


def open_home_dirs(config: ObjectStoreConfig) -> HomeDirs:
    """
    The CODEX_HOME manager of C{CXG_TMP_ROOT}, its root created (or checked) at startup.

    @raise codexgw.appgw.codexhome.CodexHomeError: when the root belongs to another user.
    @raise OSError: when it cannot be created.
    """
    homes = HomeDirs(config.tmp_root)
    homes.ensure_root()
    return homes
