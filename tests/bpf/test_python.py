"""Python stacks on the real kernel, for every CPython version installed here.

One `kiln record` follows every interpreter (each a separate process, all
named with -p), and they run one after another so each has the CPU to
itself: tests/fixtures/py_split.py burns CPU in two threads, unevenly, in
`burn_heavy` and `burn_light`, and reports each thread's CPU time from
time.thread_time(): the ground truth for the shares. In the same recording:
numpy's sort under a Python function and a thread hashing without the GIL
(C frames below Python ones), a native program that loads libpython late,
and interpreters Kiln does not support (native frames only, one warning).
A forking program gets its own recording, filtered by command name, since
-p does not follow children.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from symbolizer.proto import profile_pb2
from tests.bpf.recording import KILN, _wait_for, read_pprof, stop_kiln
from tests.conftest import FIXTURES, build_c, skip_outside_ci
from tests.unit.test_linetable import INTERPRETERS, PYENV

SUPPORTED = [i for i in INTERPRETERS if not i[0].startswith(("pyenv-3.6", "pyenv-3.7"))]
VENV_PYTHON = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
SECONDS = 4.0
FUNCTIONS = ("burn_heavy", "burn_light")
UNSUPPORTED = {
    "pyenv-2.7": PYENV / "2.7.18" / "bin" / "python2.7",
    "pyenv-3.6": PYENV / "3.6.15" / "bin" / "python3.6",
    "pyenv-3.7": PYENV / "3.7.16" / "bin" / "python3.7",
}
# Busy for a second; valid Python 2 and 3.
BUSY = (
    "import sys, time\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush(); sys.stdin.readline()\n"
    "end = time.time() + 1\n"
    "while time.time() < end: pass\n"
    "sys.stdout.write('{}\\n'); sys.stdout.flush()\n"
)
EMBED_LIB = PYENV / "3.12.1" / "lib" / "libpython3.12.so.1.0"

Frame = tuple[str, str, int, str]  # function name, source file, line, mapping file


@dataclass
class Result:
    truth: dict[str, object] = field(default_factory=dict)
    stacks: list[tuple[list[Frame], int]] = field(default_factory=list)
    pid: int = 0


@dataclass
class Recorded:
    results: dict[str, Result]
    stderr: str
    counters: dict[str, int]


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


def _record(
    workloads: dict[str, subprocess.Popen[str]], out: Path, *filters: str
) -> tuple[dict[str, dict[str, object]], str, dict[str, int]]:
    """Run the workloads one by one under one `kiln record`; (truths, stderr, counters)."""
    stats = out.with_suffix(".json")
    cmd = [*KILN, "record", "-F", "999", "-d", "300", *filters]
    kiln = subprocess.Popen(
        [*cmd, "--stats", str(stats), "-o", str(out)], stderr=subprocess.PIPE, text=True
    )
    try:
        head = _wait_for(kiln, "sampling at", 60)
        truths = {label: _run(proc) for label, proc in workloads.items()}
        rest = stop_kiln(kiln)
    finally:
        if kiln.poll() is None:
            kiln.kill()
            kiln.communicate()
    counters: dict[str, int] = json.loads(stats.read_text())["counters"]
    return truths, head + rest, counters


def _stop(workloads: dict[str, subprocess.Popen[str]]) -> None:
    for proc in workloads.values():
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # closes the pipes


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, fixture_build_dir: Path) -> Recorded:
    out = tmp_path_factory.mktemp("python") / "python.pb.gz"
    workloads: dict[str, subprocess.Popen[str]] = {}
    try:
        for label, exe in SUPPORTED:
            if exe.exists():
                workloads[label] = _start([str(exe), str(FIXTURES / "py_split.py"), str(SECONDS)])
        workloads["numpy"] = _start([str(VENV_PYTHON), str(FIXTURES / "py_numpy.py"), "3"])
        for label, exe in UNSUPPORTED.items():
            if exe.exists():
                workloads[label] = _start([str(exe), "-c", BUSY])
        if EMBED_LIB.exists():
            embed = build_c(fixture_build_dir, "py_embed.c", "py_embed", "-O1", "-ldl")
            workloads["embedded"] = _start([str(embed), str(EMBED_LIB), "2"])
        pids = [a for p in workloads.values() for a in ("-p", str(p.pid))]
        truths, stderr, counters = _record(workloads, out, *pids)
    finally:
        _stop(workloads)
    results = {label: Result(truth=truths[label], pid=p.pid) for label, p in workloads.items()}
    by_pid = {r.pid: r for r in results.values()}
    for pid, frames, count in frames_by_sample(read_pprof(out)):
        if pid in by_pid:
            by_pid[pid].stacks.append((frames, count))
    return Recorded(results, stderr, counters)


def _python_names(frames: list[Frame]) -> list[str]:
    return [name.removesuffix("_[py]") for name, *_ in frames if name.endswith("_[py]")]


@pytest.mark.parametrize(("label", "exe"), SUPPORTED, ids=[i[0] for i in SUPPORTED])
def test_python_shares_files_and_lines(label: str, exe: Path, recorded: Recorded) -> None:
    if label not in recorded.results:
        skip_outside_ci(f"{label} ({exe}) not installed")
    result = recorded.results[label]
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


def _below(result: Result, function: str, mapping_part: str) -> Counter[str]:
    """Samples in `function` (a Python frame), and those with a native frame
    from a mapping whose path contains `mapping_part` leaf-ward of it."""
    got = Counter[str]()
    for frames, count in result.stacks:
        names = [f[0] for f in frames]
        if f"{function}_[py]" not in names:
            continue
        leafward = frames[: names.index(f"{function}_[py]")]
        if any(mapping_part in mapping for *_, mapping in leafward):
            got["native_below"] += count
        got["all"] += count
    return got


def test_numpy_frames_below_python(recorded: Recorded) -> None:
    below = _below(recorded.results["numpy"], "sort_arrays", "numpy")
    assert below["all"] > 300, below
    # Sorting is numpy's C code: most samples in sort_arrays are in it.
    assert below["native_below"] >= 0.5 * below["all"], below


def test_thread_without_the_gil(recorded: Recorded) -> None:
    # hashlib drops the GIL while hashing: the thread is found by its id, not by the GIL.
    below = _below(recorded.results["numpy"], "hash_without_gil", "lib")
    assert below["all"] > 300, below
    assert below["native_below"] >= 0.8 * below["all"], below


def test_interpreter_loaded_late(recorded: Recorded) -> None:
    if "embedded" not in recorded.results:
        skip_outside_ci(f"{EMBED_LIB} not installed")
    result = recorded.results["embedded"]
    got = Counter[str]()
    for frames, count in result.stacks:
        names = [f[0] for f in frames]
        if "embedded_burn_[py]" in names:
            got["python"] += count
            # Python code called from the native main through the C API.
            assert "main" in names[names.index("embedded_burn_[py]") :], names
        elif "native_warmup" in names:
            got["native"] += count
    assert got["native"] > 200, got  # before libpython was loaded
    assert got["python"] > 1000, got  # found after the dlopen (2 s of Python)


@pytest.mark.parametrize("label", sorted(UNSUPPORTED))
def test_unsupported_interpreters_keep_native_frames(label: str, recorded: Recorded) -> None:
    if label not in recorded.results:
        skip_outside_ci(f"{label} ({UNSUPPORTED[label]}) not installed")
    result = recorded.results[label]
    total = sum(count for _, count in result.stacks)
    assert total > 300, total
    assert not any(f[0].endswith("_[py]") for frames, _ in result.stacks for f in frames)
    assert any("PyEval" in f[0] for frames, _ in result.stacks for f in frames)
    warnings = [
        line
        for line in recorded.stderr.splitlines()
        if f"pid {result.pid}: Python frames unavailable" in line
    ]
    assert len(warnings) == 1, recorded.stderr
    assert recorded.counters["python_unsupported"] >= 1


def test_forked_child(tmp_path: Path) -> None:
    exe = next((e for label, e in SUPPORTED if label == "pyenv-3.12.1" and e.exists()), None)
    if exe is None:
        skip_outside_ci("pyenv 3.12.1 not installed")
    workloads = {"fork": _start([str(exe), str(FIXTURES / "py_fork.py"), "2"])}
    try:
        truths, _, _ = _record(workloads, tmp_path / "fork.pb.gz", "--comm", exe.name)
    finally:
        _stop(workloads)
    child = truths["fork"]["child"]
    got = Counter[str]()
    for pid, frames, count in frames_by_sample(read_pprof(tmp_path / "fork.pb.gz")):
        if pid == child:
            got["python" if "child_burn_[py]" in {f[0] for f in frames} else "other"] += count
    assert got["python"] > 1000, got
    assert got["python"] >= 0.9 * (got["python"] + got["other"]), got
