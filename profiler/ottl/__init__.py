"""OTTL, the OpenTelemetry Collector's transformation language, for Kiln's samples.

Same grammar and semantics as the collector's `pkg/ottl`, so rules written
for a collector's filter or transform processor work here unchanged:

    drop = compile_conditions(['IsMatch(resource.attributes["service.name"], "^test-")',
                               'StackContains("^json_")'], error_mode="ignore")
    edit = compile_statements(['delete_key(attributes, "tid")',
                               'set(attributes["kernel"], true) where frames[0].kind == "kernel"'])
    if not drop.evaluate(ctx):
        edit.apply(ctx)

Modules: `grammar` (the LALR grammar, syntax errors), `parser` (tree ->
syntax nodes, the collector's grammar rules), `nodes` (the syntax tree and
`render`), `compiler` (nodes -> closures), `context` (the sample and its
paths), `converters` and `editors` (the functions), `registry` (how
functions declare parameters), `values` (comparison and conversions),
`regexes` (Go regexes, globs, templates), `goformat` (Go's Sprintf),
`literals`, `errors`, `engine` (rule sets and error_mode).
"""

from profiler.ottl.context import Frame, SampleContext
from profiler.ottl.engine import (
    ConditionSet,
    StatementSet,
    compile_condition,
    compile_conditions,
    compile_statement,
    compile_statements,
    compile_value,
)
from profiler.ottl.errors import ErrorMode, OttlError, OttlRuntimeError
from profiler.ottl.nodes import render
from profiler.ottl.parser import parse_condition, parse_statement, parse_value
from profiler.ottl.registry import functions

__all__ = [
    "ConditionSet",
    "ErrorMode",
    "Frame",
    "OttlError",
    "OttlRuntimeError",
    "SampleContext",
    "StatementSet",
    "compile_condition",
    "compile_conditions",
    "compile_statement",
    "compile_statements",
    "compile_value",
    "functions",
    "parse_condition",
    "parse_statement",
    "parse_value",
    "render",
]
