"""
Tests for L{codexgw.appgw.snapshot} (C{app-gateway.md} §6.4–§6.6; acceptance items 32, 39, 48, 49).

 - The tarball format: gzip of a pax tar, sorted, relative names, modes, integer mtimes, uid/gid 0,
   exclusions (top-level C{config.toml}, C{.tmp/}), special files skipped, deterministic bytes.
 - Round trips (explicit and property-based): every file, directory, content, masked mode and mtime
   survives; symlinks are not stored.
 - Safe extraction with the exact errors: traversal, absolute names, links, devices, FIFOs, sparse
   files, duplicates, oversized and corrupt archives, a member below a symlink — and a property
   test: hostile archives never write outside the target and a failed restore leaves it untouched.
 - The flows L{restore_home} / L{snapshot_home} on the real reactor's thread pool with the
   in-memory, local-directory and real local S3 stores: not found is a fresh start, any other
   failure fails closed with the spec's prefixes, staging files never remain; cancellation never
   leaves a late rename.

Archive-level tests call the synchronous functions directly (no reactor); hypothesis tests are
synchronous, each example in its own fresh directory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import secrets
import stat
import tarfile
from dataclasses import dataclass
from typing import Any, Literal, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from codexgw.appgw.blocking import Abandoned, CallControl
from codexgw.appgw.codexhome import CodexHomeError, HomeDirs, InvalidWorkspaceId
from codexgw.appgw.objectstore import (
    IObjectStore,
    LocalDirObjectStore,
    ObjectStoreUnavailable,
    S3ObjectStore,
    make_s3_client,
)
from codexgw.appgw.snapshot import (
    ArchiveError,
    ArchiveTooLarge,
    CorruptArchive,
    DuplicateEntry,
    RestoreDownloadError,
    RestoreError,
    RestoreOutcome,
    SnapshotError,
    SnapshotUploadError,
    UnsafeEntry,
    UnsupportedEntry,
    build_archive,
    entry_parts,
    extract_archive,
    home_key,
    restore_home,
    restore_into,
    snapshot_home,
)
from codexgw.testing.memobjectstore import MemoryObjectStore
from tests.appgw.threads import ManualReactor
from tests.support import s3_endpoint

reactor = cast(IReactorTime, _reactor)

#: A fixed mtime (2026-05-20T00:00:00Z) for files built by the tests.
MTIME = 1_779_235_200

#: Directory modes the tests give on purpose: one with group bits, one without any owner bit.
GROUP_READABLE_DIR = 0o750
NO_OWNER_BITS_DIR = 0o055

#: How long a flow on the real reactor may take in these tests.
FLOW_BOUND = 20.0


# -------------------------------------------------------------------------------------------------
# Helpers


def listing(base: str) -> dict[str, tuple[Any, ...]]:
    """
    Every entry below C{base} (symlinks not followed): relative path → kind, mode and content (or
    link target).
    """
    entries: dict[str, tuple[Any, ...]] = {}
    for directory, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, base)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                entries[relative] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                entries[relative] = ("dir", stat.S_IMODE(info.st_mode))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                entries[relative] = ("file", stat.S_IMODE(info.st_mode), digest)
            else:
                entries[relative] = ("other", info.st_mode)
    return entries


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    """
    Create C{path} (and parents) holding C{data}, with C{mode} and mtime L{MTIME}.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.utime(path, (MTIME, MTIME))


@dataclass(frozen=True)
class Member:
    """
    One entry of a hand-made tar archive.

    @ivar size: the size declared in the header; C{None} means C{len(data)}.
    """

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    size: int | None = None


def tar_stream(
    members: list[Member], end: bool = True, form: Literal[0, 1, 2] = tarfile.PAX_FORMAT
) -> bytes:
    """
    A tar stream of C{members}, written header by header (so it can lie about sizes and hold any
    entry type); with the end-of-archive marker unless C{end} is false.
    """
    out = io.BytesIO()
    for member in members:
        info = tarfile.TarInfo(member.name)
        info.type = member.kind
        info.mode = member.mode
        info.linkname = member.linkname
        info.size = len(member.data) if member.size is None else member.size
        info.mtime = MTIME
        out.write(info.tobuf(form, "utf-8", "surrogateescape"))
        out.write(member.data)
        if len(member.data) % 512:
            out.write(bytes(512 - len(member.data) % 512))
    if end:
        out.write(bytes(1024))
    return out.getvalue()


def tar_gz(members: list[Member], **kwargs: Any) -> bytes:
    """
    L{tar_stream} compressed with gzip.
    """
    return gzip.compress(tar_stream(members, **kwargs))


class Layout:
    """
    A fresh directory layout for one extraction: C{base/root/{ws, .staging}}, C{base/outside}
    holding a sentinel file, and the archive at C{base/archive.tar.gz}.
    """

    counter = itertools.count()

    def __init__(self, case: SynchronousTestCase, archive: bytes) -> None:
        self.base = os.path.abspath(case.mktemp()) + f"-{next(self.counter)}"
        self.root = os.path.join(self.base, "root")
        self.home = os.path.join(self.root, "ws")
        self.staging = os.path.join(self.root, ".staging")
        self.outside = os.path.join(self.base, "outside")
        self.archive = os.path.join(self.base, "archive.tar.gz")
        for directory in (self.home, self.staging, self.outside):
            os.makedirs(directory, mode=0o700)
        write(os.path.join(self.outside, "sentinel"), b"do not touch")
        with open(self.archive, "wb") as f:
            f.write(archive)

    def restore(self, max_bytes: int = 1 << 20) -> Any:
        """
        L{restore_into} the home.
        """
        return restore_into(self.archive, self.home, self.staging, max_bytes)


def normalized(name: str) -> tuple[str, ...] | None:
    """
    An independent model of §6.5's name rule: the path segments, or C{None} when unsafe.
    """
    if name.startswith("./"):
        name = name[2:]
    if not name or name.startswith("/") or "\0" in name or ".." in name.split("/"):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    return parts or None


def capture_events(case: SynchronousTestCase) -> list[LogEvent]:
    """
    Collect every event logged until C{case} ends.
    """
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return events


# -------------------------------------------------------------------------------------------------
# Building


class HomeKeyTests(SynchronousTestCase):
    """
    L{home_key} names the object of a workspace's home.
    """

    def test_key(self) -> None:
        """
        The key is C{codex-app-gateway/<ws>.tar.gz}; an invalid id is refused.
        """
        self.assertEqual(home_key("ws_a"), "codex-app-gateway/ws_a.tar.gz")
        self.assertRaises(InvalidWorkspaceId, home_key, "../x")


class BuildArchiveTests(SynchronousTestCase):
    """
    L{build_archive} writes the §6.4 tarball.
    """

    def setUp(self) -> None:
        """
        A home with nested directories, several modes, a long and a non-ASCII name, the files
        that are left out, and entries that are skipped.
        """
        self.base = os.path.abspath(self.mktemp())
        self.home = os.path.join(self.base, "home")
        os.makedirs(self.home, mode=0o700)
        write(os.path.join(self.home, "history.jsonl"), b'{"a":1}\n', 0o600)
        write(os.path.join(self.home, "state_5.sqlite"), b"db", 0o644)
        write(os.path.join(self.home, "state_5.sqlite-wal"), b"wal", 0o644)
        write(os.path.join(self.home, "state_5.sqlite-shm"), b"shm", 0o644)
        write(os.path.join(self.home, "sessions", "2026", "05", "rollout.jsonl"), b"x" * 5000, 0o640)
        write(os.path.join(self.home, "sessions", "config.toml"), b"nested is kept", 0o600)
        write(os.path.join(self.home, "sessions", ".tmp", "kept"), b"nested .tmp is kept", 0o600)
        write(os.path.join(self.home, "d" * 150, "é" * 40), b"long", 0o755)
        write(os.path.join(self.home, "config.toml"), b"tokens", 0o600)
        write(os.path.join(self.home, ".config.toml.0123abcd.tmp"), b"torn tokens", 0o600)
        write(os.path.join(self.home, ".tmp", "scratch"), b"scratch", 0o600)
        os.symlink("/etc/passwd", os.path.join(self.home, "link"))
        os.mkfifo(os.path.join(self.home, "fifo"))
        # A socket node (binding a socket would need a path shorter than trial's).
        os.mknod(os.path.join(self.home, "sock"), stat.S_IFSOCK | 0o600)
        os.chmod(os.path.join(self.home, "sessions", "2026"), GROUP_READABLE_DIR)
        for directory in (
            "sessions/2026/05",
            "sessions/2026",
            "sessions/.tmp",
            "sessions",
            "d" * 150,
        ):
            os.utime(os.path.join(self.home, directory), (MTIME, MTIME))
        self.archive = os.path.join(self.base, "home.tar.gz")

    def members(self) -> list[tarfile.TarInfo]:
        """
        The archive's members, read with Python's own tar reader.
        """
        with tarfile.open(self.archive, "r:gz") as tar:
            return tar.getmembers()

    def test_format(self) -> None:
        """
        Gzip of a tar read back by Python's tar reader: depth-first with sorted names (a directory
        before its contents), relative names without C{./}, permission bits, integer mtimes, uid
        and gid 0, empty user and group names; the root itself is not an entry.
        """
        stats = build_archive(self.home, self.archive)
        with open(self.archive, "rb") as f:
            self.assertEqual(f.read(2), b"\x1f\x8b")
        members = self.members()
        self.assertEqual(
            [m.name for m in members],
            [
                "d" * 150,
                "d" * 150 + "/" + "é" * 40,
                "history.jsonl",
                "sessions",
                "sessions/.tmp",
                "sessions/.tmp/kept",
                "sessions/2026",
                "sessions/2026/05",
                "sessions/2026/05/rollout.jsonl",
                "sessions/config.toml",
                "state_5.sqlite",
                "state_5.sqlite-shm",
                "state_5.sqlite-wal",
            ],
        )
        by_name = {m.name: m for m in members}
        self.assertEqual(by_name["sessions/2026"].mode, GROUP_READABLE_DIR)
        self.assertEqual(by_name["sessions/2026/05/rollout.jsonl"].mode, 0o640)
        self.assertEqual(by_name["d" * 150 + "/" + "é" * 40].mode, 0o755)
        self.assertTrue(by_name["sessions"].isdir())
        self.assertTrue(by_name["history.jsonl"].isreg())
        for member in members:
            self.assertEqual((member.uid, member.gid, member.uname, member.gname), (0, 0, "", ""))
            self.assertEqual(member.mtime, MTIME)
            self.assertIsInstance(member.mtime, int)
            self.assertFalse(member.name.startswith(("./", "/")))
        self.assertEqual(by_name["sessions/2026/05/rollout.jsonl"].size, 5000)
        self.assertEqual((stats.directories, stats.files), (5, 8))
        self.assertEqual(stats.skipped, ("fifo", "link", "sock"))
        self.assertEqual(stats.skipped_count, 3)
        self.assertEqual(stats.file_bytes, sum(m.size for m in members if m.isreg()))

    def test_exclusions(self) -> None:
        """
        The top-level C{config.toml}, torn C{.config.toml.*.tmp} writes and C{.tmp/} (with its
        contents) are left out; the same names deeper down are kept.
        """
        build_archive(self.home, self.archive)
        names = {m.name for m in self.members()}
        for excluded in ("config.toml", ".config.toml.0123abcd.tmp", ".tmp", ".tmp/scratch"):
            self.assertNotIn(excluded, names)
        self.assertIn("sessions/config.toml", names)
        self.assertIn("sessions/.tmp/kept", names)

    def test_deterministic(self) -> None:
        """
        The same tree gives the same bytes (no timestamp or name in the gzip header).
        """
        build_archive(self.home, self.archive)
        second = os.path.join(self.base, "again.tar.gz")
        build_archive(self.home, second)
        with open(self.archive, "rb") as a, open(second, "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_archive_file(self) -> None:
        """
        The archive is created with mode 0600 and never over an existing file.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        build_archive(self.home, self.archive)
        self.assertEqual(stat.S_IMODE(os.stat(self.archive).st_mode), 0o600)
        self.assertRaises(FileExistsError, build_archive, self.home, self.archive)

    def test_symlinked_home_refused(self) -> None:
        """
        A home that is a symlink is not archived.
        """
        link = os.path.join(self.base, "link-home")
        os.symlink(self.home, link)
        self.assertRaises(OSError, build_archive, link, self.archive)
        self.assertFalse(os.path.exists(self.archive))

    def test_abandoned(self) -> None:
        """
        An abandoned build stops and removes its partial archive.
        """
        control: CallControl[Any] = CallControl()
        control.abandon()
        self.assertRaises(Abandoned, build_archive, self.home, self.archive, control)
        self.assertFalse(os.path.exists(self.archive))


# -------------------------------------------------------------------------------------------------
# Round trips


class RoundTripTests(SynchronousTestCase):
    """
    A home archived by L{build_archive} and restored by L{restore_into} comes back entire.
    """

    def round_trip(self, home: str) -> str:
        """
        Archive C{home}, restore it into a new root, return the restored home.
        """
        base = os.path.dirname(home)
        archive = os.path.join(base, "rt.tar.gz")
        build_archive(home, archive)
        restored = os.path.join(base, "restored")
        staging = os.path.join(base, "staging")
        os.mkdir(staging)
        restore_into(archive, restored, staging)
        self.assertEqual(os.listdir(staging), [])
        return restored

    def test_preserves_files_and_masked_modes(self) -> None:
        """
        Every file and directory, every byte and mtime survives; modes come back masked (files
        C{& 0o600}, directories C{& 0o700}, a zero result replaced by 0600/0700); symlinks are not
        stored; the restored home has mode 0700.
        """
        home = os.path.join(os.path.abspath(self.mktemp()), "home")
        os.makedirs(home, mode=0o700)
        files = {
            "a.txt": (b"alpha", 0o644),
            "exec.sh": (b"#!/bin/sh\n", 0o755),
            "private": (b"", 0o600),
            "readonly": (b"ro", 0o444),
            "weird": (b"w", 0o070),
            "sub/deeper/bin.dat": (bytes(range(256)) * 1000, 0o640),
            "ü/中文.txt": ("ü".encode(), 0o600),
        }
        for name, (data, mode) in files.items():
            write(os.path.join(home, name), data, mode)
        os.makedirs(os.path.join(home, "empty_dir"))
        os.chmod(os.path.join(home, "empty_dir"), NO_OWNER_BITS_DIR)
        os.symlink("a.txt", os.path.join(home, "link"))
        for directory in ("sub/deeper", "sub", "ü", "empty_dir"):
            os.utime(os.path.join(home, directory), (MTIME, MTIME))
        restored = self.round_trip(home)
        expected: dict[str, tuple[Any, ...]] = {}
        for name, (data, mode) in files.items():
            expected[name] = ("file", (mode & 0o600) or 0o600, hashlib.sha256(data).hexdigest())
        expected.update({"sub": ("dir", 0o700), "sub/deeper": ("dir", 0o700), "ü": ("dir", 0o700)})
        expected["empty_dir"] = ("dir", 0o700)  # NO_OWNER_BITS_DIR & 0o700 == 0 → 0o700
        self.assertEqual(listing(restored), expected)
        self.assertEqual(stat.S_IMODE(os.stat(restored).st_mode), 0o700)
        for name in [*files, "sub", "sub/deeper", "ü", "empty_dir"]:
            self.assertEqual(os.lstat(os.path.join(restored, name)).st_mtime, MTIME, name)

    def test_read_only_directory_filled(self) -> None:
        """
        A directory whose saved mode lacks the write bit is still filled (its mode is applied after
        its contents), and keeps that mode.
        """
        home = os.path.join(os.path.abspath(self.mktemp()), "home")
        write(os.path.join(home, "ro", "inner", "f"), b"data", 0o600)
        os.chmod(os.path.join(home, "ro"), 0o500)
        restored = self.round_trip(home)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(restored, "ro")).st_mode), 0o500)
        with open(os.path.join(restored, "ro", "inner", "f"), "rb") as f:
            self.assertEqual(f.read(), b"data")
        os.chmod(os.path.join(restored, "ro"), 0o700)  # let trial clean up as any user

    def test_undecodable_name(self) -> None:
        """
        A file name that is not valid UTF-8 comes back byte for byte.
        """
        home = os.path.join(os.path.abspath(self.mktemp()), "home")
        os.makedirs(home)
        name = os.path.join(os.fsencode(home), b"bad\xffname")
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600))
        self.assertEqual(os.listdir(os.fsencode(self.round_trip(home))), [b"bad\xffname"])

    def test_empty_home(self) -> None:
        """
        An empty home round-trips to an empty home.
        """
        home = os.path.join(os.path.abspath(self.mktemp()), "home")
        os.makedirs(home)
        self.assertEqual(listing(self.round_trip(home)), {})

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        entries=st.lists(
            st.tuples(
                st.lists(st.sampled_from(["a", "b", "é", "x y", ".h", "-"]), min_size=1, max_size=4),
                st.booleans(),
                st.integers(0o400, 0o777),
                st.binary(max_size=600),
            ),
            max_size=12,
        )
    )
    def test_property_round_trip(self, entries: list[tuple[list[str], bool, int, bytes]]) -> None:
        """
        Any tree of files and directories (any names from a mixed alphabet, modes, contents)
        round-trips with the same paths, bytes and masked modes.
        """
        home = os.path.join(os.path.abspath(self.mktemp()), f"home-{next(Layout.counter)}")
        os.makedirs(home)
        expected: dict[str, tuple[Any, ...]] = {}
        for parts, is_dir, mode, data in entries:
            path = os.path.join(home, *parts)
            if any(
                os.path.isfile(os.path.join(home, *parts[:i])) for i in range(1, len(parts) + 1)
            ) or os.path.isdir(path):
                continue  # a file is in the way, or the directory exists already
            for i in range(1, len(parts)):
                expected.setdefault("/".join(parts[:i]), ("dir", 0o700))
            if is_dir:
                os.makedirs(path)
                os.chmod(path, mode | 0o700)
                expected["/".join(parts)] = ("dir", 0o700)
            else:
                write(path, data, mode)
                digest = hashlib.sha256(data).hexdigest()
                expected["/".join(parts)] = ("file", (mode & 0o600) or 0o600, digest)
        self.assertEqual(listing(self.round_trip(home)), expected)


# -------------------------------------------------------------------------------------------------
# Safe extraction


class EntryNameTests(SynchronousTestCase):
    """
    L{entry_parts} implements §6.5's name rule.
    """

    def test_safe(self) -> None:
        """
        Relative names split into segments; a leading C{./}, empty and C{.} segments are dropped.
        """
        self.assertEqual(entry_parts("a/b"), ("a", "b"))
        self.assertEqual(entry_parts("./a"), ("a",))
        self.assertEqual(entry_parts("a//b/./c/"), ("a", "b", "c"))
        self.assertEqual(entry_parts("..a/b..c"), ("..a", "b..c"))

    def test_unsafe(self) -> None:
        """
        Empty, absolute, C{..}-bearing, NUL-bearing and segment-less names are refused with the
        exact text.
        """
        for name in ("", "/abs", "../x", "a/../../b", "a/..", "..", "./../x", ".", "./", "a\0b"):
            with self.assertRaises(UnsafeEntry) as caught:
                entry_parts(name)
            self.assertEqual(caught.exception.name, name)
        with self.assertRaises(UnsafeEntry) as caught:
            entry_parts("../x")
        self.assertEqual(str(caught.exception), 'codexhome: unsafe tar entry "../x"')


class ExtractionSafetyTests(SynchronousTestCase):
    """
    L{restore_into} refuses hostile archives with the exact errors, writes nothing outside the
    home, and leaves the home untouched.
    """

    def assert_refused(self, members: list[Member], error: type[Exception], message: str) -> None:
        """
        Restoring an archive of C{members} fails with C{error} and C{message}; the layout is as it
        was.
        """
        layout = Layout(self, tar_gz(members))
        before = listing(layout.base)
        with self.assertRaises(error) as caught:
            layout.restore()
        self.assertEqual(str(caught.exception), message)
        self.assertEqual(listing(layout.base), before)

    def test_traversal_and_absolute(self) -> None:
        """
        C{../x}, C{/abs}, C{a/../../b} and an empty name fail with C{unsafe tar entry}, even after a
        valid first member.
        """
        for name in ("../x", "/abs", "a/../../b", "./../x", ""):
            self.assert_refused(
                [Member("ok", data=b"fine"), Member(name, data=b"evil")],
                UnsafeEntry,
                f'codexhome: unsafe tar entry "{name}"',
            )

    def test_links_and_specials(self) -> None:
        """
        Symlink, hard link, FIFO, character and block device entries (and unknown types) fail with
        C{unsupported tar entry}.
        """
        cases = [
            Member("s", tarfile.SYMTYPE, linkname="/etc/passwd"),
            Member("h", tarfile.LNKTYPE, linkname="ok"),
            Member("f", tarfile.FIFOTYPE),
            Member("c", tarfile.CHRTYPE),
            Member("b", tarfile.BLKTYPE),
            Member("v", b"V"),
        ]
        for member in cases:
            self.assert_refused(
                [Member("ok", data=b"fine"), member],
                UnsupportedEntry,
                f'codexhome: unsupported tar entry "{member.name}"',
            )

    def test_sparse_file(self) -> None:
        """
        A GNU sparse file is refused: only plain regular files are restored.
        """
        self.assert_refused(
            [Member("sparse", tarfile.GNUTYPE_SPARSE)],
            UnsupportedEntry,
            'codexhome: unsupported tar entry "sparse"',
        )

    def test_unsafe_name_checked_before_type(self) -> None:
        """
        A symlink with a traversal name is reported as unsafe (the name rule comes first).
        """
        self.assert_refused(
            [Member("../s", tarfile.SYMTYPE, linkname="/")],
            UnsafeEntry,
            'codexhome: unsafe tar entry "../s"',
        )

    def test_member_below_symlink(self) -> None:
        """
        A symlink entry followed by a file "inside" it fails at the symlink; nothing reaches the
        link's target.
        """
        layout = Layout(self, b"")
        with open(layout.archive, "wb") as f:
            f.write(
                tar_gz(
                    [
                        Member("a", tarfile.SYMTYPE, linkname=layout.outside),
                        Member("a/pwned", data=b"evil"),
                    ]
                )
            )
        before = listing(layout.base)
        self.assertRaises(UnsupportedEntry, layout.restore)
        self.assertEqual(listing(layout.base), before)

    def test_planted_symlink_never_followed(self) -> None:
        """
        Even extracting into a directory that already holds a symlink to the outside (which
        L{restore_into} never does), a file below it is refused and nothing is written outside.
        """
        layout = Layout(self, tar_gz([Member("a/pwned", data=b"evil"), Member("b", data=b"x")]))
        os.symlink(layout.outside, os.path.join(layout.home, "a"))
        before = listing(layout.outside)
        with self.assertRaises(ArchiveError) as caught:
            extract_archive(layout.archive, layout.home)
        self.assertIn('cannot extract "a/pwned"', str(caught.exception))
        self.assertEqual(listing(layout.outside), before)

    def test_duplicates(self) -> None:
        """
        A name given twice (also as C{./a}, C{a/}, or a file and a directory) is refused.
        """
        for second in (Member("a", data=b"2"), Member("./a", data=b"2"), Member("a/", tarfile.DIRTYPE)):
            self.assert_refused(
                [Member("a", data=b"1"), second],
                DuplicateEntry,
                f'codexhome: duplicate tar entry "{second.name.rstrip("/")}"',
            )

    def test_huge_member(self) -> None:
        """
        A member declaring more bytes than the limit is refused before any of it is read or
        written.
        """
        layout = Layout(self, tar_gz([Member("big", size=1 << 40)], end=False))
        before = listing(layout.base)
        with self.assertRaises(ArchiveTooLarge) as caught:
            layout.restore(max_bytes=1 << 30)
        self.assertEqual(
            str(caught.exception), "codexhome: archive larger than 1073741824 bytes uncompressed"
        )
        self.assertEqual(listing(layout.base), before)

    def test_total_size_limit(self) -> None:
        """
        Many members each under the limit but together above it are refused.
        """
        members = [Member(f"f{i}", data=bytes(3000)) for i in range(10)]
        layout = Layout(self, tar_gz(members))
        before = listing(layout.base)
        self.assertRaises(ArchiveTooLarge, layout.restore, 20_000)
        self.assertEqual(listing(layout.base), before)
        layout.restore(max_bytes=40_000)

    def test_gzip_bomb(self) -> None:
        """
        A small compressed file that inflates past the limit (here in zero padding after the end
        marker, which no member declares) is refused once the inflated bytes pass the limit.
        """
        stream = tar_stream([Member("a", data=b"x")]) + bytes(50 << 20)
        layout = Layout(self, gzip.compress(stream))
        self.assertLess(os.path.getsize(layout.archive), 100_000)
        before = listing(layout.base)
        self.assertRaises(ArchiveTooLarge, layout.restore, 10 << 20)
        self.assertEqual(listing(layout.base), before)

    def test_oversized_metadata_header(self) -> None:
        """
        A pax header larger than 1 MiB is refused as corrupt (it would be read into memory whole).
        """
        pax = Member("././@PaxHeader", tarfile.XHDTYPE, size=2 << 20)
        self.assert_refused(
            [Member("ok", data=b"fine"), pax],
            CorruptArchive,
            "codexhome: corrupt archive: 2097152-byte metadata header",
        )

    def test_corrupt_archives(self) -> None:
        """
        Not gzip, empty, truncated, a damaged header in the middle, and a stream without the
        end-of-archive marker are all L{CorruptArchive} — never a silently partial restore.
        """
        good = tar_stream([Member("a", data=b"1" * 600), Member("b", data=b"2")])
        damaged = bytearray(good)
        damaged[512 + 1024 + 148] ^= 0xFF  # the checksum field of the second header
        cases = {
            "not gzip": b"plain text, not gzip",
            "empty file": b"",
            "empty gzip": gzip.compress(b""),
            "truncated gzip": gzip.compress(good)[:-20],
            "damaged header": gzip.compress(bytes(damaged)),
            "no end marker": gzip.compress(tar_stream([Member("a", data=b"1")], end=False)),
            "trailing garbage": gzip.compress(good) + b"garbage",
        }
        for label, archive in cases.items():
            layout = Layout(self, archive)
            before = listing(layout.base)
            with self.assertRaises(CorruptArchive, msg=label) as caught:
                layout.restore()
            self.assertTrue(str(caught.exception).startswith("codexhome: corrupt archive: "))
            self.assertEqual(listing(layout.base), before, label)

    def test_leading_dot_slash_accepted(self) -> None:
        """
        Names with a leading C{./} (as C{tar -C home .} writes them, minus the C{./} root entry)
        are restored; the GNU long-name format is read too.
        """
        members = [Member("./d", tarfile.DIRTYPE, mode=0o755), Member("./d/" + "n" * 120, data=b"1")]
        layout = Layout(self, tar_gz(members, form=tarfile.GNU_FORMAT))
        layout.restore()
        self.assertEqual(
            listing(layout.home),
            {
                "d": ("dir", 0o700),
                "d/" + "n" * 120: ("file", 0o600, hashlib.sha256(b"1").hexdigest()),
            },
        )


class HostileArchivePropertyTests(SynchronousTestCase):
    """
    Property: whatever an archive holds, a restore never writes outside the home; when it fails the
    whole layout is exactly as before; when it succeeds the archive was clean.
    """

    names = st.one_of(
        st.lists(
            st.sampled_from(["a", "b", "..", ".", "", "c d", "ü", "outside"]), min_size=1, max_size=4
        ).map("/".join),
        st.sampled_from(["../x", "/etc/passwd", "a/../../b", "..", "", "../outside/sentinel"]),
        st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=3).map(lambda p: "./" + "/".join(p)),
    )
    kinds = st.sampled_from(
        [
            tarfile.REGTYPE,
            tarfile.AREGTYPE,
            tarfile.CONTTYPE,
            tarfile.DIRTYPE,
            tarfile.SYMTYPE,
            tarfile.LNKTYPE,
            tarfile.FIFOTYPE,
            tarfile.CHRTYPE,
            tarfile.BLKTYPE,
            b"V",
        ]
    )
    hostile = st.builds(
        Member,
        name=names,
        kind=kinds,
        data=st.binary(max_size=40),
        mode=st.integers(0, 0o7777),
        linkname=st.sampled_from(["", "/etc/passwd", "../outside/sentinel", "a", "../../outside"]),
        size=st.one_of(st.none(), st.none(), st.just(1 << 34)),
    )
    # Clean members too, so that many archives are entirely clean or fail only late.
    clean = st.builds(
        Member,
        name=st.lists(st.sampled_from(["a", "b", "c d", "ü"]), min_size=1, max_size=3).map("/".join),
        kind=st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE]),
        data=st.just(b""),
        mode=st.integers(0, 0o7777),
    )
    members = st.one_of(clean, clean, clean, clean, clean, hostile)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        members=st.lists(members, min_size=1, max_size=6),
        end=st.sampled_from([True, True, True, False]),
    )
    def test_never_escapes(self, members: list[Member], end: bool) -> None:
        """
        Hostile archives (traversal, absolute names, links, devices, huge members, duplicates,
        members below symlinks, missing end markers) never change anything outside the home, and a
        failed restore leaves everything untouched; a successful one held only safe, unique files
        and directories.
        """
        layout = Layout(self, tar_gz(members, end=end))
        before = listing(layout.base)
        try:
            layout.restore()
        except ArchiveError:
            self.assertEqual(listing(layout.base), before)
            return
        after = listing(layout.base)
        inside = os.path.join("root", "ws") + os.sep
        self.assertEqual(
            {k: v for k, v in after.items() if not k.startswith(inside)},
            {k: v for k, v in before.items() if not k.startswith(inside)},
        )
        for entry in after.values():
            self.assertIn(entry[0], ("dir", "file"))
        seen: set[tuple[str, ...]] = set()
        for member in members:
            parts = normalized(member.name)
            self.assertIsNotNone(parts, member.name)
            assert parts is not None
            self.assertIn(
                member.kind, (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE)
            )
            self.assertNotIn(parts, seen)
            seen.add(parts)
            if member.kind != tarfile.DIRTYPE:
                # A directory's size field carries nothing and is ignored; a file's is its data.
                self.assertIsNone(member.size, repr((members, end)))


class RestoreIntoTests(SynchronousTestCase):
    """
    L{restore_into} swaps a fully extracted directory in place of a missing or empty home.
    """

    def test_missing_home_created(self) -> None:
        """
        A missing home is created (mode 0700) holding the archive.
        """
        layout = Layout(self, tar_gz([Member("f", data=b"1")]))
        os.rmdir(layout.home)
        stats = layout.restore()
        self.assertEqual(stat.S_IMODE(os.stat(layout.home).st_mode), 0o700)
        self.assertEqual(sorted(os.listdir(layout.home)), ["f"])
        self.assertEqual((stats.files, stats.file_bytes), (1, 1))
        self.assertEqual(os.listdir(layout.staging), [])

    def test_non_empty_home_refused(self) -> None:
        """
        A home that holds anything is refused before extraction and left as it is.
        """
        layout = Layout(self, tar_gz([Member("f", data=b"new")]))
        write(os.path.join(layout.home, "history.jsonl"), b"existing history")
        before = listing(layout.base)
        with self.assertRaises(CodexHomeError) as caught:
            layout.restore()
        self.assertEqual(
            str(caught.exception), f"codexhome: refusing to restore into non-empty {layout.home}"
        )
        self.assertEqual(listing(layout.base), before)

    def test_symlink_home_refused(self) -> None:
        """
        A symlink where the home should be is refused; its target stays empty.
        """
        layout = Layout(self, tar_gz([Member("f", data=b"new")]))
        os.rmdir(layout.home)
        os.symlink(layout.outside, layout.home)
        self.assertRaises(CodexHomeError, layout.restore)
        self.assertEqual(os.listdir(layout.outside), ["sentinel"])

    def test_abandoned_before_rename(self) -> None:
        """
        An abandoned restore never renames its extraction into place and removes it.
        """
        layout = Layout(self, tar_gz([Member("f", data=b"new")]))
        control: CallControl[Any] = CallControl()
        control.abandon()
        before = listing(layout.base)
        self.assertRaises(
            Abandoned, restore_into, layout.archive, layout.home, layout.staging, 1 << 20, control
        )
        self.assertEqual(listing(layout.base), before)


# -------------------------------------------------------------------------------------------------
# The flows


class FlowTests(TestCase):
    """
    L{snapshot_home} and L{restore_home} on the real reactor's thread pool.
    """

    timeout = 60

    def setUp(self) -> None:
        """
        Two roots (one gateway's and a later one's) and an in-memory store.
        """
        base = os.path.abspath(self.mktemp())
        self.first = HomeDirs(os.path.join(base, "first"))
        self.second = HomeDirs(os.path.join(base, "second"))
        self.first.ensure_root()
        self.second.ensure_root()
        self.store = MemoryObjectStore()

    def filled_home(self) -> str:
        """
        C{ws_a}'s home in the first root, with history, a session, C{config.toml} and C{.tmp/}.
        """
        home = self.first.home_path("ws_a")
        write(os.path.join(home, "history.jsonl"), b"turn 1\n", 0o600)
        write(os.path.join(home, "sessions", "s.jsonl"), b"session", 0o600)
        write(os.path.join(home, "config.toml"), b"tokens", 0o600)
        write(os.path.join(home, ".tmp", "x"), b"scratch", 0o600)
        return home

    def bounded(self, d: Deferred[Any]) -> Deferred[Any]:
        """
        C{d} with the flow bound.
        """
        return d.addTimeout(FLOW_BOUND, reactor)

    async def test_snapshot_then_restore(self) -> None:
        """
        A snapshot stored as C{codex-app-gateway/ws_a.tar.gz} (without C{config.toml} or C{.tmp/})
        restores into a new root with every other file; staging directories end empty; the first
        home is untouched by the snapshot.
        """
        home = self.filled_home()
        before = listing(home)
        stats = await self.bounded(snapshot_home(self.store, self.first, "ws_a", reactor))
        self.assertEqual(stats.files, 2)
        self.assertEqual(list(self.store.objects), ["codex-app-gateway/ws_a.tar.gz"])
        self.assertEqual(listing(home), before)
        with tarfile.open(fileobj=io.BytesIO(self.store.objects[home_key("ws_a")])) as tar:
            self.assertEqual(tar.getnames(), ["history.jsonl", "sessions", "sessions/s.jsonl"])
        outcome = await self.bounded(restore_home(self.store, self.second, "ws_a", reactor))
        self.assertIs(outcome, RestoreOutcome.RESTORED)
        restored = self.second.path_for("ws_a")
        expected = {k: v for k, v in before.items() if k not in ("config.toml", ".tmp", ".tmp/x")}
        expected["sessions"] = ("dir", 0o700)  # directory modes come back masked
        self.assertEqual(listing(restored), expected)
        for homes in (self.first, self.second):
            self.assertEqual(os.listdir(homes.staging_path()), [])

    async def round_trip_through(self, store: IObjectStore) -> None:
        """
        Snapshot C{ws_a} into C{store}, restore it into the second root, and compare.
        """
        home = self.filled_home()
        before = listing(home)
        await self.bounded(snapshot_home(store, self.first, "ws_a", reactor))
        outcome = await self.bounded(restore_home(store, self.second, "ws_a", reactor))
        self.assertIs(outcome, RestoreOutcome.RESTORED)
        expected = {k: v for k, v in before.items() if k not in ("config.toml", ".tmp", ".tmp/x")}
        expected["sessions"] = ("dir", 0o700)
        self.assertEqual(listing(self.second.path_for("ws_a")), expected)
        fresh = await self.bounded(restore_home(store, self.second, "ws_other", reactor))
        self.assertIs(fresh, RestoreOutcome.FRESH)

    async def test_round_trip_through_s3(self) -> None:
        """
        The whole flow works through the real local S3 server.
        """
        client = make_s3_client(s3_endpoint(), "us-east-1", "test", "test", path_style=True)
        bucket = f"cxg-snap-{secrets.token_hex(8)}"
        await self.bounded(deferToThread(client.create_bucket, Bucket=bucket))
        await self.round_trip_through(S3ObjectStore(client, bucket, reactor))

    async def test_round_trip_through_directory(self) -> None:
        """
        The whole flow works through a local-directory store.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        await self.round_trip_through(LocalDirObjectStore(directory, reactor))
        self.assertTrue(os.path.isfile(os.path.join(directory, "codex-app-gateway", "ws_a.tar.gz")))

    async def test_restore_into_freshly_created_home(self) -> None:
        """
        The supervisor's order — create the home (0700), then restore into it — works.
        """
        self.store.objects[home_key("ws_a")] = tar_gz([Member("marker", data=b"m")])
        home = self.second.home_path("ws_a")
        outcome = await self.bounded(restore_home(self.store, self.second, "ws_a", reactor))
        self.assertIs(outcome, RestoreOutcome.RESTORED)
        self.assertEqual(os.listdir(home), ["marker"])
        self.assertEqual(stat.S_IMODE(os.stat(home).st_mode), 0o700)

    async def test_not_found_is_fresh_start(self) -> None:
        """
        No object means a fresh, empty home of mode 0700; the outcome's value is the metric label.
        """
        outcome = await self.bounded(restore_home(self.store, self.second, "ws_new", reactor))
        self.assertIs(outcome, RestoreOutcome.FRESH)
        self.assertEqual(outcome.value, "not_found")
        home = self.second.path_for("ws_new")
        self.assertEqual(os.listdir(home), [])
        self.assertEqual(stat.S_IMODE(os.stat(home).st_mode), 0o700)
        self.assertEqual(os.listdir(self.second.staging_path()), [])

    async def test_store_failure_fails_closed(self) -> None:
        """
        Any store failure other than "not found" fails the restore with C{object store download:}
        and creates no home: an empty home never replaces history the store could not deliver.
        """
        self.store.failure = ObjectStoreUnavailable("get codex-app-gateway/ws_a.tar.gz: down")
        with self.assertRaises(RestoreDownloadError) as caught:
            await self.bounded(restore_home(self.store, self.second, "ws_a", reactor))
        self.assertEqual(
            str(caught.exception), "object store download: get codex-app-gateway/ws_a.tar.gz: down"
        )
        self.assertIsInstance(caught.exception.cause, ObjectStoreUnavailable)
        self.assertFalse(os.path.exists(self.second.path_for("ws_a")))
        self.assertEqual(os.listdir(self.second.staging_path()), [])

    async def test_unreachable_directory_store_fails_closed(self) -> None:
        """
        With a local-directory store whose directory is gone (a lost mount), the restore fails
        closed instead of starting fresh.
        """
        store = LocalDirObjectStore(os.path.abspath(self.mktemp()), reactor)
        with self.assertRaises(RestoreDownloadError):
            await self.bounded(restore_home(store, self.second, "ws_a", reactor))
        self.assertFalse(os.path.exists(self.second.path_for("ws_a")))

    async def test_unsafe_archive_fails_closed(self) -> None:
        """
        An unsafe tarball fails the restore with C{restore: codexhome: unsafe tar entry ...}; an
        existing empty home stays empty and nothing is left in staging.
        """
        self.store.objects[home_key("ws_a")] = tar_gz([Member("ok"), Member("../evil")])
        home = self.second.home_path("ws_a")
        with self.assertRaises(RestoreError) as caught:
            await self.bounded(restore_home(self.store, self.second, "ws_a", reactor))
        self.assertEqual(str(caught.exception), 'restore: codexhome: unsafe tar entry "../evil"')
        self.assertEqual(os.listdir(home), [])
        self.assertEqual(os.listdir(self.second.staging_path()), [])
        self.assertFalse(os.path.exists(os.path.join(self.second.root, "evil")))

    async def test_oversized_archive_fails_closed(self) -> None:
        """
        An archive above the configured limit fails the restore.
        """
        self.store.objects[home_key("ws_a")] = tar_gz([Member("f", data=bytes(50_000))])
        with self.assertRaises(RestoreError) as caught:
            await self.bounded(restore_home(self.store, self.second, "ws_a", reactor, max_bytes=20_000))
        self.assertIsInstance(caught.exception.cause, ArchiveTooLarge)
        self.assertFalse(os.path.exists(self.second.path_for("ws_a")))

    async def test_non_empty_home_refused_without_download(self) -> None:
        """
        A home that already holds files is refused before anything is downloaded.
        """
        home = self.filled_home()
        before = listing(home)
        self.store.objects[home_key("ws_a")] = tar_gz([Member("f")])
        with self.assertRaises(RestoreError):
            await self.bounded(restore_home(self.store, self.first, "ws_a", reactor))
        self.assertEqual(self.store.calls, [])
        self.assertEqual(listing(home), before)

    async def test_invalid_workspace_id(self) -> None:
        """
        An invalid workspace id fails both flows before any store call.
        """
        with self.assertRaises(InvalidWorkspaceId):
            await self.bounded(restore_home(self.store, self.second, "../x", reactor))
        with self.assertRaises(InvalidWorkspaceId):
            await self.bounded(snapshot_home(self.store, self.second, "a/b", reactor))
        self.assertEqual(self.store.calls, [])

    async def test_upload_failure(self) -> None:
        """
        A store failure during the upload fails the snapshot with C{object store upload:}; the home
        is untouched and the staging tarball removed.
        """
        home = self.filled_home()
        before = listing(home)
        self.store.failure = ObjectStoreUnavailable("put: down")
        with self.assertRaises(SnapshotUploadError) as caught:
            await self.bounded(snapshot_home(self.store, self.first, "ws_a", reactor))
        self.assertEqual(str(caught.exception), "object store upload: put: down")
        self.assertEqual(listing(home), before)
        self.assertEqual(os.listdir(self.first.staging_path()), [])

    async def test_snapshot_of_missing_home(self) -> None:
        """
        Snapshotting a home that does not exist fails with C{snapshot:} and uploads nothing.
        """
        with self.assertRaises(SnapshotError) as caught:
            await self.bounded(snapshot_home(self.store, self.first, "ws_none", reactor))
        self.assertTrue(str(caught.exception).startswith("snapshot: "))
        self.assertEqual(self.store.calls, [])
        self.assertEqual(os.listdir(self.first.staging_path()), [])

    async def test_large_snapshot_uploaded_with_warning(self) -> None:
        """
        A home above the limit is still uploaded (losing it would be worse) and a warning says
        restores will refuse it; skipped entries are logged at debug.
        """
        events = capture_events(self)
        home = self.filled_home()
        os.symlink("/etc", os.path.join(home, "link"))
        await self.bounded(snapshot_home(self.store, self.first, "ws_a", reactor, max_bytes=1000))
        self.assertIn(home_key("ws_a"), self.store.objects)
        warnings = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["workspace_id"], "ws_a")
        self.assertIn("CXG_MAX_SNAPSHOT_BYTES", warnings[0]["log_format"])
        debug = [e for e in events if e.get("log_level") == LogLevel.debug]
        self.assertEqual([e["name"] for e in debug], ["link"])

    def test_cancelled_restore_never_lands(self) -> None:
        """
        A restore cancelled while its extraction waits for a thread fails with
        L{CancelledError}; the extraction, when it runs, never renames into place; staging ends
        empty.
        """
        manual = ManualReactor()
        self.store.objects[home_key("ws_a")] = tar_gz([Member("f", data=b"1")])
        d = restore_home(self.store, self.second, "ws_a", manual)
        self.assertNoResult(d)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        manual.pool.run_all()
        self.assertFalse(os.path.exists(self.second.path_for("ws_a")))
        self.assertEqual(os.listdir(self.second.staging_path()), [])

    def test_cancelled_after_commit_succeeds(self) -> None:
        """
        A restore whose home was renamed into place before the cancellation reports success.
        """
        manual = ManualReactor()
        self.store.objects[home_key("ws_a")] = tar_gz([Member("f", data=b"1")])
        d = restore_home(self.store, self.second, "ws_a", manual)
        deliver = manual.pool.run_next()
        d.cancel()
        self.assertIs(self.successResultOf(d), RestoreOutcome.RESTORED)
        deliver()
        self.assertEqual(os.listdir(self.second.path_for("ws_a")), ["f"])
