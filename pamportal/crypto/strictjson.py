"""Strict JSON parsing shared by the uploaded formats (licence, joining bundle): no
duplicate keys, no NaN/Infinity, and nesting bounded before the recursive parser runs.
Each format turns these into its own refusal codes and messages."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def refuse_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def too_deep(text: str, limit: int) -> bool:
    """Whether ``text`` nests deeper than ``limit``, found in one linear pass."""
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def loads(text: str) -> Any:
    """``json.loads`` that raises DuplicateKey for a repeated key and ValueError for
    NaN/Infinity (call ``too_deep`` first)."""
    return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=refuse_constant)
