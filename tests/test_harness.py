"""
Tests that the harness's backing services are real and reachable (L{tests.harness}).
"""

from __future__ import annotations

import uuid
from typing import Any

import botocore.session
from botocore.config import Config
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from txpostgres import txpostgres

from tests.support import postgres_dsn, s3_endpoint


class PostgresTests(TestCase):
    """
    The throwaway PostgreSQL cluster answers queries.
    """

    timeout = 30

    async def test_query(self) -> None:
        """
        A txpostgres connection to C{CXG_TEST_POSTGRES_DSN} runs a query on PostgreSQL 15 or later.
        """
        conn = txpostgres.Connection(reactor=reactor)
        await Deferred.fromCoroutine(_wrap(conn.connect(postgres_dsn())))
        self.addCleanup(conn.close)
        rows: Any = await Deferred.fromCoroutine(_wrap(conn.runQuery("SHOW server_version_num")))
        self.assertGreaterEqual(int(rows[0][0]), 150000)


class S3Tests(TestCase):
    """
    The local S3 server stores and returns objects through botocore.
    """

    timeout = 60

    async def test_roundTrip(self) -> None:
        """
        Create a bucket, put an object, get the same bytes back.
        """
        endpoint = s3_endpoint()

        def roundtrip() -> bytes:
            # botocore builds its client classes at run time; the stubs cannot see their methods.
            client: Any = botocore.session.get_session().create_client(
                "s3",
                region_name="us-east-1",
                endpoint_url=endpoint,
                aws_access_key_id="test",
                aws_secret_access_key="test",
                config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}),
            )
            bucket = f"t-{uuid.uuid4().hex}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="k", Body=b"payload")
            body: bytes = client.get_object(Bucket=bucket, Key="k")["Body"].read()
            return body

        self.assertEqual(await deferToThread(roundtrip), b"payload")


async def _wrap(d: Deferred[object]) -> object:
    # txpostgres is untyped; give its Deferreds a type at the edge.
    return await d
