"""Reading what users write, and printing it back: JSON of bounded nesting, lines of bounded
length, and names with their control characters escaped. Standard library only.

Python's JSON parser recurses once per nesting level, so a line of 100,000 ``[`` raises
``RecursionError`` deep inside it; a JSONL line of 55 MB is read whole before anything can say
it is too long. Every user file and request goes through :func:`loads` and :func:`read_lines`,
which turn both into a ``ValueError`` naming the place, before the parser or the tokenizer runs.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import IO

MAX_DEPTH = 64                 # nesting of arrays and objects; our records need 4
MAX_LINE_BYTES = 1 << 20       # a JSONL line (a request, a sample, a prediction)

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


class JSONTooDeep(ValueError):
    """JSON nested deeper than a reader accepts."""


def too_deep(text: str, max_depth: int = MAX_DEPTH) -> bool:
    """Whether ``text`` nests arrays and objects more than ``max_depth`` deep (strings ignored).

    The brackets are kept alone and innermost pairs removed a few levels at a time in C (records
    and spans go first); the little left is walked with an early exit, so a 100,000-deep line
    costs one pass over its first ``max_depth`` brackets."""
    if text.count("[") + text.count("{") <= max_depth:
        return False
    rest = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(3):
        rest = _INNERMOST.sub("", rest)
    depth = 3
    for c in rest:
        depth += 1 if c in "[{" else -1
        if depth > max_depth:
            return True
    return False


def loads(text: str, where: str, max_depth: int = MAX_DEPTH,
          object_pairs_hook: Callable[[list[tuple[str, object]]], object] | None = None) -> object:
    """``json.loads`` refusing nesting deeper than ``max_depth`` (ValueError naming ``where``).

    A syntax error is ``json.JSONDecodeError`` as usual, for the caller to word."""
    if too_deep(text, max_depth):
        raise JSONTooDeep(f"{where}: JSON nested more than {max_depth} levels deep; this is not a record "
                         "DaMO reads (check the file was written as intended)")
    return json.loads(text, object_pairs_hook=object_pairs_hook)


def read_lines(f: IO[bytes], max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, bytes)`` of a binary file, with ``None`` for a line longer than ``max_bytes``
    (read past in 1 MiB pieces, never held whole)."""
    n = 0
    while True:
        line = f.readline(max_bytes + 1)
        if not line:
            return
        n += 1
        if len(line) <= max_bytes or line.endswith(b"\n") and len(line) == max_bytes + 1:
            yield n, line
            continue
        while not line.endswith(b"\n"):
            line = f.readline(1 << 20)
            if not line:
                break
        yield n, None


def line_too_long(n: int, max_bytes: int = MAX_LINE_BYTES) -> str:
    """The message for a line :func:`read_lines` refused."""
    return f"line {n} is longer than {max_bytes:,} bytes; one request or record per line is far smaller"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` safe to print on a terminal: control characters (escape sequences, carriage returns,
    bidirectional overrides) written as ``\\x1b``-style escapes, everything else unchanged."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), str(text))
