"""Go (RE2) regular expressions, globs and replacement templates, run on Python's `re`.

The collector compiles patterns with Go's `regexp`; rules written for it
must mean the same here. `go_regex` rewrites RE2 syntax into Python's and
rejects what RE2 rejects (backreferences, lookaround, possessive and atomic
forms) instead of silently accepting Perl extras:

- `\\z` is Python's `\\Z`; `$` without the `m` flag matches only at the very
  end (Python's would also match before a final newline);
- mid-pattern flag groups `(?i)` apply to the rest of their group, as in
  RE2 (Python 3.11 accepts flags only at the start);
- `(?<name>...)`, `\\Q...\\E`, `\\x{HHHH}`, octal escapes and POSIX classes
  `[[:alpha:]]` are translated;
- `\\d \\w \\s \\b` are ASCII as in RE2 (compiled with `re.ASCII`). Case folding
  under `(?i)` is then ASCII only, and Unicode classes `\\pL` are not
  supported (Python's `re` has none): both are reported at compile time or
  documented differences.

`expand` follows Go's `Regexp.Expand` (`$1`, `${1}`, `$name`, `$$`), and
`replace_all` Go's `ReplaceAllString`, which skips an empty match right
after a previous match where Python's `re.sub` does not.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}
_FLAG_GROUP = re.compile(r"\(\?([imsU]*)(?:-([imsU]*))?([:)])")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]+")


class RegexError(ValueError):
    """A pattern Go's regexp would not compile."""


class _Group:
    __slots__ = ("closers", "multiline", "reopen")

    def __init__(self, multiline: bool) -> None:
        self.multiline = multiline
        self.closers = 0  # scoped flag groups opened for `(?flags)` inside this group
        self.reopen: list[str] = []  # their openers, re-emitted after each `|`


def _translate(pattern: str, multiline: bool = False) -> str:
    out: list[str] = []
    stack = [_Group(multiline=multiline)]
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            text, i = _escape(pattern, i, in_class=False)
            out.append(text)
            continue
        if c == "[":
            text, i = _char_class(pattern, i)
            out.append(text)
            continue
        if c == "(":
            if pattern.startswith("(?", i):
                m = _FLAG_GROUP.match(pattern, i)
                if m:
                    on, off, end = m.group(1), m.group(2) or "", m.group(3)
                    if "U" in on + off:
                        raise RegexError("the (?U) ungreedy flag is not supported")
                    if not on and not off:
                        raise RegexError(f"missing argument to flag group at {pattern[i:]!r}")
                    flags = f"(?{on}" + (f"-{off}" if off else "")
                    multiline = ("m" in on) or (stack[-1].multiline and "m" not in off)
                    if end == ")":
                        # Flags for the rest of the current group: a scoped group
                        # closed where the enclosing group ends.
                        top = stack[-1]
                        top.closers += 1
                        top.reopen.append(flags + ":")
                        top.multiline = multiline
                        out.append(flags + ":")
                    else:
                        stack.append(_Group(multiline))
                        out.append(flags + ":")
                    i = m.end()
                    continue
                if pattern.startswith("(?P<", i) or pattern.startswith("(?<", i):
                    start = i + (4 if pattern[i + 2] == "P" else 3)
                    close = pattern.find(">", start)
                    name = pattern[start:close] if close > 0 else ""
                    if not name or not re.fullmatch(r"[A-Za-z0-9_]+", name):
                        raise RegexError(f"invalid named capture: {pattern[i:]!r}")
                    stack.append(_Group(stack[-1].multiline))
                    out.append(f"(?P<{name}>")
                    i = close + 1
                    continue
                raise RegexError(f"invalid or unsupported Perl syntax: {pattern[i : i + 3]!r}")
            stack.append(_Group(stack[-1].multiline))
            out.append("(")
            i += 1
            continue
        if c == ")":
            if len(stack) == 1:
                raise RegexError(f"unexpected ): {pattern!r}")
            group = stack.pop()
            out.append(")" * group.closers + ")")
            i += 1
            continue
        if c == "|":
            top = stack[-1]
            out.append(")" * top.closers + "|" + "".join(top.reopen))
            i += 1
            continue
        if c == "$":
            out.append("$" if stack[-1].multiline else r"\Z")
            i += 1
            continue
        if c in "*+?}" and i + 1 < n and pattern[i + 1] == "+":
            raise RegexError(f"invalid nested repetition operator: {c}+")
        if c == "{":
            m = re.match(r"\{(\d+)(?:,(\d*))?\}", pattern[i:])
            if m and (int(m.group(1)) > 1000 or (m.group(2) and int(m.group(2)) > 1000)):
                raise RegexError(f"invalid repeat count: {m.group(0)}")
        out.append(c)
        i += 1
    if len(stack) != 1:
        raise RegexError(f"missing closing ): {pattern!r}")
    out.append(")" * stack[0].closers)
    return "".join(out)


def _escape(pattern: str, i: int, *, in_class: bool) -> tuple[str, int]:
    """Translate the escape at pattern[i] (a backslash); return text and next index."""
    if i + 1 >= len(pattern):
        raise RegexError("trailing backslash at end of expression")
    e = pattern[i + 1]
    if e == "z" and not in_class:
        return r"\Z", i + 2
    if e == "Q":
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
        nxt = len(pattern) if end < 0 else end + 2
        return (re.escape(literal) if not in_class else _class_escape(literal)), nxt
    if e == "x" and pattern.startswith("{", i + 2):
        end = pattern.find("}", i + 3)
        digits = pattern[i + 3 : end] if end > 0 else ""
        if not digits or not re.fullmatch(r"[0-9A-Fa-f]+", digits) or int(digits, 16) > 0x10FFFF:
            raise RegexError(f"invalid escape sequence: {pattern[i : end + 1]!r}")
        return _char_escape(int(digits, 16)), end + 1
    if e in "01234567":
        octal = re.match(r"[0-7]{1,3}", pattern[i + 1 :])
        assert octal is not None
        text = octal.group(0)
        if e != "0" and len(text) == 1:
            raise RegexError(f"invalid escape sequence: \\{e} (backreferences are not supported)")
        return _char_escape(int(text, 8)), i + 1 + len(text)
    if e in "89":
        raise RegexError(f"invalid escape sequence: \\{e}")
    if e in "pP":
        raise RegexError("Unicode classes \\p and \\P are not supported")
    if e in "ZCeGXRKNgkhHVL":
        raise RegexError(f"invalid escape sequence: \\{e}")
    return pattern[i : i + 2], i + 2


def _char_escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\U{code:08x}"


def _class_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\]^-[&~|" else ch for ch in text)


def _char_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate `[...]` starting at pattern[i]."""
    out = ["["]
    j = i + 1
    n = len(pattern)
    if j < n and pattern[j] == "^":
        out.append("^")
        j += 1
    first = True
    while j < n:
        c = pattern[j]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), j + 1
        first = False
        if c == "\\":
            text, j = _escape(pattern, j, in_class=True)
            out.append(text)
            continue
        if c == "[" and pattern.startswith("[:", j):
            end = pattern.find(":]", j + 2)
            name = pattern[j + 2 : end] if end > 0 else ""
            if name.startswith("^"):
                raise RegexError(f"negated POSIX class [:{name}:] is not supported")
            if name in _POSIX_CLASSES:
                out.append(_POSIX_CLASSES[name])
                j = end + 2
                continue
            if end > 0:
                raise RegexError(f"invalid character class range: [:{name}:]")
        if c in "[&~|":
            out.append("\\" + c)  # literal in RE2; Python warns about set operations
        else:
            out.append(c)
        j += 1
    raise RegexError(f"missing closing ]: {pattern[i:]!r}")


@functools.lru_cache(maxsize=512)
def go_regex(pattern: str) -> re.Pattern[str]:
    """Compile an RE2 pattern for Python's `re` (cached: rules share patterns)."""
    try:
        return re.compile(_translate(pattern), re.ASCII)
    except re.error as e:
        raise RegexError(f"error parsing regexp: {e.msg}: `{pattern}`") from None


@functools.lru_cache(maxsize=256)
def go_regex_lines(pattern: str) -> re.Pattern[str] | None:
    """The pattern run over lines joined by "\\n": it finds a match whenever one line
    has one (a prefilter: a hit still needs checking line by line). None when the
    pattern anchors to the whole text (\\A, \\z), which a joined text would break.
    """
    try:
        source = _translate(pattern, multiline=True)
        if "\\A" in source or "\\Z" in source:
            return None
        return re.compile(source, re.ASCII | re.MULTILINE)
    except (RegexError, re.error):
        return None


def required_literal(pattern: str) -> str | None:
    """A run of plain characters every match of `pattern` must contain, if easy to see.

    Only the pattern's leading literal (after a `^`) is considered, and none
    when the pattern has a top-level `|` or flags: enough for `^json_.*`-style
    stack filters, where `literal in text` is far cheaper than a regex scan.
    """
    depth = 0
    escaped = False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth <= 0:
            return None
    m = re.match(r"\^?([A-Za-z0-9_]+)", pattern)
    if not m:
        return None
    run = m.group(1)
    rest = pattern[m.end() :]
    if rest[:1] in ("*", "?", "{"):
        run = run[:-1]  # the quantifier makes the last character optional
    return run or None


def never_empty(pattern: re.Pattern[str]) -> bool:
    """True when no match can be empty, so Go's and Python's replace-all agree."""
    try:
        from re import _parser

        low, _ = _parser.parse(pattern.pattern, pattern.flags).getwidth()
    except Exception:
        return False
    return bool(low > 0)


def python_template(template: Template, pattern: re.Pattern[str]) -> str:
    """`template` as a `re.sub` template for `pattern` (unknown groups expand to "")."""
    out = []
    for part in template:
        if isinstance(part, int):
            if part <= pattern.groups:
                out.append(f"\\g<{part}>")
        elif part.startswith("\0"):
            if part[1:] in pattern.groupindex:
                out.append(f"\\g<{part[1:]}>")
        else:
            out.append(part.replace("\\", "\\\\"))
    return "".join(out)


# ---- globs (gobwas/glob, as replace_match uses) ---------------------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A compiled full-match regex for a glob: `*`, `?`, `[abc]`, `[!a-z]`, `{a,b}`, `\\x`."""
    out: list[str] = []
    depth = 0
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\":
            if i + 1 >= n:
                raise RegexError("glob: unexpected end of pattern after \\")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif c == "*":
            out.append(".*")
            while i < n and pattern[i] == "*":
                i += 1
        elif c == "?":
            out.append(".")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                raise RegexError(f"glob: unclosed [ in {pattern!r}")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            out.append("[" + ("^" if negate else "") + _class_escape_keep_ranges(body) + "]")
            i = end + 1
        elif c == "{":
            out.append("(?:")
            depth += 1
            i += 1
        elif c == "}" and depth:
            out.append(")")
            depth -= 1
            i += 1
        elif c == "," and depth:
            out.append("|")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    if depth:
        raise RegexError(f"glob: unclosed {{ in {pattern!r}")
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _class_escape_keep_ranges(body: str) -> str:
    return "".join("\\" + ch if ch in "\\]^[&~|" else ch for ch in body)


# ---- replacement templates ------------------------------------------------

Template = tuple[str | int, ...]  # literal text, group number, or "\0name"


def parse_template(template: str) -> Template:
    """Split a Go Expand template into literal text and group references."""
    parts: list[str | int] = []
    text: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c != "$":
            text.append(c)
            i += 1
            continue
        if template.startswith("$$", i):
            text.append("$")
            i += 2
            continue
        name, nxt = _template_name(template, i + 1)
        if name is None:
            text.append("$")  # malformed: Go keeps the $ as text
            i += 1
            continue
        if text:
            parts.append("".join(text))
            text = []
        parts.append(_group_ref(name))
        i = nxt
    if text:
        parts.append("".join(text))
    return tuple(parts)


def _template_name(template: str, i: int) -> tuple[str | None, int]:
    if template.startswith("{", i):
        end = template.find("}", i + 1)
        name = template[i + 1 : end] if end > 0 else ""
        if not name or not _NAME_CHARS.fullmatch(name):
            return None, i
        return name, end + 1
    m = _NAME_CHARS.match(template, i)
    if not m:
        return None, i
    return m.group(0), m.end()


def _group_ref(name: str) -> str | int:
    if name.isdigit() and not (name[0] == "0" and len(name) > 1) and len(name) <= 8:
        return int(name)
    return "\0" + name


def expand(template: Template, match: re.Match[str]) -> str:
    """The replacement text for one match; unknown groups expand to ""."""
    if len(template) == 1 and isinstance(template[0], str) and not template[0].startswith("\0"):
        return template[0]
    out = []
    for part in template:
        if isinstance(part, int):
            if part <= (match.re.groups or 0):
                out.append(match.group(part) or "")
        elif part.startswith("\0"):
            name = part[1:]
            if name in match.re.groupindex:
                out.append(match.group(name) or "")
        else:
            out.append(part)
    return "".join(out)


def replace_all(pattern: re.Pattern[str], text: str, repl: Callable[[re.Match[str]], str]) -> str:
    """Go's ReplaceAllString: no replacement for an empty match right after a match."""
    out: list[str] = []
    last = 0
    for m in pattern.finditer(text):
        start, end = m.span()
        out.append(text[last:start])
        if end > last or start == 0:
            out.append(repl(m))
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)
