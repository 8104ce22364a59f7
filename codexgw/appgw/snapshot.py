"""
Saving a CODEX_HOME to the object store and restoring it safely (C{app-gateway.md} §6.4–§6.6).

The object is C{codex-app-gateway/<workspace_id>.tar.gz} (L{home_key}): gzip of a POSIX pax tar.

 - L{build_archive} walks the home in sorted order (never following a symlink) and streams
   directories and regular files into a staging tarball: relative names without C{./}, permission
   bits, integer mtimes, uid/gid 0, empty user/group names. Symlinks, sockets, FIFOs and devices are
   skipped; the top-level C{config.toml} and C{.tmp/} are left out.
 - L{extract_archive} is the safe extraction: names that are empty, absolute or contain C{..} are
   refused (L{UnsafeEntry}); anything but a directory or a regular file (symlinks, hard links,
   devices, FIFOs, sparse files) is refused (L{UnsupportedEntry}); an archive whose uncompressed tar
   stream exceeds the limit is refused (L{ArchiveTooLarge}); every path is created one component at
   a time below the target with C{O_NOFOLLOW}. Directories get C{mode & 0o700} (0700 when that is
   0), files C{mode & 0o600} (0600 when that is 0).
 - L{restore_into} extracts into a fresh temporary directory under C{<root>/.staging} and renames it
   over the (missing or empty) home only when everything succeeded, so a failed restore leaves the
   home exactly as it was.
 - L{restore_home} and L{snapshot_home} are the flows the supervisor calls: download, extract,
   clean up; build, upload, clean up. Not found is a fresh start (L{RestoreOutcome.FRESH}); every
   other store failure (L{RestoreDownloadError}) or extraction failure (L{RestoreError}) fails the
   restore — never silently start an empty home over existing history.

All archive work streams through files in fixed-size chunks: no file's content is held in memory
beyond one chunk (only the entry names of the archive being restored, to refuse duplicates).

Decisions where the spec is silent:
 - The size limit (C{CXG_MAX_SNAPSHOT_BYTES}, 1 GiB by default) applies to the uncompressed tar
   stream, headers included; a member whose declared size would pass it is refused before any of it
   is read, and so are pax/GNU metadata headers above 1 MiB. L{snapshot_home} never refuses to
   upload a large home (losing it would be worse); it logs a warning that restores will refuse it
   until the limit is raised.
 - A name that occurs twice (after the C{./} prefix, empty and C{.} segments are dropped) is refused
   (L{DuplicateEntry}): our writer never produces one, and "last one wins" would let an archive
   replace a file after checks on the first copy.
 - Files are created with C{O_CREAT|O_EXCL|O_NOFOLLOW} (stricter than the spec's C{O_TRUNC}: the
   extraction directory is always new and duplicates are refused).
 - Directory modes and all mtimes are applied after every entry is written (deepest first), so a
   directory whose saved mode lacks the write bit can still be filled; mtimes are restored so the
   home is as it was saved (anything that orders files by modification time sees the same order).
 - A header the tar reader cannot parse in the middle of the stream, or a stream that ends without
   the end-of-archive marker, is L{CorruptArchive} (Python's C{tarfile} would quietly treat it as the
   end of the archive); the rest of the gzip stream is read so its CRC is checked.
 - Top-level C{.config.toml.*.tmp} files (torn writes of L{codexgw.appgw.codexhome.write_config},
   holding the same tokens as C{config.toml}) are left out of snapshots too.
 - The restore target must be missing or an empty directory; anything else fails the restore
   (L{RestoreError}) before the download.
 - L{RestoreOutcome} values are the C{result} labels of C{codexgw_codex_home_transfers_total}.
 - The flows do their few small directory steps (create C{.staging}, check the home is empty) on
   the calling thread; building and extracting run in the thread pool without a deadline of their
   own (the size limit bounds them); store calls carry the store's deadline. Cancelling a flow
   abandons the thread's work; a restore already renamed into place is reported as done.
 - The home is neither removed after a successful snapshot nor after a failed restore: both are
   the supervisor's steps (§5.3, §5.5), done with L{HomeDirs.remove_home}.
 - Entry names in messages use JSON string syntax (see L{codexgw.appgw.codexhome.quote}); the
   spec's C{"<name>"} form for ordinary names.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from enum import Enum
from secrets import token_hex
from typing import Any, Final, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from codexgw.appgw.blocking import CallControl, run_blocking
from codexgw.appgw.codexhome import (
    CONFIG_FILE,
    CONFIG_TEMP_PREFIX,
    CodexHomeError,
    HomeDirs,
    check_workspace_id,
    quote,
)
from codexgw.appgw.objectstore import IObjectStore, ObjectNotFound
from codexgw.appgw.safefs import (
    CHUNK_SIZE,
    DIR_FLAGS,
    NEW_FILE_FLAGS,
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    READ_FLAGS,
    is_empty_directory,
    open_directory_path,
    remove_tree,
    write_all,
)

log = Logger(namespace="codexgw.appgw.snapshot")

#: The key prefix of CODEX_HOME objects.
HOME_KEY_PREFIX: Final = "codex-app-gateway/"
#: C{CXG_MAX_SNAPSHOT_BYTES} when unset: 1 GiB.
DEFAULT_MAX_SNAPSHOT_BYTES: Final = 1 << 30
#: The largest pax or GNU long-name header accepted on restore.
MAX_METADATA_BYTES: Final = 1 << 20
#: The top-level directory left out of snapshots (codex's scratch space).
TMP_DIR: Final = ".tmp"
#: How many skipped names L{ArchiveStats} keeps (the count is always complete).
MAX_SKIPPED_NAMES: Final = 100

_BLOCK: Final = tarfile.BLOCKSIZE
_RECORD: Final = tarfile.RECORDSIZE
_FILE_TYPES: Final = frozenset({tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE})
_METADATA_TYPES: Final = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


def home_key(workspace_id: str) -> str:
    """
    The object key of a workspace's CODEX_HOME: C{codex-app-gateway/<workspace_id>.tar.gz}.

    @raise codexgw.appgw.codexhome.InvalidWorkspaceId: for an invalid id.
    """
    return f"{HOME_KEY_PREFIX}{check_workspace_id(workspace_id)}.tar.gz"


# -------------------------------------------------------------------------------------------------
# Errors and results


class ArchiveError(Exception):
    """
    A tarball could not be built or extracted; the message starts with C{codexhome: }.
    """


class UnsafeEntry(ArchiveError):
    """
    An entry name is empty, absolute or contains a C{..} segment.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: the entry's name as stored in the archive.
        """
        super().__init__(f"codexhome: unsafe tar entry {quote(name)}")
        self.name = name


class UnsupportedEntry(ArchiveError):
    """
    An entry is neither a directory nor a regular file.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: the entry's name as stored in the archive.
        """
        super().__init__(f"codexhome: unsupported tar entry {quote(name)}")
        self.name = name


class DuplicateEntry(ArchiveError):
    """
    Two entries name the same path.
    """

    def __init__(self, name: str) -> None:
        """
        @param name: the second entry's name as stored in the archive.
        """
        super().__init__(f"codexhome: duplicate tar entry {quote(name)}")
        self.name = name


class ArchiveTooLarge(ArchiveError):
    """
    The uncompressed archive is larger than the configured maximum.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the maximum in bytes.
        """
        super().__init__(f"codexhome: archive larger than {limit} bytes uncompressed")
        self.limit = limit


class CorruptArchive(ArchiveError):
    """
    The archive is not a complete, well-formed gzip-compressed tar stream.
    """


class RestoreFailed(Exception):
    """
    L{restore_home} failed; the home was left as it was.

    @ivar cause: the underlying error.
    """

    prefix = "restore"

    def __init__(self, cause: BaseException) -> None:
        """
        @param cause: the underlying error.
        """
        super().__init__(f"{self.prefix}: {cause}")
        self.cause = cause


class RestoreDownloadError(RestoreFailed):
    """
    The store failed for a reason other than an absent object: C{object store download: <err>}.
    """

    prefix = "object store download"


class RestoreError(RestoreFailed):
    """
    The downloaded archive could not be extracted (or the home was not empty): C{restore: <err>}.
    """

    prefix = "restore"


class SnapshotFailed(Exception):
    """
    L{snapshot_home} failed; the home was not changed.

    @ivar cause: the underlying error.
    """

    prefix = "snapshot"

    def __init__(self, cause: BaseException) -> None:
        """
        @param cause: the underlying error.
        """
        super().__init__(f"{self.prefix}: {cause}")
        self.cause = cause


class SnapshotError(SnapshotFailed):
    """
    The tarball could not be built: C{snapshot: <err>}.
    """

    prefix = "snapshot"


class SnapshotUploadError(SnapshotFailed):
    """
    The store refused or failed the upload: C{object store upload: <err>}.
    """

    prefix = "object store upload"


class RestoreOutcome(Enum):
    """
    How a successful L{restore_home} ended.
    """

    #: The object existed and was extracted into the home.
    RESTORED = "ok"
    #: There was no object: the home is a fresh, empty directory.
    FRESH = "not_found"


@dataclass(frozen=True)
class ArchiveStats:
    """
    What an archive held.

    @ivar directories: directory entries.
    @ivar files: regular-file entries.
    @ivar file_bytes: bytes of file content.
    @ivar archive_bytes: bytes of the uncompressed tar stream (what the size limit measures).
    @ivar skipped: names of entries left out of a snapshot (at most L{MAX_SKIPPED_NAMES}).
    @ivar skipped_count: how many entries were left out.
    """

    directories: int
    files: int
    file_bytes: int
    archive_bytes: int
    skipped: tuple[str, ...] = ()
    skipped_count: int = 0


# -------------------------------------------------------------------------------------------------
# Building


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _TarWriter:
    """
    Writes tar records to a binary stream (the gzip stream), counting the bytes.
    """

    def __init__(self, out: _Writable) -> None:
        self._out = out
        self.written = 0

    def _write(self, data: bytes) -> None:
        self._out.write(data)
        self.written += len(data)

    def _header(self, name: str, kind: bytes, info: os.stat_result, size: int) -> None:
        entry = tarfile.TarInfo(name)
        entry.type = kind
        entry.mode = stat.S_IMODE(info.st_mode) & 0o777
        entry.mtime = int(info.st_mtime)
        entry.size = size
        entry.uid = entry.gid = 0
        entry.uname = entry.gname = ""
        self._write(entry.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def add_directory(self, name: str, info: os.stat_result) -> None:
        """
        Write a directory entry.
        """
        self._header(name, tarfile.DIRTYPE, info, 0)

    def add_file(self, name: str, info: os.stat_result, fd: int, control: CallControl[Any]) -> int:
        """
        Write a regular-file entry with exactly C{info.st_size} bytes read from C{fd}.

        @raise ArchiveError: when the file is shorter than its size said (it changed meanwhile).
        @return: the number of content bytes.
        """
        size = info.st_size
        self._header(name, tarfile.REGTYPE, info, size)
        remaining = size
        while remaining:
            control.check()
            chunk = os.read(fd, min(CHUNK_SIZE, remaining))
            if not chunk:
                raise ArchiveError(f"codexhome: {quote(name)} changed while archiving")
            self._write(chunk)
            remaining -= len(chunk)
        if size % _BLOCK:
            self._write(bytes(_BLOCK - size % _BLOCK))
        return size

    def finish(self) -> None:
        """
        Write the end-of-archive marker (two zero blocks) and pad to a whole record, as tar does.
        """
        self._write(bytes(2 * _BLOCK))
        if self.written % _RECORD:
            self._write(bytes(_RECORD - self.written % _RECORD))


def _excluded_at_top(name: str) -> bool:
    return name in (CONFIG_FILE, TMP_DIR) or (
        name.startswith(CONFIG_TEMP_PREFIX) and name.endswith(".tmp")
    )


class _Walk:
    """
    The state of one snapshot walk.
    """

    def __init__(self, writer: _TarWriter, control: CallControl[Any]) -> None:
        self.writer = writer
        self.control = control
        self.directories = 0
        self.files = 0
        self.file_bytes = 0
        self.skipped: list[str] = []
        self.skipped_count = 0

    def skip(self, name: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED_NAMES:
            self.skipped.append(name)

    def directory(self, root_fd: int) -> None:
        """
        Archive everything below C{root_fd}: depth first, each directory's names sorted, a
        directory's entry before its contents.
        """
        stack: list[tuple[int, tuple[str, ...], Iterator[str]]] = []
        stack.append((os.dup(root_fd), (), iter(sorted(os.listdir(root_fd)))))
        try:
            while stack:
                dir_fd, prefix, names = stack[-1]
                name = next(names, None)
                if name is None:
                    stack.pop()
                    os.close(dir_fd)
                    continue
                self.control.check()
                if not prefix and _excluded_at_top(name):
                    continue
                child = self.entry(dir_fd, (*prefix, name))
                if child is not None:
                    stack.append(child)
        finally:
            for dir_fd, _, _ in stack:
                os.close(dir_fd)

    def entry(
        self, dir_fd: int, path: tuple[str, ...]
    ) -> tuple[int, tuple[str, ...], Iterator[str]] | None:
        """
        Archive one entry; return the stack frame to descend into when it is a directory.
        """
        name = path[-1]
        arcname = "/".join(path)
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            try:
                if not os.path.samestat(info, os.fstat(fd)):
                    raise ArchiveError(f"codexhome: {quote(arcname)} changed while archiving")
                self.writer.add_directory(arcname, info)
                self.directories += 1
                return fd, path, iter(sorted(os.listdir(fd)))
            except BaseException:
                os.close(fd)
                raise
        if stat.S_ISREG(info.st_mode):
            fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
            try:
                opened = os.fstat(fd)
                if not os.path.samestat(info, opened) or not stat.S_ISREG(opened.st_mode):
                    raise ArchiveError(f"codexhome: {quote(arcname)} changed while archiving")
                self.file_bytes += self.writer.add_file(arcname, opened, fd, self.control)
                self.files += 1
            finally:
                os.close(fd)
            return None
        self.skip(arcname)
        return None


def build_archive(home: str, archive_path: str, control: CallControl[Any] | None = None) -> ArchiveStats:
    """
    Write the snapshot tarball of C{home} to the new file C{archive_path} (mode 0600), streaming.

    @param control: lets a caller abandon the build (it then stops at the next chunk or entry).
    @raise OSError: when C{home} is missing, is a symlink, or cannot be read.
    @raise ArchiveError: when a file changed during the walk.
    """
    control = CallControl() if control is None else control
    root_fd = os.open(home, DIR_FLAGS)
    try:
        out_fd = os.open(archive_path, NEW_FILE_FLAGS, PRIVATE_FILE_MODE)
        try:
            # No name and a zero timestamp in the gzip header: identical trees give identical bytes.
            with (
                os.fdopen(out_fd, "wb") as raw,
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
            ):
                writer = _TarWriter(gz)
                walk = _Walk(writer, control)
                walk.directory(root_fd)
                writer.finish()
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(archive_path)
            raise
    finally:
        os.close(root_fd)
    return ArchiveStats(
        directories=walk.directories,
        files=walk.files,
        file_bytes=walk.file_bytes,
        archive_bytes=writer.written,
        skipped=tuple(walk.skipped),
        skipped_count=walk.skipped_count,
    )


# -------------------------------------------------------------------------------------------------
# Extracting


def entry_parts(name: str) -> tuple[str, ...]:
    """
    The path segments of a tar entry name, after the §6.5 checks: a leading C{./} is stripped; an
    empty name, an absolute one, one containing a C{..} segment or a NUL is refused; empty and C{.}
    segments are dropped (and a name left without segments is refused).

    @raise UnsafeEntry: when the name breaks a rule.
    """
    stripped = name[2:] if name.startswith("./") else name
    if not stripped or stripped.startswith("/") or "\0" in stripped:
        raise UnsafeEntry(name)
    segments = stripped.split("/")
    if ".." in segments:
        raise UnsafeEntry(name)
    parts = tuple(segment for segment in segments if segment not in ("", "."))
    if not parts:
        raise UnsafeEntry(name)
    return parts


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


class _LimitedReader:
    """
    The decompressed tar stream, counted: reading past C{limit} bytes raises L{ArchiveTooLarge}.
    Read-only; the other methods exist for C{tarfile}'s file-object protocol.
    """

    def __init__(self, source: _Readable, limit: int) -> None:
        self._source = source
        self._limit = limit
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > CHUNK_SIZE:
            # Never inflate more than one chunk in one go, whatever the caller asks.
            size = CHUNK_SIZE
        data = self._source.read(size)
        self.count += len(data)
        if self.count > self._limit:
            raise ArchiveTooLarge(self._limit)
        return data

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def tell(self) -> int:
        return self.count

    def seek(self, position: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def close(self) -> None:
        """
        Nothing to release: the underlying gzip file is closed by its owner.
        """


# Present in every CPython since 3.2, absent from typeshed's stubs.
_END_OF_ARCHIVE: Final[type[Exception]] = tarfile.EOFHeaderError  # type: ignore[attr-defined]


class _CheckedTarInfo(tarfile.TarInfo):
    """
    Header parsing for restores: metadata headers are bounded, and a malformed or missing header is
    an error instead of a silent end of the archive (C{tarfile} stops quietly at a bad header past
    the first one).
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _CheckedTarInfo:
        if not buf:
            raise CorruptArchive("codexhome: corrupt archive: missing end-of-archive marker")
        info = super().frombuf(buf, encoding, errors)
        if info.type in _METADATA_TYPES and info.size > MAX_METADATA_BYTES:
            raise CorruptArchive(f"codexhome: corrupt archive: {info.size}-byte metadata header")
        return info

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _CheckedTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except _END_OF_ARCHIVE:
            # An all-zero block: the end-of-archive marker, which tarfile handles.
            raise
        except tarfile.HeaderError as e:
            raise CorruptArchive(f"codexhome: corrupt archive: {e}") from e


def _set_mtime(fd: int, mtime: float) -> None:
    # A hostile or odd mtime must not fail the restore: the content matters, the time does not.
    with suppress(OverflowError, ValueError):
        os.utime(fd, (mtime, mtime))


class _Extraction:
    """
    The state of one extraction into a directory.
    """

    def __init__(self, target_fd: int, limit: int, control: CallControl[Any]) -> None:
        self.target_fd = target_fd
        self.limit = limit
        self.control = control
        self.seen: set[tuple[str, ...]] = set()
        self.directory_entries: list[tuple[tuple[str, ...], int, float]] = []
        self.declared = 0
        self.files = 0
        self.file_bytes = 0

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """
        Check and write one entry.
        """
        parts = entry_parts(member.name)
        is_file = member.type in _FILE_TYPES and not member.issparse()
        if not is_file and not member.isdir():
            raise UnsupportedEntry(member.name)
        if parts in self.seen:
            raise DuplicateEntry(member.name)
        self.seen.add(parts)
        try:
            if is_file:
                self.file(tar, member, parts)
            else:
                fd = open_directory_path(self.target_fd, parts, create=True)
                os.close(fd)
                self.directory_entries.append((parts, member.mode, member.mtime))
        except OSError as e:
            raise ArchiveError(f"codexhome: cannot extract {quote(member.name)}: {e.strerror}") from e

    def file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        """
        Write one regular file: parents created 0700, the file created new without following a
        symlink, its content, then its mode and mtime.
        """
        self.declared += member.size
        if self.declared > self.limit:
            raise ArchiveTooLarge(self.limit)
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has a data stream
        parent_fd = open_directory_path(self.target_fd, parts[:-1], create=True)
        try:
            fd = os.open(parts[-1], NEW_FILE_FLAGS, PRIVATE_FILE_MODE, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
        try:
            remaining = member.size
            while remaining:
                self.control.check()
                chunk = source.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise CorruptArchive("codexhome: corrupt archive: unexpected end of data")
                write_all(fd, chunk)
                remaining -= len(chunk)
            os.fchmod(fd, (member.mode & PRIVATE_FILE_MODE) or PRIVATE_FILE_MODE)
            _set_mtime(fd, member.mtime)
        finally:
            os.close(fd)
        self.files += 1
        self.file_bytes += member.size

    def finish_directories(self) -> None:
        """
        Apply directory modes and mtimes, deepest first (so no parent is closed off before its
        children are done).
        """
        for parts, mode, mtime in sorted(self.directory_entries, key=lambda e: -len(e[0])):
            fd = open_directory_path(self.target_fd, parts)
            try:
                os.fchmod(fd, (mode & PRIVATE_DIR_MODE) or PRIVATE_DIR_MODE)
                _set_mtime(fd, mtime)
            finally:
                os.close(fd)


def extract_archive(
    archive_path: str,
    target: str,
    max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    control: CallControl[Any] | None = None,
) -> ArchiveStats:
    """
    Extract the snapshot tarball C{archive_path} into the existing directory C{target} with the
    §6.5 rules (see the module docstring). On failure C{target} may hold part of the archive — but
    nothing was ever written outside it; L{restore_into} extracts into a directory it throws away.

    @param max_bytes: the largest uncompressed tar stream accepted.
    @param control: lets a caller abandon the extraction (it then stops at the next chunk).
    @raise ArchiveError: L{UnsafeEntry}, L{UnsupportedEntry}, L{DuplicateEntry},
        L{ArchiveTooLarge}, L{CorruptArchive}, or a write failure.
    @raise OSError: when C{archive_path} or C{target} cannot be opened.
    """
    control = CallControl() if control is None else control
    target_fd = os.open(target, DIR_FLAGS)
    try:
        with open(archive_path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as compressed:
            stream = _LimitedReader(compressed, max_bytes)
            extraction = _Extraction(target_fd, max_bytes, control)
            try:
                with tarfile.open(
                    fileobj=stream,
                    mode="r|",
                    tarinfo=_CheckedTarInfo,
                    encoding="utf-8",
                    errors="surrogateescape",
                ) as tar:
                    while (member := tar.next()) is not None:
                        # Stream mode never needs earlier members again; dropping them keeps memory
                        # flat however many entries the archive has. (The list is an undocumented
                        # attribute of every CPython tarfile, missing from typeshed.)
                        tar.members.clear()  # type: ignore[attr-defined]
                        control.check()
                        extraction.member(tar, member)
                # Read what follows the end-of-archive marker so the gzip CRC and length are checked.
                while stream.read(CHUNK_SIZE):
                    control.check()
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise CorruptArchive(f"codexhome: corrupt archive: {e}") from e
            extraction.finish_directories()
    finally:
        os.close(target_fd)
    return ArchiveStats(
        directories=len(extraction.directory_entries),
        files=extraction.files,
        file_bytes=extraction.file_bytes,
        archive_bytes=stream.count,
    )


def restore_into(
    archive_path: str,
    home: str,
    staging_dir: str,
    max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    control: CallControl[Any] | None = None,
) -> ArchiveStats:
    """
    Extract C{archive_path} into a new temporary directory in C{staging_dir} (same filesystem as
    C{home}) and rename it to C{home} only once everything succeeded. C{home} must be missing or an
    empty directory; it ends as a directory with mode 0700.

    @raise ArchiveError: see L{extract_archive}; C{home} is untouched and the temporary directory
        is gone.
    @raise CodexHomeError: when C{home} is neither missing nor an empty directory.
    """
    control = CallControl() if control is None else control
    _check_restorable(home)
    temporary = tempfile.mkdtemp(prefix=os.path.basename(home) + "-", suffix=".d", dir=staging_dir)
    try:
        os.chmod(temporary, PRIVATE_DIR_MODE)
        stats = extract_archive(archive_path, temporary, max_bytes, control)
        with control.committing(stats):
            # rename(2) replaces an empty directory atomically and refuses a non-empty one.
            os.rename(temporary, home)
    except BaseException:
        with suppress(OSError):
            remove_tree(temporary)
        raise
    return stats


def _check_restorable(home: str) -> None:
    try:
        empty = is_empty_directory(home)
    except NotADirectoryError as e:
        raise CodexHomeError(f"codexhome: {home} is not a directory") from e
    if empty is False:
        raise CodexHomeError(f"codexhome: refusing to restore into non-empty {home}")


# -------------------------------------------------------------------------------------------------
# The flows


def _threadpool(reactor: IReactorTime, threadpool: ThreadPool | None) -> ThreadPool:
    return threadpool if threadpool is not None else IReactorThreads(reactor).getThreadPool()


def _staging_file(staging_dir: str, workspace_id: str) -> str:
    return os.path.join(staging_dir, f"{workspace_id}-{token_hex(8)}.tar.gz")


def _unlink_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def restore_home(
    store: IObjectStore,
    homes: HomeDirs,
    workspace_id: str,
    reactor: IReactorTime,
    max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    threadpool: ThreadPool | None = None,
) -> Deferred[RestoreOutcome]:
    """
    Restore the workspace's CODEX_HOME from C{store} into C{homes.path_for(workspace_id)}, which
    must be missing or an empty directory (§5.3 step 5, §6.5).

    The object is downloaded to C{<root>/.staging/<ws>-<random>.tar.gz}, extracted beside the home
    and renamed into place; the staging file is always removed.

    @param reactor: the running reactor; extraction runs in C{threadpool} (the reactor's when
        C{None}).
    @param max_bytes: the largest uncompressed archive accepted (C{CXG_MAX_SNAPSHOT_BYTES}).
    @return: a L{Deferred} firing with L{RestoreOutcome.RESTORED}, or L{RestoreOutcome.FRESH} when
        the store has no object (the home is then an empty 0700 directory). It fails with
        L{RestoreDownloadError} for any other store failure and with L{RestoreError} when the
        archive is refused or the home is not restorable; in both cases the home was not touched.
        An invalid workspace id fails it with L{InvalidWorkspaceId
        <codexgw.appgw.codexhome.InvalidWorkspaceId>}.
    """

    async def restore() -> RestoreOutcome:
        home = homes.path_for(workspace_id)
        key = home_key(workspace_id)
        try:
            _check_restorable(home)
            staging_dir = homes.staging_path()
        except Exception as e:
            raise RestoreError(e) from e
        archive = _staging_file(staging_dir, workspace_id)
        try:
            await store.get(key, archive)
        except ObjectNotFound:
            _unlink_quietly(archive)
            try:
                homes.home_path(workspace_id)
            except Exception as e:
                raise RestoreError(e) from e
            return RestoreOutcome.FRESH
        except CancelledError:
            _unlink_quietly(archive)
            raise
        except Exception as e:
            _unlink_quietly(archive)
            raise RestoreDownloadError(e) from e
        try:
            await run_blocking(
                reactor,
                _threadpool(reactor, threadpool),
                lambda control: restore_into(archive, home, staging_dir, max_bytes, control),
            )
        except CancelledError:
            raise
        except Exception as e:
            raise RestoreError(e) from e
        finally:
            _unlink_quietly(archive)
        return RestoreOutcome.RESTORED

    return Deferred.fromCoroutine(restore())


def snapshot_home(
    store: IObjectStore,
    homes: HomeDirs,
    workspace_id: str,
    reactor: IReactorTime,
    max_bytes: int = DEFAULT_MAX_SNAPSHOT_BYTES,
    threadpool: ThreadPool | None = None,
) -> Deferred[ArchiveStats]:
    """
    Save the workspace's CODEX_HOME to C{store} as L{home_key} (§6.4): build
    C{<root>/.staging/<ws>-<random>.tar.gz} in C{threadpool}, C{put} it, delete it. The home is
    neither changed nor removed (removing it after success is the supervisor's step).

    @param max_bytes: C{CXG_MAX_SNAPSHOT_BYTES}; a larger archive is still uploaded, with a warning.
    @return: a L{Deferred} firing with the archive's L{ArchiveStats}, or failing with
        L{SnapshotError} (the home could not be archived) or L{SnapshotUploadError} (the store
        failed); the staging file is removed either way.
    """

    async def snapshot() -> ArchiveStats:
        home = homes.path_for(workspace_id)
        key = home_key(workspace_id)
        try:
            staging_dir = homes.staging_path()
        except Exception as e:
            raise SnapshotError(e) from e
        archive = _staging_file(staging_dir, workspace_id)
        try:
            try:
                stats = await run_blocking(
                    reactor,
                    _threadpool(reactor, threadpool),
                    lambda control: build_archive(home, archive, control),
                )
            except CancelledError:
                raise
            except Exception as e:
                raise SnapshotError(e) from e
            for name in stats.skipped:
                log.debug(
                    "CODEX_HOME snapshot skipped {name}: not a regular file or directory",
                    name=name,
                    workspace_id=workspace_id,
                )
            try:
                await store.put(key, archive)
            except CancelledError:
                raise
            except Exception as e:
                raise SnapshotUploadError(e) from e
        finally:
            _unlink_quietly(archive)
        if stats.archive_bytes > max_bytes:
            log.warn(
                "CODEX_HOME snapshot of {archive_bytes} bytes exceeds CXG_MAX_SNAPSHOT_BYTES="
                "{max_bytes}; restores will refuse it until the limit is raised",
                archive_bytes=stats.archive_bytes,
                max_bytes=max_bytes,
                workspace_id=workspace_id,
            )
        return stats

    return Deferred.fromCoroutine(snapshot())
