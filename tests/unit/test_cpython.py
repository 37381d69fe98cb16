"""CPython detection and offsets, verified against the interpreters installed here.

The main test starts each interpreter on tests/fixtures/py_walk_self.py,
runs `detect` on the child's /proc/PID/maps (no root needed: it is our own
child), hands the resulting CPythonInfo to the child, and lets it walk its
own `_PyRuntime` -> interpreter -> thread states -> frames -> code objects
with ctypes at exactly those offsets. What it reads must match what the
interpreter reports through sys._current_frames() and threading: function
names, qualnames, files, first lines, line numbers (through our line-table
decoder) and thread ids.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiler.procfs import MapEntry, parse_maps
from symbolizer.elf import Segment, open_regular
from symbolizer.interpreters import cpython
from symbolizer.interpreters.linetable import line_for
from tests.conftest import skip_outside_ci
from tests.unit.test_linetable import FIXTURES, INTERPRETERS, interpreter_or_skip

WALKABLE = [i for i in INTERPRETERS if not i[0].startswith(("pyenv-3.6", "pyenv-3.7"))]


def open_path(m: MapEntry) -> BinaryIO | None:
    try:
        return open_regular(m.file_path)
    except OSError:
        return None


def detect_and_walk(exe: Path) -> tuple[cpython.Detection, dict[str, Any] | None]:
    with subprocess.Popen(
        [str(exe), str(FIXTURES / "py_walk_self.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            maps = parse_maps(Path(f"/proc/{child.pid}/maps").read_text())
            found = cpython.detect_reason(maps, open_path)
            if found.info is None:
                return found, None
            out, _ = child.communicate(json.dumps(found.info.to_dict()) + "\n", timeout=30)
            assert child.returncode == 0
            return found, json.loads(out)
        finally:
            if child.poll() is None:
                child.kill()


@pytest.mark.parametrize(("label", "exe"), WALKABLE, ids=[i[0] for i in WALKABLE])
def test_walk_own_structures(label: str, exe: Path) -> None:
    found, result = detect_and_walk(interpreter_or_skip(label, exe))
    info = found.info
    assert info is not None, found.reason
    assert result is not None
    version = tuple(result["version"])
    assert info.version == version
    assert info.version_hex >> 16 == (version[0] << 8) | version[1]
    assert info.offsets_source == ("debug_offsets" if version >= (3, 13) else "table")
    if version >= (3, 13):  # the published offsets agree with our table
        assert info.offsets == cpython.table_offsets(version)
    if "libpython" not in info.path:
        assert label == "debian-3.11"  # Debian links libpython into the executable

    walked = result["walked"]
    assert walked["interp_next"] == 0  # one interpreter
    threads = {t["thread_id"]: t for t in walked["threads"]}
    assert set(threads) == {result["main_ident"], result["worker_ident"]}
    for ident, t in threads.items():
        assert t["interp_ok"]
        if info.offsets.tstate_native_thread_id != cpython.ABSENT:
            assert t["native_id"] == result["native_ids"][str(ident)]
        frames = t["frames"]
        if ident == result["main_ident"]:
            # The walk itself is on top of the stack; truth starts at its caller.
            top = [f["name"] for f in frames].index("deep_recursion")
            assert [f["name"] for f in frames[:top]][-2:] == ["walk_frames", "walk"]
            frames = frames[top:]
        truth = result["truth"][str(ident)]
        assert [f["name"] for f in frames] == [f["name"] for f in truth]
        for i, (got, want) in enumerate(zip(frames, truth, strict=True)):
            assert got["filename"] == want["filename"]
            assert got["firstlineno"] == want["firstlineno"]
            assert got["qualname"] == want["qualname"]
            if ident == result["main_ident"] and i == 0:
                continue  # this frame moved on between the walk and the truth
            line = line_for(version, got["firstlineno"], bytes.fromhex(got["table"]), got["offset"])
            assert line == want["lineno"], f"{label}: {got['name']}"
    names = [f["name"] for t in threads.values() for f in t["frames"]]
    assert "wait_in_worker_fünf" in names  # non-ASCII (compact) strings decode
    assert names.count("deep_recursion") == 4


@pytest.mark.parametrize(
    ("label", "exe", "why"),
    [
        ("pyenv-3.6", INTERPRETERS[0][1], "does not export _PyRuntime"),
        ("pyenv-3.7", INTERPRETERS[1][1], "CPython 3.7 is not supported"),
    ],
)
def test_older_interpreters_give_reasons(label: str, exe: Path, why: str) -> None:
    found, _ = detect_and_walk(interpreter_or_skip(label, exe))
    assert found.info is None
    assert why in found.reason


def _map(path: str, start: int = 0x1000, offset: int = 0, perms: str = "r--p") -> MapEntry:
    return MapEntry(start, start + 0x1000, perms, offset, 8, 1, 42, path)


def test_no_candidates() -> None:
    assert cpython.detect_reason([], open_path).reason == "no file-backed mappings"
    anon = MapEntry(0x1000, 0x2000, "rw-p", 0, 0, 0, 0, "[heap]")
    assert cpython.detect([anon], open_path) is None


def test_unopenable_and_corrupt_files_are_reasons() -> None:
    maps = [_map("/nonexistent/libpython3.12.so.1.0"), _map("/opt/bin/python3", 0x9000)]
    found = cpython.detect_reason(maps, lambda m: None)
    assert found.info is None
    assert "libpython3.12.so.1.0: cannot open" in found.reason

    def garbage(m: MapEntry) -> BinaryIO:
        return io.BytesIO(b"\x7fELF" + os.urandom(200))

    found = cpython.detect_reason(maps, garbage)
    assert found.info is None and "python3" in found.reason


def test_not_python() -> None:
    true = "/usr/bin/true"
    found = cpython.detect_reason([_map(true)], open_path)
    assert found.info is None
    assert "does not export _PyRuntime" in found.reason


def test_load_bias() -> None:
    segs = [
        Segment(offset=0, vaddr=0, filesz=0x800, memsz=0x800, flags=4),
        Segment(offset=0x1000, vaddr=0x1000, filesz=0x2000, memsz=0x2000, flags=5),
        Segment(offset=0x3E00, vaddr=0x4E00, filesz=0x200, memsz=0x900, flags=6),
    ]
    pie = [_map("/x", 0x7F0000000000), _map("/x", 0x7F0000004000, offset=0x3000)]
    assert cpython.load_bias(pie, segs) == 0x7F0000000000
    # Only the data mapping is visible: the bias still comes out the same.
    data_only = [MapEntry(0x7F0000004000, 0x7F0000005000, "rw-p", 0x3000, 8, 1, 42, "/x")]
    assert cpython.load_bias(data_only, segs) == 0x7F0000000000
    assert cpython.load_bias([], segs) is None


def test_debug_offsets_rejects_bad_input() -> None:
    assert cpython.parse_debug_offsets(b"") is None
    assert cpython.parse_debug_offsets(b"xdebugpy" + b"\0" * 16) is None
    size = 8 + 8 * len(cpython._DEBUG_FIELDS_313)
    assert cpython.parse_debug_offsets(b"notdebug" + b"\0" * size) is None
    wrong_version = b"xdebugpy" + (0x030C01F0).to_bytes(8, "little") + b"\0" * size
    assert cpython.parse_debug_offsets(wrong_version) is None
    huge = b"xdebugpy" + (0x030D00F0).to_bytes(8, "little") + b"\xff" * size
    assert cpython.parse_debug_offsets(huge) is None


def test_to_dict_is_json() -> None:
    offsets = cpython.table_offsets((3, 12))
    assert offsets is not None
    info = cpython.CPythonInfo(
        "/usr/lib/libpython3.12.so", 3, 12, 1, 0x030C01F0, 0x1234, "table", offsets
    )
    d = json.loads(json.dumps(info.to_dict()))
    assert d["runtime_address"] == 0x1234
    assert d["offsets"]["frame_owner_cstack"] == 3
    assert cpython.table_offsets((3, 7)) is None
    assert cpython.SUPPORTED == ((3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13))


LIBPYTHON_312 = Path("/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0")


@pytest.fixture(scope="module")
def real_elf() -> bytes:
    for candidate in (LIBPYTHON_312, Path("/usr/bin/python3.11")):
        if candidate.exists():
            return candidate.read_bytes()
    skip_outside_ci("no CPython binary installed here (CI has all pyenv versions)")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_files_never_raise(real_elf: bytes, data: st.DataObject) -> None:
    """Truncated or bit-flipped interpreters give a reason (or, rarely, still work)."""
    blob = bytearray(real_elf[: data.draw(st.integers(0, len(real_elf)), label="length")])
    for _ in range(data.draw(st.integers(0, 8), label="flips")):
        if blob:
            pos = data.draw(st.integers(0, min(len(blob), 1 << 16) - 1))
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
    maps = [_map("/usr/lib/libpython3.12.so.1.0")]
    found = cpython.detect_reason(maps, lambda m: io.BytesIO(bytes(blob)))
    assert found.info is not None or found.reason
