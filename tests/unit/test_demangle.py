"""symbolizer/demangle.py: C++ and Rust names, and never a failure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symbolizer.demangle import demangle
from symbolizer.elf import read_symbols
from tests.conftest import FIXTURES, skip_outside_ci


@pytest.fixture(scope="module")
def cxx_names(fixture_build_dir: Path) -> list[str]:
    gxx = shutil.which("g++")
    if gxx is None:
        skip_outside_ci("g++ not installed")
    out = fixture_build_dir / "libdemangle_cxx.so"
    subprocess.run(
        [gxx, "-O2", "-shared", "-fPIC", str(FIXTURES / "demangle_cxx.cpp"), "-o", str(out)],
        check=True,
    )
    return read_symbols(out.read_bytes())[2]


def test_cxx_symbols_from_a_real_gxx_build(cxx_names: list[str]) -> None:
    mangled = [n for n in cxx_names if n.startswith("_Z")]
    assert mangled, "g++ produced no mangled symbols?"
    demangled = {demangle(n) for n in mangled}
    assert {
        "kiln::Widget::spin(int)",
        "kiln::Widget::scale(double, char const*)",
        "int kiln::twice<int>(int)",
        "long kiln::twice<long>(long)",
    } <= demangled
    assert not any(d.startswith("_Z") for d in demangled)


@pytest.mark.parametrize(
    ("mangled", "want"),
    [
        ("_ZN3foo3barEv", "foo::bar()"),
        ("_Z3foov.cold", "foo() [clone .cold]"),
        ("_ZNSt6vectorIiSaIiEE9push_backERKi",
         "std::vector<int, std::allocator<int> >::push_back(int const&)"),
        ("_ZdlPv@@GLIBCXX_3.4", "operator delete(void*)@@GLIBCXX_3.4"),
    ],
)  # fmt: skip
def test_cxx(mangled: str, want: str) -> None:
    assert demangle(mangled) == want


@pytest.mark.parametrize(
    ("mangled", "want"),
    [
        # legacy: the trailing 17h<16 hex> hash element is dropped
        ("_ZN4core3ptr13drop_in_place17h1234567890abcdefE", "core::ptr::drop_in_place"),
        ("_ZN4core3fmt9Formatter3pad17h0123456789abcdefE.llvm.1234", "core::fmt::Formatter::pad"),
        ("_ZN5alloc7raw_vec19RawVec$LT$T$C$A$GT$7reserve17hd7e4d6f3b2a1c0e9E",
         "alloc::raw_vec::RawVec<T,A>::reserve"),
        # v0
        ("_RNvCs1234_7mycrate3foo", "mycrate::foo"),
        ("_RNvMs_NtCs4fqI2P2rA04_4core3fmtNtB4_9Formatter3pad", "<core::fmt::Formatter>::pad"),
    ],
)  # fmt: skip
def test_rust(mangled: str, want: str) -> None:
    assert demangle(mangled) == want


@pytest.mark.parametrize(
    "name",
    ["main", "", "_R", "_Z", "_Zxx", "_ZN", "_RNv", "_GLOBAL__sub_I_main", "memcpy@GLIBC_2.2.5"],
)
def test_unmangled_or_invalid_names_come_back_unchanged(name: str) -> None:
    assert demangle(name) == name


def test_results_are_cached() -> None:
    demangle.cache_clear()
    demangle("_ZN3foo3barEv")
    demangle("_ZN3foo3barEv")
    assert demangle.cache_info().hits >= 1


@settings(max_examples=300, database=None)
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(max_size=60).map(lambda s: "_Z" + s),
        st.text(max_size=60).map(lambda s: "_R" + s),
        st.text("0123456789abcdefhNE_ZR", max_size=60).map(lambda s: "_ZN" + s),
    )
)
def test_never_raises(name: str) -> None:
    out = demangle(name)
    assert isinstance(out, str)
    assert out or not name
