"""An OTLP/HTTP receiver behind a link the test can break, all in network
namespaces the test creates (pyroute2) and removes again.

    client ns                 wire ns                        receiver ns
    c0 192.0.2.1/30 <-veth-> wa ==[relay: loss, delay]== wb <-veth-> r0 192.0.2.2/30
                                                                     receiver :4318

Nothing is added to the host's own namespace: the exporter under test runs
in a thread moved into the client namespace (threads it starts inherit it),
so it can reach 192.0.2.2 and nothing else. That matters beyond tidiness:
a host may use the documentation range itself (a CI machine here has
192.0.2.2/24 on eth0 with its gateway at 192.0.2.1), and a /30 route added
there would take the host's default gateway away.

The link's faults come from a relay in the wire namespace rather than
`tc netem`, because kernels built without `sch_netem` (as the CI kernel is,
with no loadable modules) cannot run netem at all. The relay copies every
frame between `wa` and `wb` through AF_PACKET sockets, dropping a share of
them and holding the rest for a fixed delay; with PACKET_VNET_HDR the
checksum-offload and segmentation metadata travel with each frame, so both
kernels' TCP stacks see an ordinary lossy, slow Ethernet link. Link down is
`wa` set down (the client's `c0` loses carrier); a blackhole is 100% loss.

Run as `python -m tests.export.netns relay|receive ...` for the two child
processes; each enters its namespace first.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import heapq
import http.server
import os
import queue
import random
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

CLIENT_ADDR = "192.0.2.1"
RECEIVER_ADDR = "192.0.2.2"
PREFIX_LEN = 30
RECEIVER_PORT = 4318
BATCH_ID_ATTR = "kiln.test.batch_id"  # the resource attribute the receiver reports

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
MAX_FRAME = 65536 + 64  # a GSO frame plus the virtio-net header

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _pyroute2() -> Any:
    """pyroute2, imported on first use, so a machine without it skips rather than errs."""
    import pyroute2  # type: ignore[import-untyped]

    return pyroute2


def unavailable_reason() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    try:
        _pyroute2()
    except ImportError as e:
        return f"pyroute2 is not importable ({e})"
    if not Path("/proc/self/ns/net").exists():
        return "the kernel has no network namespaces"
    return None


# -- the lab (test process side) -----------------------------------------------------


class Child:
    """A child process started in a namespace, talked to over its stdin/stdout."""

    def __init__(self, role: str, args: list[str], on_line: Callable[[str], None]) -> None:
        self.role = role
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.export.netns", role, *args],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._ready = threading.Event()
        self._on_line = on_line
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line == "ready":
                self._ready.set()
            elif line:
                self._on_line(line)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def wait_ready(self, timeout_s: float) -> None:
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"{self.role} did not start: {self.stderr_tail()}")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr[-5:]) or f"exit code {self.proc.poll()}"

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()  # EOF asks it to exit
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(2.0)
        for t in self._threads:
            t.join(2.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _remove_stale(netns: Any) -> None:
    """Remove namespaces an earlier run left when it was killed (its pid is gone).

    Their children exit by themselves once their stdin closes with that run.
    """
    for name in netns.listnetns():
        found = re.fullmatch(r"kiln-(?:cli|wire|rcv)-(\d+)-\d+", name)
        if found is None:
            continue
        try:
            os.kill(int(found.group(1)), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                netns.remove(name)
        except PermissionError:
            pass  # alive, someone else's


class Lab:
    """The three namespaces, the veth pairs, the relay and the receiver.

    Use as a context manager: whatever happens, leaving it stops the children
    and removes the namespaces (removing a namespace removes its veths).
    """

    def __init__(self, seed: int = 1) -> None:
        tag = f"{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
        self.client_ns = f"kiln-cli-{tag}"
        self.wire_ns = f"kiln-wire-{tag}"
        self.receiver_ns = f"kiln-rcv-{tag}"
        self.seed = seed
        self.endpoint = f"http://{RECEIVER_ADDR}:{RECEIVER_PORT}"
        self._created: list[str] = []
        self._children: list[Child] = []
        self._lock = threading.Lock()
        self._received: Counter[int] = Counter()
        self._relay: Child | None = None
        self._relay_acks: queue.Queue[str] = queue.Queue()

    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self) -> None:
        pr2 = _pyroute2()
        IPRoute, netns = pr2.IPRoute, pr2.netns
        _remove_stale(netns)
        for name in (self.client_ns, self.wire_ns, self.receiver_ns):
            netns.create(name)
            self._created.append(name)
        with IPRoute(netns=self.client_ns) as ipr:
            ipr.link(
                "add", ifname="c0", kind="veth", peer={"ifname": "wa", "net_ns_fd": self.wire_ns}
            )
            c0 = ipr.link_lookup(ifname="c0")[0]
            ipr.addr("add", index=c0, address=CLIENT_ADDR, prefixlen=PREFIX_LEN)
            ipr.link("set", index=c0, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        with IPRoute(netns=self.wire_ns) as ipr:
            ipr.link(
                "add",
                ifname="wb",
                kind="veth",
                peer={"ifname": "r0", "net_ns_fd": self.receiver_ns},
            )
            for name in ("wa", "wb"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        with IPRoute(netns=self.receiver_ns) as ipr:
            r0 = ipr.link_lookup(ifname="r0")[0]
            ipr.addr("add", index=r0, address=RECEIVER_ADDR, prefixlen=PREFIX_LEN)
            ipr.link("set", index=r0, state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

        self._relay = Child(
            "relay",
            ["--netns", self.wire_ns, "--seed", str(self.seed), "wa", "wb"],
            self._relay_acks.put,
        )
        self._children.append(self._relay)
        receiver = Child(
            "receive",
            ["--netns", self.receiver_ns, RECEIVER_ADDR, str(RECEIVER_PORT)],
            self._on_receipt,
        )
        self._children.append(receiver)
        for child in self._children:
            child.wait_ready(15.0)

    def close(self) -> None:
        errors = []
        for child in self._children:
            try:
                child.stop()
            except Exception as e:  # keep tearing down; report at the end
                errors.append(f"{child.role}: {e!r}")
        self._children.clear()
        if self._created:
            netns = _pyroute2().netns
            for name in reversed(self._created):
                try:
                    netns.remove(name)
                except Exception as e:
                    errors.append(f"remove {name}: {e!r}")
            self._created.clear()
        if errors:
            raise RuntimeError("lab teardown: " + "; ".join(errors))

    # -- what the receiver saw -------------------------------------------------------

    def _on_receipt(self, line: str) -> None:
        kind, _, value = line.partition(" ")
        if kind == "batch":
            with self._lock:
                self._received[int(value)] += 1

    def received(self) -> Counter[int]:
        """Batch id -> how many times its request reached the receiver."""
        with self._lock:
            return Counter(self._received)

    # -- faults ----------------------------------------------------------------------------

    def impair(self, loss: float = 0.0, delay_s: float = 0.0) -> None:
        """Drop `loss` of the frames in each direction and delay the rest by `delay_s`."""
        assert self._relay is not None
        self._relay.send(f"set {loss} {delay_s}")
        try:
            self._relay_acks.get(timeout=5.0)  # in force before the caller goes on
        except queue.Empty:
            raise RuntimeError(f"relay did not apply: {self._relay.stderr_tail()}") from None

    def blackhole(self) -> None:
        self.impair(loss=1.0)

    def link(self, up: bool) -> None:
        """The wire end of the client's veth: down means `c0` loses carrier."""
        with _pyroute2().IPRoute(netns=self.wire_ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="wa")[0], state="up" if up else "down")

    def in_client_ns(self, fn: Callable[[], T], timeout_s: float) -> T:
        """Run `fn` in a thread inside the client namespace (with any threads it starts)."""
        netns = _pyroute2().netns
        outcome: list[Any] = []

        def body() -> None:
            try:
                netns.setns(self.client_ns, flags=0)  # this thread only
                outcome.append(("ok", fn()))
            except BaseException as e:
                outcome.append(("error", e))

        thread = threading.Thread(target=body, name="kiln-client-ns", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise TimeoutError(f"scenario still running after {timeout_s:.0f}s")
        kind, value = outcome[0]
        if kind == "error":
            raise value
        return value  # type: ignore[no-any-return]


# -- the children (each runs inside its namespace) ---------------------------------------------


def _enter(name: str) -> None:
    _pyroute2().netns.setns(name, flags=0)


def _packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def relay(a: str, b: str, seed: int, commands_fd: int) -> None:
    """Copy frames between two interfaces; `set LOSS DELAY_S` lines on `commands_fd`
    change the faults, end of file stops it."""
    rng = random.Random(seed)
    loss, delay_s = 0.0, 0.0
    sock_a, sock_b = _packet_socket(a), _packet_socket(b)
    peer = {sock_a.fileno(): sock_b, sock_b.fileno(): sock_a}
    by_fd = {sock_a.fileno(): sock_a, sock_b.fileno(): sock_b}
    due: list[tuple[float, int, socket.socket, bytes]] = []  # (release time, seq, out, frame)
    seq = 0
    pending = b""
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, out, frame = heapq.heappop(due)
            with contextlib.suppress(OSError):  # the interface is down: the frame is lost
                out.send(frame)
        timeout = min(max(due[0][0] - now, 0.0), 0.5) if due else 0.5
        readable, _, _ = select.select([*by_fd, commands_fd], [], [], timeout)
        for fd in readable:
            if fd == commands_fd:
                # Raw reads: a buffered reader could hold a line select() cannot see.
                chunk = os.read(commands_fd, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    _, loss_text, delay_text = line.split()
                    loss, delay_s = float(loss_text), float(delay_text)
                    print("applied", flush=True)
                continue
            for _ in range(256):  # bounded per wake-up, so neither side starves
                try:
                    frame, address = by_fd[fd].recvfrom(MAX_FRAME)
                except (BlockingIOError, OSError):
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # our own copy going out, or the wire kernel's chatter
                if rng.random() < loss:
                    continue
                seq += 1
                heapq.heappush(due, (time.monotonic() + delay_s, seq, peer[fd], frame))


def receive(address: str, port: int, commands: IO[str]) -> None:
    """An OTLP/HTTP profiles receiver that reports each request's batch id on stdout."""
    from opentelemetry.proto.collector.profiles.v1development import (
        profiles_service_pb2 as svc,
    )

    out_lock = threading.Lock()
    reply = svc.ExportProfilesServiceResponse().SerializeToString()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # a connection stalled by loss does not hold a thread for ever

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding", "") == "gzip":
                body = gzip.decompress(body)
            request = svc.ExportProfilesServiceRequest.FromString(body)
            ids = set()
            for rp in request.resource_profiles:
                for kv in rp.resource.attributes:
                    if kv.key == BATCH_ID_ATTR:
                        ids.add(kv.value.string_value)
            with out_lock:
                for batch_id in sorted(ids):
                    print(f"batch {batch_id}", flush=True)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    print("ready", flush=True)
    try:
        while commands.readline():  # until the test closes our stdin
            pass
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.export.netns")
    sub = parser.add_subparsers(dest="role", required=True)
    p_relay = sub.add_parser("relay")
    p_relay.add_argument("--netns", required=True)
    p_relay.add_argument("--seed", type=int, default=1)
    p_relay.add_argument("a")
    p_relay.add_argument("b")
    p_recv = sub.add_parser("receive")
    p_recv.add_argument("--netns", required=True)
    p_recv.add_argument("address")
    p_recv.add_argument("port", type=int)
    args = parser.parse_args(argv)
    _enter(args.netns)
    if args.role == "relay":
        relay(args.a, args.b, args.seed, sys.stdin.fileno())
    else:
        receive(args.address, args.port, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
