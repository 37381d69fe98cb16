"""Real receivers for the export round trips, on 127.0.0.1 with free ports.

* `OtlpGrpcReceiver`: the collector's ProfilesService, from opentelemetry-proto's
  generated stubs;
* `HttpReceiver`: an http.server in a thread that records every request and
  answers from a script (OTLP/HTTP and Pyroscope's Connect endpoint);
* `ParcaReceiver`: ProfileStoreService/WriteRaw from Kiln's own proto, checking
  what Parca's normalizer checks;
* `CountingProxy`: a TCP relay that counts the bytes a client sends, to see
  gzip on the wire where the server API hides it;
* `make_ca`: a self-signed CA and a server certificate for 127.0.0.1.

Every receiver is a context manager and stops its threads on exit, so no
test leaks a socket (warnings are errors).
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc
from opentelemetry.proto.collector.profiles.v1development import (
    profiles_service_pb2_grpc as svc_grpc,
)

from profiler.export.proto import parca_profilestore_pb2 as ps
from profiler.export.proto import parca_profilestore_pb2_grpc as ps_grpc
from profiler.export.proto import rpc_status_pb2
from profiler.export.transports import PROMETHEUS_NAME
from symbolizer import pprof

LOOPBACK = "127.0.0.1"


def status_details(code: int, message: str, retry_delay_s: float | None) -> bytes:
    """A google.rpc.Status with an optional RetryInfo detail, serialized."""
    status = rpc_status_pb2.Status(code=code, message=message)
    if retry_delay_s is not None:
        info = rpc_status_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(retry_delay_s * 1e9))
        detail = any_pb2.Any(
            type_url="type.googleapis.com/google.rpc.RetryInfo", value=info.SerializeToString()
        )
        status.details.append(detail)
    return status.SerializeToString()


@dataclass(frozen=True)
class GrpcFailure:
    """A scripted gRPC error, with RetryInfo in the trailers when retry_delay_s is set."""

    code: grpc.StatusCode
    message: str = "scripted failure"
    retry_delay_s: float | None = None

    def raise_in(self, context: grpc.ServicerContext) -> None:
        if self.retry_delay_s is not None:
            details = status_details(self.code.value[0], self.message, self.retry_delay_s)
            context.set_trailing_metadata((("grpc-status-details-bin", details),))
        context.abort(self.code, self.message)


# -- gRPC servers ---------------------------------------------------------------


class _GrpcServer:
    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._credentials = credentials
        self.port = 0
        self.metadata: list[dict[str, str]] = []
        self.script: deque[Any] = deque()

    def _bind(self) -> None:
        address = f"{LOOPBACK}:0"
        if self._credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, self._credentials)
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _record(self, context: grpc.ServicerContext) -> Any:
        self.metadata.append({k: v for k, v in context.invocation_metadata()})
        return self.script.popleft() if self.script else None

    def __exit__(self, *exc: object) -> None:
        self.server.stop(None).wait()


class OtlpGrpcReceiver(_GrpcServer, svc_grpc.ProfilesServiceServicer):
    """The collector's profiles service; script items: GrpcFailure or a response."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        super().__init__(credentials)
        self.requests: list[svc.ExportProfilesServiceRequest] = []
        svc_grpc.add_ProfilesServiceServicer_to_server(self, self.server)

    def __enter__(self) -> OtlpGrpcReceiver:
        self._bind()
        return self

    def Export(
        self, request: svc.ExportProfilesServiceRequest, context: grpc.ServicerContext
    ) -> svc.ExportProfilesServiceResponse:
        action = self._record(context)
        if isinstance(action, GrpcFailure):
            action.raise_in(context)
        self.requests.append(request)
        if isinstance(action, svc.ExportProfilesServiceResponse):
            return action
        return svc.ExportProfilesServiceResponse()


class ParcaReceiver(_GrpcServer, ps_grpc.ProfileStoreServiceServicer):
    """WriteRaw, refusing what Parca's normalizer refuses (INVALID_ARGUMENT)."""

    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        super().__init__(credentials)
        self.requests: list[ps.WriteRawRequest] = []
        ps_grpc.add_ProfileStoreServiceServicer_to_server(self, self.server)

    def __enter__(self) -> ParcaReceiver:
        self._bind()
        return self

    def WriteRaw(
        self, request: ps.WriteRawRequest, context: grpc.ServicerContext
    ) -> ps.WriteRawResponse:
        action = self._record(context)
        if isinstance(action, GrpcFailure):
            action.raise_in(context)
        problem = parca_problem(request)
        if problem:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        self.requests.append(request)
        return ps.WriteRawResponse()


def parca_problem(request: ps.WriteRawRequest) -> str:
    """What Parca's NormalizeWriteRawRequest and ValidatePprofProfile would refuse."""
    for series in request.series:
        names = [label.name for label in series.labels.labels]
        if "__name__" not in names:
            return "missing __name__ label"
        for name in names:
            if name != "__name__" and not PROMETHEUS_NAME.fullmatch(name):
                return f"invalid label name: {name}"
        if len(set(names)) != len(names):
            return "duplicate label name"
        for sample in series.samples:
            msg = pprof.parse_message(sample.raw_profile)
            for kind in ("mapping", "function", "location"):
                ids = [item.id for item in getattr(msg, kind)]
                if ids != list(range(1, len(ids) + 1)):
                    return f"{kind} id is not sequential"
            problems = pprof.validate(msg)
            if problems:
                return f"invalid profile: {problems[0]}"
    return ""


# -- HTTP ---------------------------------------------------------------------------


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw_body: bytes

    @property
    def body(self) -> bytes:
        if self.headers.get("content-encoding") == "gzip":
            return gzip.decompress(self.raw_body)
        return self.raw_body


@dataclass
class HttpReply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class HttpReceiver:
    """Records requests; answers from `script` (HttpReply or a callable of the
    request), else with `default(request)`."""

    def __init__(
        self,
        default: Callable[[HttpRequest], HttpReply] = lambda r: HttpReply(),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.requests: list[HttpRequest] = []
        self.script: deque[HttpReply | Callable[[HttpRequest], HttpReply]] = deque()
        self.default = default
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                req = HttpRequest(
                    "POST",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length),
                )
                receiver.requests.append(req)
                action = receiver.script.popleft() if receiver.script else receiver.default
                reply = action if isinstance(action, HttpReply) else action(req)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls is not None else "http"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def __enter__(self) -> HttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


# -- a byte-counting relay ------------------------------------------------------------


class CountingProxy:
    """Relays TCP connections to `port` on loopback, counting client→server bytes."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sent = 0
        self._lock = threading.Lock()
        self._sock = socket.create_server((LOOPBACK, 0))
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> CountingProxy:
        self._accept.start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection((LOOPBACK, self.target))
            self._conns += [client, upstream]
            for src, dst, count in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, count), daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if count:
                with self._lock:
                    self.sent += len(data)
            try:
                dst.sendall(data)
            except OSError:
                return

    def __exit__(self, *exc: object) -> None:
        # shutdown() wakes the threads blocked in accept()/recv(); close() alone does not.
        for s in (self._sock, *self._conns):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._accept.join(5)
        for t in self._threads:
            t.join(5)


# -- TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())]
        )


def make_ca(directory: Path) -> Pki | None:
    """A CA and a server certificate for 127.0.0.1 signed by it (None: no tool for it)."""
    try:
        return _make_ca_cryptography(directory)
    except ImportError:
        pass
    if shutil.which("openssl"):
        return _make_ca_openssl(directory)
    return None


def _make_ca_cryptography(directory: Path) -> Pki:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


def _make_ca_openssl(directory: Path) -> Pki:
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca_key = directory / "ca.key"
    csr = directory / "server.csr"
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(ca_key), "-out", str(pki.ca_file), "-days", "1",
        "-subj", "/CN=kiln test CA")  # fmt: skip
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(pki.key_file), "-out", str(csr), "-subj", "/CN=127.0.0.1")  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(pki.ca_file), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(pki.cert_file), "-days", "1",
        "-extfile", str(ext))  # fmt: skip
    return pki
