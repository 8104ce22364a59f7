"""
Tests for L{codexgw.envtools.paths}: path arguments → URIs, parent URIs and shell quoting
(C{envtools.md} §3, acceptance criterion 3).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from codexgw.envtools.paths import PathError, parent_uri, shell_quote, to_uri


class ToUriTests(SynchronousTestCase):
    """
    L{to_uri} follows the four cases of §3.1 in order.
    """

    def test_posix_space(self) -> None:
        """
        A space is percent-encoded.
        """
        self.assertEqual(to_uri("/tmp/a b"), "file:///tmp/a%20b")

    def test_posix_hash(self) -> None:
        """
        C{#} is percent-encoded too, so it cannot start a fragment.
        """
        self.assertEqual(to_uri("/tmp/a b#1"), "file:///tmp/a%20b%231")

    def test_posix_non_ascii(self) -> None:
        """
        Non-ASCII characters are percent-encoded from their UTF-8 form.
        """
        self.assertEqual(to_uri("/tmp/é"), "file:///tmp/%C3%A9")

    def test_posix_unreserved_kept(self) -> None:
        """
        C{A–Z a–z 0–9 - . _ ~ /} are kept as they are; C{..} segments are kept.
        """
        self.assertEqual(to_uri("/a-b.c_d~e/../Z9"), "file:///a-b.c_d~e/../Z9")

    def test_posix_reserved_encoded(self) -> None:
        """
        Characters outside the kept set, C{?}, C{%}, C{'} and C{:} included, are percent-encoded.
        """
        self.assertEqual(to_uri("/a?b%c'd:e"), "file:///a%3Fb%25c%27d%3Ae")

    def test_root(self) -> None:
        """
        C{/} is C{file:///}.
        """
        self.assertEqual(to_uri("/"), "file:///")

    def test_windows_backslashes(self) -> None:
        """
        A drive path with backslashes becomes a C{file:///X:/…} URI.
        """
        self.assertEqual(to_uri("C:\\x\\y"), "file:///C:/x/y")

    def test_windows_forward_slashes(self) -> None:
        """
        A drive path with forward slashes is a Windows path as well.
        """
        self.assertEqual(to_uri("d:/x y"), "file:///d:/x%20y")

    def test_file_uri_unchanged(self) -> None:
        """
        A C{file://} URI, in any letter case, is sent unchanged, even one the exec-server will refuse.
        """
        self.assertEqual(to_uri("file:///z"), "file:///z")
        self.assertEqual(to_uri("FILE:///z%20y"), "FILE:///z%20y")
        self.assertEqual(to_uri("file://host/z?q"), "file://host/z?q")

    def test_relative(self) -> None:
        """
        A relative path is refused with the exact text.
        """
        with self.assertRaises(PathError) as caught:
            to_uri("rel/p")
        self.assertEqual(str(caught.exception), 'path must be absolute: "rel/p"')
        self.assertEqual(caught.exception.path, "rel/p")

    def test_empty(self) -> None:
        """
        The empty string is not absolute.
        """
        with self.assertRaises(PathError) as caught:
            to_uri("")
        self.assertEqual(str(caught.exception), 'path must be absolute: ""')

    def test_other_scheme(self) -> None:
        """
        Another scheme is neither a C{file://} URI nor a path.
        """
        self.assertRaises(PathError, to_uri, "http://x/y")
        self.assertRaises(PathError, to_uri, "C:x")

    def test_lone_surrogate(self) -> None:
        """
        A lone surrogate (possible in JSON text) becomes U+FFFD rather than failing the conversion.
        """
        self.assertEqual(to_uri("/a\ud800"), "file:///a%EF%BF%BD")

    def test_path_error_is_value_error(self) -> None:
        """
        L{PathError} is a C{ValueError}.
        """
        self.assertIsInstance(PathError("x"), ValueError)


class ParentUriTests(SynchronousTestCase):
    """
    L{parent_uri} removes the last path segment.
    """

    def test_nested(self) -> None:
        """
        C{file:///a/b/c} → C{file:///a/b}.
        """
        self.assertEqual(parent_uri("file:///a/b/c"), "file:///a/b")

    def test_top_level(self) -> None:
        """
        The parent of C{file:///a} is C{file:///}.
        """
        self.assertEqual(parent_uri("file:///a"), "file:///")

    def test_root(self) -> None:
        """
        The root is its own parent.
        """
        self.assertEqual(parent_uri("file:///"), "file:///")

    def test_trailing_slash(self) -> None:
        """
        A trailing C{/} does not count as a segment.
        """
        self.assertEqual(parent_uri("file:///a/b/"), "file:///a")

    def test_host_kept(self) -> None:
        """
        The authority stays.
        """
        self.assertEqual(parent_uri("file://localhost/a/b"), "file://localhost/a")

    def test_of_converted(self) -> None:
        """
        Works on what L{to_uri} produces, encoded segments included.
        """
        self.assertEqual(parent_uri(to_uri("/tmp/a b/c d")), "file:///tmp/a%20b")


class ShellQuoteTests(SynchronousTestCase):
    """
    L{shell_quote} single-quotes (§3.3).
    """

    def test_apostrophe(self) -> None:
        """
        C{a'b} → C{'a'\\''b'}.
        """
        self.assertEqual(shell_quote("a'b"), "'a'\\''b'")

    def test_plain(self) -> None:
        """
        Other characters are kept inside the quotes.
        """
        self.assertEqual(shell_quote("/tmp/a b$c"), "'/tmp/a b$c'")
        self.assertEqual(shell_quote(""), "''")
