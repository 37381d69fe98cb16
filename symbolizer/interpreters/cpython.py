"""Find CPython in a process and describe the structures a frame walker reads.

A BPF walker goes: `_PyRuntime` -> interpreters.head -> threads head -> each
PyThreadState (`next`, thread ids) -> its current frame -> `previous`/`f_back`
-> each frame's code object -> name, qualname, filename, first line, line
table, and the start of its bytecode (to turn the frame's instruction pointer
or `f_lasti` into a byte offset for `linetable.line_for`).

`detect` needs only the process's maps and a way to open the mapped files: it
finds the file that exports `_PyRuntime` (libpython3.X.so, or the executable
when libpython is linked in), its version, and the runtime address of
`_PyRuntime` via the mapping's load bias. Nothing reads process memory.

Offsets come from `_TABLE`, one row per minor version for x86-64/aarch64
(LP64) release builds. The rows were taken from `offsetof` over each
version's installed internal headers and are verified by
tests/unit/test_cpython.py, which has every installed interpreter read its
own live structures with ctypes at these offsets. From 3.13 the runtime
publishes its own offsets (`_Py_DebugOffsets`, cookie "xdebugpy", at the
start of `_PyRuntime`, initialized data so it is in the file): when they
parse, they are used instead of the table.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from profiler.procfs import MapEntry
from symbolizer.elf import ElfError, Segment, load_segments

ABSENT = -1
"""An offset that does not exist in this version (e.g. qualname before 3.11)."""

# How a frame records the current instruction (`CPythonOffsets.frame_instr_kind`).
INSTR_LASTI_BYTES = 0  # int f_lasti, a byte offset into co_code (3.6-3.9)
INSTR_LASTI_UNITS = 1  # int f_lasti, in 2-byte code units (3.10)
INSTR_POINTER = 2  # pointer into the code; byte offset = ptr - code start (3.11+)

# How to find a code object's first instruction (`CPythonOffsets.code_bytecode_kind`).
CODE_BYTES_OBJECT = 0  # code_bytecode holds a PyBytesObject*; data at +bytes_sval
CODE_INLINE = 1  # the bytecode starts at code object + code_bytecode

DEBUG_COOKIE = b"xdebugpy"


@dataclass(frozen=True, slots=True)
class CPythonOffsets:
    """Byte offsets of every field the walker reads; ABSENT where not in this version.

    Thread state -> frame: `tstate_frame` holds the current frame pointer
    directly (3.8-3.10 `frame`, 3.13 `current_frame`), or, when
    `cframe_current_frame` is not ABSENT, a `_PyCFrame*` whose field at that
    offset does (3.11-3.12 `cframe->current_frame`).

    Frames: 3.8-3.10 PyFrameObject (`f_back`, `f_code`, `f_lasti`); 3.11+
    `_PyInterpreterFrame` (`previous`, `f_code`/`f_executable`,
    `prev_instr`/`instr_ptr`). With `frame_owner` present, a frame whose
    owner byte equals `frame_owner_cstack` is an interpreter-internal shim
    (3.12+) and has no Python function.

    Strings: a code object's name and filename are `str`. A compact ASCII
    string's UTF-8 data starts at `unicode_ascii_size`, a compact non-ASCII
    one's (UCS1/2/4 per the kind bits of the `unicode_state` word) at
    `unicode_compact_size`.
    """

    runtime_interpreters_head: int
    interp_next: int
    interp_tstate_head: int
    tstate_next: int
    tstate_interp: int
    tstate_thread_id: int  # pthread_self() of the thread (pthread_t)
    tstate_native_thread_id: int  # kernel TID; ABSENT before 3.11
    tstate_frame: int
    cframe_current_frame: int
    frame_back: int
    frame_code: int
    frame_instr: int
    frame_instr_kind: int
    frame_owner: int
    frame_owner_cstack: int
    frame_is_entry: int  # 3.11: the bool marking an eval loop call's first frame
    code_name: int
    code_qualname: int
    code_filename: int
    code_firstlineno: int
    code_linetable: int  # co_lnotab before 3.10, co_linetable from 3.10
    code_bytecode: int
    code_bytecode_kind: int
    bytes_size: int
    bytes_sval: int
    unicode_state: int
    unicode_ascii_size: int
    unicode_compact_size: int


def _row(**fields: int) -> CPythonOffsets:
    return CPythonOffsets(**fields)


_BEFORE_311 = {
    "runtime_interpreters_head": 32,
    "interp_next": 0,
    "interp_tstate_head": 8,
    "tstate_next": 8,
    "tstate_interp": 16,
    "tstate_thread_id": 176,
    "tstate_native_thread_id": ABSENT,
    "tstate_frame": 24,
    "cframe_current_frame": ABSENT,
    "frame_back": 24,
    "frame_code": 32,
    "frame_owner": ABSENT,
    "frame_owner_cstack": ABSENT,
    "frame_is_entry": ABSENT,
    "code_name": 112,
    "code_qualname": ABSENT,
    "code_filename": 104,
    "code_firstlineno": 40,
    "code_linetable": 120,
    "code_bytecode": 48,
    "code_bytecode_kind": CODE_BYTES_OBJECT,
    "bytes_size": 16,
    "bytes_sval": 32,
    "unicode_state": 32,
    "unicode_ascii_size": 48,
    "unicode_compact_size": 72,
}

_FROM_311 = {
    "runtime_interpreters_head": 40,
    "interp_next": 0,
    "tstate_next": 8,
    "tstate_interp": 16,
    "frame_instr": 56,
    "frame_instr_kind": INSTR_POINTER,
    "code_name": 120,
    "code_qualname": 128,
    "code_filename": 112,
    "code_linetable": 136,
    "code_bytecode_kind": CODE_INLINE,
    "bytes_size": 16,
    "bytes_sval": 32,
    "unicode_state": 32,
}

_TABLE: dict[tuple[int, int], CPythonOffsets] = {
    (3, 8): _row(**_BEFORE_311, frame_instr=104, frame_instr_kind=INSTR_LASTI_BYTES),
    (3, 9): _row(**_BEFORE_311, frame_instr=104, frame_instr_kind=INSTR_LASTI_BYTES),
    (3, 10): _row(**_BEFORE_311, frame_instr=96, frame_instr_kind=INSTR_LASTI_UNITS),
    (3, 11): _row(
        **_FROM_311,
        interp_tstate_head=16,
        tstate_thread_id=152,
        tstate_native_thread_id=160,
        tstate_frame=56,
        cframe_current_frame=8,
        frame_back=48,
        frame_code=32,
        frame_owner=69,
        frame_owner_cstack=ABSENT,  # 3.11 marks entry frames with is_entry instead
        frame_is_entry=68,
        code_firstlineno=72,
        code_bytecode=184,
        unicode_ascii_size=48,
        unicode_compact_size=72,
    ),
    (3, 12): _row(
        **_FROM_311,
        interp_tstate_head=72,
        tstate_thread_id=136,
        tstate_native_thread_id=144,
        tstate_frame=56,
        cframe_current_frame=0,
        frame_back=8,
        frame_code=0,
        frame_owner=70,
        frame_owner_cstack=3,
        frame_is_entry=ABSENT,
        code_firstlineno=68,
        code_bytecode=192,
        unicode_ascii_size=40,
        unicode_compact_size=56,
    ),
    (3, 13): _row(
        **_FROM_311 | {"runtime_interpreters_head": 632, "interp_next": 7264},
        interp_tstate_head=7344,
        tstate_thread_id=152,
        tstate_native_thread_id=160,
        tstate_frame=72,
        cframe_current_frame=ABSENT,
        frame_back=8,
        frame_code=0,
        frame_owner=70,
        frame_owner_cstack=3,
        frame_is_entry=ABSENT,
        code_firstlineno=68,
        code_bytecode=200,
        unicode_ascii_size=40,
        unicode_compact_size=56,
    ),
}

SUPPORTED = tuple(sorted(_TABLE))


def table_offsets(version: tuple[int, ...]) -> CPythonOffsets | None:
    """The built-in table's row for (major, minor), or None if unsupported."""
    return _TABLE.get((version[0], version[1]))


@dataclass(frozen=True, slots=True)
class CPythonInfo:
    """One process's interpreter: where `_PyRuntime` is and how to read it."""

    path: str  # the mapped file exporting _PyRuntime
    version_major: int
    version_minor: int
    version_micro: int
    version_hex: int  # PY_VERSION_HEX when known, else from (major, minor, micro)
    runtime_address: int  # &_PyRuntime in the process
    offsets_source: str  # "table" or "debug_offsets"
    offsets: CPythonOffsets
    # Runtime addresses of the type objects, to check what a pointer points
    # at before trusting it (0 when the symbol is missing).
    code_type: int = 0
    unicode_type: int = 0
    bytes_type: int = 0

    @property
    def version(self) -> tuple[int, int, int]:
        return (self.version_major, self.version_minor, self.version_micro)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["offsets"] = dataclasses.asdict(self.offsets)
        return d


@dataclass(frozen=True, slots=True)
class Detection:
    """`detect_reason`'s answer: the info, or None and why not."""

    info: CPythonInfo | None
    reason: str


def detect(
    maps: Sequence[MapEntry], open_file: Callable[[MapEntry], BinaryIO | None]
) -> CPythonInfo | None:
    """CPython in the process with these maps, or None (see `detect_reason` for why)."""
    return detect_reason(maps, open_file).info


def detect_reason(
    maps: Sequence[MapEntry], open_file: Callable[[MapEntry], BinaryIO | None]
) -> Detection:
    """Like `detect`, with a one-line reason when there is no usable interpreter.

    Candidates, in order: mapped `libpython*` files, the main executable (the
    first file mapped at offset 0), then any other mapped file named like
    python. Never raises for bad input: unreadable or corrupt files are
    reasons.
    """
    by_path: dict[str, list[MapEntry]] = {}
    for m in maps:
        if m.is_file:
            by_path.setdefault(m.file_path, []).append(m)
    if not by_path:
        return Detection(None, "no file-backed mappings")
    reasons: list[str] = []
    for path in _candidates(by_path, maps):
        entries = by_path[path]
        f = None
        try:
            f = open_file(entries[0])
            if f is None:
                reasons.append(f"{path}: cannot open")
                continue
            found = _inspect(path, entries, f)
        except _FILE_FAILURES as exc:
            reasons.append(f"{path}: {exc}")
            continue
        finally:
            if f is not None:
                f.close()
        if isinstance(found, CPythonInfo):
            return Detection(found, "")
        reasons.append(f"{path}: {found}")
    if not reasons:
        return Detection(None, "no python or libpython mapping")
    return Detection(None, "; ".join(reasons))


# What a corrupt or truncated file can make the ELF readers raise.
_FILE_FAILURES = (
    ElfError,
    ELFError,
    ConstructError,
    OSError,
    ValueError,
    struct.error,
    IndexError,
    KeyError,
    EOFError,
)

_LIB_RE = re.compile(r"libpython(\d)\.(\d+)")
_EXE_RE = re.compile(r"python(\d)\.(\d+)")


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _candidates(by_path: dict[str, list[MapEntry]], maps: Sequence[MapEntry]) -> list[str]:
    out = [p for p in by_path if _basename(p).startswith("libpython")]
    exe = next((m.file_path for m in maps if m.is_file and m.offset == 0), None)
    if exe is not None and exe not in out:
        out.append(exe)
    out += [p for p in by_path if "python" in _basename(p) and p not in out]
    return out


def _inspect(path: str, entries: list[MapEntry], f: BinaryIO) -> CPythonInfo | str:
    """CPythonInfo for this file, or the reason it is not a usable CPython."""
    segments = load_segments(f)
    syms = _find_symbols(f, ("_PyRuntime", "Py_Version", *_TYPE_SYMBOLS.values()))
    runtime = syms.get("_PyRuntime")
    if runtime is None:
        return "does not export _PyRuntime (not CPython 3.7+, or stripped)"
    bias = _load_bias(entries, segments)
    if bias is None:
        return "no mapping covers a PT_LOAD segment (cannot compute the load bias)"

    debug: CPythonOffsets | None = None
    version_hex = 0
    head = _read_vaddr(f, segments, runtime, _DEBUG_OFFSETS_SIZE)
    if head is not None and head.startswith(DEBUG_COOKIE):
        if struct.unpack_from("<Q", head, 16)[0]:
            return "free-threaded CPython builds are not supported"
        parsed = parse_debug_offsets(head)
        if parsed is not None:
            version_hex, debug = parsed
    if not version_hex and "Py_Version" in syms:
        raw = _read_vaddr(f, segments, syms["Py_Version"], 4)
        if raw is not None:
            version_hex = struct.unpack("<I", raw)[0]
    if version_hex:
        version = (version_hex >> 24, (version_hex >> 16) & 0xFF, (version_hex >> 8) & 0xFF)
    else:
        found = _version_from_strings(f, path)
        if found is None:
            return "cannot tell the CPython version"
        version = found
        version_hex = (version[0] << 24) | (version[1] << 16) | (version[2] << 8)

    table = table_offsets(version)
    if debug is not None:  # 3.13 publishes every field the walker needs
        offsets, source = debug, "debug_offsets"
    elif table is not None:
        offsets, source = table, "table"
    else:
        supported = ", ".join(f"{a}.{b}" for a, b in SUPPORTED)
        return f"CPython {version[0]}.{version[1]} is not supported (supported: {supported})"
    return CPythonInfo(
        path=path,
        version_major=version[0],
        version_minor=version[1],
        version_micro=version[2],
        version_hex=version_hex,
        runtime_address=runtime + bias,
        offsets_source=source,
        offsets=offsets,
        **{field: syms[name] + bias for field, name in _TYPE_SYMBOLS.items() if name in syms},
    )


# CPythonInfo field -> the exported type object it holds the address of.
_TYPE_SYMBOLS = {
    "code_type": "PyCode_Type",
    "unicode_type": "PyUnicode_Type",
    "bytes_type": "PyBytes_Type",
}


def load_bias(entries: Sequence[MapEntry], segments: Sequence[Segment]) -> int | None:
    """runtime address - ELF vaddr for one file's mappings (None if none matches)."""
    return _load_bias(entries, segments)


def _load_bias(entries: Sequence[MapEntry], segments: Sequence[Segment]) -> int | None:
    # A mapping maps file offset m.offset at m.start; a segment maps file offset
    # s.offset at vaddr s.vaddr. Any overlap of the two fixes the bias.
    for m in entries:
        length = m.end - m.start
        for s in segments:
            if s.filesz == 0:
                continue
            if m.offset <= s.offset < m.offset + length or (
                s.offset <= m.offset < s.offset + s.filesz
            ):
                return m.start - m.offset + s.offset - s.vaddr
    return None


# -- _Py_DebugOffsets (3.13+) --------------------------------------------------

# Field order of _Py_DebugOffsets in 3.13 (all uint64 after the 8-byte cookie);
# groups start with their struct's size. Names are "group.field".
_DEBUG_FIELDS_313 = [
    "version",
    "free_threaded",
    "runtime_state.size",
    "runtime_state.finalizing",
    "runtime_state.interpreters_head",
    "interpreter_state.size",
    "interpreter_state.id",
    "interpreter_state.next",
    "interpreter_state.threads_head",
    "interpreter_state.gc",
    "interpreter_state.imports_modules",
    "interpreter_state.sysdict",
    "interpreter_state.builtins",
    "interpreter_state.ceval_gil",
    "interpreter_state.gil_runtime_state",
    "interpreter_state.gil_runtime_state_enabled",
    "interpreter_state.gil_runtime_state_locked",
    "interpreter_state.gil_runtime_state_holder",
    "thread_state.size",
    "thread_state.prev",
    "thread_state.next",
    "thread_state.interp",
    "thread_state.current_frame",
    "thread_state.thread_id",
    "thread_state.native_thread_id",
    "thread_state.datastack_chunk",
    "thread_state.status",
    "interpreter_frame.size",
    "interpreter_frame.previous",
    "interpreter_frame.executable",
    "interpreter_frame.instr_ptr",
    "interpreter_frame.localsplus",
    "interpreter_frame.owner",
    "code_object.size",
    "code_object.filename",
    "code_object.name",
    "code_object.qualname",
    "code_object.linetable",
    "code_object.firstlineno",
    "code_object.argcount",
    "code_object.localsplusnames",
    "code_object.localspluskinds",
    "code_object.co_code_adaptive",
    "pyobject.size",
    "pyobject.ob_type",
    "type_object.size",
    "type_object.tp_name",
    "type_object.tp_repr",
    "type_object.tp_flags",
    "tuple_object.size",
    "tuple_object.ob_item",
    "tuple_object.ob_size",
    "list_object.size",
    "list_object.ob_item",
    "list_object.ob_size",
    "dict_object.size",
    "dict_object.ma_keys",
    "dict_object.ma_values",
    "float_object.size",
    "float_object.ob_fval",
    "long_object.size",
    "long_object.lv_tag",
    "long_object.ob_digit",
    "bytes_object.size",
    "bytes_object.ob_size",
    "bytes_object.ob_sval",
    "unicode_object.size",
    "unicode_object.state",
    "unicode_object.length",
    "unicode_object.asciiobject_size",
    "gc.size",
    "gc.collecting",
]

_DEBUG_OFFSETS_SIZE = 8 + 8 * len(_DEBUG_FIELDS_313)

# A field offset larger than this is not an offset: the data is not what we think.
_MAX_FIELD_OFFSET = 1 << 20


def parse_debug_offsets(data: bytes) -> tuple[int, CPythonOffsets] | None:
    """(PY_VERSION_HEX, offsets) from the bytes at the start of a 3.13 `_PyRuntime`.

    None if the cookie is missing, the data is short, the version is not a
    3.13 layout we know, the build is free-threaded (its objects differ), or
    an offset is implausible.
    """
    if len(data) < _DEBUG_OFFSETS_SIZE or not data.startswith(DEBUG_COOKIE):
        return None
    values = struct.unpack_from(f"<{len(_DEBUG_FIELDS_313)}Q", data, 8)
    d = dict(zip(_DEBUG_FIELDS_313, values, strict=True))
    version_hex = d["version"]
    if (version_hex >> 16) != 0x030D or d["free_threaded"]:
        return None
    offsets = _row(
        runtime_interpreters_head=d["runtime_state.interpreters_head"],
        interp_next=d["interpreter_state.next"],
        interp_tstate_head=d["interpreter_state.threads_head"],
        tstate_next=d["thread_state.next"],
        tstate_interp=d["thread_state.interp"],
        tstate_thread_id=d["thread_state.thread_id"],
        tstate_native_thread_id=d["thread_state.native_thread_id"],
        tstate_frame=d["thread_state.current_frame"],
        cframe_current_frame=ABSENT,
        frame_back=d["interpreter_frame.previous"],
        frame_code=d["interpreter_frame.executable"],
        frame_instr=d["interpreter_frame.instr_ptr"],
        frame_instr_kind=INSTR_POINTER,
        frame_owner=d["interpreter_frame.owner"],
        frame_owner_cstack=3,
        frame_is_entry=ABSENT,
        code_name=d["code_object.name"],
        code_qualname=d["code_object.qualname"],
        code_filename=d["code_object.filename"],
        code_firstlineno=d["code_object.firstlineno"],
        code_linetable=d["code_object.linetable"],
        code_bytecode=d["code_object.co_code_adaptive"],
        code_bytecode_kind=CODE_INLINE,
        bytes_size=d["bytes_object.ob_size"],
        bytes_sval=d["bytes_object.ob_sval"],
        unicode_state=d["unicode_object.state"],
        unicode_ascii_size=d["unicode_object.asciiobject_size"],
        # PyCompactUnicodeObject = PyASCIIObject + utf8_length + utf8 pointer (LP64).
        unicode_compact_size=d["unicode_object.asciiobject_size"] + 16,
    )
    if any(v > _MAX_FIELD_OFFSET for v in dataclasses.astuple(offsets)):
        return None
    return version_hex, offsets


# -- ELF helpers ----------------------------------------------------------------


def _find_symbols(f: BinaryIO, names: Sequence[str]) -> dict[str, int]:
    """ELF vaddr of each named symbol defined in .symtab or .dynsym."""
    size = f.seek(0, 2)
    elf = ELFFile(f)
    if elf.elfclass != 64 or not elf.little_endian:
        raise ElfError("only 64-bit little-endian interpreters are supported")
    found: dict[str, int] = {}
    sym_fmt = struct.Struct("<IBBHQQ")
    for sec in elf.iter_sections():
        if sec["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
            continue
        strsec = elf.get_section(sec["sh_link"])
        for s in (sec, strsec):
            if s["sh_offset"] + s["sh_size"] > size:
                raise ElfError("symbol table runs past the end of the file")
        strtab = strsec.data()
        table = sec.data()
        wanted: dict[int, str] = {}
        for name in names:
            if name in found:
                continue
            for m in re.finditer(re.escape(name.encode()) + b"\0", strtab):
                wanted[m.start()] = name
        if not wanted:
            continue
        for i in range(0, len(table) - sym_fmt.size + 1, sym_fmt.size):
            st_name, _info, _other, shndx, value, _sz = sym_fmt.unpack_from(table, i)
            name_hit = wanted.get(st_name)
            if name_hit is not None and shndx != 0 and value:
                found.setdefault(name_hit, value)
    return found


def _read_vaddr(f: BinaryIO, segments: Sequence[Segment], vaddr: int, n: int) -> bytes | None:
    """`n` bytes of initialized data at an ELF vaddr, or None if not in the file."""
    for s in segments:
        if s.vaddr <= vaddr and vaddr + n <= s.vaddr + s.filesz:
            f.seek(vaddr - s.vaddr + s.offset)
            data = f.read(n)
            return data if len(data) == n else None
    return None


_VERSION_STR_RE = re.compile(rb"(?<![0-9.])3\.(\d{1,2})\.(\d{1,3})(?=[\0 +abcr])")


def _version_from_strings(f: BinaryIO, path: str) -> tuple[int, int, int] | None:
    """Before 3.11 there is no Py_Version: find the PY_VERSION string.

    The file name (python3.X, libpython3.X) gives the minor version when it
    has one; the micro version comes from a "3.X.Y" string in .rodata (the
    PY_VERSION literal Py_GetVersion formats; the linker may have merged it
    into the tail of a longer string, hence no leading-NUL requirement). The
    most frequent match wins. Without any such string, micro is 0.
    """
    name = _LIB_RE.search(_basename(path)) or _EXE_RE.search(_basename(path))
    minor = int(name.group(2)) if name and name.group(1) == "3" else None
    f.seek(0)
    elf = ELFFile(f)
    sec = elf.get_section_by_name(".rodata")
    counts: dict[tuple[int, int], int] = {}
    if sec is not None and sec["sh_size"] < (64 << 20):
        for m in _VERSION_STR_RE.finditer(sec.data()):
            key = (int(m.group(1)), int(m.group(2)))
            if minor is None or key[0] == minor:
                counts[key] = counts.get(key, 0) + 1
    if counts:
        best = max(counts, key=lambda k: counts[k])
        return (3, best[0], best[1])
    if minor is not None:
        return (3, minor, 0)
    return None
