"""The ctypes mirror in profiler/bpf/abi.py matches bpf/kiln.h, field by field."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from profiler.bpf import abi


def _c_layout(tmp_path: Path) -> dict[str, int]:
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "kiln.h"', "int main(void) {"]
    for cname, mirror in abi.MIRRORS.items():
        lines.append(f'printf("{cname} %zu\\n", sizeof(struct {cname}));')
        for fname, *_ in mirror._fields_:
            lines.append(f'printf("{cname}.{fname} %zu\\n", offsetof(struct {cname}, {fname}));')
    for c in abi.Counter:
        lines.append(f'printf("KILN_CTR_{c.name} %d\\n", (int)KILN_CTR_{c.name});')
    for f in abi.Flag:
        lines.append(f'printf("KILN_F_{f.name} %u\\n", KILN_F_{f.name});')
    lines.append('printf("KILN_CTR_MAX %d\\n", (int)KILN_CTR_MAX);')
    lines.append('printf("KILN_COMM_LEN %d\\n", KILN_COMM_LEN);')
    for ev in ("NEW_KEY", "EXEC", "EXIT", "UNKNOWN_PC"):
        lines.append(f'printf("KILN_EV_{ev} %u\\n", KILN_EV_{ev});')
    lines.append('printf("KILN_MAX_STACK_DEPTH %d\\n", KILN_MAX_STACK_DEPTH);')
    lines.append('printf("KILN_STACK_TRUNCATED %u\\n", KILN_STACK_TRUNCATED);')
    for name in (
        "PAGE_SHIFT",
        "FINE_SHIFT",
        "FINE_FILE_BIT",
        "CHUNK_ROWS",
        "CHUNK_STEPS",
        "PAGE_SPLIT",
        "MAP_NO_TABLE",
    ):
        lines.append(f'printf("KILN_{name} %u\\n", (unsigned)KILN_{name});')
    for c in abi.CfaType:
        lines.append(f'printf("KILN_CFA_{c.name} %d\\n", KILN_CFA_{c.name});')
    for r in abi.RbpType:
        lines.append(f'printf("KILN_RBP_{r.name} %d\\n", KILN_RBP_{r.name});')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    subprocess.run(
        ["gcc", "-D__KILN_USERSPACE__", f"-I{abi.BPF_DIR}", str(src), "-o", str(exe)], check=True
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


def test_struct_sizes_and_offsets_match_header(tmp_path: Path) -> None:
    c = _c_layout(tmp_path)
    for cname, mirror in abi.MIRRORS.items():
        assert c[cname] == ctypes.sizeof(mirror), cname
        for fname, *_ in mirror._fields_:
            assert c[f"{cname}.{fname}"] == getattr(mirror, fname).offset, f"{cname}.{fname}"


def test_constants_match_header(tmp_path: Path) -> None:
    c = _c_layout(tmp_path)
    for ctr in abi.Counter:
        assert c[f"KILN_CTR_{ctr.name}"] == ctr.value
    for f in abi.Flag:
        assert c[f"KILN_F_{f.name}"] == f.value
    assert c["KILN_CTR_MAX"] == abi.COUNTER_MAX == len(abi.Counter)
    assert c["KILN_COMM_LEN"] == abi.COMM_LEN
    for ev in ("NEW_KEY", "EXEC", "EXIT", "UNKNOWN_PC"):
        assert c[f"KILN_EV_{ev}"] == getattr(abi, f"EV_{ev}")
    assert c["KILN_MAX_STACK_DEPTH"] == abi.MAX_STACK_DEPTH
    assert c["KILN_STACK_TRUNCATED"] == abi.STACK_TRUNCATED
    for name in (
        "PAGE_SHIFT",
        "FINE_SHIFT",
        "FINE_FILE_BIT",
        "CHUNK_ROWS",
        "CHUNK_STEPS",
        "PAGE_SPLIT",
        "MAP_NO_TABLE",
    ):
        assert c[f"KILN_{name}"] == getattr(abi, name), name
    assert 1 << abi.CHUNK_STEPS == abi.CHUNK_ROWS
    for ct in abi.CfaType:
        assert c[f"KILN_CFA_{ct.name}"] == ct.value
    for r in abi.RbpType:
        assert c[f"KILN_RBP_{r.name}"] == r.value


def test_numpy_dtypes_follow_the_mirror() -> None:
    from profiler.bpf.loader import KEY_DTYPE, VALUE_DTYPE

    assert KEY_DTYPE.itemsize == ctypes.sizeof(abi.SampleKey)
    assert VALUE_DTYPE.itemsize == ctypes.sizeof(abi.SampleValue)
    for name in KEY_DTYPE.names or ():
        assert KEY_DTYPE.fields is not None
        assert KEY_DTYPE.fields[name][1] == getattr(abi.SampleKey, name).offset, name
    for name in VALUE_DTYPE.names or ():
        assert VALUE_DTYPE.fields is not None
        assert VALUE_DTYPE.fields[name][1] == getattr(abi.SampleValue, name).offset, name
