"""
The object store that keeps CODEX_HOME tarballs between processes (C{app-gateway.md} §6.3).

L{IObjectStore} is what the gateway codes against: C{put}, C{get} and C{delete} of whole files under
C{/}-separated keys, each returning a L{Deferred}. Two implementations:

 - L{S3ObjectStore}: botocore (L{make_s3_client}), one C{PutObject} streaming the file, C{GetObject}
   streamed to a temporary file beside the target;
 - L{LocalDirObjectStore}: C{<dir>/<key>}, written to a temporary file and renamed (mode 0600,
   directories 0700), every key component opened with C{O_NOFOLLOW} below the store's directory.

L{codexgw.testing.memobjectstore} holds the in-memory twin; all three pass the interface tests in
C{tests.appgw.test_objectstore}.

Failures: an absent object is L{ObjectNotFound} and nothing else is — that is how a restore tells "a
new workspace" from "the store is in trouble", and confusing the two would start an empty home over
existing history. Every other failure is an L{ObjectStoreError}: L{ObjectStoreUnavailable} when the
store cannot be reached or answers 5xx, L{ObjectStoreTimeout} when the call's deadline passed. An
invalid key fails the call with L{ValueError}. No message contains a credential.

Blocking work (botocore, file copies) runs in a thread pool (the reactor's unless one is given).
Every call is bounded twice: botocore's own connect/read timeouts and retry budget, and a L{Deferred}
deadline (C{call_timeout}) after which the call fails with L{ObjectStoreTimeout}. A worker thread
cannot be interrupted, so a call past its deadline is I{abandoned} (L{codexgw.appgw.blocking}): the
worker stops at its next chunk, a C{get} or a local C{put} never renames its temporary file into
place afterwards (the rename and the deadline are decided under one lock), and an S3 upload stops
reading its file (an upload whose last byte was already sent may still land; the caller then
retries, which is harmless).

Decisions where the spec is silent:
 - S3 C{NoSuchBucket} (also a 404) is an L{ObjectStoreError}, never L{ObjectNotFound}, for C{get} and
   C{delete} alike: a mistyped bucket must fail closed instead of making every workspace start
   fresh. The credentials need C{s3:ListBucket}, or S3 answers 403 for an absent key and every new
   workspace fails to start (fail closed, by design).
 - botocore computes request checksums only when an operation requires them
   (C{request_checksum_calculation="when_required"}, same for responses): since botocore 1.36 the
   default sends CRC headers that MinIO, Ceph and other S3-compatible servers reject. Integrity is
   still checked end to end by the tarball's gzip CRC on restore.
 - The default deadline is L{DEFAULT_CALL_TIMEOUT} (300 s, enough for a 1 GiB tarball at about
   3.5 MB/s) for both implementations; a local directory on a hung network mount is bounded too.
 - A missing store directory (or one replaced by a file) is L{ObjectStoreUnavailable}, never
   L{ObjectNotFound}: the directory is created at startup, so its absence means a lost mount.
 - In a local directory, a key component that is a symlink fails the call (L{ObjectStoreError}); a
   component that is a regular file, or a directory at the key itself, means "no such object".
   C{delete} leaves empty parent directories in place (a concurrent C{put} may be using them).
 - C{get} writes its file with mode 0600 in every implementation; the target is replaced by a
   rename, so a failed or abandoned C{get} leaves an existing file untouched and creates none.
 - A key must also not contain NUL (no filesystem can name it).
 - A cancelled call fails with L{CancelledError <twisted.internet.defer.CancelledError>} (and is
   abandoned like a timed-out one), unless its result was already committed.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, Final

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from codexgw.appgw.blocking import Abandoned, CallControl, run_blocking
from codexgw.appgw.safefs import (
    CHUNK_SIZE,
    PRIVATE_FILE_MODE,
    READ_FLAGS,
    AtomicFile,
    is_symlink_at,
    open_directory_path,
)

#: A call's deadline when none is given, in seconds.
DEFAULT_CALL_TIMEOUT: Final = 300.0
#: botocore's limits (§6.3).
S3_CONNECT_TIMEOUT: Final = 5.0
S3_READ_TIMEOUT: Final = 60.0
S3_MAX_ATTEMPTS: Final = 3

#: What L{ObjectNotFound} says (§6.3).
NOT_FOUND_MESSAGE: Final = "codexhome: object not found"

_S3_UNAVAILABLE_CODES: Final = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
)


# -------------------------------------------------------------------------------------------------
# Errors and keys


class ObjectNotFound(Exception):
    """
    The key holds no object. Deliberately not an L{ObjectStoreError}: nothing but a real absence may
    ever be caught as this.

    @ivar key: the key that was asked for.
    """

    def __init__(self, key: str) -> None:
        """
        @param key: the absent key.
        """
        super().__init__(NOT_FOUND_MESSAGE)
        self.key = key


class ObjectStoreError(Exception):
    """
    An object-store call failed for any reason other than an absent object.
    """


class ObjectStoreUnavailable(ObjectStoreError):
    """
    The store could not be reached, dropped the connection, timed out or answered with a server
    error.
    """


class ObjectStoreTimeout(ObjectStoreUnavailable):
    """
    The call's L{Deferred} deadline passed before the store answered; the call was abandoned.
    """


def check_key(key: str) -> list[str]:
    """
    Split C{key} into its segments after checking it: C{/}-separated, relative, no empty, C{.} or
    C{..} segment, no NUL.

    @raise ValueError: when the key breaks a rule.
    """
    if not isinstance(key, str):
        raise ValueError(f"object key must be a string, got {type(key).__name__}")
    parts = key.split("/")
    if "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object key {key!r}")
    return parts


# -------------------------------------------------------------------------------------------------
# The interface


class IObjectStore(Interface):
    """
    A store of whole files under keys (§6.3). Every method returns a L{Deferred}, never blocks the
    reactor, and fails with L{ValueError} for an invalid key (L{check_key}).
    """

    def put(key: str, path: str) -> Deferred[None]:
        """
        Store the contents of local file C{path} under C{key}, replacing any object there.

        @raise ObjectStoreError: (as a failure) for any problem, including an unreadable C{path}.
        """

    def get(key: str, path: str) -> Deferred[None]:
        """
        Write the object C{key} into local file C{path} (mode 0600; an existing file is replaced).

        @raise ObjectNotFound: (as a failure) when C{key} holds no object; no file is created.
        @raise ObjectStoreError: (as a failure) for any other problem; C{path} is left as it was.
        """

    def delete(key: str) -> Deferred[None]:
        """
        Remove the object C{key}; an absent object is success.

        @raise ObjectStoreError: (as a failure) when the store cannot do it.
        """


class _StoreBase:
    """
    What both real stores share: thread pool, clock and deadline.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        threadpool: ThreadPool | None,
        clock: IReactorTime | None,
        call_timeout: float | None,
    ) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._clock = reactor if clock is None else clock
        self.call_timeout = call_timeout

    def _run(self, description: str, work: Callable[[CallControl[None]], None]) -> Deferred[None]:
        pool = self._threadpool or IReactorThreads(self._reactor).getThreadPool()
        timeout = self.call_timeout

        def timed_out() -> Exception:
            return ObjectStoreTimeout(f"{description}: no answer within {timeout:g}s")

        def guarded(control: CallControl[None]) -> None:
            # A call abandoned while it waited for a free thread does nothing at all.
            control.check()
            work(control)

        return run_blocking(self._reactor, pool, guarded, self._clock, timeout, timed_out)


def _open_target_directory(path: str, description: str) -> tuple[int, str]:
    directory = os.path.dirname(path) or "."
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), os.path.basename(path)
    except OSError as e:
        raise ObjectStoreError(f"{description}: cannot write {path}: {e.strerror}") from e


def _copy_to_target(
    chunks: Iterator[bytes], path: str, control: CallControl[None], description: str
) -> None:
    """
    Write C{chunks} into a temporary file beside C{path} and rename it over C{path} unless the call
    was abandoned meanwhile.
    """
    dir_fd, name = _open_target_directory(path, description)
    try:
        try:
            out = AtomicFile(dir_fd, name, PRIVATE_FILE_MODE, prefix=".get-")
        except OSError as e:
            raise ObjectStoreError(f"{description}: cannot write {path}: {e.strerror}") from e
        with out:
            try:
                for chunk in chunks:
                    control.check()
                    out.file.write(chunk)
                out.commit(control.committing(None))
            except BotoCoreError:
                # Some botocore network errors are OSErrors too; they are not local write errors.
                raise
            except OSError as e:
                raise ObjectStoreError(f"{description}: cannot write {path}: {e.strerror}") from e
    finally:
        os.close(dir_fd)


def _read_chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_SIZE):
        yield chunk


# -------------------------------------------------------------------------------------------------
# Local directory


@implementer(IObjectStore)
class LocalDirObjectStore(_StoreBase):
    """
    Objects as files C{<directory>/<key>} (C{CXG_OBJECT_DIR}): written to a temporary file in the
    same directory and renamed (atomic), files 0600, directories 0700; no key can leave the
    directory, even through a symlink planted inside it.

    @ivar directory: the store's directory (absolute; created at startup by the caller).
    """

    def __init__(
        self,
        directory: str,
        reactor: IReactorTime,
        threadpool: ThreadPool | None = None,
        clock: IReactorTime | None = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        """
        @param directory: the store's directory.
        @param reactor: the running reactor (thread hand-off; its thread pool by default).
        @param threadpool: the pool for file work; the reactor's when C{None}.
        @param clock: the clock of the deadline; C{reactor} when C{None}.
        @param call_timeout: each call's deadline in seconds; C{None} for none.
        """
        super().__init__(reactor, threadpool, clock, call_timeout)
        self.directory = directory

    def put(self, key: str, path: str) -> Deferred[None]:
        """
        See L{IObjectStore.put}.
        """
        try:
            parts = check_key(key)
        except ValueError:
            return fail()
        return self._run(f"put {key}", lambda control: self._put(key, parts, path, control))

    def get(self, key: str, path: str) -> Deferred[None]:
        """
        See L{IObjectStore.get}.
        """
        try:
            parts = check_key(key)
        except ValueError:
            return fail()
        return self._run(f"get {key}", lambda control: self._get(key, parts, path, control))

    def delete(self, key: str) -> Deferred[None]:
        """
        See L{IObjectStore.delete}.
        """
        try:
            parts = check_key(key)
        except ValueError:
            return fail()
        return self._run(f"delete {key}", lambda control: self._delete(key, parts))

    # -- in the worker thread

    def _open_root(self, description: str) -> int:
        try:
            # The configured directory itself may be a symlink (the spec resolves none); below it,
            # nothing is followed.
            return os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ObjectStoreUnavailable(
                f"{description}: object directory {self.directory}: {e.strerror}"
            ) from e

    def _open_parent(self, root_fd: int, parts: list[str], key: str, create: bool) -> int | None:
        """
        Open the directory holding the key's last segment; C{None} when it does not exist.
        """
        fd = os.dup(root_fd)
        try:
            for part in parts[:-1]:
                try:
                    child = open_directory_path(fd, [part], create)
                except OSError as e:
                    if e.errno == errno.ENOTDIR and is_symlink_at(fd, part):
                        raise ObjectStoreError(f"object key {key!r}: {part!r} is a symlink") from e
                    if not create and e.errno in (errno.ENOENT, errno.ENOTDIR):
                        os.close(fd)
                        return None
                    raise ObjectStoreError(f"object key {key!r}: {e.strerror}") from e
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _put(self, key: str, parts: list[str], path: str, control: CallControl[None]) -> None:
        description = f"put {key}"
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as e:
            raise ObjectStoreError(f"{description}: cannot read {path}: {e.strerror}") from e
        with source:
            root_fd = self._open_root(description)
            try:
                parent_fd = self._open_parent(root_fd, parts, key, create=True)
                assert parent_fd is not None
            finally:
                os.close(root_fd)
            try:
                with AtomicFile(parent_fd, parts[-1], PRIVATE_FILE_MODE, prefix=".put-") as out:
                    for chunk in _read_chunks(source):
                        control.check()
                        out.file.write(chunk)
                    out.commit(control.committing(None))
            except OSError as e:
                raise ObjectStoreError(f"{description}: {e.strerror}") from e
            finally:
                os.close(parent_fd)

    def _get(self, key: str, parts: list[str], path: str, control: CallControl[None]) -> None:
        description = f"get {key}"
        root_fd = self._open_root(description)
        try:
            parent_fd = self._open_parent(root_fd, parts, key, create=False)
        finally:
            os.close(root_fd)
        if parent_fd is None:
            raise ObjectNotFound(key)
        try:
            try:
                fd = os.open(parts[-1], READ_FLAGS, dir_fd=parent_fd)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ENOTDIR):
                    raise ObjectNotFound(key) from e
                if e.errno == errno.ELOOP:
                    raise ObjectStoreError(f"object key {key!r} is a symlink") from e
                raise ObjectStoreError(f"{description}: {e.strerror}") from e
        finally:
            os.close(parent_fd)
        try:
            kind = os.fstat(fd).st_mode
            if stat.S_ISDIR(kind):
                raise ObjectNotFound(key)
            if not stat.S_ISREG(kind):
                raise ObjectStoreError(f"object key {key!r} is not a regular file")
            source = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with source:
            try:
                _copy_to_target(_read_chunks(source), path, control, description)
            except OSError as e:
                raise ObjectStoreError(f"{description}: {e.strerror}") from e

    def _delete(self, key: str, parts: list[str]) -> None:
        description = f"delete {key}"
        root_fd = self._open_root(description)
        try:
            parent_fd = self._open_parent(root_fd, parts, key, create=False)
        finally:
            os.close(root_fd)
        if parent_fd is None:
            return
        try:
            try:
                os.unlink(parts[-1], dir_fd=parent_fd)
            except FileNotFoundError:
                return
            except OSError as e:
                # Linux says EISDIR, POSIX allows EPERM: a directory sits at the key, i.e. no object.
                if not _is_directory_at(parent_fd, parts[-1]):
                    raise ObjectStoreError(f"{description}: {e.strerror}") from e
                return
            try:
                os.fsync(parent_fd)
            except OSError as e:
                raise ObjectStoreError(f"{description}: {e.strerror}") from e
        finally:
            os.close(parent_fd)


def _is_directory_at(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


# -------------------------------------------------------------------------------------------------
# S3


def make_s3_client(
    endpoint_url: str | None,
    region: str,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    path_style: bool = False,
    connect_timeout: float = S3_CONNECT_TIMEOUT,
    read_timeout: float = S3_READ_TIMEOUT,
    max_attempts: int = S3_MAX_ATTEMPTS,
) -> Any:
    """
    Build the botocore S3 client of §6.3.

    @param endpoint_url: C{CXG_S3_ENDPOINT}; C{None} for AWS's own endpoints.
    @param region: C{CXG_S3_REGION}.
    @param access_key_id: static credentials when both keys are given; otherwise botocore's default
        credential chain.
    @param path_style: C{CXG_S3_PATH_STYLE}: path-style addressing (C{<endpoint>/<bucket>/<key>}).
    @param connect_timeout: seconds to establish a connection.
    @param read_timeout: seconds to wait for each read from the socket.
    @param max_attempts: attempts per call in botocore's standard retry mode (first try included).
    @return: the client (botocore clients are untyped: their methods are generated at runtime).
    """
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        # botocore's "max_attempts" counts retries only; "total_max_attempts" includes the first try.
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        s3={"addressing_style": "path"} if path_style else None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = botocore.session.get_session()
    return session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def _s3_error(description: str, error: Exception) -> ObjectStoreError:
    """
    Translate a botocore failure (other than an absent key) into our errors.
    """
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or code in _S3_UNAVAILABLE_CODES:
            return ObjectStoreUnavailable(f"{description}: {error}")
        return ObjectStoreError(f"{description}: {error}")
    if isinstance(error, BotoConnectionError | HTTPClientError | IncompleteReadError):
        return ObjectStoreUnavailable(f"{description}: {error}")
    return ObjectStoreError(f"{description}: {error}")


def _is_absent(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code == "NoSuchKey" or (status == 404 and code != "NoSuchBucket")


class _AbortableReader:
    """
    The upload body: a local file whose reads stop (L{Abandoned}) once the call is abandoned, so
    botocore stops sending. It can seek and tell, which botocore needs for the content length, the
    payload signature and retries.
    """

    def __init__(self, file: BinaryIO, control: CallControl[None]) -> None:
        self._file = file
        self._control = control

    def read(self, size: int = -1) -> bytes:
        self._control.check()
        return self._file.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


@implementer(IObjectStore)
class S3ObjectStore(_StoreBase):
    """
    Objects in one S3 bucket, through botocore (§6.3).

    @ivar bucket: the bucket (C{CXG_S3_BUCKET}).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        reactor: IReactorTime,
        threadpool: ThreadPool | None = None,
        clock: IReactorTime | None = None,
        call_timeout: float | None = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        """
        @param client: a botocore S3 client (L{make_s3_client}); botocore clients are thread-safe.
        @param bucket: the bucket.
        @param reactor: the running reactor (thread hand-off; its thread pool by default).
        @param threadpool: the pool for botocore calls; the reactor's when C{None}.
        @param clock: the clock of the deadline; C{reactor} when C{None}.
        @param call_timeout: each call's deadline in seconds; C{None} leaves only botocore's limits.
        """
        super().__init__(reactor, threadpool, clock, call_timeout)
        self._client = client
        self.bucket = bucket

    def put(self, key: str, path: str) -> Deferred[None]:
        """
        See L{IObjectStore.put}: one C{PutObject} streaming the file.
        """
        try:
            check_key(key)
        except ValueError:
            return fail()
        return self._run(f"put {key}", lambda control: self._put(key, path, control))

    def get(self, key: str, path: str) -> Deferred[None]:
        """
        See L{IObjectStore.get}: C{NoSuchKey}, or a 404 other than C{NoSuchBucket}, is
        L{ObjectNotFound}.
        """
        try:
            check_key(key)
        except ValueError:
            return fail()
        return self._run(f"get {key}", lambda control: self._get(key, path, control))

    def delete(self, key: str) -> Deferred[None]:
        """
        See L{IObjectStore.delete}: a 404 other than C{NoSuchBucket} is success.
        """
        try:
            check_key(key)
        except ValueError:
            return fail()
        return self._run(f"delete {key}", lambda control: self._delete(key))

    # -- in the worker thread

    def _put(self, key: str, path: str, control: CallControl[None]) -> None:
        description = f"put {key}"
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed by the with block below
        except OSError as e:
            raise ObjectStoreError(f"{description}: cannot read {path}: {e.strerror}") from e
        with source:
            try:
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=_AbortableReader(source, control)
                )
            except Abandoned:
                raise
            except (BotoCoreError, ClientError) as e:
                control.check()
                raise _s3_error(description, e) from e
            except OSError as e:
                raise ObjectStoreError(f"{description}: cannot read {path}: {e.strerror}") from e

    def _get(self, key: str, path: str, control: CallControl[None]) -> None:
        description = f"get {key}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _is_absent(e):
                raise ObjectNotFound(key) from e
            raise _s3_error(description, e) from e
        except BotoCoreError as e:
            raise _s3_error(description, e) from e
        body = response["Body"]
        try:
            _copy_to_target(body.iter_chunks(CHUNK_SIZE), path, control, description)
        except (BotoCoreError, ClientError) as e:
            raise _s3_error(description, e) from e
        finally:
            body.close()

    def _delete(self, key: str) -> None:
        description = f"delete {key}"
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if not _is_absent(e):
                raise _s3_error(description, e) from e
        except BotoCoreError as e:
            raise _s3_error(description, e) from e
