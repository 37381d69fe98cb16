"""Go's `fmt.Sprintf`, for the Format converter and replace_*'s replacement format.

Covers the verbs rules use: %v %s %d %f %F %e %E %g %G %x %X %o %b %t %q %c
%%, with flags `+ - # 0 space`, width and precision. A value of the wrong
type for its verb, a missing argument and extra arguments are written the
way Go writes them (`%!d(string=x)`, `%!d(MISSING)`, `%!(EXTRA int64=1)`).
"""

from __future__ import annotations

import math
import re
from typing import Any

from profiler.ottl.values import format_float_e, format_float_g, type_name

_SPEC = re.compile(r"%([-+# 0]*)(\d+|\*)?(?:\.(\d*|\*))?(.)?", re.DOTALL)


def sprintf(fmt: str, args: list[Any]) -> str:
    out: list[str] = []
    argi = 0
    i = 0
    n = len(fmt)
    while i < n:
        j = fmt.find("%", i)
        if j < 0:
            out.append(fmt[i:])
            break
        out.append(fmt[i:j])
        m = _SPEC.match(fmt, j)
        assert m is not None
        flags, width_s, prec_s, verb = m.group(1), m.group(2), m.group(3), m.group(4)
        i = m.end()
        if verb is None:
            out.append("%!(NOVERB)")
            break
        if verb == "%":
            out.append("%")
            continue
        width = None
        if width_s == "*":
            width, argi = _star(args, argi)
        elif width_s:
            width = int(width_s)
        prec = None
        if prec_s == "*":
            prec, argi = _star(args, argi)
        elif prec_s is not None:
            prec = int(prec_s) if prec_s else 0
        if argi >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        value = args[argi]
        argi += 1
        out.append(_pad(_verb(verb, value, flags, prec), flags, width, verb, value))
    if argi < len(args):
        extra = ", ".join(f"{type_name(a)}={_v(a)}" for a in args[argi:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)


def _star(args: list[Any], argi: int) -> tuple[int | None, int]:
    if argi < len(args) and type(args[argi]) is int:
        return args[argi], argi + 1
    return None, argi + 1


def _bad(verb: str, value: Any) -> str:
    if value is None:
        return f"%!{verb}(<nil>)"
    return f"%!{verb}({type_name(value)}={_v(value)})"


def _v(value: Any) -> str:
    """%v."""
    t = type(value)
    if value is None:
        return "<nil>"
    if t is bool:
        return "true" if value else "false"
    if t is float:
        return format_float_g(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if t is bytes:
        return "[" + " ".join(str(b) for b in value) + "]"
    if t is list:
        return "[" + " ".join(_v(x) for x in value) + "]"
    if t is dict:
        return "map[" + " ".join(f"{k}:{_v(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _verb(verb: str, value: Any, flags: str, prec: int | None) -> str:
    t = type(value)
    plus = "+" in flags
    space = " " in flags
    if verb == "v":
        if t is float and prec is not None:
            return _float(value, "g", prec, plus, space)
        text = _v(value)
        if t in (int, float) and plus and not text.startswith("-"):
            text = "+" + text
        return text
    if verb == "s":
        if t is str:
            text = str(value)
            return text[:prec] if prec is not None else text
        if t is bytes:
            text = bytes(value).decode("utf-8", errors="replace")
            return text[:prec] if prec is not None else text
        if t in (list, dict):
            return _v(value)
        return _bad(verb, value)
    if verb == "q":
        if t is str:
            return _go_quote(value)
        if t is int:
            return (
                _go_quote(chr(value)).replace('"', "'")
                if 0 <= value <= 0x10FFFF
                else _bad(verb, value)
            )
        return _bad(verb, value)
    if verb == "t":
        return ("true" if value else "false") if t is bool else _bad(verb, value)
    if verb in "dboxXcU":
        if t is int:
            return _int(verb, value, flags, prec)
        if verb in "xX" and t is str:
            text = str(value).encode().hex()
            return text if verb == "x" else text.upper()
        if verb in "xX" and t is bytes:
            text = bytes(value).hex()
            return text if verb == "x" else text.upper()
        if verb in "xX" and t is float:
            return _bad(verb, value)  # %x on floats is hex floating point in Go; rare
        return _bad(verb, value)
    if verb in "eEfFgG":
        if t is float:
            return _float(value, verb, prec, plus, space)
        return _bad(verb, value)
    return f"%!{verb}({type_name(value)}={_v(value)})"


def _int(verb: str, value: int, flags: str, prec: int | None) -> str:
    sign = "-" if value < 0 else ("+" if "+" in flags else (" " if " " in flags else ""))
    mag = abs(value)
    if verb == "d":
        digits = str(mag)
    elif verb == "b":
        digits = format(mag, "b")
    elif verb == "o":
        digits = format(mag, "o")
        if "#" in flags:
            digits = "0" + digits
    elif verb == "x":
        digits = format(mag, "x")
    elif verb == "X":
        digits = format(mag, "X")
    elif verb == "c":
        return chr(value) if 0 <= value <= 0x10FFFF else "\ufffd"
    else:  # U
        return f"U+{value:04X}"
    if prec is not None:
        digits = digits.rjust(prec, "0")
    if "#" in flags and verb in "xX":
        digits = ("0x" if verb == "x" else "0X") + digits
    return sign + digits


def _float(value: float, verb: str, prec: int | None, plus: bool, space: bool) -> str:
    if math.isnan(value):
        text = "NaN"
    elif math.isinf(value):
        text = "+Inf" if value > 0 else "-Inf"
    elif verb in "fF":
        text = f"{value:.{6 if prec is None else prec}f}"
    elif verb in "eE":
        text = format_float_e(value, 6 if prec is None else prec, upper=verb == "E")
    elif prec is None:
        text = format_float_g(value) if verb == "g" else format_float_g(value).upper()
    else:
        text = _g_with_precision(value, prec, upper=verb == "G")
    if not text.startswith(("-", "+")) and not math.isnan(value):
        if plus:
            text = "+" + text
        elif space:
            text = " " + text
    return text


def _g_with_precision(value: float, prec: int, upper: bool) -> str:
    prec = max(prec, 1)
    text = f"{value:.{prec}g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        sign = exp[0]
        text = f"{mantissa}e{sign}{exp[1:].lstrip('0').rjust(2, '0')}"
    return text.upper() if upper else text


def _pad(text: str, flags: str, width: int | None, verb: str, value: Any) -> str:
    if width is None or len(text) >= width:
        return text
    if "-" in flags:
        return text.ljust(width)
    numeric = type(value) in (int, float) and verb not in "sqvtc"
    if "0" in flags and numeric and not text.startswith("%!"):
        sign = text[0] if text[0] in "+- " else ""
        body = text[len(sign) :]
        return sign + body.rjust(width - len(sign), "0")
    return text.rjust(width)


def _go_quote(text: str) -> str:
    parts = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            parts.append("\\" + ch)
        elif ch == "\n":
            parts.append("\\n")
        elif ch == "\t":
            parts.append("\\t")
        elif ch == "\r":
            parts.append("\\r")
        elif code < 0x20 or code == 0x7F:
            parts.append(f"\\x{code:02x}")
        else:
            parts.append(ch)
    parts.append('"')
    return "".join(parts)
