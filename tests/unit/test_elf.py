"""symbolizer/elf.py: build ids, segments, symbols, load bias, and corrupt input."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from symbolizer import elf
from symbolizer.elf import (
    PF_R,
    PF_X,
    ElfError,
    ElfType,
    Segment,
    address_to_elf_vaddr,
    build_id,
    build_id_from_notes,
    build_id_of_path,
    elf_type,
    file_offset_to_vaddr,
    file_offsets_to_vaddrs,
    load_segments,
    read_elf,
    read_symbols,
)
from tests.conftest import FIXTURES, build_c, skip_outside_ci

PIE_BUILD_ID = "e1f0000000000000000000000000000000000001"
NOPIE_BUILD_ID = "e1f0000000000000000000000000000000000002"
LIB_BUILD_ID = "e1f0000000000000000000000000000000000003"


@pytest.fixture(scope="module")
def bins(fixture_build_dir: Path) -> dict[str, Path]:
    d = fixture_build_dir
    return {
        "pie": build_c(
            d, "native_prog.c", "elf_prog_pie", "-O2", "-DKILN_NO_LIB", "-fPIE", "-pie",
            f"-Wl,--build-id=0x{PIE_BUILD_ID}",
        ),
        "nopie": build_c(
            d, "native_prog.c", "elf_prog_nopie", "-O2", "-DKILN_NO_LIB", "-fno-pie", "-no-pie",
            f"-Wl,--build-id=0x{NOPIE_BUILD_ID}",
        ),
        "lib": build_c(
            d, "native_lib.c", "elf_lib.so", "-O2", "-shared", "-fPIC",
            f"-Wl,--build-id=0x{LIB_BUILD_ID}",
        ),
        "noid": build_c(d, "native_lib.c", "elf_lib_noid.so", "-O2", "-shared", "-fPIC",
                        "-Wl,--build-id=none"),
    }  # fmt: skip


# -- build id, type, segments ---------------------------------------------------


def test_build_id_from_file_object_and_bytes(bins: dict[str, Path]) -> None:
    for name, want in (("pie", PIE_BUILD_ID), ("nopie", NOPIE_BUILD_ID), ("lib", LIB_BUILD_ID)):
        with open(bins[name], "rb") as f:
            assert build_id(f) == want
        assert build_id(bins[name].read_bytes()) == want
        assert build_id_of_path(str(bins[name])) == want


def test_no_build_id_is_empty_string(bins: dict[str, Path]) -> None:
    assert build_id(bins["noid"].read_bytes()) == ""


def test_build_id_of_path_never_raises(bins: dict[str, Path], tmp_path: Path) -> None:
    truncated = tmp_path / "trunc"
    truncated.write_bytes(bins["lib"].read_bytes()[:100])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fifo = tmp_path / "fifo"  # opening a FIFO without a writer must not block
    os.mkfifo(fifo)
    for p in (tmp_path / "missing", tmp_path, truncated, empty, fifo, Path("/proc/self/status")):
        assert build_id_of_path(str(p)) == ""


def test_elf_types(bins: dict[str, Path]) -> None:
    assert elf_type(bins["pie"].read_bytes()) is ElfType.DYN
    assert elf_type(bins["nopie"].read_bytes()) is ElfType.EXEC
    assert elf_type(bins["lib"].read_bytes()) is ElfType.DYN


def _readelf_loads(path: Path) -> list[tuple[int, int, int, int, str]]:
    out = subprocess.run(
        ["readelf", "-lW", str(path)], check=True, capture_output=True, text=True
    ).stdout
    loads = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            off, vaddr, _paddr, filesz, memsz = (int(x, 16) for x in parts[1:6])
            loads.append((off, vaddr, filesz, memsz, "".join(parts[6:-1]).replace(" ", "")))
    return loads


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils readelf not installed")
def test_load_segments_match_readelf(bins: dict[str, Path]) -> None:
    for path in bins.values():
        with open(path, "rb") as f:
            segs = load_segments(f)
        want = _readelf_loads(path)
        assert [(s.offset, s.vaddr, s.filesz, s.memsz) for s in segs] == [w[:4] for w in want]
        assert [s.executable for s in segs] == ["E" in w[4] for w in want]


# -- symbols ---------------------------------------------------------------------


def _nm_functions(path: Path, *extra: str) -> dict[str, int]:
    out = subprocess.run(
        ["nm", *extra, str(path)], check=True, capture_output=True, text=True
    ).stdout
    funcs = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwWi":
            funcs[parts[2]] = int(parts[0], 16)
    return funcs


@pytest.mark.skipif(shutil.which("nm") is None, reason="binutils nm not installed")
@pytest.mark.parametrize("which", ["pie", "nopie", "lib"])
def test_read_symbols_agree_with_nm(bins: dict[str, Path], which: str) -> None:
    starts, sizes, names = read_symbols(bins[which].read_bytes())
    assert starts.dtype == np.uint64 and sizes.dtype == np.uint64
    assert len(starts) == len(sizes) == len(names)
    assert (starts != 0).all()
    got = dict(zip(names, starts.tolist(), strict=True))
    nm = _nm_functions(bins[which])
    for name in ("kiln_where", "kiln_fixture_alpha", "kiln_fixture_static", "main"):
        if which != "lib":
            assert got[name] == nm[name], name
    if which == "lib":
        assert got["kiln_lib_function"] == nm["kiln_lib_function"]
        assert got["kiln_lib_where"] == nm["kiln_lib_where"]
    assert not any("@" in n for n in names)  # undefined imports are skipped
    triples = list(zip(starts.tolist(), sizes.tolist(), names, strict=True))
    assert len(triples) == len(set(triples))


@pytest.mark.skipif(shutil.which("strip") is None, reason="binutils strip not installed")
def test_stripped_library_keeps_dynsym(bins: dict[str, Path], tmp_path: Path) -> None:
    stripped = tmp_path / "stripped.so"
    subprocess.run(["strip", "-o", str(stripped), str(bins["lib"])], check=True)
    _, _, names = read_symbols(stripped.read_bytes())
    assert "kiln_lib_function" in names  # exported: in .dynsym
    assert "kiln_lib_where" not in names  # static: only in the stripped .symtab


def test_elf32(fixture_build_dir: Path) -> None:
    out = fixture_build_dir / "elf_lib32.so"
    cmd = ["gcc", "-m32", "-O2", "-shared", "-nostdlib", "-fPIC", "-Wl,--build-id=0xbeef"]
    built = subprocess.run(
        [*cmd, str(FIXTURES / "native_lib.c"), "-o", str(out)], capture_output=True, check=False
    )
    if built.returncode != 0:
        skip_outside_ci("gcc cannot build 32-bit objects here")
    info = read_elf(out.read_bytes())
    assert info.build_id == "beef"
    assert {"kiln_lib_function", "kiln_lib_where"} <= set(info.symbols.names)
    if shutil.which("nm"):
        nm = _nm_functions(out)
        got = dict(zip(info.symbols.names, info.symbols.starts.tolist(), strict=True))
        assert got["kiln_lib_function"] == nm["kiln_lib_function"]


def test_read_elf_bundles_everything(bins: dict[str, Path]) -> None:
    info = read_elf(bins["lib"].read_bytes())
    assert info.build_id == LIB_BUILD_ID
    assert info.elf_type is ElfType.DYN
    assert any(s.executable for s in info.segments)
    assert "kiln_lib_function" in info.symbols.names
    syms = info.symbols
    assert len(syms.limits) == len(syms.ranks) == len(syms)
    text_end = max(s.vaddr + s.memsz for s in info.segments if s.executable)
    i = syms.names.index("kiln_lib_function")
    assert syms.starts[i] < syms.limits[i] <= text_end
    assert len(read_elf(bins["lib"].read_bytes(), symbols=False).symbols) == 0


def test_real_system_binaries() -> None:
    for path in ("/bin/true", "/usr/bin/python3"):
        with open(path, "rb") as f:
            info = read_elf(f)
        assert info.build_id == build_id_of_path(path)
        assert info.segments


# -- notes -----------------------------------------------------------------------


def _note(name: bytes, ntype: int, desc: bytes, align: int = 4) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % align)

    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def test_build_id_from_notes_skips_other_notes() -> None:
    bid = bytes(range(20))
    data = _note(b"Linux\0", 6, b"\x01\x01\0\0") + _note(b"GNU\0", 3, bid)
    assert build_id_from_notes(data) == bid.hex()
    # 8-aligned notes (x86-64 .note.gnu.property style).
    data8 = _note(b"GNU\0", 5, b"\0" * 12, align=8) + _note(b"GNU\0", 3, bid, align=8)
    assert build_id_from_notes(data8, align=8) == bid.hex()


def test_build_id_from_bad_notes_is_empty() -> None:
    good = _note(b"GNU\0", 3, b"\xaa" * 20)
    assert build_id_from_notes(b"") == ""
    assert build_id_from_notes(good[:-1]) == ""
    assert build_id_from_notes(struct.pack("<III", 0xFFFFFFFF, 0xFFFFFFFF, 3)) == ""
    assert build_id_from_notes(_note(b"XYZ\0", 3, b"\xaa" * 20)) == ""


# -- load bias -------------------------------------------------------------------

# /bin/true-like PIE: headers R at 0, text RX at 0x2000.
PIE_SEGS = [
    Segment(0, 0, 0x1290, 0x1290, PF_R),
    Segment(0x2000, 0x2000, 0x3D59, 0x3D59, PF_R | PF_X),
]
# Non-PIE: linked at 0x400000.
EXEC_SEGS = [
    Segment(0, 0x400000, 0x5F8, 0x5F8, PF_R),
    Segment(0x1000, 0x401000, 0x1A5, 0x1A5, PF_R | PF_X),
]
# lld-style: text not page-aligned in the file, vaddr - offset differs per segment.
LLD_SEGS = [
    Segment(0, 0, 0x1A3C, 0x1A3C, PF_R),
    Segment(0x1A40, 0x2A40, 0x5000, 0x5000, PF_R | PF_X),
]


def test_pie_load_bias() -> None:
    start = 0x55D0_0000_2000  # the r-xp mapping, file offset 0x2000
    assert address_to_elf_vaddr(start + 0x345, start, 0x2000, PIE_SEGS) == 0x2345
    assert file_offset_to_vaddr(PIE_SEGS, 0x2345) == 0x2345


def test_non_pie_vaddr_is_the_runtime_address() -> None:
    assert address_to_elf_vaddr(0x401123, 0x401000, 0x1000, EXEC_SEGS) == 0x401123


def test_shared_library_with_unaligned_text() -> None:
    start = 0x7F00_0000_1000  # mapping of file offset 0x1000 (page holding 0x1a40)
    runtime = start + (0x1B00 - 0x1000)  # file offset 0x1b00
    assert address_to_elf_vaddr(runtime, start, 0x1000, LLD_SEGS) == 0x2B00


def test_addresses_outside_segments() -> None:
    assert file_offset_to_vaddr(PIE_SEGS, 0x1F00) is None  # the gap between segments
    assert file_offset_to_vaddr(PIE_SEGS, 0x10_0000) is None
    assert address_to_elf_vaddr(0x1000, 0x2000, 0, PIE_SEGS) is None
    assert file_offset_to_vaddr([], 0) is None


@given(
    st.lists(st.integers(0, 0x8000), max_size=50), st.sampled_from([PIE_SEGS, EXEC_SEGS, LLD_SEGS])
)
def test_vectorized_load_bias_matches_scalar(offsets: list[int], segs: list[Segment]) -> None:
    vaddrs, ok = file_offsets_to_vaddrs(segs, np.array(offsets, dtype=np.uint64))
    for off, v, good in zip(offsets, vaddrs.tolist(), ok.tolist(), strict=True):
        want = file_offset_to_vaddr(segs, off)
        assert good == (want is not None)
        if want is not None:
            assert v == want


# -- corrupt input ---------------------------------------------------------------


def _all_parsers(data: bytes) -> None:
    """Run every parser; ElfError is the only acceptable failure."""
    for parse in (build_id, load_segments, elf_type, read_symbols, read_elf):
        for source in (data, io.BytesIO(data)):
            with contextlib.suppress(ElfError):
                parse(source)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x7fELF", b"\x7fELF" + b"\0" * 60, b"hello world" * 10, b"#!/bin/sh\necho hi\n" * 9],
)
def test_non_elf_input_raises_elf_error(data: bytes) -> None:
    for parse in (build_id, load_segments, elf_type, read_symbols, read_elf):
        with pytest.raises(ElfError):
            parse(data)
    assert issubclass(ElfError, ValueError)


def _hot_regions(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges where corruption reaches the parsers: headers and tables."""
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phnum = struct.unpack_from("<H", data, 0x38)[0]
    regions = [(0, 64), (phoff, phoff + 56 * phnum), (shoff, len(data))]
    return [(lo, min(hi, len(data))) for lo, hi in regions if lo < len(data)]


@st.composite
def _corruptions(draw: st.DrawFn, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, len(data)))]
    buf = bytearray(data)
    regions = [*_hot_regions(data), (0, len(data))]
    for _ in range(draw(st.integers(1, 4))):
        lo, hi = draw(st.sampled_from(regions))
        pos = draw(st.integers(lo, hi - 1))
        if kind == "flip":
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            buf[pos : pos + len(chunk)] = chunk
            del buf[len(data) :]
    return bytes(buf)


FUZZ = settings(
    max_examples=250,
    deadline=5000,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_TRUE = Path("/bin/true").read_bytes()


@FUZZ
@given(_corruptions(_TRUE))
def test_fuzz_corrupt_bin_true(data: bytes) -> None:
    _all_parsers(data)


@FUZZ
@given(data=st.data())
def test_fuzz_corrupt_fixture_with_symtab(bins: dict[str, Path], data: st.DataObject) -> None:
    original = bins["lib"].read_bytes()
    _all_parsers(data.draw(_corruptions(original)))


def test_clamped_reads_never_allocate_past_the_file() -> None:
    # A section size field claiming ~2**63 bytes must fail fast, not allocate.
    data = bytearray(_TRUE)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shnum = struct.unpack_from("<H", data, 0x3C)[0]
    for i in range(shnum):
        struct.pack_into("<Q", data, shoff + i * 64 + 0x20, 1 << 63)  # sh_size
    with pytest.raises(ElfError):
        read_elf(bytes(data))
    assert elf.build_id(bytes(data)) == build_id(_TRUE)  # the PT_NOTE path still works
