"""`kiln record` on the real kernel against a workload with known ground truth."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from symbolizer import pprof
from symbolizer.proto import profile_pb2
from tests.bpf.recording import (
    KILN,
    Recording,
    assert_shares,
    chain_samples,
    complete_fraction,
    record_burner,
    stacks,
)
from tests.conftest import build_c


@pytest.fixture(scope="module")
def burner(fixture_build_dir: Path) -> Path:
    return build_c(
        fixture_build_dir, "burner.c", "burner", "-O2", "-fno-omit-frame-pointer", "-pthread"
    )


@pytest.fixture(scope="module")
def recording(burner: Path, tmp_path_factory: pytest.TempPathFactory) -> Recording:
    out = tmp_path_factory.mktemp("rec") / "burner.pb.gz"
    return record_burner(burner, out, "-F", "299")


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
    got = chain_samples(recording.message)
    all_samples = sum(n for _, n, _ in stacks(recording.message))
    assert sum(got.values()) / all_samples > 0.9, "most samples should be in the chains"
    assert_shares(recording, tolerance_pp=3.0)


def test_stacks_are_complete_to_thread_start(recording: Recording) -> None:
    for chain, fraction in complete_fraction(recording).items():
        assert fraction >= 0.97, f"{chain}: only {fraction:.1%} of stacks reach the thread start"


def test_labels_name_process_and_threads(recording: Recording) -> None:
    pids = set()
    tids = set()
    comms = set()
    for _, _, labels in stacks(recording.message):
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
    kinds = {name for names, _, _ in stacks(rec.message) for name in names if name.endswith("[k]")}
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
    comms = Counter(labels["comm"] for _, _, labels in stacks(msg))
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
