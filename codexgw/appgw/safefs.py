"""
Filesystem primitives of the app gateway: directories walked without following symlinks, private
(0700/0600) creation that ignores the umask, and atomic file replacement.

CODEX_HOME trees, object-store directories and staging files all live under directories this process
owns, but their contents come from elsewhere (a restored tarball, the codex process, an operator).
Every path below a trusted directory is therefore opened one component at a time relative to its
parent's file descriptor with C{O_NOFOLLOW}, so a symlink planted anywhere in the tree makes the
operation fail instead of reaching outside. Files are written to a temporary name in the same
directory and renamed over the target, so a reader never sees half a file and a crash leaves the old
one in place.

Decisions where the spec is silent:
 - Modes are set with C{fchmod} after creation, so the process umask never weakens or strengthens
   them; directories that already exist keep their mode (L{make_private_dirs}).
 - L{AtomicFile} fsyncs the file before the rename and the directory after it: losing a saved
   CODEX_HOME to a power cut after reporting success would be the worst failure of the product.
 - L{remove_tree} makes directories writable (0700) when a permission error stops the removal: a
   restored home may hold a directory whose mode lacks the write bit (modes are kept, §6.5), and a
   tree we own must never become impossible to delete.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext, suppress
from types import TracebackType
from typing import Any, BinaryIO, Final

#: Bytes moved per read/write when copying file contents.
CHUNK_SIZE: Final = 1 << 20

#: Flags for opening a directory without following a symlink in its last component.
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags for creating a new private file that must not exist yet (and is never a symlink).
NEW_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Flags for reading a regular file that must not be a symlink (and must not block on a FIFO).
READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_FILE_MODE: Final = 0o600


def make_private_dirs(path: str) -> None:
    """
    Create directory C{path} and each missing parent with mode 0700 exactly; existing directories
    are left as they are.

    @raise OSError: when a component exists and is not a directory, or creation fails.
    """
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            # Someone else created it in the meantime (or it is a file: isdir below decides).
            if not os.path.isdir(directory):
                raise
            continue
        os.chmod(directory, PRIVATE_DIR_MODE)


def open_child_directory(parent_fd: int, name: str, create: bool = False) -> int:
    """
    Open directory C{name} inside C{parent_fd} without following a symlink; optionally create it
    (mode 0700) first.

    @return: a new file descriptor, which the caller closes.
    @raise OSError: C{ELOOP}/C{ENOTDIR} when C{name} is a symlink or not a directory, C{ENOENT} when
        it is missing and C{create} is false.
    """
    created = False
    if create:
        try:
            os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            pass
    fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    if created:
        try:
            os.fchmod(fd, PRIVATE_DIR_MODE)
            # Make the new entry durable, or a file committed into it later could vanish on a crash.
            os.fsync(parent_fd)
        except BaseException:
            os.close(fd)
            raise
    return fd


def is_symlink_at(parent_fd: int, name: str) -> bool:
    """
    Whether C{name} inside C{parent_fd} is a symlink (C{O_DIRECTORY|O_NOFOLLOW} reports a symlink
    and a file alike as C{ENOTDIR}; this tells them apart).
    """
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_directory_path(root_fd: int, parts: Sequence[str], create: bool = False) -> int:
    """
    Open the directory C{root/parts[0]/…/parts[-1]} one component at a time, never following a
    symlink; C{parts} may be empty (a new descriptor of the root itself).

    @param create: create missing components with mode 0700.
    @return: a new file descriptor, which the caller closes.
    """
    fd = os.dup(root_fd)
    try:
        for part in parts:
            child = open_child_directory(fd, part, create)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes) -> None:
    """
    Write all of C{data} to C{fd} (C{os.write} may write less than asked).
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def temporary_name(prefix: str) -> str:
    """
    A fresh name for a temporary file: C{<prefix><16 hex digits>.tmp}.
    """
    return f"{prefix}{secrets.token_hex(8)}.tmp"


class AtomicFile:
    """
    A new file that replaces C{name} in a directory only when committed.

    The data goes to a temporary file (mode C{mode}, created with C{O_EXCL|O_NOFOLLOW}) in the same
    directory; L{commit} fsyncs it and renames it over C{name}, then fsyncs the directory. Leaving
    the C{with} block without committing removes the temporary file.

    @ivar file: the temporary file, open for binary writing.
    """

    def __init__(
        self, dir_fd: int, name: str, mode: int = PRIVATE_FILE_MODE, prefix: str = ".tmp-"
    ) -> None:
        """
        @param dir_fd: the directory (kept open by the caller until the file is committed or
            discarded).
        @param name: the final name inside the directory.
        @param mode: the file's permission bits, applied exactly.
        @param prefix: the start of the temporary name (see L{temporary_name}).
        """
        self._dir_fd = dir_fd
        self._name = name
        self._temporary = temporary_name(prefix)
        self._done = False
        fd = os.open(self._temporary, NEW_FILE_FLAGS, mode, dir_fd=dir_fd)
        try:
            os.fchmod(fd, mode)
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            os.unlink(self._temporary, dir_fd=dir_fd)
            raise

    def commit(self, guard: AbstractContextManager[object] | None = None) -> None:
        """
        Flush and fsync the data, rename it over the final name and fsync the directory.

        @param guard: entered around the rename alone; if entering it raises, the file is not
            renamed (and is discarded when the C{with} block ends). Used so that a call whose
            deadline passed can never replace the target afterwards.
        """
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        with guard if guard is not None else nullcontext():
            os.replace(self._temporary, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._done = True
        os.fsync(self._dir_fd)

    def discard(self) -> None:
        """
        Close and remove the temporary file (a no-op after L{commit} or a previous discard).
        """
        if self._done:
            return
        self._done = True
        self.file.close()
        with suppress(FileNotFoundError):
            os.unlink(self._temporary, dir_fd=self._dir_fd)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def write_file_atomically(
    directory: str, name: str, data: bytes, mode: int = PRIVATE_FILE_MODE, prefix: str = ".tmp-"
) -> None:
    """
    Replace C{directory/name} with C{data} atomically (L{AtomicFile}); C{directory} itself must not
    be a symlink.
    """
    dir_fd = os.open(directory, DIR_FLAGS)
    try:
        with AtomicFile(dir_fd, name, mode, prefix) as out:
            out.file.write(data)
            out.commit()
    finally:
        os.close(dir_fd)


def is_empty_directory(path: str) -> bool | None:
    """
    Tell whether C{path} is an empty directory: C{True}, C{False} when it is a non-empty directory,
    C{None} when nothing exists there.

    @raise NotADirectoryError: when C{path} is a symlink or anything but a directory.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    fd = os.open(path, DIR_FLAGS)
    try:
        return not os.listdir(fd)
    finally:
        os.close(fd)


def _retry_writable(function: Callable[..., Any], path: str, error: BaseException) -> None:
    if not isinstance(error, PermissionError):
        raise error
    if function is os.rmdir or function is os.unlink:
        # The entry sits in a directory (ours) whose mode lacks write or search permission.
        os.chmod(os.path.dirname(path), PRIVATE_DIR_MODE)
        if stat.S_ISDIR(os.lstat(path).st_mode):
            _rmtree(path)
        else:
            os.unlink(path)
    else:
        # Opening or listing the directory itself failed: its own mode lacks read or search.
        os.chmod(path, PRIVATE_DIR_MODE)
        _rmtree(path)


def _rmtree(path: str) -> None:
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=_retry_writable)
    else:
        shutil.rmtree(path, onerror=lambda f, p, info: _retry_writable(f, p, info[1]))


def remove_tree(path: str) -> None:
    """
    Remove the directory tree C{path} (a no-op when it does not exist), never following a symlink
    inside it; a symlink at C{path} itself is refused.

    @raise OSError: when C{path} is a symlink or the removal fails.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    # Our own tree: give its top directory search/write permission before descending.
    if stat.S_IMODE(info.st_mode) & PRIVATE_DIR_MODE != PRIVATE_DIR_MODE:
        os.chmod(path, PRIVATE_DIR_MODE)
    _rmtree(path)
