"""
Tests for L{codexgw.envtools.patch}: the §7.11 grammar (golden patches and every failure reason with
its line), the matching rules of an Update, and property tests: C{parse_patch(render_patch(ops)) ==
ops}, and a rendered edit of a generated file applies to the expected file.
"""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from codexgw.envtools.patch import (
    AddFile,
    DeleteFile,
    Hunk,
    HunkError,
    HunkLine,
    Operation,
    PatchError,
    UpdateFile,
    apply_hunks,
    parse_patch,
    render_patch,
)


def ctx(text: str) -> HunkLine:
    """
    A context line.
    """
    return HunkLine(" ", text)


def rem(text: str) -> HunkLine:
    """
    A removed line.
    """
    return HunkLine("-", text)


def add(text: str) -> HunkLine:
    """
    An added line.
    """
    return HunkLine("+", text)


def patch(*lines: str) -> str:
    """
    A patch of C{lines} between the markers.
    """
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"]) + "\n"


class ParseTests(SynchronousTestCase):
    """
    L{parse_patch} on well-formed patches.
    """

    def test_all_operations(self) -> None:
        """
        Add, Delete, Update with a Move and hunks, in patch order.
        """
        ops = parse_patch(
            patch(
                "*** Add File: /a/new.txt",
                "+one",
                "+",
                "*** Delete File: /a/gone.txt",
                "*** Update File: /a/old.txt",
                "*** Move to: /b/renamed.txt",
                "@@ def f():",
                " keep",
                "-drop",
                "+put",
                "@@",
                " tail",
                "*** End of File",
            )
        )
        self.assertEqual(
            ops,
            (
                AddFile("/a/new.txt", ("one", "")),
                DeleteFile("/a/gone.txt"),
                UpdateFile(
                    "/a/old.txt",
                    "/b/renamed.txt",
                    (
                        Hunk("def f():", (ctx("keep"), rem("drop"), add("put"))),
                        Hunk(None, (ctx("tail"),), end_of_file=True),
                    ),
                ),
            ),
        )

    def test_add_without_lines(self) -> None:
        """
        An Add File without lines is an empty file; the first line not starting with C{+} ends it.
        """
        ops = parse_patch(patch("*** Add File: /e", "*** Add File: /f", "+x"))
        self.assertEqual(ops, (AddFile("/e"), AddFile("/f", ("x",))))
        self.assertEqual(AddFile("/e").content, "")
        self.assertEqual(AddFile("/f", ("x", "")).content, "x\n\n")

    def test_first_hunk_without_anchor_line(self) -> None:
        """
        The first hunk may omit C{@@}; later ones start at their C{@@}.
        """
        ops = parse_patch(patch("*** Update File: /u", " a", "-b", "@@ c", "+d"))
        self.assertEqual(
            ops,
            (UpdateFile("/u", None, (Hunk(None, (ctx("a"), rem("b"))), Hunk("c", (add("d"),)))),),
        )

    def test_empty_line_is_context(self) -> None:
        """
        An empty line inside an Update is an empty context line.
        """
        ops = parse_patch(patch("*** Update File: /u", "@@", " a", "", "-b"))
        self.assertEqual(ops, (UpdateFile("/u", None, (Hunk(None, (ctx("a"), ctx(""), rem("b"))),)),))

    def test_move_without_hunks(self) -> None:
        """
        A Move needs no hunk.
        """
        ops = parse_patch(patch("*** Update File: /u", "*** Move to: /v"))
        self.assertEqual(ops, (UpdateFile("/u", "/v"),))

    def test_markers_trimmed_and_crlf(self) -> None:
        """
        Marker lines are compared trimmed; one trailing CR per line goes; blank lines around the patch
        are ignored; paths are trimmed.
        """
        text = (
            "\n  \r\n  *** Begin Patch \r\n\t*** Add File:   /a b  \r\n+x\r\r\n *** End Patch\r\n\n \n"
        )
        self.assertEqual(parse_patch(text), (AddFile("/a b", ("x\r",)),))

    def test_context_lines_are_taken_as_they_are(self) -> None:
        """
        Non-marker lines keep their whitespace; a C{@@} after a space is a context line.
        """
        ops = parse_patch(patch("*** Update File: /u", "@@", "  x  ", " @@ -1 +1 @@", "-\t", "+ "))
        self.assertEqual(
            ops,
            (
                UpdateFile(
                    "/u", None, (Hunk(None, (ctx(" x  "), ctx("@@ -1 +1 @@"), rem("\t"), add(" "))),)
                ),
            ),
        )

    def test_anchor_forms(self) -> None:
        """
        The anchor is the trimmed rest after C{@@}; C{@@} followed only by blanks has none.
        """
        ops = parse_patch(patch("*** Update File: /u", "@@   ", "+a", "@@\t  x y  ", "+b"))
        self.assertEqual(
            ops, (UpdateFile("/u", None, (Hunk(None, (add("a"),)), Hunk("x y", (add("b"),)))),)
        )

    def test_blank_lines_between_operations(self) -> None:
        """
        Blank lines after an Add or a Delete are skipped.
        """
        ops = parse_patch(
            patch("*** Add File: /a", "+x", "", "   ", "*** Delete File: /b", "", "*** Delete File: /c")
        )
        self.assertEqual(ops, (AddFile("/a", ("x",)), DeleteFile("/b"), DeleteFile("/c")))

    def test_no_operations(self) -> None:
        """
        A patch with only its markers has no operations.
        """
        self.assertEqual(parse_patch("*** Begin Patch\n*** End Patch"), ())


class ParseFailureTests(SynchronousTestCase):
    """
    Every failure reason of §7.11 with its 1-based line number.
    """

    def assertFails(self, text: str, reason: str, line: int) -> None:
        """
        C{parse_patch(text)} fails with C{reason} at C{line}, and C{str()} is the tool's text.
        """
        with self.assertRaises(PatchError) as caught:
            parse_patch(text)
        self.assertEqual((caught.exception.reason, caught.exception.line), (reason, line))
        self.assertEqual(str(caught.exception), f"invalid patch: {reason} (line {line})")

    def test_missing_begin(self) -> None:
        """
        The first non-blank line must be C{*** Begin Patch}.
        """
        self.assertFails(
            "\n\n*** Add File: /a\n*** End Patch", 'first line must be "*** Begin Patch"', 3
        )
        self.assertFails("", 'first line must be "*** Begin Patch"', 1)
        self.assertFails(" \n\t\n", 'first line must be "*** Begin Patch"', 1)

    def test_missing_end(self) -> None:
        """
        The last non-blank line must be C{*** End Patch}.
        """
        self.assertFails(
            "*** Begin Patch\n*** Add File: /a\n+x\n\n", 'last line must be "*** End Patch"', 3
        )
        self.assertFails("\n*** Begin Patch\n", 'last line must be "*** End Patch"', 2)

    def test_unexpected_lines(self) -> None:
        """
        Lines that are no header where one is expected, stray markers, C{@@x}, a lone tab in an
        Update, and a hunk line after C{*** End of File}.
        """
        self.assertFails(patch("hello"), "unexpected line", 2)
        self.assertFails(patch("*** Add File: /a", "+x", "y"), "unexpected line", 4)
        self.assertFails(patch("*** Delete File: /a", "+x"), "unexpected line", 3)
        self.assertFails(patch("*** Update File: /a", "@@x", "+y"), "unexpected line", 3)
        self.assertFails(patch("*** Update File: /a", "+y", "\t"), "unexpected line", 4)
        self.assertFails(patch("*** Update File: /a", "+y", "*** End Patch", "+z"), "unexpected line", 4)
        self.assertFails(patch("*** Update File: /a", "+y", "*** Move to: /b"), "unexpected line", 4)
        self.assertFails(patch("*** Move to: /b"), "unexpected line", 2)
        self.assertFails(patch("*** End of File"), "unexpected line", 2)
        self.assertFails(
            patch("*** Update File: /a", "+y", "*** End of File", "+z"), "unexpected line", 5
        )

    def test_empty_path(self) -> None:
        """
        A header or Move whose path is blank.
        """
        self.assertFails(patch("*** Add File:  ", "+x"), "empty path", 2)
        self.assertFails(patch("*** Delete File:"), "empty path", 2)
        self.assertFails(patch("*** Update File: /a", "*** Move to:", "+x"), "empty path", 3)

    def test_empty_hunk(self) -> None:
        """
        A C{@@} without lines, or C{*** End of File} without lines.
        """
        self.assertFails(patch("*** Update File: /a", "@@ x", "@@", "+y"), "empty hunk", 3)
        self.assertFails(patch("*** Update File: /a", "@@"), "empty hunk", 3)
        self.assertFails(patch("*** Update File: /a", "@@", "*** End of File"), "empty hunk", 3)
        self.assertFails(patch("*** Update File: /a", "*** End of File"), "empty hunk", 3)
        self.assertFails(patch("*** Update File: /a", "@@", "*** Delete File: /b"), "empty hunk", 3)

    def test_update_without_hunks(self) -> None:
        """
        An Update without a Move needs a hunk; the error names its header.
        """
        self.assertFails(patch("*** Update File: /a", "*** Delete File: /b"), "update without hunks", 2)
        self.assertFails(patch("*** Update File: /a"), "update without hunks", 2)


def hunk(*lines: HunkLine, anchor: str | None = None, eof: bool = False) -> Hunk:
    """
    A hunk of C{lines}.
    """
    return Hunk(anchor, lines, eof)


class ApplyTests(SynchronousTestCase):
    """
    L{apply_hunks}: the matching rules of §7.11.
    """

    def test_replace(self) -> None:
        """
        Exact context and removed lines are replaced by context and added lines.
        """
        self.assertEqual(apply_hunks("a\nb\nc\n", [hunk(ctx("a"), rem("b"), add("B"))]), "a\nB\nc\n")

    def test_result_ends_with_newline(self) -> None:
        """
        The result ends with C{\\n} also when the file did not.
        """
        self.assertEqual(apply_hunks("a\nb", [hunk(rem("a"))]), "b\n")

    def test_everything_removed(self) -> None:
        """
        Removing every line leaves the empty file.
        """
        self.assertEqual(apply_hunks("a\n", [hunk(rem("a"))]), "")

    def test_trailing_whitespace_tolerance(self) -> None:
        """
        Lines match ignoring trailing whitespace (and a CR of a CRLF file) when no exact match exists.
        """
        self.assertEqual(apply_hunks("a  \r\nb\t\r\n", [hunk(ctx("a"), rem("b"), add("c"))]), "a\nc\n")

    def test_surrounding_whitespace_tolerance(self) -> None:
        """
        Then ignoring surrounding whitespace.
        """
        self.assertEqual(apply_hunks("  a\n\tb\n", [hunk(ctx("a "), rem(" b"))]), "a \n")

    def test_exact_preferred_over_tolerant(self) -> None:
        """
        An exact match later in the file wins over a tolerant one earlier.
        """
        self.assertEqual(apply_hunks("x \nx\n", [hunk(rem("x"), add("y"))]), "x \ny\n")

    def test_anchor(self) -> None:
        """
        The search starts after the first line equal (trimmed) to the anchor.
        """
        text = "def f():\n    x = 1\ndef g():\n    x = 1\n"
        result = apply_hunks(text, [hunk(rem("    x = 1"), add("    x = 2"), anchor="def g():")])
        self.assertEqual(result, "def f():\n    x = 1\ndef g():\n    x = 2\n")

    def test_anchor_not_found(self) -> None:
        """
        A missing anchor is a context failure.
        """
        with self.assertRaises(HunkError) as caught:
            apply_hunks("a\n", [hunk(rem("a"), anchor="zzz")])
        self.assertEqual(str(caught.exception), "hunk 1: context not found")

    def test_context_not_found_numbers_hunks(self) -> None:
        """
        The failing hunk is numbered from 1.
        """
        with self.assertRaises(HunkError) as caught:
            apply_hunks("a\nb\n", [hunk(rem("a")), hunk(rem("nope"))])
        self.assertEqual(str(caught.exception), "hunk 2: context not found")

    def test_cursor_moves_forward(self) -> None:
        """
        Hunks apply in order and never match before the previous replacement.
        """
        text = "x\ny\nx\ny\n"
        with self.assertRaises(HunkError):
            apply_hunks(text, [hunk(rem("x"), rem("y"), rem("x"), rem("y")), hunk(rem("x"))])
        result = apply_hunks(text, [hunk(rem("y"), add("1")), hunk(rem("y"), add("2"))])
        self.assertEqual(result, "x\n1\nx\n2\n")
        result = apply_hunks(text, [hunk(ctx("x"), add("+")), hunk(ctx("x"), add("-"))])
        self.assertEqual(result, "x\n+\ny\nx\n-\ny\n")

    def test_pure_insertion(self) -> None:
        """
        A hunk of added lines only: at the end of the file, or right after its anchor.
        """
        self.assertEqual(apply_hunks("a\nb\n", [hunk(add("z"))]), "a\nb\nz\n")
        self.assertEqual(apply_hunks("a\nb\n", [hunk(add("z"), anchor="a")]), "a\nz\nb\n")
        self.assertEqual(apply_hunks("", [hunk(add("z"))]), "z\n")

    def test_end_of_file_hunk(self) -> None:
        """
        An end-of-file hunk is first tried at the end (with every comparison), then anywhere.
        """
        text = "end\nmid\nend \n"
        self.assertEqual(apply_hunks(text, [hunk(rem("end"), add("E"), eof=True)]), "end\nmid\nE\n")
        self.assertEqual(apply_hunks(text, [hunk(rem("end"), add("E"))]), "E\nmid\nend \n")
        self.assertEqual(apply_hunks("a\nb\nc\n", [hunk(rem("a"), eof=True)]), "b\nc\n")


def _plain_line(text: str) -> bool:
    """
    A line text that stays the same through render and parse: no marker once trimmed.
    """
    trimmed = text.strip()
    return not trimmed.startswith(("***", "@@"))


line_text = st.text(st.characters(blacklist_characters="\n\r", codec="utf-8"), max_size=12).filter(
    _plain_line
)
path_text = st.text(
    st.characters(blacklist_characters="\n\r", codec="utf-8"), min_size=1, max_size=12
).map(lambda s: "/" + s.strip())
anchor_text = line_text.map(str.strip).filter(bool)
hunk_lines = st.lists(
    st.builds(HunkLine, st.sampled_from([" ", "-", "+"]), line_text), min_size=1, max_size=5
)
hunks = st.builds(Hunk, st.none() | anchor_text, hunk_lines.map(tuple), st.booleans())
operations: st.SearchStrategy[Operation] = st.one_of(
    st.builds(AddFile, path_text, st.lists(line_text, max_size=4).map(tuple)),
    st.builds(DeleteFile, path_text),
    st.builds(UpdateFile, path_text, st.none(), st.lists(hunks, min_size=1, max_size=3).map(tuple)),
    st.builds(UpdateFile, path_text, path_text, st.lists(hunks, max_size=3).map(tuple)),
)


class PropertyTests(SynchronousTestCase):
    """
    Generated round trips.
    """

    @given(ops=st.lists(operations, max_size=5))
    def test_render_parse_round_trip(self, ops: list[Operation]) -> None:
        """
        C{parse_patch(render_patch(ops)) == ops}.
        """
        self.assertEqual(parse_patch(render_patch(ops)), tuple(ops))

    @given(
        lines=st.lists(line_text, unique=True, min_size=1, max_size=12),
        data=st.data(),
    )
    def test_rendered_edits_apply(self, lines: list[str], data: st.DataObject) -> None:
        """
        Non-overlapping edits of a file of distinct lines, rendered as one Update with a hunk per edit
        (removed lines plus some context), parse back and apply to the expected file.
        """
        cuts = sorted(data.draw(st.lists(st.integers(0, len(lines)), min_size=2, max_size=8)))
        edits = [(cuts[k], cuts[k + 1]) for k in range(0, len(cuts) - 1, 2)]
        expected: list[str] = []
        update_hunks: list[Hunk] = []
        done = 0
        for start, end in edits:
            assume(end > start)
            before = data.draw(st.integers(0, start - done))
            new = data.draw(st.lists(line_text, max_size=3))
            body = [ctx(t) for t in lines[start - before : start]]
            body += [rem(t) for t in lines[start:end]] + [add(t) for t in new]
            update_hunks.append(Hunk(None, tuple(body)))
            expected += lines[done:start] + new
            done = end
        expected += lines[done:]
        # Without a final "\n" an empty last line would vanish from the file.
        ending = "\n" if lines[-1] == "" else data.draw(st.sampled_from(["", "\n"]))
        text = "\n".join(lines) + ending
        (update,) = parse_patch(render_patch([UpdateFile("/f", None, tuple(update_hunks))]))
        assert isinstance(update, UpdateFile)
        self.assertEqual(apply_hunks(text, update.hunks), "".join(t + "\n" for t in expected))
