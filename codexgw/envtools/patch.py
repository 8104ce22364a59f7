"""
The patch language of C{apply_patch} (C{envtools.md} §7.11): parsing a patch into operations and
applying an Update's hunks to a file's text. Pure functions; the tool that issues the exec-server calls
is L{codexgw.envtools.applypatch}.

A patch is::

    *** Begin Patch
    *** Add File: /abs/new.txt
    +first line
    *** Update File: /abs/old.txt
    *** Move to: /abs/renamed.txt
    @@ def anchor():
     context
    -removed
    +added
    *** End of File
    *** Delete File: /abs/gone.txt
    *** End Patch

L{parse_patch} turns it into a tuple of L{AddFile}, L{DeleteFile} and L{UpdateFile}; L{render_patch} is
its inverse (C{parse_patch(render_patch(ops)) == ops}); L{apply_hunks} applies the hunks of an Update to
a file's text with the matching rules of §7.11 (anchor, cursor, exact → trailing-whitespace →
surrounding-whitespace comparison, end-of-file hunks tried at the end first).

Written after reading codex's own C{apply-patch} crate, but following the spec where they differ: an
empty line inside an Update is an empty context line (codex skips blank lines between hunks), there is
no Unicode punctuation folding, and an end-of-file hunk that does not match at the end is searched like
any other hunk.

Decisions where the spec is silent:
 - B{Which lines are markers.} A line whose trimmed text is C{*** Begin Patch}, C{*** End Patch},
   C{*** End of File} or starts with C{*** Add File:}, C{*** Delete File:}, C{*** Update File:} or
   C{*** Move to:} is a marker wherever it stands — also with a leading space, which would otherwise make
   it a context line. A hunk line C{@@}/C{@@ <anchor>} is recognised only when the line does not start
   with a space, C{-} or C{+}: C{" @@ -1 +1 @@"} is the context line C{"@@ -1 +1 @@"} (patches of diff
   files stay expressible). C{@@} must be followed by whitespace or nothing (C{@@x} is an unexpected
   line); the anchor is the rest, trimmed; C{@@} with only whitespace after it has no anchor.
 - B{Blank lines between operations} (after an Add File's C{+} lines, after a Delete File) are skipped:
   they can mean nothing else. Inside an Update they are empty context lines, as the spec says — also
   when they stand just before the next header.
 - A line that is blank after trimming but does not start with a space (a lone tab) is an unexpected
   line inside an Update; only the empty line is an empty context line.
 - B{Line numbers} are 1-based numbers of the lines of the patch as given (leading blank lines
   counted). A patch that is blank throughout fails at line 1 with the Begin reason; a patch of one
   line C{*** Begin Patch} fails at that line with the End reason.
 - B{Error lines:} C{empty hunk} names the hunk's C{@@} line (or its C{*** End of File} line when
   the hunk had no C{@@}); C{update without hunks} names the C{*** Update File:} line; C{empty path}
   names the header; a C{*** Begin Patch}, C{*** End Patch} or C{*** Move to:} inside the body, and a
   hunk line after an C{*** End of File} without a new C{@@}, are C{unexpected line}s.
 - An Update whose hunks remove every line gives the empty file (the lines joined with C{\\n} "plus a
   final C{\\n}" has no final line to end).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

BEGIN_MARKER: Final = "*** Begin Patch"
END_MARKER: Final = "*** End Patch"
ADD_PREFIX: Final = "*** Add File:"
DELETE_PREFIX: Final = "*** Delete File:"
UPDATE_PREFIX: Final = "*** Update File:"
MOVE_PREFIX: Final = "*** Move to:"
END_OF_FILE_MARKER: Final = "*** End of File"

#: The parse failure reasons of §7.11.
REASON_FIRST: Final = 'first line must be "*** Begin Patch"'
REASON_LAST: Final = 'last line must be "*** End Patch"'
REASON_UNEXPECTED: Final = "unexpected line"
REASON_EMPTY_PATH: Final = "empty path"
REASON_EMPTY_HUNK: Final = "empty hunk"
REASON_NO_HUNKS: Final = "update without hunks"

LineKind = Literal[" ", "-", "+"]

# The first character of a hunk line → its kind; the empty line is an empty context line.
_KINDS: Final[dict[str, LineKind]] = {"": " ", " ": " ", "-": "-", "+": "+"}


class PatchError(ValueError):
    """
    A patch that does not follow the grammar; C{str()} is the tool's text C{invalid patch: <reason>
    (line <n>)}.

    @ivar reason: one of the C{REASON_*} texts.
    @ivar line: the 1-based line number.
    """

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(f"invalid patch: {reason} (line {line})")
        self.reason = reason
        self.line = line


class HunkError(ValueError):
    """
    A hunk whose anchor or lines are not in the file; C{str()} is C{hunk <k>: context not found}.

    @ivar index: the 1-based number of the hunk in its Update.
    """

    def __init__(self, index: int) -> None:
        super().__init__(f"hunk {index}: context not found")
        self.index = index


@dataclass(frozen=True)
class HunkLine:
    """
    One line of a hunk.

    @ivar kind: C{" "} context, C{"-"} removed, C{"+"} added.
    @ivar text: the line without its kind character.
    """

    kind: LineKind
    text: str


@dataclass(frozen=True)
class Hunk:
    """
    One hunk of an Update.

    @ivar anchor: the trimmed text after C{@@}, or C{None}.
    @ivar lines: the hunk's lines, at least one.
    @ivar end_of_file: the hunk ended with C{*** End of File}.
    """

    anchor: str | None
    lines: tuple[HunkLine, ...]
    end_of_file: bool = False

    @property
    def old(self) -> list[str]:
        """
        The context and removed lines, in order: what must be found in the file.
        """
        return [line.text for line in self.lines if line.kind != "+"]

    @property
    def new(self) -> list[str]:
        """
        The context and added lines, in order: what replaces L{old}.
        """
        return [line.text for line in self.lines if line.kind != "-"]


@dataclass(frozen=True)
class AddFile:
    """
    C{*** Add File: <path>}: create or replace a file.

    @ivar lines: the content lines without their C{+}.
    """

    path: str
    lines: tuple[str, ...] = ()

    @property
    def content(self) -> str:
        """
        The file's text: every line followed by C{\\n}; the empty string without lines.
        """
        return "".join(line + "\n" for line in self.lines)


@dataclass(frozen=True)
class DeleteFile:
    """
    C{*** Delete File: <path>}.
    """

    path: str


@dataclass(frozen=True)
class UpdateFile:
    """
    C{*** Update File: <path>}, optionally moved, with its hunks (none only when moved).
    """

    path: str
    move_to: str | None = None
    hunks: tuple[Hunk, ...] = field(default=())


Operation = AddFile | DeleteFile | UpdateFile


def _header(trimmed: str) -> tuple[str, str] | None:
    """
    The operation header in a trimmed line: C{(prefix, path)}, or C{None}.
    """
    for prefix in (ADD_PREFIX, DELETE_PREFIX, UPDATE_PREFIX):
        if trimmed.startswith(prefix):
            return prefix, trimmed[len(prefix) :].strip()
    return None


def _hunk_start(line: str) -> tuple[bool, str | None]:
    """
    Whether C{line} is a C{@@} line, and its anchor.
    """
    trimmed = line.strip()
    if trimmed == "@@":
        return True, None
    if trimmed.startswith("@@") and trimmed[2].isspace():
        return True, trimmed[2:].strip() or None
    return False, None


def _is_stray_marker(trimmed: str) -> bool:
    """
    A marker that has no place where it stands (inside the body of the patch).
    """
    return trimmed in (BEGIN_MARKER, END_MARKER) or trimmed.startswith(MOVE_PREFIX)


@dataclass
class _OpenHunk:
    line: int
    anchor: str | None
    lines: list[HunkLine] = field(default_factory=list)

    def close(self, end_of_file: bool, at_line: int) -> Hunk:
        if not self.lines:
            raise PatchError(REASON_EMPTY_HUNK, at_line)
        return Hunk(self.anchor, tuple(self.lines), end_of_file)


def parse_patch(text: str) -> tuple[Operation, ...]:
    """
    Parse a patch (§7.11 grammar).

    @param text: the C{patch} argument.
    @return: the operations in patch order (possibly none).
    @raise PatchError: the first grammar violation.
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    first = 0
    while first < len(lines) and not lines[first].strip():
        first += 1
    last = len(lines) - 1
    while last >= first and not lines[last].strip():
        last -= 1
    if first > last or lines[first].strip() != BEGIN_MARKER:
        raise PatchError(REASON_FIRST, first + 1 if first <= last else 1)
    if last == first or lines[last].strip() != END_MARKER:
        raise PatchError(REASON_LAST, last + 1)
    operations: list[Operation] = []
    index = first + 1
    while index < last:
        trimmed = lines[index].strip()
        if not trimmed:
            index += 1
            continue
        header = _header(trimmed)
        if header is None:
            raise PatchError(REASON_UNEXPECTED, index + 1)
        prefix, path = header
        if not path:
            raise PatchError(REASON_EMPTY_PATH, index + 1)
        header_line = index + 1
        index += 1
        if prefix == ADD_PREFIX:
            content: list[str] = []
            while index < last and lines[index].startswith("+"):
                content.append(lines[index][1:])
                index += 1
            operations.append(AddFile(path, tuple(content)))
        elif prefix == DELETE_PREFIX:
            operations.append(DeleteFile(path))
        else:
            move_to: str | None = None
            if index < last and lines[index].strip().startswith(MOVE_PREFIX):
                move_to = lines[index].strip()[len(MOVE_PREFIX) :].strip()
                if not move_to:
                    raise PatchError(REASON_EMPTY_PATH, index + 1)
                index += 1
            hunks, index = _parse_hunks(lines, index, last)
            if not hunks and move_to is None:
                raise PatchError(REASON_NO_HUNKS, header_line)
            operations.append(UpdateFile(path, move_to, tuple(hunks)))
    return tuple(operations)


def _parse_hunks(lines: Sequence[str], index: int, last: int) -> tuple[list[Hunk], int]:
    """
    The hunks of one Update, from C{lines[index]} up to the next header or C{lines[last]}.

    @return: the hunks and the index of the first line after them.
    """
    hunks: list[Hunk] = []
    current: _OpenHunk | None = None
    while index < last:
        line = lines[index]
        trimmed = line.strip()
        number = index + 1
        if _header(trimmed) is not None:
            break
        if _is_stray_marker(trimmed):
            raise PatchError(REASON_UNEXPECTED, number)
        if trimmed == END_OF_FILE_MARKER:
            if current is None:
                raise PatchError(REASON_EMPTY_HUNK, number)
            hunks.append(current.close(True, current.line))
            current = None
        elif line == "" or line[0] in " -+":
            if current is None:
                if hunks:
                    # Only the first hunk may omit its "@@"; here the previous one ended at
                    # "*** End of File".
                    raise PatchError(REASON_UNEXPECTED, number)
                current = _OpenHunk(number, None)
            current.lines.append(HunkLine(_KINDS[line[:1]], line[1:]))
        else:
            starts, anchor = _hunk_start(line)
            if not starts:
                raise PatchError(REASON_UNEXPECTED, number)
            if current is not None:
                hunks.append(current.close(False, current.line))
            current = _OpenHunk(number, anchor)
        index += 1
    if current is not None:
        hunks.append(current.close(False, current.line))
    return hunks, index


def render_patch(operations: Iterable[Operation]) -> str:
    """
    Write operations as a patch that L{parse_patch} reads back to the same operations.

    Every hunk is written with its C{@@} line, context lines with their leading space.

    @param operations: operations whose paths, anchors and lines contain no line break and whose
        hunk lines and anchors are not themselves markers.
    """
    out = [BEGIN_MARKER]
    for operation in operations:
        if isinstance(operation, AddFile):
            out.append(f"{ADD_PREFIX} {operation.path}")
            out.extend("+" + line for line in operation.lines)
        elif isinstance(operation, DeleteFile):
            out.append(f"{DELETE_PREFIX} {operation.path}")
        else:
            out.append(f"{UPDATE_PREFIX} {operation.path}")
            if operation.move_to is not None:
                out.append(f"{MOVE_PREFIX} {operation.move_to}")
            for hunk in operation.hunks:
                out.append("@@" if hunk.anchor is None else f"@@ {hunk.anchor}")
                out.extend(line.kind + line.text for line in hunk.lines)
                if hunk.end_of_file:
                    out.append(END_OF_FILE_MARKER)
    out.append(END_MARKER)
    return "\n".join(out) + "\n"


def _same(compare: Callable[[str], str]) -> Callable[[Sequence[str], Sequence[str], int], bool]:
    def matches(lines: Sequence[str], pattern: Sequence[str], at: int) -> bool:
        return all(compare(lines[at + k]) == compare(p) for k, p in enumerate(pattern))

    return matches


# The three comparisons of §7.11 step 3, in order.
_COMPARISONS: Final = (
    _same(lambda s: s),
    _same(str.rstrip),
    _same(str.strip),
)


def _find(lines: Sequence[str], pattern: Sequence[str], cursor: int, end_of_file: bool) -> int | None:
    """
    The index where C{pattern} starts at or after C{cursor}, or C{None} (§7.11 step 3).
    """
    last_start = len(lines) - len(pattern)
    if end_of_file and last_start >= cursor:
        for matches in _COMPARISONS:
            if matches(lines, pattern, last_start):
                return last_start
    for matches in _COMPARISONS:
        for at in range(cursor, last_start + 1):
            if matches(lines, pattern, at):
                return at
    return None


def apply_hunks(text: str, hunks: Iterable[Hunk]) -> str:
    """
    Apply an Update's hunks to a file's text (§7.11 "Applying an Update").

    @param text: the file's content, already decoded.
    @return: the new content: the lines joined with C{\\n} plus a final C{\\n} (the empty string when
        no line is left).
    @raise HunkError: a hunk whose anchor or old lines are not found.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    cursor = 0
    for number, hunk in enumerate(hunks, start=1):
        if hunk.anchor is not None:
            anchor = hunk.anchor.strip()
            found = next((at for at in range(cursor, len(lines)) if lines[at].strip() == anchor), None)
            if found is None:
                raise HunkError(number)
            cursor = found + 1
        old, new = hunk.old, hunk.new
        if not old:
            at = cursor if hunk.anchor is not None else len(lines)
            lines[at:at] = new
            cursor = at + len(new)
            continue
        start = _find(lines, old, cursor, hunk.end_of_file)
        if start is None:
            raise HunkError(number)
        lines[start : start + len(old)] = new
        cursor = start + len(new)
    return "".join(line + "\n" for line in lines)
