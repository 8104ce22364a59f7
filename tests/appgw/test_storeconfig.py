"""
Tests for L{codexgw.appgw.storeconfig}: rows #10–#16 of C{app-gateway.md} §2 and
C{CXG_MAX_SNAPSHOT_BYTES} — defaults, exact messages, validation order — and the startup
constructors L{open_object_store} and L{open_home_dirs} (acceptance items 1, 3, 4, 7).

Parsing is pure (a dictionary stands for the environment); the constructors touch only trial's
temporary directory.
"""

from __future__ import annotations

import os
import stat
from typing import cast

from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IReactorTime
from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.objectstore import LocalDirObjectStore, S3ObjectStore
from codexgw.appgw.storeconfig import (
    STORE_CONFIG_VARIABLES,
    STORE_VARIABLES,
    ObjectStoreConfig,
    load_store_config,
    open_home_dirs,
    open_object_store,
)
from codexgw.config import ConfigError

reactor = cast(IReactorTime, _reactor)

#: A value of each row that fails, with its message, in table order.
BAD_VALUES = (
    ("CXG_S3_ENDPOINT", "minio:9000",
     'CXG_S3_ENDPOINT must use http:// or https:// scheme, got "minio:9000"'),
    ("CXG_S3_ENDPOINT", "ftp://minio:9000",
     'CXG_S3_ENDPOINT must use http:// or https:// scheme, got "ftp://minio:9000"'),
    ("CXG_S3_ENDPOINT", "http://[::1", "CXG_S3_ENDPOINT not a valid URL: Invalid IPv6 URL"),
    ("CXG_S3_ENDPOINT", "http://minio:99999",
     "CXG_S3_ENDPOINT not a valid URL: Port out of range 0-65535"),
    ("CXG_S3_ENDPOINT", "http://", "CXG_S3_ENDPOINT not a valid URL: missing host"),
    ("CXG_S3_ENDPOINT", "http://mi nio:9000",
     "CXG_S3_ENDPOINT not a valid URL: invalid character in URL"),
    ("CXG_MAX_SNAPSHOT_BYTES", "0", 'CXG_MAX_SNAPSHOT_BYTES must be a positive integer, got "0"'),
    ("CXG_MAX_SNAPSHOT_BYTES", "-1", 'CXG_MAX_SNAPSHOT_BYTES must be a positive integer, got "-1"'),
    ("CXG_MAX_SNAPSHOT_BYTES", "1GiB",
     'CXG_MAX_SNAPSHOT_BYTES must be a positive integer, got "1GiB"'),
    ("CXG_MAX_SNAPSHOT_BYTES", "9" * 30,
     f'CXG_MAX_SNAPSHOT_BYTES must be a positive integer, got "{"9" * 30}"'),
)  # fmt: skip


def load(**environ: str) -> ObjectStoreConfig:
    """
    L{load_store_config} of C{environ}.
    """
    return load_store_config(environ)


class StoreConfigTests(SynchronousTestCase):
    """
    The rows parse as §2 says.
    """

    def test_defaults(self) -> None:
        """
        Unset (or empty) variables give the defaults: no S3, region C{us-east-1}, path style off,
        object dir C{./var/objects} made absolute, tmp root C{/tmp/codex-app-gateway}, 1 GiB limit.
        """
        for config in (load(), load(**{row.name: "" for row in STORE_VARIABLES})):
            self.assertEqual(
                config,
                ObjectStoreConfig(
                    s3_endpoint=None,
                    s3_bucket=None,
                    s3_region="us-east-1",
                    s3_access_key_id=None,
                    s3_secret_access_key=None,
                    s3_path_style=False,
                    object_dir=os.path.join(os.getcwd(), "var", "objects"),
                    tmp_root="/tmp/codex-app-gateway",
                    max_snapshot_bytes=1 << 30,
                ),
            )
            self.assertFalse(config.uses_s3)

    def test_s3(self) -> None:
        """
        A full S3 setting: endpoint (one trailing C{/} dropped), bucket, region, static keys, path
        style; C{uses_s3} is true and the secret is not in the C{repr}.
        """
        config = load(
            CXG_S3_ENDPOINT="https://minio.example:9000/",
            CXG_S3_BUCKET="homes",
            CXG_S3_REGION="eu-west-3",
            CXG_S3_ACCESS_KEY_ID="AKIAEXAMPLE",
            CXG_S3_SECRET_ACCESS_KEY="shh-very-secret",
            CXG_S3_PATH_STYLE="TRUE",
        )
        self.assertEqual(config.s3_endpoint, "https://minio.example:9000")
        self.assertEqual(config.s3_bucket, "homes")
        self.assertEqual(config.s3_region, "eu-west-3")
        self.assertEqual(config.s3_access_key_id, "AKIAEXAMPLE")
        self.assertEqual(config.s3_secret_access_key, "shh-very-secret")
        self.assertTrue(config.s3_path_style)
        self.assertTrue(config.uses_s3)
        self.assertNotIn("shh-very-secret", repr(config))

    def test_ipv6_endpoint(self) -> None:
        """
        A bracketed IPv6 endpoint with a port is a valid URL.
        """
        config = load(CXG_S3_ENDPOINT="http://[::1]:9000", CXG_S3_BUCKET="b")
        self.assertEqual(config.s3_endpoint, "http://[::1]:9000")

    def test_path_style_values(self) -> None:
        """
        Path style is on only for C{true} in any case; anything else is off.
        """
        for raw, expected in (
            ("true", True), ("True", True), ("tRuE", True), ("1", False), ("yes", False),
            ("false", False), (" true", False),
        ):  # fmt: skip
            self.assertEqual(load(CXG_S3_PATH_STYLE=raw).s3_path_style, expected, raw)

    def test_bucket_required_with_endpoint(self) -> None:
        """
        C{CXG_S3_ENDPOINT} without a bucket fails with C{CXG_S3_BUCKET is required}; without an
        endpoint the bucket is optional.
        """
        with self.assertRaises(ConfigError) as caught:
            load(CXG_S3_ENDPOINT="http://minio:9000")
        self.assertEqual(str(caught.exception), "CXG_S3_BUCKET is required")
        self.assertIsNone(load().s3_bucket)

    def test_keys_set_together(self) -> None:
        """
        One S3 key without the other fails with the exact text; both or neither are fine.
        """
        for environ in (
            {"CXG_S3_ACCESS_KEY_ID": "id"},
            {"CXG_S3_SECRET_ACCESS_KEY": "secret"},
        ):
            with self.assertRaises(ConfigError) as caught:
                load_store_config(environ)
            self.assertEqual(
                str(caught.exception),
                "CXG_S3_ACCESS_KEY_ID and CXG_S3_SECRET_ACCESS_KEY must be set together",
            )
        self.assertEqual(
            load(CXG_S3_ACCESS_KEY_ID="i", CXG_S3_SECRET_ACCESS_KEY="s").s3_access_key_id, "i"
        )

    def test_paths_made_absolute(self) -> None:
        """
        Relative directories are made absolute against the working directory, lexically (C{..}
        folded, symlinks not resolved); absolute ones are kept.
        """
        config = load(CXG_OBJECT_DIR="objs", CXG_TMP_ROOT="a/../homes")
        self.assertEqual(config.object_dir, os.path.join(os.getcwd(), "objs"))
        self.assertEqual(config.tmp_root, os.path.join(os.getcwd(), "homes"))
        self.assertEqual(load(CXG_TMP_ROOT="/srv/homes").tmp_root, "/srv/homes")

    def test_max_snapshot_bytes(self) -> None:
        """
        The limit accepts any positive integer.
        """
        self.assertEqual(load(CXG_MAX_SNAPSHOT_BYTES="1").max_snapshot_bytes, 1)
        self.assertEqual(load(CXG_MAX_SNAPSHOT_BYTES="5368709120").max_snapshot_bytes, 5 << 30)

    def test_bad_values(self) -> None:
        """
        Each bad value fails with its row's exact message.
        """
        for name, raw, message in BAD_VALUES:
            environ = {name: raw}
            if name != "CXG_S3_ENDPOINT":
                environ["CXG_S3_BUCKET"] = "b"
            with self.assertRaises(ConfigError, msg=f"{name}={raw}") as caught:
                load_store_config(environ)
            self.assertEqual(str(caught.exception), message)

    def test_validation_order(self) -> None:
        """
        With several bad rows, the first in table order is reported: endpoint before bucket,
        bucket before keys, keys before the size limit.
        """
        environ = {
            "CXG_S3_ENDPOINT": "http://minio:9000",
            "CXG_S3_ACCESS_KEY_ID": "only-one",
            "CXG_MAX_SNAPSHOT_BYTES": "0",
        }
        with self.assertRaises(ConfigError) as caught:
            load_store_config(environ)
        self.assertEqual(str(caught.exception), "CXG_S3_BUCKET is required")
        environ["CXG_S3_BUCKET"] = "b"
        with self.assertRaises(ConfigError) as caught:
            load_store_config(environ)
        self.assertIn("must be set together", str(caught.exception))
        environ["CXG_S3_SECRET_ACCESS_KEY"] = "s"
        with self.assertRaises(ConfigError) as caught:
            load_store_config(environ)
        self.assertIn("CXG_MAX_SNAPSHOT_BYTES", str(caught.exception))
        environ["CXG_S3_ENDPOINT"] = "minio:9000"
        with self.assertRaises(ConfigError) as caught:
            load_store_config(environ)
        self.assertIn("scheme", str(caught.exception))

    def test_documentation_rows(self) -> None:
        """
        The documentation table lists the rows in order with their defaults and requiredness, each
        with a description.
        """
        self.assertEqual(
            [(name, default, required) for name, default, required, _ in STORE_CONFIG_VARIABLES],
            [
                ("CXG_S3_ENDPOINT", None, False),
                ("CXG_S3_BUCKET", None, False),
                ("CXG_S3_REGION", "us-east-1", False),
                ("CXG_S3_ACCESS_KEY_ID", None, False),
                ("CXG_S3_SECRET_ACCESS_KEY", None, False),
                ("CXG_S3_PATH_STYLE", "false", False),
                ("CXG_OBJECT_DIR", "./var/objects", False),
                ("CXG_TMP_ROOT", "/tmp/codex-app-gateway", False),
                ("CXG_MAX_SNAPSHOT_BYTES", "1073741824", False),
            ],
        )
        for _, _, _, description in STORE_CONFIG_VARIABLES:
            self.assertTrue(description)


class OpenStoreTests(SynchronousTestCase):
    """
    The startup constructors build what the configuration names.
    """

    def test_local_directory(self) -> None:
        """
        Without an endpoint the store is the local directory, created with its missing parents
        (mode 0700).
        """
        base = os.path.abspath(self.mktemp())
        directory = os.path.join(base, "var", "objects")
        store = open_object_store(load(CXG_OBJECT_DIR=directory), reactor)
        self.assertIsInstance(store, LocalDirObjectStore)
        assert isinstance(store, LocalDirObjectStore)
        self.assertEqual(store.directory, directory)
        for path in (base, os.path.join(base, "var"), directory):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o700)

    def test_s3(self) -> None:
        """
        With an endpoint the store is S3 on the bucket, with the configured client, and no
        directory is created.
        """
        directory = os.path.abspath(self.mktemp())
        config = load(
            CXG_S3_ENDPOINT="http://minio:9000",
            CXG_S3_BUCKET="homes",
            CXG_S3_PATH_STYLE="true",
            CXG_OBJECT_DIR=directory,
        )
        store = open_object_store(config, reactor)
        self.assertIsInstance(store, S3ObjectStore)
        assert isinstance(store, S3ObjectStore)
        self.assertEqual(store.bucket, "homes")
        self.assertFalse(os.path.exists(directory))

    def test_home_dirs(self) -> None:
        """
        L{open_home_dirs} creates the tmp root (mode 0700) and manages homes under it.
        """
        root = os.path.join(os.path.abspath(self.mktemp()), "homes")
        homes = open_home_dirs(load(CXG_TMP_ROOT=root))
        self.assertEqual(homes.root, root)
        self.assertEqual(stat.S_IMODE(os.stat(root).st_mode), 0o700)
