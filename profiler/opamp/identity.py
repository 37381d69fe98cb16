"""Who this agent is to the OpAMP server: instance_uid and AgentDescription.

The instance_uid (spec: 16 bytes, UUIDv7, unchanged for the agent's life) is
created once and kept in `<data_dir>/opamp/instance_uid` as its canonical
text, so a restarted Kiln is the same agent to the server. A server may
assign another one (AgentIdentification.new_instance_uid); it is kept too.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import uuid
from pathlib import Path

from opentelemetry._opamp._uuid import uuid7

from profiler.opamp.wire import key_values, pb

log = logging.getLogger("kiln.opamp")

UID_FILE = "instance_uid"

# Semantic conventions' host.arch values for what platform.machine() says.
_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "x86",
    "i686": "x86",
    "ppc64le": "ppc64",
    "ppc64": "ppc64",
    "s390x": "s390x",
    "armv7l": "arm32",
}


def load_instance_uid(directory: Path) -> bytes:
    """The persisted instance_uid, or a new UUIDv7 saved there first."""
    path = directory / UID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    except OSError as e:
        log.warning("cannot read the OpAMP instance_uid, using a new one: %s", e)
        text = ""
    if text:
        try:
            return uuid.UUID(text).bytes
        except ValueError:
            log.warning("%s is not a UUID; a new instance_uid replaces it", path)
    uid = uuid7().bytes
    save_instance_uid(directory, uid)
    return uid


def save_instance_uid(directory: Path, uid: bytes) -> None:
    try:
        atomic_write(directory / UID_FILE, str(uuid.UUID(bytes=uid)) + "\n")
    except OSError as e:  # still usable for this run; the server sees a new agent next time
        log.warning("cannot persist the OpAMP instance_uid: %s", e)


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash leaves old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def agent_description(uid: bytes, version: str) -> pb.AgentDescription:
    identifying = {
        "service.name": "kiln",
        "service.version": version,
        "service.instance.id": str(uuid.UUID(bytes=uid)),
    }
    machine = platform.machine().lower()
    non_identifying = {
        "host.name": socket.gethostname(),
        "os.type": platform.system().lower(),
        "host.arch": _ARCH.get(machine, machine),
    }
    return pb.AgentDescription(
        identifying_attributes=key_values(identifying),
        non_identifying_attributes=key_values(non_identifying),
    )
