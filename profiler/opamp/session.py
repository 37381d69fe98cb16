"""What the client sends next: sequence numbers, full state and compression.

Spec rules kept here (sections "AgentToServer.sequence_num", "Agent Status
Compression", "Status Reporting"):
- sequence_num goes up by exactly 1 for each message the server received
  (a send that failed does not use a number, so the server sees no gap);
- every message carries instance_uid and capabilities;
- a status sub-message (description, health, effective config, remote
  config status) is sent when it changed since it was last sent, and all of
  them on the first message of a connection and after the server's
  ReportFullState flag;
- with nothing to report, an HTTP poll is a message with only those fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from google.protobuf.message import Message

from profiler.opamp.wire import CAPABILITIES, pb

Part = Literal["agent_description", "health", "effective_config", "remote_config_status"]
PARTS: tuple[Part, ...] = (
    "agent_description",
    "health",
    "effective_config",
    "remote_config_status",
)


class Session:
    def __init__(self, instance_uid: bytes) -> None:
        self.instance_uid = instance_uid
        self.sequence_num = 0
        self.full_state = True  # the first message of a connection
        self._sent: dict[str, bytes] = {}
        self._built_full = False

    def reconnected(self) -> None:
        # The server may have lost what we said (restart, another replica).
        self.full_state = True

    def build(self, parts: Mapping[str, Message | None], *, poll: bool) -> pb.AgentToServer | None:
        """The next message, or None when nothing changed and no poll is due."""
        changed: dict[Part, Message] = {}
        for name in PARTS:
            part = parts.get(name)
            if part is None:
                continue
            raw = part.SerializeToString(deterministic=True)
            if self.full_state or self._sent.get(name) != raw:
                changed[name] = part
        if not changed and not poll and not self.full_state:
            return None
        msg = pb.AgentToServer(
            instance_uid=self.instance_uid,
            sequence_num=self.sequence_num,
            capabilities=CAPABILITIES,
        )
        for name, part in changed.items():
            getattr(msg, name).CopyFrom(part)
        self._built_full = self.full_state
        return msg

    def changed(self, name: Part, part: Message | None) -> bool:
        """Whether `part` differs from what the server last got for `name`."""
        if part is None:
            return False
        return self._sent.get(name) != part.SerializeToString(deterministic=True)

    def sent(self, msg: pb.AgentToServer) -> None:
        """The server has `msg`: use up its number, remember what it knows."""
        self.sequence_num += 1
        for name in PARTS:
            if msg.HasField(name):
                self._sent[name] = getattr(msg, name).SerializeToString(deterministic=True)
        if self._built_full:
            self.full_state = False
            self._built_full = False

    def disconnect(self) -> pb.AgentToServer:
        return pb.AgentToServer(
            instance_uid=self.instance_uid,
            sequence_num=self.sequence_num,
            capabilities=CAPABILITIES,
            agent_disconnect=pb.AgentDisconnect(),
        )
