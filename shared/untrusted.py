"""Reading a JSON document that someone else wrote: a study file, a queue message.

Python's `json` is lenient where a validator downstream cannot help: it accepts `NaN` and
`Infinity` (and turns `1e999` into infinity), keeps the last of two equal keys silently, returns
strings with unpaired surrogates that fail later when encoded, and raises `RecursionError` (not
`ValueError`) on deep nesting. `load_json` refuses all of these with a `BadInputError` of one line
that names the JSON path, so that every caller has one exception to handle.

Nesting is bounded before `json.loads` runs, by counting brackets outside strings: cheap (two
regular-expression passes and a loop over the brackets only) and independent of the recursion limit
of the thread that parses.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from shared.errors import BadInputError

MAX_DEPTH = 32  # a study file nests 5 levels deep, a job message 4
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DUPLICATE = object()  # a key no JSON document can hold: marks an object that repeated a key


def load_json(data: str | bytes, where: str, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """The value of a JSON document of at most `max_bytes` UTF-8 bytes, checked as above.

    Raises:
        BadInputError: with `where` as the path for a document-level problem (size, encoding,
            syntax, depth) and the JSON path of the value for a value-level one.
    """
    text = _text(data, where, max_bytes)
    if _depth_exceeds(text, max_depth):
        raise BadInputError(f"nested deeper than {max_depth} levels", where)
    try:
        value = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}", where) from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4300 digits; nesting missed above
        raise BadInputError(f"invalid JSON: {str(exc).split(':')[0]}", where) from None
    problem = _first_problem(value)
    if problem:
        raise BadInputError(problem[1], problem[0] or where)
    return value


def _text(data: str | bytes, where: str, max_bytes: int) -> str:
    """`data` as text: UTF-8 (a byte-order mark is dropped), at most `max_bytes` long."""
    size = len(data) if isinstance(data, bytes) or len(data) > max_bytes else len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise BadInputError(f"larger than the limit of {max_bytes} bytes", where)
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start}", where) from None


def _depth_exceeds(text: str, max_depth: int) -> bool:
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    depth = 0
    for bracket in brackets:
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            return True
    return False


def _object(pairs: list[tuple[str, Any]]) -> dict[Any, Any]:
    obj: dict[Any, Any] = dict(pairs)
    if len(obj) < len(pairs):
        seen: set[str] = set()
        obj[_DUPLICATE] = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
    return obj


def _first_problem(value: Any) -> tuple[str, str] | None:
    """(JSON path, reason) of the first value, in document order, that no validator should meet."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        reason = _problem(item)
        if reason:
            return path, reason
        if isinstance(item, dict):
            if _DUPLICATE in item:
                return _join(path, item[_DUPLICATE]), "this key appears twice in the same object"
            stack.extend((_join(path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{index}]", child) for index, child in reversed(list(enumerate(item))))
    return None


def _problem(item: Any) -> str | None:
    if isinstance(item, float) and not math.isfinite(item):
        return f"{json.dumps(item)} is not a number JSON allows"
    if isinstance(item, str) and not _encodable(item):
        return "the text holds an unpaired surrogate (\\ud800-\\udfff escape)"
    if isinstance(item, dict) and not all(_encodable(key) for key in item if isinstance(key, str)):
        return "a key holds an unpaired surrogate (\\ud800-\\udfff escape)"
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
