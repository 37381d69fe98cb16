"""Python stacks on the real kernel, for every CPython version installed here.

One `kiln record` follows every interpreter (each a separate process, all
named with -p), and they run one after another so each has the CPU to
itself: tests/fixtures/py_split.py burns CPU in two threads, unevenly, in
`burn_heavy` and `burn_light`, and reports each thread's CPU time from
time.thread_time(): the ground truth for the shares. Then numpy's sort runs
under a Python function, to see C extension frames below Python ones.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from symbolizer.proto import profile_pb2
from tests.bpf.recording import read_pprof, start_kiln, stop_kiln
from tests.conftest import FIXTURES, skip_outside_ci
from tests.unit.test_linetable import INTERPRETERS

SUPPORTED = [i for i in INTERPRETERS if not i[0].startswith(("pyenv-3.6", "pyenv-3.7"))]
VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
SECONDS = 4.0
FUNCTIONS = ("burn_heavy", "burn_light")

Frame = tuple[str, str, int, str]  # function name, source file, line, mapping file


@dataclass
class Result:
    truth: dict[str, object] = field(default_factory=dict)
    stacks: list[tuple[list[Frame], int]] = field(default_factory=list)


def frames_by_sample(msg: profile_pb2.Profile) -> list[tuple[int, list[Frame], int]]:
    """(pid, frames leaf first, count) for every sample of a pprof message."""
    s = msg.string_table
    funcs = {f.id: (s[f.name], s[f.filename]) for f in msg.function}
    maps = {m.id: s[m.filename] for m in msg.mapping}
    locs: dict[int, list[Frame]] = {}
    for loc in msg.location:
        locs[loc.id] = [
            (*funcs[ln.function_id], ln.line, maps.get(loc.mapping_id, "")) for ln in loc.line
        ]
    out = []
    for sample in msg.sample:
        pid = next(lab.num for lab in sample.label if s[lab.key] == "pid")
        frames = [f for lid in sample.location_id for f in locs[lid]]
        out.append((int(pid), frames, int(sample.value[0])))
    return out


def _start(argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _run(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    truth: dict[str, object] = json.loads(proc.stdout.readline())
    proc.wait(timeout=30)
    return truth


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    out = tmp_path_factory.mktemp("python") / "python.pb.gz"
    workloads: dict[str, subprocess.Popen[str]] = {}
    try:
        for label, exe in SUPPORTED:
            if exe.exists():
                workloads[label] = _start([str(exe), str(FIXTURES / "py_split.py"), str(SECONDS)])
        workloads["numpy"] = _start([str(VENV_PYTHON), str(FIXTURES / "py_numpy.py"), "3"])
        pids = [a for p in workloads.values() for a in ("-p", str(p.pid))]
        kiln = start_kiln("-F", "999", "-d", "300", *pids, "-o", str(out))
        results = {label: Result(truth=_run(proc)) for label, proc in workloads.items()}
        stop_kiln(kiln)
    finally:
        for proc in workloads.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()  # closes the pipes
    by_pid = {proc.pid: results[label] for label, proc in workloads.items()}
    for pid, frames, count in frames_by_sample(read_pprof(out)):
        if pid in by_pid:
            by_pid[pid].stacks.append((frames, count))
    return results


def _python_names(frames: list[Frame]) -> list[str]:
    return [name.removesuffix("_[py]") for name, *_ in frames if name.endswith("_[py]")]


@pytest.mark.parametrize(("label", "exe"), SUPPORTED, ids=[i[0] for i in SUPPORTED])
def test_python_shares_files_and_lines(label: str, exe: Path, recorded: dict[str, Result]) -> None:
    if label not in recorded:
        skip_outside_ci(f"{label} ({exe}) not installed")
    result = recorded[label]
    cpu = result.truth["cpu"]
    lines = result.truth["lines"]
    assert isinstance(cpu, dict) and isinstance(lines, dict)
    samples: Counter[str] = Counter()
    leaf_lines: dict[str, Counter[int]] = {f: Counter() for f in FUNCTIONS}
    merged: Counter[str] = Counter()
    for frames, count in result.stacks:
        py = [f for f in frames if f[0].endswith("_[py]")]
        names = _python_names(frames)
        for fn in FUNCTIONS:
            if fn not in names:
                continue
            samples[fn] += count
            # The leaf-most Python frame of these threads is the burner itself.
            name, filename, line, _ = py[0]
            assert name == f"{fn}_[py]", names
            assert filename == result.truth["file"]
            leaf_lines[fn][line] += count
            # Merged in place of the eval loop: Python callers above it, the
            # thread's native start at the root, no eval loop frame left.
            assert any(n.endswith("_bootstrap_inner") for n in names[names.index(fn) :]), names
            evals = [f for f in frames if f[0].startswith("_PyEval_EvalFrameDefault")]
            merged["clean" if not evals else "eval_left"] += count
            merged["native_root"] += count if not frames[-1][0].endswith("_[py]") else 0
    total = samples["burn_heavy"] + samples["burn_light"]
    assert total > 1000, f"too few Python samples: {samples}"
    want = 100 * cpu["burn_heavy"] / (cpu["burn_heavy"] + cpu["burn_light"])
    have = 100 * samples["burn_heavy"] / total
    assert abs(want - have) <= 2.0, f"burn_heavy: kiln {have:.1f}% vs thread_time {want:.1f}%"
    for fn in FUNCTIONS:
        top_line = leaf_lines[fn].most_common(1)[0][0]
        assert top_line in (lines[fn] - 1, lines[fn]), (fn, leaf_lines[fn].most_common(3))
    assert merged["clean"] >= 0.95 * total, merged
    assert merged["native_root"] >= 0.95 * total, merged


def test_numpy_frames_below_python(recorded: dict[str, Result]) -> None:
    result = recorded["numpy"]
    below = Counter[str]()
    for frames, count in result.stacks:
        names = [f[0] for f in frames]
        if "sort_arrays_[py]" not in names:
            continue
        at = names.index("sort_arrays_[py]")
        leafward = frames[:at]
        if any("numpy" in mapping for *_, mapping in leafward):
            below["numpy_c"] += count
        below["all"] += count
    assert below["all"] > 500, below
    # Sorting is numpy's C code: most samples in sort_arrays are in it.
    assert below["numpy_c"] >= 0.5 * below["all"], below
