"""Recording the burner workload with `kiln record`, and reading the result."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from symbolizer.proto import profile_pb2

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


def start_kiln(*args: str) -> subprocess.Popen[str]:
    """`kiln record ARGS` in the background, returned once it is sampling."""
    kiln = subprocess.Popen([*KILN, "record", *args], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(kiln, "sampling at", 60)
    except BaseException:
        kiln.kill()
        kiln.communicate()
        raise
    return kiln


def stop_kiln(kiln: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    """End a recording like an operator would; its stderr, after checking it succeeded."""
    kiln.send_signal(sig)
    _, err = kiln.communicate(timeout=60)
    assert kiln.returncode == 0, err
    return err


def read_pprof(path: Path) -> profile_pb2.Profile:
    msg = profile_pb2.Profile()
    msg.ParseFromString(gzip.decompress(path.read_bytes()))
    return msg


def record_burner(
    burner: Path | Sequence[str],
    out: Path,
    *extra: str,
    seconds: float = 6.0,
    stop_signal: int = signal.SIGINT,
) -> Recording:
    """Run the burner (a path, or argv whose later items follow SECONDS) under kiln -p."""
    argv = [str(burner)] if isinstance(burner, Path) else list(burner)
    work = subprocess.Popen(
        [argv[0], str(seconds), *argv[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
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


def stacks(msg: profile_pb2.Profile) -> Iterator[tuple[list[str], int, dict[str, str]]]:
    s = msg.string_table
    fn_name = {f.id: s[f.name] for f in msg.function}
    loc_names = {loc.id: [fn_name[line.function_id] for line in loc.line] for loc in msg.location}
    for sample in msg.sample:
        names = [n for lid in sample.location_id for n in loc_names[lid]]
        labels = {s[lab.key]: (s[lab.str] if lab.str else str(lab.num)) for lab in sample.label}
        yield names, sample.value[0], labels


def chain_samples(msg: profile_pb2.Profile) -> Counter[str]:
    got: Counter[str] = Counter()
    for names, n, _ in stacks(msg):
        for chain in CHAINS:
            if f"{chain}_leaf" in names:
                got[chain] += n
    return got


def assert_shares(rec: Recording, tolerance_pp: float) -> None:
    got = chain_samples(rec.message)
    total = sum(got.values())
    assert total > 1000, f"too few samples: {total}"
    truth_total = sum(rec.truth.values())
    for chain in CHAINS:
        want = 100 * rec.truth[chain] / truth_total
        have = 100 * got[chain] / total
        assert abs(want - have) <= tolerance_pp, f"{chain}: kiln {have:.1f}% vs truth {want:.1f}%"


def complete_fraction(rec: Recording) -> dict[str, float]:
    """Per chain, the share of its samples whose stack holds the whole chain and
    reaches the thread's start routine (thread_main, or main for the main thread)."""
    complete: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    for names, n, _ in stacks(rec.message):
        for chain in CHAINS:
            leaf = f"{chain}_leaf"
            if leaf not in names:
                continue
            seen[chain] += n
            i = names.index(leaf)
            root = "main" if chain == "delta" else "thread_main"
            whole = names[i : i + 3] == [leaf, f"{chain}_middle", f"{chain}_outer"]
            if whole and root in names and "[truncated]" not in names:
                complete[chain] += n
    return {chain: complete[chain] / max(seen[chain], 1) for chain in CHAINS}
