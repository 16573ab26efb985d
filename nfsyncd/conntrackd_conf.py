"""Reading conntrackd.conf (conntrack-tools 1.4.x), for ``nfsyncctl config import``.

The lexer reproduces the token rules of conntrackd's own scanner (longest match wins, ties go
to the earlier rule), because its quirks decide what a real file means: ``bad0`` is an IPv6
address, a path runs to the next space, ``Nice 5`` is no signed number, and only a spelling
of ``persistent`` that ends in a capital T is the ALARM alias. The parser checks each block
against the options conntrackd accepts there and stops at the first error, like conntrackd,
but names what was expected instead of "syntax error". Comments are kept in the tree so the
TOML emitter (:mod:`nfsyncd._conntrackd_emit`) can carry them over.

Stdlib only: ``nfsyncctl`` must start fast and must not import trio or pyroute2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "Block",
    "Comment",
    "ConfFile",
    "ConntrackdConfError",
    "ImportResult",
    "Stmt",
    "Token",
    "import_conntrackd_conf",
    "parse_conntrackd_conf",
]


class ConntrackdConfError(Exception):
    """A conntrackd.conf that conntrackd would reject, or that cannot be converted.

    ``symbol`` is the token where reading stopped ("" at the end of the file) and
    ``expected`` says what would have been valid there.
    """

    def __init__(self, source: str, line: int, symbol: str, expected: str) -> None:
        self.source = source
        self.line = line
        self.symbol = symbol
        self.expected = expected
        super().__init__(str(self))

    def __str__(self) -> str:
        near = "near end of file" if self.symbol == "" else f"near '{self.symbol}'"
        return f"{self.source}:{self.line}: {near}: expected {self.expected}"


@dataclass(frozen=True)
class ImportResult:
    toml: str
    notes: list[str]


def import_conntrackd_conf(text: str, source: str = "conntrackd.conf") -> ImportResult:
    """Convert conntrackd.conf text to nfsyncd TOML; raise ConntrackdConfError if invalid."""
    from nfsyncd._conntrackd_emit import convert  # the emitter imports this module

    toml, notes = convert(parse_conntrackd_conf(text, source))
    return ImportResult(toml=toml, notes=notes)


# --------------------------------------------------------------------------- syntax tree


@dataclass(eq=False)
class Token:
    kind: str  # kw on off num signed ip path mode str char comment eof
    text: str
    line: int
    blank_before: bool = False  # an empty line separates it from what came before


@dataclass(eq=False)
class Comment:
    text: str  # starts with "#", trailing whitespace removed
    line: int
    blank_before: bool = False  # an empty line separated it from what came before


@dataclass(eq=False)
class Block:
    name: str  # how error messages and notes call it, e.g. "Mode FTFW", "Multicast Default"
    open_line: int
    close: Token
    items: list[Stmt] = field(default_factory=list)
    footer: list[Comment] = field(default_factory=list)  # comments before the closing brace


@dataclass(eq=False)
class Stmt:
    """One statement: its words (keyword first; list entries have only values) and block."""

    words: list[Token]
    block: Block | None = None
    leading: list[Comment] = field(default_factory=list)
    trailing: list[Comment] = field(default_factory=list)
    parent: Stmt | None = field(default=None, repr=False)

    @property
    def keyword(self) -> str:
        return self.words[0].text

    @property
    def line(self) -> int:
        return self.words[0].line

    @property
    def value(self) -> Token:
        return self.words[-1]

    def head(self) -> str:
        return " ".join(w.text for w in self.words)

    def flat(self, limit: int = 100) -> str:
        """The statement on one line, block included, as notes quote it."""
        text = self.head()
        if self.block is not None:
            inner = " ".join(s.flat(limit) for s in self.block.items)
            text += " { " + inner + " }" if inner else " { }"
        return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(eq=False)
class ConfFile:
    source: str
    items: list[Stmt]
    footer: list[Comment]
    last_line: int


# --------------------------------------------------------------------------------- lexer

# Every keyword conntrackd's scanner knows; they are case-sensitive.
_KEYWORDS = (  # noqa: SIM905 (a word list reads better as one string)
    "UNIX IPv4_address IPv6_address IPv4_Destination_Address IPv6_Destination_Address "
    "IPv4_interface IPv6_interface Interface Multicast UDP TCP HashSize RefreshTime "
    "CacheTimeout CommitTimeout HashLimit Path Backlog Group Port LogFile Syslog LockFile "
    "General Sync Stats SocketBufferSize SocketBufferSizeMaxGrown SocketBufferSizeMaxGrowth "
    "NetlinkBufferSize NetlinkBufferSizeMaxGrowth Mode ResendQueueSize Checksum ACKWindowSize "
    "for SYN_SENT SYN_RECV ESTABLISHED FIN_WAIT CLOSE_WAIT LAST_ACK TIME_WAIT CLOSE CLOSED "
    "LISTEN SndSocketBuffer RcvSocketBuffer Filter Protocol Address State Accept Ignore "
    "PurgeTimeout From Userspace Kernelspace EventIterationLimit Default PollSecs "
    "NetlinkOverrunResync Nice Scheduler Type Priority NetlinkEventsReliable "
    "DisableInternalCache DisableExternalCache Options TCPWindowTracking ExpectationSync "
    "ErrorQueueLength Helper QueueNum QueueLen Policy ExpectMax ExpectTimeout Systemd "
    "StartupResync Setup"
).split()
KEYWORDS = frozenset(_KEYWORDS)

_KW_RE = re.compile("|".join(re.escape(k) for k in sorted(_KEYWORDS, key=len, reverse=True)))
_HEX = "[0-9a-fA-F]{1,4}"
_IP6_RE = re.compile(
    rf"(?:(?:{_HEX}:?){{0,7}}::(?:{_HEX}:?){{0,7}}|(?:{_HEX}:){{0,7}}{_HEX})(?:/[0-9]+)?"
)
_IP6_RUN_RE = re.compile(r"[0-9a-fA-F:]{1,64}(?:/[0-9]{0,8})?")
# The rules after the keywords, in the scanner's order (the order breaks ties).
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("on", re.compile(r"[oO][nN]|[yY][eE][sS]")),
    ("off", re.compile(r"[oO][fF][fF]|[nN][oO]")),
    ("num", re.compile(r"[0-9]+")),
    ("signed", re.compile(r"[-+][0-9]+")),
    ("ip", re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+(?:/[0-9]+)?")),
    ("ip6", _IP6_RE),
    ("path", re.compile(r"/[^\"\n ]*")),
    ("mode", re.compile(r"[Aa][Ll][Aa][Rr][Mm]")),
    # conntrackd's pattern ends in [T|T]: only a final capital T is recognised.
    ("mode", re.compile(r"[Pp][Ee][Rr][Ss][Ii][Ss][Tt][Ee][Nn]T")),
    ("mode", re.compile(r"[Ff][Tt][Ff][Ww]")),
    ("mode", re.compile(r"[Nn][Aa][Cc][Kk]")),
    ("mode", re.compile(r"[Nn][Oo][Tt][Rr][Aa][Cc][Kk]")),
    ("str", re.compile(r"[a-zA-Z][a-zA-Z0-9._-]*")),
)


def _ip6_length(text: str, pos: int) -> int:
    """Longest IPv6-looking token at pos (regex alternation alone is not longest-match)."""
    run = _IP6_RUN_RE.match(text, pos)
    if run is None:
        return 0
    for end in range(run.end(), pos, -1):
        if _IP6_RE.fullmatch(text, pos, end):
            return end - pos
    return 0


def tokenize(text: str) -> list[Token]:
    """Split conntrackd.conf text into tokens, comments included, ending with an eof token."""
    text = text.replace("\r\n", "\n")
    tokens: list[Token] = []
    pos, line, size = 0, 1, len(text)
    newlines = 2  # newlines since the last token or comment; 2+ means an empty line between
    line_has_token = False
    while pos < size:
        ch = text[pos]
        if ch == "\n":
            line += 1
            pos += 1
            newlines += 1
            line_has_token = False
            continue
        if ch in " \t\r":
            pos += 1
            continue
        if ch == "#":
            end = text.find("\n", pos)
            end = size if end < 0 else end
            body = text[pos:end].rstrip()
            kind = "trailing" if line_has_token else "comment"
            tokens.append(Token(kind, body, line))
            if kind == "comment" and newlines >= 2 and tokens[:-1]:
                tokens[-1] = Token("comment-blank", body, line)
            newlines = 0
            pos = end
            continue
        best_kind, best_len = "char", 1
        kw = _KW_RE.match(text, pos)
        if kw is not None:
            best_kind, best_len = "kw", kw.end() - pos
        for kind, rx in _RULES:
            n = _ip6_length(text, pos) if kind == "ip6" else _match_len(rx, text, pos)
            if n > best_len or (n == best_len and best_kind == "char" and n > 0):
                best_kind, best_len = ("ip" if kind == "ip6" else kind), n
        word = text[pos : pos + best_len]
        if best_kind == "path":
            word = word.rstrip("\t\r")
        tokens.append(Token(best_kind, word, line, newlines >= 2 and bool(tokens)))
        pos += best_len
        newlines = 0
        line_has_token = True
    tokens.append(Token("eof", "", line))
    return tokens


def _match_len(rx: re.Pattern[str], text: str, pos: int) -> int:
    m = rx.match(text, pos)
    return 0 if m is None else m.end() - pos


# ------------------------------------------------------------------------------- grammar


@dataclass(frozen=True)
class _Opt:
    values: tuple[str, ...] = ()  # one slot per value: "num|path", "Accept|Ignore", ...
    block: str | None = None  # context of the block that follows, if any
    prefix: tuple[str, ...] = ()  # optional leading keywords ("Default", or "From" + where)


_NUM, _BOOL, _PATH, _IP, _STR = "num", "on|off", "path", "ip", "str"
_LINK_COMMON = {
    "IPv4_address": _Opt((_IP,)),
    "IPv6_address": _Opt((_IP,)),
}
_UNICAST = {
    **_LINK_COMMON,
    "IPv4_Destination_Address": _Opt((_IP,)),
    "IPv6_Destination_Address": _Opt((_IP,)),
    "Interface": _Opt((_STR,)),
    "Port": _Opt((_NUM,)),
    "SndSocketBuffer": _Opt((_NUM,)),
    "RcvSocketBuffer": _Opt((_NUM,)),
    "Checksum": _Opt((_BOOL,)),
}
_CONTEXTS: dict[str, dict[str, _Opt]] = {
    "top": {
        "General": _Opt(block="General"),
        "Sync": _Opt(block="Sync"),
        "Stats": _Opt(block="Stats"),
        "Helper": _Opt(block="Helper"),
    },
    "General": {
        "HashSize": _Opt((_NUM,)),
        "HashLimit": _Opt((_NUM,)),
        "LogFile": _Opt(("on|off|path",)),
        "Syslog": _Opt(("on|off|str",)),
        "LockFile": _Opt((_PATH,)),
        "UNIX": _Opt(block="UNIX"),
        "NetlinkBufferSize": _Opt((_NUM,)),
        "SocketBufferSize": _Opt((_NUM,)),
        "NetlinkBufferSizeMaxGrowth": _Opt((_NUM,)),
        "SocketBufferSizeMaxGrown": _Opt((_NUM,)),
        "SocketBufferSizeMaxGrowth": _Opt((_NUM,)),
        "NetlinkOverrunResync": _Opt(("on|off|num",)),
        "NetlinkEventsReliable": _Opt((_BOOL,)),
        "PollSecs": _Opt((_NUM,)),
        "EventIterationLimit": _Opt((_NUM,)),
        "Filter": _Opt(block="Filter", prefix=("From", "Userspace|Kernelspace")),
        "Scheduler": _Opt(block="Scheduler"),
        "Nice": _Opt(("signed",)),
        "Systemd": _Opt((_BOOL,)),
    },
    "UNIX": {"Path": _Opt((_PATH,)), "Backlog": _Opt((_NUM,))},
    "Scheduler": {"Type": _Opt((_STR,)), "Priority": _Opt((_NUM,))},
    "Filter": {
        "Protocol": _Opt(("Accept|Ignore",), block="ProtocolList"),
        "Address": _Opt(("Accept|Ignore",), block="AddressList"),
        "State": _Opt(("Accept|Ignore",), block="StateList"),
    },
    "AddressList": {"IPv4_address": _Opt((_IP,)), "IPv6_address": _Opt((_IP,))},
    "Sync": {
        "RefreshTime": _Opt((_NUM,)),
        "CacheTimeout": _Opt((_NUM,)),
        "CommitTimeout": _Opt((_NUM,)),
        "PurgeTimeout": _Opt((_NUM,)),
        "Mode": _Opt(("mode",), block="Mode"),
        "Multicast": _Opt(block="Multicast", prefix=("Default",)),
        "UDP": _Opt(block="UDP", prefix=("Default",)),
        "TCP": _Opt(block="TCP", prefix=("Default",)),
        "Options": _Opt(block="Options"),
    },
    "Mode FTFW": {
        "ResendQueueSize": _Opt((_NUM,)),
        "CommitTimeout": _Opt((_NUM,)),
        "PurgeTimeout": _Opt((_NUM,)),
        "ACKWindowSize": _Opt((_NUM,)),
        "DisableExternalCache": _Opt((_BOOL,)),
        "StartupResync": _Opt((_BOOL,)),
    },
    "Mode ALARM": {
        "RefreshTime": _Opt((_NUM,)),
        "CacheTimeout": _Opt((_NUM,)),
        "CommitTimeout": _Opt((_NUM,)),
        "PurgeTimeout": _Opt((_NUM,)),
    },
    "Mode NOTRACK": {
        "CommitTimeout": _Opt((_NUM,)),
        "PurgeTimeout": _Opt((_NUM,)),
        "DisableInternalCache": _Opt((_BOOL,)),
        "DisableExternalCache": _Opt((_BOOL,)),
        "StartupResync": _Opt((_BOOL,)),
    },
    "Multicast": {
        **_LINK_COMMON,
        "IPv4_interface": _Opt((_IP,)),
        "IPv6_interface": _Opt((_IP,)),
        "Interface": _Opt((_STR,)),
        "Group": _Opt((_NUM,)),
        "SndSocketBuffer": _Opt((_NUM,)),
        "RcvSocketBuffer": _Opt((_NUM,)),
        "Checksum": _Opt((_BOOL,)),
    },
    "UDP": _UNICAST,
    "TCP": {**_UNICAST, "ErrorQueueLength": _Opt((_NUM,))},
    "Options": {
        "TCPWindowTracking": _Opt((_BOOL,)),
        "ExpectationSync": _Opt((_BOOL,), block="ExpectList"),  # a value or a block
    },
    "Stats": {"LogFile": _Opt(("on|off|path",)), "Syslog": _Opt(("on|off|str",))},
    "Helper": {
        "Setup": _Opt((_BOOL,)),
        "Type": _Opt((_STR, _STR, _STR), block="HelperType"),
    },
    "HelperType": {
        "QueueNum": _Opt((_NUM,)),
        "QueueLen": _Opt((_NUM,)),
        "Policy": _Opt((_STR,), block="Policy"),
    },
    "Policy": {"ExpectMax": _Opt((_NUM,)), "ExpectTimeout": _Opt((_NUM,))},
}
_MODES = {"alarm": "ALARM", "persistent": "ALARM", "ftfw": "FTFW", "nack": "FTFW"}
TCP_STATES = (
    *("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT"),
    *("LAST_ACK", "TIME_WAIT", "CLOSE", "CLOSED", "LISTEN"),
)
MAX_NUMBER = 2**31 - 1  # conntrackd reads numbers into a C int

_KIND_WORDS = {
    "num": "a number",
    "signed": "a signed number such as -5 or +5",
    "on": "on",
    "off": "off",
    "path": "an absolute path",
    "ip": "an IP address",
    "str": "a name",
    "mode": "FTFW, ALARM or NOTRACK",
}


def mode_of(token: Token) -> str:
    """The mode a ``mode`` token names: FTFW, ALARM or NOTRACK (aliases resolved)."""
    return _MODES.get(token.text.lower(), "NOTRACK")


def _describe(slot: str) -> str:
    words = [_KIND_WORDS.get(alt, alt) for alt in slot.split("|")]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _matches(token: Token, slot: str) -> bool:
    for alt in slot.split("|"):
        if alt in _KIND_WORDS:
            if token.kind == alt:
                return True
        elif token.kind == "kw" and token.text == alt:
            return True
    return False


def _one_of(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


# -------------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = tokenize(text)
        self.pos = 0
        self.pending: list[Comment] = []  # own-line comments not yet given to a statement
        self.last: Stmt | None = None  # the statement a same-line comment belongs to
        self.last_line = 0
        self.current: Stmt | None = None  # statement whose words are being read

    # -- token stream with comments routed aside

    def _skip_comments(self) -> None:
        while True:
            tok = self.tokens[self.pos]
            if tok.kind == "trailing":
                target = self.current or self.last
                if target is not None and self.last_line == tok.line:
                    target.trailing.append(Comment(tok.text, tok.line))
                else:
                    self.pending.append(Comment(tok.text, tok.line))
            elif tok.kind in ("comment", "comment-blank"):
                if self.current is not None:
                    self.current.trailing.append(Comment(tok.text, tok.line))
                else:
                    self.pending.append(Comment(tok.text, tok.line, tok.kind == "comment-blank"))
            else:
                return
            self.pos += 1

    def peek(self) -> Token:
        self._skip_comments()
        return self.tokens[self.pos]

    def take(self) -> Token:
        tok = self.peek()
        self.pos += 1
        self.last_line = tok.line
        return tok

    def error(self, tok: Token, expected: str) -> ConntrackdConfError:
        return ConntrackdConfError(self.source, tok.line, tok.text, expected)

    # -- grammar

    def parse(self) -> ConfFile:
        items: list[Stmt] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                break
            items.append(self.statement("top", None, None))
        footer, self.pending = self.pending, []
        return ConfFile(self.source, items, footer, self.tokens[-1].line)

    def statement(self, ctx: str, parent: Stmt | None, block: Block | None) -> Stmt:
        tok = self.peek()
        options = _CONTEXTS[ctx]
        opt = options.get(tok.text) if tok.kind == "kw" else None
        if opt is None:
            raise self.error(tok, self._unknown(tok, ctx, block))
        stmt = Stmt([], leading=self.pending, parent=parent)
        self.pending = []
        self.current = stmt
        stmt.words.append(self.take())
        keyword = tok.text
        if opt.prefix:
            self._prefix(stmt, opt.prefix)
        for index, slot in enumerate(opt.values):
            nxt = self.peek()
            if keyword == "ExpectationSync" and nxt.text == "{" and nxt.kind == "char":
                break
            if not _matches(nxt, slot):
                raise self.error(nxt, self._bad_value(stmt, slot, nxt, index))
            if nxt.kind == "num" and int(nxt.text) > MAX_NUMBER:
                raise self.error(nxt, f"a number up to {MAX_NUMBER} after {keyword}")
            stmt.words.append(self.take())
        child = opt.block
        if keyword == "ExpectationSync" and len(stmt.words) > 1:
            child = None
        if child == "Mode":
            child = "Mode " + mode_of(stmt.value)
        if child is not None:
            self.block(stmt, child)
        self.current = None
        self.last = stmt
        return stmt

    def _prefix(self, stmt: Stmt, prefix: tuple[str, ...]) -> None:
        nxt = self.peek()
        if nxt.kind == "kw" and nxt.text == prefix[0]:
            stmt.words.append(self.take())
            for slot in prefix[1:]:
                nxt = self.peek()
                if not _matches(nxt, slot):
                    raise self.error(nxt, f"{_describe(slot)} after {stmt.head()}")
                stmt.words.append(self.take())

    def block(self, stmt: Stmt, ctx: str) -> None:
        opener = self.peek()
        if not (opener.kind == "char" and opener.text == "{"):
            raise self.error(opener, self._no_brace(stmt))
        self.take()
        self.current = None
        self.last = stmt
        name = stmt.head().removesuffix(" Default") if ctx != "top" else ctx
        block = Block(name, opener.line, opener)
        stmt.block = block
        while True:
            tok = self.peek()
            if tok.kind == "char" and tok.text == "}":
                block.footer, self.pending = self.pending, []
                block.close = self.take()
                self.last = stmt
                return
            if tok.kind == "eof":
                raise self.error(
                    tok, f"'}}' to close {name} (opened at line {opener.line})" + self._path_hint()
                )
            if ctx in ("ProtocolList", "ExpectList"):
                block.items.append(self.list_item(ctx, stmt, block))
            elif ctx == "StateList":
                block.items.append(self.state_group(stmt, block))
            else:
                block.items.append(self.statement(ctx, stmt, block))

    def list_item(self, ctx: str, parent: Stmt, block: Block) -> Stmt:
        tok = self.peek()
        ok = tok.kind == "str" or (
            ctx == "ProtocolList" and tok.kind == "kw" and tok.text in ("TCP", "UDP")
        )
        if not ok:
            what = (
                "a protocol name (TCP, UDP or a name from /etc/protocols)"
                if ctx == "ProtocolList"
                else "a helper name"
            )
            raise self.error(tok, f"{what} or '}}' in {block.name}")
        stmt = Stmt([], leading=self.pending, parent=parent)
        self.pending = []
        stmt.words.append(self.take())
        self.last = stmt
        return stmt

    def state_group(self, parent: Stmt, block: Block) -> Stmt:
        stmt = Stmt([], leading=self.pending, parent=parent)
        self.pending = []
        self.current = stmt
        states = ", ".join(TCP_STATES)
        while True:
            tok = self.peek()
            if tok.kind == "kw" and tok.text in TCP_STATES:
                stmt.words.append(self.take())
                continue
            if tok.kind == "kw" and tok.text == "for":
                stmt.words.append(self.take())
                nxt = self.peek()
                if not (nxt.kind == "kw" and nxt.text == "TCP"):
                    raise self.error(nxt, "TCP after 'for' (states exist only for TCP)")
                stmt.words.append(self.take())
                self.current = None
                self.last = stmt
                return stmt
            if stmt.words:
                raise self.error(tok, f"another TCP state or 'for TCP' in {block.name}")
            raise self.error(tok, f"a TCP state ({states}), 'for TCP' or '}}' in {block.name}")

    # -- error texts

    def _unknown(self, tok: Token, ctx: str, block: Block | None) -> str:
        names = list(_CONTEXTS[ctx])
        if block is None:
            text = "one of " + ", ".join(names)
        else:
            text = "one of " + ", ".join(names) + " or '}'"
        near = [n for n in names if n.lower() == tok.text.lower()]
        if near and tok.text not in names:
            text += f" (keywords are case-sensitive: did you mean {near[0]}?)"
        elif tok.kind == "kw" and block is not None:
            text += f" ({tok.text} is not valid inside {block.name})"
        elif tok.kind == "kw" and block is None:
            text += f" ({tok.text} is not valid outside a section)"
        return text

    def _bad_value(self, stmt: Stmt, slot: str, tok: Token, index: int) -> str:
        keyword = stmt.keyword
        text = f"{_describe(slot)} after {stmt.head()}"
        if keyword == "ExpectationSync":
            text = "on, off or '{' after ExpectationSync"
        elif keyword == "Type" and index == 1:
            text = f"inet or inet6 after {stmt.head()}"
        elif keyword == "Type" and index == 2:
            text = f"tcp or udp after {stmt.head()}"
        elif keyword == "Nice" and tok.kind == "num":
            text += " (conntrackd only accepts a number with an explicit sign here)"
        elif slot == "path" and tok.kind in ("str", "kw", "mode", "on", "off"):
            text += " (paths must start with '/')"
        elif slot == "mode" and tok.text.lower() == "persistent":
            text += " (conntrackd 1.4 only recognises this old alias spelled with a capital T"
            text += " at the end, e.g. PERSISTENT; write ALARM)"
        elif slot == "str" and tok.kind in ("ip", "num"):
            text += f" ('{tok.text}' reads as a number or address)"
        return text

    def _path_hint(self) -> str:
        for tok in self.tokens[: self.pos]:
            if tok.kind == "path" and "}" in tok.text:
                return (
                    f"; the path at line {tok.line} swallowed a '}}': conntrackd reads a path "
                    "up to the next space"
                )
        return ""

    def _no_brace(self, stmt: Stmt) -> str:
        if stmt.keyword in ("Multicast", "UDP", "TCP") and len(stmt.words) == 1:
            return f"'{{' or Default after {stmt.keyword}"
        if stmt.keyword == "Filter" and len(stmt.words) == 1:
            return "'{' or From after Filter"
        return f"'{{' after {stmt.head()}"


def parse_conntrackd_conf(text: str, source: str = "conntrackd.conf") -> ConfFile:
    """Parse conntrackd.conf into a tree that keeps comments and line numbers.

    Raises ConntrackdConfError at the first construct conntrackd's grammar rejects.
    """
    return _Parser(text, source).parse()
