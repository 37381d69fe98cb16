"""The config schema: line-precise errors, units, safety rules, precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from profiler import config as cfg
from profiler.cli import build_parser, main
from profiler.cli_run import effective_config, flag_overrides

GOOD = """\
listen: 127.0.0.1:7071
data_dir: /tmp/kiln-test
frequency: 49
window_seconds: 5s
retention:
  max_age: 2h
  max_bytes: 500MiB
profile:
  comms: [python3]
exporters:
  - name: collector
    type: otlp_grpc
    endpoint: 127.0.0.1:4317
    insecure: true
    bearer_token: secret-token
    filter:
      conditions: ['StackContains("^idle$")']
"""


def test_a_good_file_parses_with_units() -> None:
    c = cfg.parse(GOOD)
    assert c.frequency == 49
    assert c.window_seconds == 5.0
    assert c.retention.max_age == 7200.0
    assert c.retention.max_bytes == 500 * 2**20
    assert c.profile.comms == ("python3",)
    assert c.exporters[0].type == "otlp_grpc"
    assert c.exporters[0].filter.conditions == ('StackContains("^idle$")',)


def test_errors_name_line_column_and_path() -> None:
    text = GOOD.replace("max_age: 2h", "max_age: 2 weeks").replace("type: otlp_grpc", "type: otlp")
    text += "bogus_key: 1\n"
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse(text, "kiln.yaml")
    problems = e.value.problems
    assert "kiln.yaml:6:12: retention.max_age: '2 weeks' is not a duration" in problems[0]
    assert any(p.startswith("kiln.yaml:12:11: exporters.0.type:") for p in problems)
    assert any(p.startswith("kiln.yaml:18:12: bogus_key: Extra inputs") for p in problems)


def test_yaml_syntax_errors_have_positions() -> None:
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse("listen: [unclosed\nfrequency: 3\n", "k.yaml")
    assert e.value.problems[0].startswith("k.yaml:")
    assert e.value.problems[0].split(":")[1].isdigit()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: 0.0.0.0:7070\n", "set a token of at least 16 characters"),
        ("listen: 0.0.0.0:7070\ntoken: short\n", "set a token of at least 16 characters"),
        ("frequency: 2000\n", "above max_frequency 999"),
        ("listen: nonsense\n", "is not HOST:PORT"),
        ("profile: {comms: [a-very-long-command-name]}\n", "must be 1-15 bytes"),
        ("[1, 2]\n", "top level must be a mapping"),
        (
            "exporters: [{name: a, type: parca, endpoint: x}, {name: a, type: parca, endpoint: y}]",
            "exporter names must be unique: a",
        ),
    ],
)
def test_unsafe_or_wrong_values_are_refused(text: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as e:
        cfg.parse(text)
    assert message in str(e.value)


def test_non_loopback_with_a_long_token_is_fine() -> None:
    c = cfg.parse("listen: 0.0.0.0:7070\ntoken: 0123456789abcdef\n")
    assert c.listen == "0.0.0.0:7070"
    assert cfg.parse("listen: '[::1]:7070'\n").listen == "[::1]:7070"


def test_oversized_config_is_refused() -> None:
    with pytest.raises(cfg.ConfigError, match="larger than"):
        cfg.parse("# " + "x" * cfg.MAX_CONFIG_BYTES)


def test_digest_is_stable_and_secrets_are_redacted() -> None:
    a, b = cfg.parse(GOOD), cfg.parse(GOOD)
    assert a.digest() == b.digest()
    assert a.digest() != cfg.parse(GOOD.replace("49", "50")).digest()
    shown = a.to_yaml()
    assert "secret-token" not in shown and "<redacted>" in shown


def test_flags_win_over_the_file_and_sections_merge(tmp_path: Path) -> None:
    f = tmp_path / "kiln.yaml"
    f.write_text(GOOD)
    args = build_parser().parse_args(
        ["run", "--config", str(f), "--frequency", "99", "--retention-max-age", "1h", "--no-python"]
    )
    c = effective_config(f, flag_overrides(args))
    assert c.frequency == 99
    assert c.retention.max_age == 3600.0
    assert c.retention.max_bytes == 500 * 2**20  # kept from the file
    assert c.profile.python is False
    assert c.profile.comms == ("python3",)  # kept from the file


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text("frequency: lots\n")
    assert main(["config", "check", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["config", "check", str(bad)]) == 1
    assert f"{bad}:1:12: frequency:" in capsys.readouterr().err
    assert main(["config", "check", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
