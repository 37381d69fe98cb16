"""`kiln run` exporting for real: the daemon's windows reach an OTLP/gRPC
receiver (the collector's ProfilesService from opentelemetry-proto), valid,
with the workload's Python function and its process attributes, and an OTTL
filter in the config keeps the samples it names out."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from symbolizer import otlp
from tests.conftest import FIXTURES, free_port
from tests.export.receivers import OtlpGrpcReceiver

KILN = [sys.executable, "-m", "profiler.cli"]


def test_daemon_exports_filtered_windows_over_otlp_grpc(tmp_path: Path) -> None:
    work = subprocess.Popen(
        ["/usr/bin/python3", str(FIXTURES / "py_split.py"), "600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert work.stdin is not None and work.stdout is not None
    assert work.stdout.readline().strip() == "ready"
    work.stdin.write("go\n")
    work.stdin.flush()
    with OtlpGrpcReceiver() as receiver:
        config = tmp_path / "kiln.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{free_port()}\n"
            f"data_dir: {tmp_path / 'data'}\n"
            "frequency: 99\n"
            "window_seconds: 2s\n"
            "exporters:\n"
            "  - name: collector\n"
            "    type: otlp_grpc\n"
            f"    endpoint: {receiver.endpoint}\n"
            "    insecure: true\n"
            "    filter:\n"
            "      conditions: ['StackContains(\"^burn_light$\")']\n"
        )
        kiln = subprocess.Popen(
            [*KILN, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True
        )
        try:
            got: Counter[str] = Counter()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and got["burn_heavy"] < 200:
                assert kiln.poll() is None, kiln.communicate()[1]
                time.sleep(1)
                got.clear()
                for req in list(receiver.requests):
                    assert otlp.validate_request(req) == []
                    for s in otlp.iter_samples(req):
                        if s.resource.get("process.pid") != work.pid:
                            continue
                        names = {f.function for f in s.frames}
                        for fn in ("burn_heavy", "burn_light"):
                            if fn in names:
                                got[fn] += s.count
                        if "burn_heavy" in names:
                            kinds = {f.kind for f in s.frames}
                            got["python_frames"] += s.count if "cpython" in kinds else 0
                            exe = s.resource.get("process.executable.name")
                            got["exe"] += s.count if exe == "python3.11" else 0
            assert got["burn_heavy"] >= 200, got
            assert got["burn_light"] == 0, got  # the exporter's OTTL filter dropped them
            assert got["python_frames"] == got["burn_heavy"], got
            assert got["exe"] == got["burn_heavy"], got
        finally:
            kiln.terminate()
            _, err = kiln.communicate(timeout=60)
            work.kill()
            work.communicate()
    assert kiln.returncode == 0, err
