"""Table-driven unwinding on the real kernel: binaries without frame pointers."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.bpf.recording import (
    Recording,
    assert_shares,
    complete_fraction,
    read_pprof,
    record_burner,
    stacks,
    start_kiln,
    stop_kiln,
)
from tests.conftest import FIXTURES, build_c

OMIT_FP = ("-O2", "-fomit-frame-pointer", "-pthread")


@pytest.fixture(scope="module")
def builds(fixture_build_dir: Path) -> Path:
    d = fixture_build_dir / "unwind"
    d.mkdir(exist_ok=True)
    return d


def _check(rec: Recording) -> None:
    assert rec.returncode == 0, rec.stderr
    fractions = complete_fraction(rec)
    for chain, fraction in fractions.items():
        assert fraction >= 0.99, f"{chain}: {fraction:.2%} complete stacks; {fractions}"
    assert_shares(rec, tolerance_pp=2.0)


def test_executable_without_frame_pointers(builds: Path, tmp_path: Path) -> None:
    exe = build_c(builds, "burner.c", "burner_nofp", *OMIT_FP)
    _check(record_burner(exe, tmp_path / "nofp.pb.gz", "-F", "499", seconds=8.0))


def test_dlopened_library_without_frame_pointers(builds: Path, tmp_path: Path) -> None:
    lib = build_c(
        builds, "burner_lib.c", "libburner.so", "-O2", "-fomit-frame-pointer", "-shared", "-fPIC"
    )
    exe = build_c(builds, "burner.c", "burner_dl", *OMIT_FP, "-DBURNER_DLOPEN", "-ldl")
    stats = tmp_path / "dl.json"
    rec = record_burner(
        [str(exe), str(lib)], tmp_path / "dl.pb.gz", "-F", "499", "--stats", str(stats), seconds=8.0
    )
    _check(rec)
    counters = json.loads(stats.read_text())["counters"]
    assert counters["events_unknown_pc"] >= 1, "the dlopen must be noticed from BPF"
    assert counters["unwind_table_errors"] == 0


def test_stripped_executable_with_separate_debug_file(builds: Path, tmp_path: Path) -> None:
    full = build_c(builds, "burner.c", "burner_full", *OMIT_FP)
    exe = tmp_path / "burner_stripped"
    debug = tmp_path / "burner_stripped.debug"
    subprocess.run(["objcopy", "--only-keep-debug", str(full), str(debug)], check=True)
    subprocess.run(["strip", "--strip-all", "-o", str(exe), str(full)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", str(exe)], check=True, cwd=tmp_path)
    nm = subprocess.run(["nm", str(exe)], capture_output=True, text=True)
    assert "alpha_leaf" not in nm.stdout, "the executable itself must have no symbols"
    _check(record_burner(exe, tmp_path / "stripped.pb.gz", "-F", "499", seconds=8.0))


def test_distro_python_reaches_the_interpreter_main(tmp_path: Path) -> None:
    out = tmp_path / "py.pb.gz"
    py = subprocess.Popen(
        ["/usr/bin/python3", str(FIXTURES / "pyloop.py"), "5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert py.stdin is not None and py.stdout is not None
    try:
        assert py.stdout.readline().strip() == "ready"
        kiln = start_kiln("-d", "60", "-F", "199", "-p", str(py.pid), "-o", str(out))
        py.stdin.write("go\n")
        py.stdin.flush()
        py.wait(timeout=30)
        stop_kiln(kiln)
    finally:
        py.kill()
        py.communicate()
    total = reached = 0
    for names, n, _ in stacks(read_pprof(out)):
        if not names[0].endswith("_[k]"):
            total += n
            if "Py_BytesMain" in names and "[truncated]" not in names:
                reached += n
    assert total > 300, total
    assert reached / total >= 0.95, f"only {reached}/{total} reach Py_BytesMain"


def test_storm_of_short_lived_processes_is_symbolized(builds: Path, tmp_path: Path) -> None:
    exe = build_c(builds, "shortlived.c", "shortlived", "-O2", "-fomit-frame-pointer")
    out = tmp_path / "storm.pb.gz"
    kiln = start_kiln("-d", "120", "-F", "199", "--comm", "shortlived", "-o", str(out))
    try:
        # 300 processes living 20-50 ms each, two at a time
        script = (
            f"for i in $(seq 150); do {exe} $((20 + i % 31)) & {exe} $((50 - i % 31)); wait; done"
        )
        subprocess.run(["bash", "-c", script], check=True, timeout=120)
        time.sleep(0.5)
    finally:
        stop_kiln(kiln)
    pids: set[str] = set()
    named = Counter[bool]()
    for names, n, labels in stacks(read_pprof(out)):
        pids.add(labels["pid"])
        user = [x for x in names if not x.endswith("_[k]")]
        named[bool(user) and "+0x" not in user[0]] += n
    total = named[True] + named[False]
    assert len(pids) >= 100, f"only {len(pids)} processes sampled"
    assert total > 300, total
    assert named[True] / total >= 0.95, f"{named[True]}/{total} samples symbolized"


def test_stacks_through_the_vdso_are_complete(builds: Path, tmp_path: Path) -> None:
    exe = build_c(builds, "vdso_spin.c", "vdso_spin", "-O2", "-fomit-frame-pointer")
    rec = record_burner(exe, tmp_path / "vdso.pb.gz", "-F", "499", seconds=4.0)
    assert rec.returncode == 0, rec.stderr
    in_vdso = complete = 0
    for names, n, _ in stacks(rec.message):
        user = [x for x in names if not x.endswith("_[k]")]
        if user and "vdso" in user[0].lower():
            in_vdso += n
            if "read_clock_often" in user and "main" in user and "[truncated]" not in user:
                complete += n
    assert in_vdso > 100, f"only {in_vdso} samples in the vDSO"
    assert complete / in_vdso >= 0.99, f"{complete}/{in_vdso} vDSO stacks complete"
