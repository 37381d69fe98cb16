"""OTTL literals: Go's string escapes, int64 and float64 ranges, and their text form.

The collector unquotes strings with Go's `strconv.Unquote`, so the escapes
are Go's: `\\a \\b \\f \\n \\r \\t \\v \\\\ \\"`, `\\xHH` and `\\OOO` (bytes),
`\\uHHHH` and `\\UHHHHHHHH` (code points); a raw newline inside the quotes
is an error. Byte escapes that do not form UTF-8 become U+FFFD, since a
Python str cannot hold them.
"""

from __future__ import annotations

import math

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1

_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}
_HEX = set("0123456789abcdefABCDEF")


class LiteralError(ValueError):
    """A literal the collector's parser rejects; `offset` is within the token."""

    def __init__(self, message: str, offset: int = 0) -> None:
        super().__init__(message)
        self.offset = offset


def unquote(token: str) -> str:
    """Decode a double-quoted OTTL string token (quotes included)."""
    body = token[1:-1]
    if "\\" not in body:
        if "\n" in body:
            raise LiteralError("newline in string", body.index("\n") + 1)
        return body
    out = bytearray()
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "\n":
            raise LiteralError("newline in string", i + 1)
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        if i + 1 >= n:
            raise LiteralError("unterminated escape", i + 1)
        e = body[i + 1]
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e].encode()
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                raise LiteralError(f"invalid \\{e} escape", i + 1)
            value = int(digits, 16)
            if e == "x":
                out.append(value)
            else:
                if value > 0x10FFFF or 0xD800 <= value <= 0xDFFF:
                    raise LiteralError(f"invalid code point \\{e}{digits}", i + 1)
                out += chr(value).encode()
            i += 2 + width
        elif e in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits):
                raise LiteralError("invalid octal escape", i + 1)
            value = int(digits, 8)
            if value > 255:
                raise LiteralError("octal escape above \\377", i + 1)
            out.append(value)
            i += 4
        else:
            raise LiteralError(f"unknown escape \\{e}", i + 1)
    return out.decode("utf-8", errors="replace")


def quote(text: str) -> str:
    """The OTTL string token for `text` (inverse of `unquote`)."""
    parts = ['"']
    for ch in text:
        if ch == '"':
            parts.append('\\"')
        elif ch == "\\":
            parts.append("\\\\")
        elif ch == "\n":
            parts.append("\\n")
        elif ch == "\t":
            parts.append("\\t")
        elif ch == "\r":
            parts.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            parts.append(f"\\x{ord(ch):02x}")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            parts.append("\ufffd")  # a lone surrogate has no UTF-8 form
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)


def parse_int(token: str) -> int:
    value = int(token)
    if value > INT64_MAX:
        raise LiteralError(f"integer {token} out of int64 range")
    return value


def parse_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):
        raise LiteralError(f"float {token} out of float64 range")
    return value


def parse_bytes(token: str) -> bytes:
    digits = token[2:]
    if len(digits) % 2:
        raise LiteralError("odd number of hex digits in byte literal")
    return bytes.fromhex(digits)


def render_float(value: float) -> str:
    """A FLOAT token for a finite float (always with a dot, as the lexer needs)."""
    text = repr(float(value))
    if "e" in text and "." not in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}.0e{exponent}"
    return text


def wrap_int64(value: int) -> int:
    """Two's-complement wrap, as Go's int64 arithmetic overflows."""
    if INT64_MIN <= value <= INT64_MAX:
        return value
    return ((value - INT64_MIN) & ((1 << 64) - 1)) + INT64_MIN
