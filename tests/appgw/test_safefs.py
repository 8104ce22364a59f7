"""
Tests for L{codexgw.appgw.safefs}: private directory creation, symlink-free walks, atomic files and
tree removal, on trial's temporary directory.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from codexgw.appgw.safefs import (
    AtomicFile,
    is_empty_directory,
    is_symlink_at,
    make_private_dirs,
    open_directory_path,
    remove_tree,
    write_file_atomically,
)

#: A mode the tests give an existing directory on purpose.
LOOSE_MODE = 0o750


def mode_of(path: str) -> int:
    """
    The permission bits of C{path} (symlinks not followed).
    """
    return stat.S_IMODE(os.lstat(path).st_mode)


class Refused(Exception):
    """
    Raised by a test guard to refuse a commit.
    """


class SafeFsTests(SynchronousTestCase):
    """
    The primitives behave as documented.
    """

    def setUp(self) -> None:
        """
        A fresh base directory and an "outside" directory beside it.
        """
        self.base = os.path.abspath(self.mktemp())
        os.makedirs(self.base)
        self.outside = os.path.abspath(self.mktemp())
        os.makedirs(self.outside)

    def test_make_private_dirs(self) -> None:
        """
        Missing levels are created 0700 whatever the umask; an existing level keeps its mode.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        os.chmod(self.base, LOOSE_MODE)
        target = os.path.join(self.base, "a", "b")
        make_private_dirs(target)
        make_private_dirs(target)
        self.assertEqual(mode_of(os.path.join(self.base, "a")), 0o700)
        self.assertEqual(mode_of(target), 0o700)
        self.assertEqual(mode_of(self.base), LOOSE_MODE)

    def test_make_private_dirs_file_in_the_way(self) -> None:
        """
        A file where a directory should be is an error.
        """
        with open(os.path.join(self.base, "f"), "w"):
            pass
        self.assertRaises(OSError, make_private_dirs, os.path.join(self.base, "f", "x"))

    def test_open_directory_path(self) -> None:
        """
        Components are created 0700 on request, opened otherwise, and a symlinked component fails
        (C{ENOTDIR}) without creating anything behind it.
        """
        root_fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, root_fd)
        os.close(open_directory_path(root_fd, ["x", "y"], create=True))
        self.assertEqual(mode_of(os.path.join(self.base, "x", "y")), 0o700)
        os.close(open_directory_path(root_fd, ["x", "y"]))
        os.close(open_directory_path(root_fd, []))
        self.assertRaises(FileNotFoundError, open_directory_path, root_fd, ["nope"])
        os.symlink(self.outside, os.path.join(self.base, "link"))
        self.assertRaises(NotADirectoryError, open_directory_path, root_fd, ["link", "z"], True)
        self.assertTrue(is_symlink_at(root_fd, "link"))
        self.assertFalse(is_symlink_at(root_fd, "x"))
        self.assertFalse(is_symlink_at(root_fd, "missing"))
        self.assertEqual(os.listdir(self.outside), [])

    @contextmanager
    def directory_fd(self) -> Iterator[int]:
        """
        An open descriptor of the base directory.
        """
        fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield fd
        finally:
            os.close(fd)

    def test_atomic_file_commit(self) -> None:
        """
        Until committed the target keeps its old content; after, it holds the new one with the
        requested mode and no temporary file remains.
        """
        target = os.path.join(self.base, "t")
        with open(target, "wb") as f:
            f.write(b"old")
        with self.directory_fd() as fd, AtomicFile(fd, "t", 0o640) as out:
            out.file.write(b"new")
            with open(target, "rb") as f:
                self.assertEqual(f.read(), b"old")
            out.commit()
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(mode_of(target), 0o640)
        self.assertEqual(os.listdir(self.base), ["t"])

    def test_atomic_file_discard(self) -> None:
        """
        Leaving the block without committing (or with an exception) removes the temporary file and
        leaves the target alone.
        """
        with self.directory_fd() as fd:
            with AtomicFile(fd, "t") as out:
                out.file.write(b"abandoned")
            self.assertEqual(os.listdir(self.base), [])

            def fail_inside() -> None:
                with AtomicFile(fd, "t") as out:
                    out.file.write(b"x")
                    raise Refused()

            self.assertRaises(Refused, fail_inside)
        self.assertEqual(os.listdir(self.base), [])

    def test_atomic_file_guard(self) -> None:
        """
        A guard that refuses to be entered prevents the rename; the temporary file is discarded.
        """

        class Refuse:
            def __enter__(self) -> None:
                raise Refused()

            def __exit__(self, *exc_info: object) -> None:
                pass

        with self.directory_fd() as fd:

            def commit_refused() -> None:
                with AtomicFile(fd, "t") as out:
                    out.file.write(b"x")
                    out.commit(Refuse())

            self.assertRaises(Refused, commit_refused)
        self.assertEqual(os.listdir(self.base), [])

    def test_write_file_atomically(self) -> None:
        """
        The convenience writer replaces the file, with the default mode 0600.
        """
        write_file_atomically(self.base, "f", b"1")
        write_file_atomically(self.base, "f", b"22")
        with open(os.path.join(self.base, "f"), "rb") as f:
            self.assertEqual(f.read(), b"22")
        self.assertEqual(mode_of(os.path.join(self.base, "f")), 0o600)

    def test_is_empty_directory(self) -> None:
        """
        Missing → C{None}; empty → C{True}; non-empty → C{False}; a symlink or file → error.
        """
        path = os.path.join(self.base, "d")
        self.assertIsNone(is_empty_directory(path))
        os.mkdir(path)
        self.assertTrue(is_empty_directory(path))
        with open(os.path.join(path, "x"), "w"):
            pass
        self.assertFalse(is_empty_directory(path))
        os.symlink(self.outside, os.path.join(self.base, "link"))
        self.assertRaises(NotADirectoryError, is_empty_directory, os.path.join(self.base, "link"))
        self.assertRaises(NotADirectoryError, is_empty_directory, os.path.join(path, "x"))

    def test_remove_tree(self) -> None:
        """
        A tree with restrictive directory modes and symlinks to the outside is removed without
        following the links; a missing path is fine; a symlink at the top is refused.
        """
        tree = os.path.join(self.base, "tree")
        os.makedirs(os.path.join(tree, "ro", "none"))
        with open(os.path.join(self.outside, "keep"), "w"):
            pass
        with open(os.path.join(tree, "ro", "f"), "w"):
            pass
        os.symlink(self.outside, os.path.join(tree, "ro", "out"))
        os.chmod(os.path.join(tree, "ro", "none"), 0)
        os.chmod(os.path.join(tree, "ro"), 0o500)
        os.chmod(tree, 0o500)
        remove_tree(tree)
        self.assertFalse(os.path.lexists(tree))
        self.assertEqual(os.listdir(self.outside), ["keep"])
        remove_tree(tree)
        link = os.path.join(self.base, "link")
        os.symlink(self.outside, link)
        self.assertRaises(NotADirectoryError, remove_tree, link)
        self.assertEqual(os.listdir(self.outside), ["keep"])
