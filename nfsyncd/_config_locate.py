"""Find the line each TOML key path was written on.

``tomllib`` returns plain dicts with no positions, yet a config error is only useful when it
says where to look. This module re-scans the text (already known to be valid TOML) just far
enough to see headers, keys and array elements, and records the line of each. It is best
effort: anything it does not understand stops the scan and keeps what was mapped so far, so a
surprise costs a line number in a message, never a crash.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import tomllib

__all__ = ["KeyPath", "LineMap", "locate"]

KeyPath = tuple[str | int, ...]
"""Keys and array indices from the document root, e.g. ``("sync", "links", 0, "port")``."""

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_LITERAL = re.compile(r"'[^'\n]*'")
_ML_BASIC = re.compile(r'"""(?:[^\\]|\\.)*?"""(?:"{1,2})?', re.DOTALL)
_ML_LITERAL = re.compile(r"'''.*?'''(?:'{1,2})?", re.DOTALL)
_SCALAR = re.compile(r"[^,\]}\r\n#]*")
_NEWLINE = re.compile(r"\n")


class _Stop(Exception):
    """The scanner met something it does not model; keep what it has."""


class LineMap:
    """Line numbers (1-based) of the key paths located in one document."""

    __slots__ = ("_implicit", "_lines")

    def __init__(self, lines: dict[KeyPath, int], implicit: dict[KeyPath, int]) -> None:
        self._lines = lines
        self._implicit = implicit

    def exact(self, path: KeyPath) -> int | None:
        """The line where ``path`` itself was written, if it was seen."""
        line = self._lines.get(path)
        return self._implicit.get(path) if line is None else line

    def nearest(self, path: KeyPath) -> int | None:
        """The line of ``path`` or else of its closest located ancestor.

        For a key that is absent this gives the header of the table that should hold it, and
        for a value inside an inline table the line of the key that holds the table. A table
        made implicitly (by a dotted key or a deeper header) has no header: it is located
        itself (at its first dotted key) but a key missing from it gets no line.
        """
        line = self.exact(path)
        if line is not None:
            return line
        while path:
            line = self._lines.get(path)
            if line is not None:
                return line
            path = path[:-1]
        return None


def locate(text: str) -> LineMap:
    """Map the key paths of a TOML document to their lines."""
    scanner = _Scanner(text)
    # Best effort: the lines found before a surprise are still right.
    with contextlib.suppress(_Stop, IndexError, ValueError):
        scanner.run()
    return LineMap(scanner.lines, scanner.implicit)


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.newlines = [m.start() for m in _NEWLINE.finditer(text)]
        self.lines: dict[KeyPath, int] = {}
        self.implicit: dict[KeyPath, int] = {}  # tables made by a dotted key: a.b = 1 makes a
        self.array_tables: dict[KeyPath, int] = {}  # [[x]] path -> elements seen so far
        self.table: KeyPath = ()

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def peek(self, token: str) -> bool:
        return self.text.startswith(token, self.pos)

    def run(self) -> None:
        while True:
            self.skip_trivia()
            if self.pos >= len(self.text):
                return
            if self.peek("["):
                self.header()
            else:
                self.keyval(self.table)

    def skip_trivia(self, *, newlines: bool = True) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r" or (newlines and char == "\n"):
                self.pos += 1
            elif char == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def resolve(self, keys: list[str]) -> KeyPath:
        """Turn header keys into a path, descending into the last element of each [[array]]."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            count = self.array_tables.get(path)
            if count is not None:
                path = (*path, count - 1)
        return path

    def header(self) -> None:
        line = self.line_at(self.pos)
        is_array = self.peek("[[")
        self.pos += 2 if is_array else 1
        keys = self.key()
        self.skip_trivia(newlines=False)
        closing = "]]" if is_array else "]"
        if not self.peek(closing):
            raise _Stop
        self.pos += len(closing)
        if is_array:
            array = (*self.resolve(keys[:-1]), keys[-1])
            index = self.array_tables.get(array, 0)
            self.array_tables[array] = index + 1
            self.lines.setdefault(array, line)
            self.table = (*array, index)
        else:
            self.table = self.resolve(keys)
        self.lines[self.table] = line

    def keyval(self, base: KeyPath) -> None:
        line = self.line_at(self.pos)
        keys = self.key()
        for depth in range(1, len(keys)):
            self.implicit.setdefault(base + tuple(keys[:depth]), line)
        path = base + tuple(keys)
        self.skip_trivia(newlines=False)
        if not self.peek("="):
            raise _Stop
        self.pos += 1
        self.skip_trivia(newlines=False)
        self.lines.setdefault(path, line)
        self.value(path)

    def key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self.skip_trivia(newlines=False)
            if self.peek('"'):
                parts.append(_decode_basic(self.match(_BASIC)))
            elif self.peek("'"):
                parts.append(self.match(_LITERAL)[1:-1])
            else:
                parts.append(self.match(_BARE_KEY))
            self.skip_trivia(newlines=False)
            if not self.peek("."):
                return parts
            self.pos += 1

    def match(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None or found.end() == self.pos:
            raise _Stop
        self.pos = found.end()
        return found.group()

    def value(self, path: KeyPath) -> None:
        if self.peek('"""'):
            self.match(_ML_BASIC)
        elif self.peek("'''"):
            self.match(_ML_LITERAL)
        elif self.peek('"'):
            self.match(_BASIC)
        elif self.peek("'"):
            self.match(_LITERAL)
        elif self.peek("["):
            self.array(path)
        elif self.peek("{"):
            self.inline_table(path)
        else:
            self.match(_SCALAR)

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_trivia()
            if self.peek("]"):
                self.pos += 1
                return
            element = (*path, index)
            self.lines.setdefault(element, self.line_at(self.pos))
            self.value(element)
            self.skip_trivia()
            if self.peek(","):
                self.pos += 1
                index += 1
            elif not self.peek("]"):
                raise _Stop

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip_trivia()
            if self.peek("}"):
                self.pos += 1
                return
            self.keyval(path)
            self.skip_trivia()
            if self.peek(","):
                self.pos += 1
            elif not self.peek("}"):
                raise _Stop


def _decode_basic(quoted: str) -> str:
    # Escapes in quoted keys are rare; let the real parser decode them.
    value = tomllib.loads(f"k = {quoted}")["k"]
    if not isinstance(value, str):  # pragma: no cover - _BASIC only matches strings
        raise _Stop
    return value
