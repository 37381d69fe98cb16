"""Symbol demangling: C++ (Itanium ABI) and Rust (legacy and v0).

`demangle` never raises and never returns an empty string: a name it cannot
demangle comes back unchanged. Results are cached, since the same few
thousand hot symbols are demangled again in every profile window.
"""

from __future__ import annotations

import functools
import re

import cxxfilt
import rust_demangler

# Rust's legacy mangling is Itanium-shaped (`_ZN...E`) with a 17-character
# hash path element `h<16 hex>` last, possibly followed by a `.llvm.NNN` tail.
_RUST_LEGACY = re.compile(r"^_ZN.*17h[0-9a-f]{16}E(?:\.[\w.$@]*)?$")
_RUST_HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}$")

# Names longer than this are left alone: real ones are shorter, and the
# pure-Python Rust demangler's cost grows with the input.
_MAX_MANGLED = 8192


@functools.lru_cache(maxsize=1 << 16)
def demangle(name: str) -> str:
    """The human-readable form of a mangled symbol, or `name` unchanged.

    A symbol version suffix (`foo@@GLIBCXX_3.4`) is kept after the result.
    """
    if len(name) > _MAX_MANGLED or not name.startswith(("_Z", "_R", "__Z", "__R")):
        return name
    base, at, version = name.partition("@")
    if base.startswith(("__Z", "__R")):  # Mach-O's extra underscore, seen in mixed builds
        base = base[1:]
    out = _demangle_base(base)
    if out is None:
        return name
    return out + at + version


def _demangle_base(name: str) -> str | None:
    if name.startswith("_R"):
        return _rust(name)
    if _RUST_LEGACY.match(name):
        out = _rust(name)
        if out is not None:
            return _RUST_HASH_SUFFIX.sub("", out)
    return _itanium(name)


def _rust(name: str) -> str | None:
    try:
        out = rust_demangler.demangle(name)
    except Exception:  # the demangler raises assorted errors on bad input
        return None
    if not isinstance(out, str) or not out:
        return None
    return out


def _itanium(name: str) -> str | None:
    try:
        out = cxxfilt.demangle(name, external_only=False)
    except Exception:  # cxxfilt.InvalidName, or a ctypes failure
        return None
    if not isinstance(out, str) or not out or out == name:
        return None
    return out
