"""The OpAMP client: one thread beside the daemon, never in its way.

`OpampClient(daemon, compose=..., version=...)` then `start()`; `stop()`
sends agent_disconnect and ends the thread. The loop is `step()`: it never
blocks on the network except inside one send (bounded by the transport's
timeout), and returns how long to wait; the thread waits on an event that
arriving messages, applied configs and `stop()` set. The daemon's window
loop only ever does two cheap things for it: call `request_config` (from
here) and the `config_hooks` entry (which queues an event).

Connection states and remote-config states are in profiler.opamp.state.
Whatever the server does (down, slow, refusing, sending garbage) the daemon
keeps profiling with the config in force; only a valid offer changes it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.message import Message

from profiler import config as cfg
from profiler.opamp.backoff import Backoff
from profiler.opamp.identity import agent_description, load_instance_uid, save_instance_uid
from profiler.opamp.remote_config import (
    CONFIG_FILE,
    Compose,
    RemoteConfigManager,
    RemoteConfigStore,
    Restored,
    kernel_max_sample_rate,
)
from profiler.opamp.session import Session
from profiler.opamp.state import CONN_TRANSITIONS, Conn, ConnEvent, Machine, Remote
from profiler.opamp.transport import Transport, TransportError, make_transport
from profiler.opamp.wire import MessageError, decode_server_to_agent, encode_agent_to_server, pb

log = logging.getLogger("kiln.opamp")

MIN_SEND_GAP_S = 0.1  # a server asking for full state on every reply cannot make us spin
# Bounds for a heartbeat interval the server offers (seconds; 0 turns heartbeats off).
HEARTBEAT_BOUNDS_S = (1.0, 86_400.0)
DISCONNECT_TIMEOUT_S = 3.0
ConfigHook = Callable[[cfg.KilnConfig, Exception | None], None]


class DaemonStats(Protocol):
    started: float  # time.monotonic() at start
    windows_written: int
    window_errors: int


class DaemonLike(Protocol):
    """What the client needs of profiler.daemon.Daemon (tests use a fake)."""

    config: cfg.KilnConfig
    status_extras: dict[str, Callable[[], Any]]
    config_hooks: list[ConfigHook]

    @property
    def stats(self) -> DaemonStats: ...

    def request_config(self, new: cfg.KilnConfig) -> None: ...


class OpampClient:
    def __init__(
        self,
        daemon: DaemonLike,
        *,
        compose: Compose,
        version: str,
        restored: Restored | None = None,
        transport: Transport | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        kernel_ceiling: Callable[[], int | None] = kernel_max_sample_rate,
    ) -> None:
        self.daemon = daemon
        opamp = daemon.config.opamp
        self.endpoint = opamp.endpoint
        self.max_bytes = opamp.max_message_bytes
        self.poll_interval = opamp.poll_interval
        self._dir = Path(daemon.config.data_dir) / "opamp"
        self._version = version
        self._clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._events: queue.SimpleQueue[tuple[cfg.KilnConfig, Exception | None]] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self.session = Session(load_instance_uid(self._dir))
        self.transport = transport or make_transport(
            self.endpoint,
            headers=opamp.headers,
            ca_file=opamp.ca_file,
            max_bytes=self.max_bytes,
            instance_uid=lambda: self.session.instance_uid,
            user_agent=f"kiln/{version}",
        )
        self.backoff = backoff or Backoff()
        self.conn: Machine[Conn, ConnEvent] = Machine(
            "opamp connection", CONN_TRANSITIONS, Conn.DISCONNECTED, self._conn_changed
        )
        self.remote = RemoteConfigManager(
            request=daemon.request_config,
            compose=compose,
            store=RemoteConfigStore(self._dir),
            kernel_ceiling=kernel_ceiling,
            on_change=self._wake.set,
        )
        if restored is not None:
            self.remote.restore(restored)
        self.last_error = ""
        self.retry_at = 0.0
        self.done = False
        self.counters = {"sent": 0, "received": 0, "dropped": 0, "bad_request": 0}
        self._next_poll = 0.0
        self._last_send = -MIN_SEND_GAP_S
        # None: no offer, so the configured interval (spec default 30 s) holds.
        self.offered_heartbeat_s: float | None = None
        self._start_ns = time.time_ns() - int(1e9 * (time.monotonic() - daemon.stats.started))
        self._description: pb.AgentDescription | None = None
        self._effective: tuple[cfg.KilnConfig, pb.EffectiveConfig] | None = None
        self._health_key: tuple[Any, ...] = ()
        self._health_ns = 0
        self._seen_windows = (daemon.stats.windows_written, daemon.stats.window_errors)
        self._windows_failing = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self.daemon.status_extras["remote_control"] = self.status
        self.daemon.config_hooks.append(self.on_config_applied)
        self._thread = threading.Thread(target=self._run, name="kiln-opamp", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """agent_disconnect to the server, close, end the thread."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.on_config_applied in self.daemon.config_hooks:
            self.daemon.config_hooks.remove(self.on_config_applied)

    def on_config_applied(self, config: cfg.KilnConfig, error: Exception | None) -> None:
        """Daemon's hook, on its window thread: queue it, never block there."""
        self._events.put((config, error))
        self._wake.set()

    def remote_layer(self) -> dict[str, Any]:
        """For a config reload (SIGHUP): the remote layer to keep on top of the file."""
        return self.remote.layer()

    def _run(self) -> None:
        while not self.done:
            try:
                delay = self.step()
            except Exception:  # a bug here must not end remote control for good
                log.exception("OpAMP client step failed")
                delay = self._fail_safe()
            if delay > 0:
                self._wake.wait(delay)
            self._wake.clear()

    def _fail_safe(self) -> float:
        if self.conn.can(ConnEvent.FAILED):
            self._failed(TransportError("internal error (see the log)"))
        return 1.0

    # -- one turn ----------------------------------------------------------------

    def step(self) -> float:
        """Do what is due now; return seconds until something else may be."""
        while not self._events.empty():
            config, error = self._events.get_nowait()
            self.remote.applied(config, error)
        if self._stopping.is_set():
            self._shutdown()
            return 0.0
        now = self._clock()
        state = self.conn.state
        if state is Conn.DISCONNECTED:
            self.conn.fire(ConnEvent.START)
            return 0.0
        if state is Conn.BACKING_OFF:
            if now < self.retry_at:
                return self.retry_at - now
            self.conn.fire(ConnEvent.RETRY)
            return 0.0
        try:
            if state is Conn.CONNECTING:
                self.transport.open(self._wake.set)
                self.session.reconnected()
                self._send(now, poll=True)
                self.conn.fire(ConnEvent.OPENED)
                self._receive()
                self._report_remote_status(now)
            else:
                self._receive()
                self._report_remote_status(now)
                gap = self._last_send + MIN_SEND_GAP_S - now
                if gap > 0:
                    return gap
                due = now >= self._next_poll
                beat = due and self.heartbeats()
                if due and not beat:
                    # WebSocket with heartbeats off: still look at health this often.
                    self._next_poll = now + self.interval()
                if self._send(now, poll=beat):
                    self._receive()
        except (TransportError, MessageError) as e:
            self._failed(e)
            return 0.0
        return max(0.0, min(self._next_poll - self._clock(), self.interval()))

    def heartbeats(self) -> bool:
        """Whether a due poll goes out. HTTP polls whatever the server offered:
        it is the only way the server's messages get here. A heartbeat is a poll."""
        return self.transport.polls or self.offered_heartbeat_s != 0

    def interval(self) -> float:
        """Seconds between polls and heartbeats, counted from the last message sent."""
        offered = self.offered_heartbeat_s
        return offered if offered else self.poll_interval

    def _report_remote_status(self, now: float) -> None:
        # A new remote-config status goes out at once, whatever the send gap:
        # the server must see APPLYING before the daemon can make it APPLIED.
        for _ in range(4):  # bounded: each reply could carry yet another offer
            if not self.session.changed("remote_config_status", self.remote.status()):
                return
            if not self._send(now, poll=False):
                return
            self._receive()

    def _send(self, now: float, *, poll: bool) -> bool:
        parts = self._parts()
        msg = self.session.build(parts, poll=poll)
        if msg is None:
            return False
        try:
            data = encode_agent_to_server(msg, self.max_bytes)
        except MessageError as e:  # the spec: do not send it; the rest goes on
            log.error("OpAMP message not sent: %s", e)
            self.counters["dropped"] += 1
            return False
        self.transport.send(data)
        self.session.sent(msg)
        self.counters["sent"] += 1
        self._last_send = now
        self._next_poll = now + self.interval()
        return True

    def _receive(self) -> None:
        while (data := self.transport.receive()) is not None:
            msg = decode_server_to_agent(data, self.max_bytes)
            self.counters["received"] += 1
            self._handle(msg)

    def _handle(self, msg: pb.ServerToAgent) -> None:
        if msg.instance_uid and msg.instance_uid != self.session.instance_uid:
            log.warning("OpAMP message for another instance_uid ignored")
            self.counters["dropped"] += 1
            return
        if msg.HasField("error_response"):
            self._server_error(msg.error_response)
            return
        self.backoff.reset()  # a good answer: the next failure starts small again
        self.last_error = ""
        new_uid = msg.agent_identification.new_instance_uid
        if new_uid:
            if len(new_uid) == 16:
                self.session.instance_uid = bytes(new_uid)
                save_instance_uid(self._dir, self.session.instance_uid)
                self._description = None
                log.info("OpAMP server assigned instance_uid %s", uuid.UUID(bytes=new_uid))
            else:
                log.warning("ignored a new_instance_uid of %d bytes (must be 16)", len(new_uid))
        if msg.flags & pb.ServerToAgentFlags_ReportFullState:
            self.session.full_state = True
        if msg.HasField("connection_settings") and msg.connection_settings.HasField("opamp"):
            self._offer_heartbeat(msg.connection_settings.opamp.heartbeat_interval_seconds)
        if msg.HasField("remote_config"):
            self.remote.offer(msg.remote_config)
        if msg.HasField("command"):
            log.info("OpAMP command ignored (Kiln does not accept restart commands)")

    def _offer_heartbeat(self, seconds: int) -> None:
        """The spec: a ReportsHeartbeat agent uses the offered interval; 0 turns
        heartbeats off (HTTP still polls at opamp.poll_interval)."""
        low, high = HEARTBEAT_BOUNDS_S
        value = 0.0 if seconds == 0 else min(max(float(seconds), low), high)
        if value == self.offered_heartbeat_s:
            return  # servers repeat their offer; say things once
        if value != seconds:
            log.warning("OpAMP heartbeat interval of %d s offered; using %g s", seconds, value)
        self.offered_heartbeat_s = value
        self._next_poll = min(self._next_poll, self._last_send + self.interval())
        log.info(
            "OpAMP heartbeat interval set by the server",
            extra={"fields": {"seconds": value if value else "off"}},
        )

    def _server_error(self, err: pb.ServerErrorResponse) -> None:
        text = err.error_message or "no message"
        if err.type == pb.ServerErrorResponseType_Unavailable:
            retry = None
            if err.HasField("retry_info"):
                retry = err.retry_info.retry_after_nanoseconds / 1e9
            raise TransportError(f"server unavailable: {text}", retry_after=retry)
        if err.type == pb.ServerErrorResponseType_BadRequest:
            # The spec: do not retry that message. The next one is built anew.
            self.counters["bad_request"] += 1
            self.last_error = f"server refused a message as malformed: {text}"
        else:
            self.last_error = f"server error: {text}"
        log.warning("OpAMP server error: %s", self.last_error)

    def _failed(self, e: Exception) -> None:
        retry = e.retry_after if isinstance(e, TransportError) else None
        delay = self.backoff.next(retry)
        self.retry_at = self._clock() + delay
        first = self.conn.state is Conn.CONNECTED or str(e) != self.last_error
        self.last_error = str(e)
        self.transport.close()
        self.conn.fire(ConnEvent.FAILED)
        (log.warning if first else log.debug)(
            "OpAMP server unreachable; profiling goes on with the config in force",
            extra={"fields": {"error": str(e), "retry_in_s": round(delay, 2)}},
        )

    def _shutdown(self) -> None:
        was = self.conn.state
        self.conn.fire(ConnEvent.STOP)
        if was is Conn.CONNECTED:
            self.transport.timeout = min(self.transport.timeout, DISCONNECT_TIMEOUT_S)
            try:
                self.transport.send(
                    encode_agent_to_server(self.session.disconnect(), self.max_bytes)
                )
                self.session.sequence_num += 1
            except (TransportError, MessageError) as e:
                log.debug("agent_disconnect not delivered: %s", e)
        self.transport.close()
        if self.conn.state is Conn.STOPPING:
            self.conn.fire(ConnEvent.CLOSED)
        self.done = True

    def _conn_changed(self, old: Conn, event: ConnEvent, new: Conn) -> None:
        if new is Conn.CONNECTED:
            log.info("OpAMP connected", extra={"fields": {"endpoint": self.endpoint}})

    # -- what we report ----------------------------------------------------------

    def _parts(self) -> dict[str, Message | None]:
        if self._description is None:
            self._description = agent_description(self.session.instance_uid, self._version)
        return {
            "agent_description": self._description,
            "health": self._health(),
            "effective_config": self._effective_config(),
            "remote_config_status": self.remote.status(),
        }

    def _effective_config(self) -> pb.EffectiveConfig:
        config = self.daemon.config
        if self._effective is None or self._effective[0] is not config:
            body = pb.AgentConfigFile(body=config.to_yaml().encode(), content_type="text/yaml")
            eff = pb.EffectiveConfig(config_map=pb.AgentConfigMap(config_map={CONFIG_FILE: body}))
            self._effective = (config, eff)
        return self._effective[1]

    def _health(self) -> pb.ComponentHealth:
        stats = self.daemon.stats
        seen = (stats.windows_written, stats.window_errors)
        if seen != self._seen_windows:
            # Failing means windows errored and none was written since the last look.
            self._windows_failing = (
                seen[1] > self._seen_windows[1] and seen[0] == self._seen_windows[0]
            )
            self._seen_windows = seen
        sampling = (
            not self._windows_failing,
            "windows failing" if self._windows_failing else "profiling",
            f"{stats.window_errors} windows failed" if self._windows_failing else "",
        )
        remote_ok = self.remote.state is not Remote.FAILED
        remote = (remote_ok, self.remote.state.value, "" if remote_ok else self.remote.error)
        key = (sampling, remote)
        if key != self._health_key:
            self._health_key = key
            self._health_ns = time.time_ns()
        healthy = sampling[0] and remote[0]
        last_error = sampling[2] or remote[2]
        return pb.ComponentHealth(
            healthy=healthy,
            start_time_unix_nano=self._start_ns,
            status="running" if healthy else "degraded",
            last_error=last_error,
            status_time_unix_nano=self._health_ns,
            component_health_map={
                name: pb.ComponentHealth(
                    healthy=ok,
                    status=status,
                    last_error=error,
                    start_time_unix_nano=self._start_ns,
                    status_time_unix_nano=self._health_ns,
                )
                for name, (ok, status, error) in (("sampling", sampling), ("remote_config", remote))
            },
        )

    def status(self) -> dict[str, str]:
        """The agent page's "Remote control" card (any thread may call it)."""
        state = self.conn.state
        error = self.remote.error if self.remote.state is Remote.FAILED else ""
        if not error and state is not Conn.CONNECTED:
            error = self.last_error
        return {
            "state": state.value,
            "endpoint": _without_userinfo(self.endpoint),
            "last_config_hash": self.remote.config_hash.hex(),
            "last_config_status": self.remote.state.value,
            "error": error,
            "instance_uid": str(uuid.UUID(bytes=self.session.instance_uid)),
            "heartbeat": f"{self.interval():g}s" if self.heartbeats() else "off",
        }


def _without_userinfo(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
