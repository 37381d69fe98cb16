"""An OpAMP server for the tests, written from the spec (opamp-spec,
specification.md), on both transports, on 127.0.0.1.

What it does as the spec says a server does:
- answers every AgentToServer with a ServerToAgent carrying the agent's
  instance_uid; the first answer on a connection sets `capabilities`;
- keeps each agent's status from the sub-messages it receives and, when a
  sequence_num is not exactly one more than the last one (or it knows
  nothing of the agent), sets the ReportFullState flag;
- offers its remote config (AgentRemoteConfig with config_hash) whenever the
  agent's reported last_remote_config_hash differs; over WebSocket it also
  pushes a new offer at once;
- HTTP: POST with `Content-Type: application/x-protobuf` (gzip bodies
  accepted), 413 above its own size limit; WebSocket: binary messages with
  a varint header that must be 0.

Tests steer it: `offer(yaml)`, `request_full_state()`, `fail_next(...)`
(ServerErrorResponse UNAVAILABLE with retry_info, or HTTP 503/429 with
Retry-After), `reply_raw(...)` (arbitrary bytes), `require_header`, and
`stop()`/`start()` on the same port for an outage.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection
from websockets.sync.server import serve as ws_serve

from profiler.opamp.wire import pb
from tests.conftest import free_port

SERVER_CAPABILITIES = (
    pb.ServerCapabilities_AcceptsStatus
    | pb.ServerCapabilities_OffersRemoteConfig
    | pb.ServerCapabilities_AcceptsEffectiveConfig
)
MAX_REQUEST = 1 << 20


@dataclass
class Agent:
    """What the server knows of one agent, from what it reported."""

    last_seq: int | None = None
    description: Any = None
    capabilities: int = 0
    health: Any = None
    effective_config: Any = None
    remote_config_status: Any = None
    disconnected: bool = False


@dataclass
class Received:
    msg: Any  # pb.AgentToServer
    at: float
    transport: str
    headers: dict[str, str] = field(default_factory=dict)
    asked_full_state: bool = False  # our reply set ReportFullState


class OpampTestServer:
    def __init__(
        self, transport: str = "http", port: int | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        assert transport in ("http", "ws")
        self.transport = transport
        self.tls = tls
        self.port = port or free_port()
        self.lock = threading.Condition()
        self.received: list[Received] = []
        self.agents: dict[bytes, Agent] = {}
        self.remote: Any = None  # pb.AgentRemoteConfig offered
        self.connection: Any = None  # pb.ConnectionSettingsOffers sent with every reply
        self.offered_at: float | None = None
        self.offer_sent_at: float | None = None  # first reply carrying the current offer
        self._full_state_once = False
        self._errors: collections.deque[Any] = collections.deque()  # ServerErrorResponse
        self._http_fail: collections.deque[tuple[int, dict[str, str]]] = collections.deque()
        self._raw: collections.deque[bytes] = collections.deque()
        self.required_headers: dict[str, str] = {}
        self.refused: list[str] = []
        self.attempts: list[float] = []  # every request / upgrade, answered or not
        self.push_version = 0
        self._http: http.server.ThreadingHTTPServer | None = None
        self._open: set[socket.socket] = set()  # keep-alive connections, cut by stop()
        self._ws: Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.transport == "http" else "ws"
        scheme += "s" if self.tls else ""
        return f"{scheme}://127.0.0.1:{self.port}/v1/opamp"

    # -- steering ------------------------------------------------------------------

    def offer(self, body: str | bytes, content_type: str = "text/yaml", name: str = "kiln.yaml",
              config_hash: bytes | None = None) -> bytes:  # fmt: skip
        raw = body.encode() if isinstance(body, str) else body
        files = {name: pb.AgentConfigFile(body=raw, content_type=content_type)}
        rc = pb.AgentRemoteConfig(config=pb.AgentConfigMap(config_map=files))
        rc.config_hash = hashlib.sha256(rc.config.SerializeToString(deterministic=True)).digest()
        if config_hash is not None:
            rc.config_hash = config_hash
        with self.lock:
            self.remote = rc
            self.offered_at = time.monotonic()
            self.offer_sent_at = None
            self.push_version += 1
            self.lock.notify_all()
        return bytes(rc.config_hash)

    def offer_heartbeat(self, seconds: int) -> None:
        """Offer OpAMPConnectionSettings.heartbeat_interval_seconds (0: heartbeats off)."""
        offer = pb.ConnectionSettingsOffers(
            hash=hashlib.sha256(str(seconds).encode()).digest(),
            opamp=pb.OpAMPConnectionSettings(heartbeat_interval_seconds=seconds),
        )
        with self.lock:
            self.connection = offer
            self.push_version += 1
            self.lock.notify_all()

    def request_full_state(self) -> None:
        with self.lock:
            self._full_state_once = True
            self.push_version += 1

    def fail_next(self, error: Any = None, *, http_status: int = 0, retry_after: str = "") -> None:
        with self.lock:
            if error is not None:
                self._errors.append(error)
            if http_status:
                headers = {"Retry-After": retry_after} if retry_after else {}
                self._http_fail.append((http_status, headers))

    def reply_raw(self, data: bytes) -> None:
        with self.lock:
            self._raw.append(data)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                result = check()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}")
                self.lock.wait(min(left, 0.05))

    def messages(self) -> list[Any]:
        with self.lock:
            return [r.msg for r in self.received]

    def statuses(self) -> list[tuple[bytes, int, str]]:
        """(hash, status, error_message) of every remote_config_status received."""
        with self.lock:
            return [
                (
                    bytes(r.msg.remote_config_status.last_remote_config_hash),
                    r.msg.remote_config_status.status,
                    r.msg.remote_config_status.error_message,
                )
                for r in self.received
                if r.msg.HasField("remote_config_status")
            ]

    # -- the protocol --------------------------------------------------------------

    def handle(self, msg: Any, headers: dict[str, str], first: bool) -> Any:
        """ServerToAgent for one AgentToServer (spec, "Status Reporting")."""
        with self.lock:
            rec = Received(msg, time.monotonic(), self.transport, headers)
            self.received.append(rec)
            uid = bytes(msg.instance_uid)
            agent = self.agents.get(uid)
            full = False
            if agent is None:
                agent = self.agents[uid] = Agent()
                full = not msg.HasField("agent_description")
            elif agent.last_seq is not None and msg.sequence_num != agent.last_seq + 1:
                full = True  # "Agent Status Compression": a gap means lost status
            agent.last_seq = msg.sequence_num
            agent.capabilities = msg.capabilities
            for part in ("health", "effective_config", "remote_config_status"):
                if msg.HasField(part):
                    setattr(agent, part, getattr(msg, part))
            if msg.HasField("agent_description"):
                agent.description = msg.agent_description
            agent.disconnected = msg.HasField("agent_disconnect")
            reply = pb.ServerToAgent(instance_uid=msg.instance_uid)
            if first:
                reply.capabilities = SERVER_CAPABILITIES
            if self._errors:
                reply.error_response.CopyFrom(self._errors.popleft())
                self.lock.notify_all()
                return reply
            if full or self._full_state_once:
                self._full_state_once = False
                reply.flags |= pb.ServerToAgentFlags_ReportFullState
                rec.asked_full_state = True
            self._maybe_offer(agent, reply)
            self.lock.notify_all()
            return reply

    def _maybe_offer(self, agent: Agent, reply: Any) -> None:
        if self.connection is not None and not agent.disconnected:
            reply.connection_settings.CopyFrom(self.connection)
        if self.remote is None or agent.disconnected:
            return
        status = agent.remote_config_status
        known = bytes(status.last_remote_config_hash) if status is not None else None
        if known != bytes(self.remote.config_hash):
            reply.remote_config.CopyFrom(self.remote)
            if self.offer_sent_at is None:
                self.offer_sent_at = time.monotonic()

    def _check_headers(self, headers: dict[str, str]) -> bool:
        for k, v in self.required_headers.items():
            if headers.get(k.lower()) != v:
                self.refused.append(k)
                return False
        return True

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> OpampTestServer:
        if self.transport == "http":
            self._start_http()
        else:
            self._start_ws()
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
            with self.lock:
                conns, self._open = list(self._open), set()
            for conn in conns:  # a stopped server also ends its keep-alive connections
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._ws is not None:
            self._ws.shutdown()
            self._ws = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _start_http(self) -> None:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with server.lock:
                    server._open.add(self.connection)

            def finish(self) -> None:
                with server.lock:
                    server._open.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server.lock:
                    server.attempts.append(time.monotonic())
                length = int(headers.get("content-length", "0"))
                if length > MAX_REQUEST:
                    self._reply(413, b"")
                    return
                body = self.rfile.read(length)
                if headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if headers.get("content-type") != "application/x-protobuf":
                    self._reply(415, b"")
                    return
                if not server._check_headers(headers):
                    self._reply(401, b"")
                    return
                with server.lock:
                    fail = server._http_fail.popleft() if server._http_fail else None
                    raw = server._raw.popleft() if server._raw else None
                if fail is not None:
                    self._reply(fail[0], b"", fail[1])
                    return
                msg = pb.AgentToServer()
                msg.ParseFromString(body)
                reply = server.handle(msg, headers, first=True)
                self._reply(200, raw if raw is not None else reply.SerializeToString())

            def _reply(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._http.daemon_threads = True
        if self.tls is not None:
            self._http.socket = self.tls.wrap_socket(self._http.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.02,), name="opamp-test-http"
        )
        self._thread.start()

    def _start_ws(self) -> None:
        server = self

        def process_request(conn: ServerConnection, request: Any) -> Any:
            headers = {k.lower(): v for k, v in request.headers.raw_items()}
            with server.lock:
                server.attempts.append(time.monotonic())
                fail = server._http_fail.popleft() if server._http_fail else None
            if fail is not None:
                resp = conn.respond(fail[0], "unavailable\n")
                for k, v in fail[1].items():
                    resp.headers[k] = v
                return resp
            if not server._check_headers(headers):
                return conn.respond(401, "unauthorized\n")
            return None

        def handler(conn: ServerConnection) -> None:
            headers = {k.lower(): v for k, v in conn.request.headers.raw_items()}  # type: ignore[union-attr]
            first = True
            seen_push = server.push_version
            uid = b""
            try:
                while True:
                    try:
                        data = conn.recv(timeout=0.05)
                    except TimeoutError:
                        with server.lock:
                            pushed = server.push_version != seen_push
                            seen_push = server.push_version
                            agent = server.agents.get(uid)
                            if pushed and agent is not None:
                                push = pb.ServerToAgent(instance_uid=uid)
                                if server._full_state_once:
                                    server._full_state_once = False
                                    push.flags |= pb.ServerToAgentFlags_ReportFullState
                                server._maybe_offer(agent, push)
                            else:
                                push = None
                        if push is not None and push.ByteSize() > len(uid) + 2:
                            conn.send(b"\x00" + push.SerializeToString())
                        continue
                    assert isinstance(data, bytes), "OpAMP uses binary WebSocket messages"
                    assert data[0] == 0, "the header must be 0"
                    msg = pb.AgentToServer()
                    msg.ParseFromString(data[1:])
                    uid = bytes(msg.instance_uid)
                    reply = server.handle(msg, headers, first)
                    first = False
                    with server.lock:
                        raw = server._raw.popleft() if server._raw else None
                    conn.send(raw if raw is not None else b"\x00" + reply.SerializeToString())
                    if reply.HasField("error_response"):
                        conn.close()  # UNAVAILABLE: the client reconnects later
                        return
            except ConnectionClosed:
                return

        self._ws = ws_serve(
            handler,
            "127.0.0.1",
            self.port,
            process_request=process_request,
            max_size=MAX_REQUEST,
            ssl=self.tls,
        )
        self._thread = threading.Thread(target=self._ws.serve_forever, name="opamp-test-ws")
        self._thread.start()
