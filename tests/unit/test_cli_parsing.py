from __future__ import annotations

import pytest

from profiler import cli
from profiler.errors import UsageError
from profiler.kernel_headers import find_headers, headers_release
from profiler.preflight import effective_caps


def test_output_format_from_suffix() -> None:
    assert cli.output_format("x.pb.gz") == "pprof"
    assert cli.output_format("dir/x.folded") == "folded"
    with pytest.raises(UsageError, match=r"pb\.gz"):
        cli.output_format("x.txt")


def test_bad_arguments_give_status_2_and_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["record", "-o", "x.txt"]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the output format" in err and "fix:" in err
    assert cli.main(["record", "-F", "0", "-o", "x.pb.gz"]) == 2
    assert "outside 1.." in capsys.readouterr().err


def test_top_on_missing_file_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["top", "/nonexistent.pb.gz"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_top_on_garbage_is_a_clear_error(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    assert cli.main(["top", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "does not decompress" in err and "fix:" in err and "Traceback" not in err


def test_headers_release_and_fallback(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hdr = tmp_path / "usr/src/linux-headers-6.1.0-9-amd64"
    (hdr / "include").mkdir(parents=True)
    mods = tmp_path / "lib/modules/6.18.1"
    mods.mkdir(parents=True)
    (mods / "build").symlink_to(hdr)
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    assert headers_release(str(mods / "build")) == "6.1.0-9-amd64"
    info = find_headers(str(tmp_path / "lib/modules"), running="6.18.1")
    assert info.fallback and "fallback" in info.describe()
    with pytest.raises(Exception, match="no kernel headers"):
        find_headers(str(tmp_path / "lib/modules"), running="9.9")


def test_effective_caps() -> None:
    assert effective_caps("Name:\tx\nCapEff:\t000001ffffffffff\n") == 0x1FFFFFFFFFF
    assert effective_caps("garbage") == 0
