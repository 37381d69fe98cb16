"""ctypes mirror of bpf/kiln.h: the only description of the kernel ABI in Python.

tests/unit/test_abi.py compiles the header and compares every size and
offset; tests/bpf checks them against the types BCC derives from the C.
"""

from __future__ import annotations

import ctypes
import enum
from pathlib import Path
from typing import Any

import numpy as np

BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
HEADER = BPF_DIR / "kiln.h"

COMM_LEN = 16
MAX_STACK_DEPTH = 127


class Counter(enum.IntEnum):
    """Index of each loss/event counter; same order as enum kiln_counter."""

    SAMPLES = 0
    IDLE = 1
    FILTERED = 2
    KSTACK_ERR = 3
    USTACK_ERR = 4
    STACK_FULL = 5
    COUNTS_FULL = 6
    EVENTS_LOST = 7
    LEAF_FIXED = 8
    FRAMES_TABLE = 9
    FRAMES_FP = 10
    TRUNCATED = 11
    UNKNOWN_PC = 12
    PY_STACKS = 13
    PY_NO_THREAD = 14
    PY_READ_ERR = 15


COUNTER_MAX = 16

# Counters that mean data was lost, with the setting that fixes each.
LOSS_REMEDIES: dict[Counter, str] = {
    Counter.KSTACK_ERR: "kernel stacks unreadable; check kernel.perf_event_max_stack",
    Counter.USTACK_ERR: "user stacks unreadable",
    Counter.STACK_FULL: "raise --stack-entries (stack map full)",
    Counter.COUNTS_FULL: "raise --count-entries or shorten the window",
    Counter.EVENTS_LOST: "raise --ringbuf-pages",
}


class Flag(enum.IntFlag):
    FILTER_PIDS = 0x1
    FILTER_COMMS = 0x2
    KERNEL_STACKS = 0x4
    INCLUDE_IDLE = 0x8


EV_NEW_KEY = 1
EV_EXEC = 2
EV_EXIT = 3
EV_UNKNOWN_PC = 4


class Config(ctypes.Structure):
    _fields_ = [("active", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


class Comm(ctypes.Structure):
    _fields_ = [("comm", ctypes.c_char * COMM_LEN)]


class SampleKey(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("kstack", ctypes.c_uint64),
        ("ustack", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("leaf_caller", ctypes.c_uint64),
        ("pystack", ctypes.c_uint64),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


STACK_TRUNCATED = 0x1


class Stack(ctypes.Structure):
    _fields_ = [
        ("len", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("ips", ctypes.c_uint64 * MAX_STACK_DEPTH),
    ]


class SampleValue(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
    ]


class Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("half", ctypes.c_uint32),
        ("ts_ns", ctypes.c_uint64),
        ("pc", ctypes.c_uint64),
        ("key", SampleKey),
    ]


# ---- table-driven unwinding (see kiln.h) ----------------------------------

PAGE_SHIFT = 12
FINE_SHIFT = 8
FINE_FILE_BIT = 0x80000000
CHUNK_ROWS = 64
CHUNK_STEPS = 6
PAGE_SPLIT = 0x1
MAP_NO_TABLE = 0x1


class CfaType(enum.IntEnum):
    NONE = 0
    RSP = 1
    RBP = 2
    PLT = 3
    END = 4


class RbpType(enum.IntEnum):
    SAME = 0
    OFFSET = 1
    UNDEF = 2


class UnwindRow(ctypes.Structure):
    _fields_ = [
        ("pc", ctypes.c_uint64),
        ("cfa_offset", ctypes.c_int32),
        ("rbp_offset", ctypes.c_int16),
        ("cfa_type", ctypes.c_uint8),
        ("rbp_type", ctypes.c_uint8),
    ]


class PageKey(ctypes.Structure):
    _fields_ = [("file_id", ctypes.c_uint32), ("page", ctypes.c_uint32)]


class PageVal(ctypes.Structure):
    _fields_ = [
        ("first_row", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
    ]


class MappingKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("addr", ctypes.c_uint8 * 8),
    ]


class MappingVal(ctypes.Structure):
    _fields_ = [
        ("file_id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("bias", ctypes.c_uint64),
    ]


# ---- Python stacks (see kiln.h) --------------------------------------------

PY_ABSENT = 0xFFFF
PY_CODE_BITS = 44
PY_INSTR_MASK = 0x7FFFF
PY_NO_INSTR = 0x7FFFF
PY_ENTRY = 1 << 63


class PyProc(ctypes.Structure):
    _fields_ = [
        ("runtime", ctypes.c_uint64),
        ("code_type", ctypes.c_uint64),
        ("version", ctypes.c_uint16),
        ("runtime_interpreters_head", ctypes.c_uint16),
        ("interp_tstate_head", ctypes.c_uint16),
        ("tstate_next", ctypes.c_uint16),
        ("tstate_native_thread_id", ctypes.c_uint16),
        ("tstate_thread_id", ctypes.c_uint16),
        ("tstate_frame", ctypes.c_uint16),
        ("cframe_current_frame", ctypes.c_uint16),
        ("frame_back", ctypes.c_uint16),
        ("frame_code", ctypes.c_uint16),
        ("frame_instr", ctypes.c_uint16),
        ("frame_owner", ctypes.c_uint16),
        ("frame_is_entry", ctypes.c_uint16),
        ("code_bytecode", ctypes.c_uint16),
        ("instr_kind", ctypes.c_uint8),
        ("owner_cstack", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 2),
    ]


class PyThread(ctypes.Structure):
    _fields_ = [("tstate", ctypes.c_uint64), ("checked_ns", ctypes.c_uint64)]


# C struct name -> mirror, for the layout tests.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "kiln_config": Config,
    "kiln_comm": Comm,
    "kiln_sample_key": SampleKey,
    "kiln_sample_value": SampleValue,
    "kiln_stack": Stack,
    "kiln_unwind_row": UnwindRow,
    "kiln_page_key": PageKey,
    "kiln_page_val": PageVal,
    "kiln_mapping_key": MappingKey,
    "kiln_mapping_val": MappingVal,
    "kiln_event": Event,
    "kiln_py_proc": PyProc,
    "kiln_py_thread": PyThread,
}


_NP_SCALARS = {
    ctypes.c_uint8: "u1",
    ctypes.c_int16: "<i2",
    ctypes.c_uint16: "<u2",
    ctypes.c_uint32: "<u4",
    ctypes.c_int32: "<i4",
    ctypes.c_uint64: "<u8",
}


def numpy_dtype(struct: type[ctypes.Structure]) -> np.dtype[np.void]:
    """A numpy record dtype with the mirror's exact offsets, for batch decoding."""
    names, formats, offsets = [], [], []
    for name, ctype, *_ in struct._fields_:
        if name.startswith("_"):
            continue
        if ctype in _NP_SCALARS:
            fmt = _NP_SCALARS[ctype]
        elif issubclass(ctype, ctypes.Array):
            item: Any = ctype._type_
            if item is ctypes.c_char:
                fmt = f"S{ctypes.sizeof(ctype)}"
            elif item in _NP_SCALARS:
                fmt = f"({ctype._length_},){_NP_SCALARS[item]}"
            else:
                raise TypeError(f"no numpy type for {struct.__name__}.{name}")
        else:
            raise TypeError(f"no numpy type for {struct.__name__}.{name}")
        names.append(name)
        formats.append(fmt)
        offsets.append(getattr(struct, name).offset)
    return np.dtype(
        {"names": names, "formats": formats, "offsets": offsets, "itemsize": ctypes.sizeof(struct)}
    )
