"""OTTL values in Python, the collector's comparison rules, and its conversions.

Values are what pdata holds, as plain Python: nil is None, bool, int64 is
int, float64 is float, string is str, bytes, a map is a dict with str keys,
a slice is a list. Python's `bool` is an `int` and `1 == 1.0 == True`, so
every check here is by exact type, as Go's type switches are.

Comparison (LANGUAGE.md "Comparison Rules", `compare.go`): ints and floats
compare as float64 when mixed; strings as Go strings (code point order,
which is UTF-8 byte order); bools with false < true; bytes byte by byte;
maps and lists only for (deep, type-exact) equality; nil equals only nil
(`<=`/`>=` included). Any other pairing is "not equal": `!=` is true and
every other operator false.
"""

from __future__ import annotations

import base64
import json
import math
import operator
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

Compare = Callable[[Any, Any], bool]

OPS: dict[str, Compare] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# `a OP b` is `b MIRROR[OP] a`.
MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def type_name(value: Any) -> str:
    """The Go type the collector would name in an error message."""
    t = type(value)
    if value is None:
        return "nil"
    return {
        bool: "bool",
        int: "int64",
        float: "float64",
        str: "string",
        bytes: "[]byte",
        dict: "map[string]any",
        list: "[]any",
    }.get(t, t.__name__)


def compare(a: Any, b: Any, op: str) -> bool:
    """`a op b` under the collector's comparison rules."""
    ta = type(a)
    tb = type(b)
    if a is None:
        if b is None:
            return op in ("==", "<=", ">=")
        return op == "!="
    if b is None:
        return op == "!="
    if ta is int or ta is float:
        if tb is int or tb is float:
            if ta is not tb:  # Go converts the int to float64 first
                return OPS[op](float(a), float(b))
            return OPS[op](a, b)
        return op == "!="
    if ta is not tb:
        return op == "!="
    if ta is str or ta is bool or ta is bytes:
        return OPS[op](a, b)
    if ta is dict or ta is list:
        if op == "==":
            return deep_equal(a, b)
        if op == "!=":
            return not deep_equal(a, b)
        return False
    if op == "==":
        return bool(a == b)
    return op == "!=" and bool(a != b)


def deep_equal(a: Any, b: Any) -> bool:
    """reflect.DeepEqual on plain values: same types all the way down."""
    ta = type(a)
    if ta is not type(b):
        return False
    if ta is dict:
        if a.keys() != b.keys():
            return False
        return all(deep_equal(v, b[k]) for k, v in a.items())
    if ta is list:
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is float and math.isnan(a):
        return False
    return bool(a == b)


def copy_value(value: Any) -> Any:
    """A copy of maps and lists, so a value set in two places is not shared (pdata copies)."""
    t = type(value)
    if t is dict:
        return {k: copy_value(v) for k, v in value.items()}
    if t is list:
        return [copy_value(v) for v in value]
    return value


# ---- number and JSON text as Go writes it ---------------------------------


def _decimal_digits(value: float) -> tuple[str, int]:
    """Shortest round-trip digits of |value| and the decimal exponent of the first."""
    if value == 0:
        return "0", 0
    _, digits, exp = Decimal(repr(abs(value))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exp, int)
    point = len(digits) + exp  # position of the decimal point after the first digit run
    return text, point - 1


def format_float_f(value: float) -> str:
    """strconv.FormatFloat(v, 'f', -1, 64): shortest digits, never an exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_float_e(value: float, precision: int = -1, upper: bool = False) -> str:
    """strconv 'e' format: d.ddde±XX with at least two exponent digits."""
    if math.isnan(value) or math.isinf(value):
        return format_float_f(value)
    text = f"{value:.{precision}e}" if precision >= 0 else _shortest_e(value)
    mantissa, exp = text.split("e")
    sign = "-" if exp.startswith("-") else "+"
    digits = exp.lstrip("+-").lstrip("0")
    text = f"{mantissa}e{sign}{digits.rjust(2, '0')}"
    return text.upper() if upper else text


def _shortest_e(value: float) -> str:
    digits, exp = _decimal_digits(value)
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    sign = "-" if math.copysign(1, value) < 0 else ""
    return f"{sign}{mantissa}e{exp}"


def format_float_g(value: float) -> str:
    """Go's %v for a float64: shortest digits, an exponent when < 1e-4 or >= 1e6."""
    if math.isnan(value) or math.isinf(value):
        return format_float_f(value)
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    _, exp = _decimal_digits(value)
    if exp < -4 or exp >= 6:
        return format_float_e(value)
    return format_float_f(value)


def _json_float(value: float) -> str:
    # encoding/json: 'f' unless the magnitude is < 1e-6 or >= 1e21, then 'e'
    # with the exponent trimmed of leading zeros ("1e-07" -> "1e-7").
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {format_float_f(value)}")
    a = abs(value)
    if a != 0 and (a < 1e-6 or a >= 1e21):
        text = format_float_e(value)
        return re.sub(r"e([-+])0(\d)$", r"e\1\2", text)
    return format_float_f(value)


# Go's JSON encoders escape HTML characters and the JS line separators.
_JSON_HTML_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def go_json(value: Any) -> str:
    """JSON as Go's encoders write it: compact, map keys sorted, floats in Go form."""
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return _json_float(value)
    if t is str:
        return json.dumps(value, ensure_ascii=False).translate(_JSON_HTML_ESCAPES)
    if t is bytes:
        return json.dumps(base64.b64encode(value).decode())
    if t is dict:
        return "{" + ",".join(f"{go_json(str(k))}:{go_json(value[k])}" for k in sorted(value)) + "}"
    if t is list:
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"unsupported type: {type_name(value)}")


# ---- the collector's "Like" getters ---------------------------------------


class ConversionError(ValueError):
    """A value of a type a typed argument cannot take."""


def string_like(value: Any) -> str | None:
    """StringLikeGetter: bytes as hex, maps and lists as JSON, numbers and bools as JSON."""
    t = type(value)
    if t is str:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if t is bytes:
        return value.hex()  # type: ignore[no-any-return]
    try:
        return go_json(value)
    except (TypeError, ValueError) as e:
        raise ConversionError(str(e)) from None


def int_like(value: Any) -> int | None:
    """IntLikeGetter: floats truncate, bools are 0/1, unparsable strings give nil."""
    t = type(value)
    if t is int:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if t is float:
        if math.isnan(value) or math.isinf(value):
            return -(1 << 63)  # what Go's int64(NaN or ±Inf) yields on amd64
        return int(value)
    if t is bool:
        return 1 if value else 0
    if t is str:
        return parse_go_int(value)
    raise ConversionError(f"unsupported type: {type_name(value)}")


_GO_INT = re.compile(r"[+-]?[0-9]+\Z")


def parse_go_int(text: str) -> int | None:
    """strconv.ParseInt(s, 10, 64), None where Go returns an error."""
    if not _GO_INT.match(text):
        return None
    value = int(text)
    return value if -(1 << 63) <= value < (1 << 63) else None


def parse_go_float(text: str) -> float | None:
    """strconv.ParseFloat(s, 64), None where Go returns an error (hex floats aside)."""
    if not text or text != text.strip():
        return None  # Python's float() would skip the spaces Go rejects
    try:
        value = float(text)
    except ValueError:
        return None
    if math.isinf(value) and text.lstrip("+-").lower() not in ("inf", "infinity"):
        return None  # out of range is an error in Go
    return value


def float_like(value: Any) -> float | None:
    """FloatLikeGetter: ints and bools convert; an unparsable string is an error."""
    t = type(value)
    if t is float:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if t is int:
        return float(value)
    if t is bool:
        return 1.0 if value else 0.0
    if t is str:
        parsed = parse_go_float(value)
        if parsed is None:
            raise ConversionError(f'strconv.ParseFloat: parsing "{value}": invalid syntax')
        return parsed
    raise ConversionError(f"unsupported type: {type_name(value)}")


def bool_like(value: Any) -> bool | None:
    """BoolLikeGetter: numbers are != 0, strings as strconv.ParseBool."""
    t = type(value)
    if t is bool:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if t is int or t is float:
        return value != 0  # type: ignore[no-any-return]
    if t is str:
        if value in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if value in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise ConversionError(f'strconv.ParseBool: parsing "{value}": invalid syntax')
    raise ConversionError(f"unsupported type: {type_name(value)}")


def bytes_like(value: Any) -> bytes | None:
    """ByteSliceLikeGetter: strings as UTF-8, numbers as 8 big-endian bytes, bools as 1."""
    import struct

    t = type(value)
    if t is bytes:
        return value  # type: ignore[no-any-return]
    if value is None:
        return None
    if t is str:
        return value.encode()  # type: ignore[no-any-return]
    if t is int:
        return struct.pack(">q", value)
    if t is float:
        return struct.pack(">d", value)
    if t is bool:
        return b"\x01" if value else b"\x00"
    raise ConversionError(f"unsupported type: {type_name(value)}")


def expect(value: Any, kind: type, what: str) -> Any:
    """A typed getter (StringGetter, IntGetter...): exactly `kind`, never nil."""
    if type(value) is kind:
        return value
    want = type_name(kind())
    raise ConversionError(f"{what}: expected {want} but got {type_name(value)}")
