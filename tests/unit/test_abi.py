"""The ctypes mirror in profiler/bpf/abi.py matches bpf/kiln.h, field by field."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import pytest

from profiler.bpf import abi


def constants() -> dict[str, int]:
    """Every constant of kiln.h, by its C name, with the value Python uses."""
    out = {f"KILN_CTR_{c.name}": c.value for c in abi.Counter}
    out |= {f"KILN_F_{f.name}": f.value for f in abi.Flag if f.name}
    out |= {f"KILN_CFA_{c.name}": c.value for c in abi.CfaType}
    out |= {f"KILN_RBP_{r.name}": r.value for r in abi.RbpType}
    out |= {
        f"KILN_EV_{e}": getattr(abi, f"EV_{e}") for e in ("NEW_KEY", "EXEC", "EXIT", "UNKNOWN_PC")
    }
    out |= {
        "KILN_CTR_MAX": abi.COUNTER_MAX,
        "KILN_COMM_LEN": abi.COMM_LEN,
        "KILN_MAX_STACK_DEPTH": abi.MAX_STACK_DEPTH,
        "KILN_STACK_TRUNCATED": abi.STACK_TRUNCATED,
    }
    names = (
        "PAGE_SHIFT",
        "FINE_SHIFT",
        "FINE_FILE_BIT",
        "CHUNK_ROWS",
        "CHUNK_STEPS",
        "PAGE_SPLIT",
        "MAP_NO_TABLE",
    )
    out |= {f"KILN_{n}": getattr(abi, n) for n in names}
    return out


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Sizes, offsets and constants as the C compiler sees kiln.h."""
    tmp = tmp_path_factory.mktemp("abi")
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "kiln.h"', "int main(void) {"]
    for cname, mirror in abi.MIRRORS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in mirror._fields_:
            lines.append(f'printf("{cname}.{fname} %zu\\n", offsetof(struct {cname}, {fname}));')
    for name in constants():
        lines.append(f'printf("{name} %llu\\n", (unsigned long long){name});')
    lines.append("return 0; }")
    src = tmp / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp / "layout"
    subprocess.run(
        ["gcc", "-D__KILN_USERSPACE__", f"-I{abi.BPF_DIR}", str(src), "-o", str(exe)], check=True
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_struct_sizes_and_offsets_match_header(c_layout: dict[str, int]) -> None:
    for cname, mirror in abi.MIRRORS.items():
        assert c_layout[cname] == ctypes.sizeof(mirror), cname
        for fname, *_ in mirror._fields_:
            assert c_layout[f"{cname}.{fname}"] == getattr(mirror, fname).offset, f"{cname}.{fname}"


def test_constants_match_header(c_layout: dict[str, int]) -> None:
    for name, value in constants().items():
        assert c_layout[name] == value, name
    assert len(abi.Counter) == abi.COUNTER_MAX
    assert 1 << abi.CHUNK_STEPS == abi.CHUNK_ROWS


def test_numpy_dtypes_follow_the_mirror() -> None:
    flat = [
        m
        for m in abi.MIRRORS.values()
        if not any(issubclass(t, ctypes.Structure) for _, t, *_ in m._fields_)
    ]
    assert abi.SampleKey in flat and abi.UnwindRow in flat
    for mirror in flat:
        dt = abi.numpy_dtype(mirror)
        assert dt.itemsize == ctypes.sizeof(mirror)
        assert dt.fields is not None
        for name, (_, offset) in dt.fields.items():
            assert offset == getattr(mirror, name).offset, name


def test_header_is_the_one_the_program_includes() -> None:
    program = (abi.BPF_DIR / "cpu_sample.bpf.c").read_text()
    assert '#include "kiln.h"' in program
    assert Path(abi.HEADER).is_file()
