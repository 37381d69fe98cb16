"""`kiln record` on the real kernel against a workload with known ground truth."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from symbolizer import pprof
from symbolizer.proto import profile_pb2
from tests.conftest import build_c

CHAINS = ("alpha", "beta", "gamma", "delta")
KILN = [sys.executable, "-m", "profiler.cli"]


@dataclass
class Recording:
    truth: dict[str, int]
    pid: int
    message: profile_pb2.Profile
    stderr: str
    returncode: int


def _wait_for(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Read proc's stderr until a line containing marker appears."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"never saw {marker!r}; stderr so far:\n{''.join(seen)}")


def record_burner(
    burner: Path, out: Path, *extra: str, seconds: float = 6.0, stop_signal: int = signal.SIGINT
) -> Recording:
    work = subprocess.Popen(
        [str(burner), str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert work.stdout is not None and work.stdin is not None
    pid = int(work.stdout.readline())
    kiln = subprocess.Popen(
        [*KILN, "record", "-d", "120", "-p", str(pid), *extra, "-o", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        head = _wait_for(kiln, "sampling at", 60)
        work.stdin.write("go\n")
        work.stdin.flush()
        truth = json.loads(work.stdout.readline())
        kiln.send_signal(stop_signal)
        _, rest = kiln.communicate(timeout=60)
    finally:
        work.stdin.close()
        work.wait(timeout=10)
        work.stdout.close()
        if kiln.poll() is None:
            kiln.kill()
            kiln.communicate()
    message = profile_pb2.Profile()
    message.ParseFromString(gzip.decompress(out.read_bytes()))
    return Recording(truth, pid, message, head + rest, kiln.returncode)


@pytest.fixture(scope="module")
def burner(fixture_build_dir: Path) -> Path:
    return build_c(
        fixture_build_dir, "burner.c", "burner", "-O2", "-fno-omit-frame-pointer", "-pthread"
    )


@pytest.fixture(scope="module")
def recording(burner: Path, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    out = tmp_path_factory.mktemp("rec") / "burner.pb.gz"
    return record_burner(burner, out, "-F", "299")


def _stacks(msg: profile_pb2.Profile) -> Iterator[tuple[list[str], int, dict[str, str]]]:
    s = msg.string_table
    fn_name = {f.id: s[f.name] for f in msg.function}
    loc_names = {loc.id: [fn_name[line.function_id] for line in loc.line] for loc in msg.location}
    for sample in msg.sample:
        names = [n for lid in sample.location_id for n in loc_names[lid]]
        labels = {s[lab.key]: (s[lab.str] if lab.str else str(lab.num)) for lab in sample.label}
        yield names, sample.value[0], labels


def test_record_exits_cleanly_and_writes_valid_pprof(recording: Recording) -> None:
    assert recording.returncode == 0, recording.stderr
    assert pprof.validate(recording.message) == []
    types = [
        (recording.message.string_table[t.type], recording.message.string_table[t.unit])
        for t in recording.message.sample_type
    ]
    assert types == [("samples", "count"), ("cpu", "nanoseconds")]
    assert recording.message.period == int(1e9 / 299)
    assert recording.message.duration_nanos > 0


def test_function_shares_match_ground_truth(recording: Recording) -> None:
    got: Counter[str] = Counter()
    for names, n, _ in _stacks(recording.message):
        for chain in CHAINS:
            if f"{chain}_leaf" in names:
                got[chain] += n
    total = sum(got.values())
    all_samples = sum(n for _, n, _ in _stacks(recording.message))
    assert total > 1000, f"too few samples: {total}"
    assert total / all_samples > 0.9, "most samples should be in the chains"
    truth_total = sum(recording.truth.values())
    for chain in CHAINS:
        want = 100 * recording.truth[chain] / truth_total
        have = 100 * got[chain] / total
        assert abs(want - have) <= 3.0, f"{chain}: kiln {have:.1f}% vs truth {want:.1f}%"


def test_stacks_are_complete_to_thread_start(recording: Recording) -> None:
    complete = Counter[str]()
    seen = Counter[str]()
    for names, n, _ in _stacks(recording.message):
        for chain in CHAINS:
            leaf = f"{chain}_leaf"
            if leaf not in names:
                continue
            seen[chain] += n
            i = names.index(leaf)
            root = "main" if chain == "delta" else "thread_main"
            if names[i : i + 3] == [leaf, f"{chain}_middle", f"{chain}_outer"] and root in names:
                complete[chain] += n
    for chain in CHAINS:
        assert complete[chain] / seen[chain] >= 0.97, (
            f"{chain}: only {complete[chain]}/{seen[chain]} stacks reach the thread start"
        )


def test_labels_name_process_and_threads(recording: Recording) -> None:
    pids = set()
    tids = set()
    comms = set()
    for _, _, labels in _stacks(recording.message):
        pids.add(labels["pid"])
        tids.add(labels["tid"])
        comms.add(labels["comm"])
        assert "cpu" in labels
    assert pids == {str(recording.pid)}
    assert len(tids) == 3
    assert comms == {"burner"}


def _kiln_programs_loaded() -> list[str]:
    out = subprocess.run(
        ["bpftool", "prog", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if "on_cpu_sample" in line]


def test_sigterm_leaves_nothing_attached(burner: Path, tmp_path: Path) -> None:
    assert _kiln_programs_loaded() == []
    rec = record_burner(
        burner, tmp_path / "t.pb.gz", "--no-kernel", seconds=1.0, stop_signal=signal.SIGTERM
    )
    assert rec.returncode == 0, rec.stderr
    assert _kiln_programs_loaded() == []
    # --no-kernel: no kernel frames at all
    kinds = {name for names, _, _ in _stacks(rec.message) for name in names if name.endswith("[k]")}
    assert kinds == set()


def test_comm_filter_and_idle_exclusion(burner: Path, tmp_path: Path) -> None:
    out = tmp_path / "comm.pb.gz"
    work = subprocess.Popen(
        [str(burner), "30"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert work.stdin is not None
    try:
        work.stdin.write("go\n")
        work.stdin.flush()
        rc = subprocess.run(
            [*KILN, "record", "-F", "49", "-d", "2", "--comm", "burner", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        work.kill()
        work.communicate()
    assert rc.returncode == 0, rc.stderr
    msg = profile_pb2.Profile()
    msg.ParseFromString(gzip.decompress(out.read_bytes()))
    comms = Counter(labels["comm"] for _, _, labels in _stacks(msg))
    assert comms["burner"] > 0, "the busy burner should have been sampled"
    # only threads named burner; idle (swapper, pid 0) never appears unless asked for
    assert set(comms) == {"burner"}


def test_not_root_is_a_clear_error() -> None:
    res = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *KILN,
            "record",
            "-d",
            "1",
            "-o",
            "/tmp/never.pb.gz",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": "/"},
    )
    assert res.returncode == 2
    assert "must run as root" in res.stderr
    assert "Traceback" not in res.stderr
