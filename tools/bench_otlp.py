"""OTLP Profiles encoding: throughput and bytes per sample, OTLP vs pprof.

`measure()` builds a window shaped like a busy host's (10 s at 99 Hz on 8
CPUs: ~7,900 samples over a few thousand distinct stacks of 8-48 frames,
40 processes with 1-6 threads each, shared libraries, kernel and Python
frames), then times `symbolizer.otlp.encode` (Profile -> serialized
ExportProfilesServiceRequest) and reports:

* samples/s and distinct (stack, labels) rows/s, best of `repeat` runs;
* bytes per sample of the OTLP request and of Kiln's pprof
  (`symbolizer.pprof.dumps`), both gzipped (level 6, what the exporters
  send), and uncompressed for reference.

    python tools/bench_otlp.py [--samples N] [--repeat N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path
from typing import TypedDict

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from symbolizer import otlp, pprof  # noqa: E402
from symbolizer.profile import Frame, FrameKind, Mapping, Profile  # noqa: E402

RESOURCE = {"host.name": "web-1", "service.name": "shop"}
_WORDS = ["read", "write", "parse", "json", "alloc", "hash", "lookup", "send", "poll", "run"]
_LIBS = ["libc.so.6", "libssl.so.3", "libpython3.11.so.1.0", "libstdc++.so.6", "libz.so.1"]


class Result(TypedDict):
    samples: int
    rows: int
    distinct_stacks: int
    resources: int
    encode_ms: float
    samples_per_s: float
    rows_per_s: float
    otlp_gz_bytes_per_sample: float
    pprof_gz_bytes_per_sample: float
    otlp_raw_bytes_per_sample: float
    pprof_raw_bytes_per_sample: float
    otlp_vs_pprof_gz: float
    how: str


def window(samples: int = 7_920, seed: int = 7) -> Profile:
    """A window of `samples` samples, drawn from a skewed set of stacks per process."""
    rng = random.Random(seed)
    mappings = [
        Mapping(0x7F00_0000_0000 + i * 0x100_0000, 0x7F00_0000_0000 + (i + 1) * 0x100_0000, 0,
                f"/usr/lib/x86_64-linux-gnu/{lib}", f"{i:040x}")
        for i, lib in enumerate(_LIBS)
    ]  # fmt: skip
    kernel = Mapping(0xFFFF_FFFF_8100_0000, 0xFFFF_FFFF_8300_0000, 0, "[kernel.kallsyms]",
                     kind=FrameKind.KERNEL)  # fmt: skip
    functions = [
        ("_".join(rng.sample(_WORDS, 2)) + f"_{i}", rng.choice(mappings), rng.randrange(1, 1 << 20))
        for i in range(3000)
    ]
    kfuncs = [f"k_{w}_{i}" for i, w in enumerate(_WORDS * 20)]

    def stack() -> list[Frame]:
        depth = rng.randint(8, 48)
        frames = []
        for level in range(depth):
            if level < 3 and rng.random() < 0.3:
                name = rng.choice(kfuncs)
                frames.append(Frame(name, kernel.start + hash(name) % 0x100000, FrameKind.KERNEL,
                                    kernel))  # fmt: skip
            elif rng.random() < 0.1:
                frames.append(Frame(f"py_{rng.choice(_WORDS)}", 0, FrameKind.PYTHON,
                                    filename="/srv/app.py", line=rng.randint(1, 900)))  # fmt: skip
            else:
                name, m, off = rng.choice(functions)
                frames.append(Frame(name, m.start + off, FrameKind.NATIVE, m, system_name=name))
        return frames

    processes = []
    for i in range(40):
        pid = 1000 + i * 37
        exe = f"/usr/bin/{rng.choice(['shop', 'python3.11', 'nginx', 'postgres'])}"
        threads = [pid + t for t in range(rng.randint(1, 6))]
        stacks = [stack() for _ in range(rng.randint(20, 120))]
        processes.append((pid, exe, threads, stacks, f"{i:012x}" if i % 3 == 0 else ""))
    p = Profile(start_ns=1_750_000_000_000_000_000, duration_ns=10**10, period_ns=10_101_010)
    weights = [rng.paretovariate(1.2) for _ in processes]
    for _ in range(samples):
        pid, exe, threads, stacks, container = rng.choices(processes, weights)[0]
        frames = stacks[min(int(rng.expovariate(0.08)), len(stacks) - 1)]
        tid, cpu = rng.choice(threads), rng.randrange(8)
        labels = [("pid", str(pid)), ("tid", str(tid)), ("comm", exe[9:]), ("cpu", str(cpu)),
                  ("exe", exe), ("container", container)]  # fmt: skip
        p.add(frames, 1, labels)
    return p


def measure(samples: int = 7_920, repeat: int = 5) -> Result:
    profile = window(samples)
    best = float("inf")
    data = b""
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = otlp.encode(profile, RESOURCE)
        best = min(best, time.perf_counter() - t0)
    req = otlp.to_request(profile, RESOURCE)
    assert otlp.validate_request(req) == [], "the benchmark window must encode validly"
    raw_pprof = pprof.encode(profile)
    total = profile.total_samples
    rows = len(profile.counts)
    otlp_gz = len(gzip.compress(data, 6))
    pprof_gz = len(gzip.compress(raw_pprof, 6))
    return Result(
        samples=total,
        rows=rows,
        distinct_stacks=len(profile.stacks) - 1,
        resources=len(req.resource_profiles),
        encode_ms=round(best * 1e3, 2),
        samples_per_s=round(total / best),
        rows_per_s=round(rows / best),
        otlp_gz_bytes_per_sample=round(otlp_gz / total, 2),
        pprof_gz_bytes_per_sample=round(pprof_gz / total, 2),
        otlp_raw_bytes_per_sample=round(len(data) / total, 2),
        pprof_raw_bytes_per_sample=round(len(raw_pprof) / total, 2),
        otlp_vs_pprof_gz=round(otlp_gz / pprof_gz, 3),
        how=(
            "symbolizer.otlp.encode (Profile -> serialized request, one shared dictionary,"
            " one resource per process), one Python thread, best of repeated runs;"
            " sizes gzipped at level 6"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7_920)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.samples, args.repeat), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
