"""symbolizer.interpreters.pycode: code objects read out of process memory.

Against every supported interpreter installed here: each runs
tests/fixtures/py_code_addrs.py, which reports the addresses (id()) of some
code objects and what the interpreter says about them; the test finds the
interpreter in the child's maps, reads those objects through
/proc/PID/mem (our own child: no root needed) and must agree on names,
qualified names, files, first lines and the lines of instruction offsets.

Against synthetic memory (objects laid out byte by byte at the table's
offsets): every kind of bad input gives CodeReadError, never another
exception and never a wrong name.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.procfs import MapEntry, parse_maps
from profiler.procmem import ProcessMemory
from symbolizer.elf import open_regular
from symbolizer.interpreters import cpython
from symbolizer.interpreters.cpython import CPythonInfo, CPythonOffsets
from symbolizer.interpreters.pycode import (
    MAX_LINETABLE,
    MAX_NAME_CHARS,
    CodeInfo,
    CodeReadError,
    read_code,
)
from tests.conftest import skip_outside_ci
from tests.unit.test_linetable import FIXTURES, INTERPRETERS, interpreter_or_skip

SUPPORTED_INTERPRETERS = [
    i for i in INTERPRETERS if not i[0].startswith(("pyenv-3.6", "pyenv-3.7"))
]


def open_path(m: MapEntry) -> BinaryIO | None:
    try:
        return open_regular(m.file_path)
    except OSError:
        return None


@dataclass
class CodeChild:
    pid: int
    report: dict[str, Any]
    info: CPythonInfo
    memory: ProcessMemory


@contextmanager
def code_child(label: str, exe: Path) -> Iterator[CodeChild]:
    """The fixture running under `exe`, detected, with its memory open."""
    with subprocess.Popen(
        [str(interpreter_or_skip(label, exe)), str(FIXTURES / "py_code_addrs.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    ) as child:
        memory: ProcessMemory | None = None
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            report = json.loads(child.stdout.readline())
            maps = parse_maps(Path(f"/proc/{child.pid}/maps").read_text())
            found = cpython.detect_reason(maps, open_path)
            assert found.info is not None, found.reason
            try:
                os.close(os.open(f"/proc/{child.pid}/mem", os.O_RDONLY))
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EACCES):
                    raise
                skip_outside_ci(f"cannot read a child's /proc/PID/mem here ({e})")
            memory = ProcessMemory(child.pid)
            assert memory.ok
            yield CodeChild(child.pid, report, found.info, memory)
        finally:
            if memory is not None:
                memory.close()
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.mark.parametrize(
    ("label", "exe"), SUPPORTED_INTERPRETERS, ids=[i[0] for i in SUPPORTED_INTERPRETERS]
)
def test_reads_real_code_objects(label: str, exe: Path) -> None:
    with code_child(label, exe) as c:
        version = c.info.version
        assert list(version) == c.report["version"]
        names = []
        for rec in c.report["codes"]:
            code = read_code(c.memory.read, rec["address"], c.info)
            names.append(code.name)
            assert code.name == rec["name"]
            # Before 3.11 there is no co_qualname: the name stands in for it.
            assert code.qualname == (rec["qualname"] if version >= (3, 11) else rec["name"])
            assert code.filename == rec["filename"]
            assert code.firstlineno == rec["firstlineno"]
            assert code.line(version, None) == rec["firstlineno"]
            for units, line in rec["lines"]:
                want = line if line is not None else rec["firstlineno"]
                assert code.line(version, units) == want, f"{rec['name']} at unit {units}"
        assert names == [
            "plain_function",
            "method",
            "wait_fünf",
            "計算",
            "𠀀",
            "<lambda>",
            "nested_long",
            "generated",
        ]
        quals = {r["name"]: r["qualname"] for r in c.report["codes"]}
        if version >= (3, 11):
            assert quals["method"] == "Greeter.method"
            assert quals["nested_long"] == "outer.<locals>.nested_long"
        generated = c.report["codes"][-1]
        assert generated["filename"] == "<генератор>"
        # The generated function's lines span the 70000-line gap.
        assert max(line for _, line in generated["lines"] if line) > 70000


@pytest.mark.parametrize(
    ("label", "exe"), SUPPORTED_INTERPRETERS[:1], ids=[i[0] for i in SUPPORTED_INTERPRETERS[:1]]
)
def test_real_process_bad_addresses(label: str, exe: Path) -> None:
    with code_child(label, exe) as c:
        address = c.report["codes"][0]["address"]
        info = c.info
        for bad in (address + 8, address + 4, 0, 8, 1 << 47, (1 << 64) - 8):
            with pytest.raises(CodeReadError):
                read_code(c.memory.read, bad, info)
        # The code object is real, but the interpreter's type objects are not these.
        for wrong in (
            replace(info, code_type=info.code_type + 8),
            replace(info, unicode_type=info.bytes_type),
            replace(info, bytes_type=info.unicode_type),
        ):
            with pytest.raises(CodeReadError, match="is not a"):
                read_code(c.memory.read, address, wrong)


# -- synthetic memory -----------------------------------------------------------

CODE_TYPE = 0x5550_0001_0000
STR_TYPE = 0x5550_0002_0000
BYTES_TYPE = 0x5550_0003_0000
HEAP = 0x7F00_0010_0000


def fake_info(minor: int = 12, **types: int) -> CPythonInfo:
    offsets = cpython.table_offsets((3, minor))
    assert offsets is not None
    kw = {"code_type": CODE_TYPE, "unicode_type": STR_TYPE, "bytes_type": BYTES_TYPE} | types
    return CPythonInfo(
        f"/opt/python/lib/libpython3.{minor}.so.1.0",
        3,
        minor,
        1,
        0x03000000 | (minor << 16) | 0x01F0,
        0x7F00_0000_0000,
        "table",
        offsets,
        **kw,
    )


@dataclass
class FakeMemory:
    """A process's memory as separate regions; anything between them is unmapped."""

    regions: dict[int, bytes] = field(default_factory=dict)
    next_address: int = HEAP
    reads: int = 0
    closed: int = 0

    def put(self, data: bytes) -> int:
        address = self.next_address
        self.regions[address] = bytes(data)
        # Leave an unmapped gap after each object: over-long reads fail.
        self.next_address += (len(data) + 0x10F) & ~0xF
        return address

    def read(self, address: int, size: int) -> bytes | None:
        self.reads += 1
        for start, data in self.regions.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        return None

    def close(self) -> None:
        self.closed += 1


def str_object(
    o: CPythonOffsets,
    text: str,
    *,
    ob_type: int = STR_TYPE,
    length: int | None = None,
    state: int | None = None,
    data: bytes | None = None,
) -> bytes:
    """A compact str as CPython lays it out (ASCII: data at ascii_size, else compact_size)."""
    top = max((ord(ch) for ch in text), default=0)
    if top < 0x80:
        kind, ascii_, head_size, codec = 1, 1, o.unicode_ascii_size, "ascii"
    elif top < 0x100:
        kind, ascii_, head_size, codec = 1, 0, o.unicode_compact_size, "latin-1"
    elif top < 0x10000:
        kind, ascii_, head_size, codec = 2, 0, o.unicode_compact_size, "utf-16-le"
    else:
        kind, ascii_, head_size, codec = 4, 0, o.unicode_compact_size, "utf-32-le"
    head = bytearray(head_size)
    struct.pack_into("<qQqq", head, 0, 1, ob_type, len(text) if length is None else length, -1)
    default_state = (kind << 2) | (1 << 5) | (ascii_ << 6)
    struct.pack_into("<I", head, o.unicode_state, default_state if state is None else state)
    body = text.encode(codec) if data is None else data
    out = bytes(head) + body + b"\0" * kind
    # The reader takes a compact-size header even for short ASCII strings.
    return out.ljust(o.unicode_compact_size, b"\0")


def bytes_object(
    o: CPythonOffsets, data: bytes, *, ob_type: int = BYTES_TYPE, size: int | None = None
) -> bytes:
    head = bytearray(o.bytes_sval)
    struct.pack_into("<qQ", head, 0, 1, ob_type)
    struct.pack_into("<q", head, o.bytes_size, len(data) if size is None else size)
    struct.pack_into("<q", head, 24, -1)
    # Heap objects have neighbours: a str-sized read of a short bytes succeeds.
    return (bytes(head) + data + b"\0").ljust(64, b"\0")


@dataclass
class FakeCode:
    memory: FakeMemory
    address: int
    info: CPythonInfo


def code_object(
    memory: FakeMemory,
    info: CPythonInfo,
    *,
    name: bytes | int | None = None,
    qualname: bytes | int | None = None,
    filename: bytes | int | None = None,
    linetable: bytes | int | None = None,
    firstlineno: int = 42,
    ob_type: int = CODE_TYPE,
    texts: tuple[str, str, str] = ("handle", "App.handle", "/srv/app.py"),
) -> int:
    """A code object (and its strings) in `memory`; a field given as bytes is
    that object's raw image, as an int the pointer itself."""
    o = info.offsets

    def place(value: bytes | int | None, default: bytes) -> int:
        if isinstance(value, int):
            return value
        return memory.put(default if value is None else value)

    name_p = place(name, str_object(o, texts[0]))
    qual_p = place(qualname, str_object(o, texts[1]))
    file_p = place(filename, str_object(o, texts[2]))
    table_p = place(linetable, bytes_object(o, b"\x80\x00\xd8\x04"))
    fields = [o.code_name, o.code_filename, o.code_linetable, o.code_firstlineno]
    image = bytearray(max(*fields, o.code_qualname) + 16)
    struct.pack_into("<qQ", image, 0, 1, ob_type)
    struct.pack_into("<Q", image, o.code_name, name_p)
    struct.pack_into("<Q", image, o.code_filename, file_p)
    struct.pack_into("<Q", image, o.code_linetable, table_p)
    struct.pack_into("<i", image, o.code_firstlineno, firstlineno)
    if o.code_qualname != cpython.ABSENT:
        struct.pack_into("<Q", image, o.code_qualname, qual_p)
    return memory.put(bytes(image))


MINORS = [minor for _, minor in cpython.SUPPORTED]


@pytest.mark.parametrize("minor", MINORS)
def test_synthetic_code_object(minor: int) -> None:
    info = fake_info(minor)
    memory = FakeMemory()
    address = code_object(memory, info)
    code = read_code(memory.read, address, info)
    qualname = "App.handle" if minor >= 11 else "handle"
    assert code == CodeInfo("handle", qualname, "/srv/app.py", 42, b"\x80\x00\xd8\x04")


@pytest.mark.parametrize(
    "text", ["", "x", "ünïcödé", "ÿ" * 3, "計算機", "a𠀀b", "😀", "z" * MAX_NAME_CHARS]
)
def test_string_kinds(text: str) -> None:
    info = fake_info(12)
    memory = FakeMemory()
    address = code_object(memory, info, texts=(text, "q", "/f.py"))
    assert read_code(memory.read, address, info).name == text


def test_empty_linetable() -> None:
    info = fake_info(11)
    memory = FakeMemory()
    address = code_object(memory, info, linetable=bytes_object(info.offsets, b""))
    code = read_code(memory.read, address, info)
    assert code.linetable == b""
    assert code.line((3, 11), 5) == 42  # no line: the first line
    assert code.line((3, 11), None) == 42


def test_linetable_lines() -> None:
    # 3.11 location table: one 2-unit entry one line down (kind 11, two column
    # bytes), then a 1-unit entry with no location (kind 15).
    table = bytes([0x80 | (11 << 3) | 1, 0, 4, 0x80 | (15 << 3) | 0])
    info = fake_info(11)
    memory = FakeMemory()
    address = code_object(memory, info, linetable=bytes_object(info.offsets, table))
    code = read_code(memory.read, address, info)
    assert [code.line((3, 11), u) for u in range(4)] == [43, 43, 42, 42]


O12 = fake_info(12).offsets
Mutation = Callable[[FakeMemory, CPythonInfo], tuple[int, CPythonInfo]]


def _code(**kw: Any) -> Mutation:
    def build(memory: FakeMemory, info: CPythonInfo) -> tuple[int, CPythonInfo]:
        return code_object(memory, info, **kw), info

    return build


def _with_info(change: Callable[[CPythonInfo], CPythonInfo]) -> Mutation:
    def build(memory: FakeMemory, info: CPythonInfo) -> tuple[int, CPythonInfo]:
        return code_object(memory, info), change(info)

    return build


def _at(delta: int) -> Mutation:
    def build(memory: FakeMemory, info: CPythonInfo) -> tuple[int, CPythonInfo]:
        return code_object(memory, info) + delta, info

    return build


def _absolute(address: int) -> Mutation:
    def build(memory: FakeMemory, info: CPythonInfo) -> tuple[int, CPythonInfo]:
        code_object(memory, info)
        return address, info

    return build


def _cut_str(text: str) -> Mutation:
    """A str whose header is readable but whose characters are not mapped."""

    def build(memory: FakeMemory, info: CPythonInfo) -> tuple[int, CPythonInfo]:
        image = str_object(info.offsets, text)
        head = max(info.offsets.unicode_compact_size, info.offsets.unicode_ascii_size)
        return code_object(memory, info, name=image[:head]), info

    return build


BAD: dict[str, tuple[Mutation, str]] = {
    "wrong code type": (_code(ob_type=STR_TYPE), "is not a code object"),
    "no code type": (
        _with_info(lambda i: replace(i, code_type=0)),
        "does not export the code object type",
    ),
    "no str type": (
        _with_info(lambda i: replace(i, unicode_type=0)),
        "does not export the str type",
    ),
    "no bytes type": (
        _with_info(lambda i: replace(i, bytes_type=0)),
        "does not export the bytes type",
    ),
    "misaligned code": (_at(4), "not an object pointer"),
    "code +1": (_at(1), "not an object pointer"),
    "inside the code": (_at(8), "is not a code object"),
    "zero address": (_absolute(0), "not an object pointer"),
    "negative address": (_absolute(-16), "not an object pointer"),
    "unmapped": (_absolute(0x1000), "cannot read"),
    "huge address": (_absolute((1 << 64) - 8), "cannot read"),
    "name is bytes": (_code(name=bytes_object(O12, b"handle")), "is not a str"),
    "name wrong type": (_code(name=str_object(O12, "x", ob_type=CODE_TYPE)), "is not a str"),
    "null name": (_code(name=0), "not an object pointer"),
    "misaligned name": (_code(name=HEAP + 0x10004), "not an object pointer"),
    "unmapped name": (_code(name=0x2000), "cannot read"),
    "huge length": (_code(name=str_object(O12, "x", length=MAX_NAME_CHARS + 1)), "implausible"),
    "2**62 length": (_code(qualname=str_object(O12, "x", length=1 << 62)), "implausible"),
    "negative length": (_code(filename=str_object(O12, "x", length=-1)), "implausible"),
    "not compact": (_code(name=str_object(O12, "x", state=(1 << 2) | (1 << 6))), "implausible"),
    "kind 0": (_code(name=str_object(O12, "x", state=(1 << 5) | (1 << 6))), "implausible"),
    "kind 3": (_code(name=str_object(O12, "x", state=(3 << 2) | (1 << 5))), "implausible"),
    "ascii flag, 0xff": (_code(name=str_object(O12, "x", data=b"\xff")), "undecodable"),
    "lone surrogate": (
        _code(name=str_object(O12, "計", data=struct.pack("<H", 0xD800))),
        "undecodable",
    ),
    "past U+10FFFF": (
        _code(name=str_object(O12, "😀", data=struct.pack("<I", 0x110000))),
        "undecodable",
    ),
    "ascii chars unmapped": (_cut_str("a" * 40), "cannot read the characters"),
    "ucs2 chars unmapped": (_cut_str("計" * 10), "cannot read the characters"),
    "table is str": (_code(linetable=str_object(O12, "x")), "is not a bytes"),
    "huge table": (
        _code(linetable=bytes_object(O12, b"\x80", size=MAX_LINETABLE + 1)),
        "implausible bytes size",
    ),
    "negative table": (_code(linetable=bytes_object(O12, b"\x80", size=-5)), "implausible"),
    "table data unmapped": (
        _code(linetable=bytes_object(O12, b"", size=64)[: O12.bytes_sval]),
        "cannot read the bytes",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_code_read_error(case: str) -> None:
    mutate, message = BAD[case]
    memory = FakeMemory()
    address, info = mutate(memory, fake_info(12))
    with pytest.raises(CodeReadError, match=message):
        read_code(memory.read, address, info)


def test_reads_returning_none_or_short() -> None:
    info = fake_info(12)
    memory = FakeMemory()
    address = code_object(memory, info)
    with pytest.raises(CodeReadError, match="cannot read"):
        read_code(lambda a, n: None, address, info)

    def short(a: int, n: int) -> bytes | None:
        data = memory.read(a, n)
        return None if data is None else data[:-1]

    with pytest.raises(CodeReadError, match="cannot read"):
        read_code(short, address, info)
    # Only the first read works: the strings behind it are unreadable.
    calls: list[int] = []

    def first_only(a: int, n: int) -> bytes | None:
        calls.append(a)
        return memory.read(a, n) if len(calls) == 1 else None

    with pytest.raises(CodeReadError, match="cannot read"):
        read_code(first_only, address, info)


# -- fuzzing ----------------------------------------------------------------------

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def _read_or_error(memory: FakeMemory, address: int, info: CPythonInfo) -> None:
    try:
        code = read_code(memory.read, address, info)
    except CodeReadError:
        return
    assert isinstance(code.name, str) and isinstance(code.qualname, str)
    assert isinstance(code.filename, str) and isinstance(code.linetable, bytes)
    assert len(code.name) <= MAX_NAME_CHARS and len(code.linetable) <= MAX_LINETABLE


@FUZZ
@given(
    blob=st.binary(min_size=0, max_size=512),
    offset=st.integers(-16, 520),
    minor=st.sampled_from(MINORS),
)
def test_fuzz_random_memory(blob: bytes, offset: int, minor: int) -> None:
    memory = FakeMemory({HEAP: blob})
    _read_or_error(memory, HEAP + offset, fake_info(minor))


def _plant_pointers(data: st.DataObject, size: int) -> bytes:
    """Random words, many of them the type pointers and heap addresses the reader trusts."""
    words = st.one_of(
        st.sampled_from([CODE_TYPE, STR_TYPE, BYTES_TYPE, HEAP, HEAP + 0x100, 0, 1 << 40]),
        st.integers(0, (1 << 64) - 1),
    )
    return b"".join(struct.pack("<Q", data.draw(words, label="word")) for _ in range(size // 8))


@FUZZ
@given(data=st.data(), minor=st.sampled_from(MINORS))
def test_fuzz_memory_of_plausible_words(data: st.DataObject, minor: int) -> None:
    # Objects at HEAP and HEAP + 0x100 (where planted pointers lead) of random words.
    memory = FakeMemory(
        {HEAP: _plant_pointers(data, 0xC0), HEAP + 0x100: _plant_pointers(data, 0xC0)}
    )
    _read_or_error(memory, HEAP + 8 * data.draw(st.integers(0, 0x20)), fake_info(minor))


@FUZZ
@given(data=st.data(), minor=st.sampled_from(MINORS))
def test_fuzz_damaged_code_objects(data: st.DataObject, minor: int) -> None:
    info = fake_info(minor)
    memory = FakeMemory()
    address = code_object(memory, info, texts=("fünf", "K.計算", "/srv/𠀀.py"))
    regions = list(memory.regions)
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        start = data.draw(st.sampled_from(regions), label="region")
        image = bytearray(memory.regions[start])
        if not image:
            continue
        pos = data.draw(st.integers(0, len(image) - 1), label="pos")
        if data.draw(st.booleans(), label="flip"):
            image[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        else:
            image[pos] = data.draw(st.integers(0, 255), label="byte")
        if data.draw(st.booleans(), label="truncate"):
            image = image[: data.draw(st.integers(0, len(image)), label="cut")]
        memory.regions[start] = bytes(image)
    _read_or_error(memory, address, info)
