"""Strict JSON parsing shared by the uploaded formats (licence, joining bundle) and the
cluster setup API: no duplicate keys, no NaN/Infinity, no number too large to hold,
only text that is valid Unicode without NUL (keys and values), and nesting bounded
before the recursive parser runs. Each format turns these into its own refusal codes
and messages."""

from __future__ import annotations

import json
import math
from typing import Any


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class BadText(ValueError):
    """A string (``where`` says which: a field name or the value of a field) that is
    not valid Unicode text: ``problem`` is ``"lone_surrogate"`` (a \\uD800-\\uDFFF
    escape without its pair) or ``"nul_character"`` (\\u0000)."""

    def __init__(self, problem: str, where: str):
        super().__init__(f"{problem} in {where}")
        self.problem = problem
        self.where = where


class NumberTooLarge(ValueError):
    """An integer longer than MAX_INT_DIGITS digits, or a number beyond float range."""


# No format we read carries a number anywhere near this long; Python would refuse
# beyond 4300 digits anyway, after spending quadratic time on it.
MAX_INT_DIGITS = 64
LONE_SURROGATE, NUL_CHARACTER = "lone_surrogate", "nul_character"


def text_problem(text: str) -> str | None:
    """Why ``text`` is not storable text (lone surrogate, NUL), or None."""
    if "\x00" in text:
        return NUL_CHARACTER
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE
    return None


def _shown(key: str) -> str:
    """A field name to show in a message: only when it is clean, and short."""
    return f'the field "{key[:64]}"' if text_problem(key) is None else "a field"


def check_text(value: Any) -> None:
    """Raise BadText for the first string in ``value`` (keys included) that is not valid
    Unicode text. Iterative, so a deep value cannot exhaust the stack."""
    stack: list[tuple[Any, str]] = [(value, "a value")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                raise BadText(problem, where)
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = text_problem(key)
                if problem:
                    raise BadText(problem, "a field name")
                stack.append((child, f"the value of {_shown(key)}"))
        elif isinstance(item, list):
            stack.extend((child, where) for child in item)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        problem = text_problem(key)
        if problem:  # before the duplicate check, so no message ever repeats such a key
            raise BadText(problem, "a field name")
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


def parse_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise NumberTooLarge(f"an integer of {len(digits.lstrip('-'))} digits")
    return int(digits)


def parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999999 reads as infinity
        raise NumberTooLarge(f"the number {text[:20]}{'…' if len(text) > 20 else ''} is beyond range")
    return value


def loads(text: str) -> Any:
    """``json.loads`` that raises DuplicateKey for a repeated key, BadText for a lone
    surrogate or NUL in any key or string, NumberTooLarge for an integer of more than
    MAX_INT_DIGITS digits or a number beyond float range, and ValueError for NaN/Infinity
    (call ``too_deep`` first)."""
    value = json.loads(
        text, object_pairs_hook=no_duplicates, parse_constant=refuse_constant, parse_int=parse_int,
        parse_float=parse_float,
    )
    check_text(value)
    return value


# --- One entry point for a whole document ----------------------------------------------------

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
BOM, NOT_UTF8, TOO_DEEP, DUPLICATE_KEY, NUMBER_TOO_LARGE, NOT_JSON = (
    "bom", "not_utf8", "too_deep", "duplicate_key", "number_too_large", "not_json",
)


class Refused(ValueError):
    """A document ``load`` refused. ``code`` is one of BOM, NOT_UTF8, TOO_DEEP,
    DUPLICATE_KEY, LONE_SURROGATE, NUL_CHARACTER, NUMBER_TOO_LARGE, NOT_JSON; the
    other fields feed each format's own message: ``key`` (the repeated field name,
    shortened), ``where`` (which text is bad), ``detail`` (the number too large, or
    where the JSON breaks: "line 1, column 2: Expecting value"; "" when unknown)."""

    def __init__(self, code: str, *, key: str = "", where: str = "", detail: str = ""):
        super().__init__(code)
        self.code, self.key, self.where, self.detail = code, key, where, detail

    def fields(self) -> dict[str, str]:
        """The values a message template may use: {key}, {where}, {detail}, and
        {at}, the detail in brackets after a space (or nothing)."""
        return {"key": self.key, "where": self.where, "detail": self.detail,
                "at": f" ({self.detail})" if self.detail else ""}


def load(data: bytes, *, max_depth: int) -> Any:
    """Strict UTF-8 JSON from ``data``: no byte-order mark, no NUL byte, bounded depth,
    and everything ``loads`` refuses. Raises ``Refused``; each format (licence,
    joining bundle, setup API) maps its ``code`` to its own refusal and message."""
    if data.startswith(_UTF8_BOM):
        raise Refused(BOM)
    if data.startswith(_UTF16_32_BOMS) or b"\x00" in data:
        raise Refused(NOT_UTF8)  # UTF-16/32 or binary: NUL never appears in UTF-8 JSON
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise Refused(NOT_UTF8) from None
    if too_deep(text, max_depth):
        raise Refused(TOO_DEEP, detail=str(max_depth))
    try:
        return loads(text)
    except DuplicateKey as duplicate:
        raise Refused(DUPLICATE_KEY, key=duplicate.key[:64]) from None
    except BadText as bad:
        raise Refused(bad.problem, where=bad.where) from None
    except NumberTooLarge as large:
        raise Refused(NUMBER_TOO_LARGE, detail=str(large)) from None
    except json.JSONDecodeError as error:
        raise Refused(NOT_JSON, detail=f"line {error.lineno}, column {error.colno}: {error.msg}") from None
    except (ValueError, RecursionError):  # NaN, Infinity, integers too long to convert
        raise Refused(NOT_JSON) from None
