"""Reading another process's memory through /proc/PID/mem (no ptrace stop).

The target keeps running: a read may see memory mid-update, which is why
every reader of it (symbolizer.interpreters.pycode) validates what it gets.
"""

from __future__ import annotations

import os


class ProcessMemory:
    """pread on /proc/PID/mem; `read` returns None instead of raising."""

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid = pid
        self._fd: int | None = None
        try:
            self._fd = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    @property
    def ok(self) -> bool:
        return self._fd is not None

    def read(self, address: int, size: int) -> bytes | None:
        if self._fd is None or size <= 0 or address <= 0:
            return None
        try:
            data = os.pread(self._fd, size, address)
        except (OSError, OverflowError):
            return None
        return data if len(data) == size else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
