"""The OpAMP client's two state machines, as transition tables.

Connection (one per client; the client thread is the only one firing it):

    state         event      next          why
    DISCONNECTED  START      CONNECTING    the client thread starts
    CONNECTING    OPENED     CONNECTED     first status report sent (HTTP: answered)
    CONNECTING    FAILED     BACKING_OFF   refused, TLS/HTTP error, UNAVAILABLE
    CONNECTED     FAILED     BACKING_OFF   lost connection, bad reply, UNAVAILABLE
    BACKING_OFF   RETRY      CONNECTING    the backoff delay (or retry_after) elapsed
    any but DISC. STOP       STOPPING      daemon shutdown: agent_disconnect, close
    DISCONNECTED  STOP       DISCONNECTED  stopped before it started
    STOPPING      CLOSED     DISCONNECTED  the thread ends

Remote config (the offer from the server that is in force, or being applied):

    state     event       next      why
    IDLE      VALID       APPLYING  validated; queued for the next window boundary
    IDLE      INVALID     FAILED    refused with error_message; local config stays
    IDLE      RESTORED    APPLIED   the persisted remote config was applied at start
    IDLE      UNRESTORABLE FAILED   the persisted one no longer validates
    APPLYING  APPLIED_OK  APPLIED   the daemon applied it between two windows
    APPLYING  APPLY_ERROR FAILED    the daemon could not; the previous config stays
    APPLIED   VALID       APPLYING  a newer offer
    APPLIED   INVALID     FAILED    a newer offer refused; the applied one stays
    FAILED    VALID       APPLYING
    FAILED    INVALID     FAILED

An offer that arrives while APPLYING is not a transition: it waits (only the
newest is kept) and is validated once the one applying is done, so at most
one config is ever applying. Any pair missing from a table is a bug and
raises `IllegalTransition`.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar


class Conn(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKING_OFF = "backing_off"
    STOPPING = "stopping"


class ConnEvent(enum.StrEnum):
    START = "start"
    OPENED = "opened"
    FAILED = "failed"
    RETRY = "retry"
    STOP = "stop"
    CLOSED = "closed"


class Remote(enum.StrEnum):
    IDLE = "idle"
    APPLYING = "applying"
    APPLIED = "applied"
    FAILED = "failed"


class RemoteEvent(enum.StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    RESTORED = "restored"
    UNRESTORABLE = "unrestorable"
    APPLIED_OK = "applied_ok"
    APPLY_ERROR = "apply_error"


CONN_TRANSITIONS: Mapping[tuple[Conn, ConnEvent], Conn] = {
    (Conn.DISCONNECTED, ConnEvent.START): Conn.CONNECTING,
    (Conn.CONNECTING, ConnEvent.OPENED): Conn.CONNECTED,
    (Conn.CONNECTING, ConnEvent.FAILED): Conn.BACKING_OFF,
    (Conn.CONNECTED, ConnEvent.FAILED): Conn.BACKING_OFF,
    (Conn.BACKING_OFF, ConnEvent.RETRY): Conn.CONNECTING,
    (Conn.CONNECTING, ConnEvent.STOP): Conn.STOPPING,
    (Conn.CONNECTED, ConnEvent.STOP): Conn.STOPPING,
    (Conn.BACKING_OFF, ConnEvent.STOP): Conn.STOPPING,
    (Conn.DISCONNECTED, ConnEvent.STOP): Conn.DISCONNECTED,
    (Conn.STOPPING, ConnEvent.CLOSED): Conn.DISCONNECTED,
}

REMOTE_TRANSITIONS: Mapping[tuple[Remote, RemoteEvent], Remote] = {
    (Remote.IDLE, RemoteEvent.VALID): Remote.APPLYING,
    (Remote.IDLE, RemoteEvent.INVALID): Remote.FAILED,
    (Remote.IDLE, RemoteEvent.RESTORED): Remote.APPLIED,
    (Remote.IDLE, RemoteEvent.UNRESTORABLE): Remote.FAILED,
    (Remote.APPLYING, RemoteEvent.APPLIED_OK): Remote.APPLIED,
    (Remote.APPLYING, RemoteEvent.APPLY_ERROR): Remote.FAILED,
    (Remote.APPLIED, RemoteEvent.VALID): Remote.APPLYING,
    (Remote.APPLIED, RemoteEvent.INVALID): Remote.FAILED,
    (Remote.FAILED, RemoteEvent.VALID): Remote.APPLYING,
    (Remote.FAILED, RemoteEvent.INVALID): Remote.FAILED,
}

S = TypeVar("S", bound=enum.Enum)
E = TypeVar("E", bound=enum.Enum)


class IllegalTransition(RuntimeError):
    """An event the table has no entry for in the current state (a bug)."""


class Machine(Generic[S, E]):
    """A state and its table; `fire` moves it or raises IllegalTransition.

    Reads of `state` from other threads (the status page) are safe; only one
    thread fires events.
    """

    def __init__(
        self,
        name: str,
        table: Mapping[tuple[S, E], S],
        initial: S,
        on_change: Callable[[S, E, S], None] | None = None,
    ) -> None:
        self.name = name
        self._table = table
        self._state = initial
        self._on_change = on_change
        self._lock = threading.Lock()
        self.history: list[tuple[S, E, S]] = []  # for tests and debugging; bounded below

    @property
    def state(self) -> S:
        return self._state

    def can(self, event: E) -> bool:
        return (self._state, event) in self._table

    def fire(self, event: E) -> S:
        with self._lock:
            old = self._state
            new = self._table.get((old, event))
            if new is None:
                raise IllegalTransition(
                    f"{self.name}: no transition from {old.name} on {event.name}"
                )
            self._state = new
            self.history.append((old, event, new))
            del self.history[:-64]
        if self._on_change is not None:
            self._on_change(old, event, new)
        return new
