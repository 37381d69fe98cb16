"""symbolizer/kallsyms.py: parsing /proc/kallsyms and naming kernel addresses."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from symbolizer.kallsyms import (
    HIDDEN_LABEL,
    KERNEL_MAPPING_NAME,
    KernelSymbolizer,
    parse_kallsyms,
)
from symbolizer.profile import FrameKind
from tests.conftest import skip_outside_ci

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 t _text_local_alias
ffffffff81001000 T schedule
ffffffff81001200 t __schedule
ffffffff81001800 W weak_thing
ffffffff81002000 T _etext
ffffffff82000000 D some_data
ffffffff82001000 b some_bss
ffffffff82002000 R some_rodata
ffffffffc0a00000 t nf_hook_slow\t[nf_tables]
ffffffffc0a00100 T nft_do_chain\t[nf_tables]
ffffffffc0b00000 t ext4_fill_super\t[ext4]
ffffffffc0b00400 t _RNvCs1234_6kernel4init\t[rust_mod]
ffffffffc0c00000 d module_data\t[ext4]
not a line
zzzz T bad_address
"""

HIDDEN = """\
0000000000000000 T _stext
0000000000000000 T schedule
0000000000000000 t nf_hook_slow\t[nf_tables]
"""


def test_parse_keeps_text_symbols_only() -> None:
    ks = parse_kallsyms(KALLSYMS)
    assert not ks.hidden
    names = set(ks.table.names[i] for i in ks.table.name_idx.tolist())
    assert {"schedule", "__schedule", "weak_thing", "nf_hook_slow", "ext4_fill_super"} <= names
    assert not names & {"some_data", "some_bss", "some_rodata", "module_data", "bad_address"}
    assert ks.starts.dtype == np.uint64
    assert ks.modules[0] == ""
    assert set(ks.modules) == {"", "nf_tables", "ext4", "rust_mod"}


def test_lookup_names_and_modules() -> None:
    ks = parse_kallsyms(KALLSYMS)
    rows = ks.lookup(np.array([0xFFFFFFFF81001010, 0xFFFFFFFF81001300, 0xFFFFFFFFC0A00104],
                              dtype=np.uint64))  # fmt: skip
    assert [ks.name(r) for r in rows.tolist()] == ["schedule", "__schedule", "nft_do_chain"]
    assert [ks.module(r) for r in rows.tolist()] == ["", "", "nf_tables"]


def test_global_symbol_wins_over_local_alias() -> None:
    ks = parse_kallsyms(KALLSYMS)
    assert ks.name(int(ks.lookup([0xFFFFFFFF81000004])[0])) == "_stext"


def test_symbols_end_at_the_next_one_or_a_cap() -> None:
    ks = parse_kallsyms(KALLSYMS, max_unsized=0x1000)
    row = ks.lookup([0xFFFFFFFF81001FFF, 0xFFFFFFFF81002FFF, 0xFFFFFFFF81003000]).tolist()
    assert ks.name(row[0]) == "weak_thing"
    assert ks.name(row[1]) == "_etext"
    assert row[2] == -1


def test_all_zero_addresses_mean_hidden() -> None:
    ks = parse_kallsyms(HIDDEN)
    assert ks.hidden
    assert len(ks) == 0
    assert ks.lookup([0xFFFFFFFF81001000]).tolist() == [-1]


def test_empty_text_is_not_hidden() -> None:
    ks = parse_kallsyms("")
    assert not ks.hidden and len(ks) == 0


def test_module_ranges() -> None:
    ks = parse_kallsyms(KALLSYMS)
    ranges = dict(zip(ks.modules, ks.module_ranges(), strict=True))
    assert ranges["nf_tables"][0] == 0xFFFFFFFFC0A00000
    assert ranges["nf_tables"][1] > 0xFFFFFFFFC0A00100
    assert ranges[""][0] == 0xFFFFFFFF81000000


# -- KernelSymbolizer ----------------------------------------------------------------


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)

    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def _fake_roots(tmp_path: Path, kallsyms: str) -> tuple[str, str]:
    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    (proc / "kallsyms").write_text(kallsyms)
    (sys_ / "kernel").mkdir(parents=True)
    (sys_ / "kernel" / "notes").write_bytes(_note(b"GNU\0", 3, bytes.fromhex("abcd" * 10)))
    mod_notes = sys_ / "module" / "ext4" / "notes"
    mod_notes.mkdir(parents=True)
    (mod_notes / ".note.gnu.build-id").write_bytes(_note(b"GNU\0", 3, bytes.fromhex("ef01" * 10)))
    return str(proc), str(sys_)


def test_symbolizer_frames(tmp_path: Path) -> None:
    proc, sys_ = _fake_roots(tmp_path, KALLSYMS)
    ks = KernelSymbolizer(proc_root=proc, sys_root=sys_)
    addrs = [0xFFFFFFFF81001010, 0xFFFFFFFFC0B00010, 0xFFFFFFFFC0B00410, 0xFFFFFFFFF0000000]
    frames = ks.symbolize(np.array(addrs, dtype=np.uint64))
    assert [f.function for f in frames] == [
        "schedule",
        "ext4_fill_super",
        "kernel::init",  # Rust-for-Linux symbols are demangled
        f"{KERNEL_MAPPING_NAME}+0xfffffffff0000000",
    ]
    assert all(f.kind is FrameKind.KERNEL for f in frames)
    assert [f.address for f in frames] == addrs
    assert frames[2].system_name == "_RNvCs1234_6kernel4init"
    m0, m1 = frames[0].mapping, frames[1].mapping
    assert m0 is not None and m1 is not None
    assert (m0.filename, m0.build_id, m0.kind) == (
        KERNEL_MAPPING_NAME,
        "abcd" * 10,
        FrameKind.KERNEL,
    )
    assert (m1.filename, m1.build_id) == ("[ext4]", "ef01" * 10)
    assert m1.start <= addrs[1] < m1.limit
    assert ks.counters["kernel_symbolized"] == 3
    assert ks.counters["kernel_unknown"] == 1
    assert ks.counters["kallsyms_loads"] == 1


def test_symbolizer_hidden_addresses_get_a_clear_label(tmp_path: Path) -> None:
    proc, sys_ = _fake_roots(tmp_path, HIDDEN)
    ks = KernelSymbolizer(proc_root=proc, sys_root=sys_)
    frames = ks.symbolize([0xFFFFFFFF81001010, 0xFFFFFFFF81001020])
    assert [f.function for f in frames] == [HIDDEN_LABEL, HIDDEN_LABEL]
    assert "kptr_restrict" in HIDDEN_LABEL
    assert all(f.kind is FrameKind.KERNEL for f in frames)
    assert [f.address for f in frames] == [0xFFFFFFFF81001010, 0xFFFFFFFF81001020]
    assert ks.counters["kernel_hidden"] == 2


def test_symbolizer_without_kallsyms_keeps_every_address(tmp_path: Path) -> None:
    ks = KernelSymbolizer(proc_root=str(tmp_path / "nothing"), sys_root=str(tmp_path))
    frames = ks.symbolize([0xFFFFFFFF81001010])
    assert frames[0].function == f"{KERNEL_MAPPING_NAME}+0xffffffff81001010"
    assert ks.counters["kallsyms_errors"] == 1


def test_symbolizer_reloads_for_new_modules(tmp_path: Path) -> None:
    proc, sys_ = _fake_roots(tmp_path, KALLSYMS)
    now = [100.0]
    ks = KernelSymbolizer(proc_root=proc, sys_root=sys_, refresh_after_s=30, clock=lambda: now[0])
    new_addr = 0xFFFFFFFFC0D00010
    assert ks.symbolize([new_addr])[0].function.startswith(KERNEL_MAPPING_NAME)
    (Path(proc) / "kallsyms").write_text(KALLSYMS + "ffffffffc0d00000 t xt_match\t[x_tables]\n")
    now[0] += 10  # too soon: no reread
    assert ks.symbolize([new_addr])[0].function.startswith(KERNEL_MAPPING_NAME)
    now[0] += 30
    assert ks.symbolize([new_addr])[0].function == "xt_match"
    assert ks.counters["kallsyms_loads"] == 2


@pytest.mark.skipif(not Path("/proc/kallsyms").exists(), reason="no /proc/kallsyms")
def test_real_kallsyms() -> None:
    text = Path("/proc/kallsyms").read_text()
    ks = parse_kallsyms(text)
    if ks.hidden:
        skip_outside_ci("kptr_restrict hides kernel addresses for this user")
    for line in text.splitlines():
        addr, kind, name = line.split()[:3]
        if name == "schedule" and kind in "tT":
            frames = KernelSymbolizer().symbolize([int(addr, 16) + 1])
            assert frames[0].function == "schedule"
            break
    else:
        skip_outside_ci("no schedule symbol")
