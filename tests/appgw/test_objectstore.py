"""
Tests for L{codexgw.appgw.objectstore} and L{codexgw.testing.memobjectstore} (C{app-gateway.md}
§6.3; acceptance item 50).

 - L{ObjectStoreTestsMixin}: the one shared L{IObjectStore} suite, run against
   L{LocalDirObjectStore}, L{S3ObjectStore} (the harness's real local S3 server, a fresh bucket per
   test) and L{MemoryObjectStore}: round trips, overwrite, absent keys, idempotent delete, invalid
   keys, local-file errors, and an unreachable store failing with a distinct error within a bound.
 - S3 specifics: the client's configuration, C{NoSuchBucket} failing closed, a refused port, a port
   that accepts and never answers (botocore's read timeout, and the L{Deferred} deadline driven by a
   L{Clock}), and abandoned calls that never write or store anything afterwards.
 - Local-directory specifics: modes, atomicity, symlinks planted inside the store, files in the way.
 - The fake's scripting (failure, stall, call log).

Calls on the real reactor are bounded with L{Deferred.addTimeout}; the deadline tests use a L{Clock}
or the L{ManualReactor} so no test waits for a timer to fire in real time.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from typing import TYPE_CHECKING, Any, TypeVar, cast

from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from codexgw.appgw.blocking import Abandoned, CallControl
from codexgw.appgw.objectstore import (
    NOT_FOUND_MESSAGE,
    IObjectStore,
    LocalDirObjectStore,
    ObjectNotFound,
    ObjectStoreError,
    ObjectStoreTimeout,
    ObjectStoreUnavailable,
    S3ObjectStore,
    _AbortableReader,
    check_key,
    make_s3_client,
)
from codexgw.testing.memobjectstore import MemoryObjectStore
from tests.appgw.threads import ManualReactor
from tests.support import s3_endpoint

reactor = cast(IReactorTime, _reactor)

_T = TypeVar("_T")

# The mixin calls TestCase methods; only the type checker needs to know it.
if TYPE_CHECKING:
    _Base = TestCase
else:
    _Base = object

#: How long any single store call on the real reactor may take in these tests.
CALL_BOUND = 15.0

#: Keys that are valid and must round-trip on every store.
ODD_KEYS = (
    "codex-app-gateway/ws_a.tar.gz",
    "a b/c+d/e%20f",
    "ü/中文/😀",
    "x=1&y=2/~tilde/semi;colon",
    "deep/" * 10 + "leaf",
    "...dots/.hidden/..x/x..",
)

#: Keys every store refuses with L{ValueError}.
BAD_KEYS = ("", "/a", "a/", "a//b", "./a", "a/./b", "../a", "a/..", "..", ".", "a/b/../c", "a\0b")


def bounded(d: Deferred[_T]) -> Deferred[_T]:
    """
    C{d}, failing with a timeout after L{CALL_BOUND} seconds so a hang fails the test promptly.
    """
    return d.addTimeout(CALL_BOUND, reactor)


_E = TypeVar("_E", bound=BaseException)


async def fails_with(d: Deferred[Any], kind: type[_E]) -> _E:
    """
    Wait for C{d} (bounded) and return its error, which must be a C{kind}.
    """
    try:
        result = await bounded(d)
    except kind as e:
        return e
    raise AssertionError(f"expected {kind.__name__}, got result {result!r}")


def local_file(case: SynchronousTestCase, data: bytes | None = None) -> str:
    """
    A fresh path in a new directory of C{case}'s temporary space, holding C{data} when given.
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    path = os.path.join(directory, "file")
    if data is not None:
        with open(path, "wb") as f:
            f.write(data)
    return path


def blackhole(case: SynchronousTestCase) -> str:
    """
    A listening socket on 127.0.0.1 that never accepts: connections complete (in the kernel's
    backlog) and nothing ever answers. Closed when the test ends, which resets those connections.

    @return: its C{http://} URL.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    case.addCleanup(listener.close)
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def refused_port() -> str:
    """
    The URL of a port on 127.0.0.1 where nothing listens (connections are refused).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def quick_s3_client(endpoint: str, read_timeout: float = 0.5) -> Any:
    """
    An S3 client with small limits and a single attempt, for endpoints that misbehave.
    """
    return make_s3_client(
        endpoint,
        "us-east-1",
        "test",
        "test",
        path_style=True,
        connect_timeout=0.5,
        read_timeout=read_timeout,
        max_attempts=1,
    )


async def new_bucket() -> tuple[Any, str]:
    """
    A client of the harness's S3 server and a fresh, empty bucket on it.
    """
    client = make_s3_client(s3_endpoint(), "us-east-1", "test", "test", path_style=True)
    bucket = f"cxg-test-{secrets.token_hex(8)}"
    await bounded(deferToThread(client.create_bucket, Bucket=bucket))
    return client, bucket


def read(path: str) -> bytes:
    """
    The contents of C{path}.
    """
    with open(path, "rb") as f:
        return f.read()


# -------------------------------------------------------------------------------------------------
# Keys and errors


class KeyTests(SynchronousTestCase):
    """
    L{check_key}: C{/}-separated, relative, no empty, C{.} or C{..} segment.
    """

    def test_valid(self) -> None:
        """
        Ordinary and unusual-but-valid keys split into their segments.
        """
        self.assertEqual(
            check_key("codex-app-gateway/ws_a.tar.gz"), ["codex-app-gateway", "ws_a.tar.gz"]
        )
        for key in ODD_KEYS:
            self.assertEqual(check_key(key), key.split("/"))

    def test_invalid(self) -> None:
        """
        Empty, absolute, trailing-slash, doubled-slash, C{.}, C{..} and NUL keys are refused.
        """
        for key in BAD_KEYS:
            self.assertRaises(ValueError, check_key, key)

    def test_error_family(self) -> None:
        """
        L{ObjectNotFound} is distinct from every store error (neither family catches the other);
        a timeout is a kind of unavailability, which is a kind of store error.
        """
        self.assertFalse(issubclass(ObjectNotFound, ObjectStoreError))
        self.assertFalse(issubclass(ObjectStoreError, ObjectNotFound))
        self.assertTrue(issubclass(ObjectStoreTimeout, ObjectStoreUnavailable))
        self.assertTrue(issubclass(ObjectStoreUnavailable, ObjectStoreError))
        error = ObjectNotFound("k")
        self.assertEqual(str(error), "codexhome: object not found")
        self.assertEqual(error.key, "k")


# -------------------------------------------------------------------------------------------------
# The shared interface suite


class ObjectStoreTestsMixin(_Base):
    """
    The interface tests every L{IObjectStore} passes. Subclasses implement L{make_store} and
    L{unreachable_store}.
    """

    async def make_store(self) -> IObjectStore:
        """
        A working, empty store.
        """
        raise NotImplementedError

    async def unreachable_store(self) -> IObjectStore:
        """
        A store whose backend cannot be reached (down, unmounted, not answering).
        """
        raise NotImplementedError

    def local(self, data: bytes | None = None) -> str:
        """
        A fresh path in the test's directory, holding C{data} when given.
        """
        return local_file(self, data)

    async def test_provides_interface(self) -> None:
        """
        The store provides L{IObjectStore}.
        """
        self.assertTrue(verifyObject(IObjectStore, await self.make_store()))

    async def test_round_trip(self) -> None:
        """
        C{put} then C{get} gives back the same bytes, in a new file of mode 0600.
        """
        store = await self.make_store()
        data = os.urandom(4096)
        await bounded(store.put("codex-app-gateway/ws_a.tar.gz", self.local(data)))
        target = self.local()
        old = os.umask(0o000)
        self.addCleanup(os.umask, old)
        await bounded(store.get("codex-app-gateway/ws_a.tar.gz", target))
        self.assertEqual(read(target), data)
        self.assertEqual(stat.S_IMODE(os.stat(target).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(target)), ["file"])

    async def test_empty_and_large_objects(self) -> None:
        """
        An empty file and a file of several chunks (3 MiB + 1) round-trip exactly.
        """
        store = await self.make_store()
        for size in (0, 3 * 1024 * 1024 + 1):
            data = os.urandom(size)
            await bounded(store.put(f"size/{size}", self.local(data)))
            target = self.local()
            await bounded(store.get(f"size/{size}", target))
            self.assertEqual(read(target), data)

    async def test_overwrite(self) -> None:
        """
        A second C{put} under the same key replaces the object (also with a shorter one).
        """
        store = await self.make_store()
        await bounded(store.put("k/obj", self.local(b"first version, long")))
        await bounded(store.put("k/obj", self.local(b"second")))
        target = self.local()
        await bounded(store.get("k/obj", target))
        self.assertEqual(read(target), b"second")

    async def test_get_absent(self) -> None:
        """
        C{get} of an absent key fails with L{ObjectNotFound} (exact message, the key attached) and
        creates no file.
        """
        store = await self.make_store()
        target = self.local()
        failure = await fails_with(store.get("codex-app-gateway/ws_nope.tar.gz", target), ObjectNotFound)
        self.assertEqual(str(failure), NOT_FOUND_MESSAGE)
        self.assertEqual(failure.key, "codex-app-gateway/ws_nope.tar.gz")
        self.assertFalse(os.path.lexists(target))
        self.assertEqual(os.listdir(os.path.dirname(target)), [])

    async def test_get_absent_keeps_existing_file(self) -> None:
        """
        A failed C{get} leaves an existing file at the target as it was.
        """
        store = await self.make_store()
        target = self.local(b"precious")
        await self.assertFailure(bounded(store.get("nope", target)), ObjectNotFound)
        self.assertEqual(read(target), b"precious")

    async def test_get_replaces_existing_file(self) -> None:
        """
        C{get} over an existing, longer file leaves exactly the object's bytes.
        """
        store = await self.make_store()
        await bounded(store.put("k", self.local(b"short")))
        target = self.local(b"a much longer existing file")
        await bounded(store.get("k", target))
        self.assertEqual(read(target), b"short")

    async def test_prefix_is_not_an_object(self) -> None:
        """
        A key's prefix is not an object: C{get} of C{a} when only C{a/b} exists is L{ObjectNotFound}.
        """
        store = await self.make_store()
        await bounded(store.put("a/b", self.local(b"x")))
        await self.assertFailure(bounded(store.get("a", self.local())), ObjectNotFound)
        await bounded(store.delete("a"))
        target = self.local()
        await bounded(store.get("a/b", target))
        self.assertEqual(read(target), b"x")

    async def test_keys_independent(self) -> None:
        """
        Objects under different keys (siblings, other prefixes) do not affect each other.
        """
        store = await self.make_store()
        for key in ("x/1", "x/2", "y/1"):
            await bounded(store.put(key, self.local(key.encode())))
        await bounded(store.delete("x/1"))
        for key in ("x/2", "y/1"):
            target = self.local()
            await bounded(store.get(key, target))
            self.assertEqual(read(target), key.encode())
        await self.assertFailure(bounded(store.get("x/1", self.local())), ObjectNotFound)

    async def test_odd_keys(self) -> None:
        """
        Keys with spaces, C{+}, C{%}, non-ASCII, punctuation, many segments and dot-laden names
        round-trip.
        """
        store = await self.make_store()
        for key in ODD_KEYS:
            await bounded(store.put(key, self.local(key.encode())))
        for key in ODD_KEYS:
            target = self.local()
            await bounded(store.get(key, target))
            self.assertEqual(read(target), key.encode(), key)

    async def test_delete(self) -> None:
        """
        C{delete} removes the object; deleting it again, or an absent key, succeeds.
        """
        store = await self.make_store()
        await bounded(store.put("k", self.local(b"x")))
        await bounded(store.delete("k"))
        await self.assertFailure(bounded(store.get("k", self.local())), ObjectNotFound)
        await bounded(store.delete("k"))
        await bounded(store.delete("never/was"))

    async def test_invalid_keys(self) -> None:
        """
        Every method fails with L{ValueError} for an invalid key and does nothing.
        """
        store = await self.make_store()
        source = self.local(b"x")
        target = self.local()
        for key in BAD_KEYS:
            await self.assertFailure(bounded(store.put(key, source)), ValueError)
            await self.assertFailure(bounded(store.get(key, target)), ValueError)
            await self.assertFailure(bounded(store.delete(key)), ValueError)
        self.assertFalse(os.path.lexists(target))

    async def test_put_missing_source(self) -> None:
        """
        C{put} of a local file that does not exist is an L{ObjectStoreError} — never
        L{ObjectNotFound} — and stores nothing.
        """
        store = await self.make_store()
        missing = self.local()
        failure = await fails_with(store.put("k", missing), ObjectStoreError)
        self.assertNotIsInstance(failure, ObjectNotFound)
        await self.assertFailure(bounded(store.get("k", self.local())), ObjectNotFound)

    async def test_get_into_missing_directory(self) -> None:
        """
        C{get} of an existing object into a directory that does not exist is an
        L{ObjectStoreError}.
        """
        store = await self.make_store()
        await bounded(store.put("k", self.local(b"x")))
        target = os.path.join(self.local(), "no", "such", "dir")
        await self.assertFailure(bounded(store.get("k", target)), ObjectStoreError)

    async def test_unreachable(self) -> None:
        """
        A store whose backend is down fails every method with L{ObjectStoreUnavailable} — never
        L{ObjectNotFound}, so a restore can never mistake it for a new workspace — within the
        bound, and C{get} creates no file.
        """
        store = await self.unreachable_store()
        target = self.local()
        await self.assertFailure(bounded(store.get("k", target)), ObjectStoreUnavailable)
        self.assertFalse(os.path.lexists(target))
        await self.assertFailure(bounded(store.put("k", self.local(b"x"))), ObjectStoreUnavailable)
        await self.assertFailure(bounded(store.delete("k")), ObjectStoreUnavailable)


class LocalDirObjectStoreTests(ObjectStoreTestsMixin, TestCase):
    """
    The shared suite on L{LocalDirObjectStore} (real files, the reactor's thread pool).
    """

    timeout = 60

    async def make_store(self) -> IObjectStore:
        """
        A store in a fresh directory.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return LocalDirObjectStore(directory, reactor)

    async def unreachable_store(self) -> IObjectStore:
        """
        A store whose directory does not exist (a lost mount).
        """
        return LocalDirObjectStore(os.path.abspath(self.mktemp()), reactor)


class S3ObjectStoreTests(ObjectStoreTestsMixin, TestCase):
    """
    The shared suite on L{S3ObjectStore} against the harness's local S3 server, a fresh bucket
    per test.
    """

    timeout = 60

    async def make_store(self) -> IObjectStore:
        """
        A store on a new, empty bucket.
        """
        client, bucket = await new_bucket()
        return S3ObjectStore(client, bucket, reactor)

    async def unreachable_store(self) -> IObjectStore:
        """
        A store whose endpoint accepts connections and never answers (botocore's 0.5 s read
        timeout ends each call).
        """
        return S3ObjectStore(quick_s3_client(blackhole(self)), "bucket", reactor)


class MemoryObjectStoreTests(ObjectStoreTestsMixin, TestCase):
    """
    The shared suite on the in-memory fake.
    """

    async def make_store(self) -> IObjectStore:
        """
        An empty fake.
        """
        return MemoryObjectStore()

    async def unreachable_store(self) -> IObjectStore:
        """
        A fake scripted to be down.
        """
        store = MemoryObjectStore()
        store.failure = ObjectStoreUnavailable("memory store down")
        return store


# -------------------------------------------------------------------------------------------------
# S3 specifics


class S3ClientConfigTests(SynchronousTestCase):
    """
    L{make_s3_client} builds the client of §6.3 (no network involved).
    """

    def test_defaults(self) -> None:
        """
        Endpoint, region, 5 s connect and 60 s read timeouts, standard retries with 3 attempts,
        checksums only when required, virtual-host addressing unless path style is asked for.
        """
        client = make_s3_client("http://minio:9000", "eu-west-3", "id", "secret")
        config = client.meta.config
        self.assertEqual(client.meta.endpoint_url, "http://minio:9000")
        self.assertEqual(client.meta.region_name, "eu-west-3")
        self.assertEqual(config.connect_timeout, 5.0)
        self.assertEqual(config.read_timeout, 60.0)
        # Three attempts in all: botocore's "max_attempts" would count retries only.
        self.assertEqual(config.retries, {"mode": "standard", "total_max_attempts": 3})
        self.assertEqual(config.request_checksum_calculation, "when_required")
        self.assertEqual(config.response_checksum_validation, "when_required")
        self.assertIsNone(config.s3)

    def test_path_style(self) -> None:
        """
        Path style sets C{addressing_style} to C{path}.
        """
        client = make_s3_client("http://minio:9000", "us-east-1", path_style=True)
        self.assertEqual(client.meta.config.s3, {"addressing_style": "path"})


class S3BehaviourTests(TestCase):
    """
    How L{S3ObjectStore} maps a real server's and a broken network's behaviour.
    """

    timeout = 60

    def local(self, data: bytes | None = None) -> str:
        """
        A fresh path in the test's directory, holding C{data} when given.
        """
        return local_file(self, data)

    async def test_no_such_bucket_fails_closed(self) -> None:
        """
        A missing bucket (also a 404) is an L{ObjectStoreError} for C{get} and C{delete}, never
        L{ObjectNotFound}: a mistyped bucket must not make every workspace start fresh.
        """
        client, _ = await new_bucket()
        store = S3ObjectStore(client, f"cxg-missing-{secrets.token_hex(8)}", reactor)
        target = self.local()
        failure = await fails_with(store.get("k", target), ObjectStoreError)
        self.assertIn("NoSuchBucket", str(failure))
        self.assertFalse(os.path.lexists(target))
        await self.assertFailure(bounded(store.delete("k")), ObjectStoreError)
        await self.assertFailure(bounded(store.put("k", self.local(b"x"))), ObjectStoreError)

    async def test_refused_port(self) -> None:
        """
        An endpoint where nothing listens fails with L{ObjectStoreUnavailable} naming the endpoint.
        """
        endpoint = refused_port()
        store = S3ObjectStore(quick_s3_client(endpoint), "bucket", reactor)
        failure = await fails_with(store.get("k", self.local()), ObjectStoreUnavailable)
        self.assertIn(endpoint, str(failure))
        self.assertNotIn("secret", str(failure).lower())

    def test_deadline(self) -> None:
        """
        A call the server never answers fails with L{ObjectStoreTimeout} when the L{Deferred}
        deadline passes (a L{Clock} drives it, so the test does not wait), even though botocore's
        own read timeout is much longer; no file appears.
        """
        clock = Clock()
        client = quick_s3_client(blackhole(self), read_timeout=30.0)
        store = S3ObjectStore(client, "bucket", reactor, clock=clock, call_timeout=5.0)
        target = self.local()
        d = store.get("k", target)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        failure = self.failureResultOf(d, ObjectStoreTimeout)
        self.assertEqual(str(failure.value), "get k: no answer within 5s")
        self.assertFalse(os.path.lexists(target))

    async def test_abandoned_get_never_writes(self) -> None:
        """
        A C{get} whose deadline passed before the download finished never creates the target, even
        though the object exists and the worker goes on to download it.
        """
        client, bucket = await new_bucket()
        await bounded(S3ObjectStore(client, bucket, reactor).put("k", self.local(b"data")))
        manual = ManualReactor()
        store = S3ObjectStore(client, bucket, manual, call_timeout=5.0)
        target = self.local()
        d = store.get("k", target)
        manual.advance(5.0)
        self.failureResultOf(d, ObjectStoreTimeout)
        manual.pool.run_next()()  # the worker runs now: a real GetObject, then it must stop
        self.assertFalse(os.path.lexists(target))
        self.assertEqual(os.listdir(os.path.dirname(target)), [])

    async def test_abandoned_put_stores_nothing(self) -> None:
        """
        A C{put} cancelled before its worker ran stores nothing, although the worker runs later.
        """
        client, bucket = await new_bucket()
        manual = ManualReactor()
        store = S3ObjectStore(client, bucket, manual, call_timeout=5.0)
        d = store.put("k", self.local(b"data"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        manual.pool.run_next()()
        real = S3ObjectStore(client, bucket, reactor)
        await self.assertFailure(bounded(real.get("k", self.local())), ObjectNotFound)


class AbortableReaderTests(SynchronousTestCase):
    """
    The upload body stops being readable once its call is abandoned, so botocore stops sending.
    """

    def test_reads_until_abandoned(self) -> None:
        """
        Reads, seeks and tells pass through until the call is abandoned; then a read raises
        L{Abandoned}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"0123456789")
        control: CallControl[None] = CallControl()
        with open(path, "rb") as f:
            body = _AbortableReader(f, control)
            self.assertEqual(body.read(4), b"0123")
            self.assertEqual(body.tell(), 4)
            self.assertEqual(body.seek(0, os.SEEK_END), 10)
            body.seek(2)
            control.abandon()
            self.assertRaises(Abandoned, body.read, 1)


# -------------------------------------------------------------------------------------------------
# Local directory specifics


class LocalDirSpecificTests(TestCase):
    """
    What only L{LocalDirObjectStore} has: files on disk with private modes, written atomically,
    and a directory no key can leave.
    """

    timeout = 60

    def setUp(self) -> None:
        """
        A store in a fresh directory, beside a directory standing for "outside".
        """
        base = os.path.abspath(self.mktemp())
        self.directory = os.path.join(base, "objects")
        self.outside = os.path.join(base, "outside")
        os.makedirs(self.directory)
        os.makedirs(self.outside)
        self.store = LocalDirObjectStore(self.directory, reactor)

    def local(self, data: bytes | None = None) -> str:
        """
        A fresh path in the test's directory, holding C{data} when given.
        """
        return local_file(self, data)

    def run_on(self, reactor_: ManualReactor) -> LocalDirObjectStore:
        """
        The same directory served through C{reactor_}.
        """
        return LocalDirObjectStore(self.directory, reactor_, call_timeout=5.0)

    async def test_modes(self) -> None:
        """
        Objects are files of mode 0600 and created directories have mode 0700, whatever the umask.
        """
        old = os.umask(0o000)
        self.addCleanup(os.umask, old)
        await bounded(self.store.put("codex-app-gateway/ws_a.tar.gz", self.local(b"x")))
        folder = os.path.join(self.directory, "codex-app-gateway")
        self.assertEqual(stat.S_IMODE(os.stat(folder).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(folder, "ws_a.tar.gz")).st_mode), 0o600)

    async def test_no_temporary_files_left(self) -> None:
        """
        After puts (including an overwrite) and deletes, only the objects remain.
        """
        await bounded(self.store.put("a/b", self.local(b"1")))
        await bounded(self.store.put("a/b", self.local(b"2")))
        await bounded(self.store.put("a/c", self.local(b"3")))
        await bounded(self.store.delete("a/c"))
        self.assertEqual(os.listdir(os.path.join(self.directory, "a")), ["b"])

    async def test_symlinked_component_refused(self) -> None:
        """
        A directory component planted as a symlink to the outside makes C{put}, C{get} and
        C{delete} fail with L{ObjectStoreError} (not L{ObjectNotFound}); nothing is written,
        read or deleted outside.
        """
        with open(os.path.join(self.outside, "victim"), "wb") as f:
            f.write(b"outside")
        os.symlink(self.outside, os.path.join(self.directory, "evil"))
        failure = await fails_with(self.store.put("evil/new", self.local(b"x")), ObjectStoreError)
        self.assertIn("symlink", str(failure))
        await self.assertFailure(bounded(self.store.get("evil/victim", self.local())), ObjectStoreError)
        await self.assertFailure(bounded(self.store.delete("evil/victim")), ObjectStoreError)
        self.assertEqual(os.listdir(self.outside), ["victim"])

    async def test_symlinked_object_refused(self) -> None:
        """
        A symlink at the object's own name is never followed: C{get} fails with
        L{ObjectStoreError}, C{put} replaces the link itself and leaves its target alone.
        """
        victim = os.path.join(self.outside, "victim")
        with open(victim, "wb") as f:
            f.write(b"outside")
        os.symlink(victim, os.path.join(self.directory, "obj"))
        await self.assertFailure(bounded(self.store.get("obj", self.local())), ObjectStoreError)
        await bounded(self.store.put("obj", self.local(b"mine")))
        self.assertFalse(os.path.islink(os.path.join(self.directory, "obj")))
        self.assertEqual(read(victim), b"outside")

    async def test_file_in_the_way(self) -> None:
        """
        A regular file where a directory component should be means "no such object" for C{get}
        and C{delete}, and an L{ObjectStoreError} for C{put}.
        """
        await bounded(self.store.put("a", self.local(b"x")))
        await self.assertFailure(bounded(self.store.get("a/b", self.local())), ObjectNotFound)
        await bounded(self.store.delete("a/b"))
        await self.assertFailure(bounded(self.store.put("a/b", self.local(b"y"))), ObjectStoreError)

    async def test_directory_is_not_an_object(self) -> None:
        """
        A directory at the key is "no such object" for C{get}, and C{delete} leaves it.
        """
        os.makedirs(os.path.join(self.directory, "d", "e"))
        await self.assertFailure(bounded(self.store.get("d", self.local())), ObjectNotFound)
        await bounded(self.store.delete("d"))
        self.assertTrue(os.path.isdir(os.path.join(self.directory, "d", "e")))

    async def test_store_directory_replaced_by_file(self) -> None:
        """
        A store directory that became a file is L{ObjectStoreUnavailable}, never "not found".
        """
        path = self.local(b"not a directory")
        store = LocalDirObjectStore(path, reactor)
        await self.assertFailure(bounded(store.get("k", self.local())), ObjectStoreUnavailable)

    async def test_symlinked_store_directory(self) -> None:
        """
        The configured directory itself may be a symlink (the configuration resolves none).
        """
        link = os.path.abspath(self.mktemp())
        os.symlink(self.directory, link)
        store = LocalDirObjectStore(link, reactor)
        await bounded(store.put("k", self.local(b"via link")))
        self.assertEqual(read(os.path.join(self.directory, "k")), b"via link")

    def test_abandoned_get_never_writes(self) -> None:
        """
        A C{get} whose deadline passed before its worker ran never creates the target.
        """
        manual = ManualReactor()
        with open(os.path.join(self.directory, "k"), "wb") as f:
            f.write(b"x")
        target = self.local()
        d = self.run_on(manual).get("k", target)
        manual.advance(5.0)
        self.assertIsInstance(self.failureResultOf(d, ObjectStoreTimeout).value, ObjectStoreUnavailable)
        manual.pool.run_next()()
        self.assertFalse(os.path.lexists(target))

    def test_abandoned_put_never_lands(self) -> None:
        """
        A cancelled C{put} never replaces the object, even when its worker runs afterwards, and
        leaves no temporary file.
        """
        with open(os.path.join(self.directory, "k"), "wb") as f:
            f.write(b"old")
        manual = ManualReactor()
        d = self.run_on(manual).put("k", self.local(b"new"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        manual.pool.run_next()()
        self.assertEqual(read(os.path.join(self.directory, "k")), b"old")
        self.assertEqual(os.listdir(self.directory), ["k"])

    def test_late_result_after_commit(self) -> None:
        """
        A C{put} whose file landed before the deadline passed succeeds, although its result
        reaches the reactor thread after the deadline.
        """
        manual = ManualReactor()
        d = self.run_on(manual).put("k", self.local(b"new"))
        deliver = manual.pool.run_next()
        manual.advance(5.0)
        self.assertNoResult(d)
        deliver()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(read(os.path.join(self.directory, "k")), b"new")


# -------------------------------------------------------------------------------------------------
# The fake's scripting


class MemoryObjectStoreScriptingTests(SynchronousTestCase):
    """
    The test controls of L{MemoryObjectStore}.
    """

    def local(self, data: bytes) -> str:
        """
        A fresh file holding C{data}.
        """
        return local_file(self, data)

    def test_answers_at_once(self) -> None:
        """
        Calls fire synchronously and are logged with their keys; C{objects} shows the stored bytes.
        """
        store = MemoryObjectStore()
        self.assertIsNone(self.successResultOf(store.put("k", self.local(b"x"))))
        self.assertEqual(store.objects, {"k": b"x"})
        self.successResultOf(store.delete("k"))
        self.assertEqual(store.calls, [("put", "k"), ("delete", "k")])

    def test_failure(self) -> None:
        """
        With C{failure} set every call fails with it; invalid keys still fail with L{ValueError}.
        """
        store = MemoryObjectStore()
        store.failure = ObjectStoreUnavailable("down")
        self.failureResultOf(store.delete("k"), ObjectStoreUnavailable)
        self.failureResultOf(store.delete("/k"), ValueError)

    def test_stalled(self) -> None:
        """
        Stalled calls wait until L{MemoryObjectStore.resume} runs them in order; a cancelled one
        is dropped.
        """
        store = MemoryObjectStore()
        store.stalled = True
        first = store.put("a", self.local(b"1"))
        second = store.put("b", self.local(b"2"))
        self.assertNoResult(first)
        second.cancel()
        self.failureResultOf(second, CancelledError)
        store.resume()
        self.successResultOf(first)
        self.assertEqual(store.objects, {"a": b"1"})
