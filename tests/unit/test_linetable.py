"""Line tables decoded against the real interpreters installed here.

Each interpreter runs tests/fixtures/py_linetable_dump.py, which compiles a
module full of awkward cases (line gaps past 127/255/65535, negative deltas,
columns past 255, jumps needing EXTENDED_ARG) and reports, for every
instruction offset, the line that interpreter itself computes. Our decoder
must agree everywhere.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbolizer.interpreters.linetable import line_for, line_ranges
from tests.conftest import skip_outside_ci

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"

# (label, executable). pyenv builds link libpython3.X.so; Debian's links it statically.
INTERPRETERS: list[tuple[str, Path]] = [
    (f"pyenv-{v}", PYENV / v / "bin" / f"python{v.rsplit('.', 1)[0]}")
    for v in ("3.6.15", "3.7.16", "3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0")
] + [("debian-3.11", Path("/usr/bin/python3.11"))]


def interpreter_or_skip(label: str, exe: Path) -> Path:
    if not os.access(exe, os.X_OK):
        skip_outside_ci(
            f"{label} ({exe}) not installed here (CI machines have every pyenv version)"
        )
    return exe


@functools.cache
def run_fixture(exe: Path, script: str, *args: str) -> Any:
    out = subprocess.run(
        [str(exe), str(FIXTURES / script), *args],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize(("label", "exe"), INTERPRETERS, ids=[i[0] for i in INTERPRETERS])
def test_matches_interpreter(label: str, exe: Path) -> None:
    dump = run_fixture(interpreter_or_skip(label, exe), "py_linetable_dump.py")
    version = tuple(dump["version"])
    checked = 0
    for code in dump["codes"]:
        table = bytes.fromhex(code["table"])
        want = code["lines"]
        got: list[int | None] = [None] * len(want)
        for start, end, line in line_ranges(version, code["firstlineno"], table):
            for off in range(start, min(end, 2 * len(want)), 2):
                got[off // 2] = line
        assert got == want, f"{label}: {code['name']}"
        # line_for scans from the start each time: check it on a sample of offsets.
        for i in range(0, len(want), 37):
            assert line_for(version, code["firstlineno"], table, i * 2) == want[i]
        checked += len(got)
    assert checked > 2000  # the fixture really exercised the decoder
    names = {c["name"] for c in dump["codes"]}
    assert {"gaps", "long_function", "long_line", "backwards", "method"} <= names


def test_past_the_end_and_negative_offsets() -> None:
    # 3.11 short-form entry: 1 code unit on the first line.
    assert line_for((3, 11), 5, bytes([0x80, 0x00]), 0) == 5
    assert line_for((3, 11), 5, bytes([0x80, 0x00]), 2) is None
    assert line_for((3, 11), 5, b"", 0) is None
    assert line_for((3, 10), 5, bytes([2, 0]), 2) is None
    assert line_for((3, 9), 5, b"", 100) == 5  # lnotab: every offset has a line
    assert line_for((3, 12), 5, bytes([0x80, 0x00]), -2) is None
    assert line_for((2, 7), 5, b"", 0) is None


def test_location_kinds() -> None:
    no_location = 0x80 | (15 << 3)  # kind 15, one code unit
    one_line_plus2 = 0x80 | (12 << 3)  # kind 12: line + 2, two column bytes
    no_columns = 0x80 | (13 << 3)
    table = bytes([one_line_plus2, 1, 2, no_location, no_columns, 0x03])  # svarint 3 -> -1
    assert line_for((3, 12), 10, table, 0) == 12
    assert line_for((3, 12), 10, table, 2) is None
    assert line_for((3, 12), 10, table, 4) == 11
    # A byte without bit 7 where an entry should start: corrupt, not a guess.
    assert line_for((3, 12), 10, bytes([0x05, 0x80, 0x00]), 2) is None


def test_long_varints_are_rejected() -> None:
    long_form = 0x80 | (14 << 3)
    table = bytes([long_form]) + b"\x7f" * 40
    assert line_for((3, 11), 1, table, 0) is None


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([(3, 8), (3, 9), (3, 10), (3, 11), (3, 12), (3, 13)]),
    firstlineno=st.integers(min_value=-(2**31), max_value=2**31),
    table=st.binary(max_size=512),
    offset=st.integers(min_value=-4, max_value=4096),
)
def test_fuzz_total(version: tuple[int, int], firstlineno: int, table: bytes, offset: int) -> None:
    result = line_for(version, firstlineno, table, offset)
    assert result is None or isinstance(result, int)


def test_runs_under_this_interpreter_too() -> None:
    """The fixture's own interpreter (the venv's) is one more ground truth."""
    dump = run_fixture(Path(sys.executable), "py_linetable_dump.py")
    code = dump["codes"][0]
    lines = [
        line_for(tuple(dump["version"]), code["firstlineno"], bytes.fromhex(code["table"]), i * 2)
        for i in range(len(code["lines"]))
    ]
    assert lines == code["lines"]
