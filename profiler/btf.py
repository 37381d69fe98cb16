"""Struct member offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux).

Kiln may compile its BPF program against another kernel's headers (the
distro's newest when the running kernel's are missing), so any offset into
a kernel-internal struct must come from the running kernel's own type
information and reach the program as a -D constant.

Only what offset lookups need is parsed: the type section's records (to
find a struct by name and follow member types through typedefs and
qualifiers) and the string section. Facts from the kernel's
Documentation/bpf/btf.rst: a 24-byte header, then 12-byte `btf_type`
records each followed by kind-specific data; type ids start at 1.
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")

_KIND_INT, _KIND_STRUCT, _KIND_UNION = 1, 4, 5
_MAX_NESTING = 16
_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG = 8, 9, 10, 11, 18

# Bytes of kind-specific data after a btf_type: fixed, or per vlen entry.
_FIXED_EXTRA = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_QUALIFIERS = {_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG}


class BtfError(Exception):
    """The BTF blob is missing, malformed, or lacks the asked-for member."""


class Btf:
    """An index of one BTF blob's types, enough to compute member offsets."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("BTF blob shorter than its header")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
            data
        )
        if magic != _MAGIC:
            raise BtfError(f"bad BTF magic 0x{magic:x} (expected 0x{_MAGIC:x})")
        types_start = hdr_len + type_off
        strs_start = hdr_len + str_off
        if types_start + type_len > len(data) or strs_start + str_len > len(data):
            raise BtfError("BTF sections run past the end of the blob")
        self._data = data
        self._strs = data[strs_start : strs_start + str_len]
        # _offsets[type_id] = byte offset of its btf_type record (id 0 is void).
        self._offsets = [0]
        self._structs: dict[str, int] = {}
        pos, end = types_start, types_start + type_len
        while pos < end:
            if pos + _TYPE.size > end:
                raise BtfError("truncated BTF type record")
            name_off, info, _size = _TYPE.unpack_from(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            self._offsets.append(pos)
            if kind == _KIND_STRUCT and name_off:
                self._structs.setdefault(self._name(name_off), len(self._offsets) - 1)
            pos += _TYPE.size + _FIXED_EXTRA.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen
        if pos != end:
            raise BtfError("BTF type section does not end on a record boundary")

    def _name(self, off: int) -> str:
        end = self._strs.find(b"\0", off)
        if off >= len(self._strs) or end < 0:
            raise BtfError(f"string offset {off} out of range")
        return self._strs[off:end].decode("utf-8", "replace")

    def _record(self, type_id: int) -> tuple[int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type) of a type id, qualifiers included."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"type id {type_id} out of range")
        _name, info, size_or_type = _TYPE.unpack_from(self._data, self._offsets[type_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type

    def _strip(self, type_id: int) -> int:
        for _ in range(32):  # qualifier chains are short; a loop means corrupt data
            kind, _vlen, _kf, target = self._record(type_id)
            if kind not in _QUALIFIERS:
                return type_id
            type_id = target
        raise BtfError("qualifier chain too long")

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a dotted member path, e.g. ("task_struct", "thread.fsbase").

        Anonymous struct/union members are searched through, as C allows.
        Bitfields have no byte offset: asking for one is an error."""
        type_id = self._structs.get(struct_name)
        if type_id is None:
            raise BtfError(f"struct {struct_name} not in BTF")
        total_bits = 0
        for part in path.split("."):
            found = self._find_member(type_id, part, depth=0)
            if found is None:
                raise BtfError(f"{struct_name} has no member {path!r} (missing {part!r})")
            bits, type_id, bitfield = found
            if bitfield:
                raise BtfError(f"{struct_name}.{path} is a bitfield")
            total_bits += bits
        if total_bits % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield")
        return total_bits // 8

    def _find_member(self, type_id: int, name: str, depth: int) -> tuple[int, int, bool] | None:
        """(bit offset, member type id, is a bitfield) of `name` in a struct or union."""
        if depth > _MAX_NESTING:  # anonymous members nest a few deep; more is a cycle
            raise BtfError("anonymous members nest too deep (corrupt BTF)")
        type_id = self._strip(type_id)
        kind, vlen, kind_flag, _size = self._record(type_id)
        if kind not in (_KIND_STRUCT, _KIND_UNION):
            return None
        base = self._offsets[type_id] + _TYPE.size
        for i in range(vlen):
            name_off, mtype, moff = _MEMBER.unpack_from(self._data, base + i * _MEMBER.size)
            bits = moff & 0xFFFFFF if kind_flag else moff
            if name_off and self._name(name_off) == name:
                return bits, mtype, (kind_flag and moff >> 24 != 0) or self._int_bitfield(mtype)
            if not name_off:  # anonymous struct/union: look inside
                inner = self._find_member(mtype, name, depth + 1)
                if inner is not None:
                    return bits + inner[0], inner[1], inner[2]
        return None

    def _int_bitfield(self, type_id: int) -> bool:
        """Old-style bitfield: an INT type whose encoding has an offset or odd width."""
        type_id = self._strip(type_id)
        kind, _vlen, _kf, size = self._record(type_id)
        if kind != _KIND_INT:
            return False
        encoding = int(struct.unpack_from("<I", self._data, self._offsets[type_id] + _TYPE.size)[0])
        return (encoding >> 16) & 0xFF != 0 or encoding & 0xFF != 8 * size


def kernel_member_offset(struct_name: str, path: str, source: Path = VMLINUX) -> int:
    """Offset of a member in the running kernel's struct (BtfError if unknown)."""
    try:
        data = source.read_bytes()
    except OSError as e:
        raise BtfError(f"cannot read {source}: {e}") from e
    return Btf(data).member_offset(struct_name, path)
