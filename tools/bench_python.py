"""Python stacks, Kiln vs py-spy, side by side on the same program and rate.

tests/fixtures/py_fixedwork.py does fixed pure-Python work split 3:1
between `work_a` and `work_b` and reports each one's thread CPU time (the
truth for their shares) and its wall time. Runs rotate: no profiler, Kiln
(`kiln record -F 99 -p PID`), py-spy (`py-spy record -r 99 --native -p PID`);
each profiler is attached before the work starts. Reported: each tool's
share of work_a against the truth, and each one's slowdown of the work
(median wall time against the median without a profiler).
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from symbolizer.proto import profile_pb2  # noqa: E402

KILN = [sys.executable, "-m", "profiler.cli"]
TARGET = [sys.executable, str(ROOT / "tests" / "fixtures" / "py_fixedwork.py")]
FUNCTIONS = ("work_a", "work_b")


def _py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def _wait_line(proc: subprocess.Popen[str], marker: str, timeout: float = 60.0) -> None:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line or marker in line:
            return
    raise TimeoutError(marker)


def _kiln_counts(path: Path) -> Counter[str]:
    msg = profile_pb2.Profile()
    msg.ParseFromString(gzip.decompress(path.read_bytes()))
    s = msg.string_table
    fn = {f.id: s[f.name] for f in msg.function}
    loc = {lo.id: [fn[ln.function_id] for ln in lo.line] for lo in msg.location}
    out: Counter[str] = Counter()
    for sample in msg.sample:
        names = {n for lid in sample.location_id for n in loc[lid]}
        for f in FUNCTIONS:
            if f"{f}_[py]" in names:
                out[f] += sample.value[0]
    return out


def _py_spy_counts(path: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = {frame.split(" (", 1)[0] for frame in stack.split(";")}
        for f in FUNCTIONS:
            if f in frames:
                out[f] += int(count)
    return out


def _run(tool: str, rounds: int, tmp: Path, py_spy: str | None) -> dict[str, object]:
    target = subprocess.Popen(
        [*TARGET, str(rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert target.stdin is not None and target.stdout is not None
    assert target.stdout.readline().strip() == "ready"
    profiler: subprocess.Popen[str] | None = None
    out = tmp / ("kiln.pb.gz" if tool == "kiln" else f"{tool}.txt")
    if tool == "kiln":
        profiler = subprocess.Popen(
            [*KILN, "record", "-F", "99", "-d", "600", "-p", str(target.pid), "-o", str(out)],
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_line(profiler, "sampling at")
    elif tool == "py-spy" and py_spy is not None:
        cmd = [py_spy, "record", "-r", "99", "--native", "-f", "raw", "-o", str(out)]
        profiler = subprocess.Popen(
            [*cmd, "-p", str(target.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # py-spy prints nothing when it starts sampling
    target.stdin.write("go\n")
    target.stdin.flush()
    result = json.loads(target.stdout.readline())
    target.communicate(timeout=60)
    counts: Counter[str] = Counter()
    if profiler is not None:
        if profiler.poll() is None:
            profiler.send_signal(signal.SIGINT)
        profiler.communicate(timeout=120)
        if out.exists():
            counts = _kiln_counts(out) if tool == "kiln" else _py_spy_counts(out)
    return {"elapsed_ns": result["elapsed_ns"], "cpu": result["cpu"], "counts": counts}


def _share(cpu_or_counts: dict[str, float] | Counter[str]) -> float:
    total = sum(cpu_or_counts[f] for f in FUNCTIONS)
    return 100 * cpu_or_counts["work_a"] / total if total else float("nan")


def bench(tmp: Path, rounds: int = 250, repeats: int = 3) -> dict[str, object]:
    py_spy = _py_spy()
    tools = ["none", "kiln"] + (["py-spy"] if py_spy else [])
    runs: dict[str, list[dict[str, object]]] = {t: [] for t in tools}
    for _ in range(repeats):
        for tool in tools:
            runs[tool].append(_run(tool, rounds, tmp, py_spy))
    base = statistics.median(int(str(r["elapsed_ns"])) for r in runs["none"])
    out: dict[str, object] = {"py_spy": py_spy is not None}
    for tool in tools[1:]:
        wall = statistics.median(int(str(r["elapsed_ns"])) for r in runs[tool])
        errors, shares, samples = [], [], 0
        for r in runs[tool]:
            cpu, counts = r["cpu"], r["counts"]
            assert isinstance(cpu, dict) and isinstance(counts, Counter)
            shares.append(_share(counts))
            errors.append(abs(_share(counts) - _share(cpu)))
            samples += sum(counts.values())
        out[tool] = {
            "slowdown_pct": 100 * (wall - base) / base,
            "share_a_pct": statistics.median(shares),
            "max_error_pp": max(errors),
            "samples": samples,
        }
    truth = [_share(r["cpu"]) for t in tools for r in runs[t]]  # type: ignore[arg-type]
    out["truth_share_a_pct"] = statistics.median(truth)
    if "py-spy" in out:
        k, p = out["kiln"], out["py-spy"]
        assert isinstance(k, dict) and isinstance(p, dict)
        out["kiln_vs_py_spy_pp"] = abs(k["share_a_pct"] - p["share_a_pct"])
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(bench(Path(d)), indent=2))
