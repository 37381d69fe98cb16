"""The two OpAMP transports behind one small interface.

`HttpTransport` (http://, https://): each `send` is one POST of an
AgentToServer (`Content-Type: application/x-protobuf`, `OpAMP-Instance-UID`
header) whose response body, a ServerToAgent, `receive` then returns; the
client polls when it has nothing to say. 429/503 carry `Retry-After`.

`WebSocketTransport` (ws://, wss://): one connection made by the
`websockets` library; every message is the spec's header 0 plus protobuf. A
reader thread queues what arrives and wakes the client, so `receive` never
blocks. The library enforces the size cap (closing with 1009, as the spec
asks) and answers pings.

Both: TLS with the system CAs or `ca_file`, the configured headers (e.g.
`Authorization: Bearer ...`), incoming messages capped at `max_bytes`.
Every failure is a `TransportError`, with the server's retry delay if it
gave one.
"""

from __future__ import annotations

import collections
import email.utils
import http.client
import logging
import ssl
import threading
import time
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Mapping
from typing import Protocol

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from profiler.opamp.wire import MessageError, ws_frame, ws_payload

log = logging.getLogger("kiln.opamp")

DEFAULT_PATH = "/v1/opamp"
MAX_RETRY_AFTER_S = 3600.0  # a server cannot silence the agent for longer than this


class TransportError(Exception):
    """Sending or receiving failed; `retry_after` is the server's wish, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Transport(Protocol):
    polls: bool  # True: the client must poll (HTTP); False: the server pushes
    timeout: float

    def open(self, wake: Callable[[], None]) -> None: ...

    def send(self, data: bytes) -> None: ...

    def receive(self) -> bytes | None: ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from an HTTP Retry-After (delay-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - now()), MAX_RETRY_AFTER_S)


def tls_context(ca_file: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file or None)


def check_endpoint(endpoint: str) -> None:
    """ValueError unless http(s):// or ws(s):// with a host (checked before start)."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme.lower() not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(
            f"OpAMP endpoint {endpoint!r}: use http(s)://HOST[:PORT]/PATH or ws(s)://..."
        )


def make_transport(
    endpoint: str,
    *,
    headers: Mapping[str, str],
    ca_file: str,
    max_bytes: int,
    instance_uid: Callable[[], bytes],
    user_agent: str,
) -> Transport:
    check_endpoint(endpoint)
    scheme = urllib.parse.urlsplit(endpoint).scheme.lower()
    if scheme in ("ws", "wss"):
        return WebSocketTransport(
            endpoint, headers=headers, ca_file=ca_file, max_bytes=max_bytes, user_agent=user_agent
        )
    return HttpTransport(
        endpoint,
        headers=headers,
        ca_file=ca_file,
        max_bytes=max_bytes,
        instance_uid=instance_uid,
        user_agent=user_agent,
    )


class HttpTransport:
    polls = True

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        ca_file: str,
        max_bytes: int,
        instance_uid: Callable[[], bytes],
        user_agent: str,
        timeout: float = 15.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port
        self._path = (parts.path or DEFAULT_PATH) + (f"?{parts.query}" if parts.query else "")
        self._url = url
        self._headers = dict(headers)
        self._ca_file = ca_file
        self._max = max_bytes
        self._uid = instance_uid
        self._user_agent = user_agent
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._inbox: collections.deque[bytes] = collections.deque()

    def open(self, wake: Callable[[], None]) -> None:
        self._inbox.clear()  # the connection itself is made by the first send

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.timeout, context=tls_context(self._ca_file)
                )
            else:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
        self._conn.timeout = self.timeout
        return self._conn

    def send(self, data: bytes) -> None:
        headers = {
            "User-Agent": self._user_agent,
            **self._headers,
            "Content-Type": "application/x-protobuf",
            "OpAMP-Instance-UID": str(uuid.UUID(bytes=self._uid())),
        }
        try:
            conn = self._connection()
            conn.request("POST", self._path, body=data, headers=headers)
            resp = conn.getresponse()
            body = resp.read(self._max + 1)
        except (OSError, http.client.HTTPException) as e:
            self.close()
            raise TransportError(f"POST {self._url}: {e or type(e).__name__}") from None
        if len(body) > self._max or resp.getheader("Connection", "").lower() == "close":
            self.close()  # unread bytes may remain; never reuse that connection
        if len(body) > self._max:
            raise TransportError(
                f"response from {self._url} is over the {self._max}-byte cap; discarded"
            )
        if resp.status != 200:
            retry = (
                parse_retry_after(resp.getheader("Retry-After"))
                if resp.status in (429, 503)
                else None
            )
            raise TransportError(
                f"{self._url}: HTTP {resp.status} {resp.reason}", retry_after=retry
            )
        if resp.getheader("Content-Encoding", "").lower() == "gzip":
            body = self._gunzip(body)
        self._inbox.append(body)

    def _gunzip(self, body: bytes) -> bytes:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out = d.decompress(body, self._max + 1)
        except zlib.error as e:
            raise TransportError(f"{self._url}: bad gzip body ({e})") from None
        if len(out) > self._max:
            raise TransportError(f"{self._url}: gzip body over the {self._max}-byte cap")
        return out

    def receive(self) -> bytes | None:
        return self._inbox.popleft() if self._inbox else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WebSocketTransport:
    polls = False

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        ca_file: str,
        max_bytes: int,
        user_agent: str,
        timeout: float = 15.0,
    ) -> None:
        self._url = url
        self._headers = dict(headers)
        self._tls = urllib.parse.urlsplit(url).scheme.lower() == "wss"
        self._ca_file = ca_file
        self._max = max_bytes
        self._user_agent = user_agent
        self.timeout = timeout
        self._ws: ClientConnection | None = None
        self._reader: threading.Thread | None = None
        self._inbox: collections.deque[bytes | str | TransportError] = collections.deque()

    def open(self, wake: Callable[[], None]) -> None:
        self.close()
        self._inbox.clear()
        try:
            ws = ws_connect(
                self._url,
                additional_headers=self._headers,
                user_agent_header=self._user_agent,
                ssl=tls_context(self._ca_file) if self._tls else None,
                proxy=None,
                open_timeout=self.timeout,
                close_timeout=2.0,
                max_size=self._max + 10,  # + the largest header
                legacy=True,  # the connection itself; close() below ends it
            )
        except InvalidStatus as e:
            status = e.response.status_code
            retry = (
                parse_retry_after(e.response.headers.get("Retry-After"))
                if status in (429, 503)
                else None
            )
            raise TransportError(
                f"{self._url}: HTTP {status} on upgrade", retry_after=retry
            ) from None
        except (OSError, TimeoutError, WebSocketException) as e:
            raise TransportError(f"{self._url}: {e or type(e).__name__}") from None
        self._ws = ws
        self._reader = threading.Thread(
            target=self._read, args=(ws, wake), name="kiln-opamp-ws", daemon=True
        )
        self._reader.start()

    def _read(self, ws: ClientConnection, wake: Callable[[], None]) -> None:
        while True:
            try:
                message = ws.recv()
            except ConnectionClosed as e:
                code = e.rcvd.code if e.rcvd else (e.sent.code if e.sent else None)
                why = " (message over the size cap)" if code == 1009 else ""
                self._inbox.append(TransportError(f"{self._url}: connection closed{why}: {e}"))
                wake()
                return
            except Exception as e:  # anything else ends this connection, not the agent
                self._inbox.append(TransportError(f"{self._url}: {e}"))
                wake()
                return
            self._inbox.append(message)
            wake()

    def send(self, data: bytes) -> None:
        if self._ws is None:
            raise TransportError(f"{self._url}: not connected")
        try:
            self._ws.send(ws_frame(data))
        except (ConnectionClosed, OSError, TimeoutError) as e:
            raise TransportError(f"{self._url}: send failed: {e}") from None

    def receive(self) -> bytes | None:
        if not self._inbox:
            return None
        item = self._inbox.popleft()
        if isinstance(item, TransportError):
            raise item
        if isinstance(item, str):
            raise MessageError("a text WebSocket message (OpAMP uses binary ones)")
        return ws_payload(item)

    def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()
        reader, self._reader = self._reader, None
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)
