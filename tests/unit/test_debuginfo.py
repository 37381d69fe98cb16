"""symbolizer/debuginfo.py: the pure parsers, then stripped binaries for real.

Fixtures are compiled at test time and split the way distributions do it
(`objcopy --only-keep-debug`, `strip`, `objcopy --add-gnu-debuglink`, a
MiniDebugInfo section built like Fedora's find-debuginfo); the running
process is symbolized through NativeSymbolizer.
"""

from __future__ import annotations

import lzma
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from profiler.procfs import MapEntry, parse_maps
from symbolizer.debuginfo import (
    DEBUG_BUILD_ID_MISMATCH,
    DEBUG_FILE,
    DEBUG_MISSING,
    DEBUGLINK_CRC_MISMATCH,
    MINIDEBUGINFO,
    DebugFinder,
    DebugRefs,
    build_id_paths,
    debuglink_crc,
    debuglink_paths,
    parse_debuglink,
    read_debug_refs,
    read_minidebuginfo,
)
from symbolizer.elf import ElfError, build_id_of_path, read_elf
from symbolizer.native import SYMBOLIZED, UNSYMBOLIZED, NativeSymbolizer
from tests.conftest import build_c

NAMES = ["kiln_fixture_alpha", "kiln_fixture_static"]

# -- pure parsers ------------------------------------------------------------------


def debuglink_section(name: bytes, crc: int, little: bool = True) -> bytes:
    data = name + b"\0"
    data += b"\0" * (-len(data) % 4)
    return data + struct.pack("<I" if little else ">I", crc)


def tiny_elf(
    sections: Sequence[tuple[str, int, bytes]], *, bits: int = 64, little: bool = True
) -> bytes:
    """An ELF file holding only section headers: (name, sh_type, data) each."""
    e = "<" if little else ">"
    ehsize, shentsize = (64, 64) if bits == 64 else (52, 40)
    names = b"\0"
    offsets = []
    for name, _, _ in [*sections, (".shstrtab", 3, b"")]:
        offsets.append(len(names))
        names += name.encode() + b"\0"
    body = b""
    table = [(0, 0, 0, 0)]  # the null section: (name, type, offset, size)
    for (_, sh_type, data), name_off in zip(sections, offsets, strict=False):
        table.append((name_off, sh_type, ehsize + len(body), len(data)))
        body += data
    table.append((offsets[-1], 3, ehsize + len(body), len(names)))
    body += names
    shoff = ehsize + len(body)
    ident = b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if little else 2, 1]) + b"\0" * 9
    word = "Q" if bits == 64 else "I"
    header = ident + struct.pack(
        e + f"HHI{word}{word}{word}IHHHHHH",
        2, 62, 1, 0, 0, shoff, 0, ehsize, 0, 0, shentsize, len(table), len(table) - 1,
    )  # fmt: skip
    shdrs = b"".join(
        struct.pack(e + f"II{word}{word}{word}{word}II{word}{word}", n, t, 0, 0, o, z, 0, 0, 1, 0)
        for n, t, o, z in table
    )
    return header + body + shdrs


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("little", [True, False])
def test_refs_of_every_class_and_byte_order(bits: int, little: bool) -> None:
    elf = tiny_elf(
        [
            (".symtab", 2, b""),
            (".gnu_debuglink", 1, debuglink_section(b"app.debug", 0xDEADBEEF, little)),
            (".gnu_debugdata", 1, b"xz"),
        ],
        bits=bits,
        little=little,
    )
    refs = read_debug_refs(elf)
    assert refs.has_symtab
    assert (refs.debuglink, refs.debuglink_crc) == ("app.debug", 0xDEADBEEF)
    assert refs.debugdata is not None and refs.debugdata[1] == 2
    assert read_debug_refs(tiny_elf([], bits=bits, little=little)) == DebugRefs(False)


def test_parse_debuglink() -> None:
    assert parse_debuglink(debuglink_section(b"libc.so.6.debug", 7)) == ("libc.so.6.debug", 7)
    big = debuglink_section(b"abc", 7, little=False)
    assert parse_debuglink(big, little_endian=False) == ("abc", 7)
    for bad in (b"../../etc/passwd", b"a/b", b"..", b".", b"", b"\xff\xfe"):
        assert parse_debuglink(debuglink_section(bad, 7)) == ("", 0)
    assert parse_debuglink(b"no terminator") == ("", 0)
    assert parse_debuglink(b"abc\0\1\2") == ("", 0)  # the CRC is cut short


def test_not_elf_and_truncated_input_raise_elf_error() -> None:
    for data in (b"", b"MZ\x90\x00" * 8, b"\x7fELF\x09\x01" + b"\0" * 58):
        with pytest.raises(ElfError):
            read_debug_refs(data)
    elf = tiny_elf([(".gnu_debuglink", 1, debuglink_section(b"x.debug", 1))])
    with pytest.raises(ElfError):
        read_debug_refs(elf[:-10])  # section headers cut


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupt_input_only_ever_raises_elf_error(data: st.DataObject) -> None:
    elf = bytearray(tiny_elf([(".gnu_debuglink", 1, debuglink_section(b"x.debug", 1))]))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(elf) - 1))
        elf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(elf)))
    try:
        refs = read_debug_refs(bytes(elf[:cut]))
    except ElfError:
        return
    assert isinstance(refs, DebugRefs)


def test_candidate_paths_follow_gdb() -> None:
    bid = "ab" + "cd" * 19
    assert build_id_paths(bid, ["/usr/lib/debug", "/opt/dbg/"]) == [
        f"/usr/lib/debug/.build-id/ab/{'cd' * 19}.debug",
        f"/opt/dbg/.build-id/ab/{'cd' * 19}.debug",
    ]
    assert build_id_paths("", ["/usr/lib/debug"]) == []
    assert build_id_paths("../x", ["/usr/lib/debug"]) == []
    assert debuglink_paths("/usr/bin/app", "app.debug", ["/usr/lib/debug"]) == [
        "/usr/bin/app.debug",
        "/usr/bin/.debug/app.debug",
        "/usr/lib/debug/usr/bin/app.debug",
    ]
    assert debuglink_paths("app", "app.debug", ["/usr/lib/debug"]) == []


def test_debug_roots_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        DebugFinder(["usr/lib/debug"])


def test_minidebuginfo_that_does_not_decompress() -> None:
    refs = DebugRefs(False, debugdata=(0, 8))
    with pytest.raises(ElfError):
        read_minidebuginfo(b"not xz!!", refs)
    with pytest.raises(ElfError):
        read_minidebuginfo(lzma.compress(b"x" * 100)[:-3] + b"\0" * 3, refs)


# -- real binaries -----------------------------------------------------------------


@pytest.fixture(scope="module")
def progs(fixture_build_dir: Path) -> dict[str, Path]:
    d = fixture_build_dir
    return {
        "bid": build_c(d, "native_prog.c", "dbg_bid", "-O2", "-DKILN_NO_LIB"),
        "nobid": build_c(
            d, "native_prog.c", "dbg_nobid", "-O2", "-DKILN_NO_LIB", "-Wl,--build-id=none"
        ),
        "other": build_c(
            d, "native_prog.c", "dbg_other", "-O1", "-DKILN_NO_LIB", "-Wl,--build-id=sha1"
        ),
    }


def run(*cmd: str | Path) -> None:
    subprocess.run([str(c) for c in cmd], check=True, capture_output=True)


def split(binary: Path, stripped: Path, debug: Path, *, link: bool = True) -> None:
    """Ship `binary` the distribution way: a stripped copy and a debug file."""
    debug.parent.mkdir(parents=True, exist_ok=True)
    stripped.parent.mkdir(parents=True, exist_ok=True)
    run("objcopy", "--only-keep-debug", binary, debug)
    run("strip", "-o", stripped, binary)
    if link:
        run("objcopy", f"--add-gnu-debuglink={debug}", stripped)


@contextmanager
def launched(cmd: Sequence[str | Path]) -> Iterator[tuple[int, list[MapEntry], list[int]]]:
    """Run native_prog (via `cmd`): its pid, maps, and alpha's and static's addresses."""
    with subprocess.Popen(
        [str(c) for c in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            addrs = [int(x, 16) for x in proc.stdout.readline().split()[:2]]
            yield proc.pid, parse_maps(Path(f"/proc/{proc.pid}/maps").read_text()), addrs
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


@contextmanager
def symbolized(cmd: Sequence[str | Path], ns: NativeSymbolizer) -> Iterator[list[str]]:
    """The names `ns` gives alpha's and static's addresses in a run of `cmd`."""
    with launched(cmd) as (pid, maps, addrs):
        yield [f.function for f in ns.symbolize(pid, maps, addrs)]


def test_stripped_binary_without_debug_file_is_counted(
    progs: dict[str, Path], tmp_path: Path
) -> None:
    exe = tmp_path / "app"
    run("strip", "-o", exe, progs["bid"])
    ns = NativeSymbolizer(debug_roots=[str(tmp_path / "none")])
    with symbolized([exe], ns) as names:
        assert all(n.startswith("app+0x") for n in names)
    assert ns.counters[DEBUG_MISSING] == 1 and ns.counters[UNSYMBOLIZED] == 2


def test_debug_file_found_by_build_id(progs: dict[str, Path], tmp_path: Path) -> None:
    bid = build_id_of_path(str(progs["bid"]))
    root = tmp_path / "debug"
    exe = tmp_path / "bin" / "app"
    split(progs["bid"], exe, root / ".build-id" / bid[:2] / f"{bid[2:]}.debug", link=False)
    ns = NativeSymbolizer(debug_roots=["/nonexistent", str(root)])
    with symbolized([exe], ns) as names:
        assert names == NAMES
    assert ns.counters[DEBUG_FILE] == 1 and ns.counters[SYMBOLIZED] == 2
    (image,) = [i for i in ns._images.values() if i is not None]
    assert image.build_id == bid  # still the binary's own
    assert image.debug_file.endswith(f"{bid[2:]}.debug")


@pytest.mark.parametrize("where", ["beside", "dot-debug", "debug-root"])
def test_debug_file_found_by_debuglink_and_crc(
    progs: dict[str, Path], tmp_path: Path, where: str
) -> None:
    exe = tmp_path / "bin" / "app"
    root = tmp_path / "debug"
    debug = {
        "beside": exe.parent / "app.dbg",
        "dot-debug": exe.parent / ".debug" / "app.dbg",
        "debug-root": root / str(exe.parent).lstrip("/") / "app.dbg",
    }[where]
    split(progs["nobid"], exe, debug)
    assert build_id_of_path(str(exe)) == ""  # only the CRC can vouch for the file
    ns = NativeSymbolizer(debug_roots=[str(root)])
    with symbolized([exe], ns) as names:
        assert names == NAMES
    assert ns.counters[DEBUG_FILE] == 1


def test_debuglink_crc_mismatch_is_rejected(progs: dict[str, Path], tmp_path: Path) -> None:
    exe = tmp_path / "app"
    debug = tmp_path / "app.dbg"
    split(progs["nobid"], exe, debug)
    with debug.open("ab") as f:
        f.write(b"rebuilt")  # still a good ELF file, but not the one linked
    ns = NativeSymbolizer(debug_roots=[])
    with symbolized([exe], ns) as names:
        assert all(n.startswith("app+0x") for n in names)
    assert ns.counters[DEBUGLINK_CRC_MISMATCH] == 1 and ns.counters[DEBUG_FILE] == 0
    assert ns.counters[DEBUG_MISSING] == 1


def test_build_ids_decide_over_the_crc(progs: dict[str, Path], tmp_path: Path) -> None:
    """With build ids on both sides, a matching one is enough (no full-file CRC)
    and another one rejects the file whatever its CRC."""
    exe = tmp_path / "app"
    debug = tmp_path / "app.dbg"
    split(progs["bid"], exe, debug)
    with debug.open("ab") as f:
        f.write(b"x")
    ns = NativeSymbolizer(debug_roots=[])
    with symbolized([exe], ns) as names:
        assert names == NAMES
    assert ns.counters[DEBUG_FILE] == 1

    run("objcopy", "--only-keep-debug", progs["other"], debug)  # a different build
    ns = NativeSymbolizer(debug_roots=[])
    with symbolized([exe], ns) as names:
        assert all(n.startswith("app+0x") for n in names)
    assert ns.counters[DEBUG_BUILD_ID_MISMATCH] == 1 and ns.counters[DEBUG_FILE] == 0


def test_build_id_path_holding_another_build_is_rejected(
    progs: dict[str, Path], tmp_path: Path
) -> None:
    bid = build_id_of_path(str(progs["bid"]))
    root = tmp_path / "debug"
    exe = tmp_path / "app"
    split(progs["bid"], exe, tmp_path / "unused.debug", link=False)
    wrong = root / ".build-id" / bid[:2] / f"{bid[2:]}.debug"
    wrong.parent.mkdir(parents=True)
    run("objcopy", "--only-keep-debug", progs["other"], wrong)
    ns = NativeSymbolizer(debug_roots=[str(root)])
    with symbolized([exe], ns) as names:
        assert all(n.startswith("app+0x") for n in names)
    assert ns.counters[DEBUG_BUILD_ID_MISMATCH] == 1


def test_minidebuginfo(progs: dict[str, Path], tmp_path: Path) -> None:
    """Fedora's recipe: the function symbols not in .dynsym, xz'ed into .gnu_debugdata."""
    debug = tmp_path / "full.debug"
    mini = tmp_path / "mini"
    exe = tmp_path / "app"
    split(progs["bid"], exe, debug, link=False)
    nm = subprocess.run(
        ["nm", "--format=posix", "--defined-only", str(debug)],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    keep = tmp_path / "keep"
    keep.write_text("".join(f"{n}\n" for n, t, *_ in map(str.split, nm.splitlines()) if t in "Tt"))
    run("objcopy", "-S", "--remove-section", ".comment", f"--keep-symbols={keep}", debug, mini)
    packed = tmp_path / "mini.xz"
    packed.write_bytes(lzma.compress(mini.read_bytes(), format=lzma.FORMAT_XZ))
    run("objcopy", "--add-section", f".gnu_debugdata={packed}", exe)
    refs = read_debug_refs(exe.read_bytes())
    assert not refs.has_symtab and refs.debugdata is not None
    assert set(NAMES) <= set(read_minidebuginfo(exe.read_bytes(), refs).names)
    ns = NativeSymbolizer(debug_roots=[])
    with symbolized([exe], ns) as names:
        assert names == NAMES
    assert ns.counters[MINIDEBUGINFO] == 1 and ns.counters[DEBUG_MISSING] == 0


def test_debuglink_crc_is_what_objcopy_writes(progs: dict[str, Path], tmp_path: Path) -> None:
    exe, debug = tmp_path / "app", tmp_path / "app.dbg"
    split(progs["nobid"], exe, debug)
    refs = read_debug_refs(exe.read_bytes())
    assert refs.debuglink == "app.dbg"
    with debug.open("rb") as f:
        assert refs.debuglink_crc == debuglink_crc(f) == zlib.crc32(debug.read_bytes())


def test_finder_skips_the_binary_itself(progs: dict[str, Path], tmp_path: Path) -> None:
    """A debuglink naming the binary's own file name finds the binary first in
    its directory: it is passed over, and the real one in .debug/ is used."""
    exe = tmp_path / "app"
    split(progs["bid"], exe, tmp_path / ".debug" / "app")
    with exe.open("rb") as f:
        found = DebugFinder([]).find(f, read_elf(f), str(exe))
    assert found is not None and found.path == str(tmp_path / ".debug" / "app")
    assert set(NAMES) <= set(found.symbols.names)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a mount namespace")
def test_debug_file_only_inside_the_process_mount_namespace(
    progs: dict[str, Path], tmp_path: Path
) -> None:
    """The binary and its .debug/ live on a tmpfs of the process' own mount
    namespace; the host has neither."""
    stage = tmp_path / "stage"
    split(progs["nobid"], stage / "app", stage / ".debug" / "app.dbg")
    mnt = tmp_path / "private"
    mnt.mkdir()
    script = 'mount -t tmpfs kiln "$1" && cp -r "$2/." "$1" && exec "$1/app"'
    cmd: list[str | Path] = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
    cmd += [script, "sh", mnt, stage]
    with launched(cmd) as (pid, maps, addrs):
        shutil.rmtree(stage)
        assert any(m.file_path == str(mnt / "app") for m in maps)
        assert not (mnt / ".debug").exists()
        ns = NativeSymbolizer(debug_roots=[])
        assert [f.function for f in ns.symbolize(pid, maps, addrs)] == NAMES
    assert ns.counters[DEBUG_FILE] == 1
