"""Read a CPython code object out of another process's memory.

The BPF walker sends code object addresses; this turns one into names, file
and line table through a `read(address, size)` callable (in production
/proc/PID/mem, in tests anything), so it is plain logic over bytes.

Every pointer is checked before it is trusted: the code object's, the
strings' and the line table's type pointers must be the interpreter's own
PyCode_Type / PyUnicode_Type / PyBytes_Type, and every size must be sane.
Memory that was freed and reused fails those checks and gives
`CodeReadError`, never a wrong name.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from symbolizer.interpreters.cpython import ABSENT, CPythonInfo
from symbolizer.interpreters.linetable import line_for

ReadMemory = Callable[[int, int], bytes | None]
"""read(address, size) -> exactly `size` bytes, or None when unreadable."""

_OB_TYPE = 8  # PyObject: ob_refcnt, then ob_type
_UNICODE_LENGTH = 16  # PyASCIIObject.length follows the PyObject header
MAX_NAME_CHARS = 4096
MAX_LINETABLE = 1 << 20


class CodeReadError(Exception):
    """The address does not hold a readable, plausible code object."""


@dataclass(frozen=True, slots=True)
class CodeInfo:
    name: str
    qualname: str  # `name` before 3.11, which has no co_qualname
    filename: str
    firstlineno: int
    linetable: bytes

    def line(self, version: tuple[int, ...], instr_units: int | None) -> int:
        """Source line of the instruction `instr_units` code units in; the
        function's first line when unknown (no offset, or no line there)."""
        if instr_units is None:
            return self.firstlineno
        found = line_for(version, self.firstlineno, self.linetable, instr_units * 2)
        return found if found is not None else self.firstlineno


def read_code(read: ReadMemory, address: int, info: CPythonInfo) -> CodeInfo:
    o = info.offsets
    fields = [o.code_name, o.code_filename, o.code_firstlineno, o.code_linetable]
    if o.code_qualname != ABSENT:
        fields.append(o.code_qualname)
    head = _read(read, address, max(fields) + 8)
    _check_type(head, info.code_type, "code object", address)

    def ptr(offset: int) -> int:
        return int(struct.unpack_from("<Q", head, offset)[0])

    name = _read_str(read, ptr(o.code_name), info)
    qualname = _read_str(read, ptr(o.code_qualname), info) if o.code_qualname != ABSENT else name
    filename = _read_str(read, ptr(o.code_filename), info)
    firstlineno = int(struct.unpack_from("<i", head, o.code_firstlineno)[0])
    linetable = _read_bytes(read, ptr(o.code_linetable), info)
    return CodeInfo(name, qualname, filename, firstlineno, linetable)


def _read(read: ReadMemory, address: int, size: int) -> bytes:
    if address <= 0 or address % 8:
        raise CodeReadError(f"not an object pointer: 0x{address:x}")
    data = read(address, size)
    if data is None or len(data) != size:
        raise CodeReadError(f"cannot read {size} bytes at 0x{address:x}")
    return data


def _check_type(head: bytes, expected: int, what: str, address: int) -> None:
    if not expected:
        raise CodeReadError(f"the interpreter does not export the {what} type")
    got = struct.unpack_from("<Q", head, _OB_TYPE)[0]
    if got != expected:
        raise CodeReadError(f"0x{address:x} is not a {what} (type 0x{got:x})")


def _read_str(read: ReadMemory, address: int, info: CPythonInfo) -> str:
    o = info.offsets
    head = _read(read, address, o.unicode_compact_size)
    _check_type(head, info.unicode_type, "str", address)
    length = struct.unpack_from("<q", head, _UNICODE_LENGTH)[0]
    state = struct.unpack_from("<I", head, o.unicode_state)[0]
    kind, compact, ascii_ = (state >> 2) & 7, (state >> 5) & 1, (state >> 6) & 1
    if not 0 <= length <= MAX_NAME_CHARS or not compact or kind not in (1, 2, 4):
        raise CodeReadError(f"implausible str at 0x{address:x}")
    if length == 0:
        return ""
    if ascii_:
        raw = read(address + o.unicode_ascii_size, length)
        codec = "ascii"
    else:
        raw = read(address + o.unicode_compact_size, length * kind)
        codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}[kind]
    if raw is None:
        raise CodeReadError(f"cannot read the characters of the str at 0x{address:x}")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as e:
        raise CodeReadError(f"undecodable str at 0x{address:x}") from e


def _read_bytes(read: ReadMemory, address: int, info: CPythonInfo) -> bytes:
    o = info.offsets
    head = _read(read, address, o.bytes_sval)
    _check_type(head, info.bytes_type, "bytes", address)
    size = struct.unpack_from("<q", head, o.bytes_size)[0]
    if not 0 <= size <= MAX_LINETABLE:
        raise CodeReadError(f"implausible bytes size {size} at 0x{address:x}")
    if size == 0:
        return b""
    data = read(address + o.bytes_sval, size)
    if data is None:
        raise CodeReadError(f"cannot read the bytes at 0x{address:x}")
    return data
