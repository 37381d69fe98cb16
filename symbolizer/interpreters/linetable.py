"""Instruction offset -> source line, from a code object's raw line table.

CPython has stored line numbers in three byte formats (facts from CPython's
Objects/lnotab_notes.txt of each release):

* 3.6-3.9 `co_lnotab`: (address delta u8, line delta s8) pairs from
  `co_firstlineno`; an address belongs to the line reached by the last pair
  whose cumulative address does not pass it.
* 3.10 `co_linetable`: (length u8, line delta s8) pairs, each covering
  `length` bytes of bytecode; a delta of -128 marks a range without a line.
* 3.11+ `co_linetable` (the location table): entries of 1-8 code units whose
  first byte has bit 7 set and carries a 4-bit kind; the kind says where the
  line delta is (implicit, in the kind, or a signed varint) and how many
  column bytes follow. Kind 15 marks "no location".

The functions are pure and total: any bytes give an int or None, in time
linear in the table's length. None means "no line" (a compiler-generated
instruction, an offset past the table, or a corrupt table).
"""

from __future__ import annotations

from collections.abc import Iterator

LineRange = tuple[int, int, int | None]
"""(start, end, line): bytecode bytes [start, end) map to `line` (None: no line)."""

_UNBOUNDED = 1 << 62

_NO_LINE_310 = -128

# Location-table entry kinds (3.11+).
_KIND_ONE_LINE0 = 10  # 10, 11, 12: line delta 0, 1, 2, two column bytes
_KIND_NO_COLUMNS = 13  # svarint line delta, no columns
_KIND_LONG = 14  # svarint line delta, varint end line, start and end columns
_KIND_NONE = 15  # no location at all

# A varint longer than this many bits is corrupt (CPython writes ints).
_MAX_VARINT_BITS = 64


def line_for(
    version: tuple[int, ...], firstlineno: int, table: bytes, instr_offset_bytes: int
) -> int | None:
    """The line of the instruction at `instr_offset_bytes` (bytes from co_code's start).

    `version` is the interpreter's (major, minor, ...); `table` is the raw
    `co_lnotab` (before 3.10) or `co_linetable` (3.10 on).
    """
    if instr_offset_bytes < 0:
        return None
    for start, end, line in line_ranges(version, firstlineno, table):
        if start <= instr_offset_bytes < end:
            return line
    return None


def line_ranges(version: tuple[int, ...], firstlineno: int, table: bytes) -> Iterator[LineRange]:
    """Every (start, end, line) range of the table, in address order.

    Ranges are half-open byte offsets; empty ranges are left out; `line` is
    None where the interpreter has no line. Before 3.10 the last range runs to
    `_UNBOUNDED` (lnotab gives every offset a line). A corrupt 3.11+ table
    stops at the first entry that cannot be decoded.
    """
    minor = tuple(version[:2])
    if minor < (3, 6):
        return iter(())
    if minor < (3, 10):
        return _lnotab_ranges(firstlineno, table)
    if minor == (3, 10):
        return _linetable_310_ranges(firstlineno, table)
    return _location_ranges(firstlineno, table)


def _s8(b: int) -> int:
    return b - 256 if b >= 128 else b


def _lnotab_ranges(firstlineno: int, table: bytes) -> Iterator[LineRange]:
    """3.6-3.9 `co_lnotab`: an offset has the line reached by the pairs before it."""
    line = firstlineno
    addr = 0
    for i in range(0, len(table) - 1, 2):
        step = table[i]
        if step:
            yield addr, addr + step, line
            addr += step
        line += _s8(table[i + 1])
    yield addr, _UNBOUNDED, line


def _linetable_310_ranges(firstlineno: int, table: bytes) -> Iterator[LineRange]:
    """3.10 `co_linetable`: (length, line delta) pairs; delta -128 means no line."""
    line = firstlineno
    end = 0
    for i in range(0, len(table) - 1, 2):
        start = end
        end += table[i]
        delta = _s8(table[i + 1])
        if delta != _NO_LINE_310:
            line += delta
        if end > start:
            yield start, end, (None if delta == _NO_LINE_310 else line)


def _location_ranges(firstlineno: int, table: bytes) -> Iterator[LineRange]:
    """3.11+ location table."""
    line = firstlineno
    addr = 0
    pos = 0
    n = len(table)
    while pos < n:
        head = table[pos]
        if not head & 0x80:
            return  # every entry starts with bit 7 set: lost sync, corrupt
        pos += 1
        kind = (head >> 3) & 0x0F
        size = ((head & 0x07) + 1) * 2
        has_line = True
        if kind == _KIND_NONE:
            has_line = False
        elif kind in (_KIND_LONG, _KIND_NO_COLUMNS):
            delta, pos = _read_svarint(table, pos)
            if delta is None:
                return
            line += delta
            if kind == _KIND_LONG:
                for _ in range(3):  # end line delta, start column, end column
                    skipped, pos = _read_varint(table, pos)
                    if skipped is None:
                        return
        elif kind >= _KIND_ONE_LINE0:
            line += kind - _KIND_ONE_LINE0
            pos += 2
        else:  # short forms 0-9: same line, one column byte
            pos += 1
        yield addr, addr + size, (line if has_line else None)
        addr += size


def _read_varint(table: bytes, pos: int) -> tuple[int | None, int]:
    """Unsigned varint: 6 bits a byte, bit 6 set on all but the last byte."""
    value = 0
    shift = 0
    n = len(table)
    while True:
        if pos >= n or shift >= _MAX_VARINT_BITS:
            return None, pos
        b = table[pos]
        pos += 1
        value |= (b & 0x3F) << shift
        shift += 6
        if not b & 0x40:
            return value, pos


def _read_svarint(table: bytes, pos: int) -> tuple[int | None, int]:
    """Signed varint: the sign in the lowest bit of the unsigned value."""
    value, pos = _read_varint(table, pos)
    if value is None:
        return None, pos
    return (-(value >> 1) if value & 1 else value >> 1), pos
