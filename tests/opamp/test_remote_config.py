"""Remote config: validation with line/column, precedence, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler import config as cfg
from profiler.cli_run import effective_config
from profiler.opamp import RemoteConfigError, layered, restore, validate
from profiler.opamp.remote_config import (
    RemoteConfigManager,
    RemoteConfigStore,
    store_for,
    yaml_of,
)
from profiler.opamp.state import Remote
from profiler.opamp.wire import pb
from tests.opamp.conftest import composer, local_config


def files(**bodies: tuple[str, str]) -> pb.AgentConfigMap:
    return pb.AgentConfigMap(
        config_map={
            name: pb.AgentConfigFile(body=body.encode(), content_type=ctype)
            for name, (body, ctype) in bodies.items()
        }
    )


def test_yaml_file_is_picked_by_name_and_content_type() -> None:
    assert yaml_of(pb.AgentConfigMap()) == ("", "")
    assert yaml_of(files(other=("a: 1", "application/yaml"))) == ("other", "a: 1")
    two = files(**{"kiln.yaml": ("frequency: 9", "text/yaml"), "x.json": ("{}", "text/json")})
    assert yaml_of(two) == ("kiln.yaml", "frequency: 9")
    with pytest.raises(RemoteConfigError, match="Kiln takes one file"):
        yaml_of(files(a=("", ""), b=("", "")))
    with pytest.raises(RemoteConfigError, match="not YAML"):
        yaml_of(files(**{"kiln.yaml": ("", "application/json")}))
    bad = pb.AgentConfigMap(config_map={"kiln.yaml": pb.AgentConfigFile(body=b"\xff\xfe")})
    with pytest.raises(RemoteConfigError, match="not UTF-8"):
        yaml_of(bad)


def test_empty_remote_config_means_the_local_config(tmp_path: Path) -> None:
    local = local_config(tmp_path)
    layer, config = validate("", composer(local))
    assert layer == {} and config == local


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("profile:\n  pids: [1, two]\n",
         "kiln.yaml:2:13: profile.pids.1: Input should be a valid integer"),
        ("profile:\n  comms: [this-name-is-too-long]\n",
         "kiln.yaml:2:10: profile.comms: command name 'this-name-is-too-long' must be 1-15"),
        ("exporters:\n  - name: a\n    type: kafka\n    endpoint: x\n",
         "kiln.yaml:3:11: exporters.0.type: Input should be"),
        ("exporters:\n  - {name: a, type: parca, endpoint: x}\n"
         "  - {name: a, type: parca, endpoint: y}\n",
         "kiln.yaml:2:3: exporters: exporter names must be unique: a"),
        ("profile:\n  bogus: 1\n", "kiln.yaml:2:10: profile.bogus: Extra inputs are not permitted"),
        ("- 1\n", "kiln.yaml:1:1: the top level must be a mapping"),
        ("a: [" + "[" * 5000 + "\n", "kiln.yaml"),
        ("exporters:\n  - name: a\n    type: parca\n    endpoint: x\n    transform:\n"
         "      statements: ['set(attributes[\"x\"], 1)', 'set(frames, 1)']\n",
         "kiln.yaml:6:47: exporters.0.transform.statements.1: invalid OTTL (exporter 'a'): "
         "line 1 column 5: rule 2: path frames is read-only"),
    ],
)  # fmt: skip
def test_every_problem_is_refused_at_its_line_and_column(
    tmp_path: Path, text: str, error: str
) -> None:
    local = local_config(tmp_path)
    with pytest.raises(RemoteConfigError) as e:
        validate(text, composer(local), kernel_ceiling=1000)
    assert str(e.value).startswith(error), str(e.value)


def test_exporter_endpoint_problems_are_refused_before_applying(tmp_path: Path) -> None:
    local = local_config(tmp_path)
    text = (
        "exporters:\n  - name: c\n    type: otlp_grpc\n    endpoint: localhost:4317\n"
        f"    ca_file: {tmp_path}/missing-ca.pem\n"
    )
    with pytest.raises(RemoteConfigError, match=r"^kiln.yaml:4:15: exporters.c.endpoint: "):
        validate(text, composer(local))


def test_invalid_local_rule_is_named_as_local(tmp_path: Path) -> None:
    bad = {"name": "c", "type": "parca", "endpoint": "x", "filter": {"conditions": ["nope("]}}
    local = local_config(tmp_path, exporters=[bad])
    with pytest.raises(RemoteConfigError, match=r"^local config: exporters.0.filter.conditions.0"):
        validate("frequency: 29\n", composer(local))


def test_precedence_defaults_file_remote_flags(tmp_path: Path) -> None:
    path = tmp_path / "kiln.yaml"
    path.write_text(
        f"data_dir: {tmp_path}\nfrequency: 29\nwindow_seconds: 5s\n"
        "profile:\n  kernel_stacks: false\n  comms: [nginx]\n"
    )
    remote = {"frequency": 49, "window_seconds": "3s", "profile": {"comms": ["redis"]}}
    flags = {"frequency": 99}
    got = effective_config(path, flags, remote)
    assert got.frequency == 99  # flags beat remote
    assert got.window_seconds == 3  # remote beats the file
    assert got.profile.comms == ("redis",)  # and merges into its section
    assert got.profile.kernel_stacks is False  # the file's key the remote left alone
    assert got.max_frequency == 999  # defaults under everything
    assert effective_config(path, flags) == effective_config(path, flags, {})
    file_only = cfg.load(path)
    assert layered(file_only, remote, flags) == got


def test_remote_value_overridden_by_a_flag_is_still_applied(tmp_path: Path) -> None:
    local = local_config(tmp_path)
    layer, config = validate("frequency: 49\n", composer(local, {"frequency": 99}))
    assert layer == {"frequency": 49} and config.frequency == 99


def test_store_round_trip_and_torn_write(tmp_path: Path) -> None:
    store = RemoteConfigStore(tmp_path / "opamp")
    assert store.load() is None
    store.save("frequency: 49\n", b"\x01\x02")
    assert store.load() == ("frequency: 49\n", b"\x01\x02")
    store.body_path.write_text("frequency: 59\n")  # as if the hash write never happened
    assert store.load() == ("frequency: 59\n", b"")
    store.hash_path.write_text("garbage")
    assert store.load() == ("frequency: 59\n", b"")


def test_restore_gives_the_saved_config_or_says_why_not(tmp_path: Path) -> None:
    local = local_config(tmp_path)
    assert restore(local, composer(local)) is None
    store_for(local).save("frequency: 49\n", b"h")
    ok = restore(local, composer(local))
    assert ok is not None and ok.config is not None and ok.config.frequency == 49
    assert ok.layer == {"frequency": 49} and ok.config_hash == b"h"
    store_for(local).save("frequency: 49\n", b"h")
    refused = restore(local, composer(local), kernel_ceiling=lambda: 40)
    assert refused is not None and refused.config is None
    assert "kernel.perf_event_max_sample_rate" in refused.error


def state(m: RemoteConfigManager) -> Remote:
    return m.state  # read afresh: the calls above change it


def test_manager_one_offer_at_a_time(tmp_path: Path) -> None:
    local = local_config(tmp_path)
    requested: list[cfg.KilnConfig] = []
    m = RemoteConfigManager(
        request=requested.append, compose=composer(local), store=None, kernel_ceiling=lambda: None
    )

    def offer(text: str, h: bytes) -> None:
        m.offer(pb.AgentRemoteConfig(
            config=files(**{"kiln.yaml": (text, "text/yaml")}), config_hash=h))  # fmt: skip

    assert m.status() is None
    offer("frequency: 29\n", b"a")
    assert m.state is Remote.APPLYING and len(requested) == 1
    offer("frequency: 39\n", b"b")
    offer("frequency: 1000\n", b"c")  # waits; only the newest is kept
    assert len(requested) == 1 and m.layer() == {"frequency": 29}
    m.applied(requested[0], None)
    assert state(m) is Remote.FAILED and m.config_hash == b"c"
    assert m.good_layer == {"frequency": 29}
    status = m.status()
    assert status is not None and status.status == pb.RemoteConfigStatuses_FAILED
    assert "above the ceiling of 199 Hz" in status.error_message
    offer("frequency: 1000\n", b"c")  # the same refused offer again: nothing new
    assert state(m) is Remote.FAILED and len(requested) == 1
    # A reload (SIGHUP) applied something else first: ours is queued again.
    offer("frequency: 49\n", b"d")
    m.applied(local, None)
    assert state(m) is Remote.APPLYING and requested[-1].frequency == 49
    m.applied(requested[-1], None)
    assert state(m) is Remote.APPLIED and m.layer() == {"frequency": 49}
