"""Requests a receiver will take: a window too big for one goes as several.

gRPC servers refuse messages over 4 MiB unless told otherwise (the
OpenTelemetry Collector's OTLP receiver, Parca), and HTTP receivers cap
bodies too. A busy many-CPU host with deep, varied stacks can fill more than
that in one window, and a refused request would be retried until the circuit
opens, losing every window meanwhile. So each request is measured before it
goes; one over the limit is cut into parts by sample (each part a compact
profile holding only what its samples use) until every part fits, and the
parts go one after another as the same batch.

The delivery state machine still sees one batch and one result per attempt.
A retry resumes at the first part not yet accepted, so parts a receiver took
are never sent twice; a part refused for good ends the batch as a partial
success whose rejected samples are the parts not delivered.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from profiler.export.api import ExportBatch, SendResult, TwoPhaseTransport
from profiler.export.rules import subset

R = TypeVar("R")

# Parts are cut a little smaller than the estimate says, so one round usually fits.
_SLACK = 1.25
# A gRPC default; HTTP receivers usually allow more.
DEFAULT_MAX_REQUEST_BYTES = 4 << 20
MIN_MAX_REQUEST_BYTES = 64 << 10


@dataclass
class _Progress(Generic[R]):
    batch_id: int
    parts: list[tuple[ExportBatch, R]]
    done: int = 0
    rejected: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


def split_batch(batch: ExportBatch, n: int, first_part: int = 1) -> list[ExportBatch]:
    """`batch` as up to n batches with about as many sample rows each, numbered
    from first_part. Rows are cut in (stack, labels) order, so a stack's rows
    stay together and the parts share little of their dictionaries."""
    keys = sorted(k for k, count in batch.profile.counts.items() if count > 0)
    n = max(1, min(n, len(keys)))
    bounds = [round(i * len(keys) / n) for i in range(n + 1)]
    parts = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        profile = subset(batch.profile, keys[a:b])
        parts.append(
            dataclasses.replace(
                batch, profile=profile, samples=profile.total_samples, part=first_part + i
            )
        )
    return parts


def plan_parts(
    batch: ExportBatch,
    prepare: Callable[[ExportBatch], R],
    size_of: Callable[[R], int],
    max_bytes: int,
) -> list[tuple[ExportBatch, R]]:
    """Prepared requests in sample order, each within max_bytes unless it holds
    one sample row (sent anyway: the receiver may take it, and dropping it here
    would lose it silently). Parts of a split batch have distinct `part` numbers."""
    out: list[tuple[ExportBatch, R]] = []
    todo = [(batch, prepare(batch))]
    numbered = 0
    while todo:
        b, request = todo.pop(0)
        rows = sum(1 for c in b.profile.counts.values() if c > 0)
        size = size_of(request)
        if size <= max_bytes or rows <= 1:
            out.append((b, request))
            continue
        n = max(2, math.ceil(size * _SLACK / max_bytes))
        parts = split_batch(b, n, first_part=numbered + 1)
        numbered += len(parts)
        todo[:0] = [(p, prepare(p)) for p in parts]
    return out


class SplitRequests(Generic[R]):
    """A Transport sending each batch as requests of at most max_bytes."""

    def __init__(self, inner: TwoPhaseTransport[R], max_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        if max_bytes < MIN_MAX_REQUEST_BYTES:
            raise ValueError(
                f"max_request_bytes {max_bytes} is too small: use at least {MIN_MAX_REQUEST_BYTES}"
            )
        self.inner = inner
        self.name = inner.name
        self.max_bytes = max_bytes
        self.requests_split = 0  # batches that needed more than one request
        self._progress: _Progress[R] | None = None

    def send(self, batch: ExportBatch, timeout_s: float) -> SendResult:
        deadline = time.monotonic() + timeout_s
        progress = self._progress
        if progress is None or progress.batch_id != batch.batch_id:
            # A new batch (the one before was delivered or given up by delivery).
            parts = plan_parts(batch, self.inner.prepare, self.inner.request_bytes, self.max_bytes)
            progress = self._progress = _Progress(batch.batch_id, parts)
            if len(parts) > 1:
                self.requests_split += 1
        total = len(progress.parts)
        while progress.done < total:
            part, request = progress.parts[progress.done]
            left = deadline - time.monotonic()
            if progress.done and left <= 0:
                return SendResult(
                    ok=False,
                    retryable=True,
                    error=f"{progress.done} of {total} parts sent before the attempt's deadline",
                )
            result = self.inner.deliver(request, part, max(left, 0.001))
            if not result.ok:
                where = f"part {progress.done + 1} of {total}: " if total > 1 else ""
                if result.retryable or progress.done == 0:
                    if not result.retryable:
                        self._progress = None
                    return dataclasses.replace(result, error=where + result.error)
                # Refused for good after earlier parts went: those stay delivered.
                self._progress = None
                rest = sum(p.samples for p, _ in progress.parts[progress.done :])
                return SendResult(
                    ok=True,
                    rejected=min(batch.samples, progress.rejected + rest),
                    error="; ".join([*progress.errors, where + result.error]),
                )
            progress.rejected += result.rejected
            if result.error:
                progress.errors.append(result.error)
            progress.done += 1
        self._progress = None
        return SendResult(
            ok=True,
            rejected=min(batch.samples, progress.rejected),
            error="; ".join(dict.fromkeys(progress.errors)),
        )

    def close(self) -> None:
        self._progress = None
        self.inner.close()
