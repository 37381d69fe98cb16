"""One error hierarchy for Kiln; each error carries its remedy.

The CLI translates these once, at the top, into one clear message and exit
status 2. Everything below raises them; nothing below prints.
"""

from __future__ import annotations


class KilnError(Exception):
    """A failure the operator can fix; `remedy` says how."""

    exit_status = 2

    def __init__(self, message: str, remedy: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.remedy = remedy

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.remedy}" if self.remedy else self.message


class NotRootError(KilnError):
    """BPF and perf events need root (or CAP_BPF + CAP_PERFMON)."""


class BpfUnavailableError(KilnError):
    """The kernel refused the BPF syscall, the program or the perf event."""


class HeadersMissingError(KilnError):
    """BCC needs kernel headers to compile the BPF programs."""


class BccMissingError(KilnError):
    """BCC's Python bindings are not importable."""


class UsageError(KilnError):
    """Bad command-line input."""
