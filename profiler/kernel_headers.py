"""Finding kernel headers for BCC, and saying so when they are a fallback.

BCC compiles the BPF C at load time against /lib/modules/$(uname -r)/build
(or $BCC_KERNEL_SOURCE). When the distro has no headers for the running
kernel, `make deps` links the distro's newest headers there; that works
because Kiln's BPF programs use only UAPI types and helpers, whose layout
does not change between kernel releases.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from profiler.errors import HeadersMissingError


@dataclass(frozen=True)
class HeadersInfo:
    path: str
    release: str  # release the headers were made for, "" if unknown
    running: str
    fallback: bool

    def describe(self) -> str:
        if self.fallback:
            return (
                f"using fallback kernel headers {self.release} at {self.path} for running "
                f"kernel {self.running}; fine for Kiln (UAPI types only), install "
                f"linux-headers-{self.running} where the distro has it"
            )
        return f"kernel headers {self.release or self.running} at {self.path}"


_RELEASE_RE = re.compile(r"linux-headers-(\S+)$")


def headers_release(path: str) -> str:
    """The release a headers tree was built for, from its resolved directory name."""
    m = _RELEASE_RE.search(os.path.basename(os.path.realpath(path)))
    return m.group(1) if m else ""


def find_headers(modules_root: str = "/lib/modules", running: str | None = None) -> HeadersInfo:
    running = running or os.uname().release
    env = os.environ.get("BCC_KERNEL_SOURCE")
    candidates = [env] if env else []
    candidates.append(f"{modules_root}/{running}/build")
    for path in candidates:
        if path and (Path(path, "include").is_dir() or Path(path, "Makefile").is_file()):
            release = headers_release(path)
            fallback = bool(release) and release != running
            return HeadersInfo(path=path, release=release, running=running, fallback=fallback)
    raise HeadersMissingError(
        f"no kernel headers for kernel {running} (looked in {', '.join(filter(None, candidates))})",
        f"run `make deps` (installs linux-headers-{running}, or links the distro's newest "
        "linux-headers-* when none exist for this kernel), or point BCC_KERNEL_SOURCE at a "
        "headers tree",
    )
