"""The client against the spec's rules, as a hypothesis state machine.

A run interleaves what the server, the network and the daemon may do:
offers (valid or not), ReportFullState, UNAVAILABLE with retry_info, a
server that forgot the agent, outages, window boundaries, and time passing.
The client runs synchronously (`step()`, a fake clock, an in-memory
transport into the spec-written test server). After every step:
- the server has seen sequence numbers without a gap;
- the message after a reply with ReportFullState carries the full state;
- at most one config is applying (the daemon never gets a second request
  while one waits);
- the last good config is in force: the daemon runs exactly the remote
  layer last reported APPLIED (or the local config), never a refused one.
"""

from __future__ import annotations

import collections
import itertools
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from profiler.opamp import OpampClient, Remote
from profiler.opamp.backoff import Backoff
from profiler.opamp.remote_config import same_remote_keys
from profiler.opamp.transport import TransportError
from profiler.opamp.wire import pb
from tests.opamp.conftest import FakeDaemon, composer, local_config
from tests.opamp.server import OpampTestServer

INVALID = [
    "frequency: 500\n",  # above max_frequency
    "frequency: 150\n",  # above the (fake) kernel ceiling of 120
    "listen: 0.0.0.0:1\n",  # not a remote key
    "exporters:\n  - {name: a, type: parca, endpoint: x, filter: {conditions: ['x ==']}}\n",
    "window_seconds: 10ms\n",
    "frequency: [\n",
]


class MemoryTransport:
    """HTTP-like: each send is answered at once by the test server's logic."""

    polls = True
    timeout = 1.0

    def __init__(self, server: OpampTestServer) -> None:
        self.server = server
        self.down = False
        self.inbox: collections.deque[bytes] = collections.deque()

    def open(self, wake: Callable[[], None]) -> None:
        if self.down:
            raise TransportError("connection refused")

    def send(self, data: bytes) -> None:
        if self.down:
            raise TransportError("connection reset")
        msg = pb.AgentToServer()
        msg.ParseFromString(data)
        self.inbox.append(self.server.handle(msg, {}, first=True).SerializeToString())

    def receive(self) -> bytes | None:
        return self.inbox.popleft() if self.inbox else None

    def close(self) -> None:
        self.inbox.clear()


class OpampSpecMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kiln-opamp-sm-"))
        self.server = OpampTestServer("http")  # its protocol logic only; no socket
        self.transport = MemoryTransport(self.server)
        self.local = local_config(self.tmp)
        self.compose = composer(self.local)
        self.daemon = FakeDaemon(self.local)
        self.now = 0.0
        self.client = OpampClient(
            self.daemon,
            compose=self.compose,
            version="sm",
            transport=self.transport,
            backoff=Backoff(initial=0.05, maximum=0.4, rng=random.Random(0)),
            clock=lambda: self.now,
            kernel_ceiling=lambda: 120,
        )
        self.layers: dict[bytes, dict[str, Any]] = {}  # offered hash -> its layer, if valid

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- what can happen ------------------------------------------------------------

    @rule(dt=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 1.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for _ in range(8):  # what is due now, as the thread would do it
            if self.client.step() > 0:
                break

    @rule()
    def window_boundary(self) -> None:
        self.daemon.window()

    @rule(freq=st.integers(1, 120), kernel=st.booleans())
    def server_offers_valid(self, freq: int, kernel: bool) -> None:
        text = f"frequency: {freq}\nprofile:\n  kernel_stacks: {str(kernel).lower()}\n"
        self.layers[self.server.offer(text)] = yaml.safe_load(text)

    @rule(text=st.sampled_from(INVALID))
    def server_offers_invalid(self, text: str) -> None:
        self.server.offer(text)

    @rule()
    def server_offers_nothing(self) -> None:
        self.layers[self.server.offer(b"", name="")] = {}

    @rule()
    def server_asks_full_state(self) -> None:
        self.server.request_full_state()

    @rule()
    def server_forgets_the_agent(self) -> None:
        with self.server.lock:
            self.server.agents.clear()

    @rule(retry_ms=st.integers(0, 1500))
    def server_unavailable(self, retry_ms: int) -> None:
        self.server.fail_next(
            pb.ServerErrorResponse(
                type=pb.ServerErrorResponseType_Unavailable,
                retry_info=pb.RetryInfo(retry_after_nanoseconds=retry_ms * 1_000_000),
            )
        )

    @rule(down=st.booleans())
    def network(self, down: bool) -> None:
        self.transport.down = down

    # -- what must always hold ------------------------------------------------------

    @invariant()
    def sequence_numbers_have_no_gaps(self) -> None:
        seqs = [m.sequence_num for m in self.server.messages()]
        assert seqs == list(range(len(seqs)))

    @invariant()
    def full_state_after_report_full_state(self) -> None:
        rec = self.server.received
        reported_status = False  # once there is a remote config status, it is part of the state
        for before, after in itertools.pairwise(rec):
            reported_status |= before.msg.HasField("remote_config_status")
            if before.asked_full_state:
                for part in ("agent_description", "health", "effective_config"):
                    assert after.msg.HasField(part), part
                if reported_status:
                    assert after.msg.HasField("remote_config_status")

    @invariant()
    def at_most_one_config_applying(self) -> None:
        assert self.daemon.overlapping == 0
        applying = self.client.remote.applying is not None
        assert applying == (self.client.remote.state is Remote.APPLYING)

    @invariant()
    def last_good_config_in_force(self) -> None:
        remote = self.client.remote
        if remote.state is Remote.APPLYING:
            return
        assert same_remote_keys(self.daemon.config, self.compose(remote.good_layer))
        if remote.state is Remote.APPLIED:
            assert remote.good_layer == self.layers[remote.config_hash]
        if remote.state is Remote.FAILED and remote.config_hash in self.layers:
            assert remote.error.startswith("applying failed")  # only valid ones reach apply


OpampSpecMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOpampSpec = OpampSpecMachine.TestCase
