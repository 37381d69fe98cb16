"""The OpAMP client against the spec-written test server, over HTTP and
WebSocket, with a fake daemon (no BPF): protocol rules, remote config
end to end, resilience."""

from __future__ import annotations

import itertools
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from profiler.opamp import Conn, Remote, restore
from profiler.opamp.wire import CAPABILITIES, pb
from profiler.ottl import SampleContext, compile_conditions
from tests.conftest import skip_outside_ci
from tests.opamp.conftest import RULE_OK, Clients, Harness, composer
from tests.opamp.server import OpampTestServer

APPLIED = pb.RemoteConfigStatuses_APPLIED
APPLYING = pb.RemoteConfigStatuses_APPLYING
FAILED = pb.RemoteConfigStatuses_FAILED
PARTS = ("agent_description", "health", "effective_config")


def attrs(kvs: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in kvs}


def status_of(server: OpampTestServer, config_hash: bytes, status: int) -> Any:
    return next((s for s in server.statuses() if s[0] == config_hash and s[1] == status), None)


def wait_status(h: Harness, config_hash: bytes, status: int, timeout: float = 10.0) -> Any:
    name = {1: "APPLIED", 2: "APPLYING", 3: "FAILED"}[status]
    return h.server.wait_for(
        f"{name} for {config_hash.hex()[:8]}",
        lambda: status_of(h.server, config_hash, status),
        timeout,
    )


def seqs(server: OpampTestServer) -> list[int]:
    return [m.sequence_num for m in server.messages()]


def assert_no_gaps(server: OpampTestServer) -> None:
    numbers = seqs(server)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


# -- protocol --------------------------------------------------------------------


def test_first_message_is_the_full_state_with_exact_capabilities(
    server: OpampTestServer, clients: Clients
) -> None:
    h = clients.make(server)
    first = server.wait_for("a message", lambda: server.messages()[:1])[0]
    assert first.sequence_num == 0
    assert len(first.instance_uid) == 16
    assert uuid.UUID(bytes=first.instance_uid).version == 7
    assert first.capabilities == CAPABILITIES == 0x3807
    for bit in ("ReportsStatus", "AcceptsRemoteConfig", "ReportsEffectiveConfig",
                "ReportsRemoteConfig", "ReportsHealth", "ReportsHeartbeat"):  # fmt: skip
        assert first.capabilities & pb.AgentCapabilities.Value(f"AgentCapabilities_{bit}")
    for bit in ("AcceptsOpAMPConnectionSettings", "AcceptsPackages", "AcceptsRestartCommand"):
        assert not first.capabilities & pb.AgentCapabilities.Value(f"AgentCapabilities_{bit}")
    assert all(first.HasField(p) for p in PARTS)
    assert not first.HasField("remote_config_status")  # nothing received yet
    ident = attrs(first.agent_description.identifying_attributes)
    assert ident == {
        "service.name": "kiln",
        "service.version": "0.1.0-test",
        "service.instance.id": str(uuid.UUID(bytes=first.instance_uid)),
    }
    assert set(attrs(first.agent_description.non_identifying_attributes)) == {
        "host.name", "os.type", "host.arch"}  # fmt: skip
    assert first.health.healthy and first.health.start_time_unix_nano > 0
    ((name, file),) = first.effective_config.config_map.config_map.items()
    assert (name, file.content_type) == ("kiln.yaml", "text/yaml")
    assert yaml.safe_load(file.body)["frequency"] == 19
    uid_file = Path(h.local.data_dir) / "opamp" / "instance_uid"
    assert uuid.UUID(uid_file.read_text().strip()).bytes == first.instance_uid
    if server.transport == "http":
        rec = server.received[0]
        assert rec.headers["content-type"] == "application/x-protobuf"
        assert rec.headers["opamp-instance-uid"] == str(uuid.UUID(bytes=first.instance_uid))
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")


def test_http_polls_carry_only_identity_and_keep_numbering(clients: Clients) -> None:
    with_server = OpampTestServer("http").start()
    try:
        clients.make(with_server)
        with_server.wait_for("5 polls", lambda: len(with_server.messages()) >= 5)
        polls = with_server.messages()[1:5]
        assert all(not any(m.HasField(p) for p in PARTS) for m in polls)
        assert all(m.capabilities == CAPABILITIES for m in polls)
        assert_no_gaps(with_server)
    finally:
        with_server.stop()


def heartbeats_after(server: OpampTestServer, t0: float) -> list[float]:
    """When identity-only messages (heartbeats, polls) arrived after t0."""
    with server.lock:
        return [
            r.at
            for r in server.received
            if r.at > t0 and not any(r.msg.HasField(p) for p in (*PARTS, "remote_config_status"))
        ]


def first_gaps(server: OpampTestServer, n: int, timeout: float) -> list[float]:
    """The gaps between the next n + 1 heartbeats from now."""
    t0 = time.monotonic()
    server.wait_for(f"{n + 1} heartbeats", lambda: heartbeats_after(server, t0)[n:], timeout)
    return [b - a for a, b in itertools.pairwise(heartbeats_after(server, t0)[: n + 1])]


def connected_with_offer(
    server: OpampTestServer, clients: Clients, poll_interval: float, offer: int
) -> Harness:
    h = clients.make(server, opamp={"poll_interval": poll_interval})
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    server.offer_heartbeat(offer)
    server.wait_for("the offer", lambda: h.client.offered_heartbeat_s is not None)
    return h


def test_websocket_sends_heartbeats_at_the_configured_interval(clients: Clients) -> None:
    server = OpampTestServer("ws").start()
    try:
        h = clients.make(server, opamp={"poll_interval": 0.3})
        server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
        gaps = first_gaps(server, 3, timeout=5)
        assert all(0.25 <= g <= 1.0 for g in gaps), gaps
        assert h.client.status()["heartbeat"] == "0.3s"
        assert_no_gaps(server)
    finally:
        server.stop()


def test_server_offered_heartbeat_interval_is_used(
    server: OpampTestServer, clients: Clients
) -> None:
    h = connected_with_offer(server, clients, poll_interval=2.5, offer=1)
    gaps = first_gaps(server, 3, timeout=10)
    assert all(0.8 <= g <= 1.8 for g in gaps), gaps  # 1 s offered, not 2.5 s configured
    assert h.client.status()["heartbeat"] == "1s"
    assert_no_gaps(server)


def test_heartbeat_offer_of_zero_stops_websocket_heartbeats_not_http_polls(
    server: OpampTestServer, clients: Clients
) -> None:
    h = connected_with_offer(server, clients, poll_interval=0.2, offer=0)
    time.sleep(0.3)  # a message already due may still go
    t0 = time.monotonic()
    time.sleep(1.2)
    beats = heartbeats_after(server, t0)
    if server.transport == "ws":
        assert beats == [] and h.client.status()["heartbeat"] == "off"
    else:
        assert len(beats) >= 3 and h.client.status()["heartbeat"] == "0.2s"


def test_absurd_heartbeat_offer_is_bounded(clients: Clients) -> None:
    server = OpampTestServer("ws").start()
    try:
        h = clients.make(server)
        server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
        server.offer_heartbeat(10**12)
        server.wait_for("the offer", lambda: h.client.offered_heartbeat_s is not None)
        assert h.client.status()["heartbeat"] == "86400s"
    finally:
        server.stop()


def test_full_state_after_report_full_state(server: OpampTestServer, clients: Clients) -> None:
    h = clients.make(server)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    time.sleep(0.3)
    before = len(server.messages())
    server.request_full_state()
    if server.transport == "http":
        pass  # the flag rides on the next poll's reply
    full = server.wait_for(
        "a full report",
        lambda: [m for m in server.messages()[before:] if m.HasField("agent_description")],
    )
    assert all(full[0].HasField(p) for p in PARTS)
    assert_no_gaps(server)


def test_sequence_gap_at_the_server_gets_full_state(clients: Clients) -> None:
    # The server lost messages (e.g. it restarted with stale state): it sees
    # the gap and asks for full state, as "Agent Status Compression" says.
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server)
        server.wait_for("polls", lambda: len(server.messages()) >= 3)
        with server.lock:
            agent = next(iter(server.agents.values()))
            agent.last_seq = (agent.last_seq or 0) + 5
        n = len(server.messages())
        server.wait_for(
            "full state after the gap",
            lambda: any(m.HasField("agent_description") for m in server.messages()[n:]),
        )
        assert h.client.conn.state is Conn.CONNECTED
    finally:
        server.stop()


# -- remote config ---------------------------------------------------------------


def test_config_hash_round_trip_and_live_apply(server: OpampTestServer, clients: Clients) -> None:
    h = clients.make(server)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    config_hash = server.offer("frequency: 49\nprofile:\n  kernel_stacks: false\n")
    wait_status(h, config_hash, APPLYING)
    wait_status(h, config_hash, APPLIED)
    assert h.daemon.config.frequency == 49
    assert h.daemon.config.profile.kernel_stacks is False
    assert h.daemon.config.profile.python is True  # sections merge key by key
    statuses = [s for s in server.statuses() if s[0] == config_hash]
    assert [s[1] for s in statuses][:2] == [APPLYING, APPLIED]
    eff = server.wait_for(
        "effective config at 49 Hz",
        lambda: [
            m for m in server.messages()
            if m.HasField("effective_config")
            and yaml.safe_load(m.effective_config.config_map.config_map["kiln.yaml"].body)[
                "frequency"] == 49
        ],
    )  # fmt: skip
    assert eff
    shown = h.client.status()
    assert shown["last_config_hash"] == config_hash.hex()
    assert shown["last_config_status"] == "applied"
    assert h.daemon.status_extras["remote_control"]() == shown
    opamp_dir = Path(h.local.data_dir) / "opamp"
    assert (opamp_dir / "remote_config.yaml").read_text().startswith("frequency: 49")
    assert (opamp_dir / "remote_config.hash").read_text().split()[0] == config_hash.hex()
    # The same offer again changes nothing (the server still sees the hash).
    n = h.daemon.requests
    time.sleep(0.3)
    assert h.daemon.requests == n
    assert_no_gaps(server)


def test_invalid_ottl_rule_fails_with_its_line_and_column_and_old_rules_stay(
    server: OpampTestServer, clients: Clients
) -> None:
    h = clients.make(server)
    good = server.offer(
        "exporters:\n"
        "  - name: collector\n"
        "    type: otlp_grpc\n"
        "    endpoint: localhost:4317\n"
        "    filter:\n"
        "      conditions:\n"
        f"        - '{RULE_OK}'\n"
    )
    wait_status(h, good, APPLIED)
    in_force = h.daemon.config
    bad = server.offer(
        "exporters:\n"
        "  - name: collector\n"
        "    type: otlp_grpc\n"
        "    endpoint: localhost:4317\n"
        "    filter:\n"
        "      conditions:\n"
        '        - \'attributes["comm"] == "a"\'\n'
        "        - 'attributes[\"comm\"] == '\n"
    )
    _, _, error = wait_status(h, bad, FAILED)
    assert error.startswith("kiln.yaml:8:11: exporters.0.filter.conditions.1: invalid OTTL")
    assert "line 1 column 23" in error and "rule 2" in error
    time.sleep(0.2)  # a few windows: nothing was queued
    assert h.daemon.config is in_force
    assert h.daemon.pending is None
    assert h.client.status()["last_config_status"] == "failed"
    assert "line 1 column 23" in h.client.status()["error"]
    rules = h.daemon.config.exporters[0].filter
    drop = compile_conditions(list(rules.conditions), rules.error_mode)
    assert drop.evaluate(SampleContext(attributes={"comm": "noisy"}))
    assert not drop.evaluate(SampleContext(attributes={"comm": "quiet"}))
    health = [m.health for m in server.messages() if m.HasField("health")][-1]
    assert not health.healthy and "line 1 column 23" in health.last_error
    assert_no_gaps(server)


@pytest.mark.parametrize(
    ("body", "ceiling", "expected"),
    [
        ("frequency: 500\n", 100_000, "kiln.yaml:1:12: frequency: 500 Hz is above the ceiling "
                                      "of 199 Hz (max_frequency in the local config)"),
        ("frequency: 150\n", 100, "kiln.yaml:1:12: frequency: 150 Hz is above the kernel's "
                                  "ceiling of 100 Hz (kernel.perf_event_max_sample_rate)"),
        ("listen: 0.0.0.0:80\ntoken: abcdefghijklmnopq\nfrequency: 29\n", 100_000,
         "kiln.yaml:1:1: listen: cannot be set remotely; kiln.yaml:2:1: token: cannot be set "
         "remotely (remote config may set: frequency, profile, exporters, window_seconds)"),
        ("frequency: fast\n", 100_000, "kiln.yaml:1:12: frequency: Input should be a valid "
                                       "integer, unable to parse string as an integer"),
        ("window_seconds: 100ms\n", 100_000, "kiln.yaml:1:17: window_seconds: 0.1 s is below "
                                             "the safe minimum of 1 s"),
        ("frequency: [\n", 100_000, "kiln.yaml:2:1: expected the node content"),
    ],
)  # fmt: skip
def test_unsafe_or_invalid_config_fails_and_nothing_changes(
    clients: Clients, body: str, ceiling: int, expected: str
) -> None:
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server, kernel_ceiling=ceiling)
        before = h.daemon.config
        config_hash = server.offer(body)
        _, _, error = wait_status(h, config_hash, FAILED)
        assert expected in error
        assert h.daemon.config is before and h.daemon.requests == 0
    finally:
        server.stop()


def test_non_yaml_content_type_fails(clients: Clients) -> None:
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server)
        config_hash = server.offer('{"frequency": 49}', content_type="application/json")
        _, _, error = wait_status(h, config_hash, FAILED)
        assert "content_type 'application/json' is not YAML" in error
    finally:
        server.stop()


def test_apply_error_in_the_daemon_fails_and_the_config_stays(clients: Clients) -> None:
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server)
        h.daemon.fail_apply = OSError("perf_event_open: too many open files")
        config_hash = server.offer("frequency: 49\n")
        _, _, error = wait_status(h, config_hash, FAILED)
        assert error == "applying failed: perf_event_open: too many open files"
        assert h.daemon.config.frequency == 19
    finally:
        server.stop()


def test_offers_arriving_while_one_applies_wait_their_turn(clients: Clients) -> None:
    server = OpampTestServer("ws").start()
    try:
        h = clients.make(server, windows=False)  # windows by hand: APPLYING lasts
        server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
        first = server.offer("frequency: 29\n")
        wait_status(h, first, APPLYING)
        server.offer("frequency: 39\n")
        last = server.offer("frequency: 49\n")
        time.sleep(0.3)
        assert h.daemon.requests == 1  # one config applying at a time
        h.daemon.window()
        # The first is in force; the client reports only its newest status
        # (spec, "Retrying Messages": one up-to-date message), the next offer.
        wait_status(h, last, APPLYING)
        assert h.daemon.config.frequency == 29
        assert h.daemon.pending is not None and h.daemon.pending.frequency == 49
        h.daemon.window()
        wait_status(h, last, APPLIED)
        assert h.daemon.config.frequency == 49 and h.daemon.requests == 2
    finally:
        server.stop()


def test_restart_restores_the_remote_config_from_disk(
    server: OpampTestServer, clients: Clients
) -> None:
    h = clients.make(server)
    config_hash = server.offer("frequency: 49\n")
    wait_status(h, config_hash, APPLIED)
    uid = h.client.session.instance_uid
    h.client.stop()
    h.daemon.stop()
    assert server.messages()[-1].HasField("agent_disconnect")

    restored = restore(h.local, composer(h.local))
    assert restored is not None and restored.config is not None
    assert restored.config_hash == config_hash and restored.config.frequency == 49
    n = len(server.messages())
    h2 = clients.make(server, restored=restored)
    assert h2.daemon.config.frequency == 49  # in force before the first message
    first = server.wait_for("the new run's first message", lambda: server.messages()[n:])[0]
    assert first.instance_uid == uid
    assert first.remote_config_status.last_remote_config_hash == config_hash
    assert first.remote_config_status.status == APPLIED
    time.sleep(0.3)
    assert h2.daemon.requests == 0  # the server saw the hash: nothing re-sent


def test_restore_refuses_a_saved_config_the_local_one_no_longer_allows(
    tmp_path: Path, clients: Clients
) -> None:
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server)
        config_hash = server.offer("frequency: 150\n")
        wait_status(h, config_hash, APPLIED)
        lowered = h.local.model_copy(update={"max_frequency": 99})
        restored = restore(lowered, composer(lowered))
        assert restored is not None and restored.config is None
        assert "above the ceiling of 99 Hz" in restored.error
    finally:
        server.stop()


# -- resilience ------------------------------------------------------------------


def test_server_down_then_back_reconnects_with_full_state(
    server: OpampTestServer, clients: Clients
) -> None:
    h = clients.make(server)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    server.stop()
    deadline = time.monotonic() + 10
    while h.client.conn.state is not Conn.BACKING_OFF and time.monotonic() < deadline:
        time.sleep(0.02)
    assert h.client.status()["state"] in ("backing_off", "connecting")
    windows = h.daemon.stats.windows_written
    time.sleep(0.5)  # down for a while; the daemon's windows go on
    assert h.daemon.stats.windows_written > windows
    assert h.client.status()["error"]
    n = len(server.messages())
    server.start()
    full = server.wait_for(
        "a full report after the outage",
        lambda: [m for m in server.messages()[n:] if m.HasField("agent_description")],
    )
    assert all(full[0].HasField(p) for p in PARTS)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    assert_no_gaps(server)  # failed sends used no numbers


def test_backoff_honors_retry_info(server: OpampTestServer, clients: Clients) -> None:
    error = pb.ServerErrorResponse(
        type=pb.ServerErrorResponseType_Unavailable,
        error_message="overloaded",
        retry_info=pb.RetryInfo(retry_after_nanoseconds=800_000_000),
    )
    server.fail_next(error)
    h = clients.make(server)
    server.wait_for("a retry", lambda: len(server.received) >= 2)
    gap = server.received[1].at - server.received[0].at
    assert gap >= 0.8, gap  # fast_backoff alone would retry within 0.05 s
    assert server.received[1].msg.HasField("agent_description")  # full state again
    assert h.client.conn.state is Conn.CONNECTED or h.client.status()["state"]


def test_http_503_retry_after_is_honored(server: OpampTestServer, clients: Clients) -> None:
    server.fail_next(http_status=503, retry_after="1")
    h = clients.make(server)
    server.wait_for("a second attempt", lambda: len(server.attempts) >= 2, timeout=15)
    assert server.attempts[1] - server.attempts[0] >= 1.0
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")


def test_oversized_and_garbage_replies_are_refused_and_profiling_goes_on(
    server: OpampTestServer, clients: Clients
) -> None:
    big = pb.ServerToAgent(custom_message=pb.CustomMessage(data=b"x" * 70_000)).SerializeToString()
    frame = b"\x00" + big if server.transport == "ws" else big
    h = clients.make(server)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    server.reply_raw(frame)
    server.reply_raw(b"\x00\xff\xff\xff" if server.transport == "ws" else b"\xff\xff\xff")
    server.request_full_state()  # WS: makes the client send, so the replies go out
    if server.transport == "ws":
        h.client.on_config_applied(h.daemon.config, None)
    n = len(server.received)
    server.wait_for("the agent back after refusing", lambda: len(server.received) >= n + 3)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    assert h.daemon.config.frequency == 19
    assert h.client.counters["received"] > 0


def test_unknown_fields_are_ignored(clients: Clients) -> None:
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server)
        server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
        files = {"kiln.yaml": pb.AgentConfigFile(body=b"frequency: 29\n", content_type="text/yaml")}
        reply = pb.ServerToAgent(
            instance_uid=h.client.session.instance_uid,
            remote_config=pb.AgentRemoteConfig(
                config=pb.AgentConfigMap(config_map=files), config_hash=b"h1"
            ),
        ).SerializeToString()
        # Field 99 (varint) and field 100 (bytes), unknown to this version.
        server.reply_raw(reply + b"\x98\x06\x07" + b"\xa2\x06\x03abc")
        wait_status(h, b"h1", APPLIED)
        assert h.daemon.config.frequency == 29
    finally:
        server.stop()


def test_agent_disconnect_is_the_last_message(server: OpampTestServer, clients: Clients) -> None:
    h = clients.make(server)
    server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
    h.client.stop()
    server.wait_for("agent_disconnect", lambda: server.messages()[-1].HasField("agent_disconnect"))
    assert_no_gaps(server)
    assert h.client.status()["state"] == "disconnected"
    assert h.client.remote_layer() == {}


def test_server_assigned_instance_uid_is_adopted_and_kept(clients: Clients) -> None:
    server = OpampTestServer("http").start()
    try:
        h = clients.make(server)
        server.wait_for("connected", lambda: h.client.status()["state"] == "connected")
        new = uuid.uuid4().bytes
        server.reply_raw(
            pb.ServerToAgent(
                agent_identification=pb.AgentIdentification(new_instance_uid=new)
            ).SerializeToString()
        )
        server.wait_for("the new uid", lambda: server.messages()[-1].instance_uid == new)
        described = [m for m in server.messages() if m.instance_uid == new and
                     m.HasField("agent_description")]  # fmt: skip
        assert attrs(described[0].agent_description.identifying_attributes)[
            "service.instance.id"] == str(uuid.UUID(bytes=new))  # fmt: skip
        saved = (Path(h.local.data_dir) / "opamp" / "instance_uid").read_text().strip()
        assert saved == str(uuid.UUID(bytes=new))
    finally:
        server.stop()


# -- security --------------------------------------------------------------------


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        skip_outside_ci("openssl is not installed (needed to make a test certificate)")
    return cert, key


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_tls_with_ca_file_and_bearer_token(
    transport: str, tmp_path: Path, clients: Clients
) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server = OpampTestServer(transport, tls=tls)
    server.required_headers = {"Authorization": "Bearer s3cret-token"}
    server.start()
    try:
        assert server.url.startswith(("https://", "wss://"))
        refused = clients.make(server, opamp={"ca_file": str(cert)})
        server.wait_for("a refusal", lambda: server.refused)
        server.wait_for("backing off", lambda: "401" in refused.client.status()["error"])
        assert not server.messages()
        refused.client.stop()

        untrusted = clients.make(
            server, opamp={"headers": {"Authorization": "Bearer s3cret-token"}}
        )
        time.sleep(0.3)
        assert untrusted.client.conn.state is not Conn.CONNECTED
        assert "CERTIFICATE_VERIFY_FAILED" in untrusted.client.status()["error"]
        untrusted.client.stop()

        ok = clients.make(
            server,
            opamp={"ca_file": str(cert), "headers": {"Authorization": "Bearer s3cret-token"}},
        )
        server.wait_for("connected", lambda: ok.client.status()["state"] == "connected")
        assert ok.client.remote.state is Remote.IDLE
    finally:
        server.stop()
