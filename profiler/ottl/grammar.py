"""OTTL's grammar as an LALR(1) lark grammar, and syntax errors with positions.

The collector parses OTTL with participle, a PEG-style parser that tries
alternatives in order (`pkg/ottl/grammar.go`). LALR cannot try and back
off, so this grammar is a superset written as ordinary operator precedence:
`or` < `and` < `not` < comparison < `+ -` < `* /` < unary sign < atoms.
`parser.py` then checks each node against the collector's rules (a
condition is a comparison, `true`/`false`, a converter or a parenthesized
condition; math takes only numbers, paths and converters; and so on), so
the language accepted is the collector's while the parser stays LALR.

Tokens follow the collector's lexer: identifiers are letters, digits and
`_` starting with a letter; integers carry no sign (a sign is the unary
operator); floats need a dot; byte literals are `0x` and hex digits;
strings are double-quoted with Go escapes; whitespace is Go's `\\s`.
"""

from __future__ import annotations

import functools

import lark
from lark import Lark, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from profiler.ottl.errors import OttlError

GRAMMAR = r"""
statement: invocation (_WHERE or_expr)?
condition: or_expr
value: or_expr

?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: NOT comparison -> negation
         | comparison
?comparison: sum (COMP_OP sum)?
?sum: product (ADD_OP product)*
?product: unary (MUL_OP unary)*
?unary: ADD_OP atom -> signed
      | atom
?atom: INT -> int_lit
     | FLOAT -> float_lit
     | STRING -> string_lit
     | BYTES -> bytes_lit
     | TRUE -> true_lit
     | FALSE -> false_lit
     | NIL -> nil_lit
     | path
     | invocation
     | LPAR or_expr ")" -> paren
     | LSQB [or_expr ("," or_expr)*] "]" -> list
     | LBRACE (map_item ","?)* "}" -> map

map_item: STRING ":" or_expr
invocation: NAME "(" [argument ("," argument)*] ")" key*
?argument: NAME "=" or_expr -> named_arg
         | or_expr
path: field ("." field)*
field: NAME key*
key: "[" or_expr "]"

_WHERE: "where"
_AND: "and"
_OR: "or"
NOT: "not"
TRUE: "true"
FALSE: "false"
NIL: "nil"
LPAR: "("
LSQB: "["
LBRACE: "{"
NAME: /[A-Za-z][A-Za-z0-9_]*/
BYTES.4: /0x[a-fA-F0-9]+/
FLOAT.3: /(\d+\.\d*|\d*\.\d+)([eE][-+]?\d+)?/
INT.2: /\d+/
STRING: /"(\\.|[^\\"])*"/
COMP_OP: /==|!=|<=|>=|<|>/
ADD_OP: /[+-]/
MUL_OP: /[*\/]/

%ignore /[ \t\n\f\r]+/
"""

# Names for lark's terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "NAME": "identifier",
    "INT": "integer",
    "FLOAT": "float",
    "STRING": "string",
    "BYTES": "bytes (0x...)",
    "COMP_OP": "comparison operator",
    "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*' or '/'",
    "NOT": "'not'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "NIL": "'nil'",
    "_WHERE": "'where'",
    "_AND": "'and'",
    "_OR": "'or'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "DOT": "'.'",
    "COLON": "':'",
    "EQUAL": "'='",
    "$END": "end of rule",
}


@functools.cache
def _parser() -> Lark:
    # Built once per process: lark's LALR table construction takes tens of ms.
    return Lark(
        GRAMMAR,
        parser="lalr",
        lexer="contextual",
        start=["statement", "condition", "value"],
        propagate_positions=True,
        maybe_placeholders=False,
    )


def parse_tree(text: str, start: str) -> Tree[lark.Token]:
    """Parse `text` as a "statement", "condition" or "value"; syntax errors become OttlError."""
    try:
        return _parser().parse(text, start=start)
    except UnexpectedInput as e:
        raise _syntax_error(text, e) from None


def _syntax_error(text: str, e: UnexpectedInput) -> OttlError:
    expected: set[str] = set()
    if isinstance(e, UnexpectedToken):
        expected = set(e.accepts or e.expected)
        tok = e.token
        found = "end of rule" if tok.type == "$END" else repr(str(tok))
        line, column = e.line, e.column
        if tok.type == "$END":
            line, column = _end_position(text)
    elif isinstance(e, UnexpectedCharacters):
        expected = set(e.allowed)
        at = e.pos_in_stream or 0
        found = repr(text[at]) if at < len(text) else "end of rule"
        line, column = e.line, e.column
    elif isinstance(e, UnexpectedEOF):
        expected = set(e.expected)
        found = "end of rule"
        line, column = _end_position(text)
    else:  # pragma: no cover - lark raises only the three kinds above
        found, line, column = "input", 0, 0
    names = sorted({_TERMINAL_NAMES.get(t, t.lower()) for t in expected})
    return OttlError(
        f"syntax error: unexpected {found}",
        rule=text,
        line=max(line, 1),
        column=max(column, 1),
        expected=tuple(names),
    )


def _end_position(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines), len(lines[-1]) + 1
