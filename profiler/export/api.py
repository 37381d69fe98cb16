"""What every exporter shares: the batch it ships, the result of one attempt,
and the transport protocol the delivery state machine drives.

A batch is one closed window of one exporter, after its OTTL rules ran. A
transport turns it into its backend's wire format and makes one attempt;
`profiler.export.delivery` owns queueing, retries, backoff and the circuit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from symbolizer.profile import Profile


@dataclass(frozen=True, slots=True)
class ExportBatch:
    batch_id: int  # increasing per exporter
    profile: Profile  # samples with labels: pid, tid, comm, exe, container, cgroup, cpu
    start_ns: int  # wall clock, window start
    duration_ns: int
    samples: int  # sum of counts (what "dropped" counters count)
    resource: dict[str, str] = field(default_factory=dict)  # host.name, service.name, ...
    part: int = 0  # a batch too big for one request goes as parts numbered from 1


@dataclass(frozen=True, slots=True)
class SendResult:
    """One attempt's outcome.

    ok: accepted (fully, or partly: `rejected` samples refused for good).
    retryable: failed, worth retrying (network error, 429, 503, gRPC
    UNAVAILABLE/RESOURCE_EXHAUSTED...); `retry_after_s` is the server's hint
    (Retry-After header or gRPC RetryInfo) when it gave one.
    Neither: refused for good (400, INVALID_ARGUMENT, 401...): dropped, counted.
    """

    ok: bool
    retryable: bool = False
    retry_after_s: float | None = None
    rejected: int = 0
    error: str = ""


@runtime_checkable
class Transport(Protocol):
    name: str

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        """One attempt; never raises for network or server errors (they are results)."""
        ...

    def close(self) -> None: ...


R = TypeVar("R")


class TwoPhaseTransport(Transport, Protocol[R]):
    """A transport whose attempt can be taken apart: build the request, measure
    it, send it (what profiler.export.split needs to cut big batches)."""

    def prepare(self, batch: ExportBatch) -> R: ...

    def request_bytes(self, request: R) -> int:
        """Bytes the receiver checks against its limit (before compression)."""
        ...

    def deliver(self, request: R, batch: ExportBatch, timeout_s: float) -> SendResult: ...
