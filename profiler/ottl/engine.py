"""Compiled rule sets: `filter` conditions and `transform` statements, with error_mode.

As in the collector's filter and transform processors:

- `ConditionSet.evaluate(ctx)` is true when any condition is true (the
  filter drops the sample); conditions run in order and stop at the first
  true one;
- `StatementSet.apply(ctx)` runs every statement in order, each only when
  its `where` clause holds;
- a rule that fails while it runs follows the set's `ErrorMode`: IGNORE
  logs it and goes on with the next rule (a failed condition counts as not
  true), SILENT goes on without logging, PROPAGATE raises
  `OttlRuntimeError` so the caller drops the batch (the collector's
  default).

Compiling checks every rule; the first invalid one raises `OttlError` and
nothing is returned, so the caller keeps the rules it had.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from profiler.ottl.compiler import Compiler, Predicate
from profiler.ottl.context import ENUMS, SampleContext
from profiler.ottl.errors import ErrorMode, OttlError, OttlRuntimeError
from profiler.ottl.parser import (
    parse_condition,
    parse_statement,
    parse_value,
    too_deep_is_an_error,
)
from profiler.ottl.registry import functions

log = logging.getLogger("kiln.ottl")
T = TypeVar("T")

# IGNORE logs a failing rule's first error, then at most one line per interval.
LOG_INTERVAL_S = 60.0


@dataclass(slots=True)
class _Rule:
    text: str
    run: Callable[[SampleContext], object]
    errors: int = 0
    last_logged: float = field(default=float("-inf"))
    suppressed: int = 0


class _RuleSet:
    kind = "rule"

    def __init__(
        self,
        rules: list[_Rule],
        error_mode: ErrorMode,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rules = rules
        self.error_mode = error_mode
        self._clock = clock

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def rules(self) -> list[str]:
        return [r.text for r in self._rules]

    @property
    def error_counts(self) -> dict[str, int]:
        """Run-time failures per rule since compilation (for /metrics)."""
        return {r.text: r.errors for r in self._rules}

    def _failed(self, rule: _Rule, error: Exception) -> None:
        rule.errors += 1
        reason = error.reason if isinstance(error, OttlRuntimeError) else f"{error}"
        if not isinstance(error, OttlRuntimeError):
            reason = f"{type(error).__name__}: {reason}"
        mode = self.error_mode
        if mode is ErrorMode.PROPAGATE:
            raise OttlRuntimeError(f"failed to execute {self.kind}: {reason}", rule.text) from error
        if mode is ErrorMode.SILENT:
            return
        now = self._clock()
        if now - rule.last_logged < LOG_INTERVAL_S:
            rule.suppressed += 1
            return
        more = f" ({rule.suppressed} more since the last report)" if rule.suppressed else ""
        log.warning("failed to execute %s: %s; rule: %s%s", self.kind, reason, rule.text, more)
        rule.last_logged = now
        rule.suppressed = 0


class ConditionSet(_RuleSet):
    """Filter conditions: `evaluate(ctx)` is true when the sample should be dropped."""

    kind = "condition"

    def __init__(
        self,
        rules: list[_Rule],
        error_mode: ErrorMode,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rules, error_mode, clock)
        self._any = _any_of([r.run for r in rules])

    def evaluate(self, ctx: SampleContext) -> bool:
        # Conditions have no side effects, so the common case runs them as one
        # `or`, and only a failure re-runs them one by one for error_mode.
        try:
            return self._any(ctx)
        except Exception:
            return self._one_by_one(ctx)

    def _one_by_one(self, ctx: SampleContext) -> bool:
        for rule in self._rules:
            try:
                if rule.run(ctx):
                    return True
            except Exception as e:
                self._failed(rule, e)
        return False


class StatementSet(_RuleSet):
    """Transform statements: `apply(ctx)` edits the sample in place."""

    kind = "statement"

    def __init__(
        self,
        rules: list[_Rule],
        error_mode: ErrorMode,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rules, error_mode, clock)
        self._runs = tuple(r.run for r in rules)

    def apply(self, ctx: SampleContext) -> None:
        for run in self._runs:
            try:
                run(ctx)
            except Exception as e:
                self._failed(self._rules[self._runs.index(run)], e)


def _any_of(runs: list[Callable[[SampleContext], object]]) -> Callable[[SampleContext], bool]:
    if not runs:
        return lambda ctx: False
    if len(runs) == 1:
        (a,) = runs
        return lambda ctx: bool(a(ctx))
    if len(runs) <= 6:
        padded = runs + [lambda ctx: False] * (6 - len(runs))
        a, b, c, d, e, f = padded
        return lambda ctx: bool(a(ctx) or b(ctx) or c(ctx) or d(ctx) or e(ctx) or f(ctx))
    return lambda ctx: any(r(ctx) for r in runs)


def _mode(error_mode: ErrorMode | str) -> ErrorMode:
    return error_mode if isinstance(error_mode, ErrorMode) else ErrorMode.parse(error_mode)


def compile_condition(text: str) -> Predicate:
    """One filter condition as a predicate; raises OttlError if it is not valid."""
    compiler = Compiler(text, functions(), ENUMS)
    node = parse_condition(text)
    with too_deep_is_an_error(text):
        predicate, _ = compiler.condition(node)
    return predicate


def compile_value(text: str) -> Callable[[SampleContext], object]:
    """One value (a path, literal, math or converter call) as a getter of the sample."""
    compiler = Compiler(text, functions(), ENUMS)
    node = parse_value(text)
    with too_deep_is_an_error(text):
        return compiler.value(node).get


def compile_statement(text: str) -> Callable[[SampleContext], None]:
    """One transform statement as a function of the sample; raises OttlError if invalid."""
    compiler = Compiler(text, functions(), ENUMS)
    node = parse_statement(text)
    with too_deep_is_an_error(text):
        return compiler.statement(node)


def compile_conditions(
    conditions: Sequence[str],
    error_mode: ErrorMode | str = ErrorMode.PROPAGATE,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> ConditionSet:
    """Compile filter conditions; the first invalid one raises OttlError."""
    if isinstance(conditions, str):
        raise TypeError("compile_conditions takes a list of conditions, not one string")
    mode = _mode(error_mode)
    rules = [
        _Rule(text, _numbered(i, text, compile_condition)) for i, text in enumerate(conditions)
    ]
    return ConditionSet(rules, mode, clock)


def compile_statements(
    statements: Sequence[str],
    error_mode: ErrorMode | str = ErrorMode.PROPAGATE,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> StatementSet:
    """Compile transform statements; the first invalid one raises OttlError."""
    if isinstance(statements, str):
        raise TypeError("compile_statements takes a list of statements, not one string")
    mode = _mode(error_mode)
    rules = [
        _Rule(text, _numbered(i, text, compile_statement)) for i, text in enumerate(statements)
    ]
    return StatementSet(rules, mode, clock)


def _numbered(index: int, text: str, build: Callable[[str], T]) -> T:
    try:
        return build(text)
    except OttlError as e:
        raise OttlError(
            f"rule {index + 1}: {e.reason}",
            rule=text,
            line=e.line,
            column=e.column,
            expected=e.expected,
        ) from None
