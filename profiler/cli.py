"""The `kiln` command: small command functions over `main(argv) -> int`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from profiler import cli_run
from profiler.errors import KilnError, UsageError

log = logging.getLogger("kiln")

RECORD_EXAMPLES = """\
examples:
  kiln record -d 10 -o host.pb.gz            whole host, 10 s at 99 Hz
  kiln record -p 1234 -F 499 -o app.folded   one process, folded stacks
  kiln record --comm nginx --no-kernel -o nginx.pb.gz
"""

OUTPUT_FORMATS = {".pb.gz": "pprof", ".pprof": "pprof", ".folded": "folded"}


def output_format(path: str) -> str:
    for suffix, fmt in OUTPUT_FORMATS.items():
        if path.endswith(suffix):
            return fmt
    raise UsageError(
        f"cannot tell the output format of {path!r}",
        "name the file *.pb.gz (pprof) or *.folded (folded stacks)",
    )


def max_sample_rate() -> int:
    try:
        return int(Path("/proc/sys/kernel/perf_event_max_sample_rate").read_text())
    except (OSError, ValueError):
        return 100_000


# -- record -------------------------------------------------------------------


def cmd_record(args: argparse.Namespace) -> int:
    from profiler.bpf.loader import MapSizes
    from profiler.recorder import Recorder, RecordStats
    from profiler.sampler import SamplerOptions
    from symbolizer import folded, pprof

    fmt = output_format(args.output)
    limit = max_sample_rate()
    if not 1 <= args.frequency <= limit:
        raise UsageError(
            f"-F {args.frequency} is outside 1..{limit} Hz",
            f"pick a frequency up to kernel.perf_event_max_sample_rate ({limit})",
        )
    if args.duration <= 0:
        raise UsageError(f"-d {args.duration} must be positive", "give the duration in seconds")
    options = SamplerOptions(
        frequency_hz=args.frequency,
        pids=tuple(args.pid or ()),
        comms=tuple(args.comm or ()),
        kernel_stacks=not args.no_kernel,
        include_idle=args.include_idle,
    )
    sizes = MapSizes.for_unwind_memory(
        args.unwind_memory,
        stack_entries=args.stack_entries,
        count_entries=args.count_entries,
        ringbuf_pages=args.ringbuf_pages,
    )
    stop = _StopFlag()
    recorder = Recorder(options, sizes=sizes, unwind=not args.no_unwind_tables)
    tty = sys.stderr.isatty()

    def progress(elapsed: float, stats: RecordStats) -> None:
        if tty or int(elapsed) % 5 == 0:
            end = "\r" if tty else "\n"
            print(
                f"kiln: recording {elapsed:4.0f}/{args.duration:g} s, {stats.samples} samples, "
                f"{stats.lost} lost",
                end=end,
                file=sys.stderr,
                flush=True,
            )

    try:
        with stop:
            recorder.start()
            profile = recorder.record(
                args.duration, window_s=args.window, should_stop=stop.is_set, on_progress=progress
            )
    finally:
        recorder.close()
    if tty:
        print(file=sys.stderr)
    counters = recorder.counters()
    profile.comments.extend(f"kiln.{k}={v}" for k, v in sorted(counters.items()) if v)
    if fmt == "pprof":
        pprof.write(profile, args.output)
    else:
        Path(args.output).write_text(folded.dumps(profile))
    stats = recorder.stats
    print(
        f"kiln: wrote {args.output}: {profile.total_samples} samples, {stats.lost} lost",
        file=sys.stderr,
    )
    _report_losses(counters)
    if args.stats:
        Path(args.stats).write_text(
            json.dumps(
                {
                    "samples": profile.total_samples,
                    "lost": stats.lost,
                    "windows": stats.windows,
                    "counters": counters,
                },
                indent=1,
                sort_keys=True,
            )
        )
    return 0


def _report_losses(counters: dict[str, int]) -> None:
    from profiler.bpf.abi import LOSS_REMEDIES

    for c, remedy in LOSS_REMEDIES.items():
        n = counters.get(c.name.lower(), 0)
        if n:
            print(f"kiln: {n} samples hit {c.name.lower()}: {remedy}", file=sys.stderr)


class _StopFlag:
    """SIGINT/SIGTERM end the recording; the output is still written and BPF detached."""

    def __init__(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self._set = True

    def __enter__(self) -> None:
        self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# -- top ------------------------------------------------------------------------


def cmd_top(args: argparse.Namespace) -> int:
    from symbolizer.top import format_table, read, top_table

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"cannot read {path}: no such file", "give an existing profile file")
    print(format_table(top_table(read(path), limit=args.limit)), end="")
    return 0


# -- doctor ---------------------------------------------------------------------


def cmd_doctor(args: argparse.Namespace) -> int:
    from profiler.preflight import run_checks

    checks = run_checks()
    for c in checks:
        print(c.render())
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed")
    return 2 if failed else 0


def cmd_bpf_source(args: argparse.Namespace) -> int:
    from profiler.bpf.loader import MapSizes, cflags, program_source

    print(f"// cflags: {' '.join(cflags(MapSizes()))}")
    print(program_source())
    return 0


# -- parser ---------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kiln", description="eBPF CPU profiler for the whole host")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "record",
        help="sample CPU stacks and write a profile",
        epilog=RECORD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("-F", "--frequency", type=int, default=99, help="samples per second per CPU")
    r.add_argument("-d", "--duration", type=float, default=10.0, help="seconds to record")
    r.add_argument("-p", "--pid", type=int, action="append", help="only this process (repeatable)")
    r.add_argument("--comm", action="append", help="only threads with this name (repeatable)")
    r.add_argument("--no-kernel", action="store_true", help="leave out kernel stacks")
    r.add_argument("--include-idle", action="store_true", help="keep the idle task (pid 0)")
    r.add_argument("--window", type=float, default=10.0, help="seconds between map drains")
    r.add_argument("--stack-entries", type=int, default=8192, help="distinct stacks per window")
    r.add_argument("--count-entries", type=int, default=16384, help="BPF counts map size")
    r.add_argument("--ringbuf-pages", type=int, default=64, help="BPF ring buffer pages")
    r.add_argument(
        "--unwind-memory",
        type=int,
        default=64,
        metavar="MIB",
        help="cap on kernel memory for .eh_frame unwind tables",
    )
    r.add_argument(
        "--no-unwind-tables", action="store_true", help="walk user stacks by frame pointers only"
    )
    r.add_argument("--stats", metavar="FILE", help="also write counters and totals as JSON")
    r.add_argument("-o", "--output", required=True, help="FILE.pb.gz (pprof) or FILE.folded")
    r.set_defaults(func=cmd_record)

    t = sub.add_parser("top", help="flat and cumulative CPU per function of a profile")
    t.add_argument("file", help="a .pb.gz / .pprof or .folded profile")
    t.add_argument("-n", "--limit", type=int, default=25, help="rows to show")
    t.set_defaults(func=cmd_top)

    d = sub.add_parser("doctor", help="check this host for what Kiln needs")
    d.set_defaults(func=cmd_doctor)

    cli_run.add_parsers(sub)

    b = sub.add_parser("bpf-source", help=argparse.SUPPRESS)
    b.set_defaults(func=cmd_bpf_source)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="kiln: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        rc: int = args.func(args)
        return rc
    except KilnError as e:
        print(f"kiln: error: {e}", file=sys.stderr)
        return e.exit_status
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
