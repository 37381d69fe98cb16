"""OTTL's errors and the collector's `error_mode`.

`OttlError` is raised while a rule is parsed or compiled: the rule is
rejected before it runs, so a config reload can keep the previous rules.
`OttlRuntimeError` is raised while a compiled rule runs on a sample; what
happens to it is the rule set's `ErrorMode`.
"""

from __future__ import annotations

import enum

from profiler.errors import KilnError


class OttlError(KilnError):
    """A rule that does not parse or compile; names where and what was expected."""

    def __init__(
        self,
        message: str,
        *,
        rule: str = "",
        line: int = 0,
        column: int = 0,
        expected: tuple[str, ...] = (),
    ) -> None:
        where = f"line {line} column {column}: " if line else ""
        want = f" (expected {', '.join(expected)})" if expected else ""
        text = f"{where}{message}{want}"
        if rule:
            text = f"{text}\n  in rule: {rule}"
        super().__init__(text, "fix the rule; the rules loaded before stay in force")
        self.line = line
        self.column = column
        self.expected = expected
        self.rule = rule
        self.reason = message


class OttlRuntimeError(KilnError):
    """A compiled rule failed on one sample (wrong type, missing index, divide by 0...)."""

    def __init__(self, message: str, rule: str = "") -> None:
        text = f"{message}\n  in rule: {rule}" if rule else message
        super().__init__(text, "guard the rule with a where clause, or set error_mode: ignore")
        self.reason = message
        self.rule = rule


class ErrorMode(enum.Enum):
    """What a rule set does when a rule fails at run time (as in the collector).

    IGNORE logs the error and goes on with the next rule; SILENT goes on
    without logging; PROPAGATE raises, so the caller drops the whole batch.
    """

    IGNORE = "ignore"
    SILENT = "silent"
    PROPAGATE = "propagate"

    @classmethod
    def parse(cls, text: str) -> ErrorMode:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise OttlError(
                f"unknown error_mode {text!r}", expected=tuple(m.value for m in cls)
            ) from None
