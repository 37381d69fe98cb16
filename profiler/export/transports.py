"""How Kiln reaches each backend: `make_transport`, and what the transports share.

Why each backend gets an exporter of its own, although Pyroscope and Parca
both accept OTLP Profiles too:

* **OTLP** (`otlp_grpc`, `otlp_http`; `profiler.export.otlp`) is for
  OpenTelemetry collectors and whatever sits behind one. It keeps the most:
  typed attributes, one resource per process, frame kinds, mappings.
* **Pyroscope** (`profiler.export.pyroscope`) through its own push API.
  OTLP Profiles is still a development signal whose schema changes between
  releases, and a mismatch silently misreads fields; the push API and pprof
  are stable. Pyroscope's limits (a `service_name` label, at most 30 labels
  a series, 4 MiB and 16,000 samples a profile) are known, so the exporter
  shapes its requests to fit them instead of having a whole window refused.
* **Parca** (`profiler.export.parca`) through gRPC `WriteRaw`. Parca's OTLP
  ingest turns only string attributes into labels, so the integer
  `process.pid` and `thread.id` would be lost; with pprof, Kiln gives it a
  `__name__`, Prometheus-valid label names, string pid/tid labels, and
  `samples/count` + `cpu/nanoseconds` with a duration, which Parca files as
  a delta CPU profile.

Every transport takes the same settings (`Settings`): endpoint, extra
headers, a bearer token, TLS with a CA file or plaintext, gzip, a timeout;
and maps failures the same way (`http_result`, `grpc_result`): connection
errors, HTTP 429/502/503/504 and gRPC UNAVAILABLE, RESOURCE_EXHAUSTED,
DEADLINE_EXCEEDED, ABORTED (and the other codes the OTLP spec calls
retryable: CANCELLED, OUT_OF_RANGE, DATA_LOSS) are worth retrying, with the
server's hint from `Retry-After` or a `google.rpc.RetryInfo` detail; any
other failure is final.
"""

from __future__ import annotations

import contextlib
import email.utils
import gzip as gzip_module
import hashlib
import http.client
import logging
import math
import re
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from profiler.errors import KilnError
from profiler.export.api import SendResult, TwoPhaseTransport
from profiler.export.proto import rpc_status_pb2
from profiler.export.rules import rebuild
from symbolizer import otlp
from symbolizer.profile import Labels, Profile

log = logging.getLogger("kiln.export")

KINDS: Final = ("otlp_grpc", "otlp_http", "pyroscope", "parca")
USER_AGENT: Final = "kiln/0.1.0"
RETRY_INFO_TYPE: Final = "type.googleapis.com/google.rpc.RetryInfo"
RETRYABLE_HTTP: Final = frozenset({429, 502, 503, 504})
RETRYABLE_GRPC: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    }
)
MAX_RESPONSE_BYTES: Final = 1 << 20  # more than any status or partial-success body


class EndpointError(KilnError, ValueError):
    """An exporter's endpoint or TLS settings cannot work."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What every transport is configured with."""

    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token: str = ""
    ca_file: str = ""  # PEM bundle to verify the server with; system CAs when empty
    insecure: bool = False  # plaintext for a scheme-less gRPC endpoint
    gzip: bool = True
    timeout_s: float = 10.0  # cap on one attempt
    service_name: str = ""  # when the batch's resource has none

    def auth_headers(self) -> dict[str, str]:
        """Custom headers, then the bearer token (which wins over a custom Authorization)."""
        out = {k: v for k, v in self.headers.items()}
        if self.bearer_token:
            for k in [k for k in out if k.lower() == "authorization"]:
                del out[k]
            out["Authorization"] = f"Bearer {self.bearer_token}"
        return out

    def attempt_timeout(self, timeout_s: float) -> float:
        """The delivery's budget for one attempt, capped by the configured timeout."""
        if timeout_s <= 0:
            return self.timeout_s
        return min(timeout_s, self.timeout_s) if self.timeout_s > 0 else timeout_s


def make_transport(
    kind: str,
    *,
    endpoint: str,
    headers: Mapping[str, str] | None = None,
    bearer_token: str = "",
    ca_file: str = "",
    insecure: bool = False,
    gzip: bool = True,
    timeout_s: float = 10.0,
    service_name: str = "",
) -> TwoPhaseTransport[Any]:
    """The transport for `kind` (one of KINDS); raises EndpointError for bad settings."""
    settings = Settings(
        endpoint=endpoint,
        headers=dict(headers or {}),
        bearer_token=bearer_token,
        ca_file=ca_file,
        insecure=insecure,
        gzip=gzip,
        timeout_s=timeout_s,
        service_name=service_name,
    )
    # Imported here: those modules import this one for the shared plumbing.
    if kind == "otlp_grpc":
        from profiler.export.otlp import OtlpGrpcTransport

        return OtlpGrpcTransport(settings)
    if kind == "otlp_http":
        from profiler.export.otlp import OtlpHttpTransport

        return OtlpHttpTransport(settings)
    if kind == "pyroscope":
        from profiler.export.pyroscope import PyroscopeTransport

        return PyroscopeTransport(settings)
    if kind == "parca":
        from profiler.export.parca import ParcaTransport

        return ParcaTransport(settings)
    raise EndpointError(f"unknown exporter kind {kind!r}", f"use one of: {', '.join(KINDS)}")


def resource_of(batch_resource: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """The batch's resource, with the configured service name when it names none."""
    out = dict(batch_resource)
    if settings.service_name and not out.get("service.name"):
        out["service.name"] = settings.service_name
    return out


# -- endpoints ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpTarget:
    tls: bool
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{self.path}"


def http_target(endpoint: str, signal_path: str, settings: Settings, *, what: str) -> HttpTarget:
    """Where to POST: `endpoint` is a base URL; `signal_path` is appended unless
    the URL already ends with it."""
    url = endpoint.strip()
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if url and scheme not in ("http", "https"):
        raise EndpointError(
            f"{what} endpoint {url!r} must start with http:// or https://",
            "e.g. https://collector.example:4318 (TLS) or http://127.0.0.1:4318 (plaintext)",
        )
    parts = _split_url(url, what, example=f"http://localhost:4040 or https://host{signal_path}")
    tls = parts.scheme == "https"
    _check_tls(url, tls, settings, what)
    base = parts.path.rstrip("/")
    path = base if base.endswith(signal_path) else base + signal_path
    if parts.query or parts.fragment:
        raise EndpointError(f"{what} endpoint {url!r} has a query or fragment", "remove it")
    return HttpTarget(tls, parts.hostname or "", _port(parts, url, 443 if tls else 80), path)


def grpc_target(
    endpoint: str, default_port: int, settings: Settings, *, what: str
) -> tuple[str, bool]:
    """(host:port for grpc, whether to use TLS) for a gRPC endpoint.

    `https://host:port` is TLS, `http://host:port` plaintext; a bare
    `host:port` is TLS unless `insecure` is set.
    """
    raw = endpoint.strip()
    has_scheme = "://" in raw
    # A scheme lets urlsplit find host and port; messages show what was given.
    url = raw if has_scheme or not raw else f"grpc://{raw}"
    parts = _split_url(url, what, example="collector:4317", shown=raw)
    if has_scheme and parts.scheme not in ("http", "https"):
        raise EndpointError(
            f"{what} endpoint {raw!r} has scheme {parts.scheme!r}",
            "give host:port, or https://host:port (TLS) or http://host:port (plaintext)",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise EndpointError(
            f"{what} endpoint {raw!r} has a path; gRPC endpoints are host:port",
            "remove everything after the port",
        )
    tls = parts.scheme == "https" or (not has_scheme and not settings.insecure)
    _check_tls(raw, tls, settings, what)
    host = parts.hostname or ""
    port = _port(parts, raw, default_port)
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), tls


def _split_url(
    url: str, what: str, *, example: str, shown: str | None = None
) -> urllib.parse.SplitResult:
    shown = url if shown is None else shown
    if not url:
        raise EndpointError(f"{what} endpoint is empty", f"set it, e.g. {example}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises for a bad one
    except ValueError as e:
        raise EndpointError(
            f"{what} endpoint {shown!r} is not a URL: {e}", f"e.g. {example}"
        ) from e
    if not parts.hostname:
        raise EndpointError(f"{what} endpoint {shown!r} names no host", f"e.g. {example}")
    if parts.username or parts.password:
        raise EndpointError(
            f"{what} endpoint {shown!r} carries credentials",
            "remove them from the URL and set bearer_token or headers instead",
        )
    return parts


def _port(parts: urllib.parse.SplitResult, url: str, default: int) -> int:
    port = parts.port
    if port == 0:
        raise EndpointError(f"endpoint {url!r} has port 0", "give the port the server listens on")
    return port if port is not None else default


def _check_tls(url: str, tls: bool, settings: Settings, what: str) -> None:
    if tls and settings.insecure and "://" in url:
        raise EndpointError(
            f"{what} endpoint {url!r} is https but insecure (plaintext) is set",
            "use http:// for plaintext, or unset insecure for TLS",
        )
    if not tls and settings.ca_file:
        raise EndpointError(
            f"{what} endpoint {url!r} is plaintext but a CA file is set",
            "use https:// (or unset insecure) for TLS, or remove ca_file",
        )
    if tls and settings.ca_file:
        # Loading it now turns a missing or non-PEM file into a config error,
        # not a failure at every attempt.
        try:
            ssl_context(settings)
        except (OSError, ssl.SSLError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise EndpointError(
                f"{what} CA file {settings.ca_file!r} cannot be used: {reason}",
                "point ca_file at a PEM file with the certificate(s) that signed the server's",
            ) from e


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the server against `ca_file`, or the system's CAs without one."""
    return ssl.create_default_context(cafile=settings.ca_file or None)


# -- HTTP --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class HttpPoster:
    """POSTs one body per attempt to a fixed URL; one connection per attempt.

    Exports happen once per window, so a fresh connection costs little and
    never leaves a half-dead keep-alive socket to trip over after an outage.
    """

    def __init__(self, target: HttpTarget, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self._ssl = ssl_context(settings) if target.tls else None
        self._headers = {"User-Agent": USER_AGENT, **settings.auth_headers()}
        if settings.bearer_token and not target.tls:
            log.warning("%s: sending a bearer token over plaintext HTTP", target.url)

    def post(self, body: bytes, headers: Mapping[str, str], timeout_s: float) -> HttpResponse:
        """The server's response; raises OSError or http.client.HTTPException
        when there is none (refused, reset, timed out, TLS failure)."""
        t = self.target
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(t.host, t.port, timeout=timeout_s, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(t.host, t.port, timeout=timeout_s)
        try:
            all_headers = {**self._headers, **headers, "Content-Length": str(len(body))}
            conn.request("POST", t.path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_BYTES)
            hdrs = {k.lower(): v for k, v in resp.getheaders()}
            if hdrs.get("content-encoding", "").lower() == "gzip":
                with contextlib.suppress(OSError, EOFError):
                    data = gzip_module.decompress(data)
            return HttpResponse(resp.status, hdrs, data)
        finally:
            conn.close()


def connection_failed(where: str, error: BaseException) -> SendResult:
    """A transport-level failure: always worth retrying."""
    text = str(error) or type(error).__name__
    if isinstance(error, ssl.SSLCertVerificationError):
        text += " (check ca_file names the CA that signed the server's certificate)"
    return SendResult(ok=False, retryable=True, error=f"{where}: {text}")


def http_result(
    response: HttpResponse, where: str, *, detail: Callable[[HttpResponse], str] | None = None
) -> SendResult:
    """A non-2xx response as a SendResult (2xx is the caller's to read)."""
    status = response.status
    text = detail(response) if detail is not None else _short(response.body)
    error = f"{where}: HTTP {status}" + (f": {text}" if text else "")
    if status in RETRYABLE_HTTP:
        hint = retry_after_s(response.headers.get("retry-after"))
        if hint is None and not _is_text(response):
            hint = retry_info_s(response.body)
        return SendResult(ok=False, retryable=True, retry_after_s=hint, error=error)
    return SendResult(ok=False, retryable=False, error=error)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def retry_info_s(status_bytes: bytes) -> float | None:
    """The retry delay of a google.rpc.Status carrying a RetryInfo detail, if any."""
    if not status_bytes:
        return None
    try:
        status = rpc_status_pb2.Status.FromString(status_bytes)
    except DecodeError:
        return None
    for detail in status.details:
        if detail.type_url == RETRY_INFO_TYPE:
            try:
                info = rpc_status_pb2.RetryInfo.FromString(detail.value)
            except DecodeError:
                continue
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(0.0, delay) if math.isfinite(delay) else None
    return None


def status_message(response: HttpResponse) -> str:
    """The message of a google.rpc.Status body (OTLP/HTTP errors), or the body as text."""
    if _is_text(response):
        return _short(response.body)
    try:
        status = rpc_status_pb2.Status.FromString(response.body)
    except DecodeError:
        return _short(response.body)
    return status.message or _short(response.body)


def _is_text(response: HttpResponse) -> bool:
    # Proxies and load balancers answer errors in text or JSON; only other
    # bodies may be a serialized google.rpc.Status.
    ctype = response.headers.get("content-type", "")
    return ctype.startswith("text/") or "json" in ctype


def _short(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return "".join(c if c.isprintable() else " " for c in text)


# -- gRPC --------------------------------------------------------------------


def grpc_channel(target: str, tls: bool, settings: Settings) -> grpc.Channel:
    if not tls:
        return grpc.insecure_channel(target)
    roots = None
    if settings.ca_file:
        with open(settings.ca_file, "rb") as f:
            roots = f.read()
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))


def grpc_metadata(settings: Settings) -> tuple[tuple[str, str], ...]:
    # gRPC metadata keys are lower-case; the token goes in as metadata so it
    # also reaches plaintext test servers (call credentials refuse those).
    return tuple((k.lower(), v) for k, v in settings.auth_headers().items())


def grpc_result(error: grpc.RpcError, where: str) -> SendResult:
    """A failed call as a SendResult, with RetryInfo from `grpc-status-details-bin`."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = ""
    with contextlib.suppress(Exception):
        details = error.details() or ""
    text = f"{where}: gRPC {code.name}" + (f": {details}" if details else "")
    if code in RETRYABLE_GRPC:
        return SendResult(
            ok=False, retryable=True, retry_after_s=_grpc_retry_after(error), error=text
        )
    return SendResult(ok=False, retryable=False, error=text)


def _grpc_retry_after(error: grpc.RpcError) -> float | None:
    trailers: Sequence[Any] = ()
    with contextlib.suppress(Exception):
        trailers = error.trailing_metadata() or ()
    for item in trailers:
        key, value = (item.key, item.value) if hasattr(item, "key") else (item[0], item[1])
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            return retry_info_s(value)
    return None


# -- pprof for the backends that take it ---------------------------------------


PROMETHEUS_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def prometheus_name(name: str) -> str:
    """A Prometheus-valid (legacy) label name: invalid characters become `_`."""
    if PROMETHEUS_NAME.fullmatch(name):
        return name
    out = re.sub(r"[^a-zA-Z0-9_]", "_", name)
    return out if out and not out[0].isdigit() else "_" + out


@dataclass
class Chunked:
    """A window's pprof profiles, each within the backend's limits."""

    profiles: list[bytes] = field(default_factory=list)
    dropped_samples: int = 0
    reasons: list[str] = field(default_factory=list)


def pprof_chunks(
    profile: Profile,
    samples: Sequence[tuple[int, Labels, int]],
    encode: Callable[[Profile], bytes],
    *,
    max_bytes: int,
    max_samples: int,
    compress: bool,
) -> Chunked:
    """Encode `samples` (stack id of `profile`, labels, count) as pprof, split
    so each profile is at most `max_bytes` before compression and holds at
    most `max_samples` samples; a single sample larger than that is dropped
    and said why."""
    out = Chunked()
    pending = [list(samples)]
    while pending:
        part = pending.pop()
        if not part:
            continue
        if len(part) > max_samples:
            pending.extend(_halves(part, math.ceil(len(part) / max_samples)))
            continue
        data = encode(rebuild(profile, part))
        if len(data) <= max_bytes:
            out.profiles.append(gzip_module.compress(data, 1) if compress else data)
            continue
        if len(part) == 1:
            out.dropped_samples += part[0][2]
            out.reasons.append(
                f"a sample's profile is {len(data)} bytes, over the {max_bytes}-byte limit"
            )
            continue
        pending.extend(_halves(part, max(2, math.ceil(len(data) / max_bytes))))
    return out


def _halves(part: list[Any], n: int) -> list[list[Any]]:
    size = math.ceil(len(part) / n)
    return [part[i : i + size] for i in range(0, len(part), size)][::-1]


def stable_id(*parts: object) -> str:
    """A UUID-shaped id that is the same for the same content (retries reuse it)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_PROCESS_KEYS = frozenset({*otlp.PROCESS_LABELS.values(), otlp.EXE_NAME_KEY})


def series_labels(resource: Mapping[str, object]) -> dict[str, str]:
    """Labels naming a series in a Prometheus-style backend, from a resource.

    The process's own attributes are left out (they travel as pprof sample
    labels); every other attribute becomes a label with a valid name:
    `service.name` → `service_name`, `host.name` → `host_name`, ... On a
    clash after renaming, the first name in sorted order wins.
    """
    out: dict[str, str] = {}
    for key in sorted(resource):
        value = resource[key]
        if key in _PROCESS_KEYS or value is None:
            continue
        text = otlp.label_value(value)
        name = prometheus_name(key)
        if text and name not in out:
            out[name] = text
    return out
