"""Collapsed-stack writer and parser."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from symbolizer import folded
from symbolizer.profile import Frame, FrameKind, Profile

MAIN = Frame("main")
WORK = Frame("work")
READ = Frame("read")
SYS_READ = Frame("ksys_read", kind=FrameKind.KERNEL)
HANDLER = Frame("handler", kind=FrameKind.PYTHON)


def sample_profile() -> Profile:
    p = Profile()
    p.add([WORK, MAIN], 2, [("pid", "1")])
    p.add([WORK, MAIN], 3, [("pid", "2")])  # same stack, other labels: one line
    p.add([SYS_READ, READ, WORK, MAIN], 4)
    p.add([HANDLER, MAIN], 1)
    p.add([Frame("work", 0x99), MAIN], 1)  # another location, same names: same line
    p.add([], 7)
    return p


def test_dumps_golden() -> None:
    assert folded.dumps(sample_profile()) == (
        "[unknown] 7\nmain;handler_[py] 1\nmain;work 6\nmain;work;read;ksys_read_[k] 4\n"
    )


def test_write_matches_dumps() -> None:
    buf = io.StringIO()
    folded.write(sample_profile(), buf)
    assert buf.getvalue() == folded.dumps(sample_profile())


def test_empty_profile_writes_nothing() -> None:
    assert folded.dumps(Profile()) == ""


def test_unsafe_names_are_made_safe() -> None:
    p = Profile()
    p.add([Frame("a;b\nc"), Frame("  padded \r\n"), Frame("")], 1)
    assert folded.dumps(p) == "[unknown];padded;a:b c 1\n"


def test_kind_suffixes_round_trip() -> None:
    for kind in FrameKind:
        shown = folded.display_name("f", kind)
        assert folded.split_display_name(shown) == ("f", kind)
    assert folded.display_name("f", FrameKind.NATIVE) == "f"
    # Other stackcollapse annotations are not kinds Kiln knows: they stay in the name.
    assert folded.split_display_name("Interpreter_[j]") == ("Interpreter_[j]", FrameKind.NATIVE)


def test_parse() -> None:
    text = "main;work;read;ksys_read_[k] 4\nmain;handler_[py] 1\n\nmain;work 2\r\nmain;work 3\n"
    p = folded.parse(text)
    assert p.total_samples == 10
    got = {
        tuple((fn.name, loc.kind) for fn, loc in frames): n for frames, _labels, n in p.samples()
    }
    assert got == {
        (
            ("ksys_read", FrameKind.KERNEL),
            ("read", FrameKind.NATIVE),
            ("work", FrameKind.NATIVE),
            ("main", FrameKind.NATIVE),
        ): 4,
        (("handler", FrameKind.PYTHON), ("main", FrameKind.NATIVE)): 1,
        (("work", FrameKind.NATIVE), ("main", FrameKind.NATIVE)): 5,
    }
    assert p.comments == []


def test_parse_accepts_bytes_and_names_with_spaces() -> None:
    p = folded.parse(b"main;operator new(unsigned long)\t12\n")
    ((frames, _, n),) = list(p.samples())
    assert [fn.name for fn, _ in frames] == ["operator new(unsigned long)", "main"]
    assert n == 12


def test_parse_skips_and_counts_bad_lines() -> None:
    text = "main;work 3\nno count here\nmain;work -2\nmain 1.5\n  7\nmain 1\n"
    result = folded.parse_report(text)
    assert [n for n, _ in result.skipped] == [2, 3, 4, 5]
    assert result.profile.total_samples == 4
    p = folded.parse(text)
    assert p.total_samples == 4
    assert p.comments == ["folded: skipped 4 malformed line(s), first at line 2"]


def test_parse_rejects_text_with_no_stacks() -> None:
    with pytest.raises(folded.FoldedFormatError, match="collapsed-stack format"):
        folded.parse("this is not\na folded file\n")


def test_parse_empty_text() -> None:
    assert folded.parse("").total_samples == 0
    assert folded.parse("\n\n").total_samples == 0


def test_zero_count_line_parses_but_adds_nothing() -> None:
    result = folded.parse_report("main 0\n")
    assert result.skipped == []
    assert result.profile.total_samples == 0


_names = st.one_of(
    st.sampled_from(["main", "f", "g", "", " ", "a;b", "x\ny", "op()"]),
    st.text(st.characters(blacklist_categories=["Cs"]), max_size=6),
)
_frames = st.builds(Frame, function=_names, kind=st.sampled_from(FrameKind))
_stacks = st.lists(
    st.tuples(
        st.lists(_frames, max_size=5),
        st.integers(0, 10**9),
        st.lists(st.tuples(st.sampled_from(["pid", "comm"]), st.sampled_from(["1", "2"]))),
    ),
    max_size=10,
)


@given(_stacks)
def test_round_trip(stacks: list[tuple[list[Frame], int, list[tuple[str, str]]]]) -> None:
    p = Profile()
    for frames, n, labels in stacks:
        p.add(frames, n, labels)
    text = folded.dumps(p)
    lines = text.splitlines()
    assert lines == sorted(lines)
    assert len(lines) == len(set(line.rpartition(" ")[0] for line in lines))
    assert text.count("\n") == len(lines)
    result = folded.parse_report(text)
    assert result.skipped == []
    assert result.profile.total_samples == p.total_samples
    assert folded.dumps(result.profile) == text
