"""Pure parts of the OpAMP client: framing, decoding (fuzzed), sessions,
backoff, identity and the state tables."""

from __future__ import annotations

import contextlib
import random
import uuid
from pathlib import Path

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from profiler.opamp.backoff import Backoff
from profiler.opamp.identity import agent_description, load_instance_uid
from profiler.opamp.session import Session
from profiler.opamp.state import (
    CONN_TRANSITIONS,
    REMOTE_TRANSITIONS,
    Conn,
    ConnEvent,
    IllegalTransition,
    Machine,
    Remote,
    RemoteEvent,
)
from profiler.opamp.transport import parse_retry_after
from profiler.opamp.wire import (
    CAPABILITIES,
    MessageError,
    decode_server_to_agent,
    encode_agent_to_server,
    pb,
    ws_frame,
    ws_payload,
)

CAP = 1 << 16


# -- framing and decoding ----------------------------------------------------------


def test_ws_header_is_a_zero_varint() -> None:
    assert ws_frame(b"abc") == b"\x00abc"
    assert ws_payload(b"\x00abc") == b"abc"
    assert ws_payload(b"\x00") == b""  # an empty message is valid
    assert ws_payload(b"\x80\x80\x00xy") == b"xy"  # 0 in a longer varint is still 0


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"\x01abc", "header is 1, not 0"),
        (b"\x80\x01", "header is 128, not 0"),
        (b"", "not a complete varint"),
        (b"\x80" * 10 + b"\x00", "not a complete varint"),
    ],
)
def test_ws_bad_headers_are_malformed(frame: bytes, error: str) -> None:
    with pytest.raises(MessageError, match=error):
        ws_payload(frame)


def test_decode_refuses_oversized_and_keeps_known_fields_of_newer_messages() -> None:
    msg = pb.ServerToAgent(instance_uid=b"u" * 16, flags=pb.ServerToAgentFlags_ReportFullState)
    data = msg.SerializeToString()
    with pytest.raises(MessageError, match="over the 10-byte cap"):
        decode_server_to_agent(data, 10)
    newer = data + b"\xf8\x07\x2a" + b"\x82\x08\x02hi"  # fields 127 and 128
    got = decode_server_to_agent(newer, CAP)
    assert got.instance_uid == b"u" * 16 and got.flags == 1


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes_never_crash_the_decoder(data: bytes) -> None:
    for ws in (False, True):
        try:
            msg = decode_server_to_agent(ws_payload(data) if ws else data, CAP)
        except MessageError:
            continue
        assert isinstance(msg, pb.ServerToAgent)


_SERVER_MESSAGES = st.builds(
    lambda uid, flags, body, hash_, retry, err: pb.ServerToAgent(
        instance_uid=uid,
        flags=flags,
        remote_config=pb.AgentRemoteConfig(
            config=pb.AgentConfigMap(
                config_map={"kiln.yaml": pb.AgentConfigFile(body=body, content_type="text/yaml")}
            ),
            config_hash=hash_,
        ),
        error_response=pb.ServerErrorResponse(
            type=err, retry_info=pb.RetryInfo(retry_after_nanoseconds=retry)
        )
        if err
        else None,
    ),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=200),
    st.binary(max_size=32),
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1, 2]),
)


@settings(max_examples=200, deadline=None)
@given(_SERVER_MESSAGES, st.data())
def test_fuzz_mutated_messages_never_crash_the_decoder(
    msg: pb.ServerToAgent, data: st.DataObject
) -> None:
    raw = bytearray(msg.SerializeToString())
    assert decode_server_to_agent(bytes(raw), CAP) == msg
    for _ in range(data.draw(st.integers(1, 4))):
        if raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(MessageError):
        decode_server_to_agent(bytes(raw[:cut]), CAP)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.data())
def test_fuzz_oversized_is_always_refused(data: bytes, draw: st.DataObject) -> None:
    cap = draw.draw(st.integers(0, len(data) - 1))
    with pytest.raises(MessageError, match="cap"):
        decode_server_to_agent(data, cap)


def test_outgoing_messages_over_the_cap_are_not_sent() -> None:
    msg = pb.AgentToServer(instance_uid=b"u" * 16, sequence_num=1)
    assert encode_agent_to_server(msg, CAP) == msg.SerializeToString()
    with pytest.raises(MessageError):
        encode_agent_to_server(msg, 4)


def test_capabilities_are_exactly_what_kiln_supports() -> None:
    names = {name for name, bit in pb.AgentCapabilities.items() if bit and CAPABILITIES & bit}
    assert names == {
        "AgentCapabilities_ReportsStatus",
        "AgentCapabilities_AcceptsRemoteConfig",
        "AgentCapabilities_ReportsEffectiveConfig",
        "AgentCapabilities_ReportsRemoteConfig",
        "AgentCapabilities_ReportsHealth",
        "AgentCapabilities_ReportsHeartbeat",
    }
    assert CAPABILITIES == 0x1 | 0x2 | 0x4 | 0x800 | 0x1000 | 0x2000  # the spec's bit values


# -- session ---------------------------------------------------------------------


def _parts(freq: int = 19) -> dict[str, Message | None]:
    return {
        "agent_description": agent_description(b"u" * 16, "1.0"),
        "health": pb.ComponentHealth(healthy=True),
        "effective_config": pb.EffectiveConfig(
            config_map=pb.AgentConfigMap(
                config_map={"kiln.yaml": pb.AgentConfigFile(body=f"frequency: {freq}".encode())}
            )
        ),
        "remote_config_status": None,
    }


def test_session_numbers_compresses_and_reports_full_state_on_request() -> None:
    s = Session(b"u" * 16)
    first = s.build(_parts(), poll=False)
    assert first is not None and first.sequence_num == 0
    assert all(first.HasField(n) for n in ("agent_description", "health", "effective_config"))
    s.sent(first)
    assert s.build(_parts(), poll=False) is None  # nothing changed, no poll due
    poll = s.build(_parts(), poll=True)
    assert (
        poll is not None
        and poll.sequence_num == 1
        and poll.ByteSize()
        == len(
            pb.AgentToServer(
                instance_uid=b"u" * 16, sequence_num=1, capabilities=CAPABILITIES
            ).SerializeToString()
        )
    )
    # Not sent (the transport failed): the number is not used up.
    again = s.build(_parts(29), poll=False)
    assert again is not None and again.sequence_num == 1
    assert again.HasField("effective_config") and not again.HasField("agent_description")
    s.sent(again)
    s.full_state = True
    full = s.build(_parts(29), poll=False)
    assert full is not None and full.sequence_num == 2 and full.HasField("agent_description")
    s.sent(full)
    assert not s.full_state
    bye = s.disconnect()
    assert bye.HasField("agent_disconnect") and bye.sequence_num == 3


# -- backoff ---------------------------------------------------------------------


def test_backoff_grows_with_jitter_up_to_the_maximum() -> None:
    b = Backoff(initial=1, maximum=8, rng=random.Random(3))
    delays = [b.next() for _ in range(8)]
    steps = [1, 2, 4, 8, 8, 8, 8, 8]
    for delay, step in zip(delays, steps, strict=True):
        assert step / 2 <= delay <= step
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next() <= 1


@given(st.floats(0, 10_000), st.integers(0, 20))
def test_backoff_never_retries_before_the_server_asked(retry_after: float, attempts: int) -> None:
    b = Backoff(initial=0.05, maximum=1, rng=random.Random(attempts), attempts=attempts)
    delay = b.next(retry_after)
    assert delay >= min(retry_after, 3600)
    assert delay <= max(1.0, min(retry_after, 3600) * 1.1)


def test_retry_after_header_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("99999999") == 3600.0
    date = "Wed, 21 Oct 2015 07:28:30 GMT"
    assert parse_retry_after(date, now=lambda: 1445412480.0) == 30.0
    assert parse_retry_after(date, now=lambda: 1445412600.0) == 0.0


# -- identity --------------------------------------------------------------------


def test_instance_uid_is_a_uuid7_created_once(tmp_path: Path) -> None:
    uid = load_instance_uid(tmp_path)
    assert len(uid) == 16 and uuid.UUID(bytes=uid).version == 7
    assert load_instance_uid(tmp_path) == uid
    (tmp_path / "instance_uid").write_text("not a uuid\n")
    fresh = load_instance_uid(tmp_path)
    assert fresh != uid and load_instance_uid(tmp_path) == fresh


# -- state tables ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "states", "events", "initial"),
    [
        (CONN_TRANSITIONS, Conn, ConnEvent, Conn.DISCONNECTED),
        (REMOTE_TRANSITIONS, Remote, RemoteEvent, Remote.IDLE),
    ],
)
def test_state_tables_are_followed_exactly(table, states, events, initial) -> None:  # type: ignore[no-untyped-def]
    for state in states:
        for event in events:
            m = Machine("t", table, state)
            if (state, event) in table:
                assert m.fire(event) is table[(state, event)]
            else:
                with pytest.raises(IllegalTransition):
                    m.fire(event)
                assert m.state is state
    reachable = {initial}
    for _ in range(len(table)):
        reachable |= {new for (old, _), new in table.items() if old in reachable}
    assert reachable == set(states)  # no dead state in either table
