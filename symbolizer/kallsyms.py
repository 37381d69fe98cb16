"""Kernel symbolization from /proc/kallsyms.

`parse_kallsyms` is a pure function over the file's text. Only text symbols
(types t, T, w, W) are kept; a `[module]` suffix names the module a symbol
belongs to. When kptr_restrict hides addresses every address reads as zero:
the result is then marked `hidden` and frames get a label that says why,
instead of being attributed to a bogus symbol at address 0.

`KernelSymbolizer` reads /proc/kallsyms once (and again when addresses it
cannot name show up after `refresh_after_s`, e.g. a module was loaded), and
takes build ids from /sys/kernel/notes and /sys/module/*/notes when present.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from symbolizer.demangle import demangle
from symbolizer.elf import build_id_from_notes
from symbolizer.profile import Frame, FrameKind, Mapping
from symbolizer.symtab import SymbolTable, gc_paused

KERNEL_MAPPING_NAME = "[kernel.kallsyms]"
HIDDEN_LABEL = "[kernel] (addresses hidden: kptr_restrict)"

_TEXT_TYPES = {"T": 0, "W": 1, "t": 2, "w": 3}
"""Kept symbol types, with their rank among aliases (global text first)."""

DEFAULT_MAX_UNSIZED = 0x10000
"""kallsyms has no sizes: a symbol ends at the next one, or this far on."""


@dataclass(frozen=True, slots=True)
class KernelSymbols:
    """Kernel text symbols. `modules[0]` is "" (the kernel image itself)."""

    table: SymbolTable
    module_of: npt.NDArray[np.int32]
    """Per table row, an index into `modules`."""
    modules: list[str]
    hidden: bool

    @property
    def starts(self) -> npt.NDArray[np.uint64]:
        return self.table.starts

    def __len__(self) -> int:
        return len(self.table)

    def lookup(self, addrs: Sequence[int] | npt.NDArray[np.uint64]) -> npt.NDArray[np.int32]:
        """Table row of each address, -1 for none (always -1 when hidden)."""
        return self.table.lookup(addrs)

    def name(self, row: int) -> str:
        return self.table.name(row)

    def module(self, row: int) -> str:
        return self.modules[int(self.module_of[row])]

    def module_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of the symbols of each module, in `modules` order."""
        n = len(self.modules)
        lo = np.full(n, np.iinfo(np.uint64).max, dtype=np.uint64)
        hi = np.zeros(n, dtype=np.uint64)
        np.minimum.at(lo, self.module_of, self.table.starts)
        np.maximum.at(hi, self.module_of, self.table.ends)
        return [(int(a), int(b)) if b else (0, 0) for a, b in zip(lo, hi, strict=True)]


def parse_kallsyms(text: str, *, max_unsized: int = DEFAULT_MAX_UNSIZED) -> KernelSymbols:
    """Parse /proc/kallsyms text; malformed lines are skipped, never fatal."""
    addrs: list[int] = []
    names: list[str] = []
    ranks: list[int] = []
    mods: list[int] = []
    module_ids: dict[str, int] = {"": 0}
    lines = 0
    nonzero = False
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        lines += 1
        nonzero = nonzero or addr != 0
        rank = _TEXT_TYPES.get(parts[1])
        if rank is None or addr == 0:
            continue
        mod = ""
        if len(parts) > 3 and parts[3].startswith("[") and parts[3].endswith("]"):
            mod = parts[3][1:-1]
        addrs.append(addr)
        names.append(parts[2])
        ranks.append(rank)
        mods.append(module_ids.setdefault(mod, len(module_ids)))
    modules = list(module_ids)
    if lines and not nonzero:
        return KernelSymbols(SymbolTable.empty(), np.zeros(0, dtype=np.int32), modules, True)
    table = SymbolTable.build(
        np.array(addrs, dtype=np.uint64),
        np.zeros(len(addrs), dtype=np.uint64),
        names,
        ranks=ranks,
        max_unsized=max_unsized,
    )
    module_of = (
        np.array(mods, dtype=np.int32)[table.name_idx] if len(table) else np.zeros(0, np.int32)
    )
    return KernelSymbols(table, module_of.astype(np.int32), modules, False)


class KernelSymbolizer:
    """Names kernel addresses; reads kallsyms lazily, once, and on demand again.

    Counters (frames): "kernel_symbolized", "kernel_unknown", "kernel_hidden";
    (events): "kallsyms_loads", "kallsyms_errors".
    """

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        sys_root: str = "/sys",
        refresh_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc_root = proc_root
        self.sys_root = sys_root
        self.refresh_after_s = refresh_after_s
        self.clock = clock
        self.counters: dict[str, int] = {}
        self._symbols: KernelSymbols | None = None
        self._mappings: list[Mapping] = []
        self._kernel_mapping = Mapping(0, 0, 0, KERNEL_MAPPING_NAME, "", FrameKind.KERNEL)
        self._loaded_at = 0.0

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def symbols(self) -> KernelSymbols:
        if self._symbols is None:
            self.reload()
        assert self._symbols is not None
        return self._symbols

    def reload(self) -> None:
        """Read /proc/kallsyms (and build ids) again."""
        self._loaded_at = self.clock()
        try:
            with open(f"{self.proc_root}/kallsyms", encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            self._count("kallsyms_errors")
            text = ""
        syms = parse_kallsyms(text)
        self._count("kallsyms_loads")
        ranges = syms.module_ranges()
        mappings = []
        for mod, (lo, hi) in zip(syms.modules, ranges, strict=True):
            if mod:
                name = f"[{mod}]"
                bid = self._read_build_id(f"{self.sys_root}/module/{mod}/notes/.note.gnu.build-id")
            else:
                name = KERNEL_MAPPING_NAME
                bid = self._read_build_id(f"{self.sys_root}/kernel/notes")
            mappings.append(Mapping(lo, hi, 0, name, bid, FrameKind.KERNEL))
        self._mappings = mappings
        self._kernel_mapping = mappings[0]
        self._symbols = syms

    @staticmethod
    def _read_build_id(path: str) -> str:
        try:
            with open(path, "rb") as f:
                return build_id_from_notes(f.read(1 << 16))
        except OSError:
            return ""

    def symbolize(self, addrs: Sequence[int] | npt.NDArray[np.uint64]) -> list[Frame]:
        """One KERNEL frame per address, in order; none is ever dropped."""
        a = np.asarray(addrs, dtype=np.uint64).ravel()
        syms = self.symbols
        if syms.hidden:
            self._count("kernel_hidden", len(a))
            m = self._kernel_mapping
            return [Frame(HIDDEN_LABEL, x, FrameKind.KERNEL, m) for x in a.tolist()]
        rows = syms.lookup(a)
        if (rows < 0).any() and self.clock() - self._loaded_at >= self.refresh_after_s:
            self.reload()
            syms = self.symbols
            rows = syms.lookup(a)
        with gc_paused():
            return self._frames(syms, a, rows)

    def _frames(
        self, syms: KernelSymbols, a: npt.NDArray[np.uint64], rows: npt.NDArray[np.int32]
    ) -> list[Frame]:
        names = syms.table.names_of(rows)
        mods = np.where(rows >= 0, syms.module_of[np.maximum(rows, 0)], 0) if len(syms) else rows
        out: list[Frame] = []
        unknown = 0
        kernel = self._kernel_mapping
        for addr, name, mod in zip(a.tolist(), names, mods.tolist(), strict=True):
            if name is None:
                unknown += 1
                out.append(
                    Frame(f"{KERNEL_MAPPING_NAME}+0x{addr:x}", addr, FrameKind.KERNEL, kernel)
                )
            else:
                mapping = self._mappings[mod] if mod < len(self._mappings) else kernel
                out.append(Frame(demangle(name), addr, FrameKind.KERNEL, mapping, system_name=name))
        self._count("kernel_unknown", unknown)
        self._count("kernel_symbolized", len(out) - unknown)
        return out
