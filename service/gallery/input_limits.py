"""What a client may store as a name or as metadata: checked before anything is written (the API's
bodies and imported archives alike).

Everything stored must come back out as JSON on every later read, so only values that do are
accepted: valid Unicode (no lone UTF-16 surrogates), finite numbers (no NaN/Infinity), integers
within 64 bits, bounded nesting, key count and size. Names are shown in lists, logs and terminals,
so control characters (NUL, CR/LF, ESC of ANSI escapes, …), line/paragraph separators and bidi
overrides are rejected rather than stripped: a client never gets back a name it did not send.

The limits are fixed, not settings: a gallery must stay readable by every deployment that opens it.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterator
from typing import Any

MAX_NAME_CHARS = 256
MAX_METADATA_BYTES = 16 * 1024  # compact UTF-8 JSON
MAX_METADATA_DEPTH = 8  # the metadata object itself is depth 1
MAX_METADATA_KEYS = 256  # across all nested objects
MAX_METADATA_KEY_CHARS = 256
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Bidirectional formatting characters (ALM, LRM, RLM, embeddings, overrides, isolates): they
# reorder how a name is displayed (the "Trojan Source" trick).
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Unicode categories refused in names: controls, surrogates, line and paragraph separators.
_REFUSED_NAME_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def unicode_problem(text: str) -> str | None:
    """Why ``text`` can't be encoded as UTF-8 (a lone surrogate), or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode: lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}"
    return None


def check_name(name: str) -> str:
    """``name`` unchanged, or ValueError saying which character is refused and where."""
    problem = unicode_problem(name)
    if problem is not None:
        raise ValueError(problem)
    for position, char in enumerate(name):
        if char in _BIDI_CONTROLS:
            raise ValueError(
                f"bidi control character U+{ord(char):04X} at position {position} is not allowed"
            )
        if unicodedata.category(char) in _REFUSED_NAME_CATEGORIES:
            raise ValueError(f"control character U+{ord(char):04X} at position {position} is not allowed")
    return name


def walk_json(root: object, name: str = "metadata") -> Iterator[tuple[str, object, int]]:
    """Every value of a JSON-like tree (the root at depth 1) with its path, iteratively: no recursion.

    Lazy: a consumer that stops (or raises) at a value never makes the walk descend below it.
    """
    stack: list[tuple[str, object, int]] = [(name, root, 1)]
    while stack:
        path, value, depth = stack.pop()
        yield path, value, depth
        if isinstance(value, dict):
            stack.extend((f"{path}.{key}", item, depth + 1) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` unchanged, or ValueError naming the first offending path and why.

    Stops as soon as a limit is passed, so a huge or deeply nested body costs no more than the
    limits allow.
    """
    keys = 0
    size = 0  # a lower bound of the JSON size while walking; the exact size is checked at the end
    for path, value, depth in walk_json(metadata):
        size += 1
        if size > MAX_METADATA_BYTES:
            break
        if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
            raise ValueError(f"{path}: nested more than {MAX_METADATA_DEPTH} levels deep")
        if isinstance(value, dict):
            keys += len(value)
            if keys > MAX_METADATA_KEYS:
                raise ValueError(f"more than {MAX_METADATA_KEYS} keys in all (objects nested included)")
            for key in value:
                _check_key(path, key)
                size += len(key)
        elif not isinstance(value, list):
            size += _check_scalar(path, value)
    if size > MAX_METADATA_BYTES or _json_size(metadata) > MAX_METADATA_BYTES:
        raise ValueError(f"larger than {MAX_METADATA_BYTES} bytes as compact UTF-8 JSON")
    return metadata


def _check_key(path: str, key: object) -> None:
    if not isinstance(key, str):  # JSON keys always are; a defence for callers in Python
        raise ValueError(f"{path}: keys must be strings")
    problem = unicode_problem(key)
    if problem is not None:
        raise ValueError(f"{path}: key {problem}")
    if len(key) > MAX_METADATA_KEY_CHARS:
        raise ValueError(f"{path}: a key is longer than {MAX_METADATA_KEY_CHARS} characters")


def _check_scalar(path: str, value: object) -> int:
    """The scalar's length as a lower bound of its JSON size, or ValueError when it can't be stored."""
    if value is None or isinstance(value, bool):
        return 4
    if isinstance(value, str):
        problem = unicode_problem(value)
        if problem is not None:
            raise ValueError(f"{path}: {problem}")
        return len(value)
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{path}: integer outside the 64-bit range")
        return 1
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value} is not a JSON number (NaN and Infinity are refused)")
        return 1
    raise ValueError(f"{path}: {type(value).__name__} is not a JSON value")


def _json_size(metadata: dict[str, Any]) -> int:
    return len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())
