"""profiler.btf: member offsets from BTF, against bpftool and hand-built blobs.

The real-kernel tests read /sys/kernel/btf/vmlinux (world-readable, no root)
and compare with what `bpftool btf dump ... format raw` reports for the same
blob. The hand-built blobs (header, type records and string section packed
here byte by byte, following the kernel's Documentation/bpf/btf.rst) cover
typedef/qualifier chains, anonymous members, bitfields and every record kind
the parser has to step over. Fuzzing checks that damaged data only ever
raises BtfError.
"""

from __future__ import annotations

import functools
import json
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.btf import VMLINUX, Btf, BtfError, kernel_member_offset
from tests.conftest import skip_outside_ci

# -- building blobs ---------------------------------------------------------

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT = 9, 10, 11, 12, 13, 14, 15, 16
DECL_TAG, TYPE_TAG, ENUM64 = 17, 18, 19


def _info(kind: int, vlen: int = 0, kind_flag: int = 0) -> int:
    return (kind_flag << 31) | (kind << 24) | vlen


@dataclass
class BlobBuilder:
    """Types get ids 1, 2, ... in the order they are added."""

    strings: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    records: list[bytes] = field(default_factory=list)

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, record: bytes) -> int:
        self.records.append(record)
        return len(self.records)

    def int_(self, name: str, size: int) -> int:
        encoding = (1 << 24) | (size * 8)  # BTF_INT_SIGNED, offset 0, bits
        return self.add(struct.pack("<IIII", self.s(name), _info(INT), size, encoding))

    def ref(self, kind: int, target: int, name: str = "") -> int:
        """PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG: `type` is the target."""
        return self.add(struct.pack("<III", self.s(name), _info(kind), target))

    def composite(
        self,
        kind: int,
        name: str,
        size: int,
        members: list[tuple[str, int, int, int]],
        kind_flag: int = 0,
    ) -> int:
        """members: (name, type id, bit offset, bitfield size; only with kind_flag)."""
        rec = struct.pack("<III", self.s(name), _info(kind, len(members), kind_flag), size)
        for mname, mtype, bits, bitfield in members:
            off = (bitfield << 24) | bits if kind_flag else bits
            rec += struct.pack("<III", self.s(mname), mtype, off)
        return self.add(rec)

    def blob(
        self, *, magic: int = 0xEB9F, type_len: int | None = None, str_len: int | None = None
    ) -> bytes:
        types = b"".join(self.records)
        tl = len(types) if type_len is None else type_len
        sl = len(self.strings) if str_len is None else str_len
        header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, tl, len(types), sl)
        return header + types + bytes(self.strings)


@dataclass(frozen=True)
class Built:
    blob: bytes
    ids: dict[str, int]


def build_sample() -> Built:
    """A small program's worth of types, every kind the parser must step over."""
    b = BlobBuilder()
    ids: dict[str, int] = {}
    ids["int"] = b.int_("int", 4)
    ids["long"] = b.int_("long", 8)
    # Kinds with kind-specific data the parser must skip correctly.
    ids["arr"] = b.add(struct.pack("<III", 0, _info(ARRAY), 0) + struct.pack("<III", 1, 1, 4))
    ids["enum"] = b.add(
        struct.pack("<III", b.s("color"), _info(ENUM, 2), 4)
        + struct.pack("<Ii", b.s("RED"), 0)
        + struct.pack("<Ii", b.s("GREEN"), 1)
    )
    ids["enum64"] = b.add(
        struct.pack("<III", b.s("big"), _info(ENUM64, 1), 8)
        + struct.pack("<III", b.s("HUGE"), 0xFFFFFFFF, 1)
    )
    ids["fwd"] = b.add(struct.pack("<III", b.s("opaque"), _info(FWD), 0))
    ids["proto"] = b.add(
        struct.pack("<III", 0, _info(FUNC_PROTO, 2), ids["int"])
        + struct.pack("<II", b.s("a"), ids["int"])
        + struct.pack("<II", b.s("b"), ids["long"])
    )
    ids["func"] = b.add(struct.pack("<III", b.s("main"), _info(FUNC), ids["proto"]))
    ids["float"] = b.add(struct.pack("<III", b.s("double"), _info(FLOAT), 8))
    ids["var"] = b.add(struct.pack("<IIII", b.s("counter"), _info(VAR), ids["int"], 1))
    ids["datasec"] = b.add(
        struct.pack("<III", b.s(".data"), _info(DATASEC, 1), 4)
        + struct.pack("<III", ids["var"], 0, 4)
    )
    ids["decl_tag"] = b.add(struct.pack("<IIIi", b.s("tag"), _info(DECL_TAG), ids["func"], -1))
    ids["type_tag"] = b.add(struct.pack("<III", b.s("user"), _info(TYPE_TAG), ids["int"]))

    # struct inner { int a; int flags:3; int bits:5; long b; }  (kind_flag bitfields)
    ids["inner"] = b.composite(
        STRUCT,
        "inner",
        16,
        [
            ("a", ids["int"], 0, 0),
            ("flags", ids["int"], 32, 3),
            ("bits", ids["int"], 35, 5),
            ("b", ids["long"], 64, 0),
        ],
        kind_flag=1,
    )
    ids["inner_t"] = b.ref(TYPEDEF, ids["inner"], "inner_t")
    ids["const_inner_t"] = b.ref(CONST, ids["inner_t"])
    ids["anon_union"] = b.composite(
        UNION, "", 8, [("u_long", ids["long"], 0, 0), ("u_int", ids["int"], 0, 0)]
    )
    # An anonymous struct holding another anonymous union, one level deeper.
    ids["anon_deep"] = b.composite(
        UNION, "", 4, [("deep_a", ids["type_tag"], 0, 0), ("deep_b", ids["int"], 0, 0)]
    )
    ids["anon_struct"] = b.composite(
        STRUCT, "", 8, [("x", ids["int"], 0, 0), ("", ids["anon_deep"], 32, 0)]
    )
    ids["ptr_inner"] = b.ref(PTR, ids["inner"])
    # struct outer { long hdr; const inner_t in; union {...}; struct {...}; inner *p; int arr[4]; }
    ids["outer"] = b.composite(
        STRUCT,
        "outer",
        64,
        [
            ("hdr", ids["long"], 0, 0),
            ("in", ids["const_inner_t"], 64, 0),
            ("", ids["anon_union"], 192, 0),
            ("", ids["anon_struct"], 256, 0),
            ("p", ids["ptr_inner"], 320, 0),
            ("arr", ids["arr"], 384, 0),
        ],
    )
    ids["vol_outer"] = b.ref(VOLATILE, ids["outer"])
    ids["outer_t"] = b.ref(TYPEDEF, ids["vol_outer"], "outer_t")
    ids["restrict"] = b.ref(RESTRICT, ids["outer_t"])
    # struct wrapper { int pad[4]; volatile outer_t o; }  -> typedef -> volatile -> struct
    ids["wrapper"] = b.composite(
        STRUCT, "wrapper", 80, [("pad", ids["arr"], 0, 0), ("o", ids["restrict"], 128, 0)]
    )
    # A second struct named "outer": the first one wins.
    ids["outer_dup"] = b.composite(STRUCT, "outer", 4, [("hdr", ids["int"], 32, 0)])
    # A struct whose member has a type id past the end, and one typed void.
    ids["broken"] = b.composite(
        STRUCT, "broken", 8, [("dangling", 999, 0, 0), ("nothing", 0, 32, 0)]
    )
    return Built(b.blob(), ids)


SAMPLE = build_sample()


# -- the hand-built blob ------------------------------------------------------


@pytest.mark.parametrize(
    ("struct_name", "path", "offset"),
    [
        ("inner", "a", 0),
        ("inner", "b", 8),
        ("outer", "hdr", 0),
        ("outer", "in", 8),
        ("outer", "in.a", 8),  # through const -> typedef -> struct
        ("outer", "in.b", 16),
        ("outer", "u_long", 24),  # inside the anonymous union
        ("outer", "u_int", 24),
        ("outer", "x", 32),  # inside the anonymous struct
        ("outer", "deep_a", 36),  # anonymous union inside the anonymous struct
        ("outer", "deep_b", 36),
        ("outer", "p", 40),
        ("outer", "arr", 48),
        ("wrapper", "o", 16),
        ("wrapper", "o.in.b", 32),  # restrict -> typedef -> volatile -> struct, twice
        ("wrapper", "o.deep_b", 52),
    ],
)
def test_hand_built_paths(struct_name: str, path: str, offset: int) -> None:
    assert Btf(SAMPLE.blob).member_offset(struct_name, path) == offset


def test_first_struct_of_a_name_wins() -> None:
    assert Btf(SAMPLE.blob).member_offset("outer", "hdr") == 0  # not the duplicate's 4


def test_kernel_member_offset_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "btf"
    path.write_bytes(SAMPLE.blob)
    assert kernel_member_offset("wrapper", "o.in.b", path) == 32
    with pytest.raises(BtfError, match="cannot read"):
        kernel_member_offset("wrapper", "o", tmp_path / "missing")


@pytest.mark.parametrize(
    ("struct_name", "path", "message"),
    [
        ("nope", "a", "struct nope not in BTF"),
        ("outer", "missing", "outer has no member 'missing' (missing 'missing')"),
        ("outer", "in.zzz", "outer has no member 'in.zzz' (missing 'zzz')"),
        ("outer", "hdr.x", "outer has no member 'hdr.x' (missing 'x')"),  # long has no members
        ("outer", "p.a", "outer has no member 'p.a' (missing 'a')"),  # pointers are not followed
        ("outer", "", "outer has no member ''"),
        ("inner", "bits", "inner.bits is a bitfield"),
        ("outer", "in.bits", "outer.in.bits is a bitfield"),
        ("broken", "dangling.x", "type id 999 out of range"),
        ("broken", "nothing.x", "type id 0 out of range"),
        ("color", "RED", "struct color not in BTF"),  # enums are not structs
    ],
)
def test_hand_built_errors(struct_name: str, path: str, message: str) -> None:
    btf = Btf(SAMPLE.blob)
    with pytest.raises(BtfError) as exc:
        btf.member_offset(struct_name, path)
    assert message in str(exc.value)


def test_byte_aligned_bitfield_is_an_error() -> None:
    # inner.flags is `int flags:3` at bit 32: a bitfield, though byte-aligned.
    with pytest.raises(BtfError, match="bitfield"):
        Btf(SAMPLE.blob).member_offset("inner", "flags")


def _header(blob: bytes) -> list[int]:
    return list(struct.unpack_from("<HBBIIIII", blob))


def _with_header(blob: bytes, **changes: int) -> bytes:
    names = ["magic", "version", "flags", "hdr_len", "type_off", "type_len", "str_off", "str_len"]
    values = dict(zip(names, _header(blob), strict=True)) | changes
    return struct.pack("<HBBIIIII", *(values[n] for n in names)) + blob[24:]


def test_malformed_blobs() -> None:
    blob = SAMPLE.blob
    with pytest.raises(BtfError, match=r"bad BTF magic 0x9feb \(expected 0xeb9f\)"):
        Btf(_with_header(blob, magic=0x9FEB))  # big-endian BTF
    with pytest.raises(BtfError, match="shorter than its header"):
        Btf(blob[:23])
    with pytest.raises(BtfError, match="shorter than its header"):
        Btf(b"")
    with pytest.raises(BtfError, match="run past the end"):
        Btf(blob[:-1])  # string section cut
    type_len = _header(blob)[5]
    with pytest.raises(BtfError, match="run past the end"):
        Btf(_with_header(blob, type_len=len(blob)))
    with pytest.raises(BtfError, match="run past the end"):
        Btf(_with_header(blob, str_off=1 << 31))
    with pytest.raises(BtfError, match="truncated BTF type record"):
        Btf(_with_header(blob, type_len=8))
    with pytest.raises(BtfError, match="does not end on a record boundary"):
        Btf(_with_header(blob, type_len=type_len - 4))  # mid-way through the last member


def test_empty_type_section_has_no_structs() -> None:
    blob = BlobBuilder().blob()
    with pytest.raises(BtfError, match="struct task_struct not in BTF"):
        Btf(blob).member_offset("task_struct", "pid")


def test_struct_name_past_the_string_section() -> None:
    b = BlobBuilder()
    b.int_("int", 4)
    b.add(struct.pack("<III", 5000, _info(STRUCT), 0))
    with pytest.raises(BtfError, match="string offset 5000 out of range"):
        Btf(b.blob())


def test_member_name_past_the_string_section() -> None:
    b = BlobBuilder()
    i = b.int_("int", 4)
    b.add(struct.pack("<III", b.s("s"), _info(STRUCT, 1), 4) + struct.pack("<III", 7777, i, 0))
    with pytest.raises(BtfError, match="string offset 7777 out of range"):
        Btf(b.blob()).member_offset("s", "a")


def test_qualifier_loop() -> None:
    b = BlobBuilder()
    loop = b.ref(TYPEDEF, 2, "loop_t")  # id 1 -> id 2 -> id 1
    b.ref(CONST, loop)
    b.composite(STRUCT, "s", 8, [("m", loop, 0, 0)])
    with pytest.raises(BtfError, match="qualifier chain too long"):
        Btf(b.blob()).member_offset("s", "m.x")


def _anonymous_cycle() -> bytes:
    b = BlobBuilder()
    b.int_("int", 4)
    # struct cyc { struct cyc; }: an anonymous member of its own type (corrupt data).
    b.composite(STRUCT, "cyc", 8, [("", 2, 0, 0)])
    return b.blob()


def test_anonymous_member_cycle_is_btf_error() -> None:
    with pytest.raises(BtfError):
        Btf(_anonymous_cycle()).member_offset("cyc", "x")


# -- the running kernel's BTF, against bpftool --------------------------------


@functools.cache
def _vmlinux_bytes() -> bytes | None:
    try:
        return VMLINUX.read_bytes()
    except OSError:
        return None


def vmlinux_bytes() -> bytes:
    data = _vmlinux_bytes()
    if data is None:
        skip_outside_ci(f"{VMLINUX} is not readable (kernel built without CONFIG_DEBUG_INFO_BTF)")
        raise AssertionError  # unreachable: skip_outside_ci raises
    return data


@dataclass(frozen=True)
class BpftoolTypes:
    """bpftool's own reading of the same blob: id -> its JSON record."""

    by_id: dict[int, dict[str, Any]]
    structs: dict[str, int]

    def strip(self, type_id: int) -> dict[str, Any]:
        t = self.by_id[type_id]
        while t["kind"] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            t = self.by_id[t["type_id"]]
        return t

    def member(self, struct_name: str, name: str) -> dict[str, Any]:
        members = self.by_id[self.structs[struct_name]]["members"]
        return next(m for m in members if m["name"] == name)

    def reachable(self, type_id: int, base: int = 0) -> Iterator[tuple[str, int, bool, bool]]:
        """(name, bit offset, is bitfield, found through an anonymous member)."""
        for m in self.strip(type_id)["members"]:
            bits = base + m["bits_offset"]
            if m["name"] == "(anon)":
                if self.strip(m["type_id"])["kind"] in ("STRUCT", "UNION"):
                    for name, inner, bitfield, _ in self.reachable(m["type_id"], bits):
                        yield name, inner, bitfield, True
            else:
                yield m["name"], bits, bool(m.get("bitfield_size")), base != 0


@functools.cache
def _bpftool_types() -> BpftoolTypes | None:
    tool = shutil.which("bpftool") or next(
        (p for p in ("/usr/sbin/bpftool", "/sbin/bpftool") if Path(p).exists()), None
    )
    if tool is None:
        return None
    out = subprocess.run(
        [tool, "-j", "btf", "dump", "file", str(VMLINUX), "format", "raw"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    types = json.loads(out)["types"]
    structs: dict[str, int] = {}
    for t in types:
        if t["kind"] == "STRUCT" and t["name"] != "(anon)":
            structs.setdefault(t["name"], t["id"])
    return BpftoolTypes({t["id"]: t for t in types}, structs)


@pytest.fixture(scope="module")
def bpftool() -> BpftoolTypes:
    vmlinux_bytes()
    types = _bpftool_types()
    if types is None:
        skip_outside_ci("bpftool is not installed (`make deps` installs it)")
        raise AssertionError  # unreachable
    return types


@pytest.fixture(scope="module")
def vmlinux() -> Btf:
    return Btf(vmlinux_bytes())


def test_task_struct_fsbase_matches_bpftool(bpftool: BpftoolTypes) -> None:
    thread = bpftool.member("task_struct", "thread")
    thread_struct = bpftool.strip(thread["type_id"])
    assert thread_struct["name"] == "thread_struct"
    fsbase = next(m for m in thread_struct["members"] if m["name"] == "fsbase")
    expected = thread["bits_offset"] // 8 + fsbase["bits_offset"] // 8
    got = kernel_member_offset("task_struct", "thread.fsbase")
    assert got == expected
    task_size = bpftool.by_id[bpftool.structs["task_struct"]]["size"]
    assert 0 < got < task_size


@pytest.mark.parametrize(
    ("struct_name", "member"),
    [
        ("task_struct", "pid"),
        ("task_struct", "tgid"),
        ("task_struct", "comm"),
        ("task_struct", "mm"),
        ("task_struct", "thread"),
        ("task_struct", "real_parent"),
        ("thread_struct", "sp"),
        ("thread_struct", "fsbase"),
    ],
)
def test_direct_members_match_bpftool(
    vmlinux: Btf, bpftool: BpftoolTypes, struct_name: str, member: str
) -> None:
    expected = bpftool.member(struct_name, member)["bits_offset"] // 8
    assert vmlinux.member_offset(struct_name, member) == expected


# Kernel structs that are large and (on current kernels) full of anonymous unions.
BIG_STRUCTS = ["task_struct", "mm_struct", "file", "inode", "sk_buff", "page", "sock", "dentry"]


def test_every_member_of_big_structs_matches_bpftool(vmlinux: Btf, bpftool: BpftoolTypes) -> None:
    checked = anonymous = bitfields = 0
    for name in BIG_STRUCTS:
        if name not in bpftool.structs:
            continue
        for member, bits, bitfield, via_anon in bpftool.reachable(bpftool.structs[name]):
            if bitfield:
                if bits % 8:  # a bitfield not on a byte boundary must be refused
                    with pytest.raises(BtfError, match="is a bitfield"):
                        vmlinux.member_offset(name, member)
                    bitfields += 1
                continue
            assert vmlinux.member_offset(name, member) == bits // 8, f"{name}.{member}"
            checked += 1
            anonymous += via_anon
    assert checked > 300
    assert anonymous > 10  # members inside anonymous unions/structs were exercised
    assert bitfields > 0


def test_real_missing_names(vmlinux: Btf) -> None:
    with pytest.raises(BtfError, match="struct no_such_struct_kiln not in BTF"):
        vmlinux.member_offset("no_such_struct_kiln", "x")
    with pytest.raises(BtfError, match=r"task_struct has no member 'thread.nope'"):
        vmlinux.member_offset("task_struct", "thread.nope")


# -- fuzzing ------------------------------------------------------------------


@functools.cache
def _small_real_blob() -> tuple[bytes, bool]:
    """The first types of the running kernel's BTF (through thread_struct when it
    comes early, as it does on x86-64), with the strings they name: a real,
    small blob in which task_struct.thread.fsbase still resolves."""
    data = vmlinux_bytes()
    _magic, _v, _f, hdr_len, type_off, _type_len, str_off, _str_len = struct.unpack_from(
        "<HBBIIIII", data
    )
    pos = hdr_len + type_off
    records: list[bytes] = []
    max_name = 0
    wanted = {"task_struct", "thread_struct"}
    strs = data[hdr_len + str_off :]
    while wanted and len(records) < 3000:
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        extra = {1: 4, 3: 12, 14: 4, 17: 4}.get(kind, 0)
        per = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}.get(kind, 0)
        names = [name_off] + [
            struct.unpack_from("<I", data, pos + 12 + i * per)[0]
            for i in range(vlen)
            if kind in (4, 5, 6, 13, 19)
        ]
        max_name = max(max_name, *names)
        if kind == STRUCT:
            wanted.discard(strs[name_off : strs.index(b"\0", name_off)].decode())
        size = 12 + extra + per * vlen
        records.append(data[pos : pos + size])
        pos += size
    types = b"".join(records)
    strings = strs[: strs.index(b"\0", max_name) + 1]
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings, not wanted


def small_real_blob() -> bytes:
    return _small_real_blob()[0]


LOOKUPS = [
    ("task_struct", "thread.fsbase"),
    ("task_struct", "pid"),
    ("task_struct", "thread_info"),
    ("outer", "in.b"),
    ("outer", "deep_a"),
    ("wrapper", "o.u_int"),
    ("inner", "bits"),
]


def _lookups_only_raise_btf_error(blob: bytes) -> None:
    try:
        btf = Btf(blob)
    except BtfError:
        return
    for struct_name, path in LOOKUPS:
        try:
            offset = btf.member_offset(struct_name, path)
        except BtfError:
            continue
        assert offset >= 0


def test_small_real_blob_resolves(vmlinux: Btf) -> None:
    blob, complete = _small_real_blob()
    if not complete:
        skip_outside_ci("task_struct/thread_struct are not among this kernel's first types")
    assert len(blob) < 200_000
    small = Btf(blob)
    for path in ("thread.fsbase", "pid"):
        assert small.member_offset("task_struct", path) == vmlinux.member_offset(
            "task_struct", path
        )


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _mutate(blob: bytes, data: st.DataObject, *, focus: int = 0) -> bytes:
    """Byte flips, byte and word overwrites (mostly keeping the records' framing),
    and sometimes a truncation. Edits land past `focus` bytes of header/records
    at most a quarter of the time."""
    out = bytearray(blob)
    interesting = st.sampled_from([0, 1, 2, 3, 0x7F, 0x80, 0xFFFF, 0xFFFFFFFF, 0x84000001])
    for _ in range(data.draw(st.integers(1, 8), label="edits")):
        hi = len(out) - 4 if not focus or data.draw(st.integers(0, 3)) == 0 else focus - 4
        pos = data.draw(st.integers(0, max(hi, 0)), label="pos")
        mode = data.draw(st.sampled_from(["flip", "byte", "word"]), label="mode")
        if mode == "flip":
            out[pos] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif mode == "byte":
            out[pos] = data.draw(st.integers(0, 255), label="byte")
        else:
            pos -= pos % 4
            value = data.draw(st.one_of(interesting, st.integers(0, 0xFFFFFFFF)), label="word")
            struct.pack_into("<I", out, pos, value)
    if data.draw(st.integers(0, 4), label="truncate?") == 0:
        out = out[: data.draw(st.integers(0, len(out)), label="length")]
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_fuzz_real_blob_only_raises_btf_error(data: st.DataObject) -> None:
    blob = small_real_blob()
    # task_struct's record comes early: bias the edits toward the first types.
    _lookups_only_raise_btf_error(_mutate(blob, data, focus=min(len(blob), 8192)))


@FUZZ
@given(data=st.data())
def test_fuzz_hand_built_blob_only_raises_btf_error(data: st.DataObject) -> None:
    _lookups_only_raise_btf_error(_mutate(SAMPLE.blob, data))


@FUZZ
@given(
    body=st.binary(max_size=400),
    sizes=st.tuples(*[st.integers(0, 600)] * 5),
)
def test_fuzz_random_bytes_only_raise_btf_error(
    body: bytes, sizes: tuple[int, int, int, int, int]
) -> None:
    hdr_len, type_off, type_len, str_off, str_len = sizes
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, type_off, type_len, str_off, str_len)
    _lookups_only_raise_btf_error(header + body)
    _lookups_only_raise_btf_error(body)
